//! Building `tonic::Status` replies that clients can act on: a stable `google.rpc.ErrorInfo` reason
//! on every error and a `google.rpc.BadRequest` naming every bad field. Internal causes are logged
//! here and never sent to the client.

use std::{collections::HashMap, time::Duration};

use prost::Message as _;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The retry delay suggested while the database does not answer.
const DATABASE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Every field of a request that failed validation, collected so a client learns them all at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations(Vec<(String, String)>);

impl Violations {
    /// Records that `field` (a path such as `deal.final_price`) is wrong, and why.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push((field.into(), description.into()));
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields recorded, in order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(field, _)| field.as_str())
    }

    /// `Ok(value)` when nothing was recorded, else these violations.
    pub fn into_result<T>(self, value: T) -> Result<T, Violations> {
        if self.is_empty() { Ok(value) } else { Err(self) }
    }

    /// INVALID_ARGUMENT with reason `INVALID_ARGUMENT` and one field violation per bad field.
    pub fn into_status(self, domain: &str) -> Status {
        let message =
            self.0.iter().map(|(field, description)| format!("{field}: {description}")).collect::<Vec<_>>().join("; ");
        let mut details = ErrorDetails::with_error_info("INVALID_ARGUMENT", domain, HashMap::new());
        for (field, description) in self.0 {
            details.add_bad_request_violation(field, description);
        }
        Status::with_error_details(Code::InvalidArgument, message, details)
    }
}

/// A status with an `ErrorInfo` of `reason` in `domain`, plus metadata a client may use (for
/// example the units left).
pub fn with_reason(
    code: Code,
    domain: &str,
    reason: &str,
    message: impl Into<String>,
    metadata: impl IntoIterator<Item = (&'static str, String)>,
) -> Status {
    let metadata: HashMap<String, String> = metadata.into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
    let details = ErrorDetails::with_error_info(reason, domain, metadata);
    Status::with_error_details(code, message, details)
}

/// [`with_reason`], with a `google.rpc.RetryInfo` telling the client when to try again.
pub fn retryable(code: Code, domain: &str, reason: &str, message: impl Into<String>, retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, domain, HashMap::new());
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(code, message, details)
}

/// Maps a database error: an unreachable database is UNAVAILABLE (worth a retry), anything else is
/// INTERNAL with a generic message. The cause is logged, never sent.
pub fn from_database_error(domain: &str, err: &sqlx::Error) -> Status {
    if super::db::is_unavailable(err) {
        tracing::warn!(error = %err, "database unavailable");
        return retryable(
            Code::Unavailable,
            domain,
            "DATABASE_UNAVAILABLE",
            "the database is unavailable, retry later",
            DATABASE_RETRY_AFTER,
        );
    }
    tracing::error!(error = %err, "database error");
    internal(domain)
}

/// INTERNAL, with reason `INTERNAL` and nothing of the cause (which the caller logs).
pub fn internal(domain: &str) -> Status {
    with_reason(Code::Internal, domain, "INTERNAL", "internal error", [])
}

/// `status` as a `google.rpc.Status` message (one request's error in a batch's reply): its code,
/// message and details. A status built with details carries them encoded as exactly this message.
pub fn to_message(status: &Status) -> tonic_types::pb::Status {
    let decoded =
        (!status.details().is_empty()).then(|| tonic_types::pb::Status::decode(status.details()).ok()).flatten();
    decoded.unwrap_or_else(|| tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    })
}

/// The status a `google.rpc.Status` message stands for, its details readable as a unary call's
/// are (`StatusExt::get_error_details`).
pub fn from_message(message: tonic_types::pb::Status) -> Status {
    let code = Code::from(message.code);
    let text = message.message.clone();
    Status::with_details(code, text, message.encode_to_vec().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_every_field() {
        let mut violations = Violations::default();
        violations.add("deal.product_name", "must not be blank");
        violations.add("deal.total_units", "must be at least 1");
        let status = violations.into_status("deal.topkart.com");

        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .expect("bad request details")
            .field_violations
            .iter()
            .map(|violation| violation.field.clone())
            .collect();
        assert_eq!(fields, ["deal.product_name", "deal.total_units"]);
        assert_eq!(details.error_info().expect("error info").reason, "INVALID_ARGUMENT");
    }

    #[test]
    fn a_status_sent_as_a_message_reads_back_the_same_details_and_all() {
        let refused =
            retryable(Code::Unavailable, "deal.topkart.com", "DATABASE_UNAVAILABLE", "later", DATABASE_RETRY_AFTER);
        let back = from_message(to_message(&refused));
        assert_eq!((back.code(), back.message()), (Code::Unavailable, "later"));
        let details = back.get_error_details();
        assert_eq!(details.error_info().expect("error info").reason, "DATABASE_UNAVAILABLE");
        assert_eq!(details.retry_info().expect("retry info").retry_delay, Some(DATABASE_RETRY_AFTER));
        // A bare status (the transport's) keeps its code and message.
        let bare = from_message(to_message(&Status::deadline_exceeded("too late")));
        assert_eq!((bare.code(), bare.message()), (Code::DeadlineExceeded, "too late"));
        assert!(bare.get_error_details().error_info().is_none());
    }
}
