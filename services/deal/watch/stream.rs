//! One WatchDeal stream: what it sends of its deal's channel, when, and in which encoding. It holds
//! no task of its own; HTTP/2 polls it when the connection can take a message.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::ReusableBoxFuture;
use tonic::{Status, codegen::tokio_stream::Stream};

use crate::{
    deal::{
        convert::Audience,
        domain::{Deal, DealState},
        error::DealError,
    },
    proto::deal as pb,
    shared::{
        encoded::{Framed, Reply},
        metrics,
    },
};

/// A version of a watched deal as the listener read it, and its encodings, made by the first
/// stream that sends each and copied by the others: one per audience and per state the clock may
/// show it in. The stored state lags the clock by up to a sweep (a sale's first seconds are read as
/// `scheduled` until the worker starts it), so the shown state is part of the key.
pub(super) struct Version {
    pub(super) deal: Deal,
    encoded: [OnceLock<Framed>; 6],
}

impl Version {
    pub(super) fn new(deal: Deal) -> Arc<Self> {
        Arc::new(Self { deal, encoded: Default::default() })
    }

    /// The message `audience` is sent of this version, the deal being in `state` by the clock.
    fn message(&self, audience: Audience, state: DealState) -> Framed {
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
        slot.get_or_init(|| Framed::of(&audience.deal(&Deal { state, ..self.deal.clone() }))).clone()
    }
}

/// What a stream does next.
#[derive(Clone, Copy)]
enum Next {
    /// Send the version its deal's channel holds now.
    First,
    /// Wait for a change, the clock's next transition, or the channel's closing (the shutdown).
    Wait { transition: DateTime<Utc> },
    /// Nothing: the stream is over.
    End,
}

/// The next version of a deal's channel, with the channel: the one it holds now when `first`, else
/// the next one sent. `None` when the channel is gone.
type NextVersion = Option<(Arc<Version>, watch::Receiver<Arc<Version>>)>;

async fn next_version(mut updates: watch::Receiver<Arc<Version>>, first: bool) -> NextVersion {
    if !first {
        updates.changed().await.ok()?;
    }
    let version = Arc::clone(&updates.borrow_and_update());
    Some((version, updates))
}

/// `deal`'s state as of `now`: the stored state is the last one written, the clock may have moved it
/// on.
fn state_at(deal: &Deal, now: DateTime<Utc>) -> DealState {
    let end = deal.terms.end_time();
    match deal.state {
        DealState::Expired => DealState::Expired,
        _ if now >= end => DealState::Expired,
        DealState::Scheduled if now >= deal.terms.start_time => DealState::Active,
        state => state,
    }
}

/// When the clock next changes the state of `deal`, in `state` now (its start, or its end).
fn transition_after(deal: &Deal, state: DealState) -> DateTime<Utc> {
    let end = deal.terms.end_time();
    match state {
        DealState::Scheduled => deal.terms.start_time.min(end),
        _ => end,
    }
}

pin_project_lite::pin_project! {
    /// The stream a WatchDeal call returns: the versions of its deal's channel, its state advanced by
    /// the clock too (a scheduled deal goes ACTIVE at its start and an active one EXPIRED at its end
    /// without waiting for the sweep). It holds the call's watcher permit.
    ///
    /// Every message costs each of thousands of streams, so what it waits on is set up once and
    /// reused, and lives in the stream's own allocation where it can: the future waiting for the
    /// channel's next version keeps its allocation, and the clock is part of the stream and set again
    /// only when the transition moves (a timer made per message costs the timer wheel's lock; one in
    /// a box of its own costs a cache miss per message). The shutdown is not waited on apart: it
    /// closes the channel (`Watchers` drops every channel then), which ends the wait for the next
    /// version.
    pub struct DealStream {
        versions: ReusableBoxFuture<'static, NextVersion>,
        // The version sent last, sent again in the state the clock shows when it moves.
        latest: Option<Arc<Version>>,
        audience: Audience,
        next: Next,
        // Whether the server is shutting down, read when the channel closes.
        shutdown: watch::Receiver<bool>,
        #[pin]
        clock: tokio::time::Sleep,
        clock_set_for: Option<DateTime<Utc>>,
        watcher: Watcher,
    }
}

