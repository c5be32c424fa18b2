//! worker-bench: times the expiry worker's `sweep_once` and `daily_reset` on a table of a million
//! deals, in a database of its own on the server of `DATABASE_URL`, and writes the plan of every
//! statement they run (benchmarks/worker.md). Prints PASS or FAIL per target and exits 1 on a FAIL,
//! 2 when it could not measure.
//!
//! Both functions change the deals they find, so every timed run starts from freshly seeded deals.

mod plans;
mod report;
mod scenario;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Parser;
use sqlx::{
    AssertSqlSafe, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use topkart::{
    shared::db,
    worker::{daily_reset, sweep::SweepReport, sweep_once},
};

use report::{PlanSummary, Report, Timed, millis};
use scenario::{Layout, Scenario};

type BenchError = Box<dyn std::error::Error>;

/// Issue 6's target for one sweep of 1,000,000 deals, 10,000 of them due.
const SWEEP_TARGET: Duration = Duration::from_millis(250);
/// Issue 6's target for the daily reset of 100,000 live deals.
const DAILY_RESET_TARGET: Duration = Duration::from_secs(5);

/// Benchmarks the expiry worker on a large `deals` table.
#[derive(Debug, Parser)]
#[command(name = "worker-bench", version)]
struct Args {
    /// Postgres connection URL; the benchmark creates (and drops) a database of its own on that
    /// server. Never logged.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,

    /// Timed runs of each function, each on freshly seeded deals.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,

    /// Where the plans of the statements are written, one file each.
    #[arg(long, default_value = "benchmarks/plans")]
    plans_dir: PathBuf,

    /// Also writes the figures to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Keeps the benchmark's database instead of dropping it.
    #[arg(long)]
    keep: bool,

    /// Where the deals of each kind are in the heap.
    #[arg(long, value_enum, default_value_t = Layout::Scattered)]
    layout: Layout,

    /// Skips the checkpoint before each run. By default every run starts right after one, so that
    /// each page it changes costs a full-page image in the WAL, as it would the first time after any
    /// checkpoint: the worst case, and the same for every run. Without it, the pages the seed wrote
    /// usually need none: the best case.
    #[arg(long)]
    no_checkpoint: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(report) => {
            report.print();
            if report.pass() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(err) => {
            eprintln!("worker-bench: {err}");
            ExitCode::from(2)
        }
    }
}

/// Creates the benchmark's database, measures, and drops the database unless `--keep`.
async fn run(args: &Args) -> Result<Report, BenchError> {
    let server_options: PgConnectOptions =
        args.database_url.parse().map_err(|_| "DATABASE_URL must be a postgres:// URL")?;
    let server = PgPoolOptions::new().max_connections(1).connect_with(server_options.clone()).await?;
    let name = format!("topkart_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    // Safe: the name is ours, letters, digits and underscores.
    sqlx::raw_sql(AssertSqlSafe(format!("create database {name}"))).execute(&server).await?;
    eprintln!("worker-bench: created database {name}");
    let measured = measure(args, server_options.database(&name)).await;
    if args.keep {
        eprintln!("worker-bench: kept database {name}");
    } else {
        sqlx::raw_sql(AssertSqlSafe(format!("drop database {name} with (force)"))).execute(&server).await?;
    }
    let report = measured?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    }
    Ok(report)
}

async fn measure(args: &Args, database: PgConnectOptions) -> Result<Report, BenchError> {
    // One connection, as the worker's ticks have in effect: every statement runs on it again and
    // again, so a plan Postgres switches to after some runs is measured too.
    let pool = db::connect_and_migrate_with(database, 1).await?;
    let postgres: String = sqlx::query_scalar("select version()").fetch_one(&pool).await?;
    let mut bench = Bench {
        pool: &pool,
        runs: args.runs,
        layout: args.layout,
        checkpoint: !args.no_checkpoint,
        checkpointed: true,
    };

    let scenario = Scenario::sweep();
    let runs = bench
        .time_runs("sweep_once", &scenario, async || {
            let report = sweep_once(&pool, scenario.now).await?;
            let expected = SweepReport { expired: scenario.expect_ended, started: scenario.expect_started };
            check("sweep_once", report == expected, &report)
        })
        .await?;
    let sweep = Timed::new("sweep_once", &scenario, runs, SWEEP_TARGET);
    // The last run left nothing due: what the sweep costs on the ticks that follow, until vacuum
    // removes the old versions of the deals it expired.
    let mut idle_sweeps_ms = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let report = sweep_once(&pool, scenario.now).await?;
        idle_sweeps_ms.push(millis(started.elapsed()));
        check("sweep_once with nothing due", report == SweepReport::default(), &report)?;
    }

    let scenario = Scenario::daily_reset();
    let runs = bench
        .time_runs("daily_reset", &scenario, async || {
            let report = daily_reset(&pool, scenario.now).await?;
            let counts = report.map(|report| (report.ended, report.started));
            check("daily_reset", counts == Some((scenario.expect_ended, scenario.expect_started)), &report)
        })
        .await?;
    let daily_reset = Timed::new("daily_reset", &scenario, runs, DAILY_RESET_TARGET);

    eprintln!("worker-bench: writing plans to {}", args.plans_dir.display());
    let plans = plans::write_all(&mut bench, &args.plans_dir).await?;
    pool.close().await;
    Ok(Report {
        postgres,
        layout: args.layout,
        checkpoint_before_runs: bench.checkpoint && bench.checkpointed,
        sweep,
        idle_sweeps_ms,
        daily_reset,
        plans_dir: args.plans_dir.display().to_string(),
        plans_use_indexes: plans.iter().all(plans::Plan::uses_an_index),
        plans: plans
            .into_iter()
            .map(|plan| PlanSummary {
                file: plan.file,
                indexes: plan.indexes,
                seq_scan_on_deals: plan.seq_scan_on_deals,
            })
            .collect(),
    })
}

