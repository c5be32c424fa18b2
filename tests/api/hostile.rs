//! Hostile requests through the real gRPC clients: a table of malformed, out-of-range, forged and
//! oversized requests to every RPC, each with the code it must get and, for INVALID_ARGUMENT, the
//! exact field paths its `google.rpc.BadRequest` must name. After the table nothing may have been
//! written and both services must still be SERVING.

use std::{future::Future, pin::Pin};

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use prost_types::{FieldMask, Timestamp};
use sqlx::PgPool;
use tonic::{Code, Status};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_types::StatusExt;
use topkart::{
    proto::{
        Money,
        deal::{self as dealpb, deal::State as DealState},
        order::{self as orderpb, order::State as OrderState},
    },
    shared::{auth::Role, paging::Cursor, server::MAX_REQUEST_BYTES, time},
};
use uuid::Uuid;

use crate::helpers::*;

/// One call, already bound to its client and request.
type Rpc = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// What a case must get back.
#[derive(Debug)]
enum Expect {
    /// INVALID_ARGUMENT, reason `INVALID_ARGUMENT`, naming exactly these fields in this order.
    Invalid(&'static [&'static str]),
    /// This code with an `ErrorInfo` of this reason.
    Refused(Code, &'static str),
    /// This code, whatever the details (errors tonic raises before our handlers run).
    CodeOnly(Code),
    /// Success (only for calls that write nothing).
    Succeeds,
}

struct Case {
    name: String,
    rpc: Rpc,
    expect: Expect,
}

fn case(name: impl Into<String>, rpc: Rpc, expect: Expect) -> Case {
    Case { name: name.into(), rpc, expect }
}

/// Compares a reply with what the case expects.
fn check(result: Result<(), Status>, expect: &Expect) -> Result<(), String> {
    let status = match (result, expect) {
        (Ok(()), Expect::Succeeds) => return Ok(()),
        (Ok(()), _) => return Err(format!("expected {expect:?}, got OK")),
        (Err(status), Expect::Succeeds) => return Err(format!("expected OK, got {status:?}")),
        (Err(status), _) => status,
    };
    let (code, reason) = match expect {
        Expect::Invalid(_) => (Code::InvalidArgument, Some("INVALID_ARGUMENT")),
        Expect::Refused(code, reason) => (*code, Some(*reason)),
        Expect::CodeOnly(code) => (*code, None),
        Expect::Succeeds => unreachable!("handled above"),
    };
    if status.code() != code {
        return Err(format!("expected {expect:?}, got {:?}: {:?}", status.code(), status.message()));
    }
    let details = status.get_error_details();
    if let Some(reason) = reason {
        let got = details.error_info().map(|info| info.reason.clone());
        if got.as_deref() != Some(reason) {
            return Err(format!("expected reason {reason}, got {got:?}: {status:?}"));
        }
    }
    if let Expect::Invalid(fields) = expect {
        let named: Vec<String> = details
            .bad_request()
            .map(|bad| bad.field_violations.iter().map(|violation| violation.field.clone()).collect())
            .unwrap_or_default();
        if named != *fields {
            return Err(format!("expected fields {fields:?}, got {named:?}: {:?}", status.message()));
        }
    }
    Ok(())
}

/// The clients of the table, one per kind of caller.
struct Callers {
    admin_deals: Deals,
    customer_deals: Deals,
    service_deals: Deals,
    alice: Orders,
    bob: Orders,
    admin_orders: Orders,
    app_channel: tonic::transport::Channel,
}

impl Callers {
    fn new(app: &TestApp) -> Self {
        Self {
            admin_deals: app.deals.clone(),
            customer_deals: deals_with(&app.deal_channel, Bearer::of(&token(Role::Customer, "alice"))),
            service_deals: app.reservations.clone(),
            alice: app.orders.clone(),
            bob: app.orders_as("bob"),
            admin_orders: app.admin_orders.clone(),
            app_channel: app.order_channel.clone(),
        }
    }

    fn create_deal(&self, deal: Option<dealpb::Deal>) -> Rpc {
        let mut client = self.admin_deals.clone();
        Box::pin(async move { client.create_deal(dealpb::CreateDealRequest { deal }).await.map(drop) })
    }

    fn create_deal_as_customer(&self, deal: dealpb::Deal) -> Rpc {
        let mut client = self.customer_deals.clone();
        Box::pin(async move { client.create_deal(dealpb::CreateDealRequest { deal: Some(deal) }).await.map(drop) })
    }

    fn update_deal(&self, deal: Option<dealpb::Deal>, update_mask: Option<FieldMask>) -> Rpc {
        let mut client = self.admin_deals.clone();
        Box::pin(async move { client.update_deal(dealpb::UpdateDealRequest { deal, update_mask }).await.map(drop) })
    }

    fn get_deal(&self, name: impl Into<String>) -> Rpc {
        let (mut client, name) = (self.customer_deals.clone(), name.into());
        Box::pin(async move { client.get_deal(dealpb::GetDealRequest { name }).await.map(drop) })
    }

    fn list_deals(&self, request: dealpb::ListDealsRequest) -> Rpc {
        let mut client = self.customer_deals.clone();
        Box::pin(async move { client.list_deals(request).await.map(drop) })
    }

    fn admin_list_deals(&self, request: dealpb::ListDealsRequest) -> Rpc {
        let mut client = self.admin_deals.clone();
        Box::pin(async move { client.list_deals(request).await.map(drop) })
    }

    fn reserve(&self, request: dealpb::ReserveUnitsRequest) -> Rpc {
        let mut client = self.service_deals.clone();
        Box::pin(async move { client.reserve_units(request).await.map(drop) })
    }

    fn reserve_as_admin(&self, request: dealpb::ReserveUnitsRequest) -> Rpc {
        let mut client = self.admin_deals.clone();
        Box::pin(async move { client.reserve_units(request).await.map(drop) })
    }

    fn release(&self, reservation_id: impl Into<String>) -> Rpc {
        let (mut client, reservation_id) = (self.service_deals.clone(), reservation_id.into());
        Box::pin(async move { client.release_units(dealpb::ReleaseUnitsRequest { reservation_id }).await.map(drop) })
    }

