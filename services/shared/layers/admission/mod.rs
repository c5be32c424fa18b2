//! Admission: which API calls run now, which wait, and which are refused, fairly per caller and
//! knowing the stock of the deals being ordered. Health and reflection never wait, nor do
//! order-service's calls to deal-service (each finishes an order order-service admitted, and its
//! own admission bounds them), nor WatchDeal streams (deal-service limits them itself).
//!
//! - **Fair per caller** ([`queue`]): `--max-in-flight` calls run at once; beyond, each caller (its
//!   token's subject, or its address) waits in a queue of its own, served round robin, so a caller
//!   with thousands of streams gets one caller's share.
//! - **Bounded waiting**: a call waits only while it can still be served within its deadline, at
//!   most `max_wait`, and less once the queue stands (controlled delay); a caller may have
//!   `--max-waiting-per-caller` calls waiting, all callers `--max-waiting`.
//! - **Refusals held** (a tarpit): a call that is refused — its caller has its share waiting, the
//!   queue is full, or its wait ran out — is answered RESOURCE_EXHAUSTED (`OVERLOADED`) with a
//!   `RetryInfo` delay, and not sooner than that delay after it arrived (within its deadline). A
//!   client that ignores RetryInfo is slowed by its own concurrency instead of spinning, and a
//!   refusal costs the server a timer, not a core.
//! - **Stock-aware** ([`stock`]): an order of a deal known to be sold out or ended is answered
//!   FAILED_PRECONDITION (`SOLD_OUT`, `DEAL_EXPIRED`) at once, without a permit, and so are the calls
//!   waiting to order it as soon as it is known. An order naming its `request_id` may be the retry
//!   of one placed before, which must get that order back: it is served as any other call.
//!
//! The `RetryInfo` delay grows with the overload: the base delay times one plus the calls refused in
//! the last second per permit, stretched by a random 0–100 %, at most 5 s.
//!
//! A call holds its permit until its response body ends (the trailers are sent), not only until the
//! handler returns: tower's `ConcurrencyLimit` lets go once the response headers exist, which for a
//! streaming reply is long before the work ends.

pub mod queue;
pub mod stock;

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};
use uuid::Uuid;

use crate::shared::{
    auth::{Caller, Role},
    call::grpc_timeout_of,
    methods::{self, Method},
    metrics,
    server::{DEFAULT_DEADLINE, MAX_REQUEST_BYTES},
    status,
};
use queue::{Entry, FairQueue, Full, Permit, QueueKey, Waited};
use stock::{Ordered, Out, StockAware};

/// The `ErrorInfo` domain of refusals made by the server's own stack, before any service's code.
pub const DOMAIN: &str = "server.topkart.com";

/// The longest retry delay a refused call is given.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// A held refusal is answered this long before the call's deadline at the latest (or a tenth of
/// the call's time, if longer), so that it reaches the caller before the caller gives up, even
/// from a busy server.
const HOLD_MARGIN: Duration = Duration::from_millis(100);

/// Admission, shared by every connection and service of one server.
#[derive(Clone)]
pub struct AdmissionLayer {
    state: Arc<State>,
}

struct State {
    queue: Arc<FairQueue>,
    delays: Arc<RetryDelays>,
    stock: Option<StockAware>,
}

/// The `RetryInfo` delays of a server's refusals (admission's, and the rate limit's): the base delay
/// times one plus the calls refused in the last second per permit, stretched by a random 0–100 %,
/// at most [`MAX_RETRY_AFTER`].
pub struct RetryDelays {
    base: Duration,
    per: usize,
    refused: RefusalRate,
}

impl RetryDelays {
    /// The delay for a call refused now because the server is overloaded (counted in the overload
    /// that stretches the next delays), at least `at_least`.
    pub fn next(&self, at_least: Duration) -> Duration {
        let overload = self.refused.record() as f64 / self.per.max(1) as f64;
        self.stretched(overload).max(at_least).min(MAX_RETRY_AFTER)
    }

    /// The delay for a caller refused for its own excess (its share waiting, its rate): the
    /// overload as it stands, not counting this one, so that one flooder does not lengthen every
    /// other caller's delay; at least `at_least`.
    pub fn for_caller(&self, at_least: Duration) -> Duration {
        let overload = self.refused.last_second() as f64 / self.per.max(1) as f64;
        self.stretched(overload).max(at_least).min(MAX_RETRY_AFTER)
    }

