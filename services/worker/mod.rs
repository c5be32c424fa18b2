//! expiry-worker: every few seconds it performs the daily reset if the UTC day has turned, sweeps
//! expired and newly started deals, expires orders not approved in time and waitlist offers not
//! claimed in time, and settles the holds the order protocol left behind. It
//! serves gRPC health so orchestrators can probe it.

pub mod daily_reset;
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
pub use holds::settle_holds;
pub use order_expiry::expire_orders;
pub use sweep::sweep_once;
pub use waitlist::expire_waitlist_entries;

/// The name under which the worker reports its health, besides the server's "".
pub const HEALTH_SERVICE_NAME: &str = "topkart.worker.v1.ExpiryWorker";

/// Runs the worker loop every `sweep_interval` (and at every 00:00 UTC) and serves health on
/// `listener`, until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    pool: PgPool,
    sweep_interval: Duration,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), server::ServeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let ticks = tokio::spawn(tick_until_stopped(pool.clone(), sweep_interval, stop_rx));
    let (health, health_service) = server::Health::start(pool, &[HEALTH_SERVICE_NAME]).await;
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

async fn tick_until_stopped(pool: PgPool, sweep_interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        // The database's clock, the one reservations and orders are stamped with.
        match sqlx::query_scalar::<_, DateTime<Utc>>("select now()").fetch_one(&pool).await {
            Ok(now) => tick(&pool, now).await,
            Err(err) => tracing::warn!(error = %err, "database unavailable; retrying next tick"),
        }
        let wait = until_next_tick(Utc::now(), sweep_interval);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One round: the day's reset first (a no-op once done), then the sweep, then the holds. Errors are
/// logged and the next round tries again.
async fn tick(pool: &PgPool, now: DateTime<Utc>) {
    let started = Instant::now();
    let reset = daily_reset(pool, now).await;
    metrics::worker_pass(WorkerPass::DailyReset, started.elapsed().as_secs_f64(), reset.is_ok());
    match reset {
        Ok(Some(report)) => {
            tracing::info!(day = %report.day, ended = report.ended, started = report.started, "daily reset performed")
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %err, "daily reset failed; retrying next tick"),
    }
    let started = Instant::now();
    let swept = sweep_once(pool, now).await;
    metrics::worker_pass(WorkerPass::Sweep, started.elapsed().as_secs_f64(), swept.is_ok());
    if let Ok(report) = &swept {
        metrics::deals_swept(report.expired, report.started);
    }
    match swept {
        Ok(report) if report != sweep::SweepReport::default() => {
            tracing::info!(expired = report.expired, started = report.started, "sweep")
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "sweep failed; retrying next tick"),
    }
    match expire_orders(pool, now).await {
        Ok(expired) => {
            metrics::orders_expired(expired.max(0) as u64);
            if expired > 0 {
                tracing::info!(expired, "orders not approved in time expired");
            }
        }
        Err(err) => tracing::warn!(error = %err, "expiring orders failed; retrying next tick"),
    }
    match expire_waitlist_entries(pool, now).await {
        Ok(expired) => {
            metrics::waitlist_entries_expired(expired);
            if expired > 0 {
                tracing::info!(expired, "waitlist entries expired");
            }
        }
        Err(err) => tracing::warn!(error = %err, "expiring waitlist entries failed; retrying next tick"),
    }
    let settled = settle_holds(pool, now).await;
    if let Ok(report) = &settled {
        metrics::holds_settled("confirmed", report.confirmed.max(0) as u64);
        metrics::holds_settled("released", report.released.max(0) as u64);
        metrics::holds_settled("finished_release", report.finished_releases.max(0) as u64);
    }
    match settled {
        Ok(report) if report != holds::HoldReport::default() => tracing::info!(
            confirmed = report.confirmed,
            released = report.released,
            finished_releases = report.finished_releases,
            "holds settled"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "settling holds failed; retrying next tick"),
    }
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