/// How the runs are prepared.
struct Bench<'a> {
    pool: &'a PgPool,
    runs: u32,
    layout: Layout,
    /// Whether to checkpoint before each run.
    checkpoint: bool,
    /// Whether every checkpoint asked for was taken (the role may lack the right).
    checkpointed: bool,
}

impl Bench<'_> {
    /// The conditions of the runs, in words.
    fn conditions(&self) -> String {
        let layout = self.layout.name();
        let checkpoint = if self.checkpoint { "a checkpoint before each run" } else { "no checkpoint before runs" };
        format!("layout {layout}, {checkpoint}")
    }

    /// Seeds `scenario`, then checkpoints unless told not to.
    async fn prepare(&mut self, scenario: &Scenario) -> Result<(), sqlx::Error> {
        scenario.seed(self.pool, self.layout).await?;
        if self.checkpoint {
            self.checkpointed &= sqlx::raw_sql("checkpoint").execute(self.pool).await.is_ok();
        }
        Ok(())
    }

    /// Seeds `scenario` and times `once` on it, `runs` times.
    async fn time_runs(
        &mut self,
        function: &str,
        scenario: &Scenario,
        once: impl AsyncFn() -> Result<(), BenchError>,
    ) -> Result<Vec<Duration>, BenchError> {
        let mut times = Vec::new();
        for run in 1..=self.runs {
            self.prepare(scenario).await?;
            let started = Instant::now();
            once().await?;
            let took = started.elapsed();
            eprintln!("worker-bench: {function} run {run}: {:.1} ms", millis(took));
            times.push(took);
        }
        Ok(times)
    }
}

/// A run that did not do what the scenario expects measured something else: an error.
fn check(function: &str, as_expected: bool, report: &impl std::fmt::Debug) -> Result<(), BenchError> {
    if as_expected {
        Ok(())
    } else {
        Err(format!("{function} did not do what the scenario expects: {report:?}").into())
    }
}
