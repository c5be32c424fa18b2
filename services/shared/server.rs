//! What every gRPC server here serves besides its own API: `grpc.health.v1` tied to the database,
//! server reflection (v1 and v1alpha) so grpcurl needs no `.proto`, and a graceful shutdown.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::transport::{
    ServerTlsConfig,
    server::{Router, TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};

use super::{auth::Authenticator, layers};

/// The largest request a service accepts (tonic answers OUT_OF_RANGE beyond, before our code, so
/// without an `ErrorInfo`); every request of ours is a
/// few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The deadline of a call whose client sets none (a shorter `grpc-timeout` wins).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// The standard health service's name.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// How often health re-checks the database.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A database slower than this to answer `select 1` counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The health of a server: NOT_SERVING until the database answers, SERVING while it does, and
/// NOT_SERVING again from the moment shutdown begins.
pub struct Health {
    reporter: HealthReporter,
    services: Vec<&'static str>,
    probe: JoinHandle<()>,
}

impl Health {
    /// Starts probing `pool` for the overall server ("") and for each of `services`.
    pub async fn start(
        pool: PgPool,
        services: &[&'static str],
    ) -> (Self, tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>) {
        let forever = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        Self::start_with_check(pool, services, watch::channel(forever).1).await
    }

    /// [`Health::start`], with `services` (not "") SERVING only until the instant `healthy_until`
    /// holds: the worker's steps, which the database answering does not vouch for, push it on
    /// while they succeed, and a worker that stops pushing it (stuck, or gone) is NOT_SERVING once
    /// it has passed.
    pub async fn start_with_check(
        pool: PgPool,
        services: &[&'static str],
        healthy_until: watch::Receiver<Instant>,
    ) -> (Self, tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let mut all = services.to_vec();
        all.push("");
        set_all(&reporter, &all, ServingStatus::NotServing).await;
        let probe = tokio::spawn(probe_database(pool, reporter.clone(), services.to_vec(), healthy_until));
        (Self { reporter, services: all, probe }, server)
    }

    /// Stops probing and reports NOT_SERVING, so load balancers drain this server.
    pub async fn shut_down(self) {
        self.probe.abort();
        // A probe caught mid-update must not write SERVING after the NOT_SERVING below.
        let _ = self.probe.await;
        set_all(&self.reporter, &self.services, ServingStatus::NotServing).await;
    }
}

async fn probe_database(
    pool: PgPool,
    reporter: HealthReporter,
    services: Vec<&'static str>,
    mut healthy_until: watch::Receiver<Instant>,
) {
    let mut last = None;
    loop {
        let answered =
            matches!(tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("select 1").execute(&pool)).await, Ok(Ok(_)));
        let working = Instant::now() < *healthy_until.borrow_and_update();
        if last.is_none_or(|(was_answered, _)| was_answered != answered) {
            if answered {
                tracing::info!("database answers, serving");
            } else {
                tracing::warn!("database does not answer, not serving");
            }
        }
        if last != Some((answered, working)) {
            reporter.set_service_status("", serving(answered)).await;
            set_all(&reporter, &services, serving(answered && working)).await;
            last = Some((answered, working));
        }
        // Wakes early when the work's health changes; without a sender it never will.
        if let Ok(Err(_)) = tokio::time::timeout(PROBE_INTERVAL, healthy_until.changed()).await {
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
}

fn serving(yes: bool) -> ServingStatus {
    if yes { ServingStatus::Serving } else { ServingStatus::NotServing }
}

async fn set_all(reporter: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    for service in services {
        reporter.set_service_status(service, status).await;
    }
}

/// Adds server reflection to `router`: v1 for current clients and v1alpha for older ones (PyPI's
/// grpcurl). It describes our public contracts (not the internal HoldService) and the health and
/// `google.rpc` error-detail types, and lists only what this server serves: `services`, health and
/// reflection.
pub fn with_reflection(router: ApiRouter, services: &[&str]) -> Result<ApiRouter, tonic_reflection::server::Error> {
    let describe = |reflection_service: &str| {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::PUBLIC_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(HEALTH_SERVICE)
            .with_service_name(reflection_service);
        services.iter().fold(builder, |builder, service| builder.with_service_name(*service))
    };
    Ok(router
        .add_service(describe("grpc.reflection.v1.ServerReflection").build_v1()?)
        .add_service(describe("grpc.reflection.v1alpha.ServerReflection").build_v1alpha()?))
}

/// How often an idle connection is pinged, and how long a ping may go unanswered before the
/// connection is closed: a client that vanished stops holding streams within 40 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams a client may reset before the server accepts them. h2's default of 20 closes the whole
/// connection (GOAWAY) beyond it, failing every call on it; under a surge, callers whose deadline
/// passes while their stream waits are many and legitimate. The admission limit bounds the work.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 4096;

/// The layer every server applies: the call stack.
pub type StackLayer = tower::layer::util::Stack<layers::CallStack, tower::layer::util::Identity>;
/// A server's routes behind the call stack.
pub type ApiRouter = Router<StackLayer>;

/// The server settings every service shares: the call stack ([`layers::CallStack`], gRPC-Web
/// included), HTTP/1.1 beside HTTP/2, HTTP/2 limits and keepalive, and TLS when set.
pub fn builder(settings: &ServerSettings) -> Result<tonic::transport::Server<StackLayer>, ServeError> {
    // HTTP/1.1 too, for gRPC-Web from browsers and proxies that speak nothing else (over TLS,
    // tonic offers only h2 by ALPN, which is what browsers negotiate).
    let builder = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(settings.limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .timeout(DEFAULT_DEADLINE);
    let builder = match settings.tls.clone() {
        Some(tls) => builder.tls_config(tls).map_err(ServeError::Transport)?,
        None => builder,
    };
    Ok(builder.layer(layers::CallStack::new(
        settings.auth.clone(),
        settings.limits,
        &settings.cors_allowed_origins,
        settings.stock.clone(),
    )))
}

/// How a server authenticates its callers, how much it takes on, and whether it speaks TLS.
#[derive(Clone)]
pub struct ServerSettings {
    /// Verifies the bearer token of every API call (health and reflection stay open).
    pub auth: Authenticator,
    /// Admission and rate limits.
    pub limits: layers::Limits,
    /// The server's certificate and key, when it serves TLS.
    pub tls: Option<ServerTlsConfig>,
    /// The origins whose pages may call over gRPC-Web (CORS); none when empty.
    pub cors_allowed_origins: Vec<http::HeaderValue>,
    /// What makes admission stock-aware (order-service's CreateOrder); none elsewhere.
    pub stock: Option<layers::admission::stock::StockAware>,
}

impl ServerSettings {
    /// Plain text, with `auth` and the default limits.
    pub fn plaintext(auth: Authenticator) -> Self {
        Self { auth, limits: layers::Limits::default(), tls: None, cors_allowed_origins: Vec::new(), stock: None }
    }
}

/// Why a server stopped serving before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The descriptors for reflection could not be loaded.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(tonic::transport::Error),
    /// A thread the server needs could not be started.
    #[error("start: {0}")]
    Start(std::io::Error),
}

/// How long a shutdown waits for the calls in flight: longer than any call's deadline
/// ([`DEFAULT_DEADLINE`] caps them), so only a stream whose client stopped reading is cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves `router` on `listener` until `shutdown` completes, then reports NOT_SERVING and lets the
/// requests in flight finish, for [`DRAIN_TIMEOUT`] at the most: then their connections close.
pub async fn serve(
    router: ApiRouter,
    listener: TcpListener,
    health: Health,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // Without TCP_NODELAY a small reply can wait for the client's delayed ACK: 40 ms on Linux. (The
    // builder's `tcp_nodelay` applies only to listeners tonic binds itself.)
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (draining, drain_started) = tokio::sync::oneshot::channel();
    let serving = router.serve_with_incoming_shutdown(incoming, async move {
        shutdown.await;
        tracing::info!("shutting down");
        health.shut_down().await;
        let _ = draining.send(());
    });
    let drain_deadline = async move {
        match drain_started.await {
            Ok(()) => tokio::time::sleep(DRAIN_TIMEOUT).await,
            // The server stopped by itself; the other branch has its result.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = serving => served.map_err(ServeError::Transport),
        () = drain_deadline => {
            tracing::warn!(seconds = DRAIN_TIMEOUT.as_secs(), "calls still open after the shutdown's grace period; closing them");
            Ok(())
        }
    }
}

/// Completes on SIGTERM or Ctrl-C (SIGINT), whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
