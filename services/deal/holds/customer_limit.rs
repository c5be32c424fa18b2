//! The per-customer limit: a deal's `max_units_per_customer`, the most units one customer may hold
//! of it, counting held and confirmed reservations and the units their waiting and offered waitlist
//! entries ask for.
//!
//! The totals live in `customer_holdings`, kept by triggers through one function, `move_holdings`
//! (migrations/…_customer_holdings_one_definition.sql), and read under the deal's row lock with the
//! deal itself (`deal::store::lock_deal_for_sale`); `invariant-check` recounts them from the rows.
//! Here, the rule: what a request or a waitlist entry may still take.

use crate::{
    deal::{domain::Deal, error::DealError},
    shared::status::Violations,
};

/// How many more units a customer holding `held` units of `deal` may take, when the deal limits it.
fn units_left(deal: &Deal, held: i32) -> Option<i32> {
    deal.terms.max_units_per_customer.map(|limit| (limit - held).max(0))
}

/// Why `quantity` more units would take `customer`, who holds `held` units of the deal, past its
/// per-customer limit, if they would.
pub fn refusal(deal: &Deal, customer: Option<&str>, quantity: i32, held: i32) -> Option<DealError> {
    let limit = deal.terms.max_units_per_customer?;
    if customer.is_none() {
        let mut violations = Violations::default();
        violations.add("customer_id", "is required: the deal limits the units one customer may hold");
        return Some(violations.into());
    };
    let remaining = units_left(deal, held)?;
    (quantity > remaining).then_some(DealError::PerCustomerLimitExceeded { limit, remaining })
}
