//! Placing an order, by the protocol of docs/reservations.md: reserve a hold (named by the order
//! id) from deal-service within the caller's deadline, record the order within the write window,
//! confirm the hold after replying.
//!
//! An attempt that may have left a hold and ends without its order recorded — the caller's
//! deadline passed or it went away (the handler's future is dropped), the order was too late, or a
//! call failed — is abandoned at once ([`Attempt`]): the id is marked so no order is ever recorded
//! under it, and the hold goes back to the deal. The expiry worker stays as the safety net.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::shared::{
    call::CallContext,
    layers::admission::stock::StockBoard,
    metrics,
    reservations::{self, Abandoned, ORDER_WRITE_WINDOW},
};

use super::{
    domain::{NewOrder, Order},
    error::OrderError,
    faults::Faults,
    recording::{Recorded, Recorder},
    reserving::Reserving,
    stock,
    store::{self, OrderInsert},
};

/// The least time left for which a reservation is still started: below it the caller could not be
/// answered in time, and the hold would only be abandoned.
const MIN_TIME_TO_PLACE: Duration = Duration::from_millis(60);
/// How often, and how far apart, an abandonment looks again for a hold that a reservation still in
/// flight may yet make.
const ABANDON_LOOKS: u32 = 5;
const ABANDON_LOOK_INTERVAL: Duration = Duration::from_millis(200);
/// Abandonments running at once: each is a transaction on its deal's row, so a storm of them
/// (a surge of callers giving up) must not crowd out the reservations' batches or the pool.
const ABANDONING_AT_ONCE: usize = 8;
static ABANDONING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(ABANDONING_AT_ONCE);

/// What placing an order needs.
pub struct Placing {
    pub pool: PgPool,
    pub reserving: Reserving,
    pub recorder: Recorder,
    pub faults: Faults,
    /// The deals found sold out or ended, which admission answers at once.
    pub stock: StockBoard,
}

impl Placing {
    /// Places `new` for the call `context`, under `id` (the request id, or a fresh one).
    pub async fn place(&self, context: &CallContext, id: Uuid, new: &NewOrder) -> Result<Order, OrderError> {
        if context.remaining() < MIN_TIME_TO_PLACE {
            return Err(OrderError::DeadlineExceeded);
        }
        // From here until the order is recorded, a hold may exist that nobody will order.
        let mut attempt = Attempt::begin(self.pool.clone(), id);
        let reserved = match self.reserving.reserve(context, id, new).await {
            Ok(reserved) => reserved,
            Err(err) => return self.after_refusal(&mut attempt, new, err).await,
        };
        if let Err(err) = self.faults.after_reserve().await {
            // A simulated crash: nothing after it runs, so nothing abandons; the worker settles it.
            attempt.crashed();
            return Err(err);
        }
        if context.expired() {
            return Err(OrderError::DeadlineExceeded);
        }
        let total_price = reserved
            .unit_price
            .times(new.quantity)
            .ok_or_else(|| OrderError::Internal("order total overflows".into()))?;
        let insert = OrderInsert {
            id,
            deal_id: new.deal_id,
            customer_id: new.customer_id.clone(),
            quantity: new.quantity,
            unit_price: reserved.unit_price,
            total_price,
            placed_at: reserved.hold_time,
            write_by: reserved.hold_time + ORDER_WRITE_WINDOW,
            approve_deadline: reserved.approval_window.map(|window| reserved.hold_time + window),
        };
        match self.recorder.record(insert).await? {
            Recorded::New(order) => {
                attempt.recorded();
                self.reserving.confirm_later(id);
                tracing::debug!(order = %order.id, deal = %order.deal_id, quantity = order.quantity, "order placed");
                Ok(order)
            }
            // A retry, or a concurrent attempt with the same request id, recorded it first.
            Recorded::Existing(existing) => {
                attempt.recorded();
                placed_by(new, existing)
            }
            // Too late to record it (the write window passed, or the attempt was abandoned): the
            // attempt abandons the hold as it ends.
            Recorded::TooLate => Err(OrderError::OrderAbandoned),
        }
    }

    /// deal-service did not reserve. A retry of an order placed before gets that order, whatever
    /// deal-service says now (its hold released by a cancel, the deal expired, deal-service down).
    /// A refusal held nothing; a failure in transit may have left a hold, which is abandoned.
    async fn after_refusal(&self, attempt: &mut Attempt, new: &NewOrder, err: OrderError) -> Result<Order, OrderError> {
        if new.request_id.is_some()
            && let Some(existing) = store::get_order(&self.pool, attempt.id).await?
        {
            attempt.recorded();
            return placed_by(new, existing);
        }
        Err(match err {
            OrderError::DealRefused(status) => {
                attempt.held_nothing();
                match refusal_reason(&status).as_deref() {
                    // A retry after the first attempt was given up and its hold released.
                    Some("RESERVATION_RELEASED") => OrderError::OrderAbandoned,
                    // The request id's hold was made for another deal or quantity.
                    Some("RESERVATION_ID_REUSED") => OrderError::RequestIdReused,
                    _ => OrderError::DealRefused(stock::learn(&self.stock, new, status)),
                }
            }
            other => other,
        })
    }
}

/// A retry gets the order its request id placed; another order under that id is refused.
fn placed_by(new: &NewOrder, existing: Order) -> Result<Order, OrderError> {
    if new.placed(&existing) { Ok(existing) } else { Err(OrderError::RequestIdReused) }
}

/// The `ErrorInfo` reason of a refusal from deal-service.
fn refusal_reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|info| info.reason.clone())
}

/// One attempt at placing an order. Unless it is marked recorded (or as having held nothing), it
/// is abandoned when dropped — which is also what happens when the caller goes away mid-call and
/// tonic drops the handler's future.
struct Attempt {
    pool: PgPool,
    id: Uuid,
    settled: bool,
}

impl Attempt {
    fn begin(pool: PgPool, id: Uuid) -> Self {
        Self { pool, id, settled: false }
    }

    /// Its order is recorded (now or before): the hold is the order's.
    fn recorded(&mut self) {
        self.settled = true;
    }

    /// deal-service refused it: no hold was made for it.
    fn held_nothing(&mut self) {
        self.settled = true;
    }

    /// It stops as a crashed process would, leaving its hold to the expiry worker (tests only).
    fn crashed(&mut self) {
        self.settled = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (pool, id) = (self.pool.clone(), self.id);
        // A task of its own: the caller may be gone, and the abandonment must happen regardless.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(abandon(pool, id));
        }
    }
}

/// Abandons attempt `id` and gives its hold back. A hold that does not exist yet may still be made
/// by a reservation in flight (its reply to a caller that had gone): it is looked for a few times.
async fn abandon(pool: PgPool, id: Uuid) {
    for _ in 0..ABANDON_LOOKS {
        // A turn per look, not across the pauses between looks. The semaphore is never closed.
        let Ok(turn) = ABANDONING.acquire().await else { return };
        let abandoned = reservations::abandon(&pool, id).await;
        drop(turn);
        match abandoned {
            Ok(Abandoned::NoHold) => tokio::time::sleep(ABANDON_LOOK_INTERVAL).await,
            Ok(Abandoned::Released { units }) => {
                metrics::holds_settled("abandoned", 1);
                tracing::debug!(order = %id, units, "attempt abandoned, units released");
                return;
            }
            Ok(Abandoned::Ordered | Abandoned::AlreadyReleased) => return,
            Err(err) => {
                tracing::warn!(order = %id, error = %err, "attempt not abandoned; the expiry worker will release its hold");
                return;
            }
        }
    }
}
