//! The one error type of order-service and its one mapping onto gRPC status codes.

use std::sync::Arc;

use tonic::{Code, Status};

use crate::shared::{auth, status};

use super::{
    DOMAIN,
    convert::order_state_to_proto,
    domain::{NotPending, OrderState},
};

/// The retry delay suggested when deal-service could not be reached.
const DEAL_SERVICE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// Everything an order-service request can fail with. Cloneable, so that a batch call that failed
/// answers every request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrderError {
    /// The request is malformed; every bad field is named.
    #[error("invalid argument: {0:?}")]
    InvalidArgument(status::Violations),
    /// The caller may not make this call.
    #[error("refused: {0}")]
    Refused(#[from] auth::Refusal),
    /// No order has that name.
    #[error("order not found")]
    OrderNotFound,
    /// The order has left PENDING_APPROVAL, so it can no longer be approved, rejected or cancelled.
    #[error("order not pending but {state:?}")]
    OrderNotPending { state: OrderState },
    /// The deal service refused the reservation (deal unknown, expired, sold out, price changed):
    /// its status and details go to the client as they are.
    #[error("deal-service refused: {0:?}")]
    DealRefused(Status),
    /// The order was not approved by its deadline: it expired, and can no longer change.
    #[error("order expired")]
    OrderExpired,
    /// The request id names another order.
    #[error("request id reused")]
    RequestIdReused,
    /// The order could not be recorded in time after its units were reserved; they were (or will be)
    /// given back, and nothing was ordered.
    #[error("order abandoned")]
    OrderAbandoned,
    /// The deal service did not answer in time or could not be reached.
    #[error("deal-service unavailable ({code:?})")]
    DealServiceUnavailable { code: Code },
    /// The call's deadline passed before its order was recorded; whatever was held for it is given
    /// back.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// Something that should not happen; the cause is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// The database failed; the cause is logged, not sent.
    #[error("database: {0}")]
    Database(Arc<sqlx::Error>),
}

impl From<sqlx::Error> for OrderError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(Arc::new(err))
    }
}

/// A failure shared by every order of a batch.
impl From<Arc<sqlx::Error>> for OrderError {
    fn from(err: Arc<sqlx::Error>) -> Self {
        Self::Database(err)
    }
}

impl From<NotPending> for OrderError {
    fn from(NotPending(state): NotPending) -> Self {
        match state {
            OrderState::Expired => Self::OrderExpired,
            state => Self::OrderNotPending { state },
        }
    }
}

impl From<status::Violations> for OrderError {
    fn from(violations: status::Violations) -> Self {
        Self::InvalidArgument(violations)
    }
}

impl From<OrderError> for Status {
    fn from(err: OrderError) -> Self {
        match err {
            OrderError::InvalidArgument(violations) => violations.into_status(DOMAIN),
            OrderError::Refused(refusal) => refusal.into_status(DOMAIN),
            OrderError::OrderNotFound => {
                status::with_reason(Code::NotFound, DOMAIN, "ORDER_NOT_FOUND", "no order has that name", [])
            }
            OrderError::OrderNotPending { state } => status::with_reason(
                Code::FailedPrecondition,
                DOMAIN,
                "ORDER_NOT_PENDING",
                format!("the order is {} and can no longer change", order_state_to_proto(state).as_str_name()),
                [("state", order_state_to_proto(state).as_str_name().to_owned())],
            ),
            OrderError::OrderExpired => status::with_reason(
                Code::FailedPrecondition,
                DOMAIN,
                "ORDER_EXPIRED",
                "the order was not approved by its approve_deadline and expired; its units go back to the deal",
                [],
            ),
            OrderError::DealRefused(status) => status,
            OrderError::RequestIdReused => status::with_reason(
                Code::AlreadyExists,
                DOMAIN,
                "REQUEST_ID_REUSED",
                "that request_id placed another order; use a new request_id for a new order",
                [],
            ),
            OrderError::OrderAbandoned => status::with_reason(
                Code::Aborted,
                DOMAIN,
                "ORDER_ABANDONED",
                "the order could not be recorded in time and was abandoned; nothing was ordered, retry with a new request_id",
                [],
            ),
            OrderError::DealServiceUnavailable { code } => status::retryable(
                code,
                DOMAIN,
                "DEAL_SERVICE_UNAVAILABLE",
                "the deal service did not answer; nothing was ordered, retry later",
                DEAL_SERVICE_RETRY_AFTER,
            ),
            OrderError::DeadlineExceeded => status::with_reason(
                Code::DeadlineExceeded,
                DOMAIN,
                "DEADLINE_EXCEEDED",
                "the call's deadline passed before the order was recorded; nothing was ordered",
                [],
            ),
            OrderError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                status::internal(DOMAIN)
            }
            OrderError::Database(err) => status::from_database_error(DOMAIN, &err),
        }
    }
}
