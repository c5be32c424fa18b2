//! order-service's client of deal-service's HoldService: reserve, confirm and release units over
//! gRPC, with a deadline on every call, resent while deal-service is unavailable, and deal-service's
//! answers mapped onto order-service's errors. Each result of a batch call is mapped exactly as the
//! unary call's status would be.
//!
//! [`HoldCalls`] is the seam: each call sent once, over the wire in production; the integration
//! tests wrap it to inject faults (a lost reply, a call held back, deal-service unreachable).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tonic_types::StatusExt;

use tonic::{
    Code, Request, Response, Status,
    transport::{Channel, ClientTlsConfig, Endpoint},
};
use tower::Layer as _;
use uuid::Uuid;

use crate::{
    proto::holds::{self as pb, hold_service_client::HoldServiceClient},
    shared::{
        auth::{self, Role, Signer},
        call::CallContext,
        layers::observe::client::{ObserveClient, ObserveClientLayer},
        money::Price,
        names,
        status::{self, Violations},
        time,
    },
};

use crate::order::{domain::NewOrder, error::OrderError};

/// Units reserved for an order, at the price they were reserved at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedUnits {
    pub unit_price: Price,
    /// When the hold was made, by the database clock: the order must be recorded within
    /// `ORDER_WRITE_WINDOW` of it.
    pub hold_time: DateTime<Utc>,
    /// How long the order may wait for approval, if its deal says.
    pub approval_window: Option<chrono::TimeDelta>,
}

/// How many times a call that failed as UNAVAILABLE (deal-service down, a connection reset, a
/// refused stream) is sent in all, time allowing. Every call here is idempotent (by reservation
/// id), so resending cannot take or give units twice.
pub const ATTEMPTS: usize = 3;
/// The pause before resending, doubled each time.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Time kept back from the caller's deadline for what follows the call (recording the order and
/// replying), so a reservation is never made for a caller that cannot be answered in time.
pub const MARGIN: Duration = Duration::from_millis(50);
/// HTTP/2 connections to deal-service, calls spread over them in turn: one connection's streams
/// (64 by default on deal-service) and its single socket would be the bottleneck under a surge;
/// eight carry 512 calls at once, twice order-service's default in-flight limit.
pub const DEFAULT_CONNECTIONS: usize = 8;
/// Keepalive pings on the connections to deal-service, so a dead peer is noticed within seconds.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A call's reply, on its way.
pub type Reply<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;

/// deal-service's HoldService, each call sent once (resending is [`DealsClient`]'s). What
/// order-service needs of deal-service, and where the tests inject faults.
pub trait HoldCalls: Send + Sync {
    fn batch_reserve(&self, request: Request<pb::BatchReserveUnitsRequest>) -> Reply<pb::BatchReserveUnitsResponse>;
    fn batch_confirm(&self, request: Request<pb::BatchConfirmUnitsRequest>) -> Reply<pb::BatchConfirmUnitsResponse>;
    fn release(&self, request: Request<pb::ReleaseUnitsRequest>) -> Reply<pb::Reservation>;
}

/// HoldService over HTTP/2 connections, the calls spread over them in turn, each call observed
/// (`grpc_client_*` metrics, a client span).
struct Connections {
    clients: Box<[HoldServiceClient<ObserveClient<Channel>>]>,
    next: AtomicUsize,
}

impl Connections {
    /// The next connection's client, in turn.
    fn client(&self) -> HoldServiceClient<ObserveClient<Channel>> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[index].clone()
    }
}

impl HoldCalls for Connections {
    fn batch_reserve(&self, request: Request<pb::BatchReserveUnitsRequest>) -> Reply<pb::BatchReserveUnitsResponse> {
        let mut client = self.client();
        Box::pin(async move { client.batch_reserve_units(request).await })
    }

    fn batch_confirm(&self, request: Request<pb::BatchConfirmUnitsRequest>) -> Reply<pb::BatchConfirmUnitsResponse> {
        let mut client = self.client();
        Box::pin(async move { client.batch_confirm_units(request).await })
    }

    fn release(&self, request: Request<pb::ReleaseUnitsRequest>) -> Reply<pb::Reservation> {
        let mut client = self.client();
        Box::pin(async move { client.release_units(request).await })
    }
}

/// A cheap-to-clone handle on deal-service's HoldService.
#[derive(Clone)]
pub struct DealsClient {
    calls: Arc<dyn HoldCalls>,
    /// The longest a call may take, whatever the caller's deadline.
    deadline: Duration,
    credentials: Arc<Credentials>,
}

