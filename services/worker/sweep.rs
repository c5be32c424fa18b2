//! The sweep: marks deals past their expiry as expired and starts scheduled deals whose start time
//! has come. Orders never depend on it (reservations check the clock themselves); it keeps the
//! stored state honest for listings and reports. Safe to run from several workers at once.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// What one sweep changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Deals marked expired.
    pub expired: u64,
    /// Scheduled deals that went live.
    pub started: u64,
}

/// Marks live deals past their expiry, or past the 00:00 UTC after their start, as expired. `$1`: now.
///
/// Each arm of the `or` has a partial index of unexpired deals (on `expire_time` and on
/// `daily_reset_time`), which the planner combines in a BitmapOr; see benchmarks/worker.md. The
/// daily-reset arm catches a deal that started just before midnight but was committed after the
/// reset had run.
pub const EXPIRE_DUE: &str = "update deals set state = 'expired', update_time = $1
          where state <> 'expired' and (expire_time <= $1 or daily_reset_time <= $1)";

/// Marks scheduled deals whose start has come, and which are still running, as active. `$1`: now.
/// Uses the partial index of scheduled deals by start time.
pub const ACTIVATE_SCHEDULED: &str = "update deals set state = 'active', update_time = $1
          where state = 'scheduled' and start_time <= $1
            and expire_time > $1 and daily_reset_time > $1";

/// Sweeps as of `now`.
///
/// Its statements are sent unprepared (`persistent(false)`), so that Postgres plans each for its
/// `now`: how many deals are due decides the right plan. A statement prepared on a connection may
/// get a generic plan after five runs, made without the value of `now`; the generic plan of
/// `ACTIVATE_SCHEDULED` read every live deal on every tick (benchmarks/worker.md).
#[tracing::instrument(skip(pool))]
pub async fn sweep_once(pool: &PgPool, now: DateTime<Utc>) -> Result<SweepReport, sqlx::Error> {
    let expired = sqlx::query(EXPIRE_DUE).persistent(false).bind(now).execute(pool).await?.rows_affected();
    let started = activate_scheduled(pool, now).await?;
    Ok(SweepReport { expired, started })
}

/// Marks scheduled deals whose start time has come, and which are still running, as active. The
/// daily reset calls it too. Unprepared, as `sweep_once` explains.
pub(super) async fn activate_scheduled<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(ACTIVATE_SCHEDULED).persistent(false).bind(now).execute(conn).await?.rows_affected())
}
