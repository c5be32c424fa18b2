//! deal-service: admins create and update deals, customers read them, and order-service reserves
//! and releases their units.
//!
//! Layers: [`grpc`] decodes, validates, calls and maps errors, with [`convert`] turning domain
//! values into messages and back; [`domain`] and [`allocation`] hold the rules, [`changes`] and
//! [`batching`] apply them in transactions; [`store`] holds the SQL; [`error`] is the one error type
//! and its mapping to gRPC status. Two parts make the hot paths fast: [`batching`] coalesces the
//! reservations of one deal, [`live_deals`] serves the first page of live deals from a snapshot.
//! [`watch`] streams a deal's changes to its watchers (WatchDeal), and [`routes`] sends the replies
//! both share among callers as bytes encoded once; [`waitlisting`] applies the
//! waitlist's rules (`domain::waitlist`) in transactions.

pub mod allocation;
pub mod batching;
pub mod changes;
pub mod convert;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod live_deals;
pub mod routes;
pub mod store;
pub mod waitlisting;
pub mod watch;

use std::future::Future;

use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{proto::deal::deal_service_server::SERVICE_NAME, shared::server};

/// The `google.rpc.ErrorInfo` domain of this service's errors.
pub const DOMAIN: &str = "deal.topkart.com";

/// Serves the deal API (behind `settings.auth`), health and reflection on `listener` until
/// `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    pool: PgPool,
    settings: server::ServerSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), server::ServeError> {
    let (health, health_service) = server::Health::start(pool.clone(), &[SERVICE_NAME]).await;
    // WatchDeal's streams would hold the graceful shutdown open: they end (UNAVAILABLE) first.
    let (stopping, stop_watching) = tokio::sync::watch::channel(false);
    let api = routes::DealRoutes::new(grpc::DealApi::new(pool, settings.limits.max_watchers, stop_watching));
    let router = server::builder(&settings)?.add_service(health_service).add_service(api);
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    server::serve(server::with_reflection(router, &[SERVICE_NAME])?, listener, health, shutdown).await
}
