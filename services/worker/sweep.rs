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

/// Sweeps as of `now`.
#[tracing::instrument(skip(pool))]
pub async fn sweep_once(pool: &PgPool, now: DateTime<Utc>) -> Result<SweepReport, sqlx::Error> {
    // Uses the partial index on expire_time of unexpired deals. The daily-reset condition catches a
    // deal that started just before midnight but was committed after the reset had run.
    let expired = sqlx::query(
        "update deals set state = 'expired', update_time = $1
          where state <> 'expired' and (expire_time <= $1 or daily_reset_time <= $1)",
    )
    .bind(now)
    .execute(pool)
    .await?
    .rows_affected();
    let started = activate_scheduled(pool, now).await?;
    Ok(SweepReport { expired, started })
}

/// Marks scheduled deals whose start time has come, and which are still running, as active. The
/// daily reset calls it too.
pub(super) async fn activate_scheduled<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "update deals set state = 'active', update_time = $1
          where state = 'scheduled' and start_time <= $1
            and expire_time > $1 and daily_reset_time > $1",
    )
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected())
}
