//! The `watch` scenario: the hot deal's orders alone, then with its watchers (`watch`) joined
//! before the orders start; what the watchers saw, what they cost deal-service, and the checks.

use std::time::Instant;

use tonic::Code;
use uuid::Uuid;

use topkart::{proto::deal as dealpb, shared::auth::Role};

use crate::{
    clients::{Clients, Load},
    options::{LoadError, authorization},
    report::{Check, Rss, WatchReport},
    watch,
};

/// The `watch` scenario: the hot deal's orders alone, then with its watchers (joined before the
/// orders start); the load with the watchers, what they saw and what they cost.
pub(crate) async fn run(
    clients: &Clients<'_>,
    deal: &dealpb::Deal,
) -> Result<(Load, (watch::Watched, WatchReport)), LoadError> {
    let options = clients.options;
    let alone = clients.drive(Instant::now() + options.warmup).await?;
    let rss = |pid: Option<u32>| pid.and_then(watch::rss_kib);
    let rss_before = rss(options.deal_service_pid);

    let authorization =
        options.signer.as_ref().map(|signer| authorization(signer, Role::Customer, "loadgen-watcher")).transpose()?;
    let watchers = watch::Watchers::open(
        options.watch_deal_service.as_ref().unwrap_or(&options.deal_service),
        options.watch_connections,
        options.watchers,
        &deal.name,
        authorization.as_ref(),
    )
    .await?;
    let joined_in = watchers.joined().await?;
    let rss_joined = rss(options.deal_service_pid);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let leads = match (&options.database, Uuid::parse_str(deal.name.trim_start_matches("deals/"))) {
        (Some(pool), Ok(id)) => Some(tokio::spawn(watch::stamp_leads(pool.clone(), id, stopped.clone()))),
        _ => None,
    };
    let peak = options.deal_service_pid.map(|pid| tokio::spawn(watch::peak_rss_kib(pid, stopped)));
    let record_from = Instant::now() + options.warmup;
    watchers.measure(record_from, record_from + options.duration);
    let with = clients.drive(record_from).await?;
    let _ = stop.send(true);
    let watched = watchers.stop().await?;
    let leads = match leads {
        Some(task) => task.await??,
        None => None,
    };
    let rss_peak = match peak {
        Some(task) => task.await?,
        None => None,
    };

    let alone_ordered_units = alone.ordered_units;
    let alone = alone.recorder.summary(alone.window);
    let with_ok_per_s = with.recorder.count(Code::Ok) as f64 / with.window.as_secs_f64().max(f64::MIN_POSITIVE);
    let rss = match (rss_before, rss_joined, rss_peak) {
        (Some(before), Some(joined), Some(peak)) => Some(Rss::new(before, joined, peak, watched.watchers)),
        _ => None,
    };
    let report = WatchReport {
        watchers: watched.watchers,
        connections: watched.connections,
        joined_s: joined_in.as_secs_f64(),
        changes: watched.changes,
        changes_per_s: watched.changes as f64 / with.window.as_secs_f64().max(f64::MIN_POSITIVE),
        watchers_without_change: watched.without_change,
        ended: watched.ended.clone(),
        delay_ms: watched.delays.quantiles(),
        carried_delay_ms: watched.carried.quantiles(),
        stamp_lead_ms: leads.map(|leads| leads.quantiles()),
        orders_ratio: with_ok_per_s / alone.ok_per_s.max(f64::MIN_POSITIVE),
        without_watchers: alone,
        alone_ordered_units,
        rss_kib: rss,
    };
    Ok((with, (watched, report)))
}

/// The orders without watchers met no error either; every watcher's stream stayed open and
/// carried changes.
pub(crate) fn checks(watched: &watch::Watched, report: &WatchReport) -> Vec<Check> {
    let ended: u64 = watched.ended.values().sum();
    let alone = &report.without_watchers;
    vec![
        Check {
            name: "no errors without watchers".into(),
            passed: alone.ok == alone.requests,
            detail: format!("{} calls ended other than OK", alone.requests - alone.ok),
        },
        Check {
            name: "streams stayed open".into(),
            passed: ended == 0,
            detail: format!("{ended} of {} streams ended during the run {:?}", watched.watchers, watched.ended),
        },
        Check {
            name: "every watcher saw changes".into(),
            passed: watched.without_change == 0,
            detail: format!(
                "{} of {} watchers received no change in the window",
                watched.without_change, watched.watchers
            ),
        },
    ]
}
