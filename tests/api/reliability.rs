//! Breaking things on purpose: failures between the reservation and the order write, clients that
//! retry everything, several instances of every service. Each ends with the invariant checker.

use sqlx::PgPool;
use tonic::Code;
use topkart::{
    proto::order as pb,
    shared::{auth::Role, hold_times::HOLD_TIMEOUT},
    worker::{daily_reset, settle_holds},
};

use crate::{
    faults::{CrashableOrderService, Faults},
    helpers::*,
};

/// An order-service client at `addr` as the customer alice.
async fn alice_at(addr: std::net::SocketAddr) -> Orders {
    orders_with(&channel(addr).await, Bearer::of(&token(Role::Customer, "alice")))
}

/// Has alice order one unit of `deal` under `request_id` through an order-service that crashes
/// right after the reservation: the hold stays, no order is written, nothing is abandoned.
async fn leave_a_hold_behind(app: &TestApp, deal: &str, request_id: &str) {
    let held = Faults::pause_after_reserve(std::sync::Arc::new(tokio::sync::Semaphore::new(0)));
    let service = CrashableOrderService::start(&app.pool, app.deal_addr, held).await;
    let mut alice = alice_at(service.addr).await;
    let request = keyed(deal, "alice", request_id);
    let ordering = tokio::spawn(async move { alice.create_order(request).await });
    let id: uuid::Uuid = request_id.parse().unwrap();
    while !hold_exists(&app.pool, id).await {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    service.crash();
    assert!(ordering.await.unwrap().is_err(), "the crashed service answered");
}

async fn hold_exists(pool: &PgPool, id: uuid::Uuid) -> bool {
    sqlx::query_scalar("select exists (select from reservations where id = $1)").bind(id).fetch_one(pool).await.unwrap()
}

fn keyed(deal: &str, customer: &str, request_id: &str) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        waitlist_entry: String::new(),
        order: Some(pb::Order { customer_id: customer.into(), ..order_request(deal, 1) }),
        request_id: request_id.into(),
    }
}

