//! The `failover` scenario, for scripts/ha-test: the hot deal bought by clients that behave as a
//! careful client should while the database fails over under them. Each order attempt keeps its
//! `request_id` across retries (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, CANCELLED,
//! waiting the `RetryInfo` delay when given) until it is answered OK — recorded — or ABORTED
//! `ORDER_ABANDONED`, when a new attempt starts with a new id. It runs until SIGTERM (or
//! `--duration`), while the test writes what it does to `--events`; then it reports each event's
//! error window and codes, every OK order's id (which the test looks up in the database), and the
//! health transitions of every `--health` target, polled every 200 ms.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

use topkart::proto::order::{self as orderpb, order_service_client::OrderServiceClient};

use crate::{
    options::{Authorization, LoadError, Options, authorization, channels, request, retry_delay},
    report::{Check, status_name},
    setup,
    timeline::{self, Event, EventWindow, Second, Timeline, unix_ms},
};

/// How long one attempt may keep retrying before the client gives up on it (a failure: every outage
/// the test causes is far shorter).
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// The pause before a retry the server gave no delay for.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often each health target is asked.
const HEALTH_EVERY: Duration = Duration::from_millis(200);
/// Messages kept per code.
const MESSAGES_KEPT: usize = 4;

/// What the `failover` scenario adds to the shared options.
pub struct FailoverOptions {
    /// `NAME=URL` of each server whose `grpc.health.v1` status to follow.
    pub health: Vec<String>,
    /// The file of events (`UNIX_MS NAME` lines) the test writes while the load runs.
    pub events: Option<std::path::PathBuf>,
}

/// The run, as JSON for the test and as text for people.
#[derive(Debug, Serialize)]
pub struct FailoverReport {
    pub concurrency: usize,
    pub started_ms: u64,
    pub ended_ms: u64,
    /// Every reply, by status.
    pub statuses: BTreeMap<String, u64>,
    /// Order attempts by how they ended: `ok`, `abandoned`, `refused` (another code), `given_up`.
    pub attempts: BTreeMap<String, u64>,
    /// Attempts answered OK only after a retry.
    pub ok_after_retry: u64,
    /// A few of the messages each code came with, to tell the balancer's, the client's and the
    /// services' apart.
    pub messages: BTreeMap<String, BTreeSet<String>>,
    pub events: Vec<EventWindow>,
    /// Every target's status changes: (Unix ms, SERVING | NOT_SERVING | UNREACHABLE).
    pub health: BTreeMap<String, Vec<(u64, String)>>,
    pub per_second: Vec<Second>,
    pub checks: Vec<Check>,
    /// The id of every order a client was answered OK for.
    pub ok_orders: Vec<String>,
}

impl FailoverReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.passed)
    }

    pub fn to_text(&self) -> String {
        let mut text = format!(
            "scenario failover: {} clients, {:.1} s; attempts {:?}; {} OK after a retry\nreplies    ",
            self.concurrency,
            (self.ended_ms - self.started_ms) as f64 / 1000.0,
            self.attempts,
            self.ok_after_retry,
        );
        for (status, count) in &self.statuses {
            text.push_str(&format!(" {status} {count}"));
        }
        text.push('\n');
        for (code, messages) in &self.messages {
            text.push_str(&format!("messages   {code}: {messages:?}\n"));
        }
        for window in &self.events {
            text.push_str(&format!(
                "event {:<14} errors for {:.1} s (first {} s after), no order for {:.1} s: {:?}\n",
                window.event,
                window.error_window_s,
                window.first_error_after_s.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
                window.without_ok_s,
                window.errors,
            ));
        }
        for (target, changes) in &self.health {
            let changes: Vec<String> = changes
                .iter()
                .map(|(at, status)| format!("{status}@{:.1}s", at.saturating_sub(self.started_ms) as f64 / 1000.0))
                .collect();
            text.push_str(&format!("health {target}: {}\n", changes.join(" ")));
        }
        for check in &self.checks {
            let verdict = if check.passed { "ok  " } else { "FAIL" };
            text.push_str(&format!("check {verdict} {}: {}\n", check.name, check.detail));
        }
        text
    }
}

