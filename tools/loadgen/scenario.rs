//! A load-generator run: many concurrent gRPC clients driving the real services in one scenario for a
//! fixed time after a warm-up, then a report (throughput, latency percentiles, counts by status) and
//! checks of what the load left behind (units accounted for, the invariant checker).
//!
//! Scenarios:
//! - `hot-deal`: every client orders one unit at a time of one deal with plenty of units;
//! - `hot-deal-sell-out`: the same on a deal with few units, so most calls are sold-out refusals;
//! - `browse`: `ListDeals` (first page of 20) and `GetDeal` over 50 live deals;
//! - `list-deals`: `ListDeals` alone, to compare with `health-check`;
//! - `health-check`: `grpc.health.v1.Health/Check` on deal-service, the framework's own ceiling.
//!   These two skip over replies without decoding them (as h2load does), so that their ratio
//!   measures the server, not the load generator sharing its cores;
//! - `mixed`: browsing plus orders (one call in five) across 20 deals;
//! - `surge`: the hot deal (or `--deal`) as a surge of buyers: each client orders again as soon as
//!   it is answered, and, when shed (RESOURCE_EXHAUSTED), waits the `RetryInfo` delay the server
//!   gave, as gRPC clients honouring server pushback do (or, with `--ignore-retry-info`, does not,
//!   as a naive client or a bot). Latencies of shed and admitted calls are reported apart, and of
//!   each status; one second after the run every hold must belong to an order or be released;
//! - `watch`: the hot deal sold as in `hot-deal`, first alone, then with `--watchers` WatchDeal
//!   streams of it over `--watch-connections` connections of their own (see [`crate::watch`]): the
//!   delay of every change they receive, orders/s with them against without, and deal-service's
//!   resident memory before and with them (given `--deal-service-pid`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tonic::Code;

use topkart::proto::deal as dealpb;

use crate::{
    clients::Clients,
    options::{LoadError, Options, Scenario, channels},
    report::{Check, Recorder, Report},
    setup, watched_load,
};

/// Runs `scenario` and reports on it.
pub async fn run(scenario: Scenario, options: Options) -> Result<Report, LoadError> {
    if matches!(scenario, Scenario::Failover | Scenario::Polite) {
        return Err("failover and polite run apart, with reports of their own".into());
    }
    let deal_channels = channels(&options.deal_service, options.connections).await?;
    let order_channels = if scenario.places_orders() {
        channels(&options.order_service, options.connections).await?
    } else {
        Vec::new()
    };
    let admin = setup::Admin::new(deal_channels[0].clone(), options.signer.as_ref(), options.deadline)?;
    let deals = match (scenario, &options.deal) {
        (Scenario::HotDeal | Scenario::Watch | Scenario::Surge, Some(name)) => {
            admin.reread(&[dealpb::Deal { name: name.clone(), ..Default::default() }]).await?
        }
        (_, Some(_)) => return Err("--deal is for hot-deal, surge, watch, failover and polite".into()),
        (Scenario::HotDeal | Scenario::HotDealSellOut | Scenario::Surge | Scenario::Watch, None) => {
            vec![admin.create_deal("hot deal", options.units).await?]
        }
        (Scenario::Browse | Scenario::ListDeals, None) => admin.create_deals(50, options.units).await?,
        (Scenario::Mixed, None) => admin.create_deals(20, options.units).await?,
        (Scenario::HealthCheck | Scenario::Failover | Scenario::Polite, None) => Vec::new(),
    };
    let deal_names: Arc<[String]> = deals.iter().map(|deal| deal.name.clone()).collect();
    let clients = Clients { scenario, options: &options, deals: &deal_channels, orders: &order_channels, deal_names };

    let (load, watched) = if scenario == Scenario::Watch {
        let (load, watched) = watched_load::run(&clients, &deals[0]).await?;
        (load, Some(watched))
    } else {
        (clients.drive(Instant::now() + options.warmup).await?, None)
    };

    let mut checks = vec![unexpected_statuses(scenario, &load.recorder)];
    if let Some((watched, report)) = &watched {
        checks.extend(watched_load::checks(watched, report));
    }
    if scenario.places_orders() {
        let after = admin.reread(&deals).await?;
        let ordered_units = load.ordered_units + watched.as_ref().map_or(0, |(_, report)| report.alone_ordered_units);
        checks.extend(setup::unit_checks(scenario, &deals, &after, ordered_units));
    }
    if let Some(pool) = &options.database {
        if scenario == Scenario::Surge {
            tokio::time::sleep(SETTLE_TIME).await;
            checks.push(holds_settled(pool).await?);
        }
        checks.push(invariants(pool).await?);
    }
    Ok(Report {
        scenario: scenario.name(),
        concurrency: options.concurrency,
        connections: deal_channels.len(),
        warmup_s: options.warmup.as_secs_f64(),
        summary: load.recorder.summary(load.window),
        watch: watched.map(|(_, report)| report),
        checks,
    })
}

/// How long after a surge every hold must be settled.
const SETTLE_TIME: Duration = Duration::from_secs(1);

/// Every call should succeed, except sold-out refusals where the scenario sells out; in a surge,
/// shedding is expected and only INTERNAL and UNKNOWN (a bug, or a broken link) are errors.
fn unexpected_statuses(scenario: Scenario, recorder: &Recorder) -> Check {
    if scenario == Scenario::Surge {
        let broken = recorder.count(Code::Internal) + recorder.count(Code::Unknown);
        return Check {
            name: "no INTERNAL or UNKNOWN".into(),
            passed: broken == 0,
            detail: format!("{broken} calls ended INTERNAL or UNKNOWN"),
        };
    }
    let expected = recorder.count(Code::Ok)
        + if scenario == Scenario::HotDealSellOut { recorder.count(Code::FailedPrecondition) } else { 0 };
    let unexpected = recorder.calls() - expected;
    Check {
        name: "no errors".into(),
        passed: unexpected == 0,
        detail: if scenario == Scenario::HotDealSellOut {
            format!("{unexpected} calls ended other than OK or FAILED_PRECONDITION (sold out)")
        } else {
            format!("{unexpected} calls ended other than OK")
        },
    }
}

/// One second after a surge, no hold is left without an order: every abandoned call gave its
/// units back at once.
async fn holds_settled(pool: &PgPool) -> Result<Check, LoadError> {
    let stranded: i64 = sqlx::query_scalar(
        "select count(*) from reservations r
          where r.state = 'reserved' and not exists (select from orders o where o.id = r.id)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Check {
        name: "holds settled".into(),
        passed: stranded == 0,
        detail: format!("{stranded} holds without an order {} s after the run", SETTLE_TIME.as_secs()),
    })
}

async fn invariants(pool: &PgPool) -> Result<Check, LoadError> {
    let violations = topkart::invariants::check(pool).await?;
    let detail = match violations.first() {
        None => "every invariant holds".to_owned(),
        Some(first) => format!("{} violations, first: {first}", violations.len()),
    };
    Ok(Check { name: "invariant-check".into(), passed: violations.is_empty(), detail })
}
