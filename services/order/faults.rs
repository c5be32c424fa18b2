//! Test-only fault injection: makes order-service fail between reserving units and recording the
//! order, as a crash there would. Compiled out of release builds, where [`Faults`] is empty and
//! [`Faults::after_reserve`] always succeeds.

#[cfg(debug_assertions)]
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::error::OrderError;

/// Faults to inject; none by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every n-th order fails after its units are reserved (0: none).
    #[cfg(debug_assertions)]
    fail_after_reserve_every: u64,
    #[cfg(debug_assertions)]
    orders_seen: Arc<AtomicU64>,
}

impl Faults {
    /// Makes every `n`-th order fail right after its units are reserved, leaving the hold behind.
    #[cfg(debug_assertions)]
    pub fn fail_after_reserve_every(n: u64) -> Self {
        Self { fail_after_reserve_every: n, orders_seen: Arc::default() }
    }

    /// Called between the reservation and the order write.
    pub(super) fn after_reserve(&self) -> Result<(), OrderError> {
        #[cfg(debug_assertions)]
        if self.fail_after_reserve_every > 0 {
            let seen = self.orders_seen.fetch_add(1, Ordering::Relaxed) + 1;
            if seen % self.fail_after_reserve_every == 0 {
                return Err(OrderError::Internal("injected fault after reserve".into()));
            }
        }
        Ok(())
    }
}
