//! How many units one order may take: a rule of both services (order-service validates the
//! request, deal-service the reservation it makes).

use super::status::Violations;

/// The most units one reservation (one order) may take.
pub const MAX_QUANTITY: i32 = 100;

/// Validates a quantity of units for `field`: 1 to [`MAX_QUANTITY`].
pub fn quantity(field: &str, quantity: i32, violations: &mut Violations) -> Option<i32> {
    if (1..=MAX_QUANTITY).contains(&quantity) {
        Some(quantity)
    } else {
        violations.add(field, format!("must be between 1 and {MAX_QUANTITY}"));
        None
    }
}