/// A stream's place among the watchers: its permit, and its count in `topkart_deal_watchers`.
struct Watcher {
    _permit: OwnedSemaphorePermit,
}

impl Watcher {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::deal_watchers(1.0);
        Self { _permit: permit }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        metrics::deal_watchers(-1.0);
    }
}

impl Stream for DealStream {
    type Item = Result<Reply<pb::Deal>, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        let transition = match *this.next {
            Next::End => return Poll::Ready(None),
            Next::First => None,
            Next::Wait { transition } => Some(transition),
        };
        match this.versions.poll(cx) {
            Poll::Ready(Some((version, updates))) => {
                this.versions.set(next_version(updates, false));
                return Poll::Ready(Some(Ok(send(this.next, this.latest, *this.audience, version))));
            }
            // The channel closed: the server is shutting down (or its watchers are gone).
            Poll::Ready(None) => {
                *this.next = Next::End;
                let stopping = *this.shutdown.borrow();
                return Poll::Ready(stopping.then(|| Err(DealError::ShuttingDown.into())));
            }
            Poll::Pending => {}
        }
        if let (Some(transition), Some(latest)) = (transition, this.latest.as_ref()) {
            if *this.clock_set_for != Some(transition) {
                let until_transition = (transition - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                this.clock.as_mut().reset(tokio::time::Instant::now() + until_transition);
                *this.clock_set_for = Some(transition);
            }
            if this.clock.as_mut().poll(cx).is_ready() {
                // Fired: the next transition sets it again.
                *this.clock_set_for = None;
                let latest = Arc::clone(latest);
                return Poll::Ready(Some(Ok(send(this.next, this.latest, *this.audience, latest))));
            }
        }
        Poll::Pending
    }
}

impl DealStream {
    /// A stream of `updates`' versions as `audience` sees them, holding `permit` for its life and
    /// ended when its channel closes: with UNAVAILABLE if `shutdown` then says the server stops.
    pub(super) fn new(
        updates: watch::Receiver<Arc<Version>>,
        audience: Audience,
        shutdown: watch::Receiver<bool>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            versions: ReusableBoxFuture::new(next_version(updates, true)),
            latest: None,
            audience,
            next: Next::First,
            shutdown,
            clock: tokio::time::sleep(Duration::ZERO),
            clock_set_for: None,
            watcher: Watcher::new(permit),
        }
    }
}

/// `version` as `audience` sees it in the state the clock shows now, made the stream's `latest`;
/// the stream's `next` step ends it after this message if that state is EXPIRED.
fn send(
    next: &mut Next,
    latest: &mut Option<Arc<Version>>,
    audience: Audience,
    version: Arc<Version>,
) -> Reply<pb::Deal> {
    let state = state_at(&version.deal, Utc::now());
    *next = match state {
        DealState::Expired => Next::End,
        _ => Next::Wait { transition: transition_after(&version.deal, state) },
    };
    let message = version.message(audience, state);
    *latest = Some(version);
    Reply::Framed(message)
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
        let sent = |audience, state| pb::Deal::decode(version.message(audience, state).message()).unwrap();
        for audience in [Audience::Admins, Audience::Customers] {
            assert_eq!(sent(audience, DealState::Scheduled), audience.deal(&version.deal));
            // Encoded once: every send shares the first one's bytes.
            let first = version.message(audience, DealState::Scheduled);
            assert_eq!(first.message().as_ptr(), version.message(audience, DealState::Scheduled).message().as_ptr());
        }
        assert!(sent(Audience::Customers, DealState::Scheduled).final_price.is_none());
        assert!(sent(Audience::Admins, DealState::Scheduled).final_price.is_some());
        // Live by the clock before the listener read it so: customers see its price.
        let live = sent(Audience::Customers, DealState::Active);
        assert_eq!(live.state, pb::deal::State::Active as i32);
        assert!(live.final_price.is_some());
        let first = version.message(Audience::Customers, DealState::Active);
        let again = version.message(Audience::Customers, DealState::Active);
        assert_eq!(first.message().as_ptr(), again.message().as_ptr(), "a state the clock shows is encoded once too");
    }
}
