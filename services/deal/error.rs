//! The one error type of deal-service and its one mapping onto gRPC status codes.

use std::sync::Arc;

use tonic::{Code, Status};

use crate::shared::{auth, money::Price, status};

use super::DOMAIN;

/// The retry delay a watcher is told when the server shuts down or has as many watchers as it may.
const WATCH_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything a deal-service request can fail with. Cloneable, so that one failed batch of
/// reservations answers every request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DealError {
    /// The request is malformed; every bad field is named.
    #[error("invalid argument: {0:?}")]
    InvalidArgument(status::Violations),
    /// The caller has none of these roles.
    #[error("refused: {0}")]
    Refused(#[from] auth::Refusal),
    /// No deal has that name.
    #[error("deal not found")]
    DealNotFound,
    /// No reservation has that id.
    #[error("reservation not found")]
    ReservationNotFound,
    /// The deal has expired (or ended at the daily reset) and can be neither ordered nor changed.
    #[error("deal expired")]
    DealExpired,
    /// The deal has not started yet.
    #[error("deal not started")]
    DealNotStarted,
    /// Fewer units are left than were asked for.
    #[error("{requested} units requested, {available} left")]
    InsufficientUnits { requested: i32, available: i32 },
    /// The customer would hold more of the deal than its per-customer limit; `remaining` more
    /// units are allowed.
    #[error("per-customer limit {limit} reached, {remaining} left")]
    PerCustomerLimitExceeded { limit: i32, remaining: i32 },
    /// The deal's price is not the one the customer was shown.
    #[error("price changed to {current}")]
    PriceChanged { current: Price },
    /// An update would lower total units below the units already reserved.
    #[error("total units below the {sold} reserved")]
    TotalUnitsBelowSold { sold: i32 },
    /// The start time of a deal that has started cannot change.
    #[error("start time locked")]
    StartTimeLocked,
    /// The reservation id was used before for another deal or quantity.
    #[error("reservation id reused")]
    ReservationIdReused,
    /// The reservation was released; it can be neither taken again nor confirmed.
    #[error("reservation released")]
    ReservationReleased,
    /// A customer asked to join a waitlist while the deal has enough units left for it.
    #[error("{available} units available")]
    UnitsAvailable { available: i32 },
    /// A join's request id was used before for another deal, quantity or customer.
    #[error("request id reused")]
    RequestIdReused,
    /// No waitlist entry of the caller has that name.
    #[error("waitlist entry not found")]
    WaitlistEntryNotFound,
    /// The entry still waits: there is no offer to claim.
    #[error("no offer made yet")]
    OfferNotMade,
    /// The entry's offer ended (not claimed in time, or the deal ended).
    #[error("offer expired")]
    OfferExpired,
    /// The entry was claimed or left; it can be neither claimed nor left again.
    #[error("waitlist entry closed")]
    WaitlistEntryClosed,
    /// A request of a batch whose own deadline passed before its batch started: nothing was done.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// This server streams as many WatchDeal calls as `--max-watchers` allows.
    #[error("too many watchers")]
    TooManyWatchers,
    /// The server is shutting down: its WatchDeal streams end and new ones are refused.
    #[error("shutting down")]
    ShuttingDown,
    /// Something that cannot happen did (a batch that crashed, a row that vanished); the cause
    /// is logged, not sent.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The database failed; the cause is logged, not sent.
    #[error("database: {0}")]
    Database(Arc<sqlx::Error>),
}

impl From<sqlx::Error> for DealError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(Arc::new(err))
    }
}

impl From<status::Violations> for DealError {
    fn from(violations: status::Violations) -> Self {
        Self::InvalidArgument(violations)
    }
}

impl DealError {
    /// The `ErrorInfo` reason clients get, also the outcome label of the reservation metrics.
    pub fn reason(&self) -> &'static str {
        use DealError::*;
        match self {
            InvalidArgument(_) => "INVALID_ARGUMENT",
            Refused(auth::Refusal::NoCredentials) => "UNAUTHENTICATED",
            Refused(auth::Refusal::LacksRole(_)) => "PERMISSION_DENIED",
            DealNotFound => "DEAL_NOT_FOUND",
            ReservationNotFound => "RESERVATION_NOT_FOUND",
            DealExpired => "DEAL_EXPIRED",
            DealNotStarted => "DEAL_NOT_STARTED",
            InsufficientUnits { .. } => "INSUFFICIENT_UNITS",
            PriceChanged { .. } => "PRICE_CHANGED",
            PerCustomerLimitExceeded { .. } => "PER_CUSTOMER_LIMIT_EXCEEDED",
            TotalUnitsBelowSold { .. } => "TOTAL_UNITS_BELOW_SOLD",
            StartTimeLocked => "START_TIME_LOCKED",
            ReservationIdReused => "RESERVATION_ID_REUSED",
            ReservationReleased => "RESERVATION_RELEASED",
            Database(err) if crate::shared::db::is_unavailable(err) => "DATABASE_UNAVAILABLE",
            TooManyWatchers => "TOO_MANY_WATCHERS",
            ShuttingDown => "SHUTTING_DOWN",
            DeadlineExceeded => "DEADLINE_EXCEEDED",
            UnitsAvailable { .. } => "UNITS_AVAILABLE",
            RequestIdReused => "REQUEST_ID_REUSED",
            WaitlistEntryNotFound => "WAITLIST_ENTRY_NOT_FOUND",
            OfferNotMade => "OFFER_NOT_MADE",
            OfferExpired => "OFFER_EXPIRED",
            WaitlistEntryClosed => "WAITLIST_ENTRY_CLOSED",
            Internal(_) | Database(_) => "INTERNAL",
        }
    }
}

