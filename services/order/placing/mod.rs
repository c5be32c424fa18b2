//! Placing an order (CreateOrder), by the protocol of docs/reservations.md: reserve a hold (named
//! by the order id) from deal-service within the caller's deadline, record the order within the
//! write window, confirm the hold after replying; an attempt that ends otherwise is abandoned at
//! once.
//!
//! - [`reserving`]: the reservations of one deal coalesced into batch calls, and confirmations.
//! - [`holds`]: the client of deal-service's HoldService, and its seam ([`holds::HoldCalls`]).
//! - [`recording`]: the order inserts coalesced into one statement.
//! - [`abandon`]: an attempt given up: its id marked, its hold released.
//! - [`stock`]: what admission learns from deal-service's refusals (sold out, ended).

pub mod abandon;
pub mod holds;
pub mod recording;
pub mod reserving;
pub mod stock;

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::shared::{call::CallContext, hold_times::ORDER_WRITE_WINDOW, layers::admission::stock::StockBoard};

use super::{
    domain::{NewOrder, Order},
    error::OrderError,
    store::{self, OrderInsert},
};

use self::{
    abandon::Attempt,
    holds::DealsClient,
    recording::{Recorded, Recorder},
    reserving::Reserving,
};

/// The least time left for which a reservation is still started: below it the caller could not be
/// answered in time, and the hold would only be abandoned.
const MIN_TIME_TO_PLACE: Duration = Duration::from_millis(60);
/// What placing an order needs.
pub struct Placing {
    pool: PgPool,
    deals: DealsClient,
    reserving: Reserving,
    recorder: Recorder,
    /// The deals found sold out or ended, which admission answers at once.
    stock: StockBoard,
}

impl Placing {
    /// Placing orders recorded in `pool`, their units held through `deals`, marking on `stock` the
    /// deals found sold out or ended.
    pub fn new(pool: PgPool, deals: DealsClient, stock: StockBoard) -> Self {
        Self { reserving: Reserving::new(deals.clone()), recorder: Recorder::new(pool.clone()), pool, deals, stock }
    }

    /// Places `new` for the call `context`, under `id` (the request id, or a fresh one).
    pub async fn place(&self, context: &CallContext, id: Uuid, new: &NewOrder) -> Result<Order, OrderError> {
        if context.remaining() < MIN_TIME_TO_PLACE {
            return Err(OrderError::DeadlineExceeded);
        }
        // From here until the order is recorded, a hold may exist that nobody will order.
        let mut attempt = Attempt::begin(self.pool.clone(), self.deals.clone(), id);
        let reserved = match self.reserving.reserve(context, id, new).await {
            Ok(reserved) => reserved,
            Err(err) => return self.after_refusal(&mut attempt, new, err).await,
        };
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
