//! WatchDeal's fan-out: one `LISTEN deal_changed` connection per process (migrations
//! `…_deal_changes_notify.sql` and `…_deal_changes_in_bulk.sql` notify every change of a deal at its
//! commit, whichever instance or worker made it: by its id, or `*` for a statement that changed more
//! than 100 deals, on which every watched deal is read), one read of a changed deal per burst of
//! notifications however many watch it,
//! and `tokio::sync::watch` channels per watched deal that keep only the latest version: a watcher
//! that reads slowly skips versions instead of piling them up. A deal has a channel per HTTP/2
//! connection it is watched over, so that a version's messages to one connection's streams are woken
//! together and written together; the channels are sent to one after the other, with the tasks that
//! waited meanwhile run after every [`WATCHERS_PER_YIELD`] watchers.
//!
//! Each stream reads its channel only when the connection can take a message (HTTP/2 flow control
//! decides when its body is polled), so it holds no queue and no task of its own: what it sends is
//! the latest version at that moment, encoded once for all the streams that send it (each version
//! holds its bytes for each audience, made by the first stream to send them; `shared::encoded`).
//! A deal watched already is joined without reading the database: its channel holds what the
//! listener read last. A stream holds a permit of `--max-watchers` for its whole life. On a lost listener connection (notifications sent
//! meanwhile are lost) every watched deal is read again. Streams end with OK after the deal's
//! EXPIRED message, and with UNAVAILABLE when the server shuts down: every channel is dropped then,
//! which is what the streams wait on anyway ([`stream`]), and new watchers are refused.

mod listener;
mod stream;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use indexmap::IndexMap;
use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};
use uuid::Uuid;

use super::{convert::Audience, domain::Deal, error::DealError, store};

pub use stream::DealStream;
use stream::Version;

/// How long the listener waits before reconnecting, and a read of changed deals before retrying,
/// after an error.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// How many watchers of a deal a refresh wakes before it lets the tasks that waited meanwhile run.
/// On one thread, 10,000 watchers woken at once held every other task back for the ~40 ms their
/// messages take.
pub const WATCHERS_PER_YIELD: usize = 256;

/// The watched deals of this process and the permits of its streams.
pub struct Watchers {
    pool: PgPool,
    channels: Mutex<HashMap<Uuid, Channels>>,
    /// Held from a read of deals until what it read is sent, so a channel never goes back from a
    /// newer read to an older one.
    reading: tokio::sync::Mutex<()>,
    permits: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    /// The least time between two reads of changed deals (`--watch-refresh-ms`; the listener).
    refresh_interval: Duration,
}

impl Watchers {
    /// Starts listening for deal changes on `pool`'s database, reading the changed deals at most
    /// once per `refresh_interval`; at most `max_watchers` streams; every stream ends when
    /// `shutdown` turns true.
    pub fn start(
        pool: PgPool,
        max_watchers: usize,
        refresh_interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let watchers = Arc::new(Self {
            pool,
            refresh_interval,
            channels: Mutex::new(HashMap::new()),
            reading: tokio::sync::Mutex::new(()),
            permits: Arc::new(Semaphore::new(max_watchers)),
            shutdown,
        });
        tokio::spawn(listener::listen(Arc::downgrade(&watchers)));
        tokio::spawn(close_on_shutdown(Arc::downgrade(&watchers), watchers.shutdown.clone()));
        watchers
    }

    /// A stream of deal `id` over `connection` (the client's address; `None` where the transport
    /// has none): the deal now, then every change. `DealNotFound` for no such deal.
    pub async fn watch(
        &self,
        id: Uuid,
        audience: Audience,
        connection: Option<SocketAddr>,
    ) -> Result<DealStream, DealError> {
        // A server shutting down says so first: the watcher should go elsewhere, not wait for a place.
        if *self.shutdown.borrow() {
            return Err(DealError::ShuttingDown);
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return Err(DealError::TooManyWatchers);
        };
        let updates = match self.join(id, connection)? {
            Some(updates) => updates,
            None => self.read_and_join(id, connection).await?,
        };
        Ok(DealStream::new(updates, audience, self.shutdown.clone(), permit))
    }

