//! Orders not approved in time: a pending order past its `approve_deadline` (its deal's approval
//! window after it was placed) expires, and its units go back to the deal, in one statement. It
//! reads as expired from its deadline on whether or not this has run (order-service computes the
//! state from the deadline and the database clock); this makes it so and frees the units. Safe with
//! several workers: each due order is claimed with `for update skip locked`, and ApproveOrder's
//! conditional update takes the same row lock and refuses past the deadline, so an order is either
//! approved in time or expired, never both.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::failures::{Done, Step, deal_by_deal_on_failure};

/// The most orders one pass expires; the next pass takes the rest.
const BATCH: i64 = 1_000;

/// Expires the pending orders whose deadline is at or before `now` (the database clock), releases
/// their reservations and gives their units back: in one statement, or deal by deal when that
/// fails (the deals of `failed_before` first), naming the deals that failed. Returns how many
/// orders expired.
#[tracing::instrument(name = "sql.expire_orders", skip(pool, failed_before))]
pub async fn expire_orders(
    pool: &PgPool,
    now: DateTime<Utc>,
    failed_before: &[Uuid],
) -> Result<Done<i64>, sqlx::Error> {
    deal_by_deal_on_failure(
        pool,
        Step::OrderExpiry,
        failed_before,
        |conn, only| Box::pin(expire_due(conn, now, only)),
        |conn, first| Box::pin(due_deals(conn, now, first)),
    )
    .await
}

/// Expires the orders due at `now` (of deal `only`, when given: sent unprepared, so that it is
/// planned for that deal rather than with the generic plan of every deal's).
async fn expire_due(conn: &mut PgConnection, now: DateTime<Utc>, only: Option<Uuid>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "with due as (
             select id from orders
              where state = 'pending_approval' and approve_deadline <= $1 and ($3::uuid is null or deal_id = $3)
              order by approve_deadline
              limit $2
                for update skip locked
         ), expired as (
             update orders set state = 'expired', units_released = true, update_time = $1
               from due
              where orders.id = due.id
             returning orders.id
         ), released as (
             update reservations set state = 'released', update_time = now()
               from expired
              where reservations.id = expired.id and reservations.state in ('reserved', 'confirmed')
             returning reservations.deal_id, reservations.quantity
         )
         select count(*) from expired",
    )
    .persistent(only.is_none())
    .bind(now)
    .bind(BATCH)
    .bind(only)
    .fetch_one(conn)
    .await
}

/// The deals with orders due at `now`: those of `first` first, the rest in random order (a deal
/// that keeps failing cannot fill every pass).
async fn due_deals(conn: &mut PgConnection, now: DateTime<Utc>, first: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select deal_id from (select distinct deal_id from orders
                                where state = 'pending_approval' and approve_deadline <= $1) due
          order by deal_id = any($3) desc, random() limit $2",
    )
    .bind(now)
    .bind(BATCH)
    .bind(first)
    .fetch_all(conn)
    .await
}