/// Runs the scenario until SIGTERM or `options.duration`.
pub async fn run(options: Options, failover: FailoverOptions) -> Result<FailoverReport, LoadError> {
    let deal_channels = channels(&options.deal_service, options.connections).await?;
    let order_channels = channels(&options.order_service, options.connections).await?;
    let admin = setup::Admin::new(deal_channels[0].clone(), options.signer.as_ref(), options.deadline)?;
    let deal = match &options.deal {
        Some(name) => name.clone(),
        None => admin.create_deal("hot deal", options.units).await?.name,
    };

    let stopping = Arc::new(AtomicBool::new(false));
    let health: Vec<_> = failover
        .health
        .iter()
        .map(|target| {
            let (name, url) = target.split_once('=').ok_or("--health takes NAME=URL")?;
            let channel =
                Channel::from_shared(url.to_owned())?.connect_timeout(Duration::from_millis(500)).connect_lazy();
            Ok::<_, LoadError>(tokio::spawn(follow_health(name.to_owned(), channel, stopping.clone())))
        })
        .collect::<Result<_, _>>()?;

    let started_ms = unix_ms(SystemTime::now());
    let mut clients = Vec::with_capacity(options.concurrency);
    for index in 0..options.concurrency {
        let buyer = Buyer {
            orders: OrderServiceClient::new(order_channels[index % order_channels.len()].clone()),
            authorization: options
                .signer
                .as_ref()
                .map(|signer| {
                    authorization(signer, topkart::shared::auth::Role::Customer, &format!("failover-buyer-{index}"))
                })
                .transpose()?,
            customer: format!("failover-buyer-{index}"),
            deal: deal.clone(),
            deadline: options.deadline,
        };
        clients.push(tokio::spawn(buyer.run(stopping.clone())));
    }
    tracing::info!(deal, clients = options.concurrency, "failover load started");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = tokio::time::sleep(options.duration) => {}
    }
    stopping.store(true, Ordering::Relaxed);
    let ended_ms = unix_ms(SystemTime::now());

    let mut outcome = BuyerOutcome::default();
    for client in clients {
        outcome.merge(client.await?);
    }
    let mut transitions = BTreeMap::new();
    for (target, task) in failover.health.iter().zip(health) {
        let name = target.split_once('=').map_or(target.as_str(), |(name, _)| name);
        transitions.insert(name.to_owned(), task.await?);
    }
    let events = match &failover.events {
        Some(path) => timeline::parse_events(&std::fs::read_to_string(path).unwrap_or_default())?,
        None => Vec::new(),
    };
    Ok(report(options.concurrency, started_ms, ended_ms, outcome, &events, transitions))
}

fn report(
    concurrency: usize,
    started_ms: u64,
    ended_ms: u64,
    outcome: BuyerOutcome,
    events: &[Event],
    health: BTreeMap<String, Vec<(u64, String)>>,
) -> FailoverReport {
    let statuses = outcome.timeline.totals();
    let count = |status: &str| statuses.get(status).copied().unwrap_or(0);
    let attempt = |ending: &str| outcome.attempts.get(ending).copied().unwrap_or(0);
    let after_last_event = events.last().map_or(started_ms, |event| event.at_ms);
    let ok_at_end = outcome.last_ok_ms.is_some_and(|at| at > after_last_event);
    let checks = vec![
        Check {
            name: "no INTERNAL or UNKNOWN".into(),
            passed: count("INTERNAL") + count("UNKNOWN") == 0,
            detail: format!("{} INTERNAL, {} UNKNOWN replies", count("INTERNAL"), count("UNKNOWN")),
        },
        Check {
            name: "every attempt settled".into(),
            passed: attempt("refused") + attempt("given_up") == 0,
            detail: format!(
                "{} attempts refused for another reason than ORDER_ABANDONED, {} given up after {} s of retries",
                attempt("refused"),
                attempt("given_up"),
                GIVE_UP_AFTER.as_secs()
            ),
        },
        Check {
            name: "orders placed after the last event".into(),
            passed: ok_at_end,
            detail: format!(
                "the last OK came {} ms after the last event",
                outcome.last_ok_ms.unwrap_or(0) as i64 - after_last_event as i64
            ),
        },
    ];
    FailoverReport {
        concurrency,
        started_ms,
        ended_ms,
        statuses,
        attempts: outcome.attempts,
        ok_after_retry: outcome.ok_after_retry,
        messages: outcome.messages,
        events: outcome.timeline.windows(events, ended_ms),
        health,
        per_second: outcome.timeline.per_second(started_ms),
        checks,
        ok_orders: outcome.ok_orders,
    }
}

/// One customer buying a unit at a time, retrying each attempt under its `request_id`.
struct Buyer {
    orders: OrderServiceClient<Channel>,
    authorization: Option<Authorization>,
    customer: String,
    deal: String,
    deadline: Duration,
}

#[derive(Default)]
struct BuyerOutcome {
    timeline: Timeline,
    attempts: BTreeMap<String, u64>,
    ok_after_retry: u64,
    messages: BTreeMap<String, BTreeSet<String>>,
    ok_orders: Vec<String>,
    last_ok_ms: Option<u64>,
}

