//! The clients of a scenario run in [`crate::scenario`]: each one call at a time, as fast as the
//! answers come, recording what each call got.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::HealthCheckRequest;
use uuid::Uuid;

use topkart::{
    proto::{
        deal::{self as dealpb, deal_service_client::DealServiceClient},
        order::{self as orderpb, order_service_client::OrderServiceClient},
    },
    shared::auth::{Role, Signer},
};

use crate::{
    discard,
    options::{Authorization, LoadError, Options, Scenario, authorization, request, retry_delay},
    report::Recorder,
};

/// The clients of a run and what they call.
pub(crate) struct Clients<'a> {
    pub scenario: Scenario,
    pub options: &'a Options,
    pub deals: &'a [Channel],
    pub orders: &'a [Channel],
    pub deal_names: Arc<[String]>,
}

/// What one stretch of load did.
pub(crate) struct Load {
    pub recorder: Recorder,
    /// Units of every order placed, warm-up included.
    pub ordered_units: i64,
    pub window: Duration,
}

impl Clients<'_> {
    /// Runs every client until `duration` after `record_from`, recording from then on.
    pub async fn drive(&self, record_from: Instant) -> Result<Load, LoadError> {
        let options = self.options;
        let end = record_from + options.duration;
        let mut clients = Vec::with_capacity(options.concurrency);
        for index in 0..options.concurrency {
            let client = Client {
                scenario: self.scenario,
                index,
                deals: self.deals[index % self.deals.len()].clone(),
                orders: self.orders.get(index % self.orders.len().max(1)).cloned(),
                authorization: buyer_authorization(options.signer.as_ref(), index)?,
                deal_names: self.deal_names.clone(),
                deadline: options.deadline,
                random: 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
                ignore_retry_info: options.ignore_retry_info,
            };
            clients.push(tokio::spawn(client.run(record_from, end)));
        }
        let mut load = Load { recorder: Recorder::default(), ordered_units: 0, window: Duration::ZERO };
        for client in clients {
            let outcome = client.await?;
            load.recorder.merge(outcome.recorder);
            load.ordered_units += outcome.ordered_units;
        }
        load.window = Instant::now().saturating_duration_since(record_from);
        Ok(load)
    }
}

fn buyer_authorization(signer: Option<&Signer>, index: usize) -> Result<Option<Authorization>, LoadError> {
    signer.map(|signer| authorization(signer, Role::Customer, &format!("loadgen-buyer-{index}"))).transpose()
}

/// One simulated client: one call at a time, as fast as the answers come.
struct Client {
    scenario: Scenario,
    index: usize,
    deals: Channel,
    orders: Option<Channel>,
    authorization: Option<Authorization>,
    deal_names: Arc<[String]>,
    deadline: Duration,
    random: u64,
    ignore_retry_info: bool,
}

/// What one client did.
struct ClientOutcome {
    recorder: Recorder,
    /// Units of every order placed, warm-up included.
    ordered_units: i64,
}

/// The calls a client makes.
enum Call {
    Order(usize),
    List,
    Get(usize),
    Health,
}

impl Client {
    async fn run(mut self, record_from: Instant, end: Instant) -> ClientOutcome {
        let mut outcome = ClientOutcome { recorder: Recorder::default(), ordered_units: 0 };
        loop {
            let started = Instant::now();
            if started >= end {
                return outcome;
            }
            let call = self.next_call();
            let is_order = matches!(call, Call::Order(_));
            let result = self.call(call).await;
            let code = result.as_ref().map_or_else(tonic::Status::code, |()| Code::Ok);
            if is_order && code == Code::Ok {
                outcome.ordered_units += 1;
            }
            if started >= record_from {
                outcome.recorder.record(started.elapsed(), code);
            }
            if let (Scenario::Surge, Err(status)) = (self.scenario, &result)
                && !self.ignore_retry_info
                && let Some(delay) = retry_delay(status)
            {
                tokio::time::sleep(delay.min(end.saturating_duration_since(Instant::now()))).await;
            }
        }
    }

    fn next_call(&mut self) -> Call {
        let roll = self.next_random();
        let deal = (roll >> 8) as usize % self.deal_names.len().max(1);
        match self.scenario {
            Scenario::HotDeal
            | Scenario::HotDealSellOut
            | Scenario::Surge
            | Scenario::Watch
            | Scenario::Failover
            | Scenario::Polite => Call::Order(0),
            Scenario::ListDeals => Call::List,
            Scenario::HealthCheck => Call::Health,
            Scenario::Browse if roll.is_multiple_of(2) => Call::List,
            Scenario::Browse => Call::Get(deal),
            Scenario::Mixed => match roll % 10 {
                0 | 1 => Call::Order(deal),
                2..=5 => Call::List,
                _ => Call::Get(deal),
            },
        }
    }

    /// xorshift64*: enough to spread calls over deals, and no dependency.
    fn next_random(&mut self) -> u64 {
        self.random ^= self.random >> 12;
        self.random ^= self.random << 25;
        self.random ^= self.random >> 27;
        self.random.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn request<T>(&self, message: T) -> Request<T> {
        request(message, self.deadline, self.authorization.as_ref())
    }

    async fn call(&self, call: Call) -> Result<(), tonic::Status> {
        match call {
            Call::Order(deal) => {
                let Some(orders) = &self.orders else {
                    return Err(tonic::Status::failed_precondition("no order-service channel"));
                };
                let order = orderpb::Order {
                    deal: self.deal_names[deal].clone(),
                    quantity: 1,
                    // Without authentication the buyer is named in the payload.
                    customer_id: if self.authorization.is_none() {
                        format!("loadgen-buyer-{}", self.index)
                    } else {
                        String::new()
                    },
                    ..Default::default()
                };
                let request = self.request(orderpb::CreateOrderRequest {
                    order: Some(order),
                    request_id: Uuid::new_v4().to_string(),
                    waitlist_entry: String::new(),
                });
                OrderServiceClient::new(orders.clone()).create_order(request).await.map(drop)
            }
            Call::List if self.scenario == Scenario::ListDeals => {
                let request = self.request(dealpb::ListDealsRequest { page_size: 20, ..Default::default() });
                self.undecoded(request, "/topkart.deal.v1.DealService/ListDeals").await
            }
            Call::List => {
                let request = self.request(dealpb::ListDealsRequest { page_size: 20, ..Default::default() });
                DealServiceClient::new(self.deals.clone()).list_deals(request).await.map(drop)
            }
            Call::Get(deal) => {
                let request = self.request(dealpb::GetDealRequest { name: self.deal_names[deal].clone() });
                DealServiceClient::new(self.deals.clone()).get_deal(request).await.map(drop)
            }
            Call::Health => {
                let request = self.request(HealthCheckRequest { service: String::new() });
                self.undecoded(request, "/grpc.health.v1.Health/Check").await
            }
        }
    }
}

impl Client {
    /// Calls `path` and skips over the reply without decoding it (see [`discard`]).
    async fn undecoded<M: prost::Message + Send + Sync + 'static>(
        &self,
        request: Request<M>,
        path: &'static str,
    ) -> Result<(), tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.deals.clone());
        grpc.ready().await.map_err(|err| tonic::Status::unavailable(err.to_string()))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        grpc.unary(request, path, discard::DiscardReplies::default()).await.map(drop)
    }
}
