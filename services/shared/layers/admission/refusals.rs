//! What a refused call is told, and when: the `RetryInfo` delay (stretched by the overload), how long
//! its answer is held (a tarpit: a client that ignores RetryInfo is slowed by its own concurrency),
//! and the statuses of admission's refusals.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use http::Request;
use tonic::{Code, Status};
use uuid::Uuid;

use super::{DOMAIN, stock::Out};
use crate::shared::{call::grpc_timeout_of, server::DEFAULT_DEADLINE, status};

/// The longest retry delay a refused call is given.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// A held refusal is answered this long before the call's deadline at the latest (or a tenth of
/// the call's time, if longer), so that it reaches the caller before the caller gives up, even
/// from a busy server.
pub(super) const HOLD_MARGIN: Duration = Duration::from_millis(100);

/// The `RetryInfo` delays of a server's refusals (admission's, and the rate limit's): the base delay
/// times one plus the calls refused in the last second per permit, stretched by a random 0–100 %,
/// at most [`MAX_RETRY_AFTER`].
pub struct RetryDelays {
    base: Duration,
    per: usize,
    refused: RefusalRate,
}

impl RetryDelays {
    /// The delay for a call refused now because the server is overloaded (counted in the overload
    /// that stretches the next delays), at least `at_least`.
    pub fn next(&self, at_least: Duration) -> Duration {
        let overload = self.refused.record() as f64 / self.per.max(1) as f64;
        self.stretched(overload).max(at_least).min(MAX_RETRY_AFTER)
    }

    /// The delay for a caller refused for its own excess (its share waiting, its rate): the
    /// overload as it stands, not counting this one, so that one flooder does not lengthen every
    /// other caller's delay; at least `at_least`.
    pub fn for_caller(&self, at_least: Duration) -> Duration {
        let overload = self.refused.last_second() as f64 / self.per.max(1) as f64;
        self.stretched(overload).max(at_least).min(MAX_RETRY_AFTER)
    }

    fn stretched(&self, overload: f64) -> Duration {
        jittered(self.base.mul_f64(1.0 + overload))
    }
}

impl RetryDelays {
    /// Delays of `base`, stretched by the refusals per each of `per` permits.
    pub fn new(base: Duration, per: usize) -> Self {
        Self { base, per, refused: RefusalRate::new() }
    }
}

/// Holds the refusal of a call that arrived at `arrived` for `hold`, or until just before its
/// `deadline` if that comes first: a client that ignores RetryInfo cannot come back sooner than it
/// was told to. A call with too little time for a margin is held to its deadline itself: its
/// answer would come too late to be read anyway, and a short `grpc-timeout` must not buy a spin.
pub async fn hold_refusal(arrived: Instant, hold: Duration, deadline: Instant) {
    let whole = whole_deadline(arrived, deadline);
    let until = if whole.is_zero() { deadline } else { (arrived + hold).min(arrived + whole) };
    if until > Instant::now() {
        tokio::time::sleep_until(until.into()).await;
    }
}

/// The longest a refusal of a call that arrived at `arrived` can be held: until just before its
/// deadline. What a flooding caller is told to wait.
pub fn whole_deadline(arrived: Instant, deadline: Instant) -> Duration {
    let time = deadline.saturating_duration_since(arrived);
    time.saturating_sub(HOLD_MARGIN.max(time / 10))
}

/// When a call's caller gives up: its `grpc-timeout`, or the server's default deadline.
pub fn deadline_of<B>(request: &Request<B>, arrived: Instant) -> Instant {
    arrived + grpc_timeout_of(request.headers()).map_or(DEFAULT_DEADLINE, |timeout| timeout.min(DEFAULT_DEADLINE))
}

