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

use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::net::TcpListener;

use crate::{proto::deal::deal_service_server::SERVICE_NAME, shared::server};

/// The `google.rpc.ErrorInfo` domain of this service's errors.
pub const DOMAIN: &str = "deal.topkart.com";

/// deal-service's connections to its database: the sale's reservations and confirmations have a
/// pool of their own, used only on the sale's thread (`batching`); everything else uses `requests`.
pub struct Pools {
    pub requests: PgPool,
    pub sale: PgPool,
}

impl Pools {
    /// `requests`, and a sale pool of at most `sale_connections` to the same database, opened when
    /// first used (by the sale's thread, whose runtime then reads their replies).
    pub fn new(requests: PgPool, sale_connections: u32) -> Self {
        let sale = PgPoolOptions::new()
            .max_connections(sale_connections.max(1))
            .acquire_timeout(requests.options().get_acquire_timeout())
            .connect_lazy_with((*requests.connect_options()).clone());
        Self { requests, sale }
    }

    /// How `max_connections` in all are shared: half (at least one) for the sale, the rest (at least
    /// one) for everything else.
    pub fn split(max_connections: u32) -> (u32, u32) {
        let sale = (max_connections / 2).max(1);
        (max_connections.saturating_sub(sale).max(1), sale)
    }
}

/// Serves the deal API (behind `settings.auth`), health and reflection on `listener` until
/// `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    pools: Pools,
    settings: server::ServerSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), server::ServeError> {
    let (health, health_service) = server::Health::start(pools.requests.clone(), &[SERVICE_NAME]).await;
    // WatchDeal's streams would hold the graceful shutdown open: they end (UNAVAILABLE) first.
    let (stopping, stop_watching) = tokio::sync::watch::channel(false);
    let api =
        grpc::DealApi::new(pools, settings.limits.max_watchers, stop_watching).map_err(server::ServeError::Start)?;
    let api = routes::DealRoutes::new(api);
    let router = server::builder(&settings)?.add_service(health_service).add_service(api);
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    server::serve(server::with_reflection(router, &[SERVICE_NAME])?, listener, health, shutdown).await
}
