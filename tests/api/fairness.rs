//! Fair to buyers: a deal's per-customer limit, decided in the transaction that takes the units,
//! however many instances the orders arrive through.

use prost_types::FieldMask;
use sqlx::{Connection, PgPool};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use topkart::{
    proto::{deal as dealpb, holds as holdspb, order as orderpb},
    shared::auth::Role,
};

use crate::helpers::*;

/// A deal of `units` units of which one customer may hold at most `limit`.
async fn limited_deal(deals: &Deals, units: i32, limit: i32) -> dealpb::Deal {
    let deal = dealpb::Deal { max_units_per_customer: Some(limit), ..deal_request(units) };
    deals.clone().create_deal(dealpb::CreateDealRequest { deal: Some(deal) }).await.expect("create deal").into_inner()
}

/// Sets deal `name`'s per-customer limit (`None` removes it), through UpdateDeal's mask.
async fn set_limit(deals: &Deals, name: &str, limit: Option<i32>) -> dealpb::Deal {
    let patch = dealpb::Deal { name: name.into(), max_units_per_customer: limit, ..Default::default() };
    let mask = FieldMask { paths: vec!["max_units_per_customer".into()] };
    deals
        .clone()
        .update_deal(dealpb::UpdateDealRequest { deal: Some(patch), update_mask: Some(mask) })
        .await
        .expect("update the limit")
        .into_inner()
}

fn order_of(deal: &str, quantity: i32) -> orderpb::CreateOrderRequest {
    orderpb::CreateOrderRequest {
        waitlist_entry: String::new(),
        order: Some(order_request(deal, quantity)),
        request_id: uuid::Uuid::new_v4().to_string(),
    }
}

/// The `limit` and `remaining` a PER_CUSTOMER_LIMIT_EXCEEDED refusal carries.
fn over_the_limit(status: &Status) -> (String, String) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_error_details().error_info().cloned().expect("an ErrorInfo");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("PER_CUSTOMER_LIMIT_EXCEEDED", "deal.topkart.com"));
    (info.metadata["limit"].clone(), info.metadata["remaining"].clone())
}

