//! Metrics in the Prometheus text format on `GET /metrics` (`--metrics-addr`; off unless set), and
//! every metric the services record, named here in one place. Without `--metrics-addr` no recorder
//! is installed and each of these calls costs next to nothing.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `grpc_server_handled_total` | counter | `grpc_service`, `grpc_method`, `grpc_code` |
//! | `grpc_server_handling_seconds` | histogram | `grpc_service`, `grpc_method`, `grpc_code` |
//! | `grpc_server_in_flight` | gauge (admitted API calls) | |
//! | `topkart_admission_waiting`, `topkart_admission_callers_waiting` | gauge (calls, and callers, waiting for a permit) | |
//! | `topkart_admission_wait_seconds` | histogram | `outcome` (`admitted`, `not_admitted`) |
//! | `topkart_admission_refusals_total` | counter | `reason` (`caller_share`, `queue_full`, `wait_timeout`, `deadline`, `rate_limited`, `SOLD_OUT`, `DEAL_EXPIRED`) |
//! | `grpc_server_shed_total` | counter | `grpc_service`, `grpc_method` |
//! | `grpc_server_rate_limited_total` | counter | `grpc_service`, `grpc_method` |
//! | `topkart_reservation_batch_size` | histogram | |
//! | `topkart_reservations_total` | counter | `outcome` (`reserved`, or the refusal's reason) |
//! | `topkart_order_insert_batch_size` | histogram | |
//! | `topkart_deal_call_batch_size` | histogram | `call` (`reserve`, `confirm`) |
//! | `topkart_order_inserts_total` | counter | `outcome` (`recorded`, `existing`, `too_late`, `failed`) |
//! | `topkart_db_pool_connections` | gauge | `pool` (`main`; deal-service's `sale` too), `state` (`in_use`, `idle`) |
//! | `topkart_sweep_seconds`, `topkart_daily_reset_seconds` | histogram (a worker tick, its daily-reset step) | |
//! | `topkart_sweeps_total`, `topkart_daily_resets_total` | counter (ticks: `failed` when any step failed) | `outcome` (`ok`, `failed`) |
//! | `topkart_worker_steps_total` | counter | `step`, `outcome` (`ok`, `failed`) |
//! | `topkart_worker_step_failing_seconds` | gauge (0 once the step succeeds) | `step` |
//! | `topkart_worker_deal_failures_total` | counter (a deal's part of a step failed; the rest went on) | `step` |
//! | `topkart_worker_fallbacks_total` | counter (a statement over several deals failed; the step went deal by deal) | `step` |
//! | `topkart_deals_expired_total`, `topkart_deals_started_total` | counter | |
//! | `topkart_orders_expired_total` | counter | |
//! | `topkart_waitlist_events_total` | counter | `event` (`joined`, `left`, `claimed`, or a refused claim's reason) |
//! | `topkart_waitlist_entries_expired_total` | counter | |
//! | `topkart_holds_settled_total` | counter | `outcome` (`confirmed`, `released`, `finished_release`, `abandoned`) |

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{Method as HttpMethod, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::net::TcpListener;

use super::methods::Method;

/// Seconds: from well under a millisecond (a shed call) to the longest deadline.
const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Requests per batch, up to the coalescers' 500.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 350.0, 500.0];
/// Seconds of a worker pass.
const PASS_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Pools besides the one [`serve`] is given, each reported at every scrape while its [`PoolReport`]
/// lives.
static REPORTED_POOLS: Mutex<Vec<(u64, &'static str, PgPool)>> = Mutex::new(Vec::new());
static NEXT_POOL_REPORT: AtomicU64 = AtomicU64::new(0);

fn reported_pools() -> MutexGuard<'static, Vec<(u64, &'static str, PgPool)>> {
    REPORTED_POOLS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reports `pool`'s connections as `topkart_db_pool_connections{pool="<name>"}` until dropped.
pub struct PoolReport {
    id: u64,
}

impl PoolReport {
    pub fn start(name: &'static str, pool: PgPool) -> Self {
        let id = NEXT_POOL_REPORT.fetch_add(1, Ordering::Relaxed);
        reported_pools().push((id, name, pool));
        Self { id }
    }
}

impl Drop for PoolReport {
    fn drop(&mut self) {
        reported_pools().retain(|(id, _, _)| *id != self.id);
    }
}

/// The connections of `pool`, in use and idle, as `pool="<name>"`.
fn pool_connections(name: &'static str, pool: &PgPool) {
    let idle = pool.num_idle() as f64;
    gauge!("topkart_db_pool_connections", "pool" => name, "state" => "idle").set(idle);
    gauge!("topkart_db_pool_connections", "pool" => name, "state" => "in_use").set(f64::from(pool.size()) - idle);
}

/// Installs the process's recorder (once; later calls return the same handle).
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("grpc_server_handling_seconds".into()), &LATENCY_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Full("topkart_admission_wait_seconds".into()), &LATENCY_BUCKETS)
        })
        .and_then(|builder| builder.set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), &BATCH_BUCKETS))
        .and_then(|builder| builder.set_buckets_for_metric(Matcher::Prefix("topkart_sweep".into()), &PASS_BUCKETS))
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Prefix("topkart_daily_reset".into()), &PASS_BUCKETS)
        })
        .map_err(|err| err.to_string())?;
    let handle = match builder.install_recorder() {
        Ok(handle) => handle,
        // Another thread installed it first.
        Err(_) => return HANDLE.get().cloned().ok_or_else(|| "a metrics recorder is installed already".to_owned()),
    };
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The HELP line of every metric.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("grpc_server_handled_total", "Calls completed, by method and gRPC status code.");
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "Time from a call's arrival to the end of its reply, by method and gRPC status code."
    );
    describe_gauge!("grpc_server_in_flight", "API calls admitted and not yet finished.");
    describe_gauge!("topkart_admission_waiting", "API calls waiting for a permit.");
    describe_gauge!("topkart_admission_callers_waiting", "Callers with calls waiting for a permit.");
    describe_histogram!(
        "topkart_admission_wait_seconds",
        Unit::Seconds,
        "Time calls waited for a permit, by whether they were admitted."
    );
    describe_counter!(
        "topkart_admission_refusals_total",
        "API calls refused before their handler, by reason (held for their retry delay when RESOURCE_EXHAUSTED)."
    );
    describe_counter!(
        "grpc_server_shed_total",
        "API calls shed by admission control (RESOURCE_EXHAUSTED, OVERLOADED)."
    );
    describe_counter!(
        "grpc_server_rate_limited_total",
        "API calls refused by the per-caller rate limit (RESOURCE_EXHAUSTED, RATE_LIMITED)."
    );
    describe_histogram!("topkart_reservation_batch_size", "Reservations served together in one transaction.");
    describe_counter!(
        "topkart_reservations_total",
        "Reservations decided, by outcome (reserved, or the refusal's reason)."
    );
    describe_histogram!("topkart_order_insert_batch_size", "Orders recorded together in one statement.");
    describe_histogram!(
        "topkart_deal_call_batch_size",
        "Reservations or confirmations order-service sent to deal-service in one batch call."
    );
    describe_counter!("topkart_order_inserts_total", "Order inserts, by outcome.");
    describe_gauge!("topkart_db_pool_connections", "Database connections of this process, in use and idle.");
    describe_gauge!("topkart_deal_watchers", "WatchDeal streams open on this deal-service.");
    describe_histogram!("topkart_sweep_seconds", Unit::Seconds, "Duration of the expiry worker's ticks, every step.");
    describe_counter!("topkart_sweeps_total", "Worker ticks, by outcome (failed when any step failed, for any deal).");
    describe_counter!("topkart_worker_steps_total", "Worker steps run, by step and outcome.");
    describe_gauge!(
        "topkart_worker_step_failing_seconds",
        Unit::Seconds,
        "How long a worker step has failed at every tick (0 once it succeeds)."
    );
    describe_counter!(
        "topkart_worker_fallbacks_total",
        "Worker statements over several deals that failed, after which the step went deal by deal."
    );
    describe_counter!(
        "topkart_worker_deal_failures_total",
        "Deals whose part of a worker step failed while the step went on for the others."
    );
    describe_histogram!("topkart_daily_reset_seconds", Unit::Seconds, "Duration of the worker's daily-reset passes.");
    describe_counter!(
        "topkart_daily_resets_total",
        "Daily-reset passes (a no-op once the day's reset is done), by outcome."
    );
    describe_counter!("topkart_deals_expired_total", "Deals the sweep marked expired.");
    describe_counter!("topkart_orders_expired_total", "Pending orders the worker expired past their approve deadline.");
    describe_counter!("topkart_deals_started_total", "Scheduled deals the sweep started.");
    describe_counter!(
        "topkart_waitlist_events_total",
        "Waitlist joins, leaves and claims of offers, and refused claims by reason."
    );
    describe_counter!(
        "topkart_waitlist_entries_expired_total",
        "Waitlist entries the worker expired: offers not claimed in time, and entries of deals that ended."
    );
    describe_counter!(
        "topkart_holds_settled_total",
        "Holds settled outside the order path, by outcome (abandoned: released at once when a call gave up)."
    );
}

