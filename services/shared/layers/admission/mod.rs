//! Admission control: a process-wide cap on API calls in flight. A call beyond it is answered at
//! once with RESOURCE_EXHAUSTED (`ErrorInfo` reason `OVERLOADED`, a `RetryInfo` delay) and never
//! queued: under a surge, a queue only makes every call late, and calls that outlive their
//! deadline have done their work for nobody. Health and reflection are never shed, nor are
//! order-service's calls to deal-service: each finishes an order order-service admitted, and
//! order-service's own limit bounds them.
//!
//! The `RetryInfo` delay grows with the overload: the base delay times one plus the calls shed in
//! the last second per permit, stretched by a random 0–100 %, at most 5 s. Clients that honour it
//! come back spread out instead of all at once: ten thousand buyers on 256 permits, retrying as
//! told, settle at a few thousand sheds a second and delays of 2–4 s.
//!
//! A call holds its permit until its response body ends (the trailers are sent), not only until the
//! handler returns: tower's `ConcurrencyLimit` lets go once the response headers exist, which for a
//! streaming reply is long before the work ends.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{Request, Response};
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

use crate::shared::{methods, metrics, status};

/// The `ErrorInfo` domain of refusals made by the server's own stack, before any service's code.
pub const DOMAIN: &str = "server.topkart.com";

/// The longest retry delay a shed call is given.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The cap, shared by every connection and service of one server.
#[derive(Clone)]
pub struct AdmissionLayer {
    state: Arc<State>,
}

struct State {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    retry_after: Duration,
    shed: ShedRate,
}

impl AdmissionLayer {
    /// At most `max_in_flight` API calls at once; the shed are told to retry after `retry_after`
    /// or longer, as the overload grows (spread between that and twice it, so that the shed do not
    /// come back together).
    pub fn new(max_in_flight: usize, retry_after: Duration) -> Self {
        let state = State {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            retry_after,
            shed: ShedRate::new(),
        };
        Self { state: Arc::new(state) }
    }
}

impl State {
    /// The delay for a call shed now.
    fn retry_after(&self) -> Duration {
        let overload = self.shed.record() as f64 / self.max_in_flight.max(1) as f64;
        jittered(self.retry_after.mul_f64(1.0 + overload)).min(MAX_RETRY_AFTER)
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission { inner, state: Arc::clone(&self.state) }
    }
}

/// The service [`AdmissionLayer`] makes.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> Service<Request<Body>> for Admission<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = super::CallFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let method = methods::lookup(request.uri().path());
        // Unknown paths pass: the router answers them UNIMPLEMENTED for next to nothing.
        let Some(method) = method.filter(|method| !method.infrastructure && !method.internal && !method.streaming)
        else {
            return Box::pin(self.inner.call(request));
        };
        let Ok(permit) = Arc::clone(&self.state.permits).try_acquire_owned() else {
            metrics::call_shed(method);
            let response = overloaded(self.state.retry_after()).into_http();
            return Box::pin(std::future::ready(Ok(response)));
        };
        let admitted = InFlight::admit(permit);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(HoldPermit { body, _admitted: admitted })))
        })
    }
}

/// RESOURCE_EXHAUSTED, reason `OVERLOADED`, retry after `delay`.
pub fn overloaded(delay: Duration) -> Status {
    status::retryable(
        Code::ResourceExhausted,
        DOMAIN,
        "OVERLOADED",
        "the server is at capacity; retry after the RetryInfo delay",
        delay,
    )
}

/// `delay` stretched by a pseudo-random share of itself (0–100 %).
pub fn jittered(delay: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    // A shared xorshift: cheap, and plenty to spread retries; lost updates under a race are harmless.
    let mut x = STATE.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    delay + delay.mul_f64((x % 1024) as f64 / 1024.0)
}

/// Calls shed in the current and the previous second, counted without a lock.
struct ShedRate {
    origin: Instant,
    /// The second (since `origin`) that `current` counts.
    second: AtomicU64,
    current: AtomicU64,
    previous: AtomicU64,
}

impl ShedRate {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            second: AtomicU64::new(0),
            current: AtomicU64::new(0),
            previous: AtomicU64::new(0),
        }
    }

    /// Counts one shed call; returns the calls shed in the last full second.
    fn record(&self) -> u64 {
        let now = self.origin.elapsed().as_secs();
        let second = self.second.load(Ordering::Relaxed);
        if now != second && self.second.compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            // The second turned: what was counted becomes the last second's (nothing, after a gap).
            let counted = self.current.swap(0, Ordering::Relaxed);
            self.previous.store(if now == second + 1 { counted } else { 0 }, Ordering::Relaxed);
        }
        self.current.fetch_add(1, Ordering::Relaxed);
        self.previous.load(Ordering::Relaxed)
    }
}

