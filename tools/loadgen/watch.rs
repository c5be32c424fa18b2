//! The `watch` scenario's watchers: WatchDeal streams of the hot deal over connections of their own,
//! each change timed from the `update_time` it carries to its arrival; and what it costs the
//! server, its resident memory read from `/proc/<pid>/status`.
//!
//! A message carries the deal as it is, so it also delivers every change made since the version
//! before it, which the watcher never got on its own (a watcher is sent the latest version when it
//! can take one). The oldest of those changes came after the previous version's `update_time`, so
//! each message is also timed from that stamp: an upper bound on the delay of every change it
//! brings, looser by the time between two changes.
//!
//! A reservation stamps the deal's `update_time` with the `statement_timestamp()` of the read that
//! follows its row lock, one statement and the COMMIT before the change is notified: the delay
//! measured from it is commit-to-delivery plus that lead. Where Postgres tracks commit timestamps
//! (`track_commit_timestamp = on`), [`stamp_leads`] measures the lead itself.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures_util::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use sqlx::PgPool;
use tokio::{sync::watch, task::JoinHandle};
use tonic::Code;
use uuid::Uuid;

use topkart::shared::runtime_thread::RuntimeThread;

use crate::{
    histogram::DelayHistogram,
    options::{Authorization, LoadError},
};

mod streams;

use streams::{Stream, WatchRequest, next_message, open_streams};

/// How long every watcher may take to get its first message.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The fields of a `Deal` a watcher reads; prost skips over the others without decoding them, so
/// the load generator spends little of the cores it shares with the server.
#[derive(Clone, PartialEq, prost::Message)]
struct DealVersion {
    #[prost(int32, tag = "6")]
    available_units: i32,
    #[prost(message, optional, tag = "11")]
    update_time: Option<prost_types::Timestamp>,
}

/// What every watcher adds to.
struct Shared {
    joined: AtomicUsize,
    /// Streams that ended before their first message (refused, or over the server's limit of
    /// streams per connection).
    refused: AtomicUsize,
    /// The measured window, once the load starts.
    window: OnceLock<(Instant, Instant)>,
    delays: DelayHistogram,
    /// From the previous version's update_time to each arrival.
    carried: DelayHistogram,
}

/// How one watcher's stream went.
#[derive(Debug, Default)]
struct Watcher {
    /// Changes received in the measured window.
    changes: u64,
    /// How the stream ended before it was dropped, if it did.
    ended: Option<Code>,
    /// The update_time of the version before, once there is one.
    previous: Option<Option<prost_types::Timestamp>>,
}

/// Watchers of one deal, running until [`Watchers::stop`]: raw HTTP/2 streams read on a thread of
/// their own, one task per connection. A tonic client per stream took 3.9 µs of CPU per message,
/// half a core at 10,000 watchers, on the cores the services share (BENCHMARKS.md).
pub struct Watchers {
    shared: Arc<Shared>,
    connections: Vec<JoinHandle<Vec<Watcher>>>,
    stop: watch::Sender<bool>,
    watchers: usize,
    /// Stops, with the tasks still on it, when the watchers are dropped.
    _thread: RuntimeThread,
}

/// What the watchers saw.
pub struct Watched {
    pub watchers: usize,
    pub connections: usize,
    pub changes: u64,
    pub without_change: usize,
    /// Streams that ended before the run did, by status.
    pub ended: BTreeMap<String, u64>,
    pub delays: DelayHistogram,
    /// From the previous version's update_time to each arrival: the delay of the oldest change a
    /// message brings, at most.
    pub carried: DelayHistogram,
}

impl Watchers {
    /// Opens `count` WatchDeal streams of `deal` over `connections` new connections to `url`
    /// (plain-text HTTP/2, `http://`), the streams spread over the connections in turn.
    pub async fn open(
        url: &str,
        connections: usize,
        count: usize,
        deal: &str,
        authorization: Option<&Authorization>,
    ) -> Result<Self, LoadError> {
        let request = WatchRequest::new(url, deal, authorization)?;
        let shared = Arc::new(Shared {
            joined: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            window: OnceLock::new(),
            delays: DelayHistogram::new(),
            carried: DelayHistogram::new(),
        });
        let thread = RuntimeThread::start("loadgen-watchers")?;
        let (stop, stopped) = watch::channel(false);
        let connections = connections.clamp(1, count.max(1));
        let tasks = (0..connections)
            .map(|index| {
                let streams = count / connections + usize::from(index < count % connections);
                let watch = watch_over(request.clone(), streams, Arc::clone(&shared), stopped.clone());
                thread.handle().spawn(watch)
            })
            .collect();
        Ok(Self { shared, connections: tasks, stop, watchers: count, _thread: thread })
    }