    /// A channel of deal `id` if it is watched already: the listener keeps its version current (a
    /// change not read yet will be), so joining it needs no read. Under the channels' lock, so a
    /// refresh counts this watcher from then on.
    fn join(
        &self,
        id: Uuid,
        connection: Option<SocketAddr>,
    ) -> Result<Option<watch::Receiver<Arc<Version>>>, DealError> {
        let mut channels = self.open_channels()?;
        Ok(channels.get_mut(&id).filter(|deal| deal.has_watchers()).map(|deal| deal.subscribe(connection)))
    }

    /// The channels, unless the server is shutting down. Checked under their lock, which
    /// [`close_on_shutdown`] takes to drop them all once the shutdown has begun: a watcher either
    /// joins before (and its channel is dropped with the others) or is refused.
    fn open_channels(&self) -> Result<MutexGuard<'_, HashMap<Uuid, Channels>>, DealError> {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if *self.shutdown.borrow() {
            return Err(DealError::ShuttingDown);
        }
        Ok(channels)
    }

    /// The first watcher of deal `id` (or the first after all left, when its channel went stale):
    /// reads it and makes its channel.
    async fn read_and_join(
        &self,
        id: Uuid,
        connection: Option<SocketAddr>,
    ) -> Result<watch::Receiver<Arc<Version>>, DealError> {
        let updates = {
            // Read under the lock the listener reads under: a change committed after this read is
            // notified and read after it, one committed before is in it.
            let _reading = self.reading.lock().await;
            let deal = store::get_deal(&self.pool, id).await?.ok_or(DealError::DealNotFound)?;
            let mut channels = self.open_channels()?;
            // Under the reading lock: no refresh is sending to the channels dropped here.
            channels.retain(|_, deal| deal.has_watchers());
            let deal_channels = channels.entry(id).or_insert_with(|| Channels::new(&deal));
            // Watchers joining add no messages for the others: this changes nothing for them
            // unless the deal changed since the listener's last read, which it will read next.
            if let Some(version) = deal_channels.replace_latest(deal) {
                for channel in deal_channels.channels.values() {
                    send(channel, &version);
                }
            }
            deal_channels.subscribe(connection)
        };
        Ok(updates)
    }

    /// The deals watched now.
    fn watched(&self) -> Vec<Uuid> {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels.iter().filter(|(_, deal)| deal.has_watchers()).map(|(id, _)| *id).collect()
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
            ids.into_iter().filter(|id| channels.get(id).is_some_and(|deal| deal.has_watchers())).collect()
        };
        if watched.is_empty() {
            return Ok(());
        }
        for deal in store::get_deals(&self.pool, &watched).await? {
            self.publish(deal).await;
        }
        Ok(())
    }

    /// Sends `deal` to its watchers if it differs from what they were sent last (a read that finds
    /// no change, after a `*` notification or a lost connection, sends nothing): one channel at a
    /// time, yielding after every [`WATCHERS_PER_YIELD`] watchers woken, so that the tasks woken
    /// meanwhile run. It sends to the channels there are when it starts, the channels of
    /// connections that hold no stream of the deal any more dropped first; a channel made
    /// meanwhile starts at this version (the latest until this refresh ends: `reading`).
    async fn publish(&self, deal: Deal) {
        let (version, to_send) = {
            let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(current) = channels.get_mut(&deal.id) else { return };
            current.drop_unwatched();
            let Some(version) = current.replace_latest(deal) else { return };
            (version, current.channels.values().cloned().collect::<Vec<_>>())
        };
        let mut woken = 0;
        for channel in to_send {
            let watchers = channel.receiver_count();
            if watchers == 0 {
                continue;
            }
            if woken >= WATCHERS_PER_YIELD {
                tokio::task::yield_now().await;
                woken = 0;
            }
            send(&channel, &version);
            woken += watchers;
        }
    }
}

