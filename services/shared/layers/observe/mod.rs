//! What the operator sees of every call, on the server ([`ObserveLayer`]) and on the calls
//! order-service makes ([`client::ObserveClientLayer`]): a tracing span carrying its method, request
//! id, caller and trace id, open until its reply ends, in which the handler runs, so every log line
//! of the handler carries them (not those of a streaming reply's items, which HTTP/2 polls outside
//! it: none log today); the call counted and timed as go-grpc-prometheus does ([`metrics::grpc`]),
//! from arrival to the end of its response, its messages counted as they pass; exported as an
//! OpenTelemetry span when configured ([`crate::shared::otel`]); and a line in the access log
//! ([`access_log`]) when it failed.
//!
//! A reply's status is in its headers (a trailers-only reply: every error, and every call shed
//! before reaching a service) or in its trailers: both are read. A call whose reply ends without a
//! status counts as DEADLINE_EXCEEDED if its deadline had passed (the caller's, or the server's
//! own, whichever is first), else CANCELLED (the caller reset it or its connection closed): that is
//! what the server sent, if anything. So does a call whose
//! request could not be read to its end because the caller went away (tonic answers that INTERNAL
//! or UNKNOWN, to nobody): an alert on INTERNAL must mean a fault of ours, not a client that gave up.
//!
//! The span is entered while the handler runs, not on every frame of the reply: a WatchDeal stream
//! sends a frame per change to each of thousands of watchers, and tower-http's `TraceLayer` (which
//! this replaces) entered the span and read the clock twice per frame, in a body wrapper of its own
//! (BENCHMARKS.md).

pub mod access_log;
mod bodies;
pub mod client;
mod span;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use http::{Request, Response};
use tonic::{Code, body::Body};
use tower::{Layer, Service};
use tracing::{Instrument, Span};

use crate::shared::{
    call,
    methods::{self, Method},
    metrics::grpc::{CallMetrics, Side},
    otel,
    server::DEFAULT_DEADLINE,
};
use bodies::{Counted, Ended, Ending, Reply};

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
        let method = known_method(request.uri().path());
        let span = span::server(&request, method);
        let started = Instant::now();
        let metrics = CallMetrics::start(Side::Server, method);
        let caller_gone = Arc::new(AtomicBool::new(false));
        let received = metrics.received_counter();
        let sent = metrics.sent_counter();
        let mut call = ServerCall {
            metrics,
            started,
            // The server ends every call at its deadline, the caller's or its own, whichever is first.
            deadline: Some(
                started
                    + call::grpc_timeout_of(request.headers())
                        .map_or(DEFAULT_DEADLINE, |timeout| timeout.min(DEFAULT_DEADLINE)),
            ),
            span: span.clone(),
            caller_gone: Arc::clone(&caller_gone),
            done: false,
        };
        let request = request.map(|body| Body::new(Counted::new(body, received, Some(caller_gone))));
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = response.await?;
                if response.headers().contains_key("grpc-status") {
                    call.end(Ended::Status(response.headers()));
                }
                Ok(response.map(|body| Body::new(Reply::new(body, sent, call))))
            }
            .instrument(span),
        )
    }
}

/// The method at `path`, or `unknown` for a path that names none of ours, so that no caller can
/// grow the set of labels.
fn known_method(path: &str) -> &'static Method {
    methods::lookup(path).unwrap_or(&methods::UNKNOWN)
}

/// The code of a call that ended `how`: its status's, or without one, DEADLINE_EXCEEDED when its
/// deadline has passed, else CANCELLED.
fn code_of(how: &Ended<'_>, deadline: Option<Instant>) -> Code {
    if let Ended::Status(headers) = how
        && let Some(code) = headers.get("grpc-status")
    {
        return Code::from_bytes(code.as_bytes());
    }
    if deadline.is_some_and(|deadline| Instant::now() >= deadline) { Code::DeadlineExceeded } else { Code::Cancelled }
}

/// One call being served, with its span open until it ends; it records itself exactly once.
struct ServerCall {
    metrics: CallMetrics,
    started: Instant,
    /// When the caller stops waiting, if it said.
    deadline: Option<Instant>,
    span: Span,
    /// Whether the request's body failed to arrive whole: the caller reset the stream or closed
    /// its connection while sending it.
    caller_gone: Arc<AtomicBool>,
    done: bool,
}

impl Ending for ServerCall {
    fn end(&mut self, how: Ended<'_>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let code = match code_of(&how, self.deadline) {
            Code::Internal | Code::Unknown if self.caller_gone.load(Ordering::Relaxed) => Code::Cancelled,
            code => code,
        };
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.handled(code, seconds);
        if otel::exporting() {
            otel::ended(&self.span, Side::Server, code);
        }
        let status = match how {
            Ended::Status(headers) => Some(headers),
            Ended::Failed | Ended::Dropped => None,
        };
        self.span.in_scope(|| access_log::call_ended(code, status, seconds));
    }
}

impl Drop for ServerCall {
    fn drop(&mut self) {
        // A reply dropped before its status was sent: the caller went away or its deadline passed.
        self.end(Ended::Dropped);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
    };

    use http::HeaderValue;
    use tonic::Status;
    use tower::ServiceExt;
    use tower_http::request_id::RequestId;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// What the subscriber writes, kept to be read (the access log's tests read it too).
    #[derive(Clone, Default)]
    pub(super) struct Lines(Arc<Mutex<Vec<u8>>>);

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
        /// Everything written, line by line.
        pub(super) fn all(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(str::to_owned).collect()
        }

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
