//! order-service: customers place, track and cancel orders; admins approve or reject them. Units
//! come from deal-service over gRPC, never from its tables.
//!
//! Layers: [`grpc`] decodes, validates, calls and maps errors, with [`convert`] turning domain
//! values into messages and back; [`domain`] holds the rules, [`placing`] (CreateOrder: holding
//! units through deal-service, recording the order, abandoning a failed attempt) and [`deciding`]
//! (approve, reject, cancel) apply them; [`store`] holds the SQL of order-service's tables;
//! [`error`] is the one error type and its mapping to gRPC status.

pub mod convert;
pub mod deciding;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod placing;
pub mod store;

use std::future::Future;

use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{
    proto::order::order_service_server::{OrderServiceServer, SERVICE_NAME},
    shared::{layers::admission::stock::StockBoard, server},
};

/// The `google.rpc.ErrorInfo` domain of this service's own errors.
pub const DOMAIN: &str = "order.topkart.com";

/// Serves the order API (behind `settings.auth`), health and reflection on `listener` until
/// `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    pool: PgPool,
    deals: placing::holds::DealsClient,
    settings: server::ServerSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), server::ServeError> {
    let (health, health_service) = server::Health::start(pool.clone(), &[SERVICE_NAME]).await;
    let board = StockBoard::new(settings.limits.sold_out_for);
    let settings = server::ServerSettings { stock: Some(placing::stock::aware(board.clone())), ..settings };
    let api = OrderServiceServer::new(grpc::OrderApi::new(pool, deals, board))
        .max_decoding_message_size(server::MAX_REQUEST_BYTES);
    let router = server::builder(&settings)?.add_service(health_service).add_service(api);
    server::serve(server::with_reflection(router, &[SERVICE_NAME])?, listener, health, shutdown).await
}
