//! What the clients of the `failover` scenario saw, second by second: replies counted by status in
//! 100 ms buckets of wall-clock time, and, for each event the test caused (a leader killed, a
//! switchover, an instance killed), how long clients saw errors after it and which codes.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tonic::Code;

use crate::report::status_name;

/// The width of a bucket.
pub const BUCKET_MS: u64 = 100;

/// Milliseconds since the Unix epoch, the clock the test's events are written with.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// Replies by bucket (its start, in Unix milliseconds) and status.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    buckets: BTreeMap<u64, BTreeMap<String, u64>>,
}

impl Timeline {
    /// Notes a reply with `code` that arrived at `at_ms`.
    pub fn record(&mut self, at_ms: u64, code: Code) {
        let bucket = at_ms - at_ms % BUCKET_MS;
        *self.buckets.entry(bucket).or_default().entry(status_name(code)).or_default() += 1;
    }

    pub fn merge(&mut self, other: Timeline) {
        for (bucket, statuses) in other.buckets {
            let mine = self.buckets.entry(bucket).or_default();
            for (status, count) in statuses {
                *mine.entry(status).or_default() += count;
            }
        }
    }

    /// Every reply's status, counted.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        let mut totals = BTreeMap::new();
        for statuses in self.buckets.values() {
            for (status, count) in statuses {
                *totals.entry(status.clone()).or_default() += count;
            }
        }
        totals
    }

    /// Replies per second, by status, from `from_ms` on (for the JSON: one entry per second).
    pub fn per_second(&self, from_ms: u64) -> Vec<Second> {
        let mut seconds: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
        for (bucket, statuses) in self.buckets.range(from_ms..) {
            let second = seconds.entry((bucket - from_ms) / 1000).or_default();
            for (status, count) in statuses {
                *second.entry(status.clone()).or_default() += count;
            }
        }
        seconds.into_iter().map(|(second, statuses)| Second { second, statuses }).collect()
    }

    /// What clients saw from each event until the next one (the last until `end_ms`).
    pub fn windows(&self, events: &[Event], end_ms: u64) -> Vec<EventWindow> {
        let mut windows = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            // The bucket an event falls in is the event's, not the one before's.
            let until = events.get(index + 1).map_or(end_ms, |next| next.at_ms - next.at_ms % BUCKET_MS);
            windows.push(self.window(event, until));
        }
        windows
    }

    fn window(&self, event: &Event, until_ms: u64) -> EventWindow {
        let from = event.at_ms - event.at_ms % BUCKET_MS;
        let mut errors = BTreeMap::new();
        let (mut first_error, mut last_error) = (None, None);
        let (mut last_ok, mut longest_without_ok) = (from, 0);
        for (&bucket, statuses) in self.buckets.range(from..until_ms) {
            let oks = statuses.get("OK").copied().unwrap_or(0);
            let failed: u64 = statuses.iter().filter(|(status, _)| *status != "OK").map(|(_, count)| count).sum();
            if failed > 0 {
                first_error.get_or_insert(bucket);
                last_error = Some(bucket);
                for (status, count) in statuses.iter().filter(|(status, _)| *status != "OK") {
                    *errors.entry(status.clone()).or_default() += count;
                }
            }
            if oks > 0 {
                longest_without_ok = longest_without_ok.max(bucket.saturating_sub(last_ok + BUCKET_MS));
                last_ok = bucket;
            }
        }
        longest_without_ok = longest_without_ok.max(until_ms.saturating_sub(last_ok + BUCKET_MS));
        let seconds = |ms: u64| ms as f64 / 1000.0;
        EventWindow {
            event: event.name.clone(),
            at_ms: event.at_ms,
            errors,
            first_error_after_s: first_error.map(|at| seconds(at.saturating_sub(event.at_ms))),
            error_window_s: match (first_error, last_error) {
                (Some(first), Some(last)) => seconds(last + BUCKET_MS - first),
                _ => 0.0,
            },
            without_ok_s: seconds(longest_without_ok),
        }
    }
}

