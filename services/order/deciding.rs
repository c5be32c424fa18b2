//! Deciding a pending order: an admin's approval or rejection, or the customer's cancellation, and
//! the units a rejection or cancellation gives back.

use sqlx::PgPool;
use uuid::Uuid;

use crate::shared::call::CallContext;

use super::{
    domain::{Decision, Order},
    error::OrderError,
    placing::holds::DealsClient,
    store,
};

/// How long the release of a rejected or cancelled order's units may take before it is left to
/// the expiry worker.
const RELEASE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Decides orders over the database and deal-service.
pub struct Deciding {
    pub pool: PgPool,
    pub deals: DealsClient,
}

impl Deciding {
    /// Approves, rejects or cancels a pending order. The state moves first, in one conditional
    /// statement, so of concurrent decisions exactly one passes and no lock is held across the call
    /// to deal-service. Rejected and cancelled orders then give their units back; if that call
    /// fails, the decision stands and the expiry worker completes the release (a release is
    /// idempotent, so it happens exactly once).
    ///
    /// With an `owner`, only that customer's order can be decided; another's is NOT_FOUND.
    pub async fn decide(&self, id: Uuid, decision: Decision, owner: Option<&str>) -> Result<Order, OrderError> {
        let mut attempts = 0;
        let order = loop {
            if let Some(order) = store::decide(&self.pool, id, decision.outcome(), owner).await? {
                break order;
            }
            let current = store::get_order(&self.pool, id).await?.ok_or(OrderError::OrderNotFound)?;
            let current = visible_to(current, owner)?;
            decision.check(current.state)?;
            // Pending after all: the order was recorded between the two statements. Decide again.
            attempts += 1;
            if attempts == 3 {
                return Err(OrderError::Internal("order kept changing while being decided".into()));
            }
        };
        if decision.releases_units() {
            match self.deals.release(&CallContext::detached(RELEASE_DEADLINE), id).await {
                Ok(()) => store::mark_units_released(&self.pool, id).await?,
                Err(err) => {
                    tracing::warn!(order = %id, error = ?err, "units not released; the expiry worker will release them")
                }
            }
        }
        tracing::debug!(order = %id, state = order.state.as_str(), "order decided");
        Ok(order)
    }
}

/// Another customer's order is NOT_FOUND, so order ids reveal nothing.
pub fn visible_to(order: Order, customer: Option<&str>) -> Result<Order, OrderError> {
    match customer {
        Some(customer) if customer != order.customer_id => Err(OrderError::OrderNotFound),
        _ => Ok(order),
    }
}
