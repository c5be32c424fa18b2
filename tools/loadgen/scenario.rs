//! A load-generator run: many concurrent gRPC clients driving the real services in one scenario for a
//! fixed time after a warm-up, then a report (throughput, latency percentiles, counts by status) and
//! checks of what the load left behind (units accounted for, the invariant checker).
//!
//! Scenarios:
//! - `hot-deal`: every client orders one unit at a time of one deal with plenty of units;
//! - `hot-deal-sell-out`: the same on a deal with few units, so most calls are sold-out refusals;
//! - `browse`: `ListDeals` (first page of 20) and `GetDeal` over 50 live deals;
//! - `list-deals`: `ListDeals` alone, to compare with `health-check`;
//! - `health-check`: `grpc.health.v1.Health/Check` on deal-service, the framework's own ceiling.
//!   These two skip over replies without decoding them (as h2load does), so that their ratio
//!   measures the server, not the load generator sharing its cores;
//! - `mixed`: browsing plus orders (one call in five) across 20 deals;
//! - `surge`: the hot deal (or `--deal`) as a surge of buyers: each client orders again as soon as
//!   it is answered, and, when shed (RESOURCE_EXHAUSTED), waits the `RetryInfo` delay the server
//!   gave, as gRPC clients honouring server pushback do (or, with `--ignore-retry-info`, does not,
//!   as a naive client or a bot). Latencies of shed and admitted calls are reported apart, and of
//!   each status; one second after the run every hold must belong to an order or be released;
//! - `watch`: the hot deal sold as in `hot-deal`, first alone, then with `--watchers` WatchDeal
//!   streams of it over `--watch-connections` connections of their own (see [`crate::watch`]): the
//!   delay of every change they receive, orders/s with them against without, and deal-service's
//!   resident memory before and with them (given `--deal-service-pid`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tonic::{Code, Request, metadata::MetadataValue, transport::Channel};
use tonic_health::pb::HealthCheckRequest;
use uuid::Uuid;

use topkart::{
    proto::{
        deal::{self as dealpb, deal_service_client::DealServiceClient},
        order::{self as orderpb, order_service_client::OrderServiceClient},
    },
    shared::auth::{self, Role, Signer},
};

use crate::{
    discard,
    report::{Check, Recorder, Report},
    setup, watched_load,
};

/// What to run; on the command line in kebab case (`hot-deal-sell-out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    HotDeal,
    HotDealSellOut,
    Browse,
    ListDeals,
    HealthCheck,
    Mixed,
    Surge,
    Watch,
    /// Runs apart ([`crate::failover`]): the hot deal while the database fails over.
    Failover,
    /// Runs apart ([`crate::polite`]): one buyer's orders of `--deal`, retried as RetryInfo asks.
    Polite,
}

impl Scenario {
    /// The scenario's name on the command line and in reports.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value().map(|value| value.get_name().to_owned()).unwrap_or_default()
    }

    fn places_orders(self) -> bool {
        matches!(
            self,
            Self::HotDeal
                | Self::HotDealSellOut
                | Self::Mixed
                | Self::Surge
                | Self::Watch
                | Self::Failover
                | Self::Polite
        )
    }
}

/// How to run it.
pub struct Options {
    pub deal_service: String,
    pub order_service: String,
    /// Concurrent clients, each with one call in flight at a time.
    pub concurrency: usize,
    /// HTTP/2 connections per service, shared round-robin by the clients.
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Units of each deal the scenario creates.
    pub units: i32,
    /// The deadline of every call.
    pub deadline: Duration,
    /// Mints the admin's and the buyers' tokens; `None` when the services run without authentication.
    pub signer: Option<Signer>,
    /// The database, for the invariant checker after the run.
    pub database: Option<PgPool>,
    /// The deal to sell (`hot-deal`, `watch`) instead of creating one.
    pub deal: Option<String>,
    /// WatchDeal streams of the `watch` scenario, and their connections.
    pub watchers: usize,
    pub watch_connections: usize,
    /// The deal-service the watchers use; `deal_service` when unset.
    pub watch_deal_service: Option<String>,
    /// The watched deal-service's process, whose resident memory the `watch` scenario reads.
    pub deal_service_pid: Option<u32>,
    /// Refused buyers resend at once (`surge`).
    pub ignore_retry_info: bool,
}

