//! The plan of every statement the sweep and the daily reset run: `explain (analyze, buffers, wal)`
//! of the worker's own SQL, in the order the functions run it, on freshly seeded deals and inside a
//! transaction that is then rolled back. One file per statement.

use std::{
    fs,
    path::{Path, PathBuf},
};

use sqlx::{AssertSqlSafe, Postgres, postgres::PgArguments, query::QueryScalar};
use topkart::worker::{daily_reset, sweep};

use crate::{Bench, BenchError, scenario::Scenario};

/// What a plan file shows.
pub struct Plan {
    /// The file's name in the plans directory.
    pub file: String,
    /// The indexes the plan reads, in plan order.
    pub indexes: Vec<String>,
    /// Whether the statement reads or writes `deals`.
    pub on_deals: bool,
    /// Whether it reads all of `deals`.
    pub seq_scan_on_deals: bool,
}

impl Plan {
    /// A statement on `deals` must find its rows through an index of `deals`.
    pub fn uses_an_index(&self) -> bool {
        !self.on_deals || (!self.seq_scan_on_deals && self.indexes.iter().any(|index| index.starts_with("deals_")))
    }
}

/// Prepares each scenario once more, as for a timed run, and writes the plans of its function's
/// statements into `dir`.
pub async fn write_all(bench: &mut Bench<'_>, dir: &Path) -> Result<Vec<Plan>, BenchError> {
    let pool = bench.pool;
    fs::create_dir_all(dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    let mut plans = Vec::new();

    let scenario = Scenario::sweep();
    bench.prepare(&scenario).await?;
    let now = scenario.now;
    let header = format!("sweep_once(pool, {now:?}) on {}; {}", scenario.description, bench.conditions());
    let mut tx = pool.begin().await?;
    let lines = explain(sweep::EXPIRE_DUE).bind(now).fetch_all(&mut *tx).await?;
    plans.push(write(dir, "sweep-1-expire-due.txt", &header, sweep::EXPIRE_DUE, &lines)?);
    let lines = explain(sweep::ACTIVATE_SCHEDULED).bind(now).fetch_all(&mut *tx).await?;
    plans.push(write(dir, "sweep-2-activate-scheduled.txt", &header, sweep::ACTIVATE_SCHEDULED, &lines)?);
    tx.rollback().await?;

    let scenario = Scenario::daily_reset();
    bench.prepare(&scenario).await?;
    let now = scenario.now;
    let day = now.date_naive();
    let header = format!("daily_reset(pool, {now:?}) on {}; {}", scenario.description, bench.conditions());
    let mut tx = pool.begin().await?;
    let lines = explain(daily_reset::CLAIM_DAY).bind(day).bind(now).fetch_all(&mut *tx).await?;
    plans.push(write(dir, "daily-reset-1-claim-day.txt", &header, daily_reset::CLAIM_DAY, &lines)?);
    let lines =
        explain(daily_reset::END_EARLIER_DAYS).bind(now).bind(daily_reset::day_start(now)).fetch_all(&mut *tx).await?;
    plans.push(write(dir, "daily-reset-2-end-earlier-days.txt", &header, daily_reset::END_EARLIER_DAYS, &lines)?);
    let lines = explain(sweep::ACTIVATE_SCHEDULED).bind(now).fetch_all(&mut *tx).await?;
    plans.push(write(dir, "daily-reset-3-activate-scheduled.txt", &header, sweep::ACTIVATE_SCHEDULED, &lines)?);
    let counts = (i64::try_from(scenario.expect_ended)?, i64::try_from(scenario.expect_started)?);
    let lines = explain(daily_reset::RECORD_COUNTS).bind(day).bind(counts.0).bind(counts.1).fetch_all(&mut *tx).await?;
    plans.push(write(dir, "daily-reset-4-record-counts.txt", &header, daily_reset::RECORD_COUNTS, &lines)?);
    tx.rollback().await?;

    Ok(plans)
}

/// `explain` of one of the worker's statements, with the parameters the caller binds: Postgres
/// plans it for those values, as it does the worker's own executions.
fn explain(sql: &'static str) -> QueryScalar<'static, Postgres, String, PgArguments> {
    // Safe: `sql` is one of the worker's constant statements.
    sqlx::query_scalar(AssertSqlSafe(format!("explain (analyze, buffers, wal) {sql}"))).persistent(false)
}

fn write(dir: &Path, file: &str, header: &str, sql: &str, lines: &[String]) -> Result<Plan, BenchError> {
    let path: PathBuf = dir.join(file);
    let text = format!("-- {header}\n{sql}\n\n{}\n", lines.join("\n"));
    fs::write(&path, text).map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    Ok(Plan {
        file: file.to_owned(),
        indexes: lines.iter().filter_map(|line| index_read(line)).collect(),
        on_deals: lines.iter().any(|line| line.contains(" on deals ")),
        seq_scan_on_deals: lines.iter().any(|line| line.contains("Seq Scan on deals ")),
    })
}

/// The index a plan line reads: `Bitmap Index Scan on i`, `Index [Only] Scan using i on t`.
fn index_read(line: &str) -> Option<String> {
    let name = if let Some((_, rest)) = line.split_once("Bitmap Index Scan on ") {
        rest
    } else if line.contains("Index Scan using ") || line.contains("Index Only Scan using ") {
        line.split_once(" using ")?.1
    } else {
        return None;
    };
    name.split_whitespace().next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_are_read_from_every_kind_of_index_scan() {
        let bitmap = "  ->  Bitmap Index Scan on deals_unexpired_by_expire_time  (cost=0.00..330.61 rows=9891 width=0)";
        assert_eq!(index_read(bitmap).as_deref(), Some("deals_unexpired_by_expire_time"));
        let plain = "->  Index Scan using deals_pkey on deals  (cost=0.42..8.44 rows=1 width=6)";
        assert_eq!(index_read(plain).as_deref(), Some("deals_pkey"));
        assert_eq!(index_read("->  Seq Scan on deals  (cost=0.00..34827.00 rows=10792 width=46)"), None);
    }
}
