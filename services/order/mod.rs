//! order-service: customers place, track and cancel orders; admins approve or reject them. Units
//! come from deal-service over gRPC, never from its tables.
//!
//! Layers: [`grpc`] decodes, validates, calls and maps errors, with [`convert`] turning domain
//! values into messages and back; [`domain`] holds the rules, [`placing`] (the CreateOrder
//! protocol) and [`deciding`] (approve, reject, cancel) apply them; [`store`] holds the SQL, and
//! [`recording`] coalesces the order inserts; [`deals`] is the client of deal-service, and
//! [`reserving`] coalesces the reservations and confirmations sent through it into batch calls;
//! [`stock`] tells admission which deals are sold out or ended, from deal-service's refusals;
//! [`error`] is the one error type and its mapping to gRPC status.

pub mod convert;
pub mod deals;
pub mod deciding;
pub mod domain;
pub mod error;
pub mod faults;
pub mod grpc;
pub mod placing;
pub mod recording;
pub mod reserving;
pub mod stock;
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
    deals: deals::DealsClient,
    settings: server::ServerSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), server::ServeError> {
    run_with_faults(listener, pool, deals, settings, faults::Faults::default(), shutdown).await
}

/// [`run`], with faults injected for tests.
pub async fn run_with_faults(
    listener: TcpListener,
    pool: PgPool,
    deals: deals::DealsClient,
    settings: server::ServerSettings,
    faults: faults::Faults,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), server::ServeError> {
    let (health, health_service) = server::Health::start(pool.clone(), &[SERVICE_NAME]).await;
    let board = StockBoard::new(settings.limits.sold_out_for);
    let settings = server::ServerSettings { stock: Some(stock::aware(board.clone())), ..settings };
    let api = OrderServiceServer::new(grpc::OrderApi::new(pool, deals, board, faults))
        .max_decoding_message_size(server::MAX_REQUEST_BYTES);
    let router = server::builder(&settings)?.add_service(health_service).add_service(api);
    server::serve(server::with_reflection(router, &[SERVICE_NAME])?, listener, health, shutdown).await
}
