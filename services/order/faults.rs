//! Test-only fault injection: makes order-service fail between reserving units and recording the
//! order, as a crash there would, or stop there until the test lets it go on; holds its batch calls
//! to deal-service until the test lets them go, or loses one's reply. Compiled in only with
//! the `test-faults` cargo feature, which `scripts/test` passes and `cargo build` (debug or release)
//! leaves off: without it [`Faults`] is empty, `default` is its only constructor, and
//! [`Faults::after_reserve`] always succeeds. The binaries only ever pass `Faults::default()`.

#[cfg(feature = "test-faults")]
use std::sync::{
    Arc, Mutex,
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
    /// Every BatchReserveUnits call waits here, before it is sent, for a permit of its own.
    #[cfg(feature = "test-faults")]
    batch_gate: Option<Arc<Semaphore>>,
    /// The size of every BatchReserveUnits call, as it reached the gate.
    #[cfg(feature = "test-faults")]
    batch_sizes: Arc<Mutex<Vec<usize>>>,
    /// The reply of this attempt of a BatchReserveUnits call (counted from 1, resends included) is
    /// lost after deal-service made it (0: none).
    #[cfg(feature = "test-faults")]
    lose_reply_of_attempt: u64,
    #[cfg(feature = "test-faults")]
    batch_attempts: Arc<AtomicU64>,
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

    /// Also holds every BatchReserveUnits call, before it is sent, until `gate` gives it a permit.
    #[cfg(feature = "test-faults")]
    pub fn pause_reserve_batches(self, gate: Arc<Semaphore>) -> Self {
        Self { batch_gate: Some(gate), ..self }
    }

    /// Also loses the reply of the `n`-th BatchReserveUnits call sent (resends count): deal-service
    /// has served it, and order-service sees the stream fail as a broken connection would make it.
    #[cfg(feature = "test-faults")]
    pub fn lose_reserve_batch_reply(self, n: u64) -> Self {
        Self { lose_reply_of_attempt: n, ..self }
    }

    /// The size of every BatchReserveUnits call made so far, in order.
    #[cfg(feature = "test-faults")]
    pub fn reserve_batch_sizes(&self) -> Vec<usize> {
        self.batch_sizes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// How many BatchReserveUnits calls were sent so far, resends included (counted only with
    /// [`Self::lose_reserve_batch_reply`]).
    #[cfg(feature = "test-faults")]
    pub fn reserve_batch_sends(&self) -> u64 {
        self.batch_attempts.load(Ordering::Relaxed)
    }

    /// Called before a BatchReserveUnits call of `size` reservations is sent.
    pub(super) async fn before_reserve_batch(&self, size: usize) {
        #[cfg(feature = "test-faults")]
        {
            self.batch_sizes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(size);
            if let Some(gate) = &self.batch_gate
                && let Ok(permit) = gate.acquire().await
            {
                permit.forget();
            }
        }
        #[cfg(not(feature = "test-faults"))]
        let _ = size;
    }

    /// The reply of a BatchReserveUnits call as order-service sees it: lost, if it is the one.
    pub(super) fn lose_reply<T>(&self, reply: Result<T, tonic::Status>) -> Result<T, tonic::Status> {
        #[cfg(feature = "test-faults")]
        if self.lose_reply_of_attempt > 0 {
            let attempt = self.batch_attempts.fetch_add(1, Ordering::Relaxed) + 1;
            if attempt == self.lose_reply_of_attempt && reply.is_ok() {
                return Err(tonic::Status::unknown("injected fault: the reply was lost"));
            }
        }
        reply
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
