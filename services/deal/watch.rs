//! WatchDeal's fan-out: one `LISTEN deal_changed` connection per process (migration
//! `…_deal_changes_notify.sql` notifies every change of a deal at its commit, whichever instance or
//! worker made it), one read of a changed deal per burst of notifications however many watch it,
//! and a `tokio::sync::watch` channel per watched deal that keeps only the latest version: a
//! watcher that reads slowly skips versions instead of piling them up.
//!
//! Each stream reads its channel only when the connection can take a message (HTTP/2 flow control
//! decides when its body is polled), so it holds no queue and no task of its own: what it sends is
//! the latest version at that moment, encoded once for all the streams that send it (each version
//! holds its bytes for each audience, made by the first stream to send them; `shared::encoded`).
//! A deal watched already is joined without reading the database: its channel holds what the
//! listener read last. A stream holds a permit of `--max-watchers` for its whole life. On a lost listener connection (notifications sent
//! meanwhile are lost) every watched deal is read again. Streams end with OK after the deal's
//! EXPIRED message, and with UNAVAILABLE when the server shuts down.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::{Code, Status, codegen::tokio_stream::Stream};
use uuid::Uuid;

use crate::{
    proto::deal as pb,
    shared::{
        encoded::{self, Reply},
        metrics, status,
    },
};

use super::{
    DOMAIN,
    convert::Audience,
    domain::{Deal, DealState, daily_reset_after},
    error::DealError,
    store,
};

/// The channel every change of a deal is notified on, with the deal's id.
const CHANNEL: &str = "deal_changed";
/// How long the listener waits before reconnecting after an error.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// The least time between two reads of changed deals. Each read wakes every watcher of the deals it
/// read, so this bounds the fan-out's work whatever the rate of commits (a hot deal commits every
/// few milliseconds); changes notified meanwhile wait and are read together (BENCHMARKS.md, watch).
const REFRESH_INTERVAL: Duration = Duration::from_millis(50);
/// The retry delay suggested to a watcher refused for too many watchers.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The watched deals of this process and the permits of its streams.
pub struct Watchers {
    pool: PgPool,
    channels: Mutex<HashMap<Uuid, watch::Sender<Arc<Version>>>>,
    /// Held from a read of deals until what it read is sent, so a channel never goes back from a
    /// newer read to an older one.
    reading: tokio::sync::Mutex<()>,
    permits: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl Watchers {
    /// Starts listening for deal changes on `pool`'s database; at most `max_watchers` streams; every
    /// stream ends when `shutdown` turns true.
    pub fn start(pool: PgPool, max_watchers: usize, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        let watchers = Arc::new(Self {
            pool,
            channels: Mutex::new(HashMap::new()),
            reading: tokio::sync::Mutex::new(()),
            permits: Arc::new(Semaphore::new(max_watchers)),
            shutdown,
        });
        tokio::spawn(listen(Arc::downgrade(&watchers)));
        watchers
    }

    /// A stream of deal `id`: the deal now, then every change. `DealNotFound` for no such deal.
    pub async fn watch(&self, id: Uuid, audience: Audience) -> Result<DealStream, DealError> {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return Err(DealError::TooManyWatchers);
        };
        let updates = match self.join(id) {
            Some(updates) => updates,
            None => self.read_and_join(id).await?,
        };
        metrics::deal_watchers(1.0);
        let feed = Feed {
            updates,
            audience,
            shutdown: self.shutdown.clone(),
            next: Next::Now,
            clock: Box::pin(tokio::time::sleep(Duration::ZERO)),
            clock_set_for: None,
        };
        Ok(DealStream { next: Some(Box::pin(feed.next())), _permit: permit })
    }

    /// The channel of deal `id` if it is watched already: the listener keeps its version current
    /// (a change not read yet will be), so joining it needs no read. Under the channels' lock, so
    /// a refresh counts this watcher from then on.
    fn join(&self, id: Uuid) -> Option<watch::Receiver<Arc<Version>>> {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels.get(&id).filter(|sender| sender.receiver_count() > 0).map(watch::Sender::subscribe)
    }

