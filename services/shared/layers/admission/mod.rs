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
pub mod refusals;
pub mod stock;

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::shared::{
    auth::{Caller, Role},
    methods::{self, Method},
    metrics,
    server::MAX_REQUEST_BYTES,
};
use queue::{Entry, FairQueue, Full, Permit, QueueKey, Waited};
use refusals::{HOLD_MARGIN, overloaded_because};
pub use refusals::{RetryDelays, deadline_of, hold_refusal, jittered, out_of_stock, overloaded, whole_deadline};
use stock::{Ordered, StockAware};

/// The `ErrorInfo` domain of refusals made by the server's own stack, before any service's code.
pub const DOMAIN: &str = "server.topkart.com";

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
        let delays = RetryDelays::new(limits.retry_after, limits.max_in_flight);
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
mod tests;