async fn units_of(pool: &PgPool, customer: &str) -> i64 {
    sqlx::query_scalar("select coalesce(sum(quantity), 0)::bigint from orders where customer_id = $1 and state in ('pending_approval', 'approved')")
        .bind(customer)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn fifty_concurrent_orders_by_one_customer_on_two_instances_take_no_more_than_the_limit(pool: PgPool) {
    let (deal_a, _stop_deal_a) = spawn_deal_service(pool.clone()).await;
    let (deal_b, _stop_deal_b) = spawn_deal_service(pool.clone()).await;
    let (order_a, _stop_order_a) = spawn_order_service(pool.clone(), deals_client(deal_a)).await;
    let (order_b, _stop_order_b) = spawn_order_service(pool.clone(), deals_client(deal_b)).await;
    let app = spawn_app(pool.clone()).await;
    let deal = limited_deal(&app.deals, 100, 5).await;
    let alice = Bearer::of(&token(Role::Customer, "alice"));
    let clients = [orders_with(&channel(order_a).await, alice.clone()), orders_with(&channel(order_b).await, alice)];

    let orders = (0..50).map(|n| {
        let mut client = clients[n % 2].clone();
        let request = order_of(&deal.name, 1);
        async move { client.create_order(request).await }
    });
    let results = join_all(orders).await;

    let placed = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(placed, 5, "exactly the limit is sold to one customer");
    for refused in results.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(over_the_limit(refused), ("5".into(), "0".into()));
    }
    assert_eq!(units_of(&pool, "alice").await, 5);

    // order-service always says whom units are for; a reservation for no one cannot be limited.
    let anonymous = app
        .reservations
        .clone()
        .reserve_units(holdspb::ReserveUnitsRequest {
            deal: deal.name.clone(),
            reservation_id: uuid::Uuid::new_v4().to_string(),
            quantity: 1,
            ..Default::default()
        })
        .await
        .expect_err("no customer named");
    assert_eq!(anonymous.code(), Code::InvalidArgument);
    let fields: Vec<_> =
        anonymous.get_error_details().bad_request().unwrap().field_violations.iter().map(|v| v.field.clone()).collect();
    assert_eq!(fields, ["customer_id"]);

    // Another customer has a limit of their own.
    let bob = app.orders_as("bob");
    let (mut bob_a, mut bob_b) = (bob.clone(), bob);
    bob_a.create_order(order_of(&deal.name, 3)).await.expect("bob's first order");
    let refused = bob_b.create_order(order_of(&deal.name, 3)).await.expect_err("bob's second order passes his limit");
    assert_eq!(over_the_limit(&refused), ("5".into(), "2".into()), "2 of bob's 5 are left");
    bob_b.create_order(order_of(&deal.name, 2)).await.expect("bob's last 2 units");
    assert_eq!(app.get_deal(&deal.name).await.available_units, 90);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn lowering_the_limit_keeps_existing_orders_and_limits_new_ones(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = limited_deal(&app.deals, 100, 5).await;
    let mut alice = app.orders.clone();
    let first = alice.create_order(order_of(&deal.name, 4)).await.expect("4 of 5").into_inner();
    assert_eq!(app.get_deal(&deal.name).await.max_units_per_customer, Some(5));

    let set_limit = |limit| set_limit(&app.deals, &deal.name, limit);
    assert_eq!(set_limit(Some(2)).await.max_units_per_customer, Some(2));
    let order = alice.get_order(orderpb::GetOrderRequest { name: first.name.clone() }).await.unwrap().into_inner();
    assert_eq!((order.state(), order.quantity), (orderpb::order::State::PendingApproval, 4), "the order stands");
    let refused = alice.create_order(order_of(&deal.name, 1)).await.expect_err("over the lowered limit");
    assert_eq!(over_the_limit(&refused), ("2".into(), "0".into()));

    // A cancelled order's units no longer count.
    alice.cancel_order(orderpb::CancelOrderRequest { name: first.name }).await.expect("cancel");
    alice.create_order(order_of(&deal.name, 2)).await.expect("2 of the new 2");

    // Unset in the mask removes the limit.
    assert_eq!(set_limit(None).await.max_units_per_customer, None);
    alice.create_order(order_of(&deal.name, 10)).await.expect("no limit left");
    assert_eq!(units_of(&pool, "alice").await, 12);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_limit_set_after_sales_counts_what_each_customer_already_holds(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(100).await;
    let mut alice = app.orders.clone();
    alice.create_order(order_of(&deal.name, 4)).await.expect("4 units, no limit yet");
    let set_limit = |limit| set_limit(&app.deals, &deal.name, limit);

    set_limit(Some(5)).await;
    let refused = alice.create_order(order_of(&deal.name, 2)).await.expect_err("4 held + 2 > 5");
    assert_eq!(over_the_limit(&refused), ("5".into(), "1".into()));
    alice.create_order(order_of(&deal.name, 1)).await.expect("the fifth unit");
    assert_invariants(&pool).await;

    // Sales while there is no limit count once it is back.
    set_limit(None).await;
    alice.create_order(order_of(&deal.name, 10)).await.expect("no limit");
    set_limit(Some(20)).await;
    let refused = alice.create_order(order_of(&deal.name, 6)).await.expect_err("15 held + 6 > 20");
    assert_eq!(over_the_limit(&refused), ("20".into(), "5".into()));
    assert_eq!(units_of(&pool, "alice").await, 15);
    assert_invariants(&pool).await;
}

/// A deal of `units` units whose orders wait at most `window_seconds` for an admin.
async fn windowed_deal(deals: &Deals, units: i32, window_seconds: i64) -> dealpb::Deal {
    let window = prost_types::Duration { seconds: window_seconds, nanos: 0 };
    let deal = dealpb::Deal { approval_window: Some(window), ..deal_request(units) };
    deals.clone().create_deal(dealpb::CreateDealRequest { deal: Some(deal) }).await.expect("create deal").into_inner()
}

/// Moves order `name`'s approve deadline `offset` from the database's now, as if time had passed.
async fn deadline_in(pool: &PgPool, name: &str, offset_ms: i64) {
    sqlx::query("update orders set approve_deadline = now() + $2 * interval '1 millisecond' where id = $1")
        .bind(uuid(name))
        .bind(offset_ms as f64)
        .execute(pool)
        .await
        .unwrap();
}

fn reason(status: &Status) -> String {
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_order_not_approved_within_the_window_expires_and_its_units_go_back(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = windowed_deal(&app.deals, 10, 600).await;
    assert_eq!(deal.approval_window, Some(prost_types::Duration { seconds: 600, nanos: 0 }));
    let mut alice = app.orders.clone();
    let order = alice.create_order(order_of(&deal.name, 3)).await.expect("placed").into_inner();
    let (created, deadline) = (order.create_time.unwrap(), order.approve_deadline.unwrap());
    assert_eq!(deadline.seconds - created.seconds, 600, "the deadline is the window after the order");
    assert_eq!(deadline.nanos, created.nanos);

    // The deadline passes: the order reads expired and cannot be decided, before any worker ran.
    deadline_in(&pool, &order.name, -1).await;
    let read = alice.get_order(orderpb::GetOrderRequest { name: order.name.clone() }).await.unwrap().into_inner();
    assert_eq!(read.state(), orderpb::order::State::Expired);
    let expired_filter =
        orderpb::ListOrdersRequest { state: orderpb::order::State::Expired.into(), ..Default::default() };
    let listed = alice.list_orders(expired_filter.clone()).await.unwrap().into_inner().orders;
    assert_eq!(listed.iter().map(|order| order.name.clone()).collect::<Vec<_>>(), std::slice::from_ref(&order.name));
    let mut admin = app.admin_orders.clone();
    let approve = admin.approve_order(orderpb::ApproveOrderRequest { name: order.name.clone() }).await;
    let refused = approve.expect_err("approved past its deadline");
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::FailedPrecondition, "ORDER_EXPIRED"));
    let cancel = alice.cancel_order(orderpb::CancelOrderRequest { name: order.name.clone() }).await;
    assert_eq!(reason(&cancel.expect_err("cancelled past its deadline")), "ORDER_EXPIRED");
    assert_eq!(app.get_deal(&deal.name).await.available_units, 7, "the units wait for the worker");

    // The worker expires it once, and the units go back.
    let now = db_now(&pool).await;
    assert_eq!(topkart::worker::expire_orders(&pool, now, &[]).await.unwrap().for_every_deal().unwrap(), 1);
    assert_eq!(
        topkart::worker::expire_orders(&pool, now, &[]).await.unwrap().for_every_deal().unwrap(),
        0,
        "expired once"
    );
    assert_eq!(app.get_deal(&deal.name).await.available_units, 10);
    let stored: String = sqlx::query_scalar("select state from orders").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, "expired");
    assert_invariants(&pool).await;

    // A deal without a window gives its orders no deadline.
    let open = app.create_deal(5).await;
    let unlimited = alice.create_order(order_of(&open.name, 1)).await.unwrap().into_inner();
    assert_eq!(unlimited.approve_deadline, None);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn approvals_racing_their_deadlines_and_two_workers_end_each_order_exactly_once(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = windowed_deal(&app.deals, 100, 600).await;
    let mut orders = Vec::new();
    for n in 0..20 {
        let buyer = format!("buyer-{n}");
        let order = app.orders_as(&buyer).create_order(order_of(&deal.name, 2)).await.expect("placed").into_inner();
        orders.push(order.name);
    }
    // Five deadlines already passed, five a minute away, and ten from 0 to 180 ms ahead, straddling
    // the approvals, which all come 100 ms from now; two workers sweep every 10 ms meanwhile.
    for (n, name) in orders.iter().enumerate() {
        let offset = match n {
            0..5 => -1,
            15.. => 60_000,
            racing => 20 * (racing as i64 - 5),
        };
        deadline_in(&pool, name, offset).await;
    }
    let approvals = orders.iter().map(|name| {
        let mut admin = app.admin_orders.clone();
        let name = name.clone();
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            admin.approve_order(orderpb::ApproveOrderRequest { name }).await
        }
    });
    let workers = (0..2).map(|_| {
        let pool = pool.clone();
        async move {
            let mut expired = 0;
            for _ in 0..50 {
                expired += topkart::worker::expire_orders(&pool, db_now(&pool).await, &[])
                    .await
                    .unwrap()
                    .for_every_deal()
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            expired
        }
    });
    let (answers, expired) = tokio::join!(join_all(approvals), join_all(workers));

    let mut approved = 0;
    for (name, answer) in orders.iter().zip(&answers) {
        let state: String = sqlx::query_scalar("select state from orders where id = $1")
            .bind(uuid(name))
            .fetch_one(&pool)
            .await
            .unwrap();
        match answer {
            Ok(order) => {
                let order = order.get_ref();
                assert_eq!((order.state(), state.as_str()), (orderpb::order::State::Approved, "approved"), "{name}");
                approved += 1;
            }
            Err(status) => {
                assert_eq!(reason(status), "ORDER_EXPIRED", "{name}: {status:?}");
                assert_eq!(state, "expired", "{name}: refused as expired, so the worker expires it");
            }
        }
    }
    assert_eq!(approved + expired.iter().sum::<i64>() as usize, orders.len(), "each order ended once");
    let ended = |range: std::ops::Range<usize>| answers[range].iter().map(Result::is_ok).collect::<Vec<_>>();
    assert_eq!(ended(0..5), [false; 5], "past their deadline: expired");
    assert_eq!(ended(15..20), [true; 5], "a minute to go: approved");
    assert_eq!(app.get_deal(&deal.name).await.available_units, 100 - 2 * approved as i32);
    assert_invariants(&pool).await;
}

/// One reservation reaches two deal-service instances at once (a resent call), while its deal is
/// locked, so that both batches wait for the lock. Whichever inserts the hold, the other must find
/// it under the lock and answer with it: deciding it again would refuse it, the limit of 1 already
/// counting it, and leave the hold to the worker.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn one_reservation_sent_to_two_instances_at_once_is_one_hold_and_answered_the_same_by_both(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = limited_deal(&app.deals, 10, 1).await;
    let (other, _stop_other) = spawn_deal_service(pool.clone()).await;
    let service = Bearer::of(&token(Role::Service, "order-service"));
    let clients = [app.reservations.clone(), holds_with(&channel(other).await, service)];
    let request = holdspb::ReserveUnitsRequest {
        deal: deal.name.clone(),
        reservation_id: uuid::Uuid::new_v4().to_string(),
        quantity: 1,
        customer_id: "alice".into(),
        ..Default::default()
    };

    // Connections of their own: the services draw on the test's pool.
    let options = pool.connect_options();
    let (mut lock, mut watch) = (
        sqlx::PgConnection::connect_with(&options).await.unwrap(),
        sqlx::PgConnection::connect_with(&options).await.unwrap(),
    );
    sqlx::query("begin").execute(&mut lock).await.unwrap();
    sqlx::query("select from deals where id = $1 for update").bind(uuid(&deal.name)).execute(&mut lock).await.unwrap();
    let calls: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let request = request.clone();
            tokio::spawn(async move { client.reserve_units(request).await })
        })
        .collect();
    let waiting =
        "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'";
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>(waiting).fetch_one(&mut watch).await.unwrap() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "both batches wait for the deal's lock");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    sqlx::query("rollback").execute(&mut lock).await.unwrap();

    let answers: Vec<_> = join_all(calls).await.into_iter().map(|call| call.unwrap()).collect();
    for answer in &answers {
        let reservation = answer.as_ref().expect("both instances answer with the hold").get_ref();
        assert_eq!((reservation.reservation_id.as_str(), reservation.quantity), (request.reservation_id.as_str(), 1));
        assert_eq!(reservation.state(), holdspb::reservation::State::Reserved);
    }
    assert_eq!(app.get_deal(&deal.name).await.available_units, 9, "its unit is taken once");
    assert_invariants(&pool).await;
}
