//! What the benchmark measured, printed for people and serialised for `--json`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::scenario::{Layout, Scenario};

/// Everything the benchmark measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub postgres: String,
    pub layout: Layout,
    /// Whether each run started right after a checkpoint.
    pub checkpoint_before_runs: bool,
    pub sweep: Timed,
    /// Three sweeps right after the last timed one, with nothing due.
    pub idle_sweeps_ms: Vec<f64>,
    pub daily_reset: Timed,
    pub plans_dir: String,
    pub plans: Vec<PlanSummary>,
    pub plans_use_indexes: bool,
}

/// The runs of one function against its target; it passes when the median is under the target.
#[derive(Debug, Serialize)]
pub struct Timed {
    pub function: &'static str,
    pub now: String,
    pub deals: i64,
    pub table: &'static str,
    pub runs_ms: Vec<f64>,
    pub median_ms: f64,
    pub max_ms: f64,
    pub target_ms: f64,
    pub median_to_target: f64,
    pub pass: bool,
}

/// The indexes one plan file shows.
#[derive(Debug, Serialize)]
pub struct PlanSummary {
    pub file: String,
    pub indexes: Vec<String>,
    pub seq_scan_on_deals: bool,
}

impl Timed {
    /// The runs of `function` on `scenario`, against `target`.
    pub fn new(function: &'static str, scenario: &Scenario, mut runs: Vec<Duration>, target: Duration) -> Self {
        let runs_ms = runs.iter().copied().map(millis).collect();
        runs.sort();
        let middle = runs.len() / 2;
        let median = if runs.len() % 2 == 1 { runs[middle] } else { (runs[middle - 1] + runs[middle]) / 2 };
        Self {
            function,
            now: rfc3339(scenario.now),
            deals: scenario.deals(),
            table: scenario.description,
            runs_ms,
            median_ms: millis(median),
            max_ms: runs.last().copied().map_or(0.0, millis),
            target_ms: millis(target),
            median_to_target: median.as_secs_f64() / target.as_secs_f64(),
            pass: median < target,
        }
    }
}

impl Report {
    /// Whether every target was met.
    pub fn pass(&self) -> bool {
        self.sweep.pass && self.daily_reset.pass && self.plans_use_indexes
    }

    /// Prints the report on stdout.
    pub fn print(&self) {
        println!("{}", self.postgres);
        let checkpoint = if self.checkpoint_before_runs { "yes" } else { "no" };
        println!("layout: {}; checkpoint before each run: {checkpoint}", self.layout.name());
        self.sweep.print();
        let idle: Vec<String> = self.idle_sweeps_ms.iter().map(|ms| format!("{ms:.1}")).collect();
        println!("  then {} sweeps with nothing due (ms): {}", idle.len(), idle.join("  "));
        self.daily_reset.print();
        let uses = verdict(self.plans_use_indexes);
        println!("plans in {}: every statement on deals uses an index: {uses}", self.plans_dir);
        for plan in &self.plans {
            let seq = if plan.seq_scan_on_deals { " + seq scan on deals" } else { "" };
            println!("  {:<40} {}{seq}", plan.file, plan.indexes.join(", "));
        }
    }
}

impl Timed {
    fn print(&self) {
        println!("{}(pool, {}) on {}", self.function, self.now, self.table);
        let runs: Vec<String> = self.runs_ms.iter().map(|ms| format!("{ms:.1}")).collect();
        println!("  runs (ms):  {}", runs.join("  "));
        println!(
            "  median {:.1} ms, max {:.1} ms; target < {:.0} ms; median/target {:.2}: {}",
            self.median_ms,
            self.max_ms,
            self.target_ms,
            self.median_to_target,
            verdict(self.pass)
        );
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// `duration` in milliseconds.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn rfc3339(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
