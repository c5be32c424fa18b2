//! What a run is told: the scenario, its options, and what every call needs (channels, a token,
//! a deadline, the delay a refusal asks for). Every scenario's module starts from here.

use std::time::Duration;

use sqlx::PgPool;
use tonic::{Request, metadata::MetadataValue, transport::Channel};

use topkart::shared::auth::{self, Role, Signer};

/// What to run; on the command line in kebab case (`hot-deal-sell-out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    HotDeal,
    HotDealSellOut,
    Browse,
    ListDeals,
    HealthCheck,
    Mixed,
    Surge,
    Watch,
    /// Runs apart ([`crate::failover`]): the hot deal while the database fails over.
    Failover,
    /// Runs apart ([`crate::polite`]): one buyer's orders of `--deal`, retried as RetryInfo asks.
    Polite,
}

impl Scenario {
    /// The scenario's name on the command line and in reports.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value().map(|value| value.get_name().to_owned()).unwrap_or_default()
    }

    pub fn places_orders(self) -> bool {
        matches!(
            self,
            Self::HotDeal
                | Self::HotDealSellOut
                | Self::Mixed
                | Self::Surge
                | Self::Watch
                | Self::Failover
                | Self::Polite
        )
    }
}

/// How to run it.
pub struct Options {
    pub deal_service: String,
    pub order_service: String,
    /// Concurrent clients, each with one call in flight at a time.
    pub concurrency: usize,
    /// HTTP/2 connections per service, shared round-robin by the clients.
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Units of each deal the scenario creates.
    pub units: i32,
    /// The deadline of every call.
    pub deadline: Duration,
    /// Mints the admin's and the buyers' tokens; `None` when the services run without authentication.
    pub signer: Option<Signer>,
    /// The database, for the invariant checker after the run.
    pub database: Option<PgPool>,
    /// The deal to sell (`hot-deal`, `watch`) instead of creating one.
    pub deal: Option<String>,
    /// WatchDeal streams of the `watch` scenario, and their connections.
    pub watchers: usize,
    pub watch_connections: usize,
    /// The deal-service the watchers use; `deal_service` when unset.
    pub watch_deal_service: Option<String>,
    /// The watched deal-service's process, whose resident memory the `watch` scenario reads.
    pub deal_service_pid: Option<u32>,
    /// Refused buyers resend at once (`surge`).
    pub ignore_retry_info: bool,
}

/// The load generator's own failures (setting up), as opposed to what it measures.
pub type LoadError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) type Authorization = MetadataValue<tonic::metadata::Ascii>;

pub(crate) fn authorization(signer: &Signer, role: Role, subject: &str) -> Result<Authorization, LoadError> {
    let token = signer.token(subject, role, Duration::from_secs(3600))?;
    Ok(auth::bearer(&token).ok_or("the token is not a valid header")?)
}

/// A request with a deadline and, when the services check tokens, an `authorization` header.
pub(crate) fn request<T>(message: T, deadline: Duration, authorization: Option<&Authorization>) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    if let Some(authorization) = authorization {
        request.metadata_mut().insert("authorization", authorization.clone());
    }
    request
}

pub(crate) async fn channels(url: &str, connections: usize) -> Result<Vec<Channel>, LoadError> {
    let mut channels = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        // Each `connect` opens a connection of its own, so calls spread over all of them.
        channels.push(Channel::from_shared(url.to_owned())?.connect().await?);
    }
    Ok(channels)
}

/// The delay a refusal's `RetryInfo` asks for.
pub(crate) fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    let delay = status.get_error_details().retry_info()?.retry_delay?;
    Some(delay)
}
