//! Counts every call by method and gRPC status code and times it, from arrival to the end of its
//! response. A reply's status is in its headers (a trailers-only reply: every error, and every
//! call shed before reaching a service) or in its trailers: both are read. A call whose reply ends
//! without a status (the caller reset it, its connection closed, or its deadline passed) counts as
//! CANCELLED: that is what the server sent, if anything.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use http_body::{Frame, SizeHint};
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

use crate::shared::{
    methods::{self, Method},
    metrics,
};

/// Applies [`GrpcMetrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for GrpcMetrics<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = super::CallFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let mut call = Call { method: methods::lookup(request.uri().path()), started: Instant::now(), done: false };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(code) = code_in(response.headers()) {
                call.finish(code);
            }
            Ok(response.map(|body| Body::new(Observed { body, call })))
        })
    }
}

/// One call being measured; it records itself exactly once.
struct Call {
    method: Option<&'static Method>,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // The router answers UNIMPLEMENTED for paths it does not serve; label those `unknown` too.
        let method = match self.method {
            Some(method) if code != Code::Unimplemented => method,
            _ => &methods::UNKNOWN,
        };
        let (code, seconds) = (code_name(code), self.started.elapsed().as_secs_f64());
        metrics::call_handled(method, code, seconds);
        tracing::debug!(code, ms = seconds * 1000.0, "call finished");
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // A reply dropped before its status was sent: the caller went away or its deadline passed.
        self.finish(Code::Cancelled);
    }
}

fn code_in(headers: &HeaderMap) -> Option<Code> {
    headers.get("grpc-status").map(|value| Code::from_bytes(value.as_bytes()))
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the trailers pass.
    struct Observed {
        #[pin]
        body: Body,
        call: Call,
    }
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(code_in) {
                    this.call.finish(code);
                }
            }
            // tonic sends a handler's error as trailers: an error here is the transport's (the
            // stream was reset, the connection closed), as is an end before the trailers.
            Some(Err(_)) | None => this.call.finish(Code::Cancelled),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The name Prometheus users expect for `code`, as in grpc-go's interceptors.
fn code_name(code: Code) -> &'static str {
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