/// Serves `GET /metrics` on `listener` for as long as the process runs, with the gauges of `pool`
/// (`pool="main"`) and of the pools reported ([`PoolReport`]) read at every scrape.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, pool: PgPool) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Folds recorded histogram samples, so memory stays flat between scrapes.
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (handle, pool) = (handle.clone(), pool.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (handle, pool) = (handle.clone(), pool.clone());
                async move { scrape(request, &handle, &pool).await }
            });
            if let Err(err) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(error = %err, "metrics: connection ended");
            }
        });
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| std::io::Error::new(err.kind(), format!("cannot listen on {addr} for metrics: {err}")))
}

async fn scrape(
    request: Request<Incoming>,
    handle: &PrometheusHandle,
    pool: &PgPool,
) -> Result<Response<Full<bytes::Bytes>>, Infallible> {
    let response = Response::builder();
    if request.uri().path() != "/metrics" {
        return Ok(response
            .status(StatusCode::NOT_FOUND)
            .body(Full::from("only /metrics is served here\n"))
            .unwrap_or_default());
    }
    if request.method() != HttpMethod::GET {
        return Ok(response.status(StatusCode::METHOD_NOT_ALLOWED).body(Full::default()).unwrap_or_default());
    }
    pool_connections("main", pool);
    for (_, name, pool) in reported_pools().iter() {
        pool_connections(name, pool);
    }
    Ok(response
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::from(handle.render()))
        .unwrap_or_default())
}

