//! Test-only fault injection: makes order-service fail between reserving units and recording the
//! order, as a crash there would, or stop there until the test lets it go on. Compiled in only with
//! the `test-faults` cargo feature, which `scripts/test` passes and `cargo build` (debug or release)
//! leaves off: without it [`Faults`] is empty, `default` is its only constructor, and
//! [`Faults::after_reserve`] always succeeds. The binaries only ever pass `Faults::default()`.

#[cfg(feature = "test-faults")]
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

#[cfg(feature = "test-faults")]
use tokio::sync::Semaphore;

use super::error::OrderError;

/// Faults to inject; none by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every n-th order fails after its units are reserved (0: none).
    #[cfg(feature = "test-faults")]
    fail_after_reserve_every: u64,
    #[cfg(feature = "test-faults")]
    orders_seen: Arc<AtomicU64>,
    /// Every order waits here, after its units are reserved, for a permit of its own.
    #[cfg(feature = "test-faults")]
    gate: Option<Arc<Semaphore>>,
}

impl Faults {
    /// Makes every `n`-th order fail right after its units are reserved, leaving the hold behind.
    #[cfg(feature = "test-faults")]
    pub fn fail_after_reserve_every(n: u64) -> Self {
        Self { fail_after_reserve_every: n, ..Self::default() }
    }

    /// Makes every order wait, right after its units are reserved, until `gate` gives it a permit
    /// (which it keeps): the test decides how long calls stay in flight.
    #[cfg(feature = "test-faults")]
    pub fn pause_after_reserve(gate: Arc<Semaphore>) -> Self {
        Self { gate: Some(gate), ..Self::default() }
    }

    /// Called between the reservation and the order write.
    pub(super) async fn after_reserve(&self) -> Result<(), OrderError> {
        #[cfg(feature = "test-faults")]
        if let Some(gate) = &self.gate {
            gate.acquire().await.map_err(|_| OrderError::Internal("the fault gate closed".into()))?.forget();
        }
        #[cfg(feature = "test-faults")]
        if self.fail_after_reserve_every > 0 {
            let seen = self.orders_seen.fetch_add(1, Ordering::Relaxed) + 1;
            if seen.is_multiple_of(self.fail_after_reserve_every) {
                return Err(OrderError::Internal("injected fault after reserve".into()));
            }
        }
        Ok(())
    }
}
