//! deal-service: admins create and update deals, customers read, watch and wait for them
//! (DealService), and order-service holds, confirms and releases their units (HoldService).
//!
//! Layers: [`grpc`] (DealService) and [`holds::grpc`] (HoldService) decode, validate, call and map
//! errors, with [`convert`] turning domain values into messages and back; [`domain`] holds the
//! rules of a deal, [`changes`] applies an admin's in a transaction, [`store`] holds the SQL of
//! deals; [`error`] is the one error type and its mapping to gRPC status. One folder per concern:
//! - [`holds`]: holding units for orders: the per-deal batches ([`holds::batching`], on the sale's
//!   thread), who gets units ([`holds::allocation`]), the per-customer limit
//!   ([`holds::customer_limit`]) and the statements on reservations;
//! - [`waitlist`]: joining, leaving and claiming a sold-out deal's waitlist;
//! - [`watch`]: WatchDeal's fan-out, one listener and one channel per watched deal;
//! - [`live_deals`]: the first page of live deals from a snapshot, which [`routes`] sends (with
//!   WatchDeal's messages) as bytes encoded once.

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
/// ([`holds::batching::Sale`]).
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
