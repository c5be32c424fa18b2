//! WatchDeal's listener: one `LISTEN deal_changed` connection per process, whose notifications
//! become reads of the changed deals, at most one per refresh interval (`--watch-refresh-ms`),
//! each taking every notification that has arrived since the one before. The interval bounds the
//! fan-out's work whatever the rate of commits (a hot deal commits every few milliseconds): each
//! read wakes every watcher of the deals it read, and changes notified meanwhile wait and are read
//! together (BENCHMARKS.md).

use std::{collections::BTreeSet, ops::ControlFlow, sync::Weak};

use futures_util::{FutureExt, StreamExt};
use sqlx::postgres::{PgListener, PgNotification};
use uuid::Uuid;

use super::{RECONNECT_AFTER, Watchers};

/// The channel every change of a deal is notified on, with the deal's id.
const CHANNEL: &str = "deal_changed";
/// The payload of a notification for more deals than it names (migration 14).
const MANY_CHANGED: &str = "*";

/// The listener loop, for as long as the watchers exist: every burst of notifications becomes one
/// read of the changed deals; a lost connection, one read of all watched deals.
pub(super) async fn listen(watchers: Weak<Watchers>) {
    loop {
        let Some((pool, refresh_interval)) =
            watchers.upgrade().map(|watchers| (watchers.pool.clone(), watchers.refresh_interval))
        else {
            return;
        };
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
        // `try_recv` in a stream, so that what has arrived can be taken without waiting for more
        // and without dropping a half-read message (`next_buffered` holds only what arrived
        // during a query, never here: taking one notification per read let a hot deal's backlog
        // grow and hold every other deal's changes back).
        let mut notifications = Box::pin(futures_util::stream::unfold(listener, |mut listener| async move {
            let next = listener.try_recv().await;
            Some((next, listener))
        }));
        let mut last_read = tokio::time::Instant::now();
        loop {
            let Some(first) = notifications.next().await else { break };
            let mut changed = Changed::default();
            if let ControlFlow::Break(()) = changed.add(first) {
                break;
            }
            tokio::time::sleep_until(last_read + refresh_interval).await;
            while let Some(Some(next)) = notifications.next().now_or_never() {
                if let ControlFlow::Break(()) = changed.add(next) {
                    break;
                }
            }
            let Some(live) = watchers.upgrade() else { return };
            let ids = if changed.all { live.watched() } else { changed.ids.into_iter().collect() };
            last_read = tokio::time::Instant::now();
            live.refresh_until_read(ids).await;
            if changed.failed {
                break;
            }
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// The deals a burst of notifications says changed.
#[derive(Default)]
struct Changed {
    ids: BTreeSet<Uuid>,
    /// Every watched deal: a statement changed many deals at once (a sweep, the daily reset:
    /// notified as `*`), or the connection was lost and what was notified meanwhile with it.
    all: bool,
    /// The listener failed: it is made again once what changed is read.
    failed: bool,
}

impl Changed {
    /// Adds what the listener received; `Break` when it failed.
    fn add(&mut self, received: Result<Option<PgNotification>, sqlx::Error>) -> ControlFlow<()> {
        match received {
            Ok(Some(notification)) if notification.payload() == MANY_CHANGED => self.all = true,
            Ok(Some(notification)) => self.ids.extend(notification.payload().parse::<Uuid>().ok()),
            // Lost, and reconnected on the next call.
            Ok(None) => self.all = true,
            Err(err) => {
                tracing::warn!(error = %err, "lost the deal-change listener; reconnecting");
                self.all = true;
                self.failed = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}
