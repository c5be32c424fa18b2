//! The `polite` scenario, for scripts/bench-flood: one buyer (one token) placing `--orders` orders
//! of `--deal`, `--concurrency` at a time, as a careful client does while others flood the same
//! deal: every order has its own `request_id`, kept across retries; a RESOURCE_EXHAUSTED or
//! UNAVAILABLE reply is retried after its `RetryInfo` delay (or 100 ms without one) until the order
//! is answered otherwise or its patience runs out. Each order's latency runs from its first attempt
//! to its final answer, retries included.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tonic::{Code, transport::Channel};
use uuid::Uuid;

use topkart::{
    proto::order::{self as orderpb, order_service_client::OrderServiceClient},
    shared::auth::Role,
};

use crate::{
    options::{LoadError, Options, authorization, channels, request, retry_delay},
    report::{Latency, status_name},
};

/// The pause before a retry the server gave no delay for.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What the polite buyer saw.
#[derive(Debug, Serialize)]
pub struct PoliteReport {
    pub orders: usize,
    pub concurrency: usize,
    /// Orders answered OK.
    pub ok: usize,
    /// Final answers by status.
    pub statuses: BTreeMap<String, usize>,
    /// Calls sent, retries included.
    pub attempts: usize,
    /// From each order's first attempt to its final answer.
    pub latency_ms: Latency,
    pub elapsed_s: f64,
}

impl PoliteReport {
    pub fn to_text(&self) -> String {
        format!(
            "scenario polite: {} orders, {} at a time, {:.2} s: {} OK ({:.1} %), {} attempts; final answers {:?}\n\
             latency ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}\n",
            self.orders,
            self.concurrency,
            self.elapsed_s,
            self.ok,
            100.0 * self.ok as f64 / self.orders.max(1) as f64,
            self.attempts,
            self.statuses,
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.max,
        )
    }
}

/// Places `orders` orders of `options.deal` as the subject `polite-buyer`, giving each order at
/// most `patience`.
pub async fn run(options: &Options, orders: usize, patience: Duration) -> Result<PoliteReport, LoadError> {
    let deal = options.deal.clone().ok_or("polite needs --deal")?;
    let channels = channels(&options.order_service, options.connections).await?;
    let authorization =
        options.signer.as_ref().map(|signer| authorization(signer, Role::Customer, "polite-buyer")).transpose()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for index in 0..options.concurrency {
        let client = OrderServiceClient::new(channels[index % channels.len()].clone());
        let (deal, next, authorization, deadline) =
            (deal.clone(), Arc::clone(&next), authorization.clone(), options.deadline);
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < orders {
                outcomes.push(order(client.clone(), &deal, deadline, authorization.as_ref(), patience).await);
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::with_capacity(orders);
    for worker in workers {
        outcomes.extend(worker.await?);
    }
    let mut statuses = BTreeMap::new();
    for outcome in &outcomes {
        *statuses.entry(status_name(outcome.code)).or_default() += 1;
    }
    let mut latencies: Vec<u32> =
        outcomes.iter().map(|outcome| u32::try_from(outcome.elapsed.as_micros()).unwrap_or(u32::MAX)).collect();
    latencies.sort_unstable();
    Ok(PoliteReport {
        orders,
        concurrency: options.concurrency,
        ok: outcomes.iter().filter(|outcome| outcome.code == Code::Ok).count(),
        statuses,
        attempts: outcomes.iter().map(|outcome| outcome.attempts).sum(),
        latency_ms: Latency::of(&latencies),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

struct Outcome {
    code: Code,
    attempts: usize,
    elapsed: Duration,
}

/// One order, retried under its request id while the server asks to come back later.
async fn order(
    mut client: OrderServiceClient<Channel>,
    deal: &str,
    deadline: Duration,
    authorization: Option<&crate::options::Authorization>,
    patience: Duration,
) -> Outcome {
    let message = orderpb::CreateOrderRequest {
        order: Some(orderpb::Order { deal: deal.into(), quantity: 1, ..Default::default() }),
        request_id: Uuid::new_v4().to_string(),
        waitlist_entry: String::new(),
    };
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let status = match client.create_order(request(message.clone(), deadline, authorization)).await {
            Ok(_) => return Outcome { code: Code::Ok, attempts, elapsed: started.elapsed() },
            Err(status) => status,
        };
        let retriable = matches!(status.code(), Code::ResourceExhausted | Code::Unavailable);
        let pause = retry_delay(&status).unwrap_or(RETRY_PAUSE);
        if !retriable || started.elapsed() + pause > patience {
            return Outcome { code: status.code(), attempts, elapsed: started.elapsed() };
        }
        tokio::time::sleep(pause).await;
    }
}