    fn confirm(&self, reservation_id: impl Into<String>) -> Rpc {
        let (mut client, reservation_id) = (self.service_deals.clone(), reservation_id.into());
        Box::pin(async move { client.confirm_units(dealpb::ConfirmUnitsRequest { reservation_id }).await.map(drop) })
    }

    fn create_order(&self, order: Option<orderpb::Order>, request_id: impl Into<String>) -> Rpc {
        self.create_order_with(self.alice.clone(), order, request_id.into())
    }

    fn create_order_as(&self, subject: &str, order: orderpb::Order) -> Rpc {
        let client = orders_with(&self.app_channel, Bearer::of(&token(Role::Customer, subject)));
        self.create_order_with(client, Some(order), String::new())
    }

    fn create_order_as_admin(&self, order: orderpb::Order) -> Rpc {
        self.create_order_with(self.admin_orders.clone(), Some(order), String::new())
    }

    fn create_order_with(&self, mut client: Orders, order: Option<orderpb::Order>, request_id: String) -> Rpc {
        Box::pin(async move { client.create_order(orderpb::CreateOrderRequest { order, request_id }).await.map(drop) })
    }

    fn get_order(&self, client: &Orders, name: impl Into<String>) -> Rpc {
        let (mut client, name) = (client.clone(), name.into());
        Box::pin(async move { client.get_order(orderpb::GetOrderRequest { name }).await.map(drop) })
    }

    fn list_orders(&self, client: &Orders, request: orderpb::ListOrdersRequest) -> Rpc {
        let mut client = client.clone();
        Box::pin(async move { client.list_orders(request).await.map(drop) })
    }

    fn list_orders_as(&self, subject: &str, request: orderpb::ListOrdersRequest) -> Rpc {
        self.list_orders(&orders_with(&self.app_channel, Bearer::of(&token(Role::Customer, subject))), request)
    }

    fn approve(&self, name: impl Into<String>) -> Rpc {
        let (mut client, name) = (self.admin_orders.clone(), name.into());
        Box::pin(async move { client.approve_order(orderpb::ApproveOrderRequest { name }).await.map(drop) })
    }

    fn reject(&self, name: impl Into<String>) -> Rpc {
        let (mut client, name) = (self.admin_orders.clone(), name.into());
        Box::pin(async move { client.reject_order(orderpb::RejectOrderRequest { name }).await.map(drop) })
    }

    fn cancel_as(&self, client: &Orders, name: impl Into<String>) -> Rpc {
        let (mut client, name) = (client.clone(), name.into());
        Box::pin(async move { client.cancel_order(orderpb::CancelOrderRequest { name }).await.map(drop) })
    }
}

fn money(code: &str, units: i64, nanos: i32) -> Money {
    Money { currency_code: code.into(), units, nanos }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|path| (*path).to_owned()).collect() })
}

fn at(instant: DateTime<Utc>) -> Option<Timestamp> {
    Some(time::to_proto(instant))
}

/// A page token as the services make them, but with any content.
fn hex_token(plain: &str) -> String {
    plain.bytes().map(|byte| format!("{byte:02x}")).collect()
}

/// A token subject that the token issuer could sign but that no service accepts.
const CONTROL_SUBJECT: &str = "al\u{0}ice";

/// Every table of the database with its row count and a digest of its rows: equal snapshots mean
/// nothing was written.
async fn snapshot(pool: &PgPool) -> Vec<(&'static str, i64, String)> {
    const TABLES: [(&str, &str); 4] = [
        ("deals", "select count(*), md5(string_agg(t::text, '|' order by t::text)) from deals t"),
        ("reservations", "select count(*), md5(string_agg(t::text, '|' order by t::text)) from reservations t"),
        ("orders", "select count(*), md5(string_agg(t::text, '|' order by t::text)) from orders t"),
        ("daily_resets", "select count(*), md5(string_agg(t::text, '|' order by t::text)) from daily_resets t"),
    ];
    let mut tables = Vec::new();
    for (table, query) in TABLES {
        let (count, digest): (i64, Option<String>) = sqlx::query_as(query).fetch_one(pool).await.unwrap();
        tables.push((table, count, digest.unwrap_or_default()));
    }
    tables
}

