//! The access log: a line at INFO, in the call's span (so with its method, request id, caller
//! subject and trace id), for every call that failed and for a sample of those that succeeded,
//! with the status code, the reason the error gives (`google.rpc.ErrorInfo`) and the duration.
//! Never the token: the span has only the subject the token named. Lines are capped per second
//! (`--access-log-max-per-second`): a flood of refused calls would otherwise cost more in logging
//! than in refusing; the metrics count every call, and the next line says how many were left out.
//! Calls without a line are logged at DEBUG.

use std::{
    num::NonZeroU32,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::HeaderMap;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// The defaults of `--access-log-ok-sample` and `--access-log-max-per-second`.
const DEFAULT_OK_SAMPLE: f64 = 0.0;
const DEFAULT_MAX_PER_SECOND: u32 = 200;

struct AccessLog {
    /// One successful call in this many gets a line; 0 for none.
    ok_every: u64,
    calls_ok: AtomicU64,
    lines: DefaultDirectRateLimiter,
    left_out: AtomicU64,
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// Sets the share of successful calls logged (0 to 1) and the most lines per second; once, before
/// the first call (later calls change nothing).
pub fn configure(ok_sample: f64, max_per_second: u32) {
    let _ = ACCESS_LOG.set(AccessLog::new(ok_sample, max_per_second));
}

fn access_log() -> &'static AccessLog {
    ACCESS_LOG.get_or_init(|| AccessLog::new(DEFAULT_OK_SAMPLE, DEFAULT_MAX_PER_SECOND))
}

impl AccessLog {
    fn new(ok_sample: f64, max_per_second: u32) -> Self {
        let ok_every = if ok_sample > 0.0 { (1.0 / ok_sample).round().max(1.0) as u64 } else { 0 };
        let per_second = NonZeroU32::new(max_per_second).unwrap_or(NonZeroU32::MIN);
        Self {
            ok_every,
            calls_ok: AtomicU64::new(0),
            lines: RateLimiter::direct(Quota::per_second(per_second)),
            left_out: AtomicU64::new(0),
        }
    }

    /// Whether a call that ended with `code` gets a line.
    fn wants(&self, code: Code) -> bool {
        if code == Code::Ok {
            self.ok_every > 0 && self.calls_ok.fetch_add(1, Ordering::Relaxed).is_multiple_of(self.ok_every)
        } else {
            true
        }
    }
}

/// Logs a call that ended with `code` (its status in `status`, when it sent one) after `seconds`;
/// call it inside the call's span.
pub fn call_ended(code: Code, status: Option<&HeaderMap>, seconds: f64) {
    access_log().call_ended(code, status, seconds);
}

impl AccessLog {
    fn call_ended(&self, code: Code, status: Option<&HeaderMap>, seconds: f64) {
        let ms = seconds * 1000.0;
        if !self.wants(code) || self.lines.check().is_err() {
            if code != Code::Ok {
                self.left_out.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(code = code_name(code), ms, "call finished");
            return;
        }
        let reason = status.and_then(reason_in).unwrap_or_default();
        let left_out = self.left_out.swap(0, Ordering::Relaxed);
        tracing::info!(code = code_name(code), reason, ms, lines_left_out = left_out, "call finished");
    }
}

/// The `ErrorInfo` reason in a reply's status details, if any.
fn reason_in(status: &HeaderMap) -> Option<String> {
    let status = Status::from_header_map(status)?;
    status.get_error_details().error_info().map(|info| info.reason.clone())
}

/// `code` as gRPC names it (`NOT_FOUND`), as clients and the documents show it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::layers::observe::tests::Lines;

    /// The lines `log` writes at INFO and above for calls that ended with the statuses `ended`.
    fn info_lines(log: &AccessLog, ended: &[Status]) -> Vec<String> {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for status in ended {
                let headers = status.clone().into_http::<()>().headers().clone();
                log.call_ended(status.code(), Some(&headers), 0.002);
            }
        });
        lines.all()
    }

    fn refused(reason: &str) -> Status {
        let info = tonic_types::ErrorDetails::with_error_info(reason, "order.topkart.com", []);
        Status::with_error_details(Code::FailedPrecondition, "sold out", info)
    }

    #[test]
    fn a_failed_call_gets_an_info_line_with_its_code_and_reason_and_a_successful_one_none() {
        let lines = info_lines(&AccessLog::new(0.0, 100), &[Status::ok(""), refused("SOLD_OUT")]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.contains("INFO") && line.contains("call finished"), "{line}");
        assert!(line.contains("code=\"FAILED_PRECONDITION\"") && line.contains("reason=\"SOLD_OUT\""), "{line}");
        assert!(line.contains("ms="), "{line}");
    }

    #[test]
    fn lines_beyond_the_cap_are_left_out_and_counted_in_the_next() {
        let log = AccessLog::new(0.0, 2);
        let flood: Vec<Status> = (0..5).map(|_| refused("OVERLOADED")).collect();
        let lines = info_lines(&log, &flood);
        assert_eq!(lines.len(), 2, "two lines a second: {lines:?}");
        assert_eq!(log.left_out.load(Ordering::Relaxed), 3);
        std::thread::sleep(std::time::Duration::from_millis(600));
        let next = info_lines(&log, &[refused("OVERLOADED")]);
        assert!(next[0].contains("lines_left_out=3"), "{next:?}");
    }

    #[test]
    fn every_failed_call_and_the_sampled_share_of_successful_ones_are_wanted() {
        let log = AccessLog::new(0.25, 100);
        let wanted = (0..100).filter(|_| log.wants(Code::Ok)).count();
        assert_eq!(wanted, 25);
        assert!(log.wants(Code::NotFound) && log.wants(Code::Internal));
        let none = AccessLog::new(0.0, 100);
        assert!(!(0..100).any(|_| none.wants(Code::Ok)));
        let all = AccessLog::new(1.0, 100);
        assert!((0..100).all(|_| all.wants(Code::Ok)));
    }
}
