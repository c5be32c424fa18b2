//! expiry-worker: every few seconds it performs the daily reset if the UTC day has turned, sweeps
//! expired and newly started deals, expires orders not approved in time and waitlist offers not
//! claimed in time, and settles the holds the order protocol left behind. A step that fails for
//! one deal does not hold back the others (`failures`). It serves gRPC health so orchestrators can
//! probe it.

pub mod daily_reset;
pub mod failures;
pub mod gauges;
pub mod holds;
pub mod order_expiry;
pub mod sweep;
pub mod waitlist;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::ServerTlsConfig;

use crate::shared::{
    metrics::{self, WorkerPass},
    server,
};

pub use daily_reset::daily_reset;
pub use failures::{Done, Step, StepHealth};
pub use gauges::scraped_gauges;
pub use holds::settle_holds;
pub use order_expiry::expire_orders;
pub use sweep::sweep_once;
pub use waitlist::expire_waitlist_entries;

/// The name under which the worker reports its health, besides the server's "".
pub const HEALTH_SERVICE_NAME: &str = "topkart.worker.v1.ExpiryWorker";

/// When the worker ticks, and when it says it is failing.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Between two ticks (a tick also comes at every 00:00 UTC).
    pub sweep_interval: Duration,
    /// How long a step may fail at every tick before the named health service says NOT_SERVING.
    pub unhealthy_after: Duration,
}

/// Runs the worker loop on `schedule` and serves health on `listener`, until `shutdown` completes.
/// The named health service ([`HEALTH_SERVICE_NAME`]) is NOT_SERVING while a step of the loop has
/// failed for `schedule.unhealthy_after`; the server's "" follows the database alone.
pub async fn run(
    listener: TcpListener,
    pool: PgPool,
    schedule: Schedule,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), server::ServeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Healthy until the first tick has had its time.
    let (healthy_until, healthy_until_rx) = watch::channel(Instant::now() + schedule.unhealthy_after);
    let ticks = tokio::spawn(tick_until_stopped(pool.clone(), schedule, healthy_until, stop_rx));
    let (health, health_service) =
        server::Health::start_with_check(pool, &[HEALTH_SERVICE_NAME], healthy_until_rx).await;
    // Health only: no API, so no key and no limits to apply.
    let settings = server::ServerSettings {
        tls,
        ..server::ServerSettings::plaintext(crate::shared::auth::Authenticator::Insecure)
    };
    let router = server::builder(&settings)?.add_service(health_service);
    let served = server::serve(server::with_reflection(router, &[])?, listener, health, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    // The loop stops between ticks; a tick in progress finishes its transaction first.
    let _ = ticks.await;
    served
}

