//! `GET /metrics`: what the recorder holds, and what is read at each scrape rather than recorded —
//! the database pools, the process (`process_*`, from the `metrics-process` crate), and for the
//! expiry worker a few gauges read from the database ([`DatabaseGauges`]), whose label sets
//! change from one scrape to the next (the hot deals of the moment), which a recorder would keep
//! showing after they are gone.

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{Method as HttpMethod, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics::gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::net::TcpListener;

/// Pools besides the one [`Exposition`] is given, each reported at every scrape while its
/// [`PoolReport`] lives.
static REPORTED_POOLS: Mutex<Vec<(u64, &'static str, PgPool)>> = Mutex::new(Vec::new());
static NEXT_POOL_REPORT: AtomicU64 = AtomicU64::new(0);

fn reported_pools() -> MutexGuard<'static, Vec<(u64, &'static str, PgPool)>> {
    REPORTED_POOLS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reports `pool`'s connections as `topkart_db_pool_connections{pool="<name>"}` until dropped.
pub struct PoolReport {
    id: u64,
}

impl PoolReport {
    pub fn start(name: &'static str, pool: PgPool) -> Self {
        let id = NEXT_POOL_REPORT.fetch_add(1, Ordering::Relaxed);
        reported_pools().push((id, name, pool));
        Self { id }
    }
}

impl Drop for PoolReport {
    fn drop(&mut self) {
        reported_pools().retain(|(id, _, _)| *id != self.id);
    }
}

/// The connections of `pool`, in use and idle, and its limit, as `pool="<name>"`.
fn pool_connections(name: &'static str, pool: &PgPool) {
    let idle = pool.num_idle() as f64;
    gauge!("topkart_db_pool_connections", "pool" => name, "state" => "idle").set(idle);
    gauge!("topkart_db_pool_connections", "pool" => name, "state" => "in_use").set(f64::from(pool.size()) - idle);
    gauge!("topkart_db_pool_max_connections", "pool" => name).set(f64::from(pool.options().get_max_connections()));
}

/// Gauges of one name read at a scrape, each sample with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct GaugeFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// Reads gauges from the database at each scrape.
pub type DatabaseGauges = fn(PgPool) -> Pin<Box<dyn Future<Output = Result<Vec<GaugeFamily>, sqlx::Error>> + Send>>;

/// What a process's `/metrics` shows besides what it records.
#[derive(Clone)]
pub struct Exposition {
    pool: PgPool,
    database_gauges: Option<DatabaseGauges>,
    process: Arc<metrics_process::Collector>,
}

impl Exposition {
    /// The pools' and the process's metrics; [`super::install`] has described them.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, database_gauges: None, process: Arc::new(metrics_process::Collector::default()) }
    }

    /// Also the gauges `read` reads from the database at each scrape.
    pub fn reading(mut self, read: DatabaseGauges) -> Self {
        self.database_gauges = Some(read);
        self
    }

    async fn render(&self, handle: &PrometheusHandle) -> String {
        pool_connections("main", &self.pool);
        for (_, name, pool) in reported_pools().iter() {
            pool_connections(name, pool);
        }
        self.process.collect();
        let mut text = handle.render();
        if let Some(read) = self.database_gauges {
            // A failed read leaves those gauges out of this scrape (Prometheus marks them stale);
            // the rest is served.
            match read(self.pool.clone()).await {
                Ok(families) => render_gauges(&families, &mut text),
                Err(err) => tracing::warn!(error = %err, "metrics: cannot read the database gauges"),
            }
        }
        text
    }
}

/// Describes the process metrics (their HELP lines).
pub(super) fn describe_process() {
    metrics_process::Collector::default().describe();
}

/// Appends `families` to `text` in the Prometheus text format.
fn render_gauges(families: &[GaugeFamily], text: &mut String) {
    for family in families {
        let _ = writeln!(text, "# HELP {} {}\n# TYPE {} gauge", family.name, family.help, family.name);
        for (labels, value) in &family.samples {
            text.push_str(family.name);
            if !labels.is_empty() {
                text.push('{');
                for (index, (name, value)) in labels.iter().enumerate() {
                    let separator = if index == 0 { "" } else { "," };
                    let _ = write!(text, "{separator}{name}=\"{}\"", escape_label_value(value));
                }
                text.push('}');
            }
            let _ = writeln!(text, " {value}");
        }
    }
}

/// A label value as the text format needs it: `\`, `"` and line feeds escaped.
fn escape_label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serves `GET /metrics` on `listener` for as long as the process runs.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, exposition: Exposition) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Folds recorded histogram samples, so memory stays flat between scrapes.
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (handle, exposition) = (handle.clone(), exposition.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (handle, exposition) = (handle.clone(), exposition.clone());
                async move { scrape(request, &handle, &exposition).await }
            });
            if let Err(err) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(error = %err, "metrics: connection ended");
            }
        });
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| std::io::Error::new(err.kind(), format!("cannot listen on {addr} for metrics: {err}")))
}

async fn scrape(
    request: Request<Incoming>,
    handle: &PrometheusHandle,
    exposition: &Exposition,
) -> Result<Response<Full<bytes::Bytes>>, Infallible> {
    let response = Response::builder();
    if request.uri().path() != "/metrics" {
        return Ok(response
            .status(StatusCode::NOT_FOUND)
            .body(Full::from("only /metrics is served here\n"))
            .unwrap_or_default());
    }
    if request.method() != HttpMethod::GET {
        return Ok(response.status(StatusCode::METHOD_NOT_ALLOWED).body(Full::default()).unwrap_or_default());
    }
    Ok(response
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::from(exposition.render(handle).await))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_read_at_a_scrape_are_written_in_the_text_format_with_their_labels_escaped() {
        let families = [GaugeFamily {
            name: "topkart_deal_units_available",
            help: "Units left.",
            samples: vec![(vec![("deal", "d1".to_owned()), ("product", "a \"quoted\" \\ name\nx".to_owned())], 3.0)],
        }];
        let mut text = String::new();
        render_gauges(&families, &mut text);
        assert_eq!(
            text,
            "# HELP topkart_deal_units_available Units left.\n# TYPE topkart_deal_units_available gauge\n\
             topkart_deal_units_available{deal=\"d1\",product=\"a \\\"quoted\\\" \\\\ name\\nx\"} 3\n"
        );
    }
}
