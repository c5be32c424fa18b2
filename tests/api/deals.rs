//! DealService: each RPC's success and each of its failures.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use prost_types::FieldMask;
use sqlx::PgPool;
use tonic::Code;
use topkart::{
    proto::{
        deal::{self as pb, deal::State},
        holds as holdspb,
    },
    shared::{layers::Limits, time},
};

use crate::helpers::*;

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|path| (*path).to_owned()).collect() })
}

async fn deal_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from deals").fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn create_deal_returns_a_live_deal_with_all_units_available(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(50).await;
    assert!(deal.name.starts_with("deals/"));
    assert_eq!((deal.total_units, deal.available_units), (50, 50));
    assert_eq!(deal.state(), State::Active);
    assert_eq!(deal.final_price, Some(inr(600)));
    assert_eq!(app.get_deal(&deal.name).await, deal);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn create_deal_scheduled_for_later_is_scheduled(pool: PgPool) {
    let app = spawn_app(pool).await;
    let start = Utc::now() + TimeDelta::hours(1);
    let request = pb::Deal {
        start_time: Some(time::to_proto(start)),
        expire_time: Some(time::to_proto(start + TimeDelta::hours(12))),
        ..deal_request(5)
    };
    let deal = app.deals.clone().create_deal(pb::CreateDealRequest { deal: Some(request) }).await.unwrap().into_inner();
    assert_eq!(deal.state(), State::Scheduled);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn create_deal_refuses_bad_input_naming_every_field_and_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let mut client = app.deals.clone();
    let cases: Vec<(pb::Deal, Vec<&str>)> = vec![
        (pb::Deal { final_price: Some(inr(1001)), ..deal_request(5) }, vec!["deal.final_price"]),
        (pb::Deal { total_units: 0, ..deal_request(5) }, vec!["deal.total_units"]),
        (
            pb::Deal { product_name: "  ".into(), total_units: -1, ..deal_request(5) },
            vec!["deal.product_name", "deal.total_units"],
        ),
        (
            pb::Deal {
                expire_time: Some(time::to_proto(Utc::now() + TimeDelta::hours(12) + TimeDelta::seconds(5))),
                ..deal_request(5)
            },
            vec!["deal.expire_time"],
        ),
        (
            pb::Deal { expire_time: Some(time::to_proto(Utc::now() - TimeDelta::seconds(1))), ..deal_request(5) },
            vec!["deal.expire_time"],
        ),
    ];
    for (deal, fields) in cases {
        assert_invalid(client.create_deal(pb::CreateDealRequest { deal: Some(deal) }).await, &fields);
    }
    assert_invalid(client.create_deal(pb::CreateDealRequest { deal: None }).await, &["deal"]);
    assert_eq!(deal_count(&pool).await, 0);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn update_deal_changes_only_masked_fields(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(10).await;
    let patch = pb::Deal {
        name: deal.name.clone(),
        product_name: "Tablet".into(),
        total_units: 20,
        final_price: Some(inr(1)),
        ..Default::default()
    };
    let updated = app
        .deals
        .clone()
        .update_deal(pb::UpdateDealRequest { deal: Some(patch), update_mask: mask(&["product_name", "total_units"]) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.product_name, "Tablet");
    assert_eq!((updated.total_units, updated.available_units), (20, 20));
    assert_eq!(updated.final_price, deal.final_price);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn update_deal_cannot_lower_total_units_below_those_sold(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(10).await;
    app.order(order_request(&deal.name, 4)).await.unwrap();
    let mut client = app.deals.clone();
    let lower = |units| pb::UpdateDealRequest {
        deal: Some(pb::Deal { name: deal.name.clone(), total_units: units, ..Default::default() }),
        update_mask: mask(&["total_units"]),
    };
    assert_refused(client.update_deal(lower(3)).await, Code::FailedPrecondition, "TOTAL_UNITS_BELOW_SOLD");
    let after = app.get_deal(&deal.name).await;
    assert_eq!((after.total_units, after.available_units), (10, 6));
    let updated = client.update_deal(lower(4)).await.unwrap().into_inner();
    assert_eq!((updated.total_units, updated.available_units), (4, 0));
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn update_deal_refuses_expired_unknown_and_badly_masked_requests(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(10).await;
    let mut client = app.deals.clone();
    let rename = |name: &str, paths: &[&str]| pb::UpdateDealRequest {
        deal: Some(pb::Deal { name: name.into(), product_name: "Tablet".into(), ..Default::default() }),
        update_mask: mask(paths),
    };
    assert_invalid(client.update_deal(rename(&deal.name, &[])).await, &["update_mask"]);
    assert_invalid(client.update_deal(rename(&deal.name, &["available_units"])).await, &["update_mask.paths[0]"]);
    assert_invalid(client.update_deal(rename("deals/nope", &["product_name"])).await, &["deal.name"]);
    let unknown = format!("deals/{}", uuid::Uuid::new_v4());
    assert_refused(client.update_deal(rename(&unknown, &["product_name"])).await, Code::NotFound, "DEAL_NOT_FOUND");
    let started = pb::UpdateDealRequest {
        deal: Some(pb::Deal {
            name: deal.name.clone(),
            start_time: Some(time::to_proto(Utc::now() + TimeDelta::minutes(5))),
            ..Default::default()
        }),
        update_mask: mask(&["start_time"]),
    };
    assert_refused(client.update_deal(started).await, Code::FailedPrecondition, "START_TIME_LOCKED");
    app.expire_without_sweep(&deal.name).await;
    assert_refused(
        client.update_deal(rename(&deal.name, &["product_name"])).await,
        Code::FailedPrecondition,
        "DEAL_EXPIRED",
    );
    assert_eq!(app.get_deal(&deal.name).await.product_name, "Phone");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn get_deal_refuses_unknown_and_malformed_names(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut client = app.deals.clone();
    let unknown = format!("deals/{}", uuid::Uuid::new_v4());
    assert_refused(client.get_deal(pb::GetDealRequest { name: unknown }).await, Code::NotFound, "DEAL_NOT_FOUND");
    assert_invalid(client.get_deal(pb::GetDealRequest { name: "deals/42".into() }).await, &["name"]);
    assert_invalid(client.get_deal(pb::GetDealRequest { name: String::new() }).await, &["name"]);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_expired_deal_reads_expired_before_any_sweep(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(10).await;
    app.expire_without_sweep(&deal.name).await;
    assert_eq!(app.get_deal(&deal.name).await.state(), State::Expired);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn list_deals_shows_customers_only_live_deals_with_units_left(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let live = app.create_deal(10).await;
    let expired = app.create_deal(10).await;
    app.expire_without_sweep(&expired.name).await;
    let sold_out = app.create_deal(1).await;
    app.order(order_request(&sold_out.name, 1)).await.unwrap();
    let later = Utc::now() + TimeDelta::hours(1);
    insert_deal_at(&pool, later, later + TimeDelta::hours(1), "scheduled").await;

    let mut client = app.deals.clone();
    let listed = client.list_deals(pb::ListDealsRequest::default()).await.unwrap().into_inner();
    let names: Vec<_> = listed.deals.iter().map(|deal| deal.name.as_str()).collect();
    assert_eq!(names, [live.name.as_str()]);
    assert!(listed.next_page_token.is_empty());

    let expired_list = client
        .list_deals(pb::ListDealsRequest { state: State::Expired.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired_list.deals.iter().map(|deal| deal.name.as_str()).collect::<Vec<_>>(), [expired.name.as_str()]);
    let active = client
        .list_deals(pb::ListDealsRequest { state: State::Active.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.deals.len(), 2, "the admin's view of ACTIVE includes the sold-out deal");
}

/// The first page comes from a snapshot; a change made elsewhere (another instance, the worker)
/// shows within `MAX_STALENESS`, and one made through this instance at once.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn list_deals_shows_changes_within_its_documented_staleness(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let first = app.create_deal(10).await;
    let mut client = app.deals.clone();
    let names = |page: pb::ListDealsResponse| page.deals.into_iter().map(|deal| deal.name).collect::<Vec<_>>();
    assert_eq!(
        names(client.list_deals(pb::ListDealsRequest::default()).await.unwrap().into_inner()),
        std::slice::from_ref(&first.name)
    );

    let second = app.create_deal(10).await;
    let listed = names(client.list_deals(pb::ListDealsRequest::default()).await.unwrap().into_inner());
    assert_eq!(listed.len(), 2, "a deal created through this instance shows at once");

    // Sold out behind the service's back, as another instance would.
    sqlx::query("update deals set available_units = 0 where id = $1")
        .bind(uuid(&second.name))
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(topkart::deal::live_deals::MAX_STALENESS + Duration::from_millis(20)).await;
    assert_eq!(names(client.list_deals(pb::ListDealsRequest::default()).await.unwrap().into_inner()), [first.name]);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn list_deals_pages_through_every_live_deal_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(app.create_deal(3).await.name);
    }
    let mut client = app.deals.clone();
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_deals(pb::ListDealsRequest { page_size: 2, page_token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.deals.len() <= 2);
        seen.extend(page.deals.into_iter().map(|deal| deal.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    seen.sort();
    created.sort();
    assert_eq!(seen, created);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn list_deals_refuses_bad_paging_and_unknown_states(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut client = app.deals.clone();
    assert_invalid(
        client.list_deals(pb::ListDealsRequest { page_size: -1, ..Default::default() }).await,
        &["page_size"],
    );
    assert_invalid(
        client.list_deals(pb::ListDealsRequest { page_token: "forged".into(), ..Default::default() }).await,
        &["page_token"],
    );
    assert_invalid(client.list_deals(pb::ListDealsRequest { state: 99, ..Default::default() }).await, &["state"]);
    for _ in 0..3 {
        app.create_deal(3).await;
    }
    let page =
        client.list_deals(pb::ListDealsRequest { page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    // A token made for the live view is refused for another filter.
    let other_filter =
        pb::ListDealsRequest { page_token: page.next_page_token, state: State::Expired.into(), ..Default::default() };
    assert_invalid(client.list_deals(other_filter).await, &["page_token"]);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn reserve_and_release_are_idempotent_by_reservation_id(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(10).await;
    let mut client = app.reservations.clone();
    let reservation_id = uuid::Uuid::new_v4().to_string();
    let reserve = |quantity| holdspb::ReserveUnitsRequest {
        timeout: None,
        waitlist_entry: String::new(),
        deal: deal.name.clone(),
        reservation_id: reservation_id.clone(),
        quantity,
        expected_unit_price: Some(inr(600)),
        customer_id: String::new(),
    };
    let first = client.reserve_units(reserve(3)).await.unwrap().into_inner();
    let again = client.reserve_units(reserve(3)).await.unwrap().into_inner();
    assert_eq!(first, again);
    assert_eq!(first.unit_price, Some(inr(600)));
    assert_eq!(app.get_deal(&deal.name).await.available_units, 7);
    assert_refused(client.reserve_units(reserve(4)).await, Code::AlreadyExists, "RESERVATION_ID_REUSED");

    let release = holdspb::ReleaseUnitsRequest { reservation_id: reservation_id.clone() };
    let released = client.release_units(release.clone()).await.unwrap().into_inner();
    assert_eq!(released.state(), holdspb::reservation::State::Released);
    client.release_units(release).await.unwrap();
    assert_eq!(app.get_deal(&deal.name).await.available_units, 10);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn reserve_refuses_with_a_reason_and_takes_nothing(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(5).await;
    let mut client = app.reservations.clone();
    let reserve = |deal: &str, quantity, price: Option<i64>| holdspb::ReserveUnitsRequest {
        timeout: None,
        waitlist_entry: String::new(),
        deal: deal.into(),
        reservation_id: uuid::Uuid::new_v4().to_string(),
        quantity,
        expected_unit_price: price.map(inr),
        customer_id: String::new(),
    };
    assert_refused(
        client.reserve_units(reserve(&deal.name, 6, None)).await,
        Code::FailedPrecondition,
        "INSUFFICIENT_UNITS",
    );
    assert_refused(
        client.reserve_units(reserve(&deal.name, 1, Some(599))).await,
        Code::FailedPrecondition,
        "PRICE_CHANGED",
    );
    let unknown = format!("deals/{}", uuid::Uuid::new_v4());
    assert_refused(client.reserve_units(reserve(&unknown, 1, None)).await, Code::NotFound, "DEAL_NOT_FOUND");
    assert_invalid(client.reserve_units(reserve(&deal.name, 0, None)).await, &["quantity"]);
    assert_invalid(
        client
            .reserve_units(holdspb::ReserveUnitsRequest { reservation_id: "x".into(), ..reserve("deals/x", 101, None) })
            .await,
        &["deal", "reservation_id", "quantity"],
    );
    let later = Utc::now() + TimeDelta::hours(1);
    let scheduled = insert_deal_at(&pool, later, later + TimeDelta::hours(1), "scheduled").await;
    assert_refused(
        client.reserve_units(reserve(&format!("deals/{scheduled}"), 1, None)).await,
        Code::FailedPrecondition,
        "DEAL_NOT_STARTED",
    );
    app.expire_without_sweep(&deal.name).await;
    assert_refused(client.reserve_units(reserve(&deal.name, 1, None)).await, Code::FailedPrecondition, "DEAL_EXPIRED");

    assert_eq!(app.get_deal(&deal.name).await.available_units, 5);
    let reservations: i64 = sqlx::query_scalar("select count(*) from reservations").fetch_one(&pool).await.unwrap();
    assert_eq!(reservations, 0);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn release_of_an_unknown_reservation_is_not_found(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut client = app.reservations.clone();
    let unknown = holdspb::ReleaseUnitsRequest { reservation_id: uuid::Uuid::new_v4().to_string() };
    assert_refused(client.release_units(unknown).await, Code::NotFound, "RESERVATION_NOT_FOUND");
    assert_invalid(
        client.release_units(holdspb::ReleaseUnitsRequest { reservation_id: String::new() }).await,
        &["reservation_id"],
    );
}

/// `deal::routes` serves ListDeals and WatchDeal from bytes encoded once; the generated routes of
/// the two (a server built without it) answer the same, decoded.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_generated_routes_of_list_deals_and_watch_deal_answer_as_the_encoded_ones(pool: PgPool) {
    use tonic::codegen::tokio_stream::StreamExt;
    use topkart::{
        deal::grpc::DealApi,
        proto::deal::deal_service_server::DealService,
        shared::auth::{Caller, Role},
    };

    let app = spawn_app(pool.clone()).await;
    for units in [3, 5, 8] {
        app.create_deal(units).await;
    }
    let first = app.create_deal(13).await;
    let mut client = app.deals.clone();
    let page_request = pb::ListDealsRequest { page_size: 2, ..Default::default() };
    let served = client.list_deals(page_request.clone()).await.unwrap().into_inner();
    assert_eq!(served.deals.len(), 2);
    assert!(!served.next_page_token.is_empty());

    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let api = DealApi::new(pool.clone(), &Limits { max_watchers: 10, ..Limits::default() }, stopping);
    fn as_customer<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(Caller::Token { subject: "alice".into(), role: Role::Customer });
        request
    }
    let generated = api.list_deals(as_customer(page_request)).await.unwrap().into_inner();
    assert_eq!(generated, served);

    let watch_request = pb::WatchDealRequest { name: first.name.clone() };
    let mut watched = api.watch_deal(as_customer(watch_request)).await.unwrap().into_inner();
    let now = watched.next().await.unwrap().unwrap();
    assert_eq!(now, app.get_deal(&first.name).await);
}

/// Rust and SQL agree on when a deal ends (`DealTerms::end_time`, `deal_end_time`), and SQL's state
/// turns expired exactly then: around midnight, at the twelve-hour limit, and in between.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_deal_ends_at_the_same_instant_in_rust_and_in_sql(pool: PgPool) {
    use chrono::TimeZone;
    let midnight = Utc.with_ymd_and_hms(2026, 12, 8, 0, 0, 0).unwrap();
    let second = TimeDelta::seconds(1);
    let starts = [
        midnight - TimeDelta::hours(12),
        midnight - TimeDelta::hours(1),
        midnight - second,
        midnight,
        midnight + second,
    ];
    let lengths = [second, TimeDelta::minutes(59), TimeDelta::hours(1) + second, TimeDelta::hours(12)];
    for start in starts {
        for length in lengths {
            let price = |units: i64| topkart::shared::money::Price::from_stored("INR".into(), units * 1_000_000);
            let terms = topkart::deal::domain::DealTerms {
                product_name: "Phone".into(),
                actual_price: price(1000),
                final_price: price(600),
                total_units: 10,
                start_time: start,
                expire_time: start + length,
                max_units_per_customer: None,
                approval_window_seconds: None,
                offer_window_seconds: 300,
            };
            let id = uuid::Uuid::new_v4();
            topkart::deal::store::insert_deal(&pool, id, &terms, topkart::deal::domain::DealState::Scheduled)
                .await
                .unwrap();
            let end = terms.end_time();
            let (sql_end, before, at): (chrono::DateTime<Utc>, String, String) = sqlx::query_as(
                "select deal_end_time(d), deal_state_at(d, $2 - interval '1 microsecond'), deal_state_at(d, $2)
                   from deals d where id = $1",
            )
            .bind(id)
            .bind(end)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(sql_end, end, "start {start}, expire {}", terms.expire_time);
            assert_eq!((before.as_str(), at.as_str()), ("active", "expired"), "start {start}, length {length}");
        }
    }
}
