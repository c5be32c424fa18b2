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
//! and a page is their concatenation (`shared::encoded`), made once per snapshot and page size and
//! sent until a deal on it ends.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{
    proto::deal as pb,
    shared::{
        encoded::{self, Framed},
        paging::{Cursor, MAX_PAGE_SIZE},
    },
};

use super::{
    convert::deal_to_proto,
    domain::Deal,
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
    /// The first pages made from it, by page size.
    pages: Mutex<HashMap<usize, Page>>,
}

/// A first page, encoded whole, and when it stops being right: the first end (expiry or daily
/// reset) among its deals and the one after them. Until then the same deals are live, in the same
/// order, as a snapshot gains none.
#[derive(Clone)]
struct Page {
    framed: Framed,
    until: DateTime<Utc>,
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
    /// `ListDealsResponse` whose `next_page_token`, when more follow, is `token_after` the cursor
    /// after its last deal; `None` when the snapshot cannot tell (too many of its deals expired since
    /// it was read): the caller then asks the database.
    pub async fn first_page(
        &self,
        page_size: usize,
        token_after: impl FnOnce(Cursor) -> String,
    ) -> Result<Option<Framed>, sqlx::Error> {
        let snapshot = self.fresh_snapshot().await?;
        let now = Utc::now();
        let mut pages = snapshot.pages.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(page) = pages.get(&page_size).filter(|page| now < page.until) {
            return Ok(Some(page.framed.clone()));
        }
        let page = snapshot.page(page_size, now, token_after);
        if let Some(page) = &page {
            pages.insert(page_size, page.clone());
        }
        Ok(page.map(|page| page.framed))
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
        let snapshot = Arc::new(Snapshot::new(taken, deals));
        *self.snapshot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }
}

impl Snapshot {
    /// The snapshot of `deals`, the live deals read at `taken`, soonest expiry first.
    fn new(taken: Instant, deals: Vec<Deal>) -> Self {
        let encoded = deals
            .iter()
            .map(|deal| {
                encoded::encode(&pb::ListDealsResponse { deals: vec![deal_to_proto(deal)], ..Default::default() })
            })
            .collect();
        Self { taken, complete: deals.len() < SNAPSHOT_ROWS, deals, encoded, pages: Mutex::default() }
    }

    /// The first page of `page_size` of its deals still live at `now`; `None` when it cannot tell.
    fn page(&self, page_size: usize, now: DateTime<Utc>, token_after: impl FnOnce(Cursor) -> String) -> Option<Page> {
        // One more than the page tells whether another page follows.
        let visible: Vec<usize> =
            (0..self.deals.len()).filter(|&i| end_of(&self.deals[i]) > now).take(page_size + 1).collect();
        if visible.len() <= page_size && !self.complete {
            return None;
        }
        let until = visible.iter().map(|&i| end_of(&self.deals[i])).min().unwrap_or(DateTime::<Utc>::MAX_UTC);
        let page = &visible[..visible.len().min(page_size)];
        let mut parts: Vec<&[u8]> = page.iter().map(|&i| &self.encoded[i][..]).collect();
        let token;
        if visible.len() > page_size {
            let last = &self.deals[page[page.len() - 1]];
            let next_page_token = token_after(Cursor { at: last.terms.expire_time, id: last.id });
            token = encoded::encode(&pb::ListDealsResponse { next_page_token, ..Default::default() });
            parts.push(&token);
        }
        Some(Page { framed: Framed::concat(&parts), until })
    }
}

/// When a deal read as live stops being live.
fn end_of(deal: &Deal) -> DateTime<Utc> {
    deal.terms.end_time()
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone};
    use prost::Message;

    use super::*;
    use crate::deal::domain::{self, DealTerms};

    fn deal(start: DateTime<Utc>, expire: DateTime<Utc>) -> Deal {
        let deal = domain::sample_deal(start);
        Deal { terms: DealTerms { expire_time: expire, ..deal.terms }, ..deal }
    }

    #[test]
    fn a_deal_stops_showing_at_its_expiry_and_at_midnight() {
        let start = Utc.with_ymd_and_hms(2026, 11, 25, 20, 0, 0).unwrap();
        let expiring = deal(start, start + TimeDelta::hours(1));
        assert_eq!(end_of(&expiring), start + TimeDelta::hours(1));
        let past_midnight = deal(start, start + TimeDelta::hours(6));
        assert_eq!(end_of(&past_midnight), Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap());
    }

    fn names(page: &Page) -> (Vec<String>, String) {
        let page = pb::ListDealsResponse::decode(page.framed.message()).unwrap();
        (page.deals.into_iter().map(|deal| deal.name).collect(), page.next_page_token)
    }

    #[test]
    fn a_page_holds_until_the_first_of_its_deals_ends() {
        let start = Utc.with_ymd_and_hms(2026, 11, 25, 20, 0, 0).unwrap();
        let deals: Vec<Deal> = (1..=3).map(|hours| deal(start, start + TimeDelta::hours(hours))).collect();
        let name = |i: usize| deal_to_proto(&deals[i]).name;
        let snapshot = Snapshot::new(Instant::now(), deals.clone());

        let first = snapshot.page(2, start, |cursor| format!("after {}", cursor.id)).unwrap();
        assert_eq!(names(&first), (vec![name(0), name(1)], format!("after {}", deals[1].id)));
        assert_eq!(first.until, start + TimeDelta::hours(1), "the first deal's end, and the next one's");

        let later = snapshot.page(2, first.until, |_| unreachable!("no page follows")).unwrap();
        assert_eq!(names(&later), (vec![name(1), name(2)], String::new()));
        assert_eq!(later.until, start + TimeDelta::hours(2));

        // A snapshot cut short by its row limit cannot tell what follows its last live deals.
        let cut_short = Snapshot { complete: false, ..Snapshot::new(Instant::now(), deals) };
        assert!(cut_short.page(2, first.until, |_| unreachable!()).is_none());
    }
}
