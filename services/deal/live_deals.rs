//! The first page of live deals, from memory. Every customer opening the app asks for the same page,
//! so it is read from the database at most once per [`MAX_STALENESS`] and served from a snapshot in
//! between.
//!
//! What a customer can see: data at most [`MAX_STALENESS`] old (units left, prices), and never a deal
//! past its `expire_time` or the daily reset by this server's clock: the snapshot is filtered at every
//! request. A deal that became live within the window may be missing until the next read. UpdateDeal
//! and CreateDeal on this instance drop the snapshot at once; on other instances it ages out.
//!
//! The page is sent as bytes: each deal of the snapshot is encoded once, as a page holding it alone,
//! and a page is their concatenation (`shared::encoded`).

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{
    proto::deal as pb,
    shared::{
        encoded,
        paging::{Cursor, MAX_PAGE_SIZE},
    },
};

use super::{
    convert::deal_to_proto,
    domain::{self, Deal},
    store::{self, DealFilter},
};

/// The oldest data a first page may show: a snapshot is used only while younger than this, counted
/// from before its query started.
pub const MAX_STALENESS: Duration = Duration::from_millis(100);

/// The soonest-expiring live deals, enough for the largest first page and the row after it.
const SNAPSHOT_ROWS: usize = MAX_PAGE_SIZE as usize + 1;

struct Snapshot {
    /// When its query started.
    taken: Instant,
    deals: Vec<Deal>,
    /// Each of the same deals as the API shows them, encoded once per snapshot as a
    /// `ListDealsResponse` holding only it.
    encoded: Vec<Bytes>,
    /// Whether it holds every live deal (fewer rows came back than were asked for).
    complete: bool,
}

/// The shared snapshot and the lock that lets one request at a time refresh it.
pub struct LiveDeals {
    pool: PgPool,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    refresh: tokio::sync::Mutex<()>,
}

impl LiveDeals {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, snapshot: RwLock::new(None), refresh: tokio::sync::Mutex::new(()) }
    }

    /// The first page of `page_size` live deals, soonest expiry first, as an encoded
    /// `ListDealsResponse` without its `next_page_token`, and, when more follow, the cursor after its
    /// last deal; `None` when the snapshot cannot tell (too many of its deals expired since it was
    /// read): the caller then asks the database.
    pub async fn first_page(&self, page_size: usize) -> Result<Option<(BytesMut, Option<Cursor>)>, sqlx::Error> {
        let snapshot = self.fresh_snapshot().await?;
        let now = Utc::now();
        // One more than the page tells whether another page follows.
        let visible: Vec<usize> =
            (0..snapshot.deals.len()).filter(|&i| still_live(&snapshot.deals[i], now)).take(page_size + 1).collect();
        if visible.len() <= page_size && !snapshot.complete {
            return Ok(None);
        }
        let page = &visible[..visible.len().min(page_size)];
        let next = (visible.len() > page_size).then(|| {
            let last = &snapshot.deals[page[page.len() - 1]];
            Cursor { at: last.terms.expire_time, id: last.id }
        });
        let mut encoded = BytesMut::with_capacity(page.iter().map(|&i| snapshot.encoded[i].len()).sum());
        for &i in page {
            encoded.extend_from_slice(&snapshot.encoded[i]);
        }
        Ok(Some((encoded, next)))
    }

    /// Drops the snapshot, after a change made through this instance.
    pub fn invalidate(&self) {
        *self.snapshot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    fn current(&self) -> Option<Arc<Snapshot>> {
        let snapshot = self.snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        snapshot.filter(|snapshot| snapshot.taken.elapsed() < MAX_STALENESS)
    }

    /// The snapshot, read again if it is too old; concurrent requests wait for one read.
    async fn fresh_snapshot(&self) -> Result<Arc<Snapshot>, sqlx::Error> {
        if let Some(snapshot) = self.current() {
            return Ok(snapshot);
        }
        let _refreshing = self.refresh.lock().await;
        if let Some(snapshot) = self.current() {
            return Ok(snapshot);
        }
        let taken = Instant::now();
        let deals = store::list_deals(&self.pool, DealFilter::Live, None, SNAPSHOT_ROWS as i64).await?;
        let encoded = deals
            .iter()
            .map(|deal| {
                encoded::encode(&pb::ListDealsResponse { deals: vec![deal_to_proto(deal)], ..Default::default() })
            })
            .collect();
        let snapshot = Arc::new(Snapshot { taken, complete: deals.len() < SNAPSHOT_ROWS, deals, encoded });
        *self.snapshot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }
}

/// Whether a deal read as live is still live at `now`: neither past its expiry nor its daily reset.
fn still_live(deal: &Deal, now: DateTime<Utc>) -> bool {
    deal.terms.expire_time > now && domain::daily_reset_after(deal.terms.start_time) > now
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone};

    use super::*;
    use crate::deal::domain::DealTerms;

    fn deal(start: DateTime<Utc>, expire: DateTime<Utc>) -> Deal {
        let deal = domain::sample_deal(start);
        Deal { terms: DealTerms { expire_time: expire, ..deal.terms }, ..deal }
    }

    #[test]
    fn a_deal_stops_showing_at_its_expiry_and_at_midnight() {
        let start = Utc.with_ymd_and_hms(2026, 11, 25, 20, 0, 0).unwrap();
        let expiring = deal(start, start + TimeDelta::hours(1));
        assert!(still_live(&expiring, start + TimeDelta::minutes(59)));
        assert!(!still_live(&expiring, start + TimeDelta::hours(1)));
        let past_midnight = deal(start, start + TimeDelta::hours(6));
        assert!(still_live(&past_midnight, start + TimeDelta::minutes(239)));
        assert!(!still_live(&past_midnight, Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap()));
    }
}
