//! OrderService: each RPC's success and each of its failures, and the units they move.

use std::time::Duration;

use sqlx::PgPool;
use tonic::Code;
use topkart::{
    proto::order::{self as pb, order::State},
    shared::auth::Role,
    shared::hold_times::HOLD_TIMEOUT,
};

use crate::helpers::*;

fn name(order: &pb::Order) -> String {
    order.name.clone()
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn create_order_reserves_units_and_records_the_price_paid(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(10).await;
    let order = app.order(pb::Order { unit_price: Some(inr(600)), ..order_request(&deal.name, 3) }).await.unwrap();
    assert_eq!(order.state(), State::PendingApproval);
    assert_eq!((order.unit_price.clone(), order.total_price.clone()), (Some(inr(600)), Some(inr(1800))));
    assert_eq!(order.deal, deal.name);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 7);

    let tracked = app.orders.clone().get_order(pb::GetOrderRequest { name: name(&order) }).await.unwrap().into_inner();
    assert_eq!(tracked, order);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_expired_deal_cannot_be_ordered_even_before_the_sweep(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(10).await;
    app.expire_without_sweep(&deal.name).await;
    assert_refused(app.order(order_request(&deal.name, 1)).await, Code::FailedPrecondition, "DEAL_EXPIRED");
    assert_eq!(app.order_count().await, 0);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 10);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_order_for_more_than_is_left_fails_and_changes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(5).await;
    app.order(order_request(&deal.name, 3)).await.unwrap();
    let status =
        assert_refused(app.order(order_request(&deal.name, 3)).await, Code::FailedPrecondition, "INSUFFICIENT_UNITS");
    assert!(status.message().contains("only 2 left"), "{status:?}");
    assert_eq!(app.order_count().await, 1);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 2);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_order_at_a_price_nobody_was_shown_is_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(5).await;
    let shown_old_price = pb::Order { unit_price: Some(inr(650)), ..order_request(&deal.name, 1) };
    assert_refused(app.order(shown_old_price).await, Code::FailedPrecondition, "PRICE_CHANGED");
    assert_eq!(app.order_count().await, 0);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 5);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn create_order_refuses_bad_input_and_unknown_deals(pool: PgPool) {
    let app = spawn_app(pool).await;
    let unknown = format!("deals/{}", uuid::Uuid::new_v4());
    assert_refused(app.order(order_request(&unknown, 1)).await, Code::NotFound, "DEAL_NOT_FOUND");
    assert_invalid(
        app.order(pb::Order { customer_id: String::new(), ..order_request("deal/1", 0) }).await,
        &["order.deal", "order.quantity"],
    );
    let mut client = app.orders.clone();
    assert_invalid(
        client
            .create_order(pb::CreateOrderRequest {
                waitlist_entry: String::new(),
                order: None,
                request_id: String::new(),
            })
            .await,
        &["order"],
    );
    assert_eq!(app.order_count().await, 0);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn get_order_refuses_unknown_and_malformed_names(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut client = app.orders.clone();
    let unknown = format!("orders/{}", uuid::Uuid::new_v4());
    assert_refused(client.get_order(pb::GetOrderRequest { name: unknown }).await, Code::NotFound, "ORDER_NOT_FOUND");
    assert_invalid(client.get_order(pb::GetOrderRequest { name: "orders/1".into() }).await, &["name"]);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn approve_moves_a_pending_order_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(5).await;
    let order = app.order(order_request(&deal.name, 2)).await.unwrap();
    let (mut client, mut admin) = (app.orders.clone(), app.admin_orders.clone());
    let approved = admin.approve_order(pb::ApproveOrderRequest { name: name(&order) }).await.unwrap().into_inner();
    assert_eq!(approved.state(), State::Approved);
    assert_refused(
        admin.approve_order(pb::ApproveOrderRequest { name: name(&order) }).await,
        Code::FailedPrecondition,
        "ORDER_NOT_PENDING",
    );
    assert_refused(
        admin.reject_order(pb::RejectOrderRequest { name: name(&order) }).await,
        Code::FailedPrecondition,
        "ORDER_NOT_PENDING",
    );
    assert_refused(
        client.cancel_order(pb::CancelOrderRequest { name: name(&order) }).await,
        Code::FailedPrecondition,
        "ORDER_NOT_PENDING",
    );
    assert_eq!(app.get_deal(&deal.name).await.available_units, 3, "approved units stay sold");
    let unknown = format!("orders/{}", uuid::Uuid::new_v4());
    assert_refused(
        admin.approve_order(pb::ApproveOrderRequest { name: unknown }).await,
        Code::NotFound,
        "ORDER_NOT_FOUND",
    );
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn reject_and_cancel_give_units_back_exactly_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(10).await;
    let rejected = app.order(order_request(&deal.name, 3)).await.unwrap();
    let cancelled = app.order(order_request(&deal.name, 4)).await.unwrap();
    assert_eq!(app.get_deal(&deal.name).await.available_units, 3);

    let (mut client, mut admin) = (app.orders.clone(), app.admin_orders.clone());
    let reply = admin.reject_order(pb::RejectOrderRequest { name: name(&rejected) }).await.unwrap().into_inner();
    assert_eq!(reply.state(), State::Rejected);
    let reply = client.cancel_order(pb::CancelOrderRequest { name: name(&cancelled) }).await.unwrap().into_inner();
    assert_eq!(reply.state(), State::Cancelled);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 10);

    // Concurrent repeats: exactly none succeed, and no unit comes back twice.
    let repeats = (0..5).map(|_| {
        let (mut client, mut admin) = (app.orders.clone(), app.admin_orders.clone());
        let (rejected, cancelled) = (name(&rejected), name(&cancelled));
        async move {
            (
                admin.reject_order(pb::RejectOrderRequest { name: rejected }).await,
                client.cancel_order(pb::CancelOrderRequest { name: cancelled }).await,
            )
        }
    });
    for (reject, cancel) in join_all(repeats).await {
        assert_refused(reject, Code::FailedPrecondition, "ORDER_NOT_PENDING");
        assert_refused(cancel, Code::FailedPrecondition, "ORDER_NOT_PENDING");
    }
    assert_eq!(app.get_deal(&deal.name).await.available_units, 10);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn concurrent_cancels_of_one_order_release_its_units_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(10).await;
    let order = app.order(order_request(&deal.name, 4)).await.unwrap();
    let cancels = (0..8).map(|_| {
        let mut client = app.orders.clone();
        let name = name(&order);
        async move { client.cancel_order(pb::CancelOrderRequest { name }).await }
    });
    let results = join_all(cancels).await;
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 1);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 10);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn list_orders_filters_by_customer_and_state_newest_first(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(20).await;
    let mut alices = Vec::new();
    for _ in 0..3 {
        alices.push(app.order(order_request(&deal.name, 1)).await.unwrap());
    }
    let bobs = app
        .orders_as("bob")
        .create_order(pb::CreateOrderRequest {
            waitlist_entry: String::new(),
            order: Some(order_request(&deal.name, 1)),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bobs.customer_id, "bob", "the buyer is the token's subject, not the payload's customer_id");
    let mut client = app.admin_orders.clone();
    client.approve_order(pb::ApproveOrderRequest { name: name(&alices[0]) }).await.unwrap();

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let request =
            pb::ListOrdersRequest { page_size: 2, page_token, customer_id: "alice".into(), ..Default::default() };
        let page = client.list_orders(request).await.unwrap().into_inner();
        seen.extend(page.orders.into_iter().map(|order| order.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let newest_first: Vec<_> = alices.iter().rev().map(name).collect();
    assert_eq!(seen, newest_first);

    let everyone = client.list_orders(pb::ListOrdersRequest::default()).await.unwrap().into_inner();
    assert_eq!(everyone.orders.len(), 4);
    assert_eq!(everyone.orders[0].name, bobs.name);
    let approved = pb::ListOrdersRequest { state: State::Approved.into(), ..Default::default() };
    let approved = client.list_orders(approved).await.unwrap().into_inner();
    assert_eq!(approved.orders.iter().map(name).collect::<Vec<_>>(), [name(&alices[0])]);

    assert_invalid(
        client.list_orders(pb::ListOrdersRequest { page_size: -5, ..Default::default() }).await,
        &["page_size"],
    );
    assert_invalid(client.list_orders(pb::ListOrdersRequest { state: 42, ..Default::default() }).await, &["state"]);
    assert_invalid(
        client.list_orders(pb::ListOrdersRequest { page_token: "00".into(), ..Default::default() }).await,
        &["page_token"],
    );
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_cancel_while_deal_service_is_down_stands_and_the_worker_gives_the_units_back(pool: PgPool) {
    let mut app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let order = app.order(order_request(&deal.name, 4)).await.unwrap();
    app.stop_deal_service().await;
    let mut client = app.orders.clone();
    let cancelled = client.cancel_order(pb::CancelOrderRequest { name: name(&order) }).await.unwrap().into_inner();
    assert_eq!(cancelled.state(), State::Cancelled);
    let available = || sqlx::query_scalar::<_, i32>("select available_units from deals").fetch_one(&pool);
    assert_eq!(available().await.unwrap(), 6, "the units are out until the worker settles them");

    let report = topkart::worker::settle_holds(&pool, db_now(&pool).await + HOLD_TIMEOUT, &[])
        .await
        .unwrap()
        .for_every_deal()
        .unwrap();
    assert_eq!(report.finished_releases, 1);
    assert_eq!(available().await.unwrap(), 10);
    assert_invariants(&pool).await;
    let again = topkart::worker::settle_holds(&pool, db_now(&pool).await + HOLD_TIMEOUT, &[])
        .await
        .unwrap()
        .for_every_deal()
        .unwrap();
    assert_eq!(again.finished_releases, 0, "released exactly once");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn with_deal_service_down_an_order_is_unavailable_and_nothing_is_written(pool: PgPool) {
    // A port nobody listens on: bind, note the address, close.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let deals = deals_client_with_deadline(closed, Duration::from_secs(1));
    let (order_addr, _stop) = spawn_order_service(pool.clone(), deals).await;
    let mut client = orders_with(&channel(order_addr).await, Bearer::of(&token(Role::Customer, "alice")));
    let deal = format!("deals/{}", uuid::Uuid::new_v4());
    let result = client
        .create_order(pb::CreateOrderRequest {
            waitlist_entry: String::new(),
            order: Some(order_request(&deal, 1)),
            request_id: String::new(),
        })
        .await;
    assert_refused(result, Code::Unavailable, "DEAL_SERVICE_UNAVAILABLE");
    let orders: i64 = sqlx::query_scalar("select count(*) from orders").fetch_one(&pool).await.unwrap();
    assert_eq!(orders, 0);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_order_reads_as_placed_at_the_instant_its_units_were_reserved(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let order = app.order(order_request(&deal.name, 1)).await.unwrap();
    let reserved_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select create_time from reservations where id = $1")
            .bind(uuid(&order.name))
            .fetch_one(&pool)
            .await
            .unwrap();
    let placed_at = topkart::shared::time::parse(
        "create_time",
        order.create_time.as_ref().expect("create_time"),
        &mut topkart::shared::status::Violations::default(),
    )
    .expect("a valid create_time");
    assert_eq!(placed_at, reserved_at, "create_time is the reservation's instant, not the row's");
    assert_invariants(&pool).await;
}
