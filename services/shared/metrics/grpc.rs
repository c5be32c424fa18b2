//! gRPC calls as go-grpc-prometheus counts them, so the dashboards and alerts written for it work
//! unchanged: `grpc_{server,client}_started_total`, `_handled_total` (by `grpc_code`, spelled as
//! grpc-go spells it: `NotFound`), `_handling_seconds`, `_msg_received_total` and `_msg_sent_total`,
//! each labelled `grpc_type`, `grpc_service` and `grpc_method`.
//!
//! `_handling_seconds` also carries `grpc_code`, which go-grpc-prometheus's does not: its queries sum
//! over the labels they do not name, so they work as they are, while a dashboard or an alert can
//! leave out the calls refused under a surge (`ResourceExhausted`), which admission holds for their
//! retry delay on purpose, and see what admitted buyers wait.

use std::{
    collections::HashMap,
    sync::{LazyLock, OnceLock},
};

use metrics::{Counter, Histogram, counter, histogram};
use tonic::Code;

use crate::shared::methods::{self, Method};

/// Which end of the call this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A call this process serves (`grpc_server_*`).
    Server,
    /// A call this process makes to another service (`grpc_client_*`).
    Client,
}

struct Names {
    started: &'static str,
    handled: &'static str,
    handling_seconds: &'static str,
    msg_received: &'static str,
    msg_sent: &'static str,
}

const SERVER: Names = Names {
    started: "grpc_server_started_total",
    handled: "grpc_server_handled_total",
    handling_seconds: "grpc_server_handling_seconds",
    msg_received: "grpc_server_msg_received_total",
    msg_sent: "grpc_server_msg_sent_total",
};

const CLIENT: Names = Names {
    started: "grpc_client_started_total",
    handled: "grpc_client_handled_total",
    handling_seconds: "grpc_client_handling_seconds",
    msg_received: "grpc_client_msg_received_total",
    msg_sent: "grpc_client_msg_sent_total",
};

impl Side {
    fn names(self) -> &'static Names {
        match self {
            Self::Server => &SERVER,
            Self::Client => &CLIENT,
        }
    }
}

/// One method's metrics on one side, registered on its first call: a call then only adds to
/// counters, with no lookup in the recorder's registry (which builds and hashes the labels).
struct MethodMetrics {
    started: Counter,
    received: Counter,
    sent: Counter,
    /// By code (0 to 16), registered on the first call that ends with it.
    ended: [OnceLock<(Counter, Histogram)>; 17],
}

impl MethodMetrics {
    fn register(side: Side, method: &'static Method) -> Self {
        let names = side.names();
        let labels = labels(method);
        Self {
            started: counter!(names.started, &labels),
            received: counter!(names.msg_received, &labels),
            sent: counter!(names.msg_sent, &labels),
            ended: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

/// Each method's metrics on each side, by the method's address. Used only once a recorder is
/// installed: without one, calls keep no metrics at all.
static METHOD_METRICS: LazyLock<[HashMap<usize, OnceLock<MethodMetrics>>; 2]> = LazyLock::new(|| {
    let slots = || methods::all().map(|method| (address(method), OnceLock::new())).collect();
    [slots(), slots()]
});

fn address(method: &'static Method) -> usize {
    std::ptr::from_ref(method) as usize
}

fn method_metrics(side: Side, method: &'static Method) -> Option<&'static MethodMetrics> {
    if !super::installed() {
        return None;
    }
    let slot = METHOD_METRICS[side as usize].get(&address(method))?;
    Some(slot.get_or_init(|| MethodMetrics::register(side, method)))
}

/// The metrics of one call, counted as started when made; its messages are counted as they pass
/// (so a stream's show while it lasts), its code and duration when it ends.
pub struct CallMetrics {
    side: Side,
    method: &'static Method,
    registered: Option<&'static MethodMetrics>,
}

impl CallMetrics {
    /// A call of `method` (the `unknown` method for a path that is none of ours) starts.
    pub fn start(side: Side, method: &'static Method) -> Self {
        let registered = method_metrics(side, method);
        if let Some(registered) = registered {
            registered.started.increment(1);
        }
        Self { side, method, registered }
    }

    /// The counter of the messages received, for the body that receives them.
    pub fn received_counter(&self) -> Counter {
        self.registered.map_or_else(Counter::noop, |registered| registered.received.clone())
    }

    /// The counter of the messages sent, for the body that sends them.
    pub fn sent_counter(&self) -> Counter {
        self.registered.map_or_else(Counter::noop, |registered| registered.sent.clone())
    }

    /// The call ended with `code` after `seconds`.
    pub fn handled(&self, code: Code, seconds: f64) {
        let Some(registered) = self.registered else { return };
        let Some(slot) = registered.ended.get(code as usize) else { return };
        let (handled, handling) = slot.get_or_init(|| {
            let names = self.side.names();
            let [grpc_type, service, method] = labels(self.method);
            let labels = [grpc_type, service, method, ("grpc_code", code_name(code))];
            (counter!(names.handled, &labels), histogram!(names.handling_seconds, &labels))
        });
        handled.increment(1);
        handling.record(seconds);
    }
}

fn labels(method: &'static Method) -> [(&'static str, &'static str); 3] {
    [
        ("grpc_type", method.grpc_type),
        ("grpc_service", method.service.as_str()),
        ("grpc_method", method.method.as_str()),
    ]
}

/// `code` as grpc-go's `codes.Code.String()` spells it, which go-grpc-prometheus puts in `grpc_code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_spelled_as_grpc_go_spells_them() {
        let names: Vec<_> = (0..=16).map(|code| code_name(Code::from_i32(code))).collect();
        assert_eq!(
            names,
            [
                "OK",
                "Canceled",
                "Unknown",
                "InvalidArgument",
                "DeadlineExceeded",
                "NotFound",
                "AlreadyExists",
                "PermissionDenied",
                "ResourceExhausted",
                "FailedPrecondition",
                "Aborted",
                "OutOfRange",
                "Unimplemented",
                "Internal",
                "Unavailable",
                "DataLoss",
                "Unauthenticated",
            ]
        );
    }
}
