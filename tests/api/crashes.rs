//! `kill -9` in the middle of a load of orders, then a restart: nothing oversold, nothing lost,
//! nothing ordered twice, once the worker has settled what the crash left behind.

use std::{net::SocketAddr, time::Duration};

use sqlx::PgPool;
use tonic::{Code, transport::Endpoint};
use topkart::{
    proto::{deal as dealpb, order as orderpb},
    shared::{auth::Role, hold_times::HOLD_TIMEOUT},
    worker::settle_holds,
};

use crate::{helpers::*, processes::*};

/// How one buyer's attempts ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An order was placed; its name.
    Bought(String),
    /// The deal had too few units left.
    SoldOut,
    /// The order could not be recorded in time and was abandoned, its units given back.
    Abandoned,
    /// Still failing when the buyer's patience ran out.
    GaveUp(Code),
}

/// `buyers` customers each ordering one unit of `deal` through the order-service at `addr`, each
/// under its own request_id, resending on every transient failure for up to `patience`.
pub async fn retrying_buyers(addr: SocketAddr, deal: &str, buyers: usize, patience: Duration) -> Vec<Outcome> {
    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let buyers = (0..buyers).map(|buyer| {
        let mut orders = orders_with(&channel, Bearer::of(&token(Role::Customer, &format!("buyer-{buyer}"))));
        let request = orderpb::CreateOrderRequest {
            waitlist_entry: String::new(),
            order: Some(orderpb::Order { customer_id: format!("buyer-{buyer}"), ..order_request(deal, 1) }),
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        async move {
            let started = tokio::time::Instant::now();
            loop {
                let mut attempt = tonic::Request::new(request.clone());
                attempt.set_timeout(Duration::from_secs(5));
                let status = match orders.create_order(attempt).await {
                    Ok(reply) => return Outcome::Bought(reply.into_inner().name),
                    Err(status) => status,
                };
                match status.code() {
                    Code::FailedPrecondition => return Outcome::SoldOut,
                    Code::Aborted => return Outcome::Abandoned,
                    Code::Unavailable | Code::DeadlineExceeded | Code::Internal | Code::Unknown | Code::Cancelled => {}
                    _ => panic!("unexpected refusal: {status:?}"),
                }
                if started.elapsed() > patience {
                    return Outcome::GaveUp(status.code());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    join_all(buyers.collect::<Vec<_>>()).await
}

/// Waits until at least `count` orders are recorded.
pub async fn wait_for_orders(pool: &PgPool, count: i64) {
    for _ in 0..300 {
        let placed: i64 = sqlx::query_scalar("select count(*) from orders").fetch_one(pool).await.unwrap();
        if placed >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {count} orders were placed");
}

/// Checks a finished load: every buyer got an answer, every bought order exists exactly once, and
/// after the worker settles the holds the deal's units add up.
pub async fn assert_settled(pool: &PgPool, outcomes: &[Outcome], total_units: i32) {
    let bought: Vec<&String> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Bought(name) => Some(name),
            _ => None,
        })
        .collect();
    assert!(!outcomes.iter().any(|outcome| matches!(outcome, Outcome::GaveUp(_))), "{outcomes:?}");
    assert_invariants(pool).await;

    let orders: Vec<uuid::Uuid> = sqlx::query_scalar("select id from orders").fetch_all(pool).await.unwrap();
    assert_eq!(orders.len(), bought.len(), "one order per buyer who was told it bought");
    for name in bought {
        assert!(orders.contains(&uuid(name)), "{name} was confirmed to the buyer but not recorded");
    }
    // A reservation whose caller gave up (its buyer was told ORDER_ABANDONED) may still be in a
    // deal-service batch when the buyers are done, and its hold appear after an abandonment stopped
    // looking: the worker settles it as any stale hold. Settle until nothing is left out (10 s).
    let expected = total_units - orders.len() as i32;
    let mut available = 0;
    for _ in 0..50 {
        settle_holds(pool, db_now(pool).await + HOLD_TIMEOUT, &[]).await.unwrap().for_every_deal().unwrap();
        assert_invariants(pool).await;
        available = sqlx::query_scalar("select available_units from deals").fetch_one(pool).await.unwrap();
        if available == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(available, expected, "units are left out after the holds were settled");
}

async fn create_deal(addr: SocketAddr, units: i32) -> dealpb::Deal {
    let mut deals = deals_with(&channel(addr).await, Bearer::of(&token(Role::Admin, "admin")));
    deals.create_deal(dealpb::CreateDealRequest { deal: Some(deal_request(units)) }).await.unwrap().into_inner()
}

/// Which service a test kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    DealService,
    OrderService,
}

/// Runs both services as binaries, starts 200 retrying buyers on 150 units, kills `victim` with
/// SIGKILL once 30 orders are in, restarts it on the same port, and checks the settled result.
async fn kill_9_mid_load(pool: PgPool, victim: Victim) {
    let url = database_url(&pool);
    let (deal_addr, order_addr) = (free_addr().await, free_addr().await);
    let deal_args = vec!["--listen-addr".to_owned(), deal_addr.to_string()];
    let order_args = vec![
        "--listen-addr".to_owned(),
        order_addr.to_string(),
        "--deal-service-url".into(),
        format!("http://{deal_addr}"),
    ];
    let start = |binary: &str, args: &[String]| {
        Process::start(binary, &url, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut deal_service = start(env!("CARGO_BIN_EXE_deal-service"), &deal_args);
    let mut order_service = start(env!("CARGO_BIN_EXE_order-service"), &order_args);
    wait_serving(deal_addr).await;
    wait_serving(order_addr).await;
    let deal = create_deal(deal_addr, 150).await;

    let load = tokio::spawn({
        let deal = deal.name.clone();
        async move { retrying_buyers(order_addr, &deal, 200, Duration::from_secs(30)).await }
    });
    wait_for_orders(&pool, 30).await;
    match victim {
        Victim::DealService => {
            deal_service.kill_hard().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            deal_service = start(env!("CARGO_BIN_EXE_deal-service"), &deal_args);
            wait_serving(deal_addr).await;
        }
        Victim::OrderService => {
            order_service.kill_hard().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            order_service = start(env!("CARGO_BIN_EXE_order-service"), &order_args);
            wait_serving(order_addr).await;
        }
    }

    let outcomes = load.await.unwrap();
    assert_settled(&pool, &outcomes, 150).await;
    drop((deal_service, order_service));
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn kill_9_of_order_service_mid_load_loses_and_doubles_nothing(pool: PgPool) {
    kill_9_mid_load(pool, Victim::OrderService).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn kill_9_of_deal_service_mid_load_loses_and_doubles_nothing(pool: PgPool) {
    kill_9_mid_load(pool, Victim::DealService).await;
}
