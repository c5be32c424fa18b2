//! WatchDeal's fan-out: one `LISTEN deal_changed` connection per process (migrations
//! `…_deal_changes_notify.sql` and `…_deal_changes_in_bulk.sql` notify every change of a deal at its
//! commit, whichever instance or worker made it: by its id, or `*` for a statement that changed more
//! than 100 deals, on which every watched deal is read), one read of a changed deal per burst of
//! notifications however many watch it,
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
//! EXPIRED message, and with UNAVAILABLE when the server shuts down ([`stream`]).

mod stream;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::{Semaphore, watch};
use tonic::{Code, Status};
use uuid::Uuid;

use crate::shared::status;

use super::{DOMAIN, convert::Audience, domain::Deal, error::DealError, store};

pub use stream::DealStream;
use stream::Version;

/// The channel every change of a deal is notified on, with the deal's id.
const CHANNEL: &str = "deal_changed";
/// The payload of a notification for more deals than it names (migration 14).
const MANY_CHANGED: &str = "*";
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
        Ok(DealStream::new(updates, audience, self.shutdown.clone(), permit))
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
                    // Watchers joining add no messages for the others.
                    publish(sender, deal);
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
                publish(sender, deal);
            }
        }
        Ok(())
    }
}

/// Sends `deal` to its watchers if it differs from what they were sent last: a read that finds no
/// change (a `*` notification, a refresh after a lost connection) sends nothing.
fn publish(sender: &watch::Sender<Arc<Version>>, deal: Deal) {
    sender.send_if_modified(|current| {
        let changed = current.deal != deal;
        if changed {
            *current = Version::new(deal);
        }
        changed
    });
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
            let Some(live) = watchers.upgrade() else { return };
            // A statement that changed many deals at once (a sweep, the daily reset) names none.
            let ids = if changed.iter().any(|n| n.payload() == MANY_CHANGED) {
                live.watched()
            } else {
                let mut ids: Vec<Uuid> = changed.iter().filter_map(|n| n.payload().parse().ok()).collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            };
            last_read = tokio::time::Instant::now();
            live.refresh_until_read(ids).await;
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
