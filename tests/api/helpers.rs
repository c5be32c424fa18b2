//! `spawn_app`: the real deal and order servers on port 0 over a fresh database, with generated
//! clients (each presenting a token of its role) and typed helpers for the requests most tests make.

use std::{net::SocketAddr, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tonic_types::StatusExt;
use topkart::{
    order::placing::holds::{Credentials, DealsClient},
    proto::{
        Money,
        deal::{self as dealpb, deal_service_client::DealServiceClient},
        holds::hold_service_client::HoldServiceClient,
        order::{self as orderpb, order_service_client::OrderServiceClient},
    },
    shared::{
        auth::{Authenticator, Role, Signer},
        server::ServerSettings,
        time,
    },
};

/// The HS256 secret the test servers verify tokens with.
pub const TEST_SECRET: &str = "test-secret-of-at-least-32-bytes!";

/// A token of `role` for `subject`, signed with the test secret, valid for an hour.
pub fn token(role: Role, subject: &str) -> String {
    Signer::hs256(TEST_SECRET.as_bytes()).token(subject, role, Duration::from_secs(3600)).unwrap()
}

/// Puts a fixed `authorization` header on every call (or none).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// `Bearer <token>`.
    pub fn of(token: &str) -> Self {
        Self(Some(topkart::shared::auth::bearer(token).expect("a token is a valid header")))
    }

    /// No header at all.
    pub fn anonymous() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A deal-service client presenting a token.
pub type Deals = DealServiceClient<InterceptedService<Channel, Bearer>>;
/// A client of deal-service's internal HoldService presenting a token.
pub type Holds = HoldServiceClient<InterceptedService<Channel, Bearer>>;
/// An order-service client presenting a token.
pub type Orders = OrderServiceClient<InterceptedService<Channel, Bearer>>;

/// A deal-service client over `channel` as `bearer`.
pub fn deals_with(channel: &Channel, bearer: Bearer) -> Deals {
    DealServiceClient::with_interceptor(channel.clone(), bearer)
}

/// A HoldService client over `channel` as `bearer`.
pub fn holds_with(channel: &Channel, bearer: Bearer) -> Holds {
    HoldServiceClient::with_interceptor(channel.clone(), bearer)
}

/// An order-service client over `channel` as `bearer`.
pub fn orders_with(channel: &Channel, bearer: Bearer) -> Orders {
    OrderServiceClient::with_interceptor(channel.clone(), bearer)
}

/// The settings test servers run with: plain text, HS256 tokens signed with the test secret.
pub fn test_settings() -> ServerSettings {
    ServerSettings::plaintext(Authenticator::hs256(TEST_SECRET.as_bytes()))
}

/// Both servers, their clients, and the database they share.
pub struct TestApp {
    pub pool: PgPool,
    /// deal-service as an admin.
    pub deals: Deals,
    /// deal-service's HoldService as order-service (the service role).
    pub reservations: Holds,
    /// order-service as the customer alice.
    pub orders: Orders,
    /// order-service as an admin.
    pub admin_orders: Orders,
    pub deal_addr: SocketAddr,
    pub order_addr: SocketAddr,
    pub deal_channel: Channel,
    pub order_channel: Channel,
    stop_deal: Option<oneshot::Sender<()>>,
    _stop_order: oneshot::Sender<()>,
}

/// Starts deal-service and order-service on port 0 over `pool`.
pub async fn spawn_app(pool: PgPool) -> TestApp {
    let (deal_addr, stop_deal) = spawn_deal_service(pool.clone()).await;
    let (order_addr, stop_order) = spawn_order_service(pool.clone(), deals_client(deal_addr)).await;
    let (deal_channel, order_channel) = (channel(deal_addr).await, channel(order_addr).await);
    TestApp {
        deals: deals_with(&deal_channel, Bearer::of(&token(Role::Admin, "admin"))),
        reservations: holds_with(&deal_channel, Bearer::of(&token(Role::Service, "order-service"))),
        orders: orders_with(&order_channel, Bearer::of(&token(Role::Customer, "alice"))),
        admin_orders: orders_with(&order_channel, Bearer::of(&token(Role::Admin, "admin"))),
        deal_channel,
        order_channel,
        pool,
        deal_addr,
        order_addr,
        stop_deal: Some(stop_deal),
        _stop_order: stop_order,
    }
}

/// Starts deal-service on port 0; dropping the sender stops it.
pub async fn spawn_deal_service(pool: PgPool) -> (SocketAddr, oneshot::Sender<()>) {
    spawn_deal_service_with(pool, test_settings()).await
}

/// Starts order-service on port 0 with `deals` as its deal-service; dropping the sender stops it.
pub async fn spawn_order_service(pool: PgPool, deals: DealsClient) -> (SocketAddr, oneshot::Sender<()>) {
    spawn_order_service_with(pool, deals, test_settings()).await
}

/// [`spawn_order_service`] with its own `settings` (limits, say).
pub async fn spawn_order_service_with(
    pool: PgPool,
    deals: DealsClient,
    settings: ServerSettings,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(topkart::order::run(listener, pool, deals, settings, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// [`spawn_deal_service`] with its own `settings`.
pub async fn spawn_deal_service_with(pool: PgPool, settings: ServerSettings) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(topkart::deal::run(listener, deal_database(pool), settings, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// deal-service's database: `pool`, and two connections for the sale.
pub fn deal_database(pool: PgPool) -> topkart::deal::Database {
    topkart::deal::Database { pool, sale_connections: 2 }
}

/// A client of the deal-service at `addr`, as order-service uses it: minting service tokens.
pub fn deals_client(addr: SocketAddr) -> DealsClient {
    deals_client_with_deadline(addr, Duration::from_secs(5))
}

/// [`deals_client`] with another deadline per call.
pub fn deals_client_with_deadline(addr: SocketAddr, deadline: Duration) -> DealsClient {
    let credentials = Credentials::minted(Signer::hs256(TEST_SECRET.as_bytes()));
    DealsClient::connect_lazy(&format!("http://{addr}"), deadline, credentials, None).unwrap()
}

/// Asserts the database keeps every invariant.
pub async fn assert_invariants(pool: &PgPool) {
    let violations = topkart::invariants::check(pool).await.expect("read the invariants");
    assert!(
        violations.is_empty(),
        "invariants broken:\n{}",
        violations.iter().map(|v| format!("{v}\n")).collect::<String>()
    );
}

/// The database's clock, the one reservations are stamped with.
pub async fn db_now(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("select now()").fetch_one(pool).await.unwrap()
}

/// A connected channel to `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// Indian rupees, whole units.
pub fn inr(units: i64) -> Money {
    Money { currency_code: "INR".into(), units, nanos: 0 }
}

/// A valid deal: 1000 → 600 INR, `units` units, live now for two hours.
pub fn deal_request(units: i32) -> dealpb::Deal {
    dealpb::Deal {
        product_name: "Phone".into(),
        actual_price: Some(inr(1000)),
        final_price: Some(inr(600)),
        total_units: units,
        expire_time: Some(time::to_proto(Utc::now() + TimeDelta::hours(2))),
        ..Default::default()
    }
}

/// An order request for `quantity` units of `deal` by alice.
pub fn order_request(deal: &str, quantity: i32) -> orderpb::Order {
    orderpb::Order { deal: deal.into(), customer_id: "alice".into(), quantity, ..Default::default() }
}

impl TestApp {
    /// order-service as the customer `subject`.
    pub fn orders_as(&self, subject: &str) -> Orders {
        orders_with(&self.order_channel, Bearer::of(&token(Role::Customer, subject)))
    }

    /// Shuts deal-service down, as an outage would.
    pub async fn stop_deal_service(&mut self) {
        if let Some(stop) = self.stop_deal.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown closes the listener at once; give it a moment to do so.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    /// Creates a live deal of `units` units.
    pub async fn create_deal(&self, units: i32) -> dealpb::Deal {
        self.deals
            .clone()
            .create_deal(dealpb::CreateDealRequest { deal: Some(deal_request(units)) })
            .await
            .expect("create deal")
            .into_inner()
    }

    /// Reads a deal back.
    pub async fn get_deal(&self, name: &str) -> dealpb::Deal {
        self.deals.clone().get_deal(dealpb::GetDealRequest { name: name.into() }).await.expect("get deal").into_inner()
    }

    /// Places an order.
    pub async fn order(&self, order: orderpb::Order) -> Result<orderpb::Order, Status> {
        self.orders
            .clone()
            .create_order(orderpb::CreateOrderRequest {
                waitlist_entry: String::new(),
                order: Some(order),
                request_id: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Moves a deal's window into the past, as if it expired a second ago and no sweep had run.
    pub async fn expire_without_sweep(&self, deal_name: &str) {
        let id = uuid(deal_name);
        // The start stays on its day (a start moved before 00:00 UTC would put the deal's daily
        // reset, and so its end, before the units it sold today).
        sqlx::query(
            "update deals set start_time = least(start_time, now() - interval '2 seconds'),
                              expire_time = now() - interval '1 second'
              where id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// How many orders are recorded.
    pub async fn order_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from orders").fetch_one(&self.pool).await.unwrap()
    }
}

/// The UUID in a resource name.
pub fn uuid(name: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(name.rsplit('/').next().unwrap()).unwrap()
}

/// Inserts a deal directly with the given window, bypassing the API's "in the future" rule, so a
/// test can stand at any instant.
pub async fn insert_deal_at(pool: &PgPool, start: DateTime<Utc>, expire: DateTime<Utc>, state: &str) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "insert into deals (id, product_name, currency_code, actual_price_micros, final_price_micros,
                            total_units, available_units, start_time, expire_time, state)
         values ($1, 'Lamp', 'INR', 1000000000, 600000000, 10, 10, $2, $3, $4)",
    )
    .bind(id)
    .bind(start)
    .bind(expire)
    .bind(state)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// The stored state of a deal.
pub async fn stored_state(pool: &PgPool, id: uuid::Uuid) -> String {
    sqlx::query_scalar("select state from deals where id = $1").bind(id).fetch_one(pool).await.unwrap()
}

/// The server settings of the tests, with `limits`.
pub fn settings_with_limits(limits: topkart::shared::layers::Limits) -> ServerSettings {
    ServerSettings { limits, ..test_settings() }
}

/// Asserts `result` failed with `code` and `reason`, and returns the status.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, reason: &str) -> Status {
    let status = result.expect_err("the call should have failed");
    assert_eq!(status.code(), code, "{status:?}");
    let info = status.get_error_details().error_info().cloned();
    assert_eq!(info.map(|info| info.reason).as_deref(), Some(reason), "{status:?}");
    status
}

/// Asserts `result` is INVALID_ARGUMENT naming exactly `fields`.
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, fields: &[&str]) {
    let status = assert_refused(result, Code::InvalidArgument, "INVALID_ARGUMENT");
    let named: Vec<String> = status
        .get_error_details()
        .bad_request()
        .map(|bad| bad.field_violations.iter().map(|violation| violation.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(named, fields, "{status:?}");
}

/// Runs every future as its own task, all at once, and returns their outputs in order.
pub async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(task.await.expect("task panicked"));
    }
    outputs
}

/// A test's deals must not end at 00:00 UTC behind its back (the daily reset): within a minute of
/// midnight, waits for the new day.
pub async fn wait_out_midnight(pool: &PgPool) {
    let now = db_now(pool).await;
    let midnight = topkart::worker::daily_reset::day_start(now) + TimeDelta::days(1);
    if midnight - now < TimeDelta::minutes(1) {
        tokio::time::sleep((midnight - now + TimeDelta::seconds(1)).to_std().unwrap_or_default()).await;
    }
}