impl From<DealError> for Status {
    fn from(err: DealError) -> Self {
        use DealError::*;
        let name = err.reason();
        let reason = |code, _reason: &str, message: &str| status::with_reason(code, DOMAIN, name, message, []);
        match err {
            InvalidArgument(violations) => violations.into_status(DOMAIN),
            Refused(refusal) => refusal.into_status(DOMAIN),
            DealNotFound => reason(Code::NotFound, "DEAL_NOT_FOUND", "no deal has that name"),
            ReservationNotFound => reason(Code::NotFound, "RESERVATION_NOT_FOUND", "no reservation has that id"),
            DealExpired => reason(Code::FailedPrecondition, "DEAL_EXPIRED", "the deal has expired"),
            DealNotStarted => reason(Code::FailedPrecondition, "DEAL_NOT_STARTED", "the deal has not started yet"),
            InsufficientUnits { requested, available } => status::with_reason(
                Code::FailedPrecondition,
                DOMAIN,
                name,
                format!("{requested} units requested but only {available} left"),
                [("requested_units", requested.to_string()), ("available_units", available.to_string())],
            ),
            PriceChanged { current } => status::with_reason(
                Code::FailedPrecondition,
                DOMAIN,
                name,
                format!("the deal's price is now {current}"),
                [("current_price", current.to_string())],
            ),
            PerCustomerLimitExceeded { limit, remaining } => status::with_reason(
                Code::FailedPrecondition,
                DOMAIN,
                name,
                format!("a customer may hold at most {limit} units of this deal; {remaining} more are allowed"),
                [("limit", limit.to_string()), ("remaining", remaining.to_string())],
            ),
            TotalUnitsBelowSold { sold } => status::with_reason(
                Code::FailedPrecondition,
                DOMAIN,
                name,
                format!("total_units cannot go below the {sold} units already reserved"),
                [("reserved_units", sold.to_string())],
            ),
            StartTimeLocked => reason(
                Code::FailedPrecondition,
                "START_TIME_LOCKED",
                "the deal has started; its start_time can no longer change",
            ),
            ReservationIdReused => reason(
                Code::AlreadyExists,
                "RESERVATION_ID_REUSED",
                "that reservation_id was used for another deal or quantity",
            ),
            ReservationReleased => reason(
                Code::FailedPrecondition,
                "RESERVATION_RELEASED",
                "that reservation was released; reserve under a new id",
            ),
            UnitsAvailable { available } => status::with_reason(
                Code::FailedPrecondition,
                DOMAIN,
                name,
                format!("{available} units are left, enough for this request: order them instead of waiting"),
                [("available_units", available.to_string())],
            ),
            RequestIdReused => reason(
                Code::AlreadyExists,
                "REQUEST_ID_REUSED",
                "that request_id was used for another deal, quantity or customer",
            ),
            WaitlistEntryNotFound => {
                reason(Code::NotFound, "WAITLIST_ENTRY_NOT_FOUND", "no waitlist entry of yours has that name")
            }
            OfferNotMade => reason(
                Code::FailedPrecondition,
                "OFFER_NOT_MADE",
                "the entry is still waiting: no units have been offered to it yet",
            ),
            OfferExpired => reason(Code::FailedPrecondition, "OFFER_EXPIRED", "the entry's offer has ended"),
            WaitlistEntryClosed => reason(
                Code::FailedPrecondition,
                "WAITLIST_ENTRY_CLOSED",
                "the entry was claimed or left; it is no longer in the waitlist",
            ),
            DeadlineExceeded => reason(
                Code::DeadlineExceeded,
                "DEADLINE_EXCEEDED",
                "the request's timeout passed before its batch started; nothing was reserved",
            ),
            // A client that reads nothing finds its stream cut when the server's connections close.
            ShuttingDown => status::retryable(
                Code::Unavailable,
                DOMAIN,
                "SHUTTING_DOWN",
                "the server is shutting down; watch again",
                WATCH_AGAIN_AFTER,
            ),
            TooManyWatchers => status::retryable(
                Code::ResourceExhausted,
                DOMAIN,
                "TOO_MANY_WATCHERS",
                "this server watches as many deals as it may; retry later or elsewhere",
                WATCH_AGAIN_AFTER,
            ),
            Internal(cause) => {
                tracing::error!(cause, "internal error");
                status::internal(DOMAIN)
            }
            Database(err) => status::from_database_error(DOMAIN, &err),
        }
    }
}
