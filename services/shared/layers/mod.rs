//! What every server does to every call, as tower layers composed once ([`CallStack`]) and applied
//! to all three servers, outermost first:
//!
//! 0. [`web`]: CORS when origins are allowed, and gRPC-Web turned into gRPC (and back);
//! 1. request id: `x-request-id` taken from the caller or generated (tower-http), and returned;
//! 2. [`observe`]: a tracing span per call carrying the method and the request id, so every log
//!    line of the call carries them; calls counted and timed by method and status code, refused
//!    calls included;
//! 3. [`callers`]: the bearer token verified and the caller's rate limit ([`rate_limit`]) applied;
//! 4. [`admission`]: `--max-in-flight` API calls at once, the rest waiting fairly per caller (whom 3
//!    verified) or refused, and orders of deals known to be out answered at once.
//!
//! Health and reflection pass through 3 and 4 untouched: never queued, never limited, open to all.

pub mod admission;
pub mod callers;
pub mod observe;
pub mod rate_limit;
pub mod web;

use std::{convert::Infallible, time::Duration};

use http::{Request, Response};
use tonic::body::Body;
use tonic_web::GrpcWebLayer;
use tower::{Layer, Service, ServiceBuilder, util::BoxCloneSyncService};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use super::auth::Authenticator;
use admission::{AdmissionLayer, stock::StockAware};
use callers::CallersLayer;
use observe::ObserveLayer;
use rate_limit::{RateLimit, RateLimiter};

/// The future every layer of the stack answers with: a reply, never an error of its own.
pub type CallFuture<E> = std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

/// How much a server takes on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// API calls in flight at once, over every connection; beyond it calls are shed.
    pub max_in_flight: usize,
    /// The base of the `RetryInfo` delay a shed call is given.
    pub retry_after: Duration,
    /// Each caller's rate, when limited.
    pub rate_limit: Option<RateLimit>,
    /// API calls one caller may have waiting for a permit.
    pub max_waiting_per_caller: usize,
    /// API calls waiting for a permit, all callers together.
    pub max_waiting: usize,
    /// The longest a call waits for a permit while the queue empties now and then, and once it
    /// has stood (not been empty) for as long as `max_wait_overloaded` (controlled delay).
    pub max_wait: Duration,
    pub max_wait_overloaded: Duration,
    /// How long a deal found sold out is answered so by admission without asking again.
    pub sold_out_for: Duration,
    /// HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// Server-streaming calls (WatchDeal) open at once; they are not counted in `max_in_flight`.
    pub max_watchers: usize,
    /// The least time between two reads of watched deals that changed: each read sends every
    /// watcher of those deals a message, so this bounds the fan-out's work and is the most a change
    /// waits to be read.
    pub watch_refresh_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            retry_after: DEFAULT_RETRY_AFTER,
            rate_limit: None,
            max_waiting_per_caller: DEFAULT_MAX_WAITING_PER_CALLER,
            max_waiting: DEFAULT_MAX_WAITING,
            max_wait: DEFAULT_MAX_WAIT,
            max_wait_overloaded: DEFAULT_MAX_WAIT_OVERLOADED,
            sold_out_for: admission::stock::SOLD_OUT_FOR,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_watchers: DEFAULT_MAX_WATCHERS,
            watch_refresh_interval: DEFAULT_WATCH_REFRESH_INTERVAL,
        }
    }
}

impl Limits {
    /// The admission queue's bounds.
    pub fn queue(&self) -> admission::queue::QueueLimits {
        admission::queue::QueueLimits {
            in_flight: self.max_in_flight,
            per_caller: self.max_waiting_per_caller,
            total: self.max_waiting,
            max_wait: self.max_wait,
            max_wait_overloaded: self.max_wait_overloaded,
            overload_after: self.max_wait_overloaded,
        }
    }
}

/// The default of `--max-waiting-per-caller`: a buyer has one or two calls at a time, a client of
/// ours a few dozen; a caller with thousands has the rest refused (and held).
pub const DEFAULT_MAX_WAITING_PER_CALLER: usize = 32;
/// The default of `--max-waiting`: four times the calls in flight, about two batches of the hot
/// deal's reservations.
pub const DEFAULT_MAX_WAITING: usize = 1024;
/// The longest a call waits for a permit while the queue empties now and then, and once it has
/// stood for as long as the second (controlled delay): long enough for one batch of the hot deal
/// (~50 ms at 256 in flight), short enough to leave the call most of a 2 s deadline.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(500);
pub const DEFAULT_MAX_WAIT_OVERLOADED: Duration = Duration::from_millis(100);

/// The default of `--max-streams-per-connection`. An open stream holds about 5 KiB in the server
/// (10,000 streams over 100 connections: +45 MiB measured), so this bounds what one connection can
/// hold, while one connection can still keep a quarter of the in-flight limit busy. A client
/// beyond it waits for a stream of its own connection, as HTTP/2 intends, with no work done for it.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// The default of `--max-watchers`: WatchDeal streams per process. A watcher holds its place on its
/// deal's channel and its HTTP/2 stream, about 5 KiB (BENCHMARKS.md).
pub const DEFAULT_MAX_WATCHERS: usize = 20_000;

/// The default of `--watch-refresh-ms`: a hot deal commits every few milliseconds, and 20 reads a
/// second leave room within WatchDeal's 100 ms for the read and the fan-out to 10,000 watchers
/// (BENCHMARKS.md).
pub const DEFAULT_WATCH_REFRESH_INTERVAL: Duration = Duration::from_millis(50);

/// The default of `--max-in-flight`: about what keeps the hot deal's admitted calls within 100 ms
/// on the benchmark machine (BENCHMARKS.md).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// The base of the retry delay given to shed calls (each gets between it and twice it).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(100);

/// The stack every server applies to every call.
#[derive(Clone)]
pub struct CallStack {
    cors: Option<web::Cors>,
    admission: AdmissionLayer,
    callers: CallersLayer,
}

impl CallStack {
    /// Verifies callers with `auth`, admits calls within `limits` (knowing the stock of the deals
    /// `stock` names, if set), and answers CORS for pages of `cors_allowed_origins` (none when
    /// empty).
    pub fn new(
        auth: Authenticator,
        limits: Limits,
        cors_allowed_origins: &[http::HeaderValue],
        stock: Option<StockAware>,
    ) -> Self {
        let limiter = limits.rate_limit.and_then(RateLimiter::new);
        if let Some(limiter) = &limiter {
            limiter.forget_idle_callers();
        }
        let admission = AdmissionLayer::new(&limits, stock);
        let callers = CallersLayer::new(auth, limiter, admission.retry_delays());
        Self { cors: web::cors(cors_allowed_origins), admission, callers }
    }
}

/// What the stack wraps: tonic's router.
pub type Inner = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

impl<S> Layer<S> for CallStack
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = Inner;

    fn layer(&self, inner: S) -> Self::Service {
        let service = ServiceBuilder::new()
            .map_response(|response: Response<_>| response.map(Body::new))
            .option_layer(self.cors.clone())
            .layer(GrpcWebLayer::new())
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(ObserveLayer)
            .layer(self.callers.clone())
            .layer(self.admission.clone())
            .service(inner);
        BoxCloneSyncService::new(service)
    }
}
