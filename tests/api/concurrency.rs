//! Many buyers, one deal: no interleaving of concurrent orders sells a unit twice, and the batches
//! deal-service makes of concurrent reservations answer each one exactly.

use sqlx::PgPool;
use tonic::Code;
use topkart::proto::{holds as holdspb, order as pb};

use crate::helpers::*;

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn two_hundred_concurrent_orders_on_fifty_units_sell_exactly_fifty(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(50).await;
    let buyers = (0..200).map(|buyer| {
        let mut client = app.orders.clone();
        let order = pb::Order { customer_id: format!("buyer-{buyer}"), ..order_request(&deal.name, 1) };
        async move {
            client
                .create_order(pb::CreateOrderRequest {
                    waitlist_entry: String::new(),
                    order: Some(order),
                    request_id: String::new(),
                })
                .await
        }
    });
    let results = join_all(buyers).await;

    let sold = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(sold, 50);
    // Every unit sold, every other buyer is told so: by deal-service's answer, or, once
    // order-service has heard it, at once by admission.
    for refused in results.into_iter().filter(Result::is_err) {
        assert_refused(refused, Code::FailedPrecondition, "SOLD_OUT");
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

/// Reservations arriving together for one deal are decided in one batch; each must still get the
/// answer it would have got alone: its own units, an exact refusal, or, for a retry, the first
/// answer again.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn concurrent_reservations_of_mixed_sizes_and_retries_each_get_an_exact_answer(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(100).await;
    let ids: Vec<String> = (0..80).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    // 80 reservations of 1 to 3 units (160 units asked of 100), and every tenth sent twice at once.
    let requests: Vec<holdspb::ReserveUnitsRequest> = ids
        .iter()
        .enumerate()
        .flat_map(|(n, id)| {
            let request = holdspb::ReserveUnitsRequest {
                timeout: None,
                waitlist_entry: String::new(),
                deal: deal.name.clone(),
                reservation_id: id.clone(),
                quantity: (n % 3) as i32 + 1,
                expected_unit_price: None,
                customer_id: String::new(),
            };
            let copies = if n % 10 == 0 { 2 } else { 1 };
            std::iter::repeat_n(request, copies)
        })
        .collect();
    let calls = requests.iter().cloned().map(|request| {
        let mut client = app.reservations.clone();
        async move { client.reserve_units(request).await.map(tonic::Response::into_inner) }
    });
    let answers = join_all(calls).await;

    let mut granted = std::collections::HashMap::new();
    for (request, answer) in requests.iter().zip(answers) {
        match answer {
            Ok(reservation) => {
                assert_eq!(reservation.quantity, request.quantity);
                assert_eq!(reservation.reservation_id, request.reservation_id);
                // Both copies of a request get the same reservation.
                if let Some(first) = granted.insert(request.reservation_id.clone(), reservation.clone()) {
                    assert_eq!(first, reservation);
                }
            }
            Err(status) => {
                let refusal = assert_refused(Err::<(), _>(status), Code::FailedPrecondition, "INSUFFICIENT_UNITS");
                assert!(refusal.message().starts_with(&format!("{} units requested", request.quantity)));
            }
        }
    }
    let granted_units: i32 = granted.values().map(|reservation| reservation.quantity).sum();
    let available = app.get_deal(&deal.name).await.available_units;
    assert_eq!(granted_units + available, 100, "every unit is either granted or available");
    assert!(available < 3, "a refusal means too few units were left: {available} left");
    assert_invariants(&pool).await;
}