    /// The first watcher of deal `id` (or the first after all left, when its channel went stale):
    /// reads it and makes its channel.
    async fn read_and_join(&self, id: Uuid) -> Result<watch::Receiver<Arc<Version>>, DealError> {
        let updates = {
            // Read under the lock the listener reads under: a change committed after this read is
            // notified and read after it, one committed before is in it.
            let _reading = self.reading.lock().await;
            let deal = store::get_deal(&self.pool, id).await?.ok_or(DealError::DealNotFound)?;
            let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
            channels.retain(|_, sender| sender.receiver_count() > 0);
            match channels.get(&id) {
                Some(sender) => {
                    // Only a change is sent on: watchers joining add no messages for the others.
                    sender.send_if_modified(|current| {
                        let changed = current.deal != deal;
                        if changed {
                            *current = Version::new(deal);
                        }
                        changed
                    });
                    sender.subscribe()
                }
                None => {
                    let (sender, receiver) = watch::channel(Version::new(deal));
                    channels.insert(id, sender);
                    receiver
                }
            }
        };
        Ok(updates)
    }

    /// The deals watched now.
    fn watched(&self) -> Vec<Uuid> {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels.iter().filter(|(_, sender)| sender.receiver_count() > 0).map(|(id, _)| *id).collect()
    }

    /// [`Self::refresh`], again every second until the database answers: a change whose read failed
    /// would otherwise wait for the deal's next change, which may never come (its last unit sold).
    /// Notifications arriving meanwhile wait in the listener.
    async fn refresh_until_read(&self, ids: Vec<Uuid>) {
        while let Err(err) = self.refresh(ids.clone()).await {
            tracing::warn!(error = %err, deals = ids.len(), "cannot read changed deals; retrying");
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
    }

    /// Reads the watched deals among `ids` once and sends each to its watchers.
    async fn refresh(&self, ids: Vec<Uuid>) -> Result<(), sqlx::Error> {
        let _reading = self.reading.lock().await;
        let watched: Vec<Uuid> = {
            let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
            ids.into_iter().filter(|id| channels.get(id).is_some_and(|sender| sender.receiver_count() > 0)).collect()
        };
        if watched.is_empty() {
            return Ok(());
        }
        let deals = store::get_deals(&self.pool, &watched).await?;
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        for deal in deals {
            if let Some(sender) = channels.get(&deal.id) {
                sender.send_replace(Version::new(deal));
            }
        }
        Ok(())
    }
}

/// The listener loop, for as long as the watchers exist: every burst of notifications becomes one
/// read of the changed deals; a lost connection, one read of all watched deals.
async fn listen(watchers: std::sync::Weak<Watchers>) {
    loop {
        let Some(pool) = watchers.upgrade().map(|watchers| watchers.pool.clone()) else { return };
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for deal changes; retrying");
                tokio::time::sleep(RECONNECT_AFTER).await;
                continue;
            }
        };
        drop(pool);
        if let Err(err) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %err, "cannot listen for deal changes; retrying");
            tokio::time::sleep(RECONNECT_AFTER).await;
            continue;
        }
        // Whatever changed before this connection listened is read again.
        let Some(live) = watchers.upgrade() else { return };
        let all = live.watched();
        live.refresh_until_read(all).await;
        drop(live);
        let mut last_read = tokio::time::Instant::now();
        loop {
            let first = match listener.try_recv().await {
                Ok(Some(notification)) => notification,
                // The connection was lost (and is reconnected on the next call): changes notified
                // meanwhile are lost, so every watched deal is read again.
                Ok(None) => {
                    let Some(live) = watchers.upgrade() else { return };
                    let all = live.watched();
                    live.refresh_until_read(all).await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "lost the deal-change listener; reconnecting");
                    tokio::time::sleep(RECONNECT_AFTER).await;
                    break;
                }
            };
            tokio::time::sleep_until(last_read + REFRESH_INTERVAL).await;
            let mut changed = vec![first];
            while let Some(notification) = listener.next_buffered() {
                changed.push(notification);
            }
            let mut ids: Vec<Uuid> = changed.iter().filter_map(|n| n.payload().parse().ok()).collect();
            ids.sort_unstable();
            ids.dedup();
            let Some(live) = watchers.upgrade() else { return };
            last_read = tokio::time::Instant::now();
            live.refresh_until_read(ids).await;
        }
    }
}