    fn stretched(&self, overload: f64) -> Duration {
        jittered(self.base.mul_f64(1.0 + overload))
    }
}

impl AdmissionLayer {
    /// Admits calls within `limits`, told of sold-out and ended deals by `stock` when set. Refused
    /// calls are told to retry after `limits.retry_after` or longer, as the overload grows.
    pub fn new(limits: &super::Limits, stock: Option<StockAware>) -> Self {
        let queue = FairQueue::new(limits.queue());
        if let Some(stock) = &stock {
            let listening = Arc::downgrade(&queue);
            stock.board.listen(Arc::new(move |deal, out| {
                if let Some(queue) = listening.upgrade() {
                    queue.stock_out(deal, out);
                }
            }));
        }
        let delays = RetryDelays { base: limits.retry_after, per: limits.max_in_flight, refused: RefusalRate::new() };
        Self { state: Arc::new(State { queue, delays: Arc::new(delays), stock }) }
    }

    /// The delays this server's refusals are given, for the rate limit's.
    pub fn retry_delays(&self) -> Arc<RetryDelays> {
        Arc::clone(&self.state.delays)
    }
}

impl State {
    /// Refuses a call that arrived at `arrived` with `deadline`: RESOURCE_EXHAUSTED `OVERLOADED`
    /// after the retry delay, or just before the deadline if that comes first. A caller refused for
    /// having its share waiting already is flooding: it is held for as long as its call allows
    /// (longer than the delay it is told).
    async fn refuse(
        &self,
        method: &'static Method,
        cause: &'static str,
        arrived: Instant,
        deadline: Instant,
    ) -> Status {
        metrics::call_shed(method);
        metrics::admission_refused(cause);
        let (delay, hold) = if cause == "caller_share" {
            let delay = self.delays.for_caller(Duration::ZERO);
            (delay, delay.max(whole_deadline(arrived, deadline)))
        } else {
            let delay = self.delays.next(Duration::ZERO);
            (delay, delay)
        };
        hold_refusal(arrived, hold, deadline).await;
        overloaded_because(delay, cause)
    }
}

/// Holds the refusal of a call that arrived at `arrived` for `hold`, or until just before its
/// `deadline` if that comes first: a client that ignores RetryInfo cannot come back sooner than it
/// was told to. A call with too little time for a margin is held to its deadline itself: its
/// answer would come too late to be read anyway, and a short `grpc-timeout` must not buy a spin.
pub async fn hold_refusal(arrived: Instant, hold: Duration, deadline: Instant) {
    let whole = whole_deadline(arrived, deadline);
    let until = if whole.is_zero() { deadline } else { (arrived + hold).min(arrived + whole) };
    if until > Instant::now() {
        tokio::time::sleep_until(until.into()).await;
    }
}

/// The longest a refusal of a call that arrived at `arrived` can be held: until just before its
/// deadline. What a flooding caller is told to wait.
pub fn whole_deadline(arrived: Instant, deadline: Instant) -> Duration {
    let time = deadline.saturating_duration_since(arrived);
    time.saturating_sub(HOLD_MARGIN.max(time / 10))
}

/// When a call's caller gives up: its `grpc-timeout`, or the server's default deadline.
pub fn deadline_of<B>(request: &Request<B>, arrived: Instant) -> Instant {
    arrived + grpc_timeout_of(request.headers()).map_or(DEFAULT_DEADLINE, |timeout| timeout.min(DEFAULT_DEADLINE))
}

/// Whose queue a call waits in: the verified token's subject ([`super::callers`] put the caller in
/// the request), or the peer's address.
fn queue_key(request: &Request<Body>) -> QueueKey {
    match request.extensions().get::<Caller>() {
        Some(Caller::Token { subject, .. }) => QueueKey::Subject(subject.clone()),
        _ => super::callers::peer_address(request).map_or(QueueKey::Anonymous, QueueKey::Peer),
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
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
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
        // Calls between our services are exempt only when the caller is one (the service role).
        let internal = |method: &Method| method.internal && is_service(&request);
        let Some(method) = method.filter(|method| !method.infrastructure && !internal(method) && !method.streaming)
        else {
            return Box::pin(self.inner.call(request));
        };
        // The ready service is the one to call; its clone takes its place for the next call.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let state = Arc::clone(&self.state);
        Box::pin(admit(state, inner, method, request))
    }
}

