//! A deal's waitlist: customers who asked for more units than were left wait in join order, and
//! units that come back go to them first, in the transaction that frees them. Each test ends with
//! the invariant checker, which also checks that no entry was offered ahead of an earlier one.

use std::time::Duration;

use sqlx::PgPool;
use tonic::Code;
use topkart::{
    proto::{deal as dealpb, holds as holdspb, order as orderpb},
    shared::auth::Role,
};
use uuid::Uuid;

use crate::helpers::*;

use dealpb::waitlist_entry::State;

/// deal-service as customer `subject`.
fn deals_as(app: &TestApp, subject: &str) -> Deals {
    deals_with(&app.deal_channel, Bearer::of(&token(Role::Customer, subject)))
}

async fn join(deals: &Deals, deal: &str, quantity: i32) -> Result<dealpb::WaitlistEntry, tonic::Status> {
    join_as_request(deals, deal, quantity, &Uuid::new_v4().to_string()).await
}

async fn join_as_request(
    deals: &Deals,
    deal: &str,
    quantity: i32,
    request_id: &str,
) -> Result<dealpb::WaitlistEntry, tonic::Status> {
    let request = dealpb::JoinWaitlistRequest { deal: deal.into(), quantity, request_id: request_id.into() };
    deals.clone().join_waitlist(request).await.map(tonic::Response::into_inner)
}

