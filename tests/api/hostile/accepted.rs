//! Hostile-looking inputs that are valid and must be accepted as sent.

use super::*;

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn hostile_inputs_that_are_accepted(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let mut deals = app.deals.clone();
    let mut create = async |deal: dealpb::Deal| {
        deals.create_deal(dealpb::CreateDealRequest { deal: Some(deal) }).await.expect("accepted").into_inner()
    };

    // Exactly 12 hours after the start is the longest deal allowed.
    let start = (Utc::now() + TimeDelta::hours(1)).trunc_subsecs(0);
    let longest = create(dealpb::Deal {
        start_time: at(start),
        expire_time: at(start + TimeDelta::hours(12)),
        ..deal_request(5)
    })
    .await;
    assert_eq!((longest.start_time, longest.expire_time), (at(start), at(start + TimeDelta::hours(12))));
    assert_eq!(longest.state(), DealState::Scheduled);

    // Names are taken as sent: no Unicode normalisation, no confusable check. A Latin name and one
    // with Cyrillic homoglyphs (U+0430, U+0440) are two different, valid names.
    let latin = "Paypal Gift Card";
    let homoglyphs = "P\u{0430}yp\u{0430}l Gift C\u{0430}\u{0440}d";
    for name in [latin, homoglyphs] {
        let deal = create(dealpb::Deal { product_name: name.into(), ..deal_request(5) }).await;
        assert_eq!(deal.product_name, name);
        assert_eq!(app.get_deal(&deal.name).await.product_name, name);
    }

    // 200 characters is the limit in characters, not bytes (Postgres' char_length agrees).
    for name in ["é".repeat(200), "😀".repeat(200), "e\u{301}".repeat(100)] {
        let deal = create(dealpb::Deal { product_name: name.clone(), ..deal_request(5) }).await;
        assert_eq!(deal.product_name, name);
    }

    // Leading and trailing whitespace, including newlines and U+0085 (a control character that is
    // also Unicode whitespace), is trimmed before the control-character check.
    let trimmed = create(dealpb::Deal { product_name: "\n\u{85} Phone \u{3000}\r\n".into(), ..deal_request(5) }).await;
    assert_eq!(trimmed.product_name, "Phone");

    // Output-only fields are ignored, however hostile.
    let ignored = create(dealpb::Deal {
        name: format!("orders/{}", Uuid::nil()),
        available_units: -5,
        state: 42,
        create_time: Some(Timestamp { seconds: i64::MIN, nanos: -1 }),
        update_time: Some(Timestamp { seconds: i64::MAX, nanos: i32::MAX }),
        ..deal_request(5)
    })
    .await;
    assert!(ignored.name.starts_with("deals/") && ignored.name != format!("deals/{}", Uuid::nil()));
    assert_eq!((ignored.available_units, ignored.state()), (5, DealState::Active));

    // The largest price times the largest quantity fits an i64 of micros with room to spare
    // (1.0000000000999999e15 × 100 ≈ 1e17 < 9.2e18): the total is exact.
    let top = money("INR", 1_000_000_000, 999_999_000);
    let dearest = create(dealpb::Deal {
        actual_price: Some(top.clone()),
        final_price: Some(top.clone()),
        total_units: 100,
        ..deal_request(100)
    })
    .await;
    let order = app
        .order(orderpb::Order { unit_price: Some(top.clone()), ..order_request(&dearest.name, 100) })
        .await
        .expect("the largest order");
    assert_eq!(order.unit_price, Some(top));
    assert_eq!(order.total_price, Some(money("INR", 100_000_000_099, 999_900_000)));
    assert_eq!(app.get_deal(&dearest.name).await.available_units, 0);

    let counts: (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from deals), (select count(*) from orders), (select count(*) from reservations)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(counts, (9, 1, 1));
    assert_invariants(&pool).await;
    assert_both_serving(&app).await;
}