    /// Waits until every watcher has its first message; how long that took.
    pub async fn joined(&self) -> Result<Duration, LoadError> {
        let started = Instant::now();
        loop {
            let joined = self.shared.joined.load(Ordering::Relaxed);
            let refused = self.shared.refused.load(Ordering::Relaxed);
            if joined == self.watchers {
                return Ok(started.elapsed());
            }
            if joined + refused == self.watchers
                || started.elapsed() > JOIN_TIMEOUT
                || self.connections.iter().all(|task| task.is_finished())
            {
                return Err(format!(
                    "{joined} of {} watchers got their first message in {} s, {refused} ended before \
                     (is deal-service's --max-streams-per-connection below the watchers per connection?)",
                    self.watchers,
                    started.elapsed().as_secs()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Times the changes that arrive from `from` until `end`.
    pub fn measure(&self, from: Instant, end: Instant) {
        let _ = self.shared.window.set((from, end));
    }

    /// Closes every stream and says what they saw.
    pub async fn stop(self) -> Result<Watched, LoadError> {
        let _ = self.stop.send(true);
        let mut watched = Watched {
            watchers: self.watchers,
            connections: self.connections.len(),
            changes: 0,
            without_change: 0,
            ended: BTreeMap::new(),
            delays: DelayHistogram::new(),
            carried: DelayHistogram::new(),
        };
        for task in self.connections {
            for watcher in task.await? {
                watched.changes += watcher.changes;
                if watcher.changes == 0 {
                    watched.without_change += 1;
                }
                if let Some(code) = watcher.ended {
                    *watched.ended.entry(crate::report::status_name(code)).or_default() += 1;
                }
            }
        }
        let shared = Arc::try_unwrap(self.shared).map_err(|_| "a watcher outlived its task")?;
        watched.delays = shared.delays;
        watched.carried = shared.carried;
        Ok(watched)
    }
}

/// One connection's `streams` watchers, read as fast as their messages come, until `stop`. Only
/// the streams with something to read are polled.
async fn watch_over(
    request: WatchRequest,
    streams: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Vec<Watcher> {
    let mut watchers: Vec<Watcher> = (0..streams).map(|_| Watcher::default()).collect();
    let responses = match open_streams(&request, streams).await {
        Ok(responses) => responses,
        Err(err) => {
            eprintln!("watchers: cannot open WatchDeal streams on {}: {err}", request.authority());
            for watcher in &mut watchers {
                watcher.ended = Some(Code::Unavailable);
            }
            shared.refused.fetch_add(streams, Ordering::Relaxed);
            return watchers;
        }
    };
    let mut reading: FuturesUnordered<_> = responses
        .into_iter()
        .enumerate()
        .map(|(index, response)| next_message(index, Stream::Opening(response)))
        .collect();
    let stopped = stop.wait_for(|stopping| *stopping);
    tokio::pin!(stopped);
    loop {
        let (index, stream, message) = tokio::select! {
            biased;
            _ = &mut stopped => break,
            next = reading.next() => match next {
                Some(next) => next,
                None => break,
            },
        };
        let watcher = &mut watchers[index];
        let ended = match message {
            Ok(Some(message)) => match DealVersion::decode(message) {
                Ok(version) => Ok(version),
                Err(_) => Err(Code::Internal),
            },
            Ok(None) => Err(Code::Ok),
            Err(code) => Err(code),
        };
        let version = match ended {
            Ok(version) => version,
            Err(code) => {
                watcher.ended = Some(code);
                if watcher.previous.is_none() {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        };
        let (arrived, at) = (SystemTime::now(), Instant::now());
        match watcher.previous.replace(version.update_time) {
            None => {
                shared.joined.fetch_add(1, Ordering::Relaxed);
            }
            Some(previous_stamp) => {
                if let Some(&(from, end)) = shared.window.get()
                    && (from..end).contains(&at)
                {
                    watcher.changes += 1;
                    if let Some(delay) = since(version.update_time.as_ref(), arrived) {
                        shared.delays.record(delay);
                    }
                    if let Some(carried) = since(previous_stamp.as_ref(), arrived) {
                        shared.carried.record(carried);
                    }
                }
            }
        }
        reading.push(next_message(index, stream));
    }
    watchers
}

/// From `stamp` to `arrived` (zero if the stamp is later: the clocks are the same machine's).
fn since(stamp: Option<&prost_types::Timestamp>, arrived: SystemTime) -> Option<Duration> {
    let stamp = stamp?;
    let stamped = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(stamp.seconds).ok()?)
        + Duration::from_nanos(u64::try_from(stamp.nanos).ok()?);
    Some(arrived.duration_since(stamped).unwrap_or(Duration::ZERO))
}

/// The resident memory of process `pid` (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// The most resident memory of process `pid` seen in samples every 250 ms until `stop`.
pub async fn peak_rss_kib(pid: u32, mut stop: watch::Receiver<bool>) -> Option<u64> {
    let mut peak = rss_kib(pid);
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = ticks.tick() => peak = peak.max(rss_kib(pid)),
            _ = stop.wait_for(|stopping| *stopping) => return peak.max(rss_kib(pid)),
        }
    }
}

/// How far each version of deal `deal` was stamped ahead of its commit (its
/// `pg_xact_commit_timestamp` less its `update_time`), sampled every 20 ms until `stop`; `None`
/// when Postgres does not track commit timestamps.
pub async fn stamp_leads(
    pool: PgPool,
    deal: Uuid,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<DelayHistogram>, LoadError> {
    let tracked: String =
        sqlx::query_scalar("select current_setting('track_commit_timestamp')").fetch_one(&pool).await?;
    if tracked != "on" {
        return Ok(None);
    }
    let leads = DelayHistogram::new();
    let mut last = None;
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stopping| *stopping) => return Ok(Some(leads)),
        }
        let (stamp, committed): (chrono::DateTime<chrono::Utc>, Option<chrono::DateTime<chrono::Utc>>) =
            sqlx::query_as("select update_time, pg_xact_commit_timestamp(xmin) from deals where id = $1")
                .bind(deal)
                .fetch_one(&pool)
                .await?;
        if last != Some(stamp)
            && let Some(committed) = committed
        {
            leads.record((committed - stamp).to_std().unwrap_or(Duration::ZERO));
            last = Some(stamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_runs_from_the_stamp_to_the_arrival() {
        let stamp = prost_types::Timestamp { seconds: 1_000, nanos: 500_000_000 };
        let arrived = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_750);
        assert_eq!(since(Some(&stamp), arrived), Some(Duration::from_millis(250)));
        assert_eq!(since(Some(&stamp), SystemTime::UNIX_EPOCH), Some(Duration::ZERO));
        assert_eq!(since(None, arrived), None);
    }
}
