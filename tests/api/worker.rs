//! The expiry worker at the boundary instants: the sweep at a deal's expiry, and the daily reset at
//! 23:59:59.999999 and 00:00:00 UTC, with several workers and after a worker was down over midnight.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use sqlx::PgPool;
use topkart::worker::{daily_reset, sweep::SweepReport, sweep_once};

use crate::helpers::*;

fn at(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, minute, 0).unwrap()
}

/// The last instant Postgres can represent before `instant`.
fn just_before(instant: DateTime<Utc>) -> DateTime<Utc> {
    instant - TimeDelta::microseconds(1)
}

async fn state_at(pool: &PgPool, id: uuid::Uuid, instant: DateTime<Utc>) -> String {
    sqlx::query_scalar("select deal_state_at(deals, $2) from deals where id = $1")
        .bind(id)
        .bind(instant)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn sweep_expires_a_deal_at_its_expire_time_and_not_before(pool: PgPool) {
    let deal = insert_deal_at(&pool, at(25, 10, 0), at(25, 12, 0), "active").await;
    assert_eq!(sweep_once(&pool, just_before(at(25, 12, 0))).await.unwrap(), SweepReport::default());
    assert_eq!(stored_state(&pool, deal).await, "active");
    assert_eq!(sweep_once(&pool, at(25, 12, 0)).await.unwrap(), SweepReport { expired: 1, started: 0 });
    assert_eq!(stored_state(&pool, deal).await, "expired");
    assert_eq!(sweep_once(&pool, at(25, 12, 1)).await.unwrap(), SweepReport::default());
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn sweep_starts_a_scheduled_deal_at_its_start_time(pool: PgPool) {
    let deal = insert_deal_at(&pool, at(26, 0, 0), at(26, 6, 0), "scheduled").await;
    assert_eq!(sweep_once(&pool, just_before(at(26, 0, 0))).await.unwrap(), SweepReport::default());
    assert_eq!(sweep_once(&pool, at(26, 0, 0)).await.unwrap(), SweepReport { expired: 0, started: 1 });
    assert_eq!(stored_state(&pool, deal).await, "active");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_deal_stops_being_orderable_at_midnight_utc_whatever_its_expiry(pool: PgPool) {
    let evening = insert_deal_at(&pool, at(25, 20, 0), at(26, 6, 0), "active").await;
    assert_eq!(state_at(&pool, evening, just_before(at(26, 0, 0))).await, "active");
    assert_eq!(state_at(&pool, evening, at(26, 0, 0)).await, "expired");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_daily_reset_at_midnight_ends_yesterdays_deals_and_starts_todays(pool: PgPool) {
    let evening = insert_deal_at(&pool, at(25, 20, 0), at(26, 6, 0), "active").await;
    let tomorrow = insert_deal_at(&pool, at(26, 0, 0), at(26, 6, 0), "scheduled").await;

    // The last instant of the 25th: that day's reset ends nothing of the 25th's.
    let report = daily_reset(&pool, just_before(at(26, 0, 0))).await.unwrap().expect("the 25th's reset");
    assert_eq!((report.ended, report.started), (0, 0));
    assert_eq!(stored_state(&pool, evening).await, "active");

    let report = daily_reset(&pool, at(26, 0, 0)).await.unwrap().expect("the 26th's reset");
    assert_eq!((report.day.to_string().as_str(), report.ended, report.started), ("2026-11-26", 1, 1));
    assert_eq!(stored_state(&pool, evening).await, "expired");
    assert_eq!(stored_state(&pool, tomorrow).await, "active");

    assert_eq!(daily_reset(&pool, at(26, 0, 1)).await.unwrap(), None, "once a day");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_worker_down_over_midnight_performs_the_reset_when_it_comes_back(pool: PgPool) {
    let evening = insert_deal_at(&pool, at(25, 20, 0), at(26, 6, 0), "active").await;
    let morning = insert_deal_at(&pool, at(26, 2, 0), at(26, 8, 0), "scheduled").await;
    daily_reset(&pool, at(25, 23, 0)).await.unwrap();

    let report = daily_reset(&pool, at(26, 3, 17)).await.unwrap().expect("the missed reset");
    assert_eq!((report.ended, report.started), (1, 1));
    assert_eq!(stored_state(&pool, evening).await, "expired");
    assert_eq!(stored_state(&pool, morning).await, "active");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn several_workers_reset_the_day_exactly_once(pool: PgPool) {
    insert_deal_at(&pool, at(25, 20, 0), at(26, 6, 0), "active").await;
    let workers = (0..4).map(|_| {
        let pool = pool.clone();
        async move { daily_reset(&pool, at(26, 0, 0)).await.unwrap() }
    });
    let reports = join_all(workers).await;
    let performed: Vec<_> = reports.into_iter().flatten().collect();
    assert_eq!(performed.len(), 1);
    assert_eq!(performed[0].ended, 1);
    let rows: i64 = sqlx::query_scalar("select count(*) from daily_resets where day = '2026-11-26'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}
