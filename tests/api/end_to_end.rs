//! The README's flow against the three real binaries, started as processes on free ports over a
//! fresh database and awaited through `grpc.health.v1`.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use sqlx::PgPool;
use tonic::Code;
use topkart::{
    proto::{deal as dealpb, order as orderpb},
    shared::{auth::Role, time},
};

use crate::{helpers::*, processes::*};

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_readme_flow_runs_on_the_real_binaries(pool: PgPool) {
    let url = database_url(&pool);
    let (deal_addr, order_addr, worker_addr) = (free_addr().await, free_addr().await, free_addr().await);
    // Both APIs log at debug level into files, which must never show a token or the secret.
    let logs = std::env::temp_dir().join(format!("topkart-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&logs).unwrap();
    let deal = Process::start_logging_to(
        env!("CARGO_BIN_EXE_deal-service"),
        &url,
        &["--listen-addr", &deal_addr.to_string()],
        &logs.join("deal-service.log"),
    );
    let order = Process::start_logging_to(
        env!("CARGO_BIN_EXE_order-service"),
        &url,
        &["--listen-addr", &order_addr.to_string(), "--deal-service-url", &format!("http://{deal_addr}")],
        &logs.join("order-service.log"),
    );
    let worker = Process::start(
        env!("CARGO_BIN_EXE_expiry-worker"),
        &url,
        &["--listen-addr", &worker_addr.to_string(), "--sweep-interval-secs", "1"],
    );
    for addr in [deal_addr, order_addr, worker_addr] {
        wait_serving(addr).await;
    }
    let (admin_token, alice_token) = (token(Role::Admin, "admin"), token(Role::Customer, "alice"));
    let mut deals = deals_with(&channel(deal_addr).await, Bearer::of(&admin_token));
    let mut orders = orders_with(&channel(order_addr).await, Bearer::of(&alice_token));
    let mut admin_orders = orders_with(&channel(order_addr).await, Bearer::of(&admin_token));

    // An admin creates a deal; a customer lists the live deals and orders one.
    let created =
        deals.create_deal(dealpb::CreateDealRequest { deal: Some(deal_request(10)) }).await.unwrap().into_inner();
    let live = deals.list_deals(dealpb::ListDealsRequest::default()).await.unwrap().into_inner();
    assert_eq!(live.deals, [created.clone()]);
    let shown_price = live.deals[0].final_price.clone();
    let order_req = orderpb::Order { unit_price: shown_price, ..order_request(&created.name, 2) };
    let placed = orders
        .create_order(orderpb::CreateOrderRequest { order: Some(order_req), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();

    // The customer tracks the order; the admin approves it.
    let tracked = orders.get_order(orderpb::GetOrderRequest { name: placed.name.clone() }).await.unwrap().into_inner();
    assert_eq!(tracked.state(), orderpb::order::State::PendingApproval);
    let approved = admin_orders
        .approve_order(orderpb::ApproveOrderRequest { name: placed.name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.state(), orderpb::order::State::Approved);

    // A deal whose expiry has passed cannot be ordered, and the worker marks it expired.
    let expiring = dealpb::Deal {
        expire_time: Some(time::to_proto(Utc::now() + TimeDelta::milliseconds(1500))),
        ..deal_request(5)
    };
    let expiring = deals.create_deal(dealpb::CreateDealRequest { deal: Some(expiring) }).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let refused = orders
        .create_order(orderpb::CreateOrderRequest {
            order: Some(order_request(&expiring.name, 1)),
            request_id: String::new(),
        })
        .await;
    assert_refused(refused, Code::FailedPrecondition, "DEAL_EXPIRED");
    let id = uuid(&expiring.name);
    let mut swept = false;
    for _ in 0..50 {
        if stored_state(&pool, id).await == "expired" {
            swept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(swept, "the worker never swept the expired deal");

    for process in [deal, order, worker] {
        assert!(process.terminate().await.success(), "a binary did not shut down cleanly on SIGTERM");
    }
    for log in ["deal-service.log", "order-service.log"] {
        let text = std::fs::read_to_string(logs.join(log)).unwrap();
        assert!(text.contains("DEBUG") || text.contains("INFO"), "{log} is empty: the check below would prove nothing");
        for secret in [admin_token.as_str(), alice_token.as_str(), TEST_SECRET, "eyJ"] {
            assert!(!text.contains(secret), "{log} shows a token or the secret");
        }
    }
    std::fs::remove_dir_all(logs).unwrap();
}
