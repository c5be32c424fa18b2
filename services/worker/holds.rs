//! Settles what the two-step order protocol can leave behind (docs/reservations.md):
//! - holds whose order-service never came back (a crash, a timeout, a lost reply): confirmed if
//!   their order was recorded, released if not;
//! - rejected or cancelled orders whose units did not make it back to the deal.
//!
//! Both act only on rows older than `HOLD_TIMEOUT`, long after order-service could still record an
//! order for them, and take their rows with `for update skip locked`, so several workers share the
//! work and never do a row twice. When a statement fails, they go deal by deal, so one deal's
//! failure holds back no other deal's settling.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

use super::failures::{Done, Step, deal_by_deal_on_failure};

use crate::shared::hold_times::HOLD_TIMEOUT;

/// How many rows one pass settles at most; the next tick takes the rest.
const BATCH: i64 = 1000;

/// What one pass over the holds did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldReport {
    /// Holds whose order exists, now confirmed.
    pub confirmed: i64,
    /// Holds without a live order, now released.
    pub released: i64,
    /// Rejected or cancelled orders whose units were given back here.
    pub finished_releases: i64,
}

fn cutoff(now: DateTime<Utc>) -> DateTime<Utc> {
    now - TimeDelta::from_std(HOLD_TIMEOUT).unwrap_or(TimeDelta::MAX)
}

impl std::ops::AddAssign for HoldReport {
    fn add_assign(&mut self, other: Self) {
        self.confirmed += other.confirmed;
        self.released += other.released;
        self.finished_releases += other.finished_releases;
    }
}

/// Settles every hold and pending release that has waited `HOLD_TIMEOUT` as of `now`: in one
/// statement each, or deal by deal when one fails (the deals of `failed_before` first), naming the
/// deals that failed.
#[tracing::instrument(skip(pool, failed_before))]
pub async fn settle_holds(
    pool: &PgPool,
    now: DateTime<Utc>,
    failed_before: &[Uuid],
) -> Result<Done<HoldReport>, sqlx::Error> {
    let cutoff = cutoff(now);
    let mut settled = deal_by_deal_on_failure(
        pool,
        Step::HoldSettlement,
        failed_before,
        |conn, only| Box::pin(resolve_stale_holds(conn, cutoff, only)),
        |conn, first| Box::pin(deals_with_stale_holds(conn, cutoff, first)),
    )
    .await?;
    let finished = deal_by_deal_on_failure(
        pool,
        Step::HoldSettlement,
        failed_before,
        |conn, only| Box::pin(finish_releases(conn, cutoff, only)),
        |conn, first| Box::pin(deals_with_unfinished_releases(conn, cutoff, first)),
    )
    .await?;
    settled.done += finished.done;
    for failure in finished.failed {
        if !settled.failed.iter().any(|failed| failed.deal == failure.deal) {
            settled.failed.push(failure);
        }
    }
    forget_abandoned(pool, now).await?;
    Ok(settled)
}

