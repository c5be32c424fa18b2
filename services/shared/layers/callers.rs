//! Who is calling, for every API call: the bearer token verified ([`Authenticator`]), the verified
//! [`Caller`] put into the request's extensions for the handlers to authorize against, and the
//! caller's rate limit applied ([`RateLimiter`]). A call without a valid token is answered
//! UNAUTHENTICATED here, after its address's rate limit. Health and reflection pass untouched, and
//! calls between our services (order-service reserving units) are never rate limited. A call over
//! its caller's rate is answered RESOURCE_EXHAUSTED (`RATE_LIMITED`), held for its retry delay as
//! admission holds its refusals: a caller that ignores the delay cannot spin on refusals.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{Request, Response};
use tonic::{
    Code, Status,
    body::Body,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

use super::{
    admission::{DOMAIN, RetryDelays, deadline_of, hold_refusal, whole_deadline},
    rate_limit::{CallerKey, RateLimiter},
};
use crate::shared::{
    auth::{Authenticator, Caller, Role},
    methods, metrics, status,
};

/// Applies [`Callers`].
#[derive(Clone)]
pub struct CallersLayer {
    auth: Authenticator,
    limiter: Option<RateLimiter>,
    delays: Arc<RetryDelays>,
}

impl CallersLayer {
    /// Verifies tokens with `auth`, and limits callers with `limiter` when set, telling them to
    /// come back after `delays`.
    pub fn new(auth: Authenticator, limiter: Option<RateLimiter>, delays: Arc<RetryDelays>) -> Self {
        Self { auth, limiter, delays }
    }
}

impl<S> Layer<S> for CallersLayer {
    type Service = Callers<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Callers { inner, auth: self.auth.clone(), limiter: self.limiter.clone(), delays: Arc::clone(&self.delays) }
    }
}

/// The service [`CallersLayer`] makes.
#[derive(Clone)]
pub struct Callers<S> {
    inner: S,
    auth: Authenticator,
    limiter: Option<RateLimiter>,
    delays: Arc<RetryDelays>,
}

impl<S> Service<Request<Body>> for Callers<S>
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

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let Some(method) = methods::lookup(request.uri().path()).filter(|method| !method.infrastructure) else {
            return Box::pin(self.inner.call(request));
        };
        let verdict = self.auth.authenticate_headers(request.headers());
        // Every log line of the call names its caller (this runs in the call's span).
        if let Ok(Caller::Token { subject, .. }) = &verdict {
            tracing::Span::current().record("subject", subject.as_str());
        }
        // Calls between our services (a service token) are not limited: order-service's own
        // admission bounds them.
        if let Some(limiter) = self.limiter.as_ref()
            && let Some(key) = rate_limit_key(&verdict, &request)
            && let Err(wait) = limiter.check(&key)
        {
            metrics::call_rate_limited(method);
            metrics::admission_refused("rate_limited");
            let arrived = Instant::now();
            let deadline = deadline_of(&request, arrived);
            // A caller over its rate is held for as long as its call allows, as a flooding one,
            // and told when its bucket has room again.
            let delay = self.delays.for_caller(wait);
            let hold = delay.max(whole_deadline(arrived, deadline));
            return Box::pin(async move {
                hold_refusal(arrived, hold, deadline).await;
                Ok(rate_limited(delay).into_http())
            });
        }
        match verdict {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            // Held a little, so that a flood of bad tokens cannot spin on the verification.
            Err(status) => {
                let (arrived, deadline) = (Instant::now(), deadline_of(&request, Instant::now()));
                Box::pin(async move {
                    hold_refusal(arrived, UNAUTHENTICATED_HOLD, deadline).await;
                    Ok(status.into_http())
                })
            }
        }
    }
}

/// How long an UNAUTHENTICATED answer is held: a client with a bad token learns it a moment late,
/// and a flood of bad tokens costs a verification per 100 ms per stream, not per round trip.
const UNAUTHENTICATED_HOLD: Duration = Duration::from_millis(100);

/// Whose bucket a call takes from: its subject's, or its address's without a valid token; none
/// for another service of ours.
fn rate_limit_key(verdict: &Result<Caller, Status>, request: &Request<Body>) -> Option<CallerKey> {
    match verdict {
        Ok(Caller::Token { role: Role::Service, .. }) => None,
        Ok(Caller::Token { subject, .. }) => Some(CallerKey::Subject(subject.clone())),
        Ok(Caller::Trusted) | Err(_) => peer_address(request).map(CallerKey::Peer),
    }
}

/// The peer's address, over plain TCP or TLS (as `tonic::Request::remote_addr` finds it).
pub(super) fn peer_address(request: &Request<Body>) -> Option<std::net::IpAddr> {
    let extensions = request.extensions();
    let tcp = extensions.get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr);
    let tls = || extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|tls| tls.get_ref().remote_addr());
    tcp.or_else(tls).map(|peer| peer.ip())
}

/// RESOURCE_EXHAUSTED, reason `RATE_LIMITED`, retry after `wait`.
pub fn rate_limited(wait: Duration) -> Status {
    status::retryable(
        Code::ResourceExhausted,
        DOMAIN,
        "RATE_LIMITED",
        "too many calls from this caller; retry after the RetryInfo delay",
        wait,
    )
}