/// Whether the verified caller is one of our services.
fn is_service(request: &Request<Body>) -> bool {
    matches!(request.extensions().get::<Caller>(), Some(Caller::Token { role: Role::Service, .. }))
}

/// When a call's caller gives up, as admission saw it arrive: the handler's deadline
/// (`CallContext::of`), so that time spent waiting for a permit is not counted twice.
#[derive(Debug, Clone, Copy)]
pub struct CallDeadline(pub Instant);

/// Admits, queues or refuses one API call, then calls `inner` with its permit held.
async fn admit<S>(
    state: Arc<State>,
    mut inner: S,
    method: &'static Method,
    request: Request<Body>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    let arrived = Instant::now();
    let deadline = deadline_of(&request, arrived);
    let (request, ordering) = match &state.stock {
        Some(stock) if request.uri().path() == stock.method => match read_deal(request, stock).await {
            Ok(read) => read,
            Err(status) => return Ok(status.into_http()),
        },
        _ => (request, None),
    };
    // An order that may be a retry is never answered from the board: it must get its order back.
    let ordering = ordering.filter(|ordering| !ordering.retriable);
    let deal = ordering.map(|ordering| ordering.deal);
    if let Some((deal, out)) = deal.and_then(|deal| Some((deal, state.stock.as_ref()?.board.out(deal)?))) {
        metrics::admission_refused(out.reason());
        return Ok(out_of_stock(deal, out, stock_domain(&state)).into_http());
    }
    let mut request = request;
    // Waiting makes sense only while the call can still be served within its deadline.
    let budget =
        deadline.saturating_duration_since(Instant::now()).saturating_sub(state.queue.expected_service() + HOLD_MARGIN);
    let permit = match state.queue.enter(queue_key(&request), deal, budget) {
        Entry::Admitted(permit) => permit,
        Entry::Full(full) => {
            let cause = match full {
                Full::CallerShare => "caller_share",
                Full::Queue => "queue_full",
                Full::NoTime => "deadline",
            };
            drop(request);
            return Ok(state.refuse(method, cause, arrived, deadline).await.into_http());
        }
        Entry::Waiting(waiting) => match waiting.wait().await {
            Waited::Admitted(permit) => permit,
            Waited::Out(out) => {
                metrics::admission_refused(out.reason());
                return Ok(out_of_stock(deal.unwrap_or_default(), out, stock_domain(&state)).into_http());
            }
            Waited::TimedOut => {
                drop(request);
                return Ok(state.refuse(method, "wait_timeout", arrived, deadline).await.into_http());
            }
        },
    };
    // The deal may have run out while the call waited (the board had not heard of it when the
    // waiting calls were told).
    if let Some((deal, out)) = deal.and_then(|deal| Some((deal, state.stock.as_ref()?.board.out(deal)?))) {
        metrics::admission_refused(out.reason());
        return Ok(out_of_stock(deal, out, stock_domain(&state)).into_http());
    }
    request.extensions_mut().insert(CallDeadline(deadline));
    // Boxed: the service's future is large, and a call that waits or is held (most of them, in a
    // flood) should not carry room for it.
    let response = Box::pin(inner.call(request)).await?;
    Ok(response.map(|body| Body::new(HoldPermit { body, _permit: permit })))
}

/// Reads the deal `request` orders (the body is read whole, as tonic would, and put back), for a
/// stock-aware method.
async fn read_deal(request: Request<Body>, stock: &StockAware) -> Result<(Request<Body>, Option<Ordered>), Status> {
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_REQUEST_BYTES + 5);
    let bytes: Bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(Status::out_of_range(format!("a request may be at most {MAX_REQUEST_BYTES} bytes")));
        }
        // The client reset the stream, or the connection failed: nobody is left to answer.
        Err(_) => return Err(Status::cancelled("the request's body did not arrive")),
    };
    // The first uncompressed gRPC frame: a flag byte, four bytes of length, the message (tonic
    // reads the same first message).
    let deal = match (bytes.first(), bytes.get(1..5)) {
        (Some(0), Some(length)) => {
            let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
            bytes.get(5..5 + length).and_then(stock.deal_of)
        }
        _ => None,
    };
    Ok((Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes))), deal))
}

fn stock_domain(state: &State) -> &'static str {
    state.stock.as_ref().map_or(DOMAIN, |stock| stock.domain)
}

