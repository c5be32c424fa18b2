//! Hostile requests through the real gRPC clients: per API area a table of malformed, out-of-range,
//! forged and oversized requests, each with the code it must get and, for INVALID_ARGUMENT, the
//! exact field paths its `google.rpc.BadRequest` must name. After each table nothing may have been
//! written and both services must still be SERVING. This module holds what the areas share: the
//! case machinery, the callers and the scene every table runs against.

mod accepted;
mod deals;
mod orders;
mod reservations;
mod waitlist;

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
        holds as holdspb,
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
    service_holds: Holds,
    admin_holds: Holds,
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
            service_holds: app.reservations.clone(),
            admin_holds: holds_with(&app.deal_channel, Bearer::of(&token(Role::Admin, "admin"))),
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

    fn watch_deal(&self, name: impl Into<String>) -> Rpc {
        let (mut client, name) = (self.customer_deals.clone(), name.into());
        Box::pin(async move { client.watch_deal(dealpb::WatchDealRequest { name }).await.map(drop) })
    }

    fn list_deals(&self, request: dealpb::ListDealsRequest) -> Rpc {
        let mut client = self.customer_deals.clone();
        Box::pin(async move { client.list_deals(request).await.map(drop) })
    }

    fn admin_list_deals(&self, request: dealpb::ListDealsRequest) -> Rpc {
        let mut client = self.admin_deals.clone();
        Box::pin(async move { client.list_deals(request).await.map(drop) })
    }

    fn reserve(&self, request: holdspb::ReserveUnitsRequest) -> Rpc {
        let mut client = self.service_holds.clone();
        Box::pin(async move { client.reserve_units(request).await.map(drop) })
    }

    fn reserve_as_admin(&self, request: holdspb::ReserveUnitsRequest) -> Rpc {
        let mut client = self.admin_holds.clone();
        Box::pin(async move { client.reserve_units(request).await.map(drop) })
    }

    fn release(&self, reservation_id: impl Into<String>) -> Rpc {
        let (mut client, reservation_id) = (self.service_holds.clone(), reservation_id.into());
        Box::pin(async move { client.release_units(holdspb::ReleaseUnitsRequest { reservation_id }).await.map(drop) })
    }

    fn confirm(&self, reservation_id: impl Into<String>) -> Rpc {
        let (mut client, reservation_id) = (self.service_holds.clone(), reservation_id.into());
        Box::pin(async move { client.confirm_units(holdspb::ConfirmUnitsRequest { reservation_id }).await.map(drop) })
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
        Box::pin(async move {
            client
                .create_order(orderpb::CreateOrderRequest { waitlist_entry: String::new(), order, request_id })
                .await
                .map(drop)
        })
    }

    fn create_order_claiming(&self, order: orderpb::Order, waitlist_entry: &str) -> Rpc {
        let (mut client, waitlist_entry) = (self.alice.clone(), waitlist_entry.to_owned());
        let request = orderpb::CreateOrderRequest { order: Some(order), request_id: String::new(), waitlist_entry };
        Box::pin(async move { client.create_order(request).await.map(drop) })
    }

    fn join(&self, request: dealpb::JoinWaitlistRequest) -> Rpc {
        let mut client = self.customer_deals.clone();
        Box::pin(async move { client.join_waitlist(request).await.map(drop) })
    }

    fn join_as_admin(&self, request: dealpb::JoinWaitlistRequest) -> Rpc {
        let mut client = self.admin_deals.clone();
        Box::pin(async move { client.join_waitlist(request).await.map(drop) })
    }

    fn get_entry(&self, name: &str) -> Rpc {
        let (mut client, name) = (self.customer_deals.clone(), name.to_owned());
        Box::pin(async move { client.get_waitlist_entry(dealpb::GetWaitlistEntryRequest { name }).await.map(drop) })
    }

    fn leave(&self, name: &str) -> Rpc {
        self.leave_with(self.customer_deals.clone(), name)
    }

    fn leave_as_admin(&self, name: &str) -> Rpc {
        self.leave_with(self.admin_deals.clone(), name)
    }

    fn leave_with(&self, mut client: Deals, name: &str) -> Rpc {
        let name = name.to_owned();
        Box::pin(async move { client.leave_waitlist(dealpb::LeaveWaitlistRequest { name }).await.map(drop) })
    }

    fn list_entries(&self, request: dealpb::ListWaitlistEntriesRequest) -> Rpc {
        let mut client = self.customer_deals.clone();
        Box::pin(async move { client.list_waitlist_entries(request).await.map(drop) })
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
    const TABLES: [(&str, &str); 5] = [
        ("deals", "select count(*), md5(string_agg(t::text, '|' order by t::text)) from deals t"),
        ("reservations", "select count(*), md5(string_agg(t::text, '|' order by t::text)) from reservations t"),
        ("orders", "select count(*), md5(string_agg(t::text, '|' order by t::text)) from orders t"),
        ("waitlist_entries", "select count(*), md5(string_agg(t::text, '|' order by t::text)) from waitlist_entries t"),
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

/// What every table runs against: both servers over a fresh database holding a live deal with 4 of
/// its 10 units ordered by alice (under a known request id), a scheduled deal and an expired one;
/// and the database as it was before the table, which the table must leave as it found it.
struct Scene {
    app: TestApp,
    pool: PgPool,
    call: Callers,
    before: Vec<(&'static str, i64, String)>,
}

/// The names and values the cases refer to.
struct Fixtures {
    live: dealpb::Deal,
    live_id: Uuid,
    alice_request_id: Uuid,
    alice_order: orderpb::Order,
    scheduled: String,
    expired: String,
    unknown_deal: String,
    unknown_order: String,
    now: DateTime<Utc>,
    /// An hour from now, in whole seconds.
    later: DateTime<Utc>,
    cursor: Cursor,
    /// A string above the 64 KiB request limit.
    huge: String,
}

/// Waits (up to 10 s) until the hold of order `id` is confirmed.
async fn wait_until_confirmed(pool: &PgPool, id: Uuid) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let state: Option<String> = sqlx::query_scalar("select state from reservations where id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .unwrap();
        if state.as_deref() == Some("confirmed") {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the hold of {id} is still {state:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

impl Scene {
    async fn new(pool: PgPool) -> (Self, Fixtures) {
        let app = spawn_app(pool.clone()).await;
        let call = Callers::new(&app);
        let live = app.create_deal(10).await;
        let alice_request_id = Uuid::new_v4();
        let alice_order = app
            .orders
            .clone()
            .create_order(orderpb::CreateOrderRequest {
                waitlist_entry: String::new(),
                order: Some(order_request(&live.name, 4)),
                request_id: alice_request_id.to_string(),
            })
            .await
            .expect("alice's order")
            .into_inner();
        // order-service confirms the hold after answering; the snapshot must come after that, or the
        // confirmation would read as a write by a refused request.
        wait_until_confirmed(&pool, uuid(&alice_order.name)).await;
        let now = Utc::now();
        let scheduled_id =
            insert_deal_at(&pool, now + TimeDelta::hours(1), now + TimeDelta::hours(2), "scheduled").await;
        let expired_id = insert_deal_at(&pool, now - TimeDelta::hours(2), now - TimeDelta::hours(1), "expired").await;
        let before = snapshot(&pool).await;
        let now = Utc::now();
        let huge = "x".repeat(100 * 1024);
        assert!(huge.len() > MAX_REQUEST_BYTES);
        let fixtures = Fixtures {
            live_id: uuid(&live.name),
            live,
            alice_request_id,
            alice_order,
            scheduled: format!("deals/{scheduled_id}"),
            expired: format!("deals/{expired_id}"),
            unknown_deal: format!("deals/{}", Uuid::new_v4()),
            unknown_order: format!("orders/{}", Uuid::new_v4()),
            now,
            later: (now + TimeDelta::hours(1)).trunc_subsecs(0),
            cursor: Cursor { at: now, id: Uuid::new_v4() },
            huge,
        };
        (Self { app, pool, call, before }, fixtures)
    }

    /// Runs every case (at least `at_least` of them, so a table cannot go empty unnoticed), then
    /// checks that nothing was written and both services still serve.
    async fn refuse_all(self, cases: Vec<Case>, at_least: usize) {
        assert!(cases.len() >= at_least, "the table has {} cases", cases.len());
        let mut failures = Vec::new();
        for Case { name, rpc, expect } in cases {
            if let Err(why) = check(rpc.await, &expect) {
                failures.push(format!("{name}: {why}"));
            }
        }
        assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
        assert_eq!(snapshot(&self.pool).await, self.before, "a refused request wrote something");
        assert_both_serving(&self.app).await;
        assert_invariants(&self.pool).await;
    }
}