/// An admitted call: counted in flight until dropped, with its permit.
struct InFlight {
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    fn admit(permit: OwnedSemaphorePermit) -> Self {
        metrics::in_flight(1.0);
        Self { _permit: permit }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::in_flight(-1.0);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call admitted until it ends or is dropped.
    struct HoldPermit {
        #[pin]
        body: Body,
        _admitted: InFlight,
    }
}

impl http_body::Body for HoldPermit {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio::sync::oneshot;
    use tonic_types::StatusExt;
    use tower::ServiceExt;

    use super::*;

    const GET_DEAL: &str = "/topkart.deal.v1.DealService/GetDeal";

    fn request(path: &str) -> Request<Body> {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    fn code_of(response: &Response<Body>) -> Option<String> {
        response.headers().get("grpc-status").map(|value| value.to_str().unwrap().to_owned())
    }

    /// A service whose calls finish only when the test says.
    fn gated() -> (
        impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone,
        tokio::sync::mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    ) {
        let (calls, waiting) = tokio::sync::mpsc::unbounded_channel::<oneshot::Sender<()>>();
        let service = tower::service_fn(move |_request: Request<Body>| {
            let (finish, finished) = oneshot::channel();
            let _ = calls.send(finish);
            async move {
                let _ = finished.await;
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }
        });
        (service, waiting)
    }

    #[tokio::test]
    async fn a_call_beyond_the_limit_is_shed_at_once_with_retry_info_and_a_freed_permit_admits_again() {
        let (inner, mut waiting) = gated();
        let service = AdmissionLayer::new(1, Duration::from_millis(100)).layer(inner);
        let first = tokio::spawn(service.clone().oneshot(request(GET_DEAL)));
        let finish_first = waiting.recv().await.unwrap();

        let shed = service.clone().oneshot(request(GET_DEAL)).await.unwrap();
        assert_eq!(code_of(&shed).as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
        let status = Status::from_header_map(shed.headers()).unwrap();
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "OVERLOADED");
        let delay = details.retry_info().unwrap().retry_delay.unwrap();
        assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&delay), "{delay:?}");

        finish_first.send(()).unwrap();
        let response = first.await.unwrap().unwrap();
        // The permit is the body's until it ends.
        drop(response);
        let again = tokio::spawn(service.clone().oneshot(request(GET_DEAL)));
        waiting.recv().await.unwrap().send(()).unwrap();
        assert_eq!(code_of(&again.await.unwrap().unwrap()), None, "admitted, answered by the service");
    }

    #[test]
    fn the_retry_delay_grows_with_the_calls_shed_in_the_last_second() {
        let mut state = State {
            permits: Arc::new(Semaphore::new(10)),
            max_in_flight: 10,
            retry_after: Duration::from_millis(100),
            shed: ShedRate::new(),
        };
        let calm = state.retry_after();
        assert!(calm <= Duration::from_millis(200), "{calm:?}");
        // A second with 100 calls shed on 10 permits: the next delays are about eleven times longer.
        let five_seconds_ago = Instant::now() - Duration::from_secs(5);
        state.shed = ShedRate {
            origin: five_seconds_ago,
            second: AtomicU64::new(4),
            current: AtomicU64::new(100),
            previous: AtomicU64::new(0),
        };
        let stormy = state.retry_after();
        assert!((Duration::from_millis(1100)..=Duration::from_millis(2200)).contains(&stormy), "{stormy:?}");
        state.shed.previous.store(1_000_000, Ordering::Relaxed);
        assert_eq!(state.retry_after(), MAX_RETRY_AFTER, "capped, jitter included");
    }

    #[tokio::test]
    async fn health_reflection_and_calls_between_our_services_are_never_shed() {
        let (inner, mut waiting) = gated();
        let service = AdmissionLayer::new(1, Duration::from_millis(100)).layer(inner);
        let _busy = tokio::spawn(service.clone().oneshot(request(GET_DEAL)));
        let _finish_busy = waiting.recv().await.unwrap();
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/topkart.deal.v1.DealService/ReserveUnits",
        ] {
            let call = tokio::spawn(service.clone().oneshot(request(path)));
            waiting.recv().await.unwrap().send(()).unwrap();
            assert_eq!(code_of(&call.await.unwrap().unwrap()), None, "{path} was admitted");
        }
    }

    /// A streaming reply that has not ended.
    struct Endless;

    impl http_body::Body for Endless {
        type Data = bytes::Bytes;
        type Error = Status;

        fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Status>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_streaming_reply_keeps_its_permit_until_its_body_is_done() {
        let inner = tower::service_fn(|_request: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::new(Endless)))
        });
        let service = AdmissionLayer::new(1, Duration::from_millis(100)).layer(inner);
        let streaming = service.clone().oneshot(request(GET_DEAL)).await.unwrap();
        let shed = service.clone().oneshot(request(GET_DEAL)).await.unwrap();
        assert_eq!(code_of(&shed).as_deref(), Some("8"), "the first body still holds the only permit");
        drop(streaming);
        let admitted = service.clone().oneshot(request(GET_DEAL)).await.unwrap();
        assert_eq!(code_of(&admitted), None);
    }
}
