//! order-service's client of deal-service: reserve and release units over gRPC, with a deadline on
//! every call, and deal-service's answers mapped onto order-service's errors.

use std::time::Duration;

use chrono::{DateTime, Utc};
use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    transport::{Channel, ClientTlsConfig, Endpoint},
};
use uuid::Uuid;

use crate::{
    proto::deal::{self as pb, deal_service_client::DealServiceClient},
    shared::{
        auth::{Role, Signer},
        money::Price,
        names,
        status::Violations,
        time,
    },
};

use super::error::OrderError;

/// Units reserved for an order, at the price they were reserved at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedUnits {
    pub unit_price: Price,
    /// When the hold was made, by the database clock: the order must be recorded within
    /// `ORDER_WRITE_WINDOW` of it.
    pub hold_time: DateTime<Utc>,
}

/// How many times a call that failed as UNAVAILABLE is sent in all. Every call here is idempotent
/// (by reservation id), so resending cannot take or give units twice.
const ATTEMPTS: usize = 3;
/// The pause before resending, doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// A cheap-to-clone handle on deal-service.
#[derive(Clone)]
pub struct DealsClient {
    client: DealServiceClient<Channel>,
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
    /// A client that connects to `url` on first use (over TLS when `tls` is set), gives each call
    /// `deadline`, and presents `credentials`.
    pub fn connect_lazy(
        url: &str,
        deadline: Duration,
        credentials: Credentials,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())?.connect_timeout(deadline).tcp_nodelay(true);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect_lazy();
        Ok(Self { client: DealServiceClient::new(channel), deadline, credentials: Arc::new(credentials) })
    }

    /// Reserves `quantity` units of `deal_id` under `reservation_id` (the order id).
    pub async fn reserve(
        &self,
        reservation_id: Uuid,
        deal_id: Uuid,
        quantity: i32,
        shown_unit_price: Option<&Price>,
    ) -> Result<ReservedUnits, OrderError> {
        let request = pb::ReserveUnitsRequest {
            deal: names::format(names::DEALS, deal_id),
            reservation_id: reservation_id.to_string(),
            quantity,
            expected_unit_price: shown_unit_price.map(Price::to_proto),
        };
        let reservation =
            self.call(&request, |mut client, request| async move { client.reserve_units(request).await }).await?;
        let mut violations = Violations::default();
        let unit_price = Price::parse("unit_price", reservation.unit_price.as_ref(), &mut violations);
        let hold_time = reservation.create_time.as_ref().and_then(|at| time::parse("create_time", at, &mut violations));
        match (unit_price, hold_time) {
            (Some(unit_price), Some(hold_time)) => Ok(ReservedUnits { unit_price, hold_time }),
            _ => Err(OrderError::Internal(format!("deal-service sent an invalid reservation: {violations:?}"))),
        }
    }

    /// Gives the units of `reservation_id` back; a retry gives nothing back twice.
    pub async fn release(&self, reservation_id: Uuid) -> Result<(), OrderError> {
        let request = pb::ReleaseUnitsRequest { reservation_id: reservation_id.to_string() };
        self.call(&request, |mut client, request| async move { client.release_units(request).await }).await?;
        Ok(())
    }

    /// Confirms the hold of `reservation_id`, whose order is recorded.
    pub async fn confirm(&self, reservation_id: Uuid) -> Result<(), OrderError> {
        let request = pb::ConfirmUnitsRequest { reservation_id: reservation_id.to_string() };
        self.call(&request, |mut client, request| async move { client.confirm_units(request).await }).await?;
        Ok(())
    }

    /// Sends an idempotent call, each attempt with the deadline (both as `grpc-timeout` for the
    /// server and as a local timer for a server that never answers), resending it while deal-service
    /// is UNAVAILABLE. A timed-out attempt is not resent: the deadline is the customer's patience.
    async fn call<Req, Resp, Fut>(
        &self,
        message: &Req,
        send: impl Fn(DealServiceClient<Channel>, Request<Req>) -> Fut,
    ) -> Result<Resp, OrderError>
    where
        Req: Clone,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let mut request = Request::new(message.clone());
            request.set_timeout(self.deadline);
            if let Some(token) = self.credentials.bearer()? {
                let value = MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| OrderError::Internal("the service token is not a valid header".into()))?;
                request.metadata_mut().insert("authorization", value);
            }
            let status = match tokio::time::timeout(self.deadline, send(self.client.clone(), request)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_elapsed) => return Err(OrderError::DealServiceUnavailable { code: Code::DeadlineExceeded }),
            };
            if status.code() != Code::Unavailable || attempt == ATTEMPTS {
                return Err(from_deal_status(status));
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        unreachable_attempts()
    }
}

/// The loop above always returns; this keeps the compiler satisfied without a panic.
fn unreachable_attempts<T>() -> Result<T, OrderError> {
    Err(OrderError::DealServiceUnavailable { code: Code::Unavailable })
}

/// A refusal passes through with its details; a transport failure is UNAVAILABLE or
/// DEADLINE_EXCEEDED; anything else is ours to log.
fn from_deal_status(status: Status) -> OrderError {
    match status.code() {
        Code::NotFound | Code::FailedPrecondition | Code::AlreadyExists => OrderError::DealRefused(status),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            tracing::warn!(code = ?status.code(), message = status.message(), "deal-service unavailable");
            OrderError::DealServiceUnavailable {
                code: if status.code() == Code::DeadlineExceeded { Code::DeadlineExceeded } else { Code::Unavailable },
            }
        }
        Code::Unauthenticated | Code::PermissionDenied => OrderError::Internal(format!(
            "deal-service refused order-service's credentials ({:?}): check JWT_SECRET or renew DEAL_SERVICE_TOKEN",
            status.code()
        )),
        code => OrderError::Internal(format!("deal-service answered {code:?}: {}", status.message())),
    }
}
