//! A Postgres restart in the middle of a load of orders, on a throwaway cluster this test owns: the
//! services report NOT_SERVING while it is gone, recover by themselves, and keep every invariant.

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