/// The load generator's own failures (setting up), as opposed to what it measures.
pub type LoadError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `scenario` and reports on it.
pub async fn run(scenario: Scenario, options: Options) -> Result<Report, LoadError> {
    if matches!(scenario, Scenario::Failover | Scenario::Polite) {
        return Err("failover and polite run apart, with reports of their own".into());
    }
    let deal_channels = channels(&options.deal_service, options.connections).await?;
    let order_channels = if scenario.places_orders() {
        channels(&options.order_service, options.connections).await?
    } else {
        Vec::new()
    };
    let admin = setup::Admin::new(deal_channels[0].clone(), options.signer.as_ref(), options.deadline)?;
    let deals = match (scenario, &options.deal) {
        (Scenario::HotDeal | Scenario::Watch | Scenario::Surge, Some(name)) => {
            admin.reread(&[dealpb::Deal { name: name.clone(), ..Default::default() }]).await?
        }
        (_, Some(_)) => return Err("--deal is for hot-deal, surge, watch, failover and polite".into()),
        (Scenario::HotDeal | Scenario::HotDealSellOut | Scenario::Surge | Scenario::Watch, None) => {
            vec![admin.create_deal("hot deal", options.units).await?]
        }
        (Scenario::Browse | Scenario::ListDeals, None) => admin.create_deals(50, options.units).await?,
        (Scenario::Mixed, None) => admin.create_deals(20, options.units).await?,
        (Scenario::HealthCheck | Scenario::Failover | Scenario::Polite, None) => Vec::new(),
    };
    let deal_names: Arc<[String]> = deals.iter().map(|deal| deal.name.clone()).collect();
    let clients = Clients { scenario, options: &options, deals: &deal_channels, orders: &order_channels, deal_names };

    let (load, watched) = if scenario == Scenario::Watch {
        let (load, watched) = watched_load::run(&clients, &deals[0]).await?;
        (load, Some(watched))
    } else {
        (clients.drive(Instant::now() + options.warmup).await?, None)
    };

    let mut checks = vec![unexpected_statuses(scenario, &load.recorder)];
    if let Some((watched, report)) = &watched {
        checks.extend(watched_load::checks(watched, report));
    }
    if scenario.places_orders() {
        let after = admin.reread(&deals).await?;
        let ordered_units = load.ordered_units + watched.as_ref().map_or(0, |(_, report)| report.alone_ordered_units);
        checks.extend(setup::unit_checks(scenario, &deals, &after, ordered_units));
    }
    if let Some(pool) = &options.database {
        if scenario == Scenario::Surge {
            tokio::time::sleep(SETTLE_TIME).await;
            checks.push(holds_settled(pool).await?);
        }
        checks.push(invariants(pool).await?);
    }
    Ok(Report {
        scenario: scenario.name(),
        concurrency: options.concurrency,
        connections: deal_channels.len(),
        warmup_s: options.warmup.as_secs_f64(),
        summary: load.recorder.summary(load.window),
        watch: watched.map(|(_, report)| report),
        checks,
    })
}

/// The clients of a run and what they call.
pub(crate) struct Clients<'a> {
    scenario: Scenario,
    pub options: &'a Options,
    deals: &'a [Channel],
    orders: &'a [Channel],
    deal_names: Arc<[String]>,
}

/// What one stretch of load did.
pub(crate) struct Load {
    pub recorder: Recorder,
    /// Units of every order placed, warm-up included.
    pub ordered_units: i64,
    pub window: Duration,
}

impl Clients<'_> {
    /// Runs every client until `duration` after `record_from`, recording from then on.
    pub async fn drive(&self, record_from: Instant) -> Result<Load, LoadError> {
        let options = self.options;
        let end = record_from + options.duration;
        let mut clients = Vec::with_capacity(options.concurrency);
        for index in 0..options.concurrency {
            let client = Client {
                scenario: self.scenario,
                index,
                deals: self.deals[index % self.deals.len()].clone(),
                orders: self.orders.get(index % self.orders.len().max(1)).cloned(),
                authorization: buyer_authorization(options.signer.as_ref(), index)?,
                deal_names: self.deal_names.clone(),
                deadline: options.deadline,
                random: 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
                ignore_retry_info: options.ignore_retry_info,
            };
            clients.push(tokio::spawn(client.run(record_from, end)));
        }
        let mut load = Load { recorder: Recorder::default(), ordered_units: 0, window: Duration::ZERO };
        for client in clients {
            let outcome = client.await?;
            load.recorder.merge(outcome.recorder);
            load.ordered_units += outcome.ordered_units;
        }
        load.window = Instant::now().saturating_duration_since(record_from);
        Ok(load)
    }
}

