//! What lets a browser call the APIs: gRPC-Web (tonic-web), which carries a call's trailers in its
//! body, so it works over HTTP/1.1 and through `fetch`, and CORS for pages of other origins.
//!
//! Both sit outside the rest of the stack: a gRPC-Web call is turned into a gRPC call before the
//! request id, span, metrics, admission and caller layers see it, so they treat it like any other,
//! and its reply (errors of those layers included) is turned back on the way out. CORS is
//! outermost, so a preflight is answered without a token and never counts as a call.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderName, HeaderValue, Method, Request, Response, header};
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The request headers a gRPC-Web client may send from another origin: the token, gRPC-Web's own,
/// the deadline, the request id, and the trace context.
const ALLOWED_HEADERS: [&str; 8] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// The reply headers a page may read: the status and its details (`google.rpc.Status`, with the
/// `ErrorInfo`), and the request id to quote in a support request.
const EXPOSED_HEADERS: [&str; 4] = ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"];

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// CORS for pages of `origins` (exact `scheme://host[:port]` values), or none when empty: then no
/// CORS header is sent and browsers keep other origins' pages out.
pub fn cors(origins: &[HeaderValue]) -> Option<Cors> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::POST])
        .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(PREFLIGHT_MAX_AGE)
        .vary([header::ORIGIN]);
    Some(Cors { allowed: origins.into(), layer })
}

/// tower-http's CORS, with every `access-control-*` header taken off the replies to requests from
/// other origins (or none): tower-http sends those the exposed headers, and answers their
/// preflights with the allowed methods, headers and max age, which grant nothing but say more than
/// a stranger needs. `Vary: Origin` stays, for caches.
#[derive(Clone)]
pub struct Cors {
    allowed: Arc<[HeaderValue]>,
    layer: CorsLayer,
}

impl<S> Layer<S> for Cors {
    type Service = ListedOriginsOnly<tower_http::cors::Cors<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        ListedOriginsOnly { allowed: self.allowed.clone(), inner: self.layer.layer(inner) }
    }
}

/// See [`Cors`].
#[derive(Clone)]
pub struct ListedOriginsOnly<S> {
    allowed: Arc<[HeaderValue]>,
    inner: S,
}

impl<S, B, R> Service<Request<B>> for ListedOriginsOnly<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ListedOriginsOnlyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let listed = request.headers().get(header::ORIGIN).is_some_and(|origin| self.allowed.contains(origin));
        ListedOriginsOnlyFuture { listed, inner: self.inner.call(request) }
    }
}

pin_project_lite::pin_project! {
    /// The reply of [`ListedOriginsOnly`].
    pub struct ListedOriginsOnlyFuture<F> {
        listed: bool,
        #[pin]
        inner: F,
    }
}

impl<F, R, E> Future for ListedOriginsOnlyFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if !*this.listed {
            let granted: Vec<HeaderName> = response
                .headers()
                .keys()
                .filter(|name| name.as_str().starts_with("access-control-"))
                .cloned()
                .collect();
            for name in granted {
                response.headers_mut().remove(name);
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// Parses one `--cors-allowed-origins` value: an origin as browsers send it, `http` or `https`,
/// a host and an optional port, no path.
pub fn parse_origin(value: &str) -> Result<HeaderValue, String> {
    let refused = || format!("{value:?} is not an origin such as https://deals.topkart.com");
    let uri: http::Uri = value.parse().map_err(|_| refused())?;
    // `http::Uri` reads `https://host` with the path `/`: the text itself must not have one.
    let bare = uri.path() == "/" && uri.query().is_none() && !value.ends_with('/');
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) if bare => HeaderValue::from_str(value).map_err(|_| refused()),
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_a_scheme_and_a_host_with_an_optional_port() {
        assert!(parse_origin("https://deals.topkart.com").is_ok());
        assert!(parse_origin("http://127.0.0.1:8080").is_ok());
    }

    #[test]
    fn a_path_a_wildcard_or_another_scheme_is_not_an_origin() {
        for value in
            ["https://deals.topkart.com/", "https://deals.topkart.com/board", "*", "deals.topkart.com", "ftp://x.y", ""]
        {
            assert!(parse_origin(value).is_err(), "{value}");
        }
    }

    #[test]
    fn no_origins_means_no_cors() {
        assert!(cors(&[]).is_none());
    }
}
