//! DealService's routes: tonic's generated server, but for the two methods whose replies many calls
//! share — WatchDeal (each version of a deal goes to every watcher) and ListDeals (the first page of
//! live deals goes to every customer opening the app). Their routes send those replies as bytes
//! encoded once (`shared::encoded`), which the generated routes cannot: they encode every message
//! they send. Requests decode as on every other route, and each call still goes through the whole
//! server's layers (`shared::layers`), which wrap this service.

use std::{convert::Infallible, sync::Arc, task::Poll};

use tonic::{
    body::Body,
    codegen::{BoxFuture, StdError, http},
    server::{Grpc, NamedService},
};
use tower::Service;

use crate::{
    proto::deal::{self as pb, deal_service_server::DealServiceServer},
    shared::{encoded::ReplyCodec, server::MAX_REQUEST_BYTES},
};

use super::grpc::DealApi;

/// DealService, with WatchDeal and ListDeals served from bytes encoded once.
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

/// `codec`'s route, decoding requests as the generated routes do. A setting given to the generated
/// server in [`DealRoutes::new`] (message sizes, compression) is given here too, or these two
/// methods would not have it.
fn route<T, U>() -> Grpc<ReplyCodec<T, U>>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + prost::Name + Default + Send + 'static,
{
    Grpc::new(ReplyCodec::default()).max_decoding_message_size(MAX_REQUEST_BYTES)
}

impl<B> Service<http::Request<B>> for DealRoutes
where
    B: http_body::Body + Send + 'static,
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
                let watch = tower::service_fn(move |call| {
                    let api = Arc::clone(&api);
                    async move { api.watch_deal_encoded(call).await }
                });
                Ok(route::<pb::Deal, pb::WatchDealRequest>().server_streaming(watch, request).await)
            }),
            Some("ListDeals") => Box::pin(async move {
                let list = tower::service_fn(move |call| {
                    let api = Arc::clone(&api);
                    async move { api.list_deals_encoded(call).await }
                });
                Ok(route::<pb::ListDealsResponse, pb::ListDealsRequest>().unary(list, request).await)
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