/// Holds made before `cutoff`: confirmed when their order is pending or approved, released (units
/// back to the deal, in the same statement) when there is no order or it was rejected or cancelled.
///
/// First the holds are claimed, each under its advisory lock (`hold_lock_key`, which order-service
/// holds while it inserts the hold's order; a hold whose lock is taken waits for the next tick).
/// Then a second statement, whose snapshot is taken after the locks, looks for the orders: any order
/// committed before a lock was granted is seen, and none can be inserted after it (its write window
/// has long passed).
#[tracing::instrument(name = "sql.resolve_stale_holds", skip_all, fields(cutoff = %cutoff))]
async fn resolve_stale_holds(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    only: Option<Uuid>,
) -> Result<HoldReport, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let claimed: Vec<Uuid> = sqlx::query_scalar(
        "select id from reservations
          where state = 'reserved' and create_time <= $1 and ($3::uuid is null or deal_id = $3)
          order by create_time
          limit $2
            for update skip locked",
    )
    .persistent(only.is_none())
    .bind(cutoff)
    .bind(BATCH)
    .bind(only)
    .fetch_all(&mut *tx)
    .await?;
    let locked: Vec<Uuid> = sqlx::query_scalar(
        "select id from unnest($1::uuid[]) as claimed(id) where pg_try_advisory_xact_lock(hold_lock_key(id))",
    )
    .bind(&claimed)
    .fetch_all(&mut *tx)
    .await?;
    let (confirmed, released) = sqlx::query_as(
        "with due as (
             select r.id, o.state as order_state
               from reservations r left join orders o on o.id = r.id
              where r.id = any($1) and r.state = 'reserved'
         ), confirmed as (
             update reservations set state = 'confirmed', update_time = now()
               from due
              where reservations.id = due.id and due.order_state in ('pending_approval', 'approved')
             returning reservations.id
         ), released as (
             update reservations set state = 'released', update_time = now()
               from due
              where reservations.id = due.id
                and (due.order_state is null or due.order_state in ('rejected', 'cancelled', 'expired'))
             returning reservations.deal_id, reservations.quantity
         )
         select (select count(*) from confirmed), (select count(*) from released)",
    )
    .bind(&locked)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(HoldReport { confirmed, released, finished_releases: 0 })
}

/// The deals with holds made before `cutoff`, for settling them deal by deal: `first` first.
async fn deals_with_stale_holds(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    first: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select deal_id from (select distinct deal_id from reservations
                                where state = 'reserved' and create_time <= $1) due
          order by deal_id = any($3) desc, random() limit $2",
    )
    .bind(cutoff)
    .bind(BATCH)
    .bind(first)
    .fetch_all(conn)
    .await
}

/// Rejected or cancelled orders, decided before `cutoff`, whose release did not complete: their
/// reservation is released (if it still holds units) and the order marked, in one statement.
#[tracing::instrument(name = "sql.finish_releases", skip_all, fields(cutoff = %cutoff))]
async fn finish_releases(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    only: Option<Uuid>,
) -> Result<HoldReport, sqlx::Error> {
    let finished_releases = sqlx::query_scalar(
        "with due as (
             select id from orders
              where state in ('rejected', 'cancelled') and not units_released and update_time <= $1
                and ($3::uuid is null or deal_id = $3)
              order by update_time
              limit $2
                for update skip locked
         ), released as (
             update reservations set state = 'released', update_time = now()
               from due
              where reservations.id = due.id and reservations.state in ('reserved', 'confirmed')
             returning reservations.deal_id, reservations.quantity
         ), marked as (
             update orders set units_released = true from due where orders.id = due.id returning 1
         )
         select count(*) from released",
    )
    .persistent(only.is_none())
    .bind(cutoff)
    .bind(BATCH)
    .bind(only)
    .fetch_one(conn)
    .await?;
    Ok(HoldReport { finished_releases, ..HoldReport::default() })
}

/// The deals of rejected or cancelled orders whose release did not complete before `cutoff`:
/// `first` first.
async fn deals_with_unfinished_releases(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    first: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select deal_id from (select distinct deal_id from orders
                                where state in ('rejected', 'cancelled') and not units_released
                                  and update_time <= $1) due
          order by deal_id = any($3) desc, random() limit $2",
    )
    .bind(cutoff)
    .bind(BATCH)
    .bind(first)
    .fetch_all(conn)
    .await
}

/// How long the mark of an abandoned attempt is kept: far past its write window and its hold's
/// settling, so no insert that could still be waiting for the hold's lock outlives its mark.
const ABANDONED_KEPT: TimeDelta = TimeDelta::hours(1);

/// Forgets abandoned attempts older than [`ABANDONED_KEPT`], a bounded batch per tick.
#[tracing::instrument(name = "sql.forget_abandoned", skip_all, fields(now = %now))]
async fn forget_abandoned(pool: &PgPool, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "delete from abandoned_orders
          where id in (select id from abandoned_orders where abandon_time < $1 order by abandon_time limit $2)",
    )
    .bind(now - ABANDONED_KEPT)
    .bind(BATCH)
    .execute(pool)
    .await?;
    Ok(())
}