impl BuyerOutcome {
    fn merge(&mut self, other: BuyerOutcome) {
        self.timeline.merge(other.timeline);
        for (ending, count) in other.attempts {
            *self.attempts.entry(ending).or_default() += count;
        }
        self.ok_after_retry += other.ok_after_retry;
        for (code, messages) in other.messages {
            let mine = self.messages.entry(code).or_default();
            for message in messages {
                if mine.len() < MESSAGES_KEPT {
                    mine.insert(message);
                }
            }
        }
        self.ok_orders.extend(other.ok_orders);
        self.last_ok_ms = self.last_ok_ms.max(other.last_ok_ms);
    }
}

impl BuyerOutcome {
    fn note(&mut self, status: &tonic::Status) {
        let messages = self.messages.entry(status_name(status.code())).or_default();
        if messages.len() < MESSAGES_KEPT {
            let reason = reason(status).map_or_else(String::new, |reason| format!("{reason}: "));
            messages.insert(format!("{reason}{}", status.message()));
        }
    }
}

impl Buyer {
    async fn run(self, stopping: Arc<AtomicBool>) -> BuyerOutcome {
        let mut outcome = BuyerOutcome::default();
        // An attempt begun goes on until it settles, even once stopping: its order may be recorded.
        while !stopping.load(Ordering::Relaxed) {
            let ending = self.attempt(&mut outcome).await;
            *outcome.attempts.entry(ending.to_owned()).or_default() += 1;
        }
        outcome
    }

    /// One order attempt under one `request_id`; how it ended.
    async fn attempt(&self, outcome: &mut BuyerOutcome) -> &'static str {
        let request_id = Uuid::new_v4().to_string();
        let give_up = SystemTime::now() + GIVE_UP_AFTER;
        for retry in 0.. {
            let result = self.orders.clone().create_order(self.request(&request_id)).await;
            let now = unix_ms(SystemTime::now());
            let status = match result {
                Ok(order) => {
                    outcome.timeline.record(now, Code::Ok);
                    outcome.ok_orders.push(order.into_inner().name.trim_start_matches("orders/").to_owned());
                    outcome.last_ok_ms = Some(now);
                    outcome.ok_after_retry += u64::from(retry > 0);
                    return "ok";
                }
                Err(status) => status,
            };
            outcome.timeline.record(now, status.code());
            outcome.note(&status);
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled => {}
                Code::Aborted if reason(&status).as_deref() == Some("ORDER_ABANDONED") => return "abandoned",
                code => {
                    tracing::warn!(code = %status_name(code), message = status.message(), "order refused");
                    return "refused";
                }
            }
            let pause = retry_delay(&status).unwrap_or(RETRY_PAUSE);
            if timeline::left(give_up) < pause {
                tracing::warn!(request_id, "order attempt given up");
                return "given_up";
            }
            tokio::time::sleep(pause).await;
        }
        unreachable!("the retries end by returning")
    }

    fn request(&self, request_id: &str) -> tonic::Request<orderpb::CreateOrderRequest> {
        let order = orderpb::Order {
            deal: self.deal.clone(),
            quantity: 1,
            // Without authentication the buyer is named in the payload.
            customer_id: if self.authorization.is_none() { self.customer.clone() } else { String::new() },
            ..Default::default()
        };
        request(
            orderpb::CreateOrderRequest {
                order: Some(order),
                request_id: request_id.to_owned(),
                waitlist_entry: String::new(),
            },
            self.deadline,
            self.authorization.as_ref(),
        )
    }
}

fn reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    Some(status.get_error_details().error_info()?.reason.clone())
}

/// Asks `channel`'s server for its health every [`HEALTH_EVERY`] until stopped; its changes.
async fn follow_health(name: String, channel: Channel, stopping: Arc<AtomicBool>) -> Vec<(u64, String)> {
    let mut client = HealthClient::new(channel);
    let mut changes: Vec<(u64, String)> = Vec::new();
    while !stopping.load(Ordering::Relaxed) {
        let asked = tokio::time::timeout(Duration::from_secs(1), client.check(HealthCheckRequest::default())).await;
        let status = match asked {
            Ok(Ok(reply)) => reply.into_inner().status().as_str_name().to_owned(),
            _ => "UNREACHABLE".to_owned(),
        };
        if changes.last().is_none_or(|(_, last)| *last != status) {
            tracing::info!(target = name, status, "health");
            changes.push((unix_ms(SystemTime::now()), status));
        }
        tokio::time::sleep(HEALTH_EVERY).await;
    }
    changes
}