/// Sends `version` on `channel` unless it holds it already (a channel made, or joined, since the
/// refresh that sends it began).
fn send(channel: &watch::Sender<Arc<Version>>, version: &Arc<Version>) {
    channel.send_if_modified(|current| {
        let behind = !Arc::ptr_eq(current, version);
        if behind {
            *current = Arc::clone(version);
        }
        behind
    });
}

/// The channels of one watched deal, one per connection it is watched over (HTTP/2's
/// `--max-streams-per-connection` bounds a channel's watchers; in-process calls, which have no
/// address, share one), all holding the latest version once a refresh has gone through them.
struct Channels {
    /// The deal as last read, which a refresh is sending (or has sent) to every channel.
    latest: Arc<Version>,
    /// By the client's address, in the order they were made.
    channels: IndexMap<Option<SocketAddr>, Arc<watch::Sender<Arc<Version>>>>,
    /// How many channels there may be before a new connection's drops the unwatched ones: twice
    /// as many as were left the last time, so a deal that does not change (and is not refreshed)
    /// keeps no more than that of the connections that left.
    drop_unwatched_at: usize,
}

/// The fewest channels a new connection's drops the unwatched ones at.
const DROP_UNWATCHED_AT_LEAST: usize = 16;

impl Channels {
    fn new(deal: &Deal) -> Self {
        Self {
            latest: Version::new(deal.clone()),
            channels: IndexMap::new(),
            drop_unwatched_at: DROP_UNWATCHED_AT_LEAST,
        }
    }

    /// Makes `deal` the latest version, unless it is that already (a read that finds no change,
    /// after a `*` notification or a lost connection, sends nothing); the new version to send.
    fn replace_latest(&mut self, deal: Deal) -> Option<Arc<Version>> {
        (self.latest.deal != deal).then(|| {
            self.latest = Version::new(deal);
            Arc::clone(&self.latest)
        })
    }

    /// Drops the channels of connections that hold no stream of the deal any more (a reconnecting
    /// client comes back from another port).
    fn drop_unwatched(&mut self) {
        self.channels.retain(|_, channel| channel.receiver_count() > 0);
        self.drop_unwatched_at = (2 * self.channels.len()).max(DROP_UNWATCHED_AT_LEAST);
    }

    fn has_watchers(&self) -> bool {
        self.channels.values().any(|channel| channel.receiver_count() > 0)
    }

    /// A new watcher of the deal over `connection`, on that connection's channel, holding the
    /// latest version: a refresh may not have reached the channel yet (it sends to the others
    /// first), and a watcher that saw the newer version on another stream must not be sent an
    /// older one on this.
    fn subscribe(&mut self, connection: Option<SocketAddr>) -> watch::Receiver<Arc<Version>> {
        if self.channels.len() >= self.drop_unwatched_at && !self.channels.contains_key(&connection) {
            self.drop_unwatched();
        }
        let channel =
            self.channels.entry(connection).or_insert_with(|| Arc::new(watch::Sender::new(Arc::clone(&self.latest))));
        send(channel, &self.latest);
        channel.subscribe()
    }
}