pub(crate) async fn channels(url: &str, connections: usize) -> Result<Vec<Channel>, LoadError> {
    let mut channels = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        // Each `connect` opens a connection of its own, so calls spread over all of them.
        channels.push(Channel::from_shared(url.to_owned())?.connect().await?);
    }
    Ok(channels)
}

fn buyer_authorization(signer: Option<&Signer>, index: usize) -> Result<Option<Authorization>, LoadError> {
    signer.map(|signer| authorization(signer, Role::Customer, &format!("loadgen-buyer-{index}"))).transpose()
}

pub(crate) type Authorization = MetadataValue<tonic::metadata::Ascii>;

pub(crate) fn authorization(signer: &Signer, role: Role, subject: &str) -> Result<Authorization, LoadError> {
    let token = signer.token(subject, role, Duration::from_secs(3600))?;
    Ok(auth::bearer(&token).ok_or("the token is not a valid header")?)
}

/// A request with a deadline and, when the services check tokens, an `authorization` header.
pub(crate) fn request<T>(message: T, deadline: Duration, authorization: Option<&Authorization>) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    if let Some(authorization) = authorization {
        request.metadata_mut().insert("authorization", authorization.clone());
    }
    request
}

/// One simulated client: one call at a time, as fast as the answers come.
struct Client {
    scenario: Scenario,
    index: usize,
    deals: Channel,
    orders: Option<Channel>,
    authorization: Option<Authorization>,
    deal_names: Arc<[String]>,
    deadline: Duration,
    random: u64,
    ignore_retry_info: bool,
}

/// What one client did.
struct ClientOutcome {
    recorder: Recorder,
    /// Units of every order placed, warm-up included.
    ordered_units: i64,
}

/// The calls a client makes.
enum Call {
    Order(usize),
    List,
    Get(usize),
    Health,
}

impl Client {
    async fn run(mut self, record_from: Instant, end: Instant) -> ClientOutcome {
        let mut outcome = ClientOutcome { recorder: Recorder::default(), ordered_units: 0 };
        loop {
            let started = Instant::now();
            if started >= end {
                return outcome;
            }
            let call = self.next_call();
            let is_order = matches!(call, Call::Order(_));
            let result = self.call(call).await;
            let code = result.as_ref().map_or_else(tonic::Status::code, |()| Code::Ok);
            if is_order && code == Code::Ok {
                outcome.ordered_units += 1;
            }
            if started >= record_from {
                outcome.recorder.record(started.elapsed(), code);
            }
            if let (Scenario::Surge, Err(status)) = (self.scenario, &result)
                && !self.ignore_retry_info
                && let Some(delay) = retry_delay(status)
            {
                tokio::time::sleep(delay.min(end.saturating_duration_since(Instant::now()))).await;
            }
        }
    }

    fn next_call(&mut self) -> Call {
        let roll = self.next_random();
        let deal = (roll >> 8) as usize % self.deal_names.len().max(1);
        match self.scenario {
            Scenario::HotDeal
            | Scenario::HotDealSellOut
            | Scenario::Surge
            | Scenario::Watch
            | Scenario::Failover
            | Scenario::Polite => Call::Order(0),
            Scenario::ListDeals => Call::List,
            Scenario::HealthCheck => Call::Health,
            Scenario::Browse if roll.is_multiple_of(2) => Call::List,
            Scenario::Browse => Call::Get(deal),
            Scenario::Mixed => match roll % 10 {
                0 | 1 => Call::Order(deal),
                2..=5 => Call::List,
                _ => Call::Get(deal),
            },
        }
    }

