//! Holding a deal's units for orders: the deal-service half of the protocol in
//! docs/reservations.md, served to order-service alone as `topkart.deal.internal.v1.HoldService`.
//!
//! - [`grpc`]: the service's handlers: ReserveUnits, ConfirmUnits, ReleaseUnits and their batch
//!   forms, validated and handed to the batches (or, for a claim of a waitlist offer, to
//!   [`crate::deal::waitlist`]).
//! - [`batching`]: the reservations of one deal that arrive while its previous batch is in the
//!   database go together as the next batch, in one transaction; confirmations in one statement.
//! - [`allocation`]: which requests of a batch get units, and what a retry is answered. No I/O.
//! - [`customer_limit`]: the per-customer limit's rule, for holds and waitlist entries alike.
//! - [`store`]: the statements on `reservations` (but a claim's insert, made with its waitlist entry).

pub mod allocation;
pub mod batching;
pub mod customer_limit;
pub mod grpc;
pub mod store;
