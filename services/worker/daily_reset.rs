//! The daily reset at 00:00 UTC: every deal that went live before the new UTC day and is still live
//! ends, and the new day's scheduled deals go live.
//!
//! It happens exactly once per day: the `daily_resets` row for the day is inserted in the same
//! transaction as the changes, so of several workers only the one whose insert succeeds performs it
//! (the others wait on the row's key and then find it taken). A worker that was down over midnight
//! performs it when it next ticks, since every tick asks for the current day's reset.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

use super::sweep::activate_scheduled;

/// Claims the reset of a day for this transaction; no row is inserted when it is taken. `$1`: the
/// day, `$2`: now.
pub const CLAIM_DAY: &str = "insert into daily_resets (day, performed_time, deals_ended, deals_started)
         values ($1, $2, 0, 0)
         on conflict (day) do nothing";

/// Ends every live deal that started before the day. `$1`: now, `$2`: the instant the day began.
///
/// `daily_reset_time <= $2` selects exactly the deals with `start_time < $2`: `daily_reset_time` is
/// the first 00:00 UTC after `start_time`, and `$2` is a 00:00 UTC. Written on `daily_reset_time`
/// so that the partial index of unexpired deals on that column finds them (benchmarks/worker.md).
pub const END_EARLIER_DAYS: &str = "update deals set state = 'expired', update_time = $1
          where state <> 'expired' and daily_reset_time <= $2";

/// Records what the reset changed. `$1`: the day, `$2`: deals ended, `$3`: deals started.
pub const RECORD_COUNTS: &str = "update daily_resets set deals_ended = $2, deals_started = $3 where day = $1";

/// What a performed reset changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetReport {
    /// The UTC day the reset opened.
    pub day: NaiveDate,
    /// Live deals of earlier days that were ended.
    pub ended: u64,
    /// Scheduled deals of the new day that went live.
    pub started: u64,
}

/// The instant the UTC day of `now` began.
pub fn day_start(now: DateTime<Utc>) -> DateTime<Utc> {
    now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc()
}

/// Performs the reset of `now`'s UTC day unless it was performed already. `None` when it was.
#[tracing::instrument(skip(pool))]
pub async fn daily_reset(pool: &PgPool, now: DateTime<Utc>) -> Result<Option<ResetReport>, sqlx::Error> {
    let day = now.date_naive();
    let mut tx = pool.begin().await?;
    let claimed = sqlx::query(CLAIM_DAY).bind(day).bind(now).execute(&mut *tx).await?.rows_affected();
    if claimed == 0 {
        return Ok(None);
    }
    // Unprepared, for a plan made for this day, as `sweep_once` explains.
    let ended = sqlx::query(END_EARLIER_DAYS)
        .persistent(false)
        .bind(now)
        .bind(day_start(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let started = activate_scheduled(&mut *tx, now).await?;
    sqlx::query(RECORD_COUNTS)
        .bind(day)
        .bind(i64::try_from(ended).unwrap_or(i64::MAX))
        .bind(i64::try_from(started).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(ResetReport { day, ended, started }))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_day_starts_at_midnight_utc() {
        let last_instant =
            Utc.with_ymd_and_hms(2026, 11, 25, 23, 59, 59).unwrap() + chrono::TimeDelta::microseconds(999_999);
        assert_eq!(day_start(last_instant), Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap());
        let midnight = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
        assert_eq!(day_start(midnight), midnight);
    }
}