/// FAILED_PRECONDITION: `deal` is sold out or has ended, in the `ErrorInfo` `domain` of the service
/// whose method was called.
pub fn out_of_stock(deal: Uuid, out: Out, domain: &str) -> Status {
    let message = match out {
        Out::SoldOut => "the deal is sold out: no unit is left (join its waitlist to be offered one that comes back)",
        Out::Ended => "the deal has ended",
    };
    status::with_reason(Code::FailedPrecondition, domain, out.reason(), message, [("deal", format!("deals/{deal}"))])
}

/// RESOURCE_EXHAUSTED, reason `OVERLOADED`, retry after `delay`.
pub fn overloaded(delay: Duration) -> Status {
    overloaded_because(delay, "queue_full")
}

/// [`overloaded`], with the `cause` in the `ErrorInfo` metadata: `caller_share` (the caller has as
/// many calls waiting as it may), `queue_full`, `wait_timeout` or `deadline` (the call could not be
/// served within its deadline).
pub(super) fn overloaded_because(delay: Duration, cause: &'static str) -> Status {
    let mut details =
        tonic_types::ErrorDetails::with_error_info("OVERLOADED", DOMAIN, [("cause".to_owned(), cause.to_owned())]);
    details.set_retry_info(Some(delay));
    <Status as tonic_types::StatusExt>::with_error_details(
        Code::ResourceExhausted,
        "the server is at capacity; retry after the RetryInfo delay",
        details,
    )
}

/// `delay` stretched by a pseudo-random share of itself (0–100 %).
pub fn jittered(delay: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    // A shared xorshift: cheap, and plenty to spread retries; lost updates under a race are harmless.
    let mut x = STATE.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    delay + delay.mul_f64((x % 1024) as f64 / 1024.0)
}

/// Calls refused in the current and the previous second, counted without a lock.
struct RefusalRate {
    origin: Instant,
    /// The second (since `origin`) that `current` counts.
    second: AtomicU64,
    current: AtomicU64,
    previous: AtomicU64,
}

impl RefusalRate {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            second: AtomicU64::new(0),
            current: AtomicU64::new(0),
            previous: AtomicU64::new(0),
        }
    }

    /// The calls refused in the last full second, counting none now.
    fn last_second(&self) -> u64 {
        let now = self.origin.elapsed().as_secs();
        let second = self.second.load(Ordering::Relaxed);
        if now == second {
            self.previous.load(Ordering::Relaxed)
        } else if now == second + 1 {
            self.current.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// Counts one refused call; returns the calls refused in the last full second.
    fn record(&self) -> u64 {
        let now = self.origin.elapsed().as_secs();
        let second = self.second.load(Ordering::Relaxed);
        if now != second && self.second.compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            // The second turned: what was counted becomes the last second's (nothing, after a gap).
            let counted = self.current.swap(0, Ordering::Relaxed);
            self.previous.store(if now == second + 1 { counted } else { 0 }, Ordering::Relaxed);
        }
        self.current.fetch_add(1, Ordering::Relaxed);
        self.previous.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delay_grows_with_the_calls_refused_in_the_last_second() {
        let mut delays = RetryDelays { base: Duration::from_millis(100), per: 10, refused: RefusalRate::new() };
        let calm = delays.next(Duration::ZERO);
        assert!(calm <= Duration::from_millis(200), "{calm:?}");
        // A second with 100 calls refused on 10 permits: the next delays are about eleven times longer.
        let five_seconds_ago = Instant::now() - Duration::from_secs(5);
        delays.refused = RefusalRate {
            origin: five_seconds_ago,
            second: AtomicU64::new(4),
            current: AtomicU64::new(100),
            previous: AtomicU64::new(0),
        };
        let stormy = delays.next(Duration::ZERO);
        assert!((Duration::from_millis(1100)..=Duration::from_millis(2200)).contains(&stormy), "{stormy:?}");
        delays.refused.previous.store(1_000_000, Ordering::Relaxed);
        assert_eq!(delays.next(Duration::ZERO), MAX_RETRY_AFTER, "capped, jitter included");
        assert!(delays.next(Duration::from_secs(30)) <= MAX_RETRY_AFTER);
    }
}