async fn entry(deals: &Deals, name: &str) -> Result<dealpb::WaitlistEntry, tonic::Status> {
    deals
        .clone()
        .get_waitlist_entry(dealpb::GetWaitlistEntryRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

async fn leave(deals: &Deals, name: &str) -> Result<dealpb::WaitlistEntry, tonic::Status> {
    deals.clone().leave_waitlist(dealpb::LeaveWaitlistRequest { name: name.into() }).await.map(|r| r.into_inner())
}

/// Places `customer`'s order of `quantity` units of `deal`.
async fn order_as(app: &TestApp, customer: &str, deal: &str, quantity: i32) -> orderpb::Order {
    claim_as(app, customer, deal, quantity, "").await.expect("order placed")
}

/// Places `customer`'s order of `quantity` units of `deal` claiming the offer of `entry` (none when
/// empty).
async fn claim_as(
    app: &TestApp,
    customer: &str,
    deal: &str,
    quantity: i32,
    entry: &str,
) -> Result<orderpb::Order, tonic::Status> {
    let order = orderpb::Order { customer_id: customer.into(), ..order_request(deal, quantity) };
    let request = orderpb::CreateOrderRequest {
        order: Some(order),
        request_id: Uuid::new_v4().to_string(),
        waitlist_entry: entry.into(),
    };
    app.orders_as(customer).create_order(request).await.map(tonic::Response::into_inner)
}

async fn cancel(app: &TestApp, customer: &str, order: &orderpb::Order) {
    let request = orderpb::CancelOrderRequest { name: order.name.clone() };
    app.orders_as(customer).cancel_order(request).await.expect("cancelled");
}

/// A deal of `units` units with every unit ordered by "seller-stand-in" customers, one unit each,
/// so that cancelling them gives units back one at a time.
async fn sold_out_deal(app: &TestApp, units: i32) -> (dealpb::Deal, Vec<(String, orderpb::Order)>) {
    let deal = app.create_deal(units).await;
    let mut orders = Vec::new();
    for n in 0..units {
        let buyer = format!("buyer-{n}");
        let order = order_as(app, &buyer, &deal.name, 1).await;
        orders.push((buyer, order));
    }
    (deal, orders)
}

fn state(entry: &dealpb::WaitlistEntry) -> State {
    entry.state()
}

/// The `ErrorInfo` reason of a refusal.
fn reason(status: &tonic::Status) -> String {
    tonic_types::StatusExt::get_error_details(status).error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

/// Holds `quantity` units of `deal` for `customer` as order-service does before recording an
/// order, claiming `entry`'s offer when given; returns the hold's id.
async fn hold(app: &TestApp, deal: &str, quantity: i32, customer: &str, entry: &str) -> Uuid {
    let id = Uuid::new_v4();
    let request = holdspb::ReserveUnitsRequest {
        timeout: None,
        deal: deal.into(),
        reservation_id: id.to_string(),
        quantity,
        expected_unit_price: None,
        customer_id: customer.into(),
        waitlist_entry: entry.into(),
    };
    app.reservations.clone().reserve_units(request).await.expect("held");
    id
}

/// Runs the worker's waitlist pass now.
async fn worker_pass(pool: &PgPool) -> u64 {
    topkart::worker::expire_waitlist_entries(pool, db_now(pool).await, &[])
        .await
        .expect("worker pass")
        .for_every_deal()
        .expect("every deal")
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn customers_join_only_when_too_few_units_are_left_and_returned_units_go_to_them_in_join_order(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (deal, orders) = sold_out_deal(&app, 3).await;
    let (bob, carol, dave) = (deals_as(&app, "bob"), deals_as(&app, "carol"), deals_as(&app, "dave"));

    let bobs = join(&bob, &deal.name, 2).await.expect("bob joins");
    let carols = join(&carol, &deal.name, 1).await.expect("carol joins");
    assert_eq!((state(&bobs), bobs.position, bobs.customer_id.as_str()), (State::Waiting, 0, "bob"));
    assert_eq!((state(&carols), carols.position), (State::Waiting, 1), "one entry ahead of carol");
    assert!(carols.name.starts_with(&format!("{}/waitlistEntries/", deal.name)), "{}", carols.name);

    // One unit back goes to bob, the head, although it is fewer than he asked for.
    cancel(&app, &orders[0].0, &orders[0].1).await;
    let bobs = entry(&bob, &bobs.name).await.unwrap();
    assert_eq!((state(&bobs), bobs.offered_units), (State::Offered, 1));
    assert!(bobs.offer_expire_time.is_some());
    assert_eq!(entry(&carol, &carols.name).await.unwrap().position, 1, "bob still wants a unit before carol");
    assert_eq!(app.get_deal(&deal.name).await.available_units, 0, "returned units are not for new orders");
    assert_invariants(&pool).await;

    // The next unit tops bob's offer up; the third goes to carol.
    cancel(&app, &orders[1].0, &orders[1].1).await;
    assert_eq!(entry(&bob, &bobs.name).await.unwrap().offered_units, 2);
    assert_eq!(state(&entry(&carol, &carols.name).await.unwrap()), State::Waiting);
    cancel(&app, &orders[2].0, &orders[2].1).await;
    let carols = entry(&carol, &carols.name).await.unwrap();
    assert_eq!((state(&carols), carols.offered_units, carols.position), (State::Offered, 1, 0));
    assert_eq!(app.get_deal(&deal.name).await.available_units, 0);

    // dave joins behind entries that hold full offers: nobody is ahead of him still waiting.
    let daves = join(&dave, &deal.name, 1).await.expect("dave joins");
    assert_eq!((state(&daves), daves.position), (State::Waiting, 0));
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_join_is_refused_while_enough_units_are_left_and_is_idempotent_by_request_id(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(3).await;
    let bob = deals_as(&app, "bob");
    let refused = assert_refused(join(&bob, &deal.name, 3).await, Code::FailedPrecondition, "UNITS_AVAILABLE");
    assert!(refused.message().contains("3 units are left"), "{}", refused.message());

    let request_id = Uuid::new_v4().to_string();
    let first = join_as_request(&bob, &deal.name, 4, &request_id).await.expect("4 is more than is left");
    assert_eq!(first.name, format!("{}/waitlistEntries/{request_id}", deal.name), "the entry's id is the request id");
    let retried = join_as_request(&bob, &deal.name, 4, &request_id).await.expect("a retry");
    assert_eq!(retried.name, first.name);
    assert_refused(join_as_request(&bob, &deal.name, 5, &request_id).await, Code::AlreadyExists, "REQUEST_ID_REUSED");
    let carol = deals_as(&app, "carol");
    assert_refused(join_as_request(&carol, &deal.name, 4, &request_id).await, Code::AlreadyExists, "REQUEST_ID_REUSED");
    let count: i64 = sqlx::query_scalar("select count(*) from waitlist_entries").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 1, "retries joined nothing more");

    // Admins do not join; a scheduled or expired deal has no waitlist; unknown deals are NOT_FOUND.
    assert_refused(join(&app.deals, &deal.name, 4).await, Code::PermissionDenied, "PERMISSION_DENIED");
    assert_refused(join(&bob, &format!("deals/{}", Uuid::new_v4()), 4).await, Code::NotFound, "DEAL_NOT_FOUND");
    app.expire_without_sweep(&deal.name).await;
    assert_refused(join(&bob, &deal.name, 4).await, Code::FailedPrecondition, "DEAL_EXPIRED");
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_offer_is_claimed_by_an_order_naming_the_entry_and_what_is_left_of_it_goes_on(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (deal, orders) = sold_out_deal(&app, 3).await;
    let (bob, carol) = (deals_as(&app, "bob"), deals_as(&app, "carol"));
    let bobs = join(&bob, &deal.name, 3).await.unwrap();
    let carols = join(&carol, &deal.name, 1).await.unwrap();

    assert_refused(claim_as(&app, "bob", &deal.name, 1, &bobs.name).await, Code::FailedPrecondition, "OFFER_NOT_MADE");
    for (buyer, order) in &orders {
        cancel(&app, buyer, order).await;
    }
    assert_eq!(entry(&bob, &bobs.name).await.unwrap().offered_units, 3);

    // Only bob, only for his entry's deal, for at most the units offered.
    assert_refused(
        claim_as(&app, "carol", &deal.name, 1, &bobs.name).await,
        Code::NotFound,
        "WAITLIST_ENTRY_NOT_FOUND",
    );
    assert_refused(
        claim_as(&app, "bob", &deal.name, 4, &bobs.name).await,
        Code::FailedPrecondition,
        "INSUFFICIENT_UNITS",
    );
    let other_deal = app.create_deal(5).await;
    assert_invalid(claim_as(&app, "bob", &other_deal.name, 1, &bobs.name).await, &["waitlist_entry"]);
    assert_refused(entry(&carol, &bobs.name).await, Code::NotFound, "WAITLIST_ENTRY_NOT_FOUND");

    // bob takes 2 of the 3; the third goes on to carol at once.
    let order = claim_as(&app, "bob", &deal.name, 2, &bobs.name).await.expect("claimed");
    assert_eq!((order.quantity, order.state()), (2, orderpb::order::State::PendingApproval));
    let bobs = entry(&bob, &bobs.name).await.unwrap();
    assert_eq!((state(&bobs), bobs.claimed_units), (State::Claimed, 2));
    assert_eq!(state(&entry(&carol, &carols.name).await.unwrap()), State::Offered);
    assert_refused(
        claim_as(&app, "bob", &deal.name, 1, &bobs.name).await,
        Code::FailedPrecondition,
        "WAITLIST_ENTRY_CLOSED",
    );
    assert_refused(leave(&bob, &bobs.name).await, Code::FailedPrecondition, "WAITLIST_ENTRY_CLOSED");

    // carol leaves instead of claiming: her unit is for anyone now.
    let left = leave(&carol, &carols.name).await.expect("carol leaves");
    assert_eq!(state(&left), State::Left);
    assert_eq!(state(&leave(&carol, &carols.name).await.expect("leaving twice")), State::Left);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 1);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_offer_not_claimed_in_time_expires_and_goes_on_to_the_next_entry(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (deal, orders) = sold_out_deal(&app, 1).await;
    let (bob, carol) = (deals_as(&app, "bob"), deals_as(&app, "carol"));
    let bobs = join(&bob, &deal.name, 1).await.unwrap();
    let carols = join(&carol, &deal.name, 1).await.unwrap();
    cancel(&app, &orders[0].0, &orders[0].1).await;
    let offered = entry(&bob, &bobs.name).await.unwrap();
    let ends = offered.offer_expire_time.expect("an end");
    // The default window is 5 minutes, cut short by the deal's end: within 5 minutes of 00:00 UTC,
    // the daily reset. Whole seconds, all from one reading of the database's clock.
    let (deal_ends, now): (i64, i64) = sqlx::query_as(
        "select floor(extract(epoch from least(expire_time, daily_reset_time)))::bigint,
                floor(extract(epoch from now()))::bigint
           from deals where id = $1",
    )
    .bind(uuid(&deal.name))
    .fetch_one(&pool)
    .await
    .unwrap();
    let (lasts, window) = (ends.seconds - now, (deal_ends - now).min(300));
    assert!((window - 5..=window).contains(&lasts), "the offer lasts {window} s (5 minutes at most), got {lasts} s");

    // Time passes: the offer's end is now behind us.
    sqlx::query("update waitlist_entries set offer_expire_time = now() - interval '1 second' where id = $1")
        .bind(uuid(&bobs.name))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(state(&entry(&bob, &bobs.name).await.unwrap()), State::Expired, "expired before any worker ran");
    assert_refused(claim_as(&app, "bob", &deal.name, 1, &bobs.name).await, Code::FailedPrecondition, "OFFER_EXPIRED");
    assert_eq!(worker_pass(&pool).await, 1);
    assert_eq!(worker_pass(&pool).await, 0, "a second pass finds nothing");
    let carols = entry(&carol, &carols.name).await.unwrap();
    assert_eq!((state(&carols), carols.offered_units), (State::Offered, 1), "the unit went on to carol");
    claim_as(&app, "carol", &deal.name, 1, &carols.name).await.expect("carol claims it");
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn when_the_deal_ends_waiting_and_offered_entries_expire_and_no_unit_is_lost(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (deal, orders) = sold_out_deal(&app, 2).await;
    let (bob, carol) = (deals_as(&app, "bob"), deals_as(&app, "carol"));
    let bobs = join(&bob, &deal.name, 1).await.unwrap();
    let carols = join(&carol, &deal.name, 1).await.unwrap();
    cancel(&app, &orders[0].0, &orders[0].1).await;
    assert_eq!(state(&entry(&bob, &bobs.name).await.unwrap()), State::Offered);

    // The deal ends now (after its sales, unlike expire_without_sweep's window in the past).
    sqlx::query("update deals set expire_time = clock_timestamp() where id = $1")
        .bind(uuid(&deal.name))
        .execute(&pool)
        .await
        .unwrap();
    for (who, name) in [(&bob, &bobs.name), (&carol, &carols.name)] {
        assert_eq!(state(&entry(who, name).await.unwrap()), State::Expired);
    }
    assert_refused(claim_as(&app, "bob", &deal.name, 1, &bobs.name).await, Code::FailedPrecondition, "OFFER_EXPIRED");
    assert_eq!(worker_pass(&pool).await, 2);
    // The offer's unit went back to the deal, not on to carol: the deal is over.
    assert_eq!(app.get_deal(&deal.name).await.available_units, 1);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_per_customer_limit_counts_what_a_customer_waits_for(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let limited = dealpb::Deal { max_units_per_customer: Some(3), ..deal_request(3) };
    let deal = app.deals.clone().create_deal(dealpb::CreateDealRequest { deal: Some(limited) }).await.unwrap();
    let deal = deal.into_inner();
    order_as(&app, "bob", &deal.name, 1).await;
    order_as(&app, "carol", &deal.name, 1).await;
    let bob = deals_as(&app, "bob");
    let refused =
        assert_refused(join(&bob, &deal.name, 3).await, Code::FailedPrecondition, "PER_CUSTOMER_LIMIT_EXCEEDED");
    let info = tonic_types::StatusExt::get_error_details(&refused).error_info().cloned().unwrap();
    assert_eq!((info.metadata["limit"].as_str(), info.metadata["remaining"].as_str()), ("3", "2"));
    join(&bob, &deal.name, 2).await.expect("1 held + 2 waited for is the limit");
    assert_refused(join(&bob, &deal.name, 2).await, Code::FailedPrecondition, "PER_CUSTOMER_LIMIT_EXCEEDED");
    // Nor can he order the unit that is left while he waits for two.
    assert_refused(
        claim_as(&app, "bob", &deal.name, 1, "").await,
        Code::FailedPrecondition,
        "PER_CUSTOMER_LIMIT_EXCEEDED",
    );
    order_as(&app, "carol", &deal.name, 1).await;
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn admins_list_the_whole_waitlist_in_join_order_and_customers_their_own(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (deal, _) = sold_out_deal(&app, 1).await;
    let mut joined = Vec::new();
    for customer in ["bob", "carol", "bob", "dave", "bob"] {
        joined.push(join(&deals_as(&app, customer), &deal.name, 1).await.unwrap().name);
    }
    let list = |deals: Deals, page_token: String| {
        let request = dealpb::ListWaitlistEntriesRequest { parent: deal.name.clone(), page_size: 2, page_token };
        async move { deals.clone().list_waitlist_entries(request).await.map(tonic::Response::into_inner) }
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(app.deals.clone(), token).await.unwrap();
        seen.extend(page.waitlist_entries.iter().map(|entry| (entry.name.clone(), entry.position)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<(String, i32)> = joined.iter().cloned().zip(0..).collect();
    assert_eq!(seen, expected, "every entry, in join order, with the entries ahead of it");

    let bobs = list(deals_as(&app, "bob"), String::new()).await.unwrap();
    let names: Vec<&str> = bobs.waitlist_entries.iter().map(|entry| entry.name.as_str()).collect();
    assert_eq!(names, [joined[0].as_str(), joined[2].as_str()]);
    assert!(!bobs.next_page_token.is_empty(), "a page of 2 with more to come");
    // A token is bound to whose entries it lists.
    assert_invalid(list(deals_as(&app, "carol"), bobs.next_page_token).await, &["page_token"]);
    let unknown =
        dealpb::ListWaitlistEntriesRequest { parent: format!("deals/{}", Uuid::new_v4()), ..Default::default() };
    assert_refused(app.deals.clone().list_waitlist_entries(unknown).await, Code::NotFound, "DEAL_NOT_FOUND");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn units_added_to_a_deal_go_to_its_waitlist_first(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (deal, _) = sold_out_deal(&app, 1).await;
    let bob = deals_as(&app, "bob");
    let bobs = join(&bob, &deal.name, 2).await.unwrap();
    let raised = dealpb::Deal { name: deal.name.clone(), total_units: 4, ..Default::default() };
    let mask = prost_types::FieldMask { paths: vec!["total_units".into()] };
    let updated = app
        .deals
        .clone()
        .update_deal(dealpb::UpdateDealRequest { deal: Some(raised), update_mask: Some(mask) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.available_units, 1, "3 units added, 2 of them offered to bob");
    assert_eq!(entry(&bob, &bobs.name).await.unwrap().offered_units, 2);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn releases_racing_joins_and_leaves_never_break_join_order_or_lose_a_unit(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (deal_b, _stop) = spawn_deal_service(pool.clone()).await;
    let other_instance = channel(deal_b).await;
    let (deal, orders) = sold_out_deal(&app, 20).await;
    let deal_name = deal.name.clone();

    let instances = [app.deal_channel.clone(), other_instance];
    let joins = (0..30u64).map(move |n| {
        let customer = format!("waiter-{n}");
        // Half the waiters come through the other instance.
        let channel = instances[(n % 2) as usize].clone();
        let deals = deals_with(&channel, Bearer::of(&token(Role::Customer, &customer)));
        let deal = deal_name.clone();
        async move {
            // Joins and releases interleave: each side starts its calls a few milliseconds apart.
            tokio::time::sleep(Duration::from_millis(2 * n)).await;
            let entry = match join(&deals, &deal, 1 + (n % 3) as i32).await {
                Ok(entry) => entry,
                // Units that came back while nobody waited are on sale: this waiter could order.
                Err(status) if reason(&status) == "UNITS_AVAILABLE" => return,
                Err(status) => panic!("join: {status:?}"),
            };
            // Every third waiter leaves again, whatever it was offered meanwhile.
            if n % 3 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                leave(&deals, &entry.name).await.expect("leave");
            }
        }
    });
    let cancels = orders.into_iter().zip(0u64..).map(|((buyer, order), m)| {
        let orders = app.orders_as(&buyer);
        async move {
            tokio::time::sleep(Duration::from_millis(3 * m)).await;
            orders.clone().cancel_order(orderpb::CancelOrderRequest { name: order.name }).await.expect("cancel");
        }
    });
    let joined = tokio::spawn(join_all(joins));
    join_all(cancels).await;
    joined.await.unwrap();

    let (offered, waiting): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where state = 'offered'), count(*) filter (where state = 'waiting')
           from waitlist_entries",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(offered > 0, "returned units were offered ({waiting} still waiting)");
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_offer_expiring_while_its_claim_is_in_flight_ends_exactly_one_way(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let mut claimed = 0;
    let mut expired = 0;
    for round in 0..10 {
        let (deal, orders) = sold_out_deal(&app, 1).await;
        let bob = deals_as(&app, "bob");
        let bobs = join(&bob, &deal.name, 1).await.unwrap();
        cancel(&app, &orders[0].0, &orders[0].1).await;
        // The offer ends a moment from now; the claim and the worker race it.
        sqlx::query("update waitlist_entries set offer_expire_time = clock_timestamp() + interval '30 milliseconds' where id = $1")
            .bind(uuid(&bobs.name))
            .execute(&pool)
            .await
            .unwrap();
        let pause = Duration::from_millis(20 + round * 2);
        let claim = async {
            tokio::time::sleep(pause).await;
            claim_as(&app, "bob", &deal.name, 1, &bobs.name).await
        };
        let worker = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            worker_pass(&pool).await
        };
        let (claim, _) = tokio::join!(claim, worker);
        worker_pass(&pool).await;
        let end = state(&entry(&bob, &bobs.name).await.unwrap());
        match claim {
            Ok(_) => {
                assert_eq!(end, State::Claimed);
                claimed += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(end, State::Expired);
                expired += 1;
            }
        }
        assert_invariants(&pool).await;
    }
    assert_eq!(claimed + expired, 10);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn units_the_worker_and_abandoned_attempts_give_back_go_to_the_waitlist_too(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let windowed =
        dealpb::Deal { approval_window: Some(prost_types::Duration { seconds: 60, nanos: 0 }), ..deal_request(3) };
    let deal = app.deals.clone().create_deal(dealpb::CreateDealRequest { deal: Some(windowed) }).await.unwrap();
    let deal = deal.into_inner();
    let order = order_as(&app, "buyer", &deal.name, 1).await;
    hold(&app, &deal.name, 1, "buyer", "").await;
    let abandoned_hold = hold(&app, &deal.name, 1, "buyer", "").await;
    let customers = ["bob", "carol", "dave"];
    let mut entries = Vec::new();
    for customer in customers {
        entries.push(join(&deals_as(&app, customer), &deal.name, 1).await.unwrap().name);
    }
    let states = || async {
        let mut states = Vec::new();
        for (customer, name) in customers.iter().zip(&entries) {
            states.push(state(&entry(&deals_as(&app, customer), name).await.unwrap()));
        }
        states
    };
    use State::{Offered, Waiting};

    // An attempt given up (order-service's abandonment) releases its hold: bob is offered the unit.
    topkart::order::placing::abandon::abandon(&pool, &deals_client(app.deal_addr), abandoned_hold).await.unwrap();
    assert_eq!(states().await, [Offered, Waiting, Waiting]);
    // A hold left unresolved is released by the worker, a minute on: carol's turn.
    let later = db_now(&pool).await + chrono::TimeDelta::minutes(1);
    let settled = topkart::worker::settle_holds(&pool, later, &[]).await.unwrap().for_every_deal().unwrap();
    assert_eq!(settled.released, 1);
    assert_eq!(states().await, [Offered, Offered, Waiting]);
    // An order not approved in time expires: dave's turn.
    sqlx::query("update orders set approve_deadline = now() - interval '1 second' where id = $1")
        .bind(uuid(&order.name))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        topkart::worker::expire_orders(&pool, db_now(&pool).await, &[]).await.unwrap().for_every_deal().unwrap(),
        1
    );
    assert_eq!(states().await, [Offered, Offered, Offered]);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 0);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_claim_whose_order_is_never_recorded_gives_the_offer_back_to_its_customer(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (deal, orders) = sold_out_deal(&app, 2).await;
    let (bob, carol) = (deals_as(&app, "bob"), deals_as(&app, "carol"));
    let bobs = join(&bob, &deal.name, 2).await.unwrap();
    let carols = join(&carol, &deal.name, 1).await.unwrap();
    for (buyer, order) in &orders {
        cancel(&app, buyer, order).await;
    }
    // bob's claim holds the units, and then its attempt is given up before any order is recorded.
    let claim = hold(&app, &deal.name, 2, "bob", &bobs.name).await;
    let claimed = entry(&bob, &bobs.name).await.unwrap();
    assert_eq!((state(&claimed), claimed.order.clone()), (State::Claimed, format!("orders/{claim}")));
    topkart::order::placing::abandon::abandon(&pool, &deals_client(app.deal_addr), claim).await.unwrap();

    let reopened = entry(&bob, &bobs.name).await.unwrap();
    assert_eq!((state(&reopened), reopened.offered_units, reopened.order.as_str()), (State::Offered, 2, ""));
    assert_eq!(state(&entry(&carol, &carols.name).await.unwrap()), State::Waiting, "the units stayed bob's");
    assert_invariants(&pool).await;
    let order = claim_as(&app, "bob", &deal.name, 2, &bobs.name).await.expect("bob claims again");
    assert_eq!(entry(&bob, &bobs.name).await.unwrap().order, order.name);

    // A claimed order that is cancelled gives its units on to the next entry, not back to bob.
    cancel(&app, "bob", &order).await;
    assert_eq!(state(&entry(&bob, &bobs.name).await.unwrap()), State::Claimed);
    assert_eq!(state(&entry(&carol, &carols.name).await.unwrap()), State::Offered);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_ended_offer_gets_no_more_units_and_units_on_sale_at_a_join_stay_on_sale(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (deal, orders) = sold_out_deal(&app, 4).await;
    let (bob, carol) = (deals_as(&app, "bob"), deals_as(&app, "carol"));
    let bobs = join(&bob, &deal.name, 3).await.unwrap();
    let carols = join(&carol, &deal.name, 1).await.unwrap();
    cancel(&app, &orders[0].0, &orders[0].1).await;
    assert_eq!(entry(&bob, &bobs.name).await.unwrap().offered_units, 1);
    // bob's offer ends; before the worker runs, a unit comes back: it goes past bob, to carol.
    sqlx::query("update waitlist_entries set offer_expire_time = now() - interval '1 second' where id = $1")
        .bind(uuid(&bobs.name))
        .execute(&pool)
        .await
        .unwrap();
    cancel(&app, &orders[1].0, &orders[1].1).await;
    let sql_offered: i32 = sqlx::query_scalar("select offered_units from waitlist_entries where id = $1")
        .bind(uuid(&bobs.name))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sql_offered, 1, "an ended offer gets nothing more");
    assert_eq!(state(&entry(&carol, &carols.name).await.unwrap()), State::Offered);
    assert_invariants(&pool).await;

    // Nobody waits now: a unit that comes back is on sale. dave asks for more than is left and
    // joins; that unit stays on sale, and only what comes back after it is offered to dave.
    cancel(&app, &orders[2].0, &orders[2].1).await;
    let dave = deals_as(&app, "dave");
    let daves = join(&dave, &deal.name, 2).await.expect("1 left, dave wants 2");
    cancel(&app, &orders[3].0, &orders[3].1).await;
    assert_eq!(entry(&dave, &daves.name).await.unwrap().offered_units, 1);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 1, "the unit on sale at the join stays on sale");
    order_as(&app, "eve", &deal.name, 1).await;
    assert_invariants(&pool).await;
}
