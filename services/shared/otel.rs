//! OpenTelemetry traces, on by configuration: every call's span exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set — the exporter
//! reads the other `OTEL_*` variables itself — and the W3C trace context read from incoming calls
//! and written onto the calls order-service makes, so one order is one trace across both services.
//! Spans follow the RPC semantic conventions: named `package.Service/Method`, of kind server or
//! client, with `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code`, and an error
//! status for the codes that mean a fault (a server's: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
//! INTERNAL, UNAVAILABLE, DATA_LOSS; a client's: any but OK). Spans follow `RUST_LOG` like log
//! lines (the call span is at INFO). Without an endpoint, nothing here costs more than a flag read.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::{Status, TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tonic::Code;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{methods::Method, metrics::grpc::Side};

/// Whether spans are exported: set once, when the exporter is installed.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports its spans.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The tracer provider, flushed when dropped.
pub struct Exporter(SdkTracerProvider);

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(err) = self.0.shutdown() {
            tracing::warn!(error = %err, "opentelemetry: spans not flushed");
        }
    }
}

/// A span-exporting layer, and what flushes its spans at exit.
pub type Export<S> = (tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>, Exporter);

/// A layer exporting spans as `service`, and the provider to flush at exit; `Ok(None)` when no
/// OTLP endpoint is configured, `Err` (to be logged once logging is up) when the exporter cannot
/// be built.
pub fn exporter<S>(service: &'static str) -> Result<Option<Export<S>>, String>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
    if !configured {
        return Ok(None);
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build().map_err(|err| err.to_string())?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Some((layer, Exporter(provider))))
}

/// Makes `span` a child of the trace context in `headers` (`traceparent`, `tracestate`), if any.
pub fn continue_trace(span: &Span, headers: &http::HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
}

/// Writes `span`'s trace context onto an outgoing call, replacing any there.
pub fn inject(span: &Span, headers: &mut http::HeaderMap) {
    let context: Context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeadersMut(headers));
    });
}

/// The trace id of `span` (32 hex digits), when it has one.
pub fn trace_id(span: &Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// The RPC attributes of a call of `method`.
pub fn describe(span: &Span, method: &Method) {
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", method.service.clone());
    span.set_attribute("rpc.method", method.method.clone());
}

/// A call ended with `code`: its status code, and an error status when it is a fault of the side's.
pub fn ended(span: &Span, side: Side, code: Code) {
    span.set_attribute("rpc.grpc.status_code", i64::from(code as i32));
    let fault = match side {
        Side::Client => code != Code::Ok,
        Side::Server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
    };
    if fault {
        span.set_status(Status::error(code.description()));
    }
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<parent id>-<flags>`), if valid:
/// logged with the call when spans are not exported, so its lines still join the caller's trace.
pub fn trace_id_in(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        && trace_id.bytes().any(|byte| byte != b'0');
    valid.then_some(trace_id)
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::try_from(value))
        {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_traceparent(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", value.parse().unwrap());
        headers
    }

    #[test]
    fn a_traceparents_trace_id_is_read_only_when_well_formed() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id_in(&with_traceparent(&format!("00-{id}-00f067aa0ba902b7-01"))), Some(id));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id_in(&with_traceparent(bad)), None, "{bad}");
        }
        assert_eq!(trace_id_in(&http::HeaderMap::new()), None);
    }
}
