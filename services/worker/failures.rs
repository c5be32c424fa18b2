//! How the worker fails: locally and loudly. A statement that fails for one deal's rows (a broken
//! trigger, a constraint) must not hold back every other deal's expiries and settlements, tick
//! after tick; so each step that works across deals runs deal by deal once its statement over all
//! of them has failed, and names the deals it could not do. A step that keeps failing is reported
//! by the tick ([`StepHealth`]): metrics, an ERROR line per failure, and the worker's named health
//! service NOT_SERVING once it has failed for `--unhealthy-after-secs`.

use std::{
    collections::HashMap,
    future::Future,
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::shared::{db, metrics};

/// What a step did, and the deals it could not do (each of them failed alone; the rest were done).
#[derive(Debug, Default)]
pub struct Done<T> {
    /// What the step counted: rows expired, holds settled…
    pub done: T,
    /// The deals whose part of the step failed, and why.
    pub failed: Vec<DealFailure>,
}

impl<T> Done<T> {
    /// `done`, with no deal failing.
    pub fn clean(done: T) -> Self {
        Self { done, failed: Vec::new() }
    }

    /// What the step did, if it did it for every deal.
    pub fn for_every_deal(self) -> Result<T, Vec<DealFailure>> {
        if self.failed.is_empty() { Ok(self.done) } else { Err(self.failed) }
    }
}

/// One deal's part of a step that failed.
#[derive(Debug)]
pub struct DealFailure {
    pub deal: Uuid,
    pub error: sqlx::Error,
}

/// Runs a step over every due deal at once (`run` with no deal); when that fails for a reason of
/// the data rather than the database being unavailable, runs it for each deal `due` lists (given
/// the deals that failed the step last time, to list first), alone,
/// so that the deals that can be done are, and the ones that cannot are named. An unavailable
/// database fails the whole step: the next tick tries again.
///
/// Everything runs on one connection: a statement that failed keeps its row locks until its
/// backend has rolled back, which it does after sending the error, and a retry on another
/// connection could skip those rows (`for update skip locked`) and miss the failing deal; on the
/// same connection the retry starts after the rollback.
pub async fn deal_by_deal_on_failure<T>(
    pool: &PgPool,
    step: Step,
    failed_before: &[Uuid],
    run: impl for<'c> Fn(&'c mut PgConnection, Option<Uuid>) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    due: impl for<'c> Fn(&'c mut PgConnection, &'c [Uuid]) -> BoxFuture<'c, Result<Vec<Uuid>, sqlx::Error>>,
) -> Result<Done<T>, sqlx::Error>
where
    T: Default + std::ops::AddAssign,
{
    let mut conn = pool.acquire().await?;
    match run(&mut conn, None).await {
        Ok(done) => Ok(Done::clean(done)),
        Err(err) if db::is_unavailable(&err) => Err(err),
        Err(err) => {
            tracing::warn!(step = step.as_str(), error = %err, "a worker statement over several deals failed; going deal by deal");
            metrics::worker_fallback(step.as_str());
            let deals = due(&mut conn, failed_before).await?;
            let mut done = Done::default();
            for deal in deals {
                match run(&mut conn, Some(deal)).await {
                    Ok(count) => done.done += count,
                    Err(error) if db::is_unavailable(&error) => return Err(error),
                    Err(error) => done.failed.push(DealFailure { deal, error }),
                }
            }
            Ok(done)
        }
    }
}

/// Runs `one` for each of `deals`, going on past a deal that fails (unless the database is
/// unavailable, which fails the step).
pub async fn each_deal<T, One, OneFut>(deals: Vec<Uuid>, one: One) -> Result<Done<T>, sqlx::Error>
where
    T: Default + std::ops::AddAssign,
    One: Fn(Uuid) -> OneFut,
    OneFut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut done = Done::default();
    for deal in deals {
        match one(deal).await {
            Ok(count) => done.done += count,
            Err(error) if db::is_unavailable(&error) => return Err(error),
            Err(error) => done.failed.push(DealFailure { deal, error }),
        }
    }
    Ok(done)
}

/// The worker's steps, in the order a tick runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Reading the database's clock, which every other step is given.
    Clock,
    DailyReset,
    Sweep,
    OrderExpiry,
    WaitlistExpiry,
    HoldSettlement,
}

impl Step {
    pub const ALL: [Step; 6] =
        [Step::Clock, Step::DailyReset, Step::Sweep, Step::OrderExpiry, Step::WaitlistExpiry, Step::HoldSettlement];

    /// The name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Clock => "clock",
            Step::DailyReset => "daily_reset",
            Step::Sweep => "sweep",
            Step::OrderExpiry => "order_expiry",
            Step::WaitlistExpiry => "waitlist_expiry",
            Step::HoldSettlement => "hold_settlement",
        }
    }
}

/// Since when each step has failed at every tick (a step that succeeds once starts afresh), and
/// which deals failed it last: the next tick tries those first, so a failing deal is never left
/// out of a pass (which would read as a success).
#[derive(Debug, Default)]
pub struct StepHealth {
    failing_since: HashMap<Step, Instant>,
    failed_deals: HashMap<Step, Vec<Uuid>>,
}

impl StepHealth {
    /// Records the outcome of `step` at `now`.
    pub fn record(&mut self, step: Step, ok: bool, now: Instant) {
        if ok {
            self.failing_since.remove(&step);
        } else {
            self.failing_since.entry(step).or_insert(now);
        }
    }

    /// Records the deals that failed `step` this tick.
    pub fn record_deals(&mut self, step: Step, deals: Vec<Uuid>) {
        self.failed_deals.insert(step, deals);
    }

    /// The deals that failed `step` last tick.
    pub fn failed_deals(&self, step: Step) -> &[Uuid] {
        self.failed_deals.get(&step).map_or(&[], Vec::as_slice)
    }

    /// How long `step` has failed at every tick, as of `now` (zero when it last succeeded).
    pub fn failing_for(&self, step: Step, now: Instant) -> Duration {
        self.failing_since.get(&step).map_or(Duration::ZERO, |since| now.saturating_duration_since(*since))
    }

    /// The steps that have failed for `limit` or more, as of `now`.
    pub fn failing_for_over(&self, limit: Duration, now: Instant) -> Vec<Step> {
        Step::ALL.into_iter().filter(|step| self.failing_for(*step, now) >= limit).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_failing_too_long_after_a_minute_of_failures_and_recovers_at_its_first_success() {
        let mut health = StepHealth::default();
        let start = Instant::now();
        health.record(Step::WaitlistExpiry, false, start);
        health.record(Step::Sweep, true, start);
        let later = start + Duration::from_secs(50);
        health.record(Step::WaitlistExpiry, false, later);
        assert_eq!(health.failing_for(Step::WaitlistExpiry, later), Duration::from_secs(50), "since the first");
        let limit = Duration::from_secs(60);
        assert!(health.failing_for_over(limit, later).is_empty());
        let minute = start + limit;
        assert_eq!(health.failing_for_over(limit, minute), [Step::WaitlistExpiry]);
        health.record(Step::WaitlistExpiry, true, minute);
        assert!(health.failing_for_over(limit, minute).is_empty());
        assert_eq!(health.failing_for(Step::WaitlistExpiry, minute), Duration::ZERO);
    }
}