/// A version of a watched deal as the listener read it, and its encodings, made by the first
/// stream that sends each and copied by the others: one per audience and per state the clock may
/// show it in. The stored state lags the clock by up to a sweep (a sale's first seconds are read as
/// `scheduled` until the worker starts it), so the shown state is part of the key.
struct Version {
    deal: Deal,
    encoded: [OnceLock<Bytes>; 6],
}

impl Version {
    fn new(deal: Deal) -> Arc<Self> {
        Arc::new(Self { deal, encoded: Default::default() })
    }

    /// The message `audience` is sent of this version, the deal being in `state` by the clock.
    fn message(&self, audience: Audience, state: DealState) -> Bytes {
        let audience_index = match audience {
            Audience::Admins => 0,
            Audience::Customers => 1,
        };
        let state_index = match state {
            DealState::Scheduled => 0,
            DealState::Active => 1,
            DealState::Expired => 2,
        };
        let slot = &self.encoded[audience_index * 3 + state_index];
        slot.get_or_init(|| encoded::encode(&audience.deal(&Deal { state, ..self.deal.clone() }))).clone()
    }
}

/// One watcher's source: its deal's channel, and what it sends next. The deal's state is advanced
/// by the clock too: a scheduled deal goes ACTIVE at its start and an active one EXPIRED at its end
/// without waiting for the sweep.
struct Feed {
    updates: watch::Receiver<Arc<Version>>,
    audience: Audience,
    shutdown: watch::Receiver<bool>,
    next: Next,
    /// Fires at the deal's next transition by the clock. Kept for the stream's life and set again
    /// only when the transition moves: a timer made per message costs the timer wheel's lock.
    clock: Pin<Box<tokio::time::Sleep>>,
    clock_set_for: Option<DateTime<Utc>>,
}

/// What a feed does next.
#[derive(Clone, Copy)]
enum Next {
    /// Send the latest version now (the first message).
    Now,
    /// Wait for a change, the clock's next transition, or the shutdown.
    Wait { transition: DateTime<Utc> },
    /// Nothing: the stream is over.
    End,
}

/// The next message and the feed after it, or `None` at the end.
type NextMessage = Pin<Box<dyn Future<Output = Option<(Result<Reply<pb::Deal>, Status>, Feed)>> + Send>>;

impl Feed {
    async fn next(mut self) -> Option<(Result<Reply<pb::Deal>, Status>, Self)> {
        match self.next {
            Next::End => return None,
            Next::Now => {}
            Next::Wait { transition } => {
                if self.clock_set_for != Some(transition) {
                    let until_transition = (transition - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    self.clock.as_mut().reset(tokio::time::Instant::now() + until_transition);
                    self.clock_set_for = Some(transition);
                }
                tokio::select! {
                    biased;
                    () = stopped(&mut self.shutdown) => {
                        self.next = Next::End;
                        return Some((Err(shutting_down()), self));
                    }
                    changed = self.updates.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    () = &mut self.clock => {
                        // Fired: a later transition sets it again.
                        self.clock_set_for = None;
                    }
                }
            }
        }
        let version = Arc::clone(&self.updates.borrow_and_update());
        let state = state_at(&version.deal, Utc::now());
        self.next = match state {
            DealState::Expired => Next::End,
            _ => Next::Wait { transition: transition_after(&version.deal, state) },
        };
        Some((Ok(Reply::Encoded(version.message(self.audience, state))), self))
    }
}

/// UNAVAILABLE for the streams of a server shutting down. A client that reads nothing finds its
/// stream cut when the server's connections close.
fn shutting_down() -> Status {
    status::retryable(
        Code::Unavailable,
        DOMAIN,
        "SHUTTING_DOWN",
        "the server is shutting down; watch again",
        RECONNECT_AFTER,
    )
}

/// Completes when the server starts shutting down (or can no longer say).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// `deal`'s state as of `now`: the stored state is the last one written, the clock may have moved it
/// on.
fn state_at(deal: &Deal, now: DateTime<Utc>) -> DealState {
    let end = deal.terms.expire_time.min(daily_reset_after(deal.terms.start_time));
    match deal.state {
        DealState::Expired => DealState::Expired,
        _ if now >= end => DealState::Expired,
        DealState::Scheduled if now >= deal.terms.start_time => DealState::Active,
        state => state,
    }
}

/// When the clock next changes the state of `deal`, in `state` now (its start, or its end).
fn transition_after(deal: &Deal, state: DealState) -> DateTime<Utc> {
    let end = deal.terms.expire_time.min(daily_reset_after(deal.terms.start_time));
    match state {
        DealState::Scheduled => deal.terms.start_time.min(end),
        _ => end,
    }
}

/// The stream a WatchDeal call returns; it holds the call's watcher permit.
pub struct DealStream {
    next: Option<NextMessage>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for DealStream {
    fn drop(&mut self) {
        metrics::deal_watchers(-1.0);
    }
}

impl Stream for DealStream {
    type Item = Result<Reply<pb::Deal>, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(next) = self.next.as_mut() else { return Poll::Ready(None) };
        match next.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.next = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some((message, feed))) => {
                self.next = Some(Box::pin(feed.next()));
                Poll::Ready(Some(message))
            }
        }
    }
}

