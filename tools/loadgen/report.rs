//! What a load-generator run measured: every call's latency and gRPC status, summarised as
//! throughput, percentiles and counts by status, printed for people and written as JSON for scripts.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use tonic::Code;

/// The calls one client made in the measured window.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Calls the server took on (everything but RESOURCE_EXHAUSTED).
    latencies_us: Vec<u32>,
    /// Calls shed (RESOURCE_EXHAUSTED).
    shed_us: Vec<u32>,
    statuses: BTreeMap<String, u64>,
    /// Every call's latency, by status.
    by_status_us: BTreeMap<String, Vec<u32>>,
}

impl Recorder {
    /// Notes one call that took `elapsed` and ended with `code`.
    pub fn record(&mut self, elapsed: Duration, code: Code) {
        let us = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        if code == Code::ResourceExhausted {
            self.shed_us.push(us)
        } else {
            self.latencies_us.push(us)
        }
        *self.statuses.entry(status_name(code)).or_default() += 1;
        self.by_status_us.entry(status_name(code)).or_default().push(us);
    }

    /// Adds another client's calls to these.
    pub fn merge(&mut self, other: Recorder) {
        self.latencies_us.extend(other.latencies_us);
        self.shed_us.extend(other.shed_us);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        for (status, latencies) in other.by_status_us {
            self.by_status_us.entry(status).or_default().extend(latencies);
        }
    }

    /// How many calls were recorded.
    pub fn calls(&self) -> u64 {
        (self.latencies_us.len() + self.shed_us.len()) as u64
    }

    /// How many calls ended with `code`.
    pub fn count(&self, code: Code) -> u64 {
        self.statuses.get(&status_name(code)).copied().unwrap_or(0)
    }

    /// The summary of these calls over a measured window of `window`.
    pub fn summary(mut self, window: Duration) -> Summary {
        self.latencies_us.sort_unstable();
        self.shed_us.sort_unstable();
        let requests = self.calls();
        let seconds = window.as_secs_f64().max(f64::MIN_POSITIVE);
        let ok = self.count(Code::Ok);
        Summary {
            requests,
            ok,
            window_s: seconds,
            throughput_per_s: requests as f64 / seconds,
            ok_per_s: ok as f64 / seconds,
            latency_ms: Latency::of(&self.latencies_us),
            shed: self.shed_us.len() as u64,
            shed_latency_ms: Latency::of(&self.shed_us),
            statuses: self.statuses,
            latency_by_status_ms: self
                .by_status_us
                .into_iter()
                .map(|(status, mut latencies)| {
                    latencies.sort_unstable();
                    (status, Latency::of(&latencies))
                })
                .collect(),
        }
    }
}

/// The gRPC status's canonical name, as grpcurl and the other languages print it.
pub(crate) fn status_name(code: Code) -> String {
    let name = format!("{code:?}");
    // Code's Debug is CamelCase ("FailedPrecondition"); the canonical name is upper snake case.
    let mut canonical = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            canonical.push('_');
        }
        canonical.push(c.to_ascii_uppercase());
    }
    canonical
}

/// Throughput, latency and statuses of the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub ok: u64,
    pub window_s: f64,
    pub throughput_per_s: f64,
    pub ok_per_s: f64,
    /// Latency of the calls that were not shed.
    pub latency_ms: Latency,
    /// Calls shed (RESOURCE_EXHAUSTED), and their latency.
    pub shed: u64,
    pub shed_latency_ms: Latency,
    pub statuses: BTreeMap<String, u64>,
    pub latency_by_status_ms: BTreeMap<String, Latency>,
}

/// Latency percentiles in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(sorted_us: &[u32]) -> Self {
        if sorted_us.is_empty() {
            return Self::default();
        }
        let at = |fraction: f64| {
            let rank = ((fraction * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
            f64::from(sorted_us[rank - 1]) / 1000.0
        };
        let total: u64 = sorted_us.iter().map(|&us| u64::from(us)).sum();
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
            mean: total as f64 / sorted_us.len() as f64 / 1000.0,
        }
    }
}

/// A whole run: what was asked, what was measured, and what was checked afterwards.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub concurrency: usize,
    pub connections: usize,
    pub warmup_s: f64,
    pub summary: Summary,
    /// The `watch` scenario's watchers; its summary above is of the orders made while they watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchReport>,
    /// The checks run after the load, each with whether it passed.
    pub checks: Vec<Check>,
}

/// What the watchers of the `watch` scenario saw and cost.
#[derive(Debug, Clone, Serialize)]
pub struct WatchReport {
    pub watchers: usize,
    pub connections: usize,
    /// From opening the streams until every one had its first message.
    pub joined_s: f64,
    /// Changes received in the measured window, by all watchers.
    pub changes: u64,
    pub changes_per_s: f64,
    pub watchers_without_change: usize,
    /// Streams that ended during the run, by status.
    pub ended: BTreeMap<String, u64>,
    /// From each change's update_time to its arrival.
    pub delay_ms: Quantiles,
    /// From the previous version's update_time to each arrival: at most the delay of the oldest
    /// change a message brings (watch.rs).
    pub carried_delay_ms: Quantiles,
    /// How far update_time is stamped ahead of the commit, where Postgres tracks commit timestamps.
    pub stamp_lead_ms: Option<Quantiles>,
    /// The same orders before the watchers joined.
    pub without_watchers: Summary,
    pub alone_ordered_units: i64,
    /// OK orders/s with the watchers over OK orders/s without.
    pub orders_ratio: f64,
    /// deal-service's resident memory, when its pid was given.
    pub rss_kib: Option<Rss>,
}

