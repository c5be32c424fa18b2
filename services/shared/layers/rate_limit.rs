//! A token bucket per caller (`governor`'s GCRA): `--rate-limit-per-second` calls a second with
//! bursts of `--rate-limit-burst`, off unless set. Callers are told apart by their token's subject,
//! or by their address when they present no valid token; order-service's own calls (the service
//! role) are never limited.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock, DefaultClock},
};

/// Who a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerKey {
    /// A verified token's subject.
    Subject(String),
    /// The peer's address, for calls without a valid token (or with authentication off).
    Peer(IpAddr),
}

/// The rate and burst every caller gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// One bucket per caller.
#[derive(Clone)]
pub struct RateLimiter {
    buckets: Arc<DefaultKeyedRateLimiter<CallerKey>>,
    clock: DefaultClock,
}

/// How often buckets full again (callers idle long enough to be back at their burst) are dropped,
/// so memory follows the callers of the last minute, not every caller ever seen.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

impl RateLimiter {
    /// Buckets for `limit`; `None` when the rate or the burst is not positive.
    pub fn new(limit: RateLimit) -> Option<Self> {
        let burst = NonZeroU32::new(limit.burst)?;
        if !(limit.per_second.is_finite() && limit.per_second > 0.0) {
            return None;
        }
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / limit.per_second))?.allow_burst(burst);
        Some(Self { buckets: Arc::new(DefaultKeyedRateLimiter::keyed(quota)), clock: DefaultClock::default() })
    }

    /// Takes a token from `key`'s bucket, or says how long until one is there.
    pub fn check(&self, key: &CallerKey) -> Result<(), Duration> {
        self.buckets.check_key(key).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops idle buckets every minute, for as long as the process runs.
    pub fn forget_idle_callers(&self) {
        let buckets = Arc::downgrade(&self.buckets);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(FORGET_IDLE_EVERY);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(buckets) = buckets.upgrade() else { return };
                buckets.retain_recent();
                buckets.shrink_to_fit();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_gets_its_own_burst_then_waits_for_the_rate() {
        let limiter = RateLimiter::new(RateLimit { per_second: 10.0, burst: 3 }).unwrap();
        let alice = CallerKey::Subject("alice".into());
        let bob = CallerKey::Subject("bob".into());
        for _ in 0..3 {
            assert_eq!(limiter.check(&alice), Ok(()));
        }
        let wait = limiter.check(&alice).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(limiter.check(&bob), Ok(()), "bob's bucket is his own");
        assert_eq!(limiter.check(&CallerKey::Peer("127.0.0.1".parse().unwrap())), Ok(()));
    }

    #[test]
    fn a_rate_or_burst_of_zero_is_no_limiter() {
        assert!(RateLimiter::new(RateLimit { per_second: 0.0, burst: 5 }).is_none());
        assert!(RateLimiter::new(RateLimit { per_second: 5.0, burst: 0 }).is_none());
    }
}
