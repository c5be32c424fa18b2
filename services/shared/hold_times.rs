//! The timing of the reservation protocol (docs/reservations.md), which order-service and the
//! expiry worker share: order-service must record an order soon after its units were held; the
//! expiry worker resolves holds that stayed unresolved much longer.

use std::time::Duration;

/// order-service records an order only within this long of its hold's creation (checked by the
/// insert itself, against the database clock); later, it gives the attempt up.
pub const ORDER_WRITE_WINDOW: Duration = Duration::from_secs(10);

/// The expiry worker resolves a hold (confirms it if its order exists, releases it if not) once it
/// is this old; and it finishes the release of a rejected or cancelled order that has waited this
/// long. Much longer than the write window, so no order can still be recorded for a hold it
/// releases.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(30);