/// One second's replies, counted from the start of the load.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub second: u64,
    pub statuses: BTreeMap<String, u64>,
}

/// Something the test did, at a wall-clock instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at_ms: u64,
    pub name: String,
}

/// Reads the events file: one `UNIX_MS NAME` per line (`date +%s%3N`), in any order.
pub fn parse_events(text: &str) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let (at, name) = line.split_once(' ').ok_or_else(|| format!("an event line is not `UNIX_MS NAME`: {line}"))?;
        let at_ms = at.parse().map_err(|_| format!("an event's time is not Unix milliseconds: {line}"))?;
        events.push(Event { at_ms, name: name.trim().to_owned() });
    }
    events.sort_by_key(|event| event.at_ms);
    Ok(events)
}

/// What clients saw from one event until the next.
#[derive(Debug, Clone, Serialize)]
pub struct EventWindow {
    pub event: String,
    pub at_ms: u64,
    /// Replies other than OK, by status.
    pub errors: BTreeMap<String, u64>,
    /// From the event to the first error (none: no client saw one).
    pub first_error_after_s: Option<f64>,
    /// From the first error to the end of the last (at 100 ms resolution).
    pub error_window_s: f64,
    /// The longest stretch with no order placed.
    pub without_ok_s: f64,
}

/// How long until `deadline`, for waits bounded by it.
pub fn left(deadline: SystemTime) -> Duration {
    deadline.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at_ms: u64, name: &str) -> Event {
        Event { at_ms, name: name.to_owned() }
    }

    #[test]
    fn an_event_window_spans_the_errors_after_it_until_the_next_event() {
        let mut timeline = Timeline::default();
        for ms in (0..10_000).step_by(50) {
            let failing = (2_000..4_500).contains(&ms) || (7_000..7_200).contains(&ms);
            timeline.record(ms, if failing { Code::Unavailable } else { Code::Ok });
        }
        timeline.record(3_000, Code::DeadlineExceeded);
        timeline.record(5_990, Code::Unavailable);
        let windows = timeline.windows(&[event(1_950, "leader-kill"), event(5_950, "switchover")], 10_000);
        assert_eq!(windows[0].error_window_s, 2.5);
        assert_eq!(windows[0].first_error_after_s, Some(0.05));
        assert_eq!(windows[0].without_ok_s, 2.5);
        assert_eq!(windows[0].errors.get("UNAVAILABLE"), Some(&50));
        assert_eq!(windows[0].errors.get("DEADLINE_EXCEEDED"), Some(&1));
        // The error at 5,990 ms shares the switchover's bucket: it is the switchover's.
        assert_eq!(windows[1].error_window_s, 1.3);
        assert_eq!(windows[1].errors.get("UNAVAILABLE"), Some(&5));
    }

    #[test]
    fn a_window_without_errors_is_empty() {
        let mut timeline = Timeline::default();
        timeline.record(1_000, Code::Ok);
        let windows = timeline.windows(&[event(500, "instance-kill")], 2_000);
        assert_eq!(windows[0].error_window_s, 0.0);
        assert_eq!(windows[0].first_error_after_s, None);
        assert!(windows[0].errors.is_empty());
    }

    #[test]
    fn events_are_read_in_time_order() {
        let events = parse_events("200 switchover\n\n100 leader-kill\n").unwrap();
        assert_eq!(events, vec![event(100, "leader-kill"), event(200, "switchover")]);
        assert!(parse_events("soon leader-kill").is_err());
    }

    #[test]
    fn replies_per_second_count_from_the_start() {
        let mut timeline = Timeline::default();
        timeline.record(10_050, Code::Ok);
        timeline.record(11_900, Code::Unavailable);
        timeline.record(11_950, Code::Unavailable);
        let seconds = timeline.per_second(10_000);
        assert_eq!(seconds.len(), 2);
        assert_eq!(seconds[1].second, 1);
        assert_eq!(seconds[1].statuses.get("UNAVAILABLE"), Some(&2));
    }
}