/// Ticks until `stop`, publishing after each tick until when the worker is healthy: a while past
/// the next tick when no step has failed for too long, already past when one has. A tick that
/// never ends (a statement stuck on a lock) publishes nothing, and the health service turns
/// NOT_SERVING once that time has passed.
async fn tick_until_stopped(
    pool: PgPool,
    schedule: Schedule,
    healthy_until: watch::Sender<Instant>,
    mut stop: watch::Receiver<bool>,
) {
    let mut health = StepHealth::default();
    loop {
        tick(&pool, &mut health).await;
        let now = Instant::now();
        let failing = health.failing_for_over(schedule.unhealthy_after, now);
        if failing.is_empty() {
            healthy_until.send_replace(now + schedule.unhealthy_after + schedule.sweep_interval);
        } else {
            let steps: Vec<&str> = failing.iter().map(|step| step.as_str()).collect();
            tracing::error!(steps = ?steps, "worker steps failing at every tick; health NOT_SERVING");
            healthy_until.send_replace(now);
        }
        let wait = until_next_tick(Utc::now(), schedule.sweep_interval);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One round, at the database's clock: the day's reset first (a no-op once done), then the sweep,
/// the orders and offers not taken up in time, and the holds. Each step is recorded in `health` and
/// the metrics; a failure is logged at ERROR with its step (and deal), and the next round tries
/// again. Returns whether every step succeeded for every deal.
pub async fn tick(pool: &PgPool, health: &mut StepHealth) -> bool {
    let started = Instant::now();
    // The database's clock, the one reservations and orders are stamped with.
    let now = match sqlx::query_scalar::<_, DateTime<Utc>>("select now()").fetch_one(pool).await {
        Ok(now) => now,
        Err(err) => {
            tracing::error!(step = Step::Clock.as_str(), error = %err, "database unavailable; retrying next tick");
            finish_tick(health, &[(Step::Clock, false)], started);
            return false;
        }
    };
    let mut outcomes = vec![(Step::Clock, true)];

    let reset_started = Instant::now();
    let reset = daily_reset(pool, now).await;
    metrics::worker_pass(WorkerPass::DailyReset, reset_started.elapsed().as_secs_f64(), reset.is_ok());
    if let Ok(Some(report)) = &reset {
        tracing::info!(day = %report.day, ended = report.ended, started = report.started, "daily reset performed");
    }
    outcomes.push((Step::DailyReset, step_ok(health, Step::DailyReset, reset.map(Done::clean))));

    let swept = sweep_once(pool, now).await;
    if let Ok(report) = &swept {
        metrics::deals_swept(report.expired, report.started);
        if *report != sweep::SweepReport::default() {
            tracing::info!(expired = report.expired, started = report.started, "sweep");
        }
    }
    outcomes.push((Step::Sweep, step_ok(health, Step::Sweep, swept.map(Done::clean))));

    let expired_orders = expire_orders(pool, now, health.failed_deals(Step::OrderExpiry)).await;
    if let Ok(Done { done: expired, .. }) = &expired_orders {
        metrics::orders_expired(expired.max(&0).unsigned_abs());
        if *expired > 0 {
            tracing::info!(expired, "orders not approved in time expired");
        }
    }
    outcomes.push((Step::OrderExpiry, step_ok(health, Step::OrderExpiry, expired_orders)));

    let expired_entries = expire_waitlist_entries(pool, now, health.failed_deals(Step::WaitlistExpiry)).await;
    if let Ok(Done { done: expired, .. }) = &expired_entries {
        metrics::waitlist_entries_expired(*expired);
        if *expired > 0 {
            tracing::info!(expired, "waitlist entries expired");
        }
    }
    outcomes.push((Step::WaitlistExpiry, step_ok(health, Step::WaitlistExpiry, expired_entries)));

    let settled = settle_holds(pool, now, health.failed_deals(Step::HoldSettlement)).await;
    if let Ok(Done { done: report, .. }) = &settled {
        metrics::holds_settled("confirmed", report.confirmed.max(0).unsigned_abs());
        metrics::holds_settled("released", report.released.max(0).unsigned_abs());
        metrics::holds_settled("finished_release", report.finished_releases.max(0).unsigned_abs());
        if *report != holds::HoldReport::default() {
            tracing::info!(
                confirmed = report.confirmed,
                released = report.released,
                finished_releases = report.finished_releases,
                "holds settled"
            );
        }
    }
    outcomes.push((Step::HoldSettlement, step_ok(health, Step::HoldSettlement, settled)));

    finish_tick(health, &outcomes, started)
}

/// Whether `step` succeeded for every deal; logs each failure at ERROR, with the deal when it is
/// one deal's, and remembers the deals that failed for the next tick.
fn step_ok<T>(health: &mut StepHealth, step: Step, result: Result<Done<T>, sqlx::Error>) -> bool {
    match result {
        Ok(done) => {
            for failure in &done.failed {
                tracing::error!(
                    step = step.as_str(), deal = %failure.deal, error = %failure.error,
                    "worker step failed for a deal; the other deals were done, retrying next tick"
                );
            }
            metrics::worker_deal_failures(step.as_str(), done.failed.len() as u64);
            health.record_deals(step, done.failed.iter().map(|failure| failure.deal).collect());
            done.failed.is_empty()
        }
        Err(err) => {
            tracing::error!(step = step.as_str(), error = %err, "worker step failed; retrying next tick");
            false
        }
    }
}

/// Records every step's outcome and the tick's, and returns whether all succeeded.
fn finish_tick(health: &mut StepHealth, outcomes: &[(Step, bool)], started: Instant) -> bool {
    let now = Instant::now();
    for &(step, ok) in outcomes {
        health.record(step, ok, now);
    }
    for step in Step::ALL {
        let ran = outcomes.iter().find(|(ran, _)| *ran == step).map(|(_, ok)| *ok);
        metrics::worker_step(step.as_str(), ran, health.failing_for(step, now).as_secs_f64());
    }
    let ok = outcomes.iter().all(|(_, ok)| *ok);
    metrics::worker_pass(WorkerPass::Sweep, started.elapsed().as_secs_f64(), ok);
    ok
}

/// How long to sleep after a tick at `now`: the interval, or less to wake exactly at 00:00 UTC.
fn until_next_tick(now: DateTime<Utc>, sweep_interval: Duration) -> Duration {
    let next_midnight = daily_reset::day_start(now) + TimeDelta::days(1);
    let to_midnight = (next_midnight - now).to_std().unwrap_or(Duration::ZERO);
    sweep_interval.min(to_midnight)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_worker_wakes_at_midnight_if_that_comes_first() {
        let interval = Duration::from_secs(10);
        let noon = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
        assert_eq!(until_next_tick(noon, interval), interval);
        let before_midnight = Utc.with_ymd_and_hms(2026, 11, 25, 23, 59, 57).unwrap();
        assert_eq!(until_next_tick(before_midnight, interval), Duration::from_secs(3));
    }
}
