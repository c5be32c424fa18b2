//! What the operator sees of every call: a tracing span carrying its method and request id, open
//! until its reply ends, in which the handler runs, so every log line of the handler carries them
//! (not those of a streaming reply's items, which HTTP/2 polls outside it: none log today);
//! and the call counted by method and gRPC status code and timed, from arrival to the end of its
//! response. A reply's status is in its headers (a trailers-only reply: every error, and every
//! call shed before reaching a service) or in its trailers: both are read. A call whose reply ends
//! without a status (the caller reset it, its connection closed, or its deadline passed) counts as
//! CANCELLED: that is what the server sent, if anything. So does a call whose request could not be
//! read to its end because the caller went away (tonic answers that INTERNAL or UNKNOWN, to nobody):
//! an alert on INTERNAL must mean a fault of ours, not a client that gave up.
//!
//! The span is entered while the handler runs, not on every frame of the reply: a WatchDeal stream
//! sends a frame per change to each of thousands of watchers, and tower-http's `TraceLayer` (which
//! this replaces) entered the span and read the clock twice per frame, in a body wrapper of its own
//! (BENCHMARKS.md). With OpenTelemetry, a streaming call's span counts the time its
//! reply is sent as idle rather than busy.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use http_body::{Frame, SizeHint};
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};
use tower_http::request_id::RequestId;
use tracing::{Instrument, Span};

use crate::shared::{
    methods::{self, Method},
    metrics,
};

/// Applies [`Observe`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

/// The service [`ObserveLayer`] makes.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for Observe<S>
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
        let span = call_span(&request);
        let caller_gone = Arc::new(AtomicBool::new(false));
        let mut call = Call {
            method: methods::lookup(request.uri().path()),
            started: Instant::now(),
            span: span.clone(),
            caller_gone: Arc::clone(&caller_gone),
            done: false,
        };
        let request = request.map(|body| Body::new(Sent { body, caller_gone }));
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = response.await?;
                if let Some(code) = code_in(response.headers()) {
                    call.finish(code);
                }
                Ok(response.map(|body| Body::new(Observed { body, call })))
            }
            .instrument(span),
        )
    }
}

/// The span of one call: its method and request id, and the caller's trace when it sent one.
fn call_span(request: &Request<Body>) -> Span {
    let request_id = request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok());
    let span = tracing::info_span!("call", method = request.uri().path(), request_id = request_id.unwrap_or(""));
    #[cfg(feature = "otel")]
    crate::shared::otel::continue_trace(&span, request.headers());
    span
}

/// One call being measured, with its span open until it ends; it records itself exactly once.
struct Call {
    method: Option<&'static Method>,
    started: Instant,
    span: Span,
    /// Whether the request's body failed to arrive whole: the caller reset the stream or closed
    /// its connection while sending it.
    caller_gone: Arc<AtomicBool>,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let code = match code {
            Code::Internal | Code::Unknown if self.caller_gone.load(Ordering::Relaxed) => Code::Cancelled,
            code => code,
        };
        // The router answers UNIMPLEMENTED for paths it does not serve; label those `unknown` too.
        let method = match self.method {
            Some(method) if code != Code::Unimplemented => method,
            _ => &methods::UNKNOWN,
        };
        let (code, seconds) = (code_name(code), self.started.elapsed().as_secs_f64());
        metrics::call_handled(method, code, seconds);
        self.span.in_scope(|| tracing::debug!(code, ms = seconds * 1000.0, "call finished"));
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
    /// A request body that notes when the caller's stream fails before its end.
    struct Sent {
        #[pin]
        body: Body,
        caller_gone: Arc<AtomicBool>,
    }
}

impl http_body::Body for Sent {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if let Some(Err(_)) = &frame {
            this.caller_gone.store(true, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
    };

    use http::HeaderValue;
    use tower::ServiceExt;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// What the subscriber writes, kept to be read.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl MakeWriter<'_> for Lines {
        type Writer = Lines;

        fn make_writer(&self) -> Lines {
            self.clone()
        }
    }

    impl Lines {
        /// The line that says `message`.
        fn saying(&self, message: &str) -> String {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .find(|line| line.contains(message))
                .unwrap_or_else(|| panic!("no `{message}` in {text}"))
                .into()
        }
    }

    const METHOD: &str = "/topkart.deal.v1.DealService/GetDeal";

    /// A call to a service that logs `handling` and answers `response`, observed with logs into
    /// the returned lines; the response is dropped before its body is read.
    async fn observed_call(response: fn() -> Response<Body>) -> Lines {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        let _logging = tracing::subscriber::set_default(subscriber);
        let service = ObserveLayer.layer(tower::service_fn(move |_request: Request<Body>| async move {
            tracing::info!("handling");
            Ok::<_, Infallible>(response())
        }));
        let mut request = Request::builder().uri(METHOD).body(Body::empty()).unwrap();
        request.extensions_mut().insert(RequestId::new(HeaderValue::from_static("request-7")));
        drop(service.oneshot(request).await.unwrap());
        lines
    }

    fn assert_in_the_calls_span(line: &str) {
        assert!(line.contains("request-7") && line.contains(METHOD), "not in the call's span: {line}");
    }

    #[tokio::test]
    async fn the_handler_and_the_end_of_a_call_log_in_its_span() {
        // A trailers-only reply (every error, and every shed call): counted as it is returned.
        let lines = observed_call(|| Status::not_found("no such deal").into_http()).await;
        assert_in_the_calls_span(&lines.saying("handling"));
        let finished = lines.saying("call finished");
        assert_in_the_calls_span(&finished);
        assert!(finished.contains("NOT_FOUND"), "{finished}");
    }

    #[tokio::test]
    async fn a_reply_dropped_before_its_status_is_a_cancelled_call_in_its_span() {
        let lines =
            observed_call(|| Response::new(Body::new(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))))
                .await;
        assert_in_the_calls_span(&lines.saying("handling"));
        let finished = lines.saying("call finished");
        assert_in_the_calls_span(&finished);
        assert!(finished.contains("CANCELLED"), "{finished}");
    }
}
