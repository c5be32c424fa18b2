//! The timing of the reservation protocol (docs/reservations.md), shared by order-service, which
//! must record an order soon after reserving its units, and the expiry worker, which resolves holds
//! that stayed unresolved much longer.

use std::time::Duration;

/// order-service records an order only within this long of its hold's creation (checked by the
/// insert itself, against the database clock); later, it gives the attempt up.
pub const ORDER_WRITE_WINDOW: Duration = Duration::from_secs(10);

/// The expiry worker resolves a hold (confirms it if its order exists, releases it if not) once it
/// is this old; and it finishes the release of a rejected or cancelled order that has waited this
/// long. Much longer than the write window, so no order can still be recorded for a hold it
/// releases.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(30);