/// FAILED_PRECONDITION: `deal` is sold out or has ended, in the `ErrorInfo` `domain` of the service
/// whose method was called.
pub fn out_of_stock(deal: Uuid, out: Out, domain: &str) -> Status {
    let message = match out {
        Out::SoldOut => "the deal is sold out: no unit is left (join its waitlist to be offered one that comes back)",
        Out::Ended => "the deal has ended",
    };
    status::with_reason(Code::FailedPrecondition, domain, out.reason(), message, [("deal", format!("deals/{deal}"))])
}

/// RESOURCE_EXHAUSTED, reason `OVERLOADED`, retry after `delay`.
pub fn overloaded(delay: Duration) -> Status {
    overloaded_because(delay, "queue_full")
}

/// [`overloaded`], with the `cause` in the `ErrorInfo` metadata: `caller_share` (the caller has as
/// many calls waiting as it may), `queue_full`, `wait_timeout` or `deadline` (the call could not be
/// served within its deadline).
fn overloaded_because(delay: Duration, cause: &'static str) -> Status {
    let mut details =
        tonic_types::ErrorDetails::with_error_info("OVERLOADED", DOMAIN, [("cause".to_owned(), cause.to_owned())]);
    details.set_retry_info(Some(delay));
    <Status as tonic_types::StatusExt>::with_error_details(
        Code::ResourceExhausted,
        "the server is at capacity; retry after the RetryInfo delay",
        details,
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

/// Calls refused in the current and the previous second, counted without a lock.
struct RefusalRate {
    origin: Instant,
    /// The second (since `origin`) that `current` counts.
    second: AtomicU64,
    current: AtomicU64,
    previous: AtomicU64,
}

impl RefusalRate {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            second: AtomicU64::new(0),
            current: AtomicU64::new(0),
            previous: AtomicU64::new(0),
        }
    }

    /// The calls refused in the last full second, counting none now.
    fn last_second(&self) -> u64 {
        let now = self.origin.elapsed().as_secs();
        let second = self.second.load(Ordering::Relaxed);
        if now == second {
            self.previous.load(Ordering::Relaxed)
        } else if now == second + 1 {
            self.current.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// Counts one refused call; returns the calls refused in the last full second.
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

pin_project_lite::pin_project! {
    /// A response body that keeps its call admitted until it ends or is dropped.
    struct HoldPermit {
        #[pin]
        body: Body,
        _permit: Permit,
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

    use super::{stock::StockBoard, *};
    use crate::shared::{auth::Role, layers::Limits};

    const GET_DEAL: &str = "/topkart.deal.v1.DealService/GetDeal";
    const CREATE_ORDER: &str = "/topkart.order.v1.OrderService/CreateOrder";

    fn limits(in_flight: usize) -> Limits {
        Limits { max_in_flight: in_flight, retry_after: Duration::from_millis(100), ..Limits::default() }
    }

    /// A call of `path` by `subject` (with a deadline of `timeout` when given), carrying `body`.
    fn call_of(path: &str, subject: &str, timeout: Option<&str>, body: Bytes) -> Request<Body> {
        let mut request = Request::builder().uri(path);
        if let Some(timeout) = timeout {
            request = request.header("grpc-timeout", timeout);
        }
        let mut request = request.body(Body::new(http_body_util::Full::new(body))).unwrap();
        request.extensions_mut().insert(Caller::Token { subject: subject.into(), role: Role::Customer });
        request
    }

    fn call(path: &str, subject: &str) -> Request<Body> {
        call_of(path, subject, None, Bytes::new())
    }

    fn code_of(response: &Response<Body>) -> Option<String> {
        response.headers().get("grpc-status").map(|value| value.to_str().unwrap().to_owned())
    }

    fn status_of(response: &Response<Body>) -> Status {
        Status::from_header_map(response.headers()).expect("a trailers-only status")
    }

    /// A service whose calls finish only when the test says.
    fn gated() -> (
        impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone + Send + 'static,
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

    /// A service of one permit, taken by a bot whose share (one call) waits too; the sender lets
    /// the running call finish.
    async fn bot_with_its_share_waiting(
        limits: Limits,
    ) -> (impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone, oneshot::Sender<()>) {
        let (inner, mut waiting) = gated();
        let service = AdmissionLayer::new(&Limits { max_waiting_per_caller: 1, ..limits }, None).layer(inner);
        tokio::spawn(service.clone().oneshot(call(GET_DEAL, "bot")));
        let finish_running = waiting.recv().await.unwrap();
        tokio::spawn(service.clone().oneshot(call(GET_DEAL, "bot")));
        tokio::task::yield_now().await;
        (service, finish_running)
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_call_is_answered_no_sooner_than_its_retry_delay() {
        let (service, _finish_running) = bot_with_its_share_waiting(limits(1)).await;
        // The bot's share is waiting: its next call is refused, but only after the delay it is told.
        let started = tokio::time::Instant::now();
        let refused = service.clone().oneshot(call(GET_DEAL, "bot")).await.unwrap();
        let held = started.elapsed();
        assert_eq!(code_of(&refused).as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
        let details = status_of(&refused).get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "OVERLOADED");
        assert_eq!(details.error_info().unwrap().metadata["cause"], "caller_share");
        let delay = details.retry_info().unwrap().retry_delay.unwrap();
        assert!(delay >= Duration::from_millis(100), "{delay:?}");
        assert!(held >= delay, "answered after {held:?}, before its retry delay {delay:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_refusal_is_answered_before_the_calls_deadline() {
        let limits = Limits { retry_after: Duration::from_secs(3), ..limits(1) };
        let (service, _finish_running) = bot_with_its_share_waiting(limits).await;
        let started = tokio::time::Instant::now();
        let refused = service.clone().oneshot(call_of(GET_DEAL, "bot", Some("1S"), Bytes::new())).await.unwrap();
        assert_eq!(code_of(&refused).as_deref(), Some("8"));
        assert!(started.elapsed() < Duration::from_secs(1), "within the deadline: {:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_deadline_buys_no_spin_its_refusal_comes_at_the_deadline() {
        let (service, _finish_running) = bot_with_its_share_waiting(limits(1)).await;
        let started = tokio::time::Instant::now();
        let refused = service.clone().oneshot(call_of(GET_DEAL, "bot", Some("50m"), Bytes::new())).await.unwrap();
        assert_eq!(code_of(&refused).as_deref(), Some("8"));
        assert!(started.elapsed() >= Duration::from_millis(50), "answered after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_call_that_cannot_be_served_within_its_deadline_is_refused_rather_than_queued() {
        let (inner, mut waiting) = gated();
        let service = AdmissionLayer::new(&limits(1), None).layer(inner);
        let _running = tokio::spawn(service.clone().oneshot(call(GET_DEAL, "alice")));
        let _finish_running = waiting.recv().await.unwrap();
        // 30 ms left: less than the margin a reply needs, so there is no time to wait.
        let refused = service.clone().oneshot(call_of(GET_DEAL, "bob", Some("30m"), Bytes::new())).await.unwrap();
        assert_eq!(status_of(&refused).get_error_details().error_info().unwrap().metadata["cause"], "deadline");
    }

    #[tokio::test]
    async fn a_quiet_caller_is_admitted_before_a_flooding_caller_s_earlier_calls() {
        let (inner, mut waiting) = gated();
        let service = AdmissionLayer::new(&limits(1), None).layer(inner);
        let first = tokio::spawn(service.clone().oneshot(call(GET_DEAL, "loud")));
        let finish_first = waiting.recv().await.unwrap();
        let loud: Vec<_> = (0..10).map(|_| tokio::spawn(service.clone().oneshot(call(GET_DEAL, "loud")))).collect();
        tokio::task::yield_now().await;
        let quiet = tokio::spawn(service.clone().oneshot(call(GET_DEAL, "quiet")));
        tokio::task::yield_now().await;

        // Two permits free up: one goes to the loud caller's oldest call, the next to the quiet one.
        finish_first.send(()).unwrap();
        first.await.unwrap().unwrap();
        waiting.recv().await.unwrap().send(()).unwrap();
        waiting.recv().await.unwrap().send(()).unwrap();
        let quiet = quiet.await.unwrap().unwrap();
        assert_eq!(code_of(&quiet), None, "admitted and served");
        assert_eq!(loud.iter().filter(|call| call.is_finished()).count(), 1, "one loud call served before it");
    }

    #[tokio::test]
    async fn orders_of_a_deal_found_sold_out_are_answered_at_once_the_waiting_ones_too() {
        let (inner, mut waiting) = gated();
        let board = StockBoard::default();
        let deal = Uuid::new_v4();
        // The test's "encoding" of an order is its deal's id as text.
        let stock = StockAware {
            board: board.clone(),
            method: CREATE_ORDER,
            deal_of: |message| {
                let deal = std::str::from_utf8(message).ok()?.parse().ok()?;
                Some(Ordered { deal, retriable: false })
            },
            domain: "order.topkart.com",
        };
        let service = AdmissionLayer::new(&limits(1), Some(stock)).layer(inner);
        let framed = |deal: Uuid| {
            let text = deal.to_string();
            let mut frame = vec![0, 0, 0, 0, text.len() as u8];
            frame.extend_from_slice(text.as_bytes());
            Bytes::from(frame)
        };
        let _running = tokio::spawn(service.clone().oneshot(call(GET_DEAL, "alice")));
        let _finish_running = waiting.recv().await.unwrap();
        let waiting_order = tokio::spawn(service.clone().oneshot(call_of(CREATE_ORDER, "bob", None, framed(deal))));
        tokio::task::yield_now().await;
        assert!(!waiting_order.is_finished(), "it waits for a permit");

        board.mark(deal, Out::SoldOut);
        let answered = tokio::time::timeout(Duration::from_millis(100), waiting_order).await.unwrap().unwrap().unwrap();
        let info = status_of(&answered).get_error_details().error_info().unwrap().clone();
        assert_eq!((status_of(&answered).code(), info.reason.as_str()), (Code::FailedPrecondition, "SOLD_OUT"));
        assert_eq!(info.domain, "order.topkart.com");
        let again = service.clone().oneshot(call_of(CREATE_ORDER, "carol", None, framed(deal))).await.unwrap();
        assert_eq!(status_of(&again).get_error_details().error_info().unwrap().reason, "SOLD_OUT", "at once");
    }

    #[tokio::test]
    async fn health_reflection_our_services_calls_to_each_other_and_streams_never_wait() {
        let (inner, mut waiting) = gated();
        let service = AdmissionLayer::new(&limits(1), None).layer(inner);
        let _busy = tokio::spawn(service.clone().oneshot(call(GET_DEAL, "alice")));
        let _finish_busy = waiting.recv().await.unwrap();
        for (path, role) in [
            ("/grpc.health.v1.Health/Check", Role::Customer),
            ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Role::Customer),
            ("/topkart.deal.v1.DealService/ReserveUnits", Role::Service),
            ("/topkart.deal.v1.DealService/WatchDeal", Role::Customer),
        ] {
            let mut request = call(path, "order-service");
            request.extensions_mut().insert(Caller::Token { subject: "order-service".into(), role });
            let call = tokio::spawn(service.clone().oneshot(request));
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
    async fn a_reply_keeps_its_permit_until_its_body_is_done() {
        let inner = tower::service_fn(|_request: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::new(Endless)))
        });
        let limits = Limits { max_waiting: 1, ..limits(1) };
        let service = AdmissionLayer::new(&limits, None).layer(inner);
        let streaming = service.clone().oneshot(call(GET_DEAL, "alice")).await.unwrap();
        let second = tokio::spawn(service.clone().oneshot(call(GET_DEAL, "bob")));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "the first body still holds the only permit");
        drop(streaming);
        assert_eq!(code_of(&second.await.unwrap().unwrap()), None, "admitted once the body is gone");
    }

    #[test]
    fn the_retry_delay_grows_with_the_calls_refused_in_the_last_second() {
        let mut delays = RetryDelays { base: Duration::from_millis(100), per: 10, refused: RefusalRate::new() };
        let calm = delays.next(Duration::ZERO);
        assert!(calm <= Duration::from_millis(200), "{calm:?}");
        // A second with 100 calls refused on 10 permits: the next delays are about eleven times longer.
        let five_seconds_ago = Instant::now() - Duration::from_secs(5);
        delays.refused = RefusalRate {
            origin: five_seconds_ago,
            second: AtomicU64::new(4),
            current: AtomicU64::new(100),
            previous: AtomicU64::new(0),
        };
        let stormy = delays.next(Duration::ZERO);
        assert!((Duration::from_millis(1100)..=Duration::from_millis(2200)).contains(&stormy), "{stormy:?}");
        delays.refused.previous.store(1_000_000, Ordering::Relaxed);
        assert_eq!(delays.next(Duration::ZERO), MAX_RETRY_AFTER, "capped, jitter included");
        assert!(delays.next(Duration::from_secs(30)) <= MAX_RETRY_AFTER);
    }
}