/// A call that finished with `code` after `seconds`.
pub fn call_handled(method: &'static Method, code: &'static str, seconds: f64) {
    let labels =
        [("grpc_service", method.service.as_str()), ("grpc_method", method.method.as_str()), ("grpc_code", code)];
    counter!("grpc_server_handled_total", &labels).increment(1);
    histogram!("grpc_server_handling_seconds", &labels).record(seconds);
}

/// A call refused by admission control.
pub fn call_shed(method: &'static Method) {
    counter!("grpc_server_shed_total", "grpc_service" => method.service.as_str(), "grpc_method" => method.method.as_str())
        .increment(1);
}

/// `waiting` calls of `callers` callers wait in the admission queue.
pub fn admission_queue(waiting: usize, callers: usize) {
    gauge!("topkart_admission_waiting").set(waiting as f64);
    gauge!("topkart_admission_callers_waiting").set(callers as f64);
}

/// A call waited `seconds` in the admission queue, and was admitted or not.
pub fn admission_wait(seconds: f64, admitted: bool) {
    histogram!("topkart_admission_wait_seconds", "outcome" => if admitted { "admitted" } else { "not_admitted" })
        .record(seconds);
}

/// A call refused by admission, for `reason`: `caller_share`, `queue_full`, `wait_timeout`,
/// `deadline`, `rate_limited`, `SOLD_OUT` or `DEAL_EXPIRED`.
pub fn admission_refused(reason: &'static str) {
    counter!("topkart_admission_refusals_total", "reason" => reason).increment(1);
}

