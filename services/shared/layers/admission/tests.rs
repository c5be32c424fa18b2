//! The admission layer with a service that answers when the test says: who waits, who is refused
//! and when, and what never waits.

use std::convert::Infallible;

use tokio::sync::oneshot;
use tonic::Code;
use tonic_types::StatusExt;
use tower::ServiceExt;
use uuid::Uuid;

use super::{
    stock::{Out, StockBoard},
    *,
};
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
        ("/topkart.deal.internal.v1.HoldService/ReserveUnits", Role::Service),
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
    let inner =
        tower::service_fn(|_request: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::new(Endless))) });
    let limits = Limits { max_waiting: 1, ..limits(1) };
    let service = AdmissionLayer::new(&limits, None).layer(inner);
    let streaming = service.clone().oneshot(call(GET_DEAL, "alice")).await.unwrap();
    let second = tokio::spawn(service.clone().oneshot(call(GET_DEAL, "bob")));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!second.is_finished(), "the first body still holds the only permit");
    drop(streaming);
    assert_eq!(code_of(&second.await.unwrap().unwrap()), None, "admitted once the body is gone");
}