async fn available(pool: &PgPool) -> i32 {
    sqlx::query_scalar("select available_units from deals").fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_failure_between_reserve_and_order_write_loses_no_units(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(100).await;
    // A second order-service on the same deal-service, cut off from it after every third hold.
    let faults = Faults::cut_off_after_reserve_every(3);
    let (faulty_addr, _stop) = spawn_order_service(pool.clone(), faults.on(deals_client_of(&app))).await;
    let orders = alice_at(faulty_addr).await;
    let buyers = (0..60).map(|buyer| {
        let mut orders = orders.clone();
        let request = keyed(&deal.name, &format!("buyer-{buyer}"), &uuid::Uuid::new_v4().to_string());
        async move { orders.create_order(request).await }
    });
    let results = join_all(buyers).await;
    let placed = results.iter().filter(|result| result.is_ok()).count() as i32;
    assert_eq!(placed, 40);
    for failed in results.into_iter().filter(Result::is_err) {
        assert_eq!(failed.unwrap_err().code(), Code::Unavailable);
    }
    // The 20 abandoned holds still count as held: no invariant is broken, no unit is lost.
    assert_invariants(&pool).await;
    assert_eq!(available(&pool).await, 40);

    // Before the hold timeout the worker leaves them alone; after it, they go back.
    let early = settle_holds(&pool, db_now(&pool).await, &[]).await.unwrap().for_every_deal().unwrap();
    assert_eq!((early.confirmed, early.released), (0, 0));
    let settled = settle_holds(&pool, db_now(&pool).await + HOLD_TIMEOUT, &[]).await.unwrap().for_every_deal().unwrap();
    assert_eq!(settled.released, 20);
    assert_eq!(available(&pool).await, 60);
    assert_eq!(app.order_count().await, 40);
    assert_invariants(&pool).await;
}

/// A deal-service client for a second order-service in `app`'s setup.
fn deals_client_of(app: &TestApp) -> topkart::order::placing::holds::DealsClient {
    deals_client(app.deal_addr)
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn clients_retrying_with_the_same_request_id_get_one_order_each(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(100).await;
    let keys: Vec<String> = (0..40).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    // Every client sends its request four times, all at once.
    let attempts = keys.iter().enumerate().flat_map(|(buyer, key)| {
        (0..4).map({
            let orders = app.orders.clone();
            let request = keyed(&deal.name, &format!("buyer-{buyer}"), key);
            move |_| {
                let mut orders = orders.clone();
                let request = request.clone();
                async move {
                    (request.request_id.clone(), orders.create_order(request).await.map(|reply| reply.into_inner()))
                }
            }
        })
    });
    let results = join_all(attempts.collect::<Vec<_>>()).await;
    for (key, result) in &results {
        let order = result.as_ref().expect("every retry succeeds");
        assert_eq!(order.name, format!("orders/{key}"), "the order's id is its request_id");
    }
    assert_eq!(app.order_count().await, 40);
    assert_eq!(available(&pool).await, 60);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_request_id_reused_for_another_order_is_refused(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let key = uuid::Uuid::new_v4().to_string();
    let mut orders = app.orders.clone();
    orders.create_order(keyed(&deal.name, "alice", &key)).await.unwrap();
    let other = pb::CreateOrderRequest {
        waitlist_entry: String::new(),
        order: Some(pb::Order { customer_id: "alice".into(), ..order_request(&deal.name, 2) }),
        request_id: key.clone(),
    };
    assert_refused(orders.create_order(other).await, Code::AlreadyExists, "REQUEST_ID_REUSED");
    assert_invalid(orders.create_order(keyed(&deal.name, "alice", "not-a-uuid")).await, &["request_id"]);
    assert_eq!(app.order_count().await, 1);
    assert_eq!(available(&pool).await, 9);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_retry_after_the_hold_was_released_is_abandoned_not_doubled(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let key = uuid::Uuid::new_v4().to_string();
    leave_a_hold_behind(&app, &deal.name, &key).await;
    settle_holds(&pool, db_now(&pool).await + HOLD_TIMEOUT, &[]).await.unwrap().for_every_deal().unwrap();

    let mut orders = app.orders.clone();
    assert_refused(orders.create_order(keyed(&deal.name, "alice", &key)).await, Code::Aborted, "ORDER_ABANDONED");
    assert_eq!(app.order_count().await, 0);
    assert_eq!(available(&pool).await, 10);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn two_instances_of_every_service_keep_every_invariant(pool: PgPool) {
    let (deal_a, _stop_deal_a) = spawn_deal_service(pool.clone()).await;
    let (deal_b, _stop_deal_b) = spawn_deal_service(pool.clone()).await;
    let (order_a, _stop_order_a) = spawn_order_service(pool.clone(), deals_client(deal_a)).await;
    let (order_b, _stop_order_b) = spawn_order_service(pool.clone(), deals_client(deal_b)).await;
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(50).await;
    let clients = [alice_at(order_a).await, alice_at(order_b).await];

    let buyers = (0..200).map(|buyer| {
        let mut orders = clients[buyer % 2].clone();
        let request = keyed(&deal.name, &format!("buyer-{buyer}"), &uuid::Uuid::new_v4().to_string());
        async move { orders.create_order(request).await }
    });
    // Meanwhile two workers reset the day and settle holds.
    let now = db_now(&pool).await;
    let workers = (0..2).map(|_| {
        let pool = pool.clone();
        async move {
            let reset = daily_reset(&pool, now).await.unwrap();
            settle_holds(&pool, now, &[]).await.unwrap().for_every_deal().unwrap();
            reset.is_some()
        }
    });
    let (results, resets) = tokio::join!(join_all(buyers), join_all(workers));
    assert!(resets.iter().filter(|performed| **performed).count() <= 1, "the day was reset twice");
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 50);
    assert_eq!(available(&pool).await, 0);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_order_is_not_recorded_after_its_write_window_even_in_a_batch_with_others(pool: PgPool) {
    use topkart::{
        order::store::{OrderInsert, get_orders, insert_orders},
        shared::money::Price,
    };
    let now = db_now(&pool).await;
    let insert = |write_by| OrderInsert {
        id: uuid::Uuid::new_v4(),
        deal_id: uuid::Uuid::new_v4(),
        customer_id: "alice".into(),
        quantity: 1,
        unit_price: Price::from_stored("INR".into(), 600_000_000),
        total_price: Price::from_stored("INR".into(), 600_000_000),
        placed_at: now,
        write_by,
        approve_deadline: None,
    };
    let late = insert(now - chrono::TimeDelta::milliseconds(1));
    let in_time = insert(now + chrono::TimeDelta::seconds(10));
    // A second attempt of the same order in the same batch is not recorded twice.
    let again = OrderInsert { customer_id: "mallory".into(), ..in_time.clone() };
    let recorded = insert_orders(&pool, &[late.clone(), in_time.clone(), again]).await.unwrap();
    assert_eq!(recorded.iter().map(|order| order.id).collect::<Vec<_>>(), [in_time.id]);
    assert_eq!(recorded[0].customer_id, "alice", "the first attempt is the one recorded");
    assert!(get_orders(&pool, &[late.id]).await.unwrap().is_empty());
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_buyer_queued_on_the_deal_across_its_expiry_is_refused(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let now = db_now(&pool).await;
    let deal =
        insert_deal_at(&pool, now - chrono::TimeDelta::hours(1), now + chrono::TimeDelta::milliseconds(1500), "active")
            .await;
    // Another transaction holds the deal's row while the deal expires.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("select 1 from deals where id = $1 for update").bind(deal).execute(&mut *blocker).await.unwrap();
    let queued = tokio::spawn({
        let mut orders = app.orders.clone();
        let request = keyed(&format!("deals/{deal}"), "alice", &uuid::Uuid::new_v4().to_string());
        async move { orders.create_order(request).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    blocker.commit().await.unwrap();
    assert_refused(queued.await.unwrap(), Code::FailedPrecondition, "DEAL_EXPIRED");
    assert_eq!(available(&pool).await, 10);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn concurrent_attempts_of_one_request_for_the_last_unit_both_get_the_order(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(1).await;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("select 1 from deals for update").execute(&mut *blocker).await.unwrap();
    let key = uuid::Uuid::new_v4().to_string();
    let attempts: Vec<_> = (0..2)
        .map(|_| {
            let mut orders = app.orders.clone();
            let request = keyed(&deal.name, "alice", &key);
            tokio::spawn(async move { orders.create_order(request).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    blocker.commit().await.unwrap();
    for attempt in attempts {
        let order = attempt.await.unwrap().expect("both attempts get the one order");
        assert_eq!(order.into_inner().name, format!("orders/{key}"));
    }
    assert_eq!(app.order_count().await, 1);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_retry_with_another_body_does_not_take_over_the_hold(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let key = uuid::Uuid::new_v4().to_string();
    leave_a_hold_behind(&app, &deal.name, &key).await;

    let mut orders = app.orders.clone();
    let more_units = pb::CreateOrderRequest {
        waitlist_entry: String::new(),
        order: Some(pb::Order { customer_id: "alice".into(), ..order_request(&deal.name, 2) }),
        request_id: key.clone(),
    };
    assert_refused(orders.create_order(more_units).await, Code::AlreadyExists, "REQUEST_ID_REUSED");
    let other_price = pb::CreateOrderRequest {
        waitlist_entry: String::new(),
        order: Some(pb::Order {
            unit_price: Some(inr(300)),
            customer_id: "alice".into(),
            ..order_request(&deal.name, 1)
        }),
        request_id: key.clone(),
    };
    assert_refused(orders.create_order(other_price).await, Code::FailedPrecondition, "PRICE_CHANGED");
    assert_eq!(app.order_count().await, 0);
    // The same body takes its hold over and is recorded.
    let order = orders.create_order(keyed(&deal.name, "alice", &key)).await.unwrap().into_inner();
    assert_eq!(order.name, format!("orders/{key}"));
    assert_eq!(available(&pool).await, 9);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_worker_never_releases_a_hold_whose_order_is_being_committed(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let key = uuid::Uuid::new_v4();
    leave_a_hold_behind(&app, &deal.name, &key.to_string()).await;

    // An order insert in flight for that hold: it holds the hold's lock and has not committed.
    let inserting = insert_holding_its_lock(&pool, key, uuid(&deal.name)).await;
    let while_inserting =
        settle_holds(&pool, db_now(&pool).await + HOLD_TIMEOUT, &[]).await.unwrap().for_every_deal().unwrap();
    assert_eq!((while_inserting.confirmed, while_inserting.released), (0, 0), "the hold is left for later");
    inserting.commit().await.unwrap();

    let after = settle_holds(&pool, db_now(&pool).await + HOLD_TIMEOUT, &[]).await.unwrap().for_every_deal().unwrap();
    assert_eq!((after.confirmed, after.released), (1, 0));
    assert_eq!(available(&pool).await, 9);
    assert_invariants(&pool).await;
}

/// An order insert for `key` that comes to record it now, its write window open.
fn insert_for(deal: uuid::Uuid, key: uuid::Uuid) -> topkart::order::store::OrderInsert {
    let price = topkart::shared::money::Price::from_stored("INR".into(), 600_000_000);
    topkart::order::store::OrderInsert {
        id: key,
        deal_id: deal,
        customer_id: "alice".into(),
        quantity: 1,
        unit_price: price.clone(),
        total_price: price,
        placed_at: chrono::Utc::now(),
        write_by: chrono::Utc::now() + chrono::TimeDelta::seconds(10),
        approve_deadline: None,
    }
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_order_insert_waiting_on_an_abandonment_sees_it_and_records_nothing(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let key = uuid::Uuid::new_v4();
    leave_a_hold_behind(&app, &deal.name, &key.to_string()).await;

    // An abandonment in flight: it holds the hold's lock and has marked the id, not yet committed.
    let mut abandoning = pool.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock(hold_lock_key($1))").bind(key).execute(&mut *abandoning).await.unwrap();
    sqlx::query("insert into abandoned_orders (id) values ($1)").bind(key).execute(&mut *abandoning).await.unwrap();
    // The insert starts now (its statement's snapshot predates the mark) and waits for the lock.
    let inserting = tokio::spawn({
        let (pool, insert) = (pool.clone(), insert_for(uuid(&deal.name), key));
        async move { topkart::order::store::insert_orders(&pool, &[insert]).await }
    });
    let waiting = || async {
        // This database's waiting advisory locks only: sqlx's test setup takes one of its own.
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_locks
              where locktype = 'advisory' and not granted
                and database = (select oid from pg_database where datname = current_database())",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    for _ in 0..100 {
        if waiting().await > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(waiting().await, 1, "the insert waits for the hold's lock");
    abandoning.commit().await.unwrap();

    let recorded = inserting.await.unwrap().unwrap();
    assert!(recorded.is_empty(), "an abandoned attempt got an order: {recorded:?}");
    assert_eq!(app.order_count().await, 0);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_abandonment_waiting_on_an_order_insert_leaves_the_hold_to_the_order(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let key = uuid::Uuid::new_v4();
    leave_a_hold_behind(&app, &deal.name, &key.to_string()).await;

    // An order insert in flight: it holds the hold's lock and has not committed.
    let inserting = insert_holding_its_lock(&pool, key, uuid(&deal.name)).await;
    let abandoning = tokio::spawn({
        let (pool, deals) = (pool.clone(), deals_client(app.deal_addr));
        async move { topkart::order::placing::abandon::abandon(&pool, &deals, key).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!abandoning.is_finished(), "the abandonment waits for the insert's lock");
    inserting.commit().await.unwrap();

    let outcome = abandoning.await.unwrap().unwrap();
    assert_eq!(outcome, topkart::order::placing::abandon::Abandoned::Ordered);
    assert_eq!(available(&pool).await, 9, "the order keeps its unit");
    assert_invariants(&pool).await;
}

/// An order insert for hold `key` in flight: it holds the hold's lock and has not committed.
async fn insert_holding_its_lock(
    pool: &PgPool,
    key: uuid::Uuid,
    deal: uuid::Uuid,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut inserting = pool.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock(hold_lock_key($1))").bind(key).execute(&mut *inserting).await.unwrap();
    sqlx::query(
        "insert into orders (id, deal_id, customer_id, quantity, currency_code, unit_price_micros, total_price_micros, state)
         values ($1, $2, 'alice', 1, 'INR', 600000000, 600000000, 'pending_approval')",
    )
    .bind(key)
    .bind(deal)
    .execute(&mut *inserting)
    .await
    .unwrap();
    inserting
}