/// A call refused by the per-caller rate limit.
pub fn call_rate_limited(method: &'static Method) {
    counter!("grpc_server_rate_limited_total", "grpc_service" => method.service.as_str(), "grpc_method" => method.method.as_str())
        .increment(1);
}

/// `change` calls more (or fewer) in flight.
pub fn in_flight(change: f64) {
    gauge!("grpc_server_in_flight").increment(change);
}

/// A batch of `size` reservations served.
pub fn reservation_batch(size: usize) {
    histogram!("topkart_reservation_batch_size").record(size as f64);
}

/// One reservation's outcome: `reserved`, `existing`, or a refusal's reason.
pub fn reservation(outcome: &'static str) {
    counter!("topkart_reservations_total", "outcome" => outcome).increment(1);
}

/// A batch call to deal-service (`reserve` or `confirm`) of `size` requests.
pub fn deal_call_batch(call: &'static str, size: usize) {
    histogram!("topkart_deal_call_batch_size", "call" => call).record(size as f64);
}

/// A batch of `size` order inserts.
pub fn order_insert_batch(size: usize) {
    histogram!("topkart_order_insert_batch_size").record(size as f64);
}

/// `count` order inserts with `outcome`.
pub fn order_inserts(outcome: &'static str, count: usize) {
    counter!("topkart_order_inserts_total", "outcome" => outcome).increment(count as u64);
}

/// A worker pass (a whole tick, or its daily reset) that took `seconds` and succeeded or not.
pub fn worker_pass(pass: WorkerPass, seconds: f64, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    match pass {
        WorkerPass::Sweep => {
            histogram!("topkart_sweep_seconds").record(seconds);
            counter!("topkart_sweeps_total", "outcome" => outcome).increment(1);
        }
        WorkerPass::DailyReset => {
            histogram!("topkart_daily_reset_seconds").record(seconds);
            counter!("topkart_daily_resets_total", "outcome" => outcome).increment(1);
        }
    }
}

/// Worker step `step`: whether it ran and succeeded (`None`: not run this tick), and how long it
/// has failed at every tick.
pub fn worker_step(step: &'static str, ok: Option<bool>, failing_seconds: f64) {
    if let Some(ok) = ok {
        let outcome = if ok { "ok" } else { "failed" };
        counter!("topkart_worker_steps_total", "step" => step, "outcome" => outcome).increment(1);
    }
    gauge!("topkart_worker_step_failing_seconds", "step" => step).set(failing_seconds);
}

/// A statement of worker step `step` over several deals failed, and the step went deal by deal.
pub fn worker_fallback(step: &'static str) {
    counter!("topkart_worker_fallbacks_total", "step" => step).increment(1);
}

/// `count` deals whose part of worker step `step` failed.
pub fn worker_deal_failures(step: &'static str, count: u64) {
    counter!("topkart_worker_deal_failures_total", "step" => step).increment(count);
}

/// The worker's timed passes.
#[derive(Debug, Clone, Copy)]
pub enum WorkerPass {
    Sweep,
    DailyReset,
}

/// Deals the worker expired and started.
pub fn deals_swept(expired: u64, started: u64) {
    counter!("topkart_deals_expired_total").increment(expired);
    counter!("topkart_deals_started_total").increment(started);
}

/// A WatchDeal stream opened (`1.0`) or ended (`-1.0`).
pub fn deal_watchers(change: f64) {
    gauge!("topkart_deal_watchers").increment(change);
}

/// Pending orders the worker expired.
pub fn orders_expired(count: u64) {
    counter!("topkart_orders_expired_total").increment(count);
}

/// A waitlist `event`: joined, left, claimed, or the reason a claim was refused.
pub fn waitlist(event: &'static str) {
    counter!("topkart_waitlist_events_total", "event" => event).increment(1);
}

/// Waitlist entries the worker expired.
pub fn waitlist_entries_expired(count: u64) {
    counter!("topkart_waitlist_entries_expired_total").increment(count);
}

/// `count` holds settled with `outcome`.
pub fn holds_settled(outcome: &'static str, count: u64) {
    counter!("topkart_holds_settled_total", "outcome" => outcome).increment(count);
}