impl std::fmt::Debug for DealsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DealsClient").field("deadline", &self.deadline).finish_non_exhaustive()
    }
}

/// How order-service proves to deal-service that it is a service.
pub enum Credentials {
    /// No token: deal-service runs without authentication.
    None,
    /// A token minted elsewhere (for a public-key setup, where only the issuer holds the private key).
    Token(String),
    /// Mints its own service tokens with this signer, renewing them before they expire.
    Signer(Signer, Mutex<Option<(String, Instant)>>),
}

/// Who order-service's tokens name.
const SERVICE_SUBJECT: &str = "order-service";
/// How long a minted service token lives, and how long before its end it is renewed.
const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(3600);
const SERVICE_TOKEN_RENEWAL: Duration = Duration::from_secs(300);

impl Credentials {
    /// Service tokens minted with `signer`.
    pub fn minted(signer: Signer) -> Self {
        Self::Signer(signer, Mutex::new(None))
    }

    fn bearer(&self) -> Result<Option<String>, OrderError> {
        match self {
            Self::None => Ok(None),
            Self::Token(token) => Ok(Some(token.clone())),
            Self::Signer(signer, cache) => {
                let mut cache = cache.lock().map_err(|_| OrderError::Internal("token cache poisoned".into()))?;
                if let Some((token, _)) = cache.as_ref().filter(|(_, renew_at)| Instant::now() < *renew_at) {
                    return Ok(Some(token.clone()));
                }
                let token = signer
                    .token(SERVICE_SUBJECT, Role::Service, SERVICE_TOKEN_TTL)
                    .map_err(|err| OrderError::Internal(format!("cannot mint a service token: {err}")))?;
                *cache = Some((token.clone(), Instant::now() + SERVICE_TOKEN_TTL - SERVICE_TOKEN_RENEWAL));
                Ok(Some(token))
            }
        }
    }
}

impl DealsClient {
    /// A client of `url` over [`DEFAULT_CONNECTIONS`] connections, opened on first use (over TLS
    /// when `tls` is set); each call takes at most `deadline`, and presents `credentials`.
    pub fn connect_lazy(
        url: &str,
        deadline: Duration,
        credentials: Credentials,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::connect_lazy_over(url, DEFAULT_CONNECTIONS, deadline, credentials, tls)
    }

    /// [`Self::connect_lazy`] over `connections` connections.
    pub fn connect_lazy_over(
        url: &str,
        connections: usize,
        deadline: Duration,
        credentials: Credentials,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(deadline)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        // Each lazy channel opens a connection of its own.
        let clients = (0..connections.max(1))
            .map(|_| HoldServiceClient::new(ObserveClientLayer.layer(endpoint.connect_lazy())))
            .collect();
        let calls = Arc::new(Connections { clients, next: AtomicUsize::new(0) });
        Ok(Self { calls, deadline, credentials: Arc::new(credentials) })
    }

    /// This client with its calls sent through `wrap(calls)` instead: a decorator that injects
    /// faults, in tests.
    pub fn wrapped(self, wrap: impl FnOnce(Arc<dyn HoldCalls>) -> Arc<dyn HoldCalls>) -> Self {
        Self { calls: wrap(self.calls), ..self }
    }

    /// Reserves units for every request of `requests` in one BatchReserveUnits call: each with its
    /// own deadline, the call's the latest of them. One answer per request, in order; `Err` when the
    /// call itself failed (after resending it while time allowed), for every request alike.
    pub async fn reserve_batch(
        &self,
        context: &CallContext,
        requests: &[(pb::ReserveUnitsRequest, Instant)],
    ) -> Result<Vec<Result<ReservedUnits, OrderError>>, OrderError> {
        let Some(latest) = requests.iter().map(|(_, give_up_at)| *give_up_at).max() else { return Ok(Vec::new()) };
        // Rebuilt for every attempt, so that a resent call carries the time each caller has left.
        let message = || pb::BatchReserveUnitsRequest {
            requests: requests
                .iter()
                .map(|(request, give_up_at)| pb::ReserveUnitsRequest {
                    timeout: Some(time::duration_to_proto(give_up_at.saturating_duration_since(Instant::now()))),
                    ..request.clone()
                })
                .collect(),
        };
        let budget = latest.saturating_duration_since(Instant::now());
        let response = self.call(context, budget, message, |calls, request| calls.batch_reserve(request)).await?;
        results_of(response.results, requests.len(), |reservation| reserved_units(&reservation))
    }

