//! The two tables the benchmark runs on, each a million deals seeded in one statement: what the
//! sweep finds mid-morning, and what the daily reset finds at 00:00 UTC.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use sqlx::PgPool;
use topkart::worker::daily_reset::day_start;

/// Where in the heap the deals of each kind end up, which decides how many pages a function
/// reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// In random order: the deals due together are spread over the whole heap, about one per page,
    /// as when they were created at different times among other deals.
    Scattered,
    /// Kind by kind: the deals due together share a few hundred pages, as when they were created
    /// together.
    Clustered,
}

impl Layout {
    /// The layout's name, as `--layout` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Scattered => "scattered",
            Self::Clustered => "clustered",
        }
    }
}

/// A table of deals and the instant a worker function runs on it.
pub struct Scenario {
    /// The instant passed to the function.
    pub now: DateTime<Utc>,
    /// What the table holds, in words, for the report.
    pub description: &'static str,
    /// How many live deals must end at `now`.
    pub expect_ended: u64,
    /// How many scheduled deals must start at `now`.
    pub expect_started: u64,
    groups: Vec<Group>,
}

/// `count` deals in `state`: the n-th starts `first_start` plus a pseudo-random part of
/// `start_spread` and runs `run` plus a pseudo-random part of `run_spread` (whole seconds).
struct Group {
    count: i32,
    state: &'static str,
    first_start: DateTime<Utc>,
    start_spread: TimeDelta,
    run: TimeDelta,
    run_spread: TimeDelta,
}

fn hours(hours: i64) -> TimeDelta {
    TimeDelta::hours(hours)
}

fn seconds(seconds: i64) -> TimeDelta {
    TimeDelta::seconds(seconds)
}

impl Scenario {
    /// 10:00 UTC: 10,000 deals due, 990,000 live. Mid-morning rather than noon so that both arms of
    /// the sweep's `or` find deals: 1,000 of the due deals started late the day before and run past
    /// 10:00, so only their 00:00 UTC has come (a deal committed after the reset had run).
    pub fn sweep() -> Self {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).unwrap();
        let midnight = day_start(now);
        let groups = vec![
            // Started 00:00–08:00, ran 1–2 h: past their expire_time.
            Group::new(9_000, "active", midnight, hours(8), hours(1), hours(1)),
            // Started 22:00–24:00 the day before, run 12 h: past their 00:00 UTC only.
            Group::new(1_000, "active", midnight - hours(2) + seconds(1), hours(2) - seconds(1), hours(12), seconds(1)),
            // Started 00:00–10:00, expire after 10:00 (at most 12 h after their start).
            Group::new(900_000, "active", midnight, hours(10), hours(10) + seconds(1), seconds(7_199)),
            // Start later today.
            Group::new(90_000, "scheduled", now + seconds(1), hours(13), hours(1), hours(11)),
        ];
        Self {
            now,
            description: "1,000,000 deals: 10,000 due (9,000 by expire_time, 1,000 by 00:00 UTC), 990,000 live",
            expect_ended: 10_000,
            expect_started: 0,
            groups,
        }
    }

    /// 00:00 UTC: the 100,000 deals of the day before that are still live end, the 10,000 deals
    /// scheduled for 00:00 start; 90,000 more are scheduled later in the day and 800,000 deals of
    /// the month before are expired.
    pub fn daily_reset() -> Self {
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap();
        let groups = vec![
            // Started 14:00–24:00 the day before; expire after 00:00 (at most 12 h after their start).
            Group::new(100_000, "active", now - hours(10), hours(10), hours(10) + seconds(1), seconds(7_199)),
            Group::new(10_000, "scheduled", now, seconds(1), hours(1), hours(11)),
            Group::new(90_000, "scheduled", now + seconds(1), hours(23), hours(1), hours(11)),
            Group::new(800_000, "expired", now - TimeDelta::days(30), TimeDelta::days(29), hours(1), hours(11)),
        ];
        Self {
            now,
            description: "1,000,000 deals: 100,000 live from the day before, 100,000 scheduled today \
                          (10,000 at 00:00), 800,000 expired",
            expect_ended: 100_000,
            expect_started: 10_000,
            groups,
        }
    }

    /// Empties the tables and seeds this scenario's deals in `layout`, then `vacuum analyze`s
    /// them, as autovacuum would have.
    pub async fn seed(&self, pool: &PgPool, layout: Layout) -> Result<(), sqlx::Error> {
        // `cascade` empties every table that refers to deals too, the ones added after this was written.
        sqlx::raw_sql("truncate deals, daily_resets cascade").execute(pool).await?;
        sqlx::query(
            "insert into deals (id, product_name, currency_code, actual_price_micros, final_price_micros,
                                total_units, available_units, start_time, expire_time, state)
             select gen_random_uuid(), 'bench deal ' || n, 'INR', 1000000000, 600000000,
                    100, 100 - n % 100, start, start + make_interval(secs => g.run + (n::bigint * 104729) % g.run_spread), g.state
               from unnest($1::int[], $2::text[], $3::timestamptz[], $4::int[], $5::int[], $6::int[]) with ordinality
                        as g(count, state, first_start, start_spread, run, run_spread, kind),
                    generate_series(1, g.count) as n,
                    lateral (select g.first_start + make_interval(secs => (n::bigint * 7919) % g.start_spread) as start) s
              -- scattered: by id alone, that is in random order; clustered: group by group.
              order by case when $7 then 0 else g.kind end, case when $7 then 0 else n end, 1",
        )
        .bind(self.groups.iter().map(|g| g.count).collect::<Vec<_>>())
        .bind(self.groups.iter().map(|g| g.state).collect::<Vec<_>>())
        .bind(self.groups.iter().map(|g| g.first_start).collect::<Vec<_>>())
        .bind(self.groups.iter().map(|g| secs(g.start_spread)).collect::<Vec<_>>())
        .bind(self.groups.iter().map(|g| secs(g.run)).collect::<Vec<_>>())
        .bind(self.groups.iter().map(|g| secs(g.run_spread)).collect::<Vec<_>>())
        .bind(matches!(layout, Layout::Scattered))
        .execute(pool)
        .await?;
        sqlx::raw_sql("vacuum analyze deals").execute(pool).await?;
        Ok(())
    }

    /// How many deals the scenario holds.
    pub fn deals(&self) -> i64 {
        self.groups.iter().map(|g| i64::from(g.count)).sum()
    }
}

impl Group {
    fn new(
        count: i32,
        state: &'static str,
        first_start: DateTime<Utc>,
        start_spread: TimeDelta,
        run: TimeDelta,
        run_spread: TimeDelta,
    ) -> Self {
        Self { count, state, first_start, start_spread, run, run_spread }
    }
}

fn secs(delta: TimeDelta) -> i32 {
    i32::try_from(delta.num_seconds()).expect("spans of a few days")
}
