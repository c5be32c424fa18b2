//! Metrics in the Prometheus text format on `GET /metrics` (`--metrics-addr`; off unless set), and
//! every metric the services record, named here in one place. Without `--metrics-addr` no recorder
//! is installed and each of these calls costs next to nothing. gRPC calls are counted under
//! go-grpc-prometheus's names and labels ([`grpc`]), so its dashboards and alerts apply as they are.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `grpc_server_started_total`, `grpc_server_msg_received_total`, `grpc_server_msg_sent_total` | counter | `grpc_type`, `grpc_service`, `grpc_method` |
//! | `grpc_server_handled_total` | counter | `grpc_type`, `grpc_service`, `grpc_method`, `grpc_code` (`OK`, `NotFound`…) |
//! | `grpc_server_handling_seconds` | histogram | `grpc_type`, `grpc_service`, `grpc_method`, `grpc_code` |
//! | `grpc_client_*` (order-service's calls to deal-service) | the same five | the same |
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
//! | `topkart_db_pool_max_connections` | gauge | `pool` |
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
//! | `topkart_deal_units_available`, `topkart_deal_units_offered` | gauge, read at each scrape of the expiry worker: the live deals with the most units sold | `deal`, `product` |
//! | `topkart_holds_oldest_seconds` | gauge, read at each scrape of the expiry worker | |
//! | `topkart_build_info` | gauge (1) | `service`, `version`, `revision` |
//! | `process_*` | the process's CPU, memory, threads and file descriptors (`metrics-process`) | |

pub mod exporter;
pub mod grpc;

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::methods::Method;
pub use exporter::{DatabaseGauges, Exposition, GaugeFamily, PoolReport, bind, serve};

/// Seconds: from well under a millisecond (a shed call) to the longest deadline.
const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Requests per batch, up to the coalescers' 500.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 350.0, 500.0];
/// Seconds of a worker pass.
const PASS_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether this process keeps metrics (a recorder is installed).
fn installed() -> bool {
    HANDLE.get().is_some()
}

/// The revision the binaries were built from, when the build said (`TOPKART_REVISION`).
const REVISION: &str = match option_env!("TOPKART_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// Installs the process's recorder for the binary `service` (once; later calls return the same
/// handle).
pub fn install(service: &'static str) -> Result<PrometheusHandle, String> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_handling_seconds".into()), &LATENCY_BUCKETS)
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
    gauge!("topkart_build_info", "service" => service, "version" => env!("CARGO_PKG_VERSION"), "revision" => REVISION)
        .set(1.0);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The HELP line of every metric.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("grpc_server_started_total", "Calls started on the server.");
    describe_counter!("grpc_server_handled_total", "Calls completed on the server, by gRPC status code.");
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "Time from a call's arrival to the end of its reply (a stream's whole life)."
    );
    describe_counter!("grpc_server_msg_received_total", "Messages received on the server's calls.");
    describe_counter!("grpc_server_msg_sent_total", "Messages sent on the server's calls.");
    describe_counter!("grpc_client_started_total", "Calls this process made to another service.");
    describe_counter!("grpc_client_handled_total", "Calls this process made that completed, by gRPC status code.");
    describe_histogram!(
        "grpc_client_handling_seconds",
        Unit::Seconds,
        "Time from sending a call to the end of its reply, as this process saw it."
    );
    describe_counter!("grpc_client_msg_received_total", "Messages received on the calls this process made.");
    describe_counter!("grpc_client_msg_sent_total", "Messages sent on the calls this process made.");
    describe_gauge!("topkart_build_info", "The binary's version and the revision it was built from (always 1).");
    describe_gauge!("topkart_db_pool_max_connections", "The most database connections a pool of this process opens.");
    exporter::describe_process();
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