/// RESOURCE_EXHAUSTED for a watcher beyond `--max-watchers`.
pub fn too_many_watchers() -> Status {
    status::retryable(
        Code::ResourceExhausted,
        DOMAIN,
        "TOO_MANY_WATCHERS",
        "this server watches as many deals as it may; retry later or elsewhere",
        FULL_RETRY_AFTER,
    )
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone};

    use super::*;
    use crate::deal::domain::sample_deal;

    #[test]
    fn the_clock_starts_a_scheduled_deal_and_ends_a_live_one() {
        let start = Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap();
        let scheduled = Deal { state: DealState::Scheduled, ..sample_deal(start) };
        assert_eq!(state_at(&scheduled, start - TimeDelta::seconds(1)), DealState::Scheduled);
        assert_eq!(transition_after(&scheduled, DealState::Scheduled), start);
        assert_eq!(state_at(&scheduled, start), DealState::Active);
        let live = sample_deal(start);
        assert_eq!(transition_after(&live, DealState::Active), start + TimeDelta::hours(2));
        assert_eq!(state_at(&live, start + TimeDelta::hours(2)), DealState::Expired);
        // A deal that would run past midnight ends at the daily reset.
        let late = sample_deal(Utc.with_ymd_and_hms(2026, 11, 25, 23, 0, 0).unwrap());
        let midnight = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
        assert_eq!(transition_after(&late, DealState::Active), midnight);
        assert_eq!(state_at(&late, midnight), DealState::Expired);
    }

    #[test]
    fn a_version_is_sent_as_each_audience_sees_it_in_the_state_the_clock_shows() {
        use prost::Message as _;
        let start = Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap();
        let version = Version::new(Deal { state: DealState::Scheduled, ..sample_deal(start) });
        let sent = |audience, state| pb::Deal::decode(version.message(audience, state)).unwrap();
        for audience in [Audience::Admins, Audience::Customers] {
            assert_eq!(sent(audience, DealState::Scheduled), audience.deal(&version.deal));
            // Encoded once: every send shares the first one's bytes.
            let first = version.message(audience, DealState::Scheduled);
            assert_eq!(first.as_ptr(), version.message(audience, DealState::Scheduled).as_ptr());
        }
        assert!(sent(Audience::Customers, DealState::Scheduled).final_price.is_none());
        assert!(sent(Audience::Admins, DealState::Scheduled).final_price.is_some());
        // Live by the clock before the listener read it so: customers see its price.
        let live = sent(Audience::Customers, DealState::Active);
        assert_eq!(live.state, pb::deal::State::Active as i32);
        assert!(live.final_price.is_some());
        let first = version.message(Audience::Customers, DealState::Active);
        let again = version.message(Audience::Customers, DealState::Active);
        assert_eq!(first.as_ptr(), again.as_ptr(), "a state the clock shows is encoded once too");
    }
}