/// Quantiles in milliseconds, each the upper bound of its histogram bucket.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// deal-service's resident memory (VmRSS) before the watchers, once they joined, and at its most
/// while the orders ran with them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rss {
    pub before: u64,
    pub joined: u64,
    pub peak_under_load: u64,
    /// (peak under load − before) per 1,000 watchers, in MiB.
    pub mib_per_1000_watchers: f64,
}

impl Rss {
    pub fn new(before: u64, joined: u64, peak_under_load: u64, watchers: usize) -> Self {
        let added_mib = peak_under_load.saturating_sub(before) as f64 / 1024.0;
        let thousands = (watchers as f64 / 1000.0).max(f64::MIN_POSITIVE);
        Self { before, joined, peak_under_load, mib_per_1000_watchers: added_mib / thousands }
    }
}

/// One check after the run.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.passed)
    }

    /// The report as people read it.
    pub fn to_text(&self) -> String {
        let s = &self.summary;
        let l = &s.latency_ms;
        let mut text = format!(
            "scenario {}: {} clients over {} connections, {:.1} s measured after {:.1} s warm-up\n\
             throughput  {:.0} calls/s ({:.0} OK/s), {} calls\n\
             latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}\n\
             statuses   ",
            self.scenario,
            self.concurrency,
            self.connections,
            s.window_s,
            self.warmup_s,
            s.throughput_per_s,
            s.ok_per_s,
            s.requests,
            l.p50,
            l.p90,
            l.p99,
            l.max,
            l.mean,
        );
        for (status, count) in &s.statuses {
            text.push_str(&format!(" {status} {count}"));
        }
        text.push('\n');
        if s.shed > 0 {
            let shed = &s.shed_latency_ms;
            text.push_str(&format!(
                "shed ms     p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  ({} calls shed; latency above is of the rest)\n",
                shed.p50, shed.p90, shed.p99, shed.max, s.shed
            ));
        }
        if let Some(watch) = &self.watch {
            text.push_str(&watch.to_text());
        }
        for check in &self.checks {
            let verdict = if check.passed { "ok  " } else { "FAIL" };
            text.push_str(&format!("check {verdict} {}: {}\n", check.name, check.detail));
        }
        text
    }
}

impl WatchReport {
    fn to_text(&self) -> String {
        let ms = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}"));
        let d = &self.delay_ms;
        let mut text = format!(
            "watchers    {} over {} connections, joined in {:.1} s; {} changes received ({:.0}/s)\n\
             delay ms    p50 {}  p90 {}  p99 {}  max {}  (update_time to arrival, {} changes)\n\
             carried ms  p50 {}  p90 {}  p99 {}  max {}  (the previous version's update_time to arrival: \
             at most the delay of every change a message brings)\n",
            self.watchers,
            self.connections,
            self.joined_s,
            self.changes,
            self.changes_per_s,
            ms(d.p50),
            ms(d.p90),
            ms(d.p99),
            ms(d.max),
            d.count,
            ms(self.carried_delay_ms.p50),
            ms(self.carried_delay_ms.p90),
            ms(self.carried_delay_ms.p99),
            ms(self.carried_delay_ms.max),
        );
        if let Some(lead) = &self.stamp_lead_ms {
            text.push_str(&format!(
                "stamp lead  p50 {}  p99 {}  max {}  (commit − update_time, {} versions sampled)\n",
                ms(lead.p50),
                ms(lead.p99),
                ms(lead.max),
                lead.count
            ));
        }
        let alone = &self.without_watchers;
        text.push_str(&format!(
            "orders      {:.0} OK/s with the watchers, {:.0} OK/s without ({:.2}x); without: p99 {:.2} ms\n",
            alone.ok_per_s * self.orders_ratio,
            alone.ok_per_s,
            self.orders_ratio,
            alone.latency_ms.p99,
        ));
        if let Some(rss) = &self.rss_kib {
            let mib = |kib: u64| kib as f64 / 1024.0;
            text.push_str(&format!(
                "rss MiB     deal-service {:.1} before, {:.1} joined, {:.1} at most under load: {:.2} MiB per 1,000 watchers\n",
                mib(rss.before),
                mib(rss.joined),
                mib(rss.peak_under_load),
                rss.mib_per_1000_watchers
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_over_every_call() {
        let mut recorder = Recorder::default();
        for ms in 1..=100 {
            recorder.record(Duration::from_millis(ms), Code::Ok);
        }
        recorder.record(Duration::from_millis(500), Code::FailedPrecondition);
        let summary = recorder.summary(Duration::from_secs(2));
        assert_eq!(summary.requests, 101);
        assert_eq!(summary.ok, 100);
        assert_eq!(summary.statuses.get("FAILED_PRECONDITION"), Some(&1));
        assert_eq!(summary.latency_ms.p50, 51.0);
        assert_eq!(summary.latency_ms.p99, 100.0);
        assert_eq!(summary.latency_ms.max, 500.0);
        assert_eq!(summary.throughput_per_s, 50.5);
    }

    #[test]
    fn status_names_are_the_canonical_ones() {
        assert_eq!(status_name(Code::Ok), "OK");
        assert_eq!(status_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(status_name(Code::Unavailable), "UNAVAILABLE");
    }
}
