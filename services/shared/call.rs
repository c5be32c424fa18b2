//! What a call carries that the work it starts must honour: its deadline (the caller's
//! `grpc-timeout`, or the server's default), its request id, and its W3C trace context. A
//! service that calls another passes all three on, the deadline shortened by a margin for the work
//! left after that call.

use std::time::{Duration, Instant};

use tonic::{
    Request,
    metadata::{AsciiMetadataValue, MetadataMap},
};
use tower_http::request_id::RequestId;

use super::server::DEFAULT_DEADLINE;

/// The headers of the W3C trace context, passed on as they came.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The deadline and identity of one incoming call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// The call's `x-request-id` (given by the caller or made by the call stack).
    pub request_id: Option<AsciiMetadataValue>,
    // Passed on as it came (the client's call span replaces it when spans are exported).
    trace: Vec<(&'static str, AsciiMetadataValue)>,
}

impl CallContext {
    /// The context of `request`, received now (or when admission saw it arrive).
    pub fn of<T>(request: &Request<T>) -> Self {
        let timeout =
            grpc_timeout(request.metadata()).map_or(DEFAULT_DEADLINE, |timeout| timeout.min(DEFAULT_DEADLINE));
        // The deadline admission computed when the call arrived: time spent waiting for a permit
        // is the caller's time too.
        let deadline = request
            .extensions()
            .get::<super::layers::admission::CallDeadline>()
            .map_or_else(|| Instant::now() + timeout, |deadline| deadline.0);
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .and_then(|id| AsciiMetadataValue::try_from(id.header_value().as_bytes()).ok());
        let trace = TRACE_HEADERS
            .iter()
            .filter_map(|name| request.metadata().get(*name).map(|value| (*name, value.clone())))
            .collect();
        Self { deadline, request_id, trace }
    }

    /// A context without a caller, for work of our own (a background release) with `timeout`.
    pub fn detached(timeout: Duration) -> Self {
        Self { deadline: Instant::now() + timeout, request_id: None, trace: Vec::new() }
    }

    /// The time left until the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Whether the caller has stopped waiting.
    pub fn expired(&self) -> bool {
        self.remaining().is_zero()
    }

    /// Puts the request id and trace context on an outgoing call: the caller's `traceparent` as it
    /// came (when spans are exported, the call's client span then puts its own, a child of it).
    pub fn propagate(&self, metadata: &mut MetadataMap) {
        if let Some(id) = &self.request_id {
            metadata.insert("x-request-id", id.clone());
        }
        for (name, value) in &self.trace {
            metadata.insert(*name, value.clone());
        }
    }
}

/// The `grpc-timeout` header: an integer of at most 8 digits and a unit (H, M, S, m, u, n).
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    grpc_timeout_of(metadata.as_ref())
}

/// [`grpc_timeout`], from a request's HTTP headers.
pub fn grpc_timeout_of(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        metadata
    }

    #[test]
    fn grpc_timeout_reads_every_unit_and_refuses_the_malformed() {
        assert_eq!(grpc_timeout(&with_timeout("2S")), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(&with_timeout("150m")), Some(Duration::from_millis(150)));
        assert_eq!(grpc_timeout(&with_timeout("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&with_timeout("250000u")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&with_timeout("5n")), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(&with_timeout(bad)), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn a_call_without_a_deadline_gets_the_servers_default_and_a_longer_one_is_capped() {
        let mut request = Request::new(());
        assert!(CallContext::of(&request).remaining() > DEFAULT_DEADLINE - Duration::from_secs(1));
        *request.metadata_mut() = with_timeout("1H");
        assert!(CallContext::of(&request).remaining() <= DEFAULT_DEADLINE);
        *request.metadata_mut() = with_timeout("1n");
        std::thread::sleep(Duration::from_millis(1));
        assert!(CallContext::of(&request).expired());
    }
}
