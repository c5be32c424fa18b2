//! Customer ids, a rule of both services: order-service takes them from tokens and admins' filters,
//! deal-service counts a customer's units against a deal's per-customer limit.

use super::status::Violations;

/// The longest customer id, in characters.
pub const MAX_CUSTOMER_ID_CHARS: usize = 128;

/// Validates a customer id for `field`: 1 to 128 characters, no control characters.
pub fn customer_id(field: &str, value: &str, violations: &mut Violations) -> Option<String> {
    if value.is_empty() {
        violations.add(field, "is required");
    } else if value.chars().count() > MAX_CUSTOMER_ID_CHARS {
        violations.add(field, format!("must be at most {MAX_CUSTOMER_ID_CHARS} characters"));
    } else if value.chars().any(char::is_control) {
        violations.add(field, "must not contain control characters");
    } else {
        return Some(value.to_owned());
    }
    None
}