    /// Confirms the holds of `ids`, whose orders are recorded, in one BatchConfirmUnits call.
    pub async fn confirm_batch(
        &self,
        context: &CallContext,
        ids: &[Uuid],
    ) -> Result<Vec<Result<(), OrderError>>, OrderError> {
        let message = || pb::BatchConfirmUnitsRequest {
            requests: ids.iter().map(|id| pb::ConfirmUnitsRequest { reservation_id: id.to_string() }).collect(),
        };
        let response =
            self.call(context, context.remaining(), message, |calls, request| calls.batch_confirm(request)).await?;
        results_of(response.results, ids.len(), |_| Ok(()))
    }

    /// Gives the units of `reservation_id` back; a retry gives nothing back twice.
    pub async fn release(&self, context: &CallContext, reservation_id: Uuid) -> Result<(), OrderError> {
        let request = pb::ReleaseUnitsRequest { reservation_id: reservation_id.to_string() };
        self.call(context, context.remaining(), || request.clone(), |calls, request| calls.release(request)).await?;
        Ok(())
    }

    /// The longest a call may take, whatever the caller's deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Sends an idempotent call within `budget` (and never longer than the client's deadline): as
    /// `grpc-timeout` for deal-service, and as a local timer for a server that never answers. It
    /// carries the caller's request id and trace context, and is resent (`message` made again) on
    /// another connection while deal-service is UNAVAILABLE and time is left.
    async fn call<Req, Resp>(
        &self,
        context: &CallContext,
        budget: Duration,
        message: impl Fn() -> Req,
        send: impl Fn(&dyn HoldCalls, Request<Req>) -> Reply<Resp>,
    ) -> Result<Resp, OrderError> {
        let give_up_at = Instant::now() + budget.min(self.deadline);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let left = give_up_at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OrderError::DealServiceUnavailable { code: Code::DeadlineExceeded });
            }
            let mut request = Request::new(message());
            request.set_timeout(left);
            context.propagate(request.metadata_mut());
            if let Some(token) = self.credentials.bearer()? {
                let value = auth::bearer(&token)
                    .ok_or_else(|| OrderError::Internal("the service token is not a valid header".into()))?;
                request.metadata_mut().insert("authorization", value);
            }
            let status = match tokio::time::timeout(left, send(self.calls.as_ref(), request)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_elapsed) => return Err(OrderError::DealServiceUnavailable { code: Code::DeadlineExceeded }),
            };
            let err = from_deal_status(status);
            let retryable = matches!(err, OrderError::DealServiceUnavailable { code: Code::Unavailable });
            if !retryable || attempt == ATTEMPTS || give_up_at <= Instant::now() + backoff {
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        unreachable_attempts()
    }
}

/// The request built from what order-service knows of `order`, to reserve under `reservation_id`.
pub fn reserve_request(reservation_id: Uuid, order: &NewOrder) -> pb::ReserveUnitsRequest {
    pb::ReserveUnitsRequest {
        deal: names::format(names::DEALS, order.deal_id),
        reservation_id: reservation_id.to_string(),
        quantity: order.quantity,
        expected_unit_price: order.shown_unit_price.as_ref().map(Price::to_proto),
        customer_id: order.customer_id.clone(),
        waitlist_entry: order
            .waitlist_entry
            .map(|entry| names::format_waitlist_entry(order.deal_id, entry))
            .unwrap_or_default(),
        timeout: None,
    }
}

/// What order-service needs of a reservation deal-service made.
fn reserved_units(reservation: &pb::Reservation) -> Result<ReservedUnits, OrderError> {
    let mut violations = Violations::default();
    let unit_price = Price::parse("unit_price", reservation.unit_price.as_ref(), &mut violations);
    let hold_time = reservation.create_time.as_ref().and_then(|at| time::parse("create_time", at, &mut violations));
    let approval_window = reservation
        .approval_window
        .as_ref()
        .and_then(|window| chrono::TimeDelta::try_seconds(window.seconds).filter(|_| window.nanos == 0));
    if reservation.approval_window.is_some() && approval_window.is_none() {
        violations.add("approval_window", "must be whole seconds");
    }
    match (unit_price, hold_time) {
        (Some(unit_price), Some(hold_time)) if violations.is_empty() => {
            Ok(ReservedUnits { unit_price, hold_time, approval_window })
        }
        _ => Err(OrderError::Internal(format!("deal-service sent an invalid reservation: {violations:?}"))),
    }
}

