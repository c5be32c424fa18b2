//! DealService's routes: tonic's generated server, but for the two methods whose replies many calls
//! share — WatchDeal (each version of a deal goes to every watcher) and ListDeals (the first page of
//! live deals goes to every customer opening the app). Their routes send those replies as bytes
//! encoded and framed once (`shared::encoded`), which the generated routes cannot: they encode and
//! frame every message they send. Requests decode as on every other route, within the same size
//! limit (`MAX_REQUEST_BYTES`, given to the generated server below), and each call still goes
//! through the whole server's layers (`shared::layers`), which wrap this service.

use std::{convert::Infallible, sync::Arc, task::Poll};

use tonic::{
    body::Body,
    codegen::{BoxFuture, StdError, http},
    server::NamedService,
};
use tower::Service;

use crate::{
    proto::deal::{self as pb, deal_service_server::DealServiceServer},
    shared::{encoded::route, server::MAX_REQUEST_BYTES},
};

use super::grpc::DealApi;

/// DealService, with WatchDeal and ListDeals served from bytes encoded and framed once.
#[derive(Clone)]
pub struct DealRoutes {
    api: Arc<DealApi>,
    generated: DealServiceServer<DealApi>,
}

impl DealRoutes {
    pub fn new(api: DealApi) -> Self {
        let api = Arc::new(api);
        let generated = DealServiceServer::from_arc(Arc::clone(&api)).max_decoding_message_size(MAX_REQUEST_BYTES);
        Self { api, generated }
    }
}

impl<B> Service<http::Request<B>> for DealRoutes
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let api = Arc::clone(&self.api);
        match method_of(request.uri().path()) {
            Some("WatchDeal") => Box::pin(async move {
                let call =
                    async { api.watch_deal_encoded(route::request::<pb::WatchDealRequest, _>(request).await?).await };
                Ok(route::server_streaming(call.await))
            }),
            Some("ListDeals") => Box::pin(async move {
                let call =
                    async { api.list_deals_encoded(route::request::<pb::ListDealsRequest, _>(request).await?).await };
                Ok(route::unary(call.await))
            }),
            _ => self.generated.call(request),
        }
    }
}

impl NamedService for DealRoutes {
    const NAME: &'static str = <DealServiceServer<DealApi> as NamedService>::NAME;
}

/// The method `path` names if it is one of DealService's: `/topkart.deal.v1.DealService/WatchDeal`
/// is `WatchDeal`.
fn method_of(path: &str) -> Option<&str> {
    path.strip_prefix('/')?.strip_prefix(<DealRoutes as NamedService>::NAME)?.strip_prefix('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_deal_service_paths_name_a_method() {
        assert_eq!(method_of("/topkart.deal.v1.DealService/WatchDeal"), Some("WatchDeal"));
        assert_eq!(method_of("/topkart.deal.v1.DealService/ListDeals"), Some("ListDeals"));
        assert_eq!(method_of("/topkart.deal.v1.DealServiceX/ListDeals"), None);
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), None);
    }
}