    /// xorshift64*: enough to spread calls over deals, and no dependency.
    fn next_random(&mut self) -> u64 {
        self.random ^= self.random >> 12;
        self.random ^= self.random << 25;
        self.random ^= self.random >> 27;
        self.random.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn request<T>(&self, message: T) -> Request<T> {
        request(message, self.deadline, self.authorization.as_ref())
    }

    async fn call(&self, call: Call) -> Result<(), tonic::Status> {
        match call {
            Call::Order(deal) => {
                let Some(orders) = &self.orders else {
                    return Err(tonic::Status::failed_precondition("no order-service channel"));
                };
                let order = orderpb::Order {
                    deal: self.deal_names[deal].clone(),
                    quantity: 1,
                    // Without authentication the buyer is named in the payload.
                    customer_id: if self.authorization.is_none() {
                        format!("loadgen-buyer-{}", self.index)
                    } else {
                        String::new()
                    },
                    ..Default::default()
                };
                let request = self.request(orderpb::CreateOrderRequest {
                    order: Some(order),
                    request_id: Uuid::new_v4().to_string(),
                    waitlist_entry: String::new(),
                });
                OrderServiceClient::new(orders.clone()).create_order(request).await.map(drop)
            }
            Call::List if self.scenario == Scenario::ListDeals => {
                let request = self.request(dealpb::ListDealsRequest { page_size: 20, ..Default::default() });
                self.undecoded(request, "/topkart.deal.v1.DealService/ListDeals").await
            }
            Call::List => {
                let request = self.request(dealpb::ListDealsRequest { page_size: 20, ..Default::default() });
                DealServiceClient::new(self.deals.clone()).list_deals(request).await.map(drop)
            }
            Call::Get(deal) => {
                let request = self.request(dealpb::GetDealRequest { name: self.deal_names[deal].clone() });
                DealServiceClient::new(self.deals.clone()).get_deal(request).await.map(drop)
            }
            Call::Health => {
                let request = self.request(HealthCheckRequest { service: String::new() });
                self.undecoded(request, "/grpc.health.v1.Health/Check").await
            }
        }
    }
}

impl Client {
    /// Calls `path` and skips over the reply without decoding it (see [`discard`]).
    async fn undecoded<M: prost::Message + Send + Sync + 'static>(
        &self,
        request: Request<M>,
        path: &'static str,
    ) -> Result<(), tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.deals.clone());
        grpc.ready().await.map_err(|err| tonic::Status::unavailable(err.to_string()))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        grpc.unary(request, path, discard::DiscardReplies::default()).await.map(drop)
    }
}

/// How long after a surge every hold must be settled.
const SETTLE_TIME: Duration = Duration::from_secs(1);

/// The delay a refusal's `RetryInfo` asks for.
pub(crate) fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    let delay = status.get_error_details().retry_info()?.retry_delay?;
    Some(delay)
}

/// Every call should succeed, except sold-out refusals where the scenario sells out; in a surge,
/// shedding is expected and only INTERNAL and UNKNOWN (a bug, or a broken link) are errors.
fn unexpected_statuses(scenario: Scenario, recorder: &Recorder) -> Check {
    if scenario == Scenario::Surge {
        let broken = recorder.count(Code::Internal) + recorder.count(Code::Unknown);
        return Check {
            name: "no INTERNAL or UNKNOWN".into(),
            passed: broken == 0,
            detail: format!("{broken} calls ended INTERNAL or UNKNOWN"),
        };
    }
    let expected = recorder.count(Code::Ok)
        + if scenario == Scenario::HotDealSellOut { recorder.count(Code::FailedPrecondition) } else { 0 };
    let unexpected = recorder.calls() - expected;
    Check {
        name: "no errors".into(),
        passed: unexpected == 0,
        detail: if scenario == Scenario::HotDealSellOut {
            format!("{unexpected} calls ended other than OK or FAILED_PRECONDITION (sold out)")
        } else {
            format!("{unexpected} calls ended other than OK")
        },
    }
}

/// One second after a surge, no hold is left without an order: every abandoned call gave its
/// units back at once.
async fn holds_settled(pool: &PgPool) -> Result<Check, LoadError> {
    let stranded: i64 = sqlx::query_scalar(
        "select count(*) from reservations r
          where r.state = 'reserved' and not exists (select from orders o where o.id = r.id)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Check {
        name: "holds settled".into(),
        passed: stranded == 0,
        detail: format!("{stranded} holds without an order {} s after the run", SETTLE_TIME.as_secs()),
    })
}

async fn invariants(pool: &PgPool) -> Result<Check, LoadError> {
    let violations = topkart::invariants::check(pool).await?;
    let detail = match violations.first() {
        None => "every invariant holds".to_owned(),
        Some(first) => format!("{} violations, first: {first}", violations.len()),
    };
    Ok(Check { name: "invariant-check".into(), passed: violations.is_empty(), detail })
}
