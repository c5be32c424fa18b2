//! A Postgres restart in the middle of a load of orders, on a throwaway cluster this test owns: the
//! services report NOT_SERVING while it is gone, recover by themselves, and keep every invariant.
//! And a database that refuses writes, as a standby does mid failover, reads as unavailable.
//! (scripts/ha-test fails a replicated cluster over under the real binaries.)

use std::time::Duration;

use topkart::{proto::deal as dealpb, shared::auth::Role};

use crate::{cluster::Cluster, crashes::*, helpers::*, processes::*};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_load_is_survived_without_a_service_restart() {
    let cluster = Cluster::start().await;
    let pool = cluster.topkart_database(20).await;
    let (deal_addr, _stop_deal) = spawn_deal_service(pool.clone()).await;
    let (order_addr, _stop_order) = spawn_order_service(pool.clone(), deals_client(deal_addr)).await;
    wait_serving(deal_addr).await;
    wait_serving(order_addr).await;
    let mut deals = deals_with(&channel(deal_addr).await, Bearer::of(&token(Role::Admin, "admin")));
    let deal =
        deals.create_deal(dealpb::CreateDealRequest { deal: Some(deal_request(150)) }).await.unwrap().into_inner();

    let load = tokio::spawn({
        let deal = deal.name.clone();
        async move { retrying_buyers(order_addr, &deal, 200, Duration::from_secs(60)).await }
    });
    wait_for_orders(&pool, 30).await;
    cluster.pg_ctl("stop");
    wait_health(deal_addr, ServingStatus::NotServing).await;
    wait_health(order_addr, ServingStatus::NotServing).await;
    cluster.pg_ctl("start");
    wait_serving(deal_addr).await;
    wait_serving(order_addr).await;

    let outcomes = load.await.unwrap();
    assert_settled(&pool, &outcomes, 150).await;
}

/// A standby answers a write with SQLSTATE 25006 (read-only transaction). Mid failover a connection
/// can reach the old primary after it became one, before the proxy in front stops sending it there:
/// the call must read as the database being unavailable (retry), never as INTERNAL.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_write_refused_by_a_read_only_database_is_unavailable_not_internal(pool: sqlx::PgPool) {
    let read_only_options = (*pool.connect_options()).clone().options([("default_transaction_read_only", "on")]);
    let read_only =
        sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_with(read_only_options).await.unwrap();
    let (deal_addr, _stop_deal) = spawn_deal_service(read_only).await;
    let mut deals = deals_with(&channel(deal_addr).await, Bearer::of(&token(Role::Admin, "admin")));

    let refused = deals.create_deal(dealpb::CreateDealRequest { deal: Some(deal_request(10)) }).await;

    assert_refused(refused, tonic::Code::Unavailable, "DATABASE_UNAVAILABLE");
}
