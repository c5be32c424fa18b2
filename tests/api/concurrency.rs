//! A thousand buyers, one deal: no interleaving of concurrent orders sells a unit twice.

use sqlx::PgPool;
use tonic::Code;
use topkart::proto::order as pb;

use crate::helpers::*;

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn two_hundred_concurrent_orders_on_fifty_units_sell_exactly_fifty(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(50).await;
    let buyers =
        (0..200).map(|buyer| {
            let mut client = app.orders.clone();
            let order = pb::Order { customer_id: format!("buyer-{buyer}"), ..order_request(&deal.name, 1) };
            async move {
                client.create_order(pb::CreateOrderRequest { order: Some(order), request_id: String::new() }).await
            }
        });
    let results = join_all(buyers).await;

    let sold = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(sold, 50);
    for refused in results.into_iter().filter(Result::is_err) {
        assert_refused(refused, Code::FailedPrecondition, "INSUFFICIENT_UNITS");
    }
    assert_eq!(app.get_deal(&deal.name).await.available_units, 0);
    assert_eq!(app.order_count().await, 50);
    let reserved: i64 = sqlx::query_scalar(
        "select coalesce(sum(quantity), 0) from reservations where state in ('reserved', 'confirmed')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reserved, 50);
}