async fn assert_both_serving(app: &TestApp) {
    crate::processes::wait_serving(app.deal_addr).await;
    for service in ["", "topkart.order.v1.OrderService"] {
        let reply = HealthClient::new(app.order_channel.clone())
            .check(HealthCheckRequest { service: service.into() })
            .await
            .expect("order-service answers health checks")
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "order-service health of {service:?}");
    }
    let reply = HealthClient::new(app.deal_channel.clone())
        .check(HealthCheckRequest { service: "topkart.deal.v1.DealService".into() })
        .await
        .expect("deal-service answers health checks")
        .into_inner();
    assert_eq!(reply.status(), ServingStatus::Serving);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn hostile_requests_are_refused_with_the_right_code_and_fields_and_write_nothing(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let call = Callers::new(&app);

    // The setup: a live deal with 4 of its 10 units ordered by alice (under a known request id), a
    // scheduled deal and an expired one.
    let live = app.create_deal(10).await;
    let live_id = uuid(&live.name);
    let alice_request_id = Uuid::new_v4();
    let alice_order = app
        .orders
        .clone()
        .create_order(orderpb::CreateOrderRequest {
            order: Some(order_request(&live.name, 4)),
            request_id: alice_request_id.to_string(),
        })
        .await
        .expect("alice's order")
        .into_inner();
    let now = Utc::now();
    let scheduled_id = insert_deal_at(&pool, now + TimeDelta::hours(1), now + TimeDelta::hours(2), "scheduled").await;
    let scheduled = format!("deals/{scheduled_id}");
    let expired_id = insert_deal_at(&pool, now - TimeDelta::hours(2), now - TimeDelta::hours(1), "expired").await;
    let expired = format!("deals/{expired_id}");
    let before = snapshot(&pool).await;

    let now = Utc::now();
    let later = (now + TimeDelta::hours(1)).trunc_subsecs(0);
    let unknown_deal = format!("deals/{}", Uuid::new_v4());
    let unknown_order = format!("orders/{}", Uuid::new_v4());
    let deal = deal_request;
    let with_name = |name: &str| dealpb::Deal { product_name: name.into(), ..deal(5) };
    let patch = |name: &str| dealpb::Deal { name: name.into(), product_name: "Tablet".into(), ..Default::default() };
    let live_patch = |deal: dealpb::Deal| Some(dealpb::Deal { name: live.name.clone(), ..deal });
    let order = |deal: &str, quantity| Some(order_request(deal, quantity));
    let priced = |price: Money| Some(orderpb::Order { unit_price: Some(price), ..order_request(&live.name, 1) });
    let reserve = |deal: &str, reservation_id: &str, quantity, expected_unit_price| dealpb::ReserveUnitsRequest {
        deal: deal.into(),
        reservation_id: reservation_id.into(),
        quantity,
        expected_unit_price,
    };
    let fresh = || Uuid::new_v4().to_string();
    let list_deals_token = |token: String| dealpb::ListDealsRequest { page_token: token, ..Default::default() };
    let list_orders_token = |token: String| orderpb::ListOrdersRequest { page_token: token, ..Default::default() };
    let cursor = Cursor { at: now, id: Uuid::new_v4() };
    let huge = "x".repeat(100 * 1024);
    assert!(huge.len() > MAX_REQUEST_BYTES);

    use Expect::*;
    let cases = vec![
        // CreateDeal: prices.
        case("deal unset", call.create_deal(None), Invalid(&["deal"])),
        case(
            "zero actual price",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(inr(0)), ..deal(5) })),
            Invalid(&["deal.actual_price"]),
        ),
        case(
            "zero final price",
            call.create_deal(Some(dealpb::Deal { final_price: Some(inr(0)), ..deal(5) })),
            Invalid(&["deal.final_price"]),
        ),
        case(
            "negative actual units",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(inr(-1)), ..deal(5) })),
            Invalid(&["deal.actual_price.units"]),
        ),
        case(
            "i64::MAX actual units",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(inr(i64::MAX)), ..deal(5) })),
            Invalid(&["deal.actual_price.units"]),
        ),
        case(
            "i64::MIN final units",
            call.create_deal(Some(dealpb::Deal { final_price: Some(inr(i64::MIN)), ..deal(5) })),
            Invalid(&["deal.final_price.units"]),
        ),
        case(
            "1e9 + 1 units",
            call.create_deal(Some(dealpb::Deal {
                actual_price: Some(inr(1_000_000_001)),
                final_price: Some(inr(1_000_000_001)),
                ..deal(5)
            })),
            Invalid(&["deal.actual_price.units", "deal.final_price.units"]),
        ),
        case(
            "negative nanos",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 600, -1_000)), ..deal(5) })),
            Invalid(&["deal.final_price.nanos"]),
        ),
        case(
            "zero units with negative nanos",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 0, -5_000)), ..deal(5) })),
            Invalid(&["deal.final_price.nanos"]),
        ),
        case(
            "nanos of a whole unit",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(money("INR", 1000, 1_000_000_000)), ..deal(5) })),
            Invalid(&["deal.actual_price.nanos"]),
        ),
        case(
            "i32::MAX nanos",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(money("INR", 1000, i32::MAX)), ..deal(5) })),
            Invalid(&["deal.actual_price.nanos"]),
        ),
        case(
            "i32::MIN nanos",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 600, i32::MIN)), ..deal(5) })),
            Invalid(&["deal.final_price.nanos"]),
        ),
        case(
            "sub-micro nanos",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 600, 1)), ..deal(5) })),
            Invalid(&["deal.final_price.nanos"]),
        ),
        case(
            "999_999_999 nanos",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 600, 999_999_999)), ..deal(5) })),
            Invalid(&["deal.final_price.nanos"]),
        ),
        case(
            "final price above actual",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 1000, 1_000)), ..deal(5) })),
            Invalid(&["deal.final_price"]),
        ),
        case(
            "currency mismatch",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("USD", 600, 0)), ..deal(5) })),
            Invalid(&["deal.final_price.currency_code"]),
        ),
        case(
            "lowercase currencies",
            call.create_deal(Some(dealpb::Deal {
                actual_price: Some(money("inr", 1000, 0)),
                final_price: Some(money("inr", 600, 0)),
                ..deal(5)
            })),
            Invalid(&["deal.actual_price.currency_code", "deal.final_price.currency_code"]),
        ),
        case(
            "4-letter currency",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(money("INRR", 1000, 0)), ..deal(5) })),
            Invalid(&["deal.actual_price.currency_code"]),
        ),
        case(
            "empty currency",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("", 600, 0)), ..deal(5) })),
            Invalid(&["deal.final_price.currency_code"]),
        ),
        case(
            "Cyrillic homoglyph currency",
            call.create_deal(Some(dealpb::Deal {
                actual_price: Some(money("\u{0406}NR", 1000, 0)),
                final_price: Some(money("\u{0406}NR", 600, 0)),
                ..deal(5)
            })),
            Invalid(&["deal.actual_price.currency_code", "deal.final_price.currency_code"]),
        ),
        case(
            "every part of a price wrong",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(money("inr", -1, 1)), ..deal(5) })),
            Invalid(&["deal.actual_price.currency_code", "deal.actual_price.nanos", "deal.actual_price.units"]),
        ),
        case(
            "actual price unset",
            call.create_deal(Some(dealpb::Deal { actual_price: None, ..deal(5) })),
            Invalid(&["deal.actual_price"]),
        ),
        // CreateDeal: units.
        case("zero units", call.create_deal(Some(deal(0))), Invalid(&["deal.total_units"])),
        case("negative units", call.create_deal(Some(deal(-1))), Invalid(&["deal.total_units"])),
        case("i32::MAX units", call.create_deal(Some(deal(i32::MAX))), Invalid(&["deal.total_units"])),
        case("i32::MIN units", call.create_deal(Some(deal(i32::MIN))), Invalid(&["deal.total_units"])),
        case("1e6 + 1 units", call.create_deal(Some(deal(1_000_001))), Invalid(&["deal.total_units"])),
        // CreateDeal: times.
        case(
            "expire_time unset",
            call.create_deal(Some(dealpb::Deal { expire_time: None, ..deal(5) })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time in the past",
            call.create_deal(Some(dealpb::Deal { expire_time: at(now - TimeDelta::minutes(1)), ..deal(5) })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time equal to start_time",
            call.create_deal(Some(dealpb::Deal { start_time: at(later), expire_time: at(later), ..deal(5) })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time before start_time",
            call.create_deal(Some(dealpb::Deal {
                start_time: at(later),
                expire_time: at(later - TimeDelta::seconds(1)),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time 12 h + 1 s after start_time",
            call.create_deal(Some(dealpb::Deal {
                start_time: at(later),
                expire_time: at(later + TimeDelta::hours(12) + TimeDelta::seconds(1)),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time 12 h + 1 µs after start_time",
            call.create_deal(Some(dealpb::Deal {
                start_time: at(later),
                expire_time: at(later + TimeDelta::hours(12) + TimeDelta::microseconds(1)),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "start_time an hour in the past",
            call.create_deal(Some(dealpb::Deal { start_time: at(now - TimeDelta::hours(1)), ..deal(5) })),
            Invalid(&["deal.start_time"]),
        ),
        case(
            "start_time in year 10000",
            call.create_deal(Some(dealpb::Deal {
                start_time: Some(Timestamp { seconds: 253_402_300_800, nanos: 0 }),
                ..deal(5)
            })),
            Invalid(&["deal.start_time"]),
        ),
        case(
            "start_time before 1970",
            call.create_deal(Some(dealpb::Deal { start_time: Some(Timestamp { seconds: -1, nanos: 0 }), ..deal(5) })),
            Invalid(&["deal.start_time"]),
        ),
        case(
            "expire_time of i64::MAX seconds",
            call.create_deal(Some(dealpb::Deal {
                expire_time: Some(Timestamp { seconds: i64::MAX, nanos: 0 }),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time of i64::MIN seconds",
            call.create_deal(Some(dealpb::Deal {
                expire_time: Some(Timestamp { seconds: i64::MIN, nanos: 0 }),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time with negative nanos",
            call.create_deal(Some(dealpb::Deal {
                expire_time: Some(Timestamp { seconds: (now + TimeDelta::hours(1)).timestamp(), nanos: -1 }),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time with a whole second of nanos",
            call.create_deal(Some(dealpb::Deal {
                expire_time: Some(Timestamp { seconds: (now + TimeDelta::hours(1)).timestamp(), nanos: 1_000_000_000 }),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        // CreateDeal: product names.
        case("empty product name", call.create_deal(Some(with_name(""))), Invalid(&["deal.product_name"])),
        case(
            "whitespace-only product name",
            call.create_deal(Some(with_name(" \t\r\n\u{a0}\u{3000}\u{85} "))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "10 KB product name",
            call.create_deal(Some(with_name(&"n".repeat(10 * 1024)))),
            Invalid(&["deal.product_name"]),
        ),
        case("NUL in the product name", call.create_deal(Some(with_name("Pho\0ne"))), Invalid(&["deal.product_name"])),
        case(
            "newline in the product name",
            call.create_deal(Some(with_name("Pho\nne"))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "DEL in the product name",
            call.create_deal(Some(with_name("Pho\u{7f}ne"))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "U+0085 inside the product name",
            call.create_deal(Some(with_name("Pho\u{85}ne"))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "ESC sequence in the product name",
            call.create_deal(Some(with_name("\u{1b}[31mPhone"))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "a product name of zero-width characters only",
            call.create_deal(Some(with_name("\u{200B}\u{200C}\u{200D}\u{FEFF}"))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "a product name of fillers, tags and variation selectors",
            call.create_deal(Some(with_name(" \u{3164}\u{FFA0}\u{115F}\u{E0041}\u{FE0F}\u{2060}\u{00AD} "))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "201 two-byte characters",
            call.create_deal(Some(with_name(&"é".repeat(201)))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "201 four-byte characters",
            call.create_deal(Some(with_name(&"😀".repeat(201)))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "everything wrong at once",
            call.create_deal(Some(dealpb::Deal {
                product_name: "   ".into(),
                actual_price: Some(money("inr", 1000, 0)),
                final_price: None,
                total_units: 0,
                expire_time: None,
                ..Default::default()
            })),
            Invalid(&[
                "deal.product_name",
                "deal.actual_price.currency_code",
                "deal.final_price",
                "deal.total_units",
                "deal.expire_time",
            ]),
        ),
        case(
            "CreateDeal by a customer",
            call.create_deal_as_customer(deal(5)),
            Refused(Code::PermissionDenied, "PERMISSION_DENIED"),
        ),
        // Above the 64 KiB limit: tonic refuses the message before any handler runs.
        case("100 KB product name", call.create_deal(Some(with_name(&huge))), CodeOnly(Code::OutOfRange)),
        // UpdateDeal: masks.
        case(
            "mask naming an unknown field",
            call.update_deal(Some(patch(&live.name)), mask(&["colour"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask naming available_units",
            call.update_deal(Some(patch(&live.name)), mask(&["available_units"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask naming state",
            call.update_deal(Some(patch(&live.name)), mask(&["state"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask naming name",
            call.update_deal(Some(patch(&live.name)), mask(&["name"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask naming create_time",
            call.update_deal(Some(patch(&live.name)), mask(&["create_time"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case("mask of *", call.update_deal(Some(patch(&live.name)), mask(&["*"])), Invalid(&["update_mask.paths[0]"])),
        case(
            "mask naming a field twice",
            call.update_deal(Some(patch(&live.name)), mask(&["product_name", "product_name"])),
            Invalid(&["update_mask.paths[1]"]),
        ),
        case(
            "mask naming a sub-field",
            call.update_deal(Some(patch(&live.name)), mask(&["actual_price.units"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask in another case",
            call.update_deal(Some(patch(&live.name)), mask(&["Product_Name"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask of an empty path",
            call.update_deal(Some(patch(&live.name)), mask(&[""])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask mixing good and bad paths",
            call.update_deal(
                Some(patch(&live.name)),
                mask(&["product_name", "available_units", "state", "update_time", "*", "total_units", "total_units"]),
            ),
            Invalid(&[
                "update_mask.paths[1]",
                "update_mask.paths[2]",
                "update_mask.paths[3]",
                "update_mask.paths[4]",
                "update_mask.paths[6]",
            ]),
        ),
        case("empty mask", call.update_deal(Some(patch(&live.name)), mask(&[])), Invalid(&["update_mask"])),
        case("mask unset", call.update_deal(Some(patch(&live.name)), None), Invalid(&["update_mask"])),
        // UpdateDeal: values.
        case(
            "update to zero units",
            call.update_deal(live_patch(dealpb::Deal { total_units: 0, ..Default::default() }), mask(&["total_units"])),
            Invalid(&["deal.total_units"]),
        ),
        case(
            "update to i32::MAX units",
            call.update_deal(
                live_patch(dealpb::Deal { total_units: i32::MAX, ..Default::default() }),
                mask(&["total_units"]),
            ),
            Invalid(&["deal.total_units"]),
        ),
        case(
            "update below the units sold",
            call.update_deal(live_patch(dealpb::Deal { total_units: 3, ..Default::default() }), mask(&["total_units"])),
            Refused(Code::FailedPrecondition, "TOTAL_UNITS_BELOW_SOLD"),
        ),
        case(
            "update masking actual_price but leaving it unset",
            call.update_deal(live_patch(dealpb::Deal::default()), mask(&["actual_price"])),
            Invalid(&["deal.actual_price"]),
        ),
        case(
            "update masking expire_time but leaving it unset",
            call.update_deal(live_patch(dealpb::Deal::default()), mask(&["expire_time"])),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "update to a final price above actual",
            call.update_deal(
                live_patch(dealpb::Deal { final_price: Some(inr(1001)), ..Default::default() }),
                mask(&["final_price"]),
            ),
            Invalid(&["deal.final_price"]),
        ),
        case(
            "update actual_price to another currency",
            call.update_deal(
                live_patch(dealpb::Deal { actual_price: Some(money("USD", 1000, 0)), ..Default::default() }),
                mask(&["actual_price"]),
            ),
            Invalid(&["deal.final_price.currency_code"]),
        ),
        case(
            "update to a blank name and negative units",
            call.update_deal(
                live_patch(dealpb::Deal { product_name: "\t".into(), total_units: -1, ..Default::default() }),
                mask(&["product_name", "total_units"]),
            ),
            Invalid(&["deal.product_name", "deal.total_units"]),
        ),
        case(
            "update to a name nobody can see",
            call.update_deal(
                live_patch(dealpb::Deal { product_name: "\u{2063}\u{200B}".into(), ..Default::default() }),
                mask(&["product_name"]),
            ),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "update to a NUL in the name",
            call.update_deal(
                live_patch(dealpb::Deal { product_name: "a\0b".into(), ..Default::default() }),
                mask(&["product_name"]),
            ),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "update expire_time into the past",
            call.update_deal(
                live_patch(dealpb::Deal { expire_time: at(now - TimeDelta::minutes(1)), ..Default::default() }),
                mask(&["expire_time"]),
            ),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "update expire_time to 12 h + 1 s after the start",
            call.update_deal(
                live_patch(dealpb::Deal {
                    expire_time: live
                        .start_time
                        .map(|start| Timestamp { seconds: start.seconds + 12 * 3600 + 1, ..start }),
                    ..Default::default()
                }),
                mask(&["expire_time"]),
            ),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "update moving the start of a live deal",
            call.update_deal(
                live_patch(dealpb::Deal { start_time: at(later), ..Default::default() }),
                mask(&["start_time"]),
            ),
            Refused(Code::FailedPrecondition, "START_TIME_LOCKED"),
        ),
        case(
            "update moving a scheduled deal's start into the past",
            call.update_deal(
                Some(dealpb::Deal {
                    name: scheduled.clone(),
                    start_time: at(now - TimeDelta::hours(1)),
                    ..Default::default()
                }),
                mask(&["start_time"]),
            ),
            Invalid(&["deal.start_time"]),
        ),
        case(
            "update of an expired deal",
            call.update_deal(Some(patch(&expired)), mask(&["product_name"])),
            Refused(Code::FailedPrecondition, "DEAL_EXPIRED"),
        ),
        // UpdateDeal: names.
        case("update with deal unset", call.update_deal(None, mask(&["product_name"])), Invalid(&["deal.name"])),
        case(
            "update of deals/not-a-uuid",
            call.update_deal(Some(patch("deals/not-a-uuid")), mask(&["product_name"])),
            Invalid(&["deal.name"]),
        ),
        case(
            "update naming an order",
            call.update_deal(Some(patch(&format!("orders/{live_id}"))), mask(&["product_name"])),
            Invalid(&["deal.name"]),
        ),
        case(
            "update of an unknown deal",
            call.update_deal(Some(patch(&unknown_deal)), mask(&["product_name"])),
            Refused(Code::NotFound, "DEAL_NOT_FOUND"),
        ),
        case(
            "update of a malformed name with an empty mask",
            call.update_deal(Some(patch("deals/not-a-uuid")), mask(&[])),
            Invalid(&["deal.name", "update_mask"]),
        ),
        case(
            "update of an unknown deal with a mask of *",
            call.update_deal(Some(patch(&unknown_deal)), mask(&["*"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        // GetDeal: names.
        case("GetDeal deals/not-a-uuid", call.get_deal("deals/not-a-uuid"), Invalid(&["name"])),
        case("GetDeal deal/uuid", call.get_deal(format!("deal/{live_id}")), Invalid(&["name"])),
        case("GetDeal orders/uuid", call.get_deal(format!("orders/{live_id}")), Invalid(&["name"])),
        case("GetDeal bare uuid", call.get_deal(live_id.to_string()), Invalid(&["name"])),
        case("GetDeal empty", call.get_deal(""), Invalid(&["name"])),
        case("GetDeal deals/", call.get_deal("deals/"), Invalid(&["name"])),
        case("GetDeal with a suffix", call.get_deal(format!("{}/units", live.name)), Invalid(&["name"])),
        case("GetDeal with a leading space", call.get_deal(format!(" {}", live.name)), Invalid(&["name"])),
        case("GetDeal in capitals", call.get_deal(format!("DEALS/{live_id}")), Invalid(&["name"])),
        case("GetDeal with NUL", call.get_deal(format!("deals/\0{live_id}")), Invalid(&["name"])),
        case("GetDeal 60 KB name", call.get_deal(format!("deals/{}", "0".repeat(60 * 1024))), Invalid(&["name"])),
        case("GetDeal unknown", call.get_deal(&unknown_deal), Refused(Code::NotFound, "DEAL_NOT_FOUND")),
        case(
            "GetDeal nil uuid",
            call.get_deal(format!("deals/{}", Uuid::nil())),
            Refused(Code::NotFound, "DEAL_NOT_FOUND"),
        ),
        case("GetDeal 100 KB name", call.get_deal(format!("deals/{huge}")), CodeOnly(Code::OutOfRange)),
        // ListDeals.
        case(
            "ListDeals state 42",
            call.list_deals(dealpb::ListDealsRequest { state: 42, ..Default::default() }),
            Invalid(&["state"]),
        ),
        case(
            "ListDeals state -1",
            call.admin_list_deals(dealpb::ListDealsRequest { state: -1, ..Default::default() }),
            Invalid(&["state"]),
        ),
        case(
            "ListDeals page_size -1",
            call.list_deals(dealpb::ListDealsRequest { page_size: -1, ..Default::default() }),
            Invalid(&["page_size"]),
        ),
        case(
            "ListDeals page_size i32::MIN",
            call.list_deals(dealpb::ListDealsRequest { page_size: i32::MIN, ..Default::default() }),
            Invalid(&["page_size"]),
        ),
        case(
            "ListDeals page_size i32::MAX is lowered to 100",
            call.list_deals(dealpb::ListDealsRequest { page_size: i32::MAX, ..Default::default() }),
            Succeeds,
        ),
        case(
            "ListDeals with everything wrong",
            call.admin_list_deals(dealpb::ListDealsRequest { page_size: -5, page_token: "zz".into(), state: 42 }),
            Invalid(&["page_size", "state", "page_token"]),
        ),
        case(
            "ListDeals random hex token",
            call.list_deals(list_deals_token("deadbeef".repeat(8))),
            Invalid(&["page_token"]),
        ),
        case("ListDeals non-hex token", call.list_deals(list_deals_token("zz".into())), Invalid(&["page_token"])),
        case("ListDeals non-ASCII token", call.list_deals(list_deals_token("éé".into())), Invalid(&["page_token"])),
        case("ListDeals odd-length token", call.list_deals(list_deals_token("abc".into())), Invalid(&["page_token"])),
        case(
            "ListDeals token of another filter",
            call.list_deals(list_deals_token(cursor.to_token("expired"))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token of the live filter used for EXPIRED",
            call.admin_list_deals(dealpb::ListDealsRequest {
                page_token: cursor.to_token("live"),
                state: DealState::Expired.into(),
                ..Default::default()
            }),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token with a timestamp before 1970",
            call.list_deals(list_deals_token(hex_token(&format!("v1|-220000000000000000|{}|live", Uuid::new_v4())))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token with a timestamp after 9999",
            call.list_deals(list_deals_token(hex_token(&format!("v1|253402300800000000|{}|live", Uuid::new_v4())))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token with an i64-overflowing timestamp",
            call.list_deals(list_deals_token(hex_token(&format!("v1|99999999999999999999|{}|live", Uuid::new_v4())))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token of another version",
            call.list_deals(list_deals_token(hex_token(&format!("v2|0|{}|live", Uuid::new_v4())))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token with a bad id",
            call.list_deals(list_deals_token(hex_token("v1|0|not-a-uuid|live"))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token above 512 characters",
            call.list_deals(list_deals_token(hex_token(&format!("v1|{}|{}|live", "0".repeat(300), Uuid::new_v4())))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals state filter by a customer",
            call.list_deals(dealpb::ListDealsRequest { state: DealState::Expired.into(), ..Default::default() }),
            Refused(Code::PermissionDenied, "PERMISSION_DENIED"),
        ),
        // ReserveUnits (order-service's role).
        case(
            "ReserveUnits malformed deal",
            call.reserve(reserve("deals/not-a-uuid", &fresh(), 1, None)),
            Invalid(&["deal"]),
        ),
        case(
            "ReserveUnits bad reservation id",
            call.reserve(reserve(&live.name, "nope", 1, None)),
            Invalid(&["reservation_id"]),
        ),
        case(
            "ReserveUnits empty reservation id",
            call.reserve(reserve(&live.name, "", 1, None)),
            Invalid(&["reservation_id"]),
        ),
        case("ReserveUnits zero units", call.reserve(reserve(&live.name, &fresh(), 0, None)), Invalid(&["quantity"])),
        case("ReserveUnits 101 units", call.reserve(reserve(&live.name, &fresh(), 101, None)), Invalid(&["quantity"])),
        case(
            "ReserveUnits i32::MAX units",
            call.reserve(reserve(&live.name, &fresh(), i32::MAX, None)),
            Invalid(&["quantity"]),
        ),
        case(
            "ReserveUnits i32::MIN units",
            call.reserve(reserve(&live.name, &fresh(), i32::MIN, None)),
            Invalid(&["quantity"]),
        ),
        case(
            "ReserveUnits lowercase expected price",
            call.reserve(reserve(&live.name, &fresh(), 1, Some(money("inr", 600, 0)))),
            Invalid(&["expected_unit_price.currency_code"]),
        ),
        case(
            "ReserveUnits zero expected price",
            call.reserve(reserve(&live.name, &fresh(), 1, Some(inr(0)))),
            Invalid(&["expected_unit_price"]),
        ),
        case(
            "ReserveUnits everything wrong",
            call.reserve(reserve("orders/1", "", -1, Some(inr(i64::MAX)))),
            Invalid(&["deal", "reservation_id", "quantity", "expected_unit_price.units"]),
        ),
        case(
            "ReserveUnits unknown deal",
            call.reserve(reserve(&unknown_deal, &fresh(), 1, None)),
            Refused(Code::NotFound, "DEAL_NOT_FOUND"),
        ),
        case(
            "ReserveUnits expired deal",
            call.reserve(reserve(&expired, &fresh(), 1, None)),
            Refused(Code::FailedPrecondition, "DEAL_EXPIRED"),
        ),
        case(
            "ReserveUnits scheduled deal",
            call.reserve(reserve(&scheduled, &fresh(), 1, None)),
            Refused(Code::FailedPrecondition, "DEAL_NOT_STARTED"),
        ),
        case(
            "ReserveUnits at another price",
            call.reserve(reserve(&live.name, &fresh(), 1, Some(inr(1)))),
            Refused(Code::FailedPrecondition, "PRICE_CHANGED"),
        ),
        case(
            "ReserveUnits more than left",
            call.reserve(reserve(&live.name, &fresh(), 7, None)),
            Refused(Code::FailedPrecondition, "INSUFFICIENT_UNITS"),
        ),
        case(
            "ReserveUnits reusing alice's reservation id for more units",
            call.reserve(reserve(&live.name, &alice_request_id.to_string(), 5, None)),
            Refused(Code::AlreadyExists, "RESERVATION_ID_REUSED"),
        ),
        case(
            "ReserveUnits by an admin",
            call.reserve_as_admin(reserve(&live.name, &fresh(), 1, None)),
            Refused(Code::PermissionDenied, "PERMISSION_DENIED"),
        ),
        case("ReleaseUnits bad id", call.release("nope"), Invalid(&["reservation_id"])),
        case("ReleaseUnits empty id", call.release(""), Invalid(&["reservation_id"])),
        case("ReleaseUnits unknown id", call.release(fresh()), Refused(Code::NotFound, "RESERVATION_NOT_FOUND")),
        case("ConfirmUnits bad id", call.confirm("deals/x"), Invalid(&["reservation_id"])),
        case("ConfirmUnits unknown id", call.confirm(fresh()), Refused(Code::NotFound, "RESERVATION_NOT_FOUND")),
        // CreateOrder.
        case("order unset", call.create_order(None, ""), Invalid(&["order"])),
        case("order unset and a bad request id", call.create_order(None, "retry-1"), Invalid(&["request_id", "order"])),
        case("request id not a UUID", call.create_order(order(&live.name, 1), "retry-1"), Invalid(&["request_id"])),
        case(
            "request id a resource name",
            call.create_order(order(&live.name, 1), format!("orders/{}", Uuid::new_v4())),
            Invalid(&["request_id"]),
        ),
        case(
            "order of deals/not-a-uuid",
            call.create_order(order("deals/not-a-uuid", 1), ""),
            Invalid(&["order.deal"]),
        ),
        case(
            "order of deal/uuid",
            call.create_order(order(&format!("deal/{live_id}"), 1), ""),
            Invalid(&["order.deal"]),
        ),
        case(
            "order of orders/uuid where a deal is expected",
            call.create_order(order(&format!("orders/{live_id}"), 1), ""),
            Invalid(&["order.deal"]),
        ),
        case("order of a bare uuid", call.create_order(order(&live_id.to_string(), 1), ""), Invalid(&["order.deal"])),
        case("order of no deal", call.create_order(order("", 1), ""), Invalid(&["order.deal"])),
        case("order of zero units", call.create_order(order(&live.name, 0), ""), Invalid(&["order.quantity"])),
        case("order of -1 units", call.create_order(order(&live.name, -1), ""), Invalid(&["order.quantity"])),
        case("order of 101 units", call.create_order(order(&live.name, 101), ""), Invalid(&["order.quantity"])),
        // With at most 100 units of at most 1e9 + 0.999999 each, a total is below 1.0000001e17 micros,
        // far from i64::MAX (9.2e18): a quantity that could overflow is refused before any
        // multiplication (the accepted maximum is in `hostile_inputs_that_are_accepted`).
        case(
            "order of i32::MAX units (price × quantity would overflow)",
            call.create_order(order(&live.name, i32::MAX), ""),
            Invalid(&["order.quantity"]),
        ),
        case(
            "order of i32::MIN units",
            call.create_order(order(&live.name, i32::MIN), ""),
            Invalid(&["order.quantity"]),
        ),
        case("order at a zero price", call.create_order(priced(inr(0)), ""), Invalid(&["order.unit_price"])),
        case("order at i64::MAX", call.create_order(priced(inr(i64::MAX)), ""), Invalid(&["order.unit_price.units"])),
        case(
            "order at a sub-micro price",
            call.create_order(priced(money("INR", 600, 1)), ""),
            Invalid(&["order.unit_price.nanos"]),
        ),
        case(
            "order in a 4-letter currency",
            call.create_order(priced(money("INRR", 600, 0)), ""),
            Invalid(&["order.unit_price.currency_code"]),
        ),
        case(
            "order with everything wrong",
            call.create_order(
                Some(orderpb::Order {
                    deal: "deals/1".into(),
                    quantity: 0,
                    unit_price: Some(money("inr", -1, -1)),
                    ..Default::default()
                }),
                "x",
            ),
            Invalid(&[
                "request_id",
                "order.deal",
                "order.quantity",
                "order.unit_price.currency_code",
                "order.unit_price.nanos",
                "order.unit_price.units",
            ]),
        ),
        case(
            "order of an unknown deal",
            call.create_order(order(&unknown_deal, 1), ""),
            Refused(Code::NotFound, "DEAL_NOT_FOUND"),
        ),
        case(
            "order of an expired deal",
            call.create_order(order(&expired, 1), ""),
            Refused(Code::FailedPrecondition, "DEAL_EXPIRED"),
        ),
        case(
            "order of a scheduled deal",
            call.create_order(order(&scheduled, 1), ""),
            Refused(Code::FailedPrecondition, "DEAL_NOT_STARTED"),
        ),
        case(
            "order at another price",
            call.create_order(priced(inr(599)), ""),
            Refused(Code::FailedPrecondition, "PRICE_CHANGED"),
        ),
        case(
            "order of more units than left",
            call.create_order(order(&live.name, 7), ""),
            Refused(Code::FailedPrecondition, "INSUFFICIENT_UNITS"),
        ),
        case(
            "order reusing a request id for another quantity",
            call.create_order(order(&live.name, 1), alice_request_id.to_string()),
            Refused(Code::AlreadyExists, "REQUEST_ID_REUSED"),
        ),
        case(
            "order by a token with an empty subject",
            call.create_order_as("", order_request(&live.name, 1)),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
        case(
            "order by a token with a 129-character subject",
            call.create_order_as(&"s".repeat(129), order_request(&live.name, 1)),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
        case(
            "order by a token whose subject holds NUL",
            call.create_order_as(CONTROL_SUBJECT, order_request(&live.name, 1)),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
        case(
            "order by an admin",
            call.create_order_as_admin(order_request(&live.name, 1)),
            Refused(Code::PermissionDenied, "PERMISSION_DENIED"),
        ),
        case(
            "order with a 100 KB customer_id",
            call.create_order(Some(orderpb::Order { customer_id: huge.clone(), ..order_request(&live.name, 1) }), ""),
            CodeOnly(Code::OutOfRange),
        ),
        // GetOrder, ApproveOrder, RejectOrder, CancelOrder.
        case("GetOrder orders/not-a-uuid", call.get_order(&call.alice, "orders/not-a-uuid"), Invalid(&["name"])),
        case(
            "GetOrder of a deal's name",
            call.get_order(&call.alice, format!("deals/{}", uuid(&alice_order.name))),
            Invalid(&["name"]),
        ),
        case(
            "GetOrder bare uuid",
            call.get_order(&call.alice, uuid(&alice_order.name).to_string()),
            Invalid(&["name"]),
        ),
        case("GetOrder empty", call.get_order(&call.alice, ""), Invalid(&["name"])),
        case(
            "GetOrder unknown",
            call.get_order(&call.alice, &unknown_order),
            Refused(Code::NotFound, "ORDER_NOT_FOUND"),
        ),
        case(
            "GetOrder of alice's order by bob",
            call.get_order(&call.bob, &alice_order.name),
            Refused(Code::NotFound, "ORDER_NOT_FOUND"),
        ),
        case("ApproveOrder malformed", call.approve("orders/1"), Invalid(&["name"])),
        case("ApproveOrder unknown", call.approve(&unknown_order), Refused(Code::NotFound, "ORDER_NOT_FOUND")),
        case("RejectOrder of a deal's name", call.reject(&live.name), Invalid(&["name"])),
        case("RejectOrder unknown", call.reject(&unknown_order), Refused(Code::NotFound, "ORDER_NOT_FOUND")),
        case(
            "CancelOrder unknown",
            call.cancel_as(&call.alice, &unknown_order),
            Refused(Code::NotFound, "ORDER_NOT_FOUND"),
        ),
        case(
            "CancelOrder of alice's order by bob",
            call.cancel_as(&call.bob, &alice_order.name),
            Refused(Code::NotFound, "ORDER_NOT_FOUND"),
        ),
        case(
            "CancelOrder of alice's order by a subject holding NUL",
            call.cancel_as(
                &orders_with(&app.order_channel, Bearer::of(&token(Role::Customer, CONTROL_SUBJECT))),
                &alice_order.name,
            ),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
        case(
            "GetOrder of alice's order by a subject holding NUL",
            call.get_order(
                &orders_with(&app.order_channel, Bearer::of(&token(Role::Customer, CONTROL_SUBJECT))),
                &alice_order.name,
            ),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
        // ListOrders.
        case(
            "ListOrders state 42",
            call.list_orders(&call.alice, orderpb::ListOrdersRequest { state: 42, ..Default::default() }),
            Invalid(&["state"]),
        ),
        case(
            "ListOrders state -1",
            call.list_orders(&call.admin_orders, orderpb::ListOrdersRequest { state: -1, ..Default::default() }),
            Invalid(&["state"]),
        ),
        case(
            "ListOrders page_size -1",
            call.list_orders(&call.alice, orderpb::ListOrdersRequest { page_size: -1, ..Default::default() }),
            Invalid(&["page_size"]),
        ),
        case(
            "ListOrders with everything wrong",
            call.list_orders(
                &call.admin_orders,
                orderpb::ListOrdersRequest {
                    page_size: i32::MIN,
                    page_token: "0".into(),
                    customer_id: "a\nb".into(),
                    state: i32::MAX,
                },
            ),
            Invalid(&["page_size", "customer_id", "state", "page_token"]),
        ),
        case(
            "ListOrders customer_id of 129 characters",
            call.list_orders(
                &call.admin_orders,
                orderpb::ListOrdersRequest { customer_id: "c".repeat(129), ..Default::default() },
            ),
            Invalid(&["customer_id"]),
        ),
        case(
            "ListOrders random hex token",
            call.list_orders(&call.alice, list_orders_token("0123456789abcdef".repeat(4))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListOrders token of another customer",
            call.list_orders(&call.alice, list_orders_token(cursor.to_token("any|bob"))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListOrders token of another state",
            call.list_orders(
                &call.alice,
                orderpb::ListOrdersRequest {
                    page_token: cursor.to_token("any|alice"),
                    state: OrderState::Approved.into(),
                    ..Default::default()
                },
            ),
            Invalid(&["page_token"]),
        ),
        case(
            "ListOrders token with a timestamp after 9999",
            call.list_orders(
                &call.alice,
                list_orders_token(hex_token(&format!("v1|253402300800000000|{}|any|alice", Uuid::new_v4()))),
            ),
            Invalid(&["page_token"]),
        ),
        case(
            "ListOrders as a subject holding NUL",
            call.list_orders_as(CONTROL_SUBJECT, orderpb::ListOrdersRequest::default()),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
    ];

    assert!(cases.len() >= 60, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    for Case { name, rpc, expect } in cases {
        if let Err(why) = check(rpc.await, &expect) {
            failures.push(format!("{name}: {why}"));
        }
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));

    assert_eq!(snapshot(&pool).await, before, "a refused request wrote something");
    assert_both_serving(&app).await;
    assert_invariants(&pool).await;
}

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
