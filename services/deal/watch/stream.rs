//! One WatchDeal stream: what it sends of its deal's channel, when, and in which encoding. It holds
//! no task of its own; HTTP/2 polls it when the connection can take a message.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tonic::{Code, Status, codegen::tokio_stream::Stream};

use crate::{
    deal::{
        DOMAIN,
        convert::Audience,
        domain::{Deal, DealState, daily_reset_after},
    },
    proto::deal as pb,
    shared::{
        encoded::{self, Reply},
        metrics, status,
    },
};

use super::RECONNECT_AFTER;

/// A version of a watched deal as the listener read it, and its encodings, made by the first
/// stream that sends each and copied by the others: one per audience and per state the clock may
/// show it in. The stored state lags the clock by up to a sweep (a sale's first seconds are read as
/// `scheduled` until the worker starts it), so the shown state is part of the key.
pub(super) struct Version {
    pub(super) deal: Deal,
    encoded: [OnceLock<Bytes>; 6],
}

impl Version {
    pub(super) fn new(deal: Deal) -> Arc<Self> {
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

impl DealStream {
    /// A stream of `updates`' versions as `audience` sees them, holding `permit` for its life and
    /// ended by `shutdown`.
    pub(super) fn new(
        updates: watch::Receiver<Arc<Version>>,
        audience: Audience,
        shutdown: watch::Receiver<bool>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        metrics::deal_watchers(1.0);
        let feed = Feed {
            updates,
            audience,
            shutdown,
            next: Next::Now,
            clock: Box::pin(tokio::time::sleep(Duration::ZERO)),
            clock_set_for: None,
        };
        Self { next: Some(Box::pin(feed.next())), _permit: permit }
    }
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
