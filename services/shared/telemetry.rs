//! Structured logs on stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines
//! (`--log-format`, `LOG_FORMAT`), with ANSI colours only when stderr is a terminal; and, with the
//! cargo feature `otel`, the same spans exported over OTLP ([`super::otel`]).

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

/// What must live as long as the process logs: with `otel`, the span exporter, flushed when this
/// is dropped at the end of `main`.
pub struct Telemetry {
    #[cfg(feature = "otel")]
    _exporter: Option<super::otel::Exporter>,
}

impl Telemetry {
    /// Flushes and stops the span exporter on a thread of its own: its last export goes out over a
    /// gRPC connection whose tasks run on the runtime, which may have only the calling thread.
    pub async fn shut_down(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

/// Installs the global subscriber for the binary `service`. Call once, first thing in `main`
/// after reading the flags, and keep what it returns until `main` ends.
#[must_use = "dropping it stops exporting spans"]
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => lines.json().with_current_span(true).with_span_list(false).boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(lines);
    #[cfg(feature = "otel")]
    {
        let (export, failure) = match super::otel::exporter(service) {
            Ok(export) => (export, None),
            Err(err) => (None, Some(err)),
        };
        let (layer, exporter) = export.unzip();
        registry.with(layer).init();
        if let Some(err) = failure {
            tracing::warn!(error = %err, "opentelemetry: no exporter, spans are not exported");
        }
        Telemetry { _exporter: exporter }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = service;
        registry.init();
        Telemetry {}
    }
}