/// Drops every channel once the server starts shutting down, which ends every stream (with
/// UNAVAILABLE: [`DealStream`] reads why its channel closed).
async fn close_on_shutdown(watchers: std::sync::Weak<Watchers>, mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|stopping| *stopping).await.is_err() {
        return;
    }
    if let Some(live) = watchers.upgrade() {
        live.channels.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::deal::domain::sample_deal;

    fn address(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn the_watchers_of_one_connection_share_a_channel_of_their_own() {
        let deal = sample_deal(Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap());
        let mut channels = Channels::new(&deal);
        let first = channels.subscribe(address(1000));
        let second = channels.subscribe(address(1000));
        let other = channels.subscribe(address(1001));
        assert_eq!(channels.channels.len(), 2);
        assert!(first.same_channel(&second));
        assert!(!first.same_channel(&other));
        assert_eq!(channels.channels.values().map(|channel| channel.receiver_count()).sum::<usize>(), 3);

        // The connection 1001 closes: its channel goes, the other stays.
        drop(other);
        channels.drop_unwatched();
        assert_eq!(channels.channels.keys().copied().collect::<Vec<_>>(), vec![address(1000)]);
        drop((first, second));
        channels.drop_unwatched();
        assert!(channels.channels.is_empty());
    }

    #[test]
    fn a_deal_that_does_not_change_keeps_few_channels_of_connections_that_left() {
        let deal = sample_deal(Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap());
        let mut channels = Channels::new(&deal);
        let staying: Vec<_> = (0..100).map(|port| channels.subscribe(address(port))).collect();
        // A thousand connections come, watch and leave, and no refresh runs meanwhile.
        for port in 1000..2000 {
            drop(channels.subscribe(address(port)));
            assert!(channels.channels.len() <= 2 * staying.len() + 1, "{} channels", channels.channels.len());
        }
        assert_eq!(staying.len(), 100);
        assert!((0..100).all(|port| channels.channels.contains_key(&address(port))), "no watched channel is dropped");
    }

    #[tokio::test]
    async fn a_refresh_reaches_every_connection_and_drops_the_channels_of_those_that_left() {
        let deal = sample_deal(Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap());
        let (_stop, shutdown) = watch::channel(false);
        let watchers = Watchers {
            pool: PgPool::connect_lazy("postgres://127.0.0.1:1/never-used").unwrap(),
            channels: Mutex::new(HashMap::new()),
            reading: tokio::sync::Mutex::new(()),
            permits: Arc::new(Semaphore::new(1)),
            shutdown,
            refresh_interval: crate::shared::layers::DEFAULT_WATCH_REFRESH_INTERVAL,
        };
        // More watchers than one yield's worth, over three connections; then one connection leaves.
        let mut streams: Vec<_> = {
            let mut channels = watchers.channels.lock().unwrap();
            let deal_channels = channels.entry(deal.id).or_insert_with(|| Channels::new(&deal));
            (0..3 * WATCHERS_PER_YIELD).map(|i| (i % 3, deal_channels.subscribe(address(i as u16 % 3)))).collect()
        };
        streams.retain(|(connection, _)| *connection != 0);

        let changed = Deal { available_units: deal.available_units - 1, ..deal.clone() };
        watchers.publish(changed.clone()).await;
        for (_, stream) in &mut streams {
            assert!(stream.has_changed().unwrap());
            assert_eq!(stream.borrow_and_update().deal, changed);
        }
        let channels = watchers.channels.lock().unwrap();
        assert_eq!(channels[&deal.id].channels.keys().copied().collect::<Vec<_>>(), vec![address(1), address(2)]);
    }

    #[test]
    fn a_watcher_joining_a_channel_a_refresh_has_not_reached_yet_starts_from_the_latest_version() {
        let deal = sample_deal(Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap());
        let mut channels = Channels::new(&deal);
        let first = channels.subscribe(address(1000));
        // A refresh has read a change and not yet sent it to this channel.
        channels.latest = Version::new(Deal { available_units: deal.available_units - 1, ..deal.clone() });
        let joined = channels.subscribe(address(1000));
        assert!(Arc::ptr_eq(&joined.borrow(), &channels.latest));
        assert!(first.has_changed().unwrap(), "the channel's earlier watcher moves forward with it");
        // A new connection's channel starts at the latest too.
        let other = channels.subscribe(address(1001));
        assert!(Arc::ptr_eq(&other.borrow(), &channels.latest));
    }
}
