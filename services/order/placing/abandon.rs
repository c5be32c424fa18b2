//! Abandoning an attempt at once: an attempt that may have left a hold and ends without its order
//! recorded — the caller's deadline passed or it went away (the handler's future is dropped), the
//! order was too late, or a call failed — marks its id so that no order is ever recorded under it
//! (order-service's table), then asks deal-service to release the hold (deal-service's table,
//! idempotent by id). The expiry worker stays as the safety net: a hold still held 30 s after it
//! was made, with no order, goes back to the deal then.

use std::time::Duration;

use sqlx::PgPool;
use tonic_types::StatusExt as _;
use uuid::Uuid;

use crate::{
    order::{error::OrderError, store},
    shared::{call::CallContext, metrics},
};

use super::holds::DealsClient;

/// How often, and how far apart, an abandonment looks again for a hold that a reservation still in
/// flight may yet make.
const RELEASE_LOOKS: u32 = 5;
const RELEASE_LOOK_INTERVAL: Duration = Duration::from_millis(200);
/// How long one release call may take.
const RELEASE_DEADLINE: Duration = Duration::from_secs(2);
/// Abandonment steps running at once: a release is a transaction on its deal's row, so a storm of
/// them (a surge of callers giving up) must not crowd out the reservations' batches or the pool.
const ABANDONING_AT_ONCE: usize = 8;
static ABANDONING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(ABANDONING_AT_ONCE);

/// One attempt at placing an order. Unless it is marked recorded (or as having held nothing), it
/// is abandoned when dropped — which is also what happens when the caller goes away mid-call and
/// tonic drops the handler's future.
pub struct Attempt {
    pool: PgPool,
    deals: DealsClient,
    pub id: Uuid,
    settled: bool,
}

impl Attempt {
    pub fn begin(pool: PgPool, deals: DealsClient, id: Uuid) -> Self {
        Self { pool, deals, id, settled: false }
    }

    /// Its order is recorded (now or before): the hold is the order's.
    pub fn recorded(&mut self) {
        self.settled = true;
    }

    /// deal-service refused it: no hold was made for it.
    pub fn held_nothing(&mut self) {
        self.settled = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (pool, deals, id) = (self.pool.clone(), self.deals.clone(), self.id);
        // A task of its own: the caller may be gone, and the abandonment must happen regardless.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(abandon_in_turn(pool, deals, id));
        }
    }
}

/// What [`abandon`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// The order was recorded: its hold stays, and nothing was abandoned.
    Ordered,
    /// No order will be recorded under the id, and its hold is released (now, or before).
    Released,
    /// No order will be recorded under the id; no hold was found in the time it looked (the
    /// expiry worker releases one made later).
    NoHold,
}

/// Abandons attempt `id` and logs what came of it.
async fn abandon_in_turn(pool: PgPool, deals: DealsClient, id: Uuid) {
    match abandon(&pool, &deals, id).await {
        Ok(Abandoned::Released) => {
            metrics::holds_settled("abandoned", 1);
            tracing::debug!(order = %id, "attempt abandoned, units released");
        }
        Ok(Abandoned::Ordered | Abandoned::NoHold) => {}
        Err(err) => {
            tracing::warn!(order = %id, error = ?err, "attempt not abandoned; the expiry worker will settle its hold")
        }
    }
}

/// Gives up attempt `id`: unless its order was recorded, marks the id so no order is ever recorded
/// under it, then has deal-service release its hold. A hold that does not exist yet may still be
/// made by a reservation in flight (its reply to a caller that had gone): it is looked for a few
/// times. Each step waits for a turn among the abandonments of this process, and gives it back
/// before the pause between looks: a storm of them (a surge's callers giving up together) must
/// neither crowd the deal's row nor wait behind one another's pauses.
pub async fn abandon(pool: &PgPool, deals: &DealsClient, id: Uuid) -> Result<Abandoned, OrderError> {
    let marked = in_turn(store::abandon_attempt(pool, id)).await?;
    if marked? {
        return Ok(Abandoned::Ordered);
    }
    for _ in 0..RELEASE_LOOKS {
        match in_turn(deals.release(&CallContext::detached(RELEASE_DEADLINE), id)).await? {
            Ok(()) => return Ok(Abandoned::Released),
            Err(OrderError::DealRefused(status)) if no_hold_yet(&status) => {
                tokio::time::sleep(RELEASE_LOOK_INTERVAL).await;
            }
            Err(err) => return Err(err),
        }
    }
    Ok(Abandoned::NoHold)
}

/// `step`, run once a turn among the abandonments allows.
async fn in_turn<T>(step: impl Future<Output = T>) -> Result<T, OrderError> {
    let _turn =
        ABANDONING.acquire().await.map_err(|_| OrderError::Internal("the abandonments' semaphore closed".into()))?;
    Ok(step.await)
}

/// deal-service has no hold under the id (yet).
fn no_hold_yet(status: &tonic::Status) -> bool {
    status.get_error_details().error_info().is_some_and(|info| info.reason == "RESERVATION_NOT_FOUND")
}
