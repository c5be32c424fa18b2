//! Orders not approved in time: a pending order past its `approve_deadline` (its deal's approval
//! window after it was placed) expires, and its units go back to the deal, in one statement. It
//! reads as expired from its deadline on whether or not this has run (order-service computes the
//! state from the deadline and the database clock); this makes it so and frees the units. Safe with
//! several workers: each due order is claimed with `for update skip locked`, and ApproveOrder's
//! conditional update takes the same row lock and refuses past the deadline, so an order is either
//! approved in time or expired, never both.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The most orders one pass expires; the next pass takes the rest.
const BATCH: i64 = 1_000;

/// Expires the pending orders whose deadline is at or before `now` (the database clock), releases
/// their reservations and gives their units back. Returns how many orders expired.
#[tracing::instrument(name = "sql.expire_orders", skip(pool))]
pub async fn expire_orders(pool: &PgPool, now: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "with due as (
             select id from orders
              where state = 'pending_approval' and approve_deadline <= $1
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
    .bind(now)
    .bind(BATCH)
    .fetch_one(pool)
    .await
}