/// Each result of a batch call, as its request's answer: the reservation read by `read`, or the
/// status it carries mapped exactly as a unary call's status is.
fn results_of<T>(
    results: Vec<pb::ReservationResult>,
    expected: usize,
    read: impl Fn(pb::Reservation) -> Result<T, OrderError>,
) -> Result<Vec<Result<T, OrderError>>, OrderError> {
    if results.len() != expected {
        return Err(OrderError::Internal(format!("deal-service answered {} of {expected} requests", results.len())));
    }
    Ok(results
        .into_iter()
        .map(|result| match result.result {
            Some(pb::reservation_result::Result::Reservation(reservation)) => read(reservation),
            Some(pb::reservation_result::Result::Error(status)) => Err(from_deal_status(status::from_message(status))),
            None => Err(OrderError::Internal("deal-service sent an empty result".into())),
        })
        .collect())
}

/// The loop above always returns; this keeps the compiler satisfied without a panic.
fn unreachable_attempts<T>() -> Result<T, OrderError> {
    Err(OrderError::DealServiceUnavailable { code: Code::Unavailable })
}

/// A refusal passes through with its details, and so does deal-service's own OVERLOADED (with its
/// RetryInfo: nothing was reserved). A status deal-service's code did not make (no `ErrorInfo`: a
/// reset or refused stream, a broken connection, a timeout in transit) is UNAVAILABLE, and
/// retried; anything else of deal-service's is ours to log.
fn from_deal_status(status: Status) -> OrderError {
    let reason = status.get_error_details().error_info().map(|info| info.reason.clone());
    match (status.code(), reason.as_deref()) {
        (Code::NotFound | Code::FailedPrecondition | Code::AlreadyExists, Some(_)) => OrderError::DealRefused(status),
        (Code::ResourceExhausted, Some("OVERLOADED" | "RATE_LIMITED")) => OrderError::DealRefused(status),
        (Code::DeadlineExceeded, _) | (Code::Cancelled, None) => {
            tracing::debug!(code = ?status.code(), "deal-service did not answer in time");
            OrderError::DealServiceUnavailable { code: Code::DeadlineExceeded }
        }
        (Code::Unauthenticated | Code::PermissionDenied, Some(_)) => OrderError::Internal(format!(
            "deal-service refused order-service's credentials ({:?}): check JWT_SECRET or renew DEAL_SERVICE_TOKEN",
            status.code()
        )),
        (Code::Unavailable, _) | (_, None) => {
            tracing::debug!(code = ?status.code(), message = status.message(), "deal-service unavailable");
            OrderError::DealServiceUnavailable { code: Code::Unavailable }
        }
        (code, Some(reason)) => {
            OrderError::Internal(format!("deal-service answered {code:?} ({reason}): {}", status.message()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::ErrorDetails;

    use super::*;

    fn from_deal_service(code: Code, reason: &str) -> Status {
        let details = ErrorDetails::with_error_info(reason, "deal.topkart.com", HashMap::new());
        Status::with_error_details(code, "refused", details)
    }

    #[test]
    fn a_status_deal_service_did_not_make_is_unavailable_never_internal() {
        // What the transport says when a connection breaks, a stream is refused or reset, or the
        // peer sends GOAWAY: none carries an ErrorInfo.
        for status in [
            Status::unknown("transport error"),
            Status::internal("h2 protocol error: error reading a body from connection"),
            Status::unavailable("connection refused"),
            Status::resource_exhausted("Too many active requests for the connection"),
            Status::cancelled("stream reset"),
        ] {
            let mapped = from_deal_status(status.clone());
            assert!(matches!(mapped, OrderError::DealServiceUnavailable { .. }), "{status:?} became {mapped:?}");
        }
        assert!(matches!(
            from_deal_status(Status::unavailable("down")),
            OrderError::DealServiceUnavailable { code: Code::Unavailable }
        ));
    }

    #[test]
    fn deal_services_refusals_and_its_overload_pass_through_and_its_bugs_are_internal() {
        for (code, reason) in [
            (Code::FailedPrecondition, "INSUFFICIENT_UNITS"),
            (Code::NotFound, "DEAL_NOT_FOUND"),
            (Code::ResourceExhausted, "OVERLOADED"),
        ] {
            assert!(
                matches!(from_deal_status(from_deal_service(code, reason)), OrderError::DealRefused(_)),
                "{reason}"
            );
        }
        assert!(matches!(
            from_deal_status(from_deal_service(Code::Unavailable, "DATABASE_UNAVAILABLE")),
            OrderError::DealServiceUnavailable { code: Code::Unavailable }
        ));
        assert!(matches!(from_deal_status(from_deal_service(Code::Internal, "INTERNAL")), OrderError::Internal(_)));
    }
}
