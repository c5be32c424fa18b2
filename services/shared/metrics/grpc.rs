//! gRPC calls as go-grpc-prometheus counts them, so the dashboards and alerts written for it work
//! unchanged: `grpc_{server,client}_started_total`, `_handled_total` (by `grpc_code`, spelled as
//! grpc-go spells it: `NotFound`), `_handling_seconds`, `_msg_received_total` and `_msg_sent_total`,
//! each labelled `grpc_type`, `grpc_service` and `grpc_method`.
//!
//! `_handling_seconds` also carries `grpc_code`, which go-grpc-prometheus's does not: its queries sum
//! over the labels they do not name, so they work as they are, while a dashboard or an alert can
//! leave out the calls refused under a surge (`ResourceExhausted`), which admission holds for their
//! retry delay on purpose, and see what admitted buyers wait.

use metrics::{Counter, counter, histogram};
use tonic::Code;

use crate::shared::methods::Method;

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

/// The metrics of one call, counted as started when made; its messages are counted as they pass
/// (so a stream's show while it lasts), its code and duration when it ends.
pub struct CallMetrics {
    side: Side,
    method: &'static Method,
    received: Counter,
    sent: Counter,
}

impl CallMetrics {
    /// A call of `method` (the `unknown` method for a path that is none of ours) starts.
    pub fn start(side: Side, method: &'static Method) -> Self {
        let names = side.names();
        let labels = labels(method);
        counter!(names.started, &labels).increment(1);
        Self { side, method, received: counter!(names.msg_received, &labels), sent: counter!(names.msg_sent, &labels) }
    }

    /// The counter of the messages received, for the body that receives them.
    pub fn received_counter(&self) -> Counter {
        self.received.clone()
    }

    /// The counter of the messages sent, for the body that sends them.
    pub fn sent_counter(&self) -> Counter {
        self.sent.clone()
    }

    /// The call ended with `code` after `seconds`.
    pub fn handled(&self, code: Code, seconds: f64) {
        let names = self.side.names();
        let [grpc_type, service, method] = labels(self.method);
        let labels = [grpc_type, service, method, ("grpc_code", code_name(code))];
        counter!(names.handled, &labels).increment(1);
        histogram!(names.handling_seconds, &labels).record(seconds);
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
