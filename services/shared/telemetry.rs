//! Structured logs on stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines
//! (`--log-format`, `LOG_FORMAT`), with ANSI colours only when stderr is a terminal; and, when an
//! OTLP endpoint is configured, the same spans exported ([`super::otel`]).

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (method, request id) of the call.
    Json,
}

/// What must live as long as the process logs: the span exporter, if any, flushed when this is
/// dropped at the end of `main`.
pub struct Telemetry {
    _exporter: Option<super::otel::Exporter>,
}

impl Telemetry {
    /// Flushes and stops the span exporter on a thread of its own: its last export goes out over a
    /// gRPC connection whose tasks run on the runtime, which may have only the calling thread.
    pub async fn shut_down(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

/// The layer that writes log lines to `writer`. In JSON, `spans` lists every span the event is in,
/// outermost first, so a line logged in a handler's inner span still carries the call's `method`
/// and `request_id` (from the outermost, `call`); `span` is the innermost.
fn lines<S, W>(format: LogFormat, ansi: bool, writer: W) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let lines = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => lines.with_ansi(ansi).boxed(),
        LogFormat::Json => lines.json().with_current_span(true).with_span_list(true).boxed(),
    }
}

/// Installs the global subscriber for the binary `service`. Call once, first thing in `main`
/// after reading the flags, and keep what it returns until `main` ends.
#[must_use = "dropping it stops exporting spans"]
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = lines(format, std::io::stderr().is_terminal(), std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(lines);
    let (export, failure) = match super::otel::exporter(service) {
        Ok(export) => (export, None),
        Err(err) => (None, Some(err)),
    };
    let (layer, exporter) = export.unzip();
    let exporting = layer.is_some();
    registry.with(layer).init();
    match failure {
        Some(err) => tracing::warn!(error = %err, "opentelemetry: no exporter, spans are not exported"),
        None if exporting => tracing::info!("exporting spans over OTLP"),
        None => {}
    }
    Telemetry { _exporter: exporter }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Every line written, as one string.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs an event in a handler's span inside a call's span, in `format`; returns the line.
    fn line_of_an_inner_span(format: LogFormat) -> String {
        let written = Written::default();
        let writer = written.clone();
        let subscriber = tracing_subscriber::registry().with(lines(format, false, move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let call =
                tracing::info_span!("call", method = "/topkart.deal.v1.DealService/CreateDeal", request_id = "req-42");
            let _call = call.enter();
            let handler = tracing::info_span!("create_deal", deal = "d-1");
            let _handler = handler.enter();
            tracing::error!(cause = "boom", "internal error");
        });
        String::from_utf8(written.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_json_line_of_an_inner_span_carries_the_calls_method_and_request_id() {
        let line = line_of_an_inner_span(LogFormat::Json);
        let json: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
        let spans = json["spans"].as_array().expect("the span list");
        assert_eq!(spans[0]["name"], "call", "{line}");
        assert_eq!(spans[0]["request_id"], "req-42");
        assert_eq!(spans[0]["method"], "/topkart.deal.v1.DealService/CreateDeal");
        assert_eq!(spans[1]["name"], "create_deal");
        assert_eq!(json["span"]["name"], "create_deal", "the innermost span");
        assert_eq!(json["fields"]["message"], "internal error");
    }

    #[test]
    fn a_text_line_of_an_inner_span_carries_the_calls_method_and_request_id() {
        let line = line_of_an_inner_span(LogFormat::Text);
        assert!(
            line.contains("request_id=\"req-42\"") && line.contains("CreateDeal") && line.contains("create_deal"),
            "{line}"
        );
    }
}
