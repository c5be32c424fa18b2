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

pub mod changes;
pub mod convert;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod holds;
pub mod live_deals;
pub mod routes;
pub mod store;
pub mod waitlist;
pub mod watch;

use std::future::Future;

use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{
    proto::{deal::deal_service_server::SERVICE_NAME, holds::hold_service_server::HoldServiceServer},
    shared::server,
};

/// The `google.rpc.ErrorInfo` domain of this service's errors.
pub const DOMAIN: &str = "deal.topkart.com";

/// The fewest connections deal-service runs with: one the change listener holds (WatchDeal), one
/// for requests, one for the sale.
pub const MIN_CONNECTIONS: u32 = 3;

/// deal-service's database: `pool` for everything but the sale, whose reservations and
/// confirmations have a pool of their own, of at most `sale_connections`, on the sale's thread
/// ([`batching::Sale`]).
pub struct Database {
    pub pool: PgPool,
    pub sale_connections: u32,
}

impl Database {
    /// How `max_connections` in all are shared, (requests, sale): half for the sale, the rest for
    /// everything else; `None` below [`MIN_CONNECTIONS`].
    pub fn split(max_connections: u32) -> Option<(u32, u32)> {
        (max_connections >= MIN_CONNECTIONS).then(|| {
            let sale = max_connections / 2;
            (max_connections - sale, sale)
        })
    }
}

/// Serves the deal API (behind `settings.auth`), health and reflection on `listener` until
/// `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    database: Database,
    settings: server::ServerSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), server::ServeError> {
    let (health, health_service) = server::Health::start(database.pool.clone(), &[SERVICE_NAME]).await;
    let sale = holds::batching::Sale::start(&database).map_err(server::ServeError::Start)?;
    // WatchDeal's streams would hold the graceful shutdown open: they end (UNAVAILABLE) first.
    let (stopping, stop_watching) = tokio::sync::watch::channel(false);
    let holds = HoldServiceServer::new(holds::grpc::HoldApi::new(database.pool.clone(), &sale))
        .max_decoding_message_size(server::MAX_REQUEST_BYTES);
    let api = grpc::DealApi::new(database.pool, &settings.limits, stop_watching);
    let api = routes::DealRoutes::new(api);
    let router = server::builder(&settings)?.add_service(health_service).add_service(api).add_service(holds);
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    let served = server::serve(server::with_reflection(router, &[SERVICE_NAME])?, listener, health, shutdown).await;
    // The calls have ended (or been cut at the drain's end): the sale's connections close cleanly.
    sale.close().await;
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connections_are_shared_between_requests_and_the_sale_within_the_budget() {
        assert_eq!(Database::split(MIN_CONNECTIONS - 1), None, "the listener alone would hold the requests' one");
        assert_eq!(Database::split(3), Some((2, 1)));
        assert_eq!(Database::split(10), Some((5, 5)));
        assert_eq!(Database::split(11), Some((6, 5)));
    }
}
