//! The calls a service makes to another (order-service to deal-service), observed as the server
//! observes the calls it serves: counted and timed as `grpc_client_*`, and when spans are exported,
//! a client span whose trace context goes out with the call, so the callee's span is its child.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use http::{Request, Response};
use tonic::{Code, body::Body};
use tower::{Layer, Service};
use tracing::Span;

use super::{
    bodies::{Counted, Ended, Ending, Reply},
    code_of, known_method, span,
};
use crate::shared::{
    call,
    metrics::grpc::{CallMetrics, Side},
    otel,
};

/// Applies [`ObserveClient`] to a channel.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveClientLayer;

impl<S> Layer<S> for ObserveClientLayer {
    type Service = ObserveClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveClient { inner }
    }
}

/// A channel whose calls are observed.
#[derive(Debug, Clone)]
pub struct ObserveClient<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for ObserveClient<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let method = known_method(request.uri().path());
        let span = span::client(&mut request, method);
        let started = Instant::now();
        let metrics = CallMetrics::start(Side::Client, method);
        let (sent, received) = (metrics.sent_counter(), metrics.received_counter());
        let mut call = ClientCall {
            metrics,
            started,
            deadline: call::grpc_timeout_of(request.headers()).map(|timeout| started + timeout),
            span,
            done: false,
        };
        let response = self.inner.call(request.map(|body| Body::new(Counted::new(body, sent, None))));
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    if response.headers().contains_key("grpc-status") {
                        call.end(Ended::Status(response.headers()));
                    }
                    Ok(response.map(|body| Body::new(Reply::new(body, received, call))))
                }
                // No reply: the connection could not be made or was lost, which tonic reports as
                // UNAVAILABLE.
                Err(err) => {
                    call.end_with(Code::Unavailable);
                    Err(err)
                }
            }
        })
    }
}

/// One call being made, with its span open until it ends; it records itself exactly once.
struct ClientCall {
    metrics: CallMetrics,
    started: Instant,
    deadline: Option<Instant>,
    span: Span,
    done: bool,
}

impl ClientCall {
    fn end_with(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.metrics.handled(code, self.started.elapsed().as_secs_f64());
        if otel::exporting() {
            otel::ended(&self.span, Side::Client, code);
        }
    }
}

impl Ending for ClientCall {
    fn end(&mut self, how: Ended<'_>) {
        let code = match how {
            // The connection was lost or the stream reset under the reply, as tonic reports it.
            Ended::Failed => Code::Unavailable,
            how => code_of(&how, self.deadline),
        };
        self.end_with(code);
    }
}

impl Drop for ClientCall {
    fn drop(&mut self) {
        // The reply was dropped before its status arrived: this process stopped waiting.
        self.end(Ended::Dropped);
    }
}
