//! The span of a call: `call` on the server, with the fields every log line of the call carries
//! (method, request id, the caller's subject once verified, the trace id), and `client call` around
//! a call order-service makes. When spans are exported, both also carry OpenTelemetry's name, kind
//! and RPC attributes, and a client call's trace context goes out with it.

use http::Request;
use tonic::body::Body;
use tower_http::request_id::RequestId;
use tracing::{Span, field::Empty};

use crate::shared::{methods::Method, otel};

/// The span of a call `request` to `method` arriving at a server.
pub fn server(request: &Request<Body>, method: &'static Method) -> Span {
    let path = request.uri().path();
    let request_id = request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok());
    let request_id = request_id.unwrap_or("");
    if !otel::exporting() {
        let span = tracing::info_span!("call", method = path, request_id, subject = Empty, trace_id = Empty);
        if let Some(trace_id) = otel::trace_id_in(request.headers()) {
            span.record("trace_id", trace_id);
        }
        return span;
    }
    let span = tracing::info_span!(
        "call",
        method = path,
        request_id,
        subject = Empty,
        trace_id = Empty,
        otel.name = span_name(method),
        otel.kind = "server",
    );
    otel::continue_trace(&span, request.headers());
    otel::describe(&span, method);
    if let Some(trace_id) = otel::trace_id(&span) {
        span.record("trace_id", trace_id);
    }
    span
}

/// The span of a call to `method` this process makes, a child of the current span; none unless
/// spans are exported.
pub fn client(request: &mut Request<Body>, method: &'static Method) -> Span {
    if !otel::exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "client call",
        method = request.uri().path(),
        otel.name = span_name(method),
        otel.kind = "client",
    );
    otel::describe(&span, method);
    otel::inject(&span, request.headers_mut());
    span
}

/// `package.Service/Method`, as the RPC conventions name a span; `unknown/unknown` for a path that
/// names none of ours, so that no caller can fill a trace backend with names of its choosing.
fn span_name(method: &Method) -> String {
    format!("{}/{}", method.service, method.method)
}
