//! The parts of the reservation protocol (docs/reservations.md) that several services share: its
//! timing (order-service must record an order soon after reserving its units; the expiry worker
//! resolves holds that stayed unresolved much longer), and abandoning an attempt, which both
//! order-service (its caller gave up) and deal-service (a hold whose caller had gone) do at once.
//!
//! A statement releases a reservation by moving it to 'released'; a row trigger gives its units
//! back in that statement (`return_units`, migrations/…_waitlist.sql): to the deal's waitlist
//! first, then to the units available. So units go back exactly when a reservation is released,
//! never twice, whoever releases it.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// order-service records an order only within this long of its hold's creation (checked by the
/// insert itself, against the database clock); later, it gives the attempt up.
pub const ORDER_WRITE_WINDOW: Duration = Duration::from_secs(10);

/// The expiry worker resolves a hold (confirms it if its order exists, releases it if not) once it
/// is this old; and it finishes the release of a rejected or cancelled order that has waited this
/// long. Much longer than the write window, so no order can still be recorded for a hold it
/// releases.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`abandon`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// The order was recorded: its hold stays, and nothing was abandoned.
    Ordered,
    /// No order will be recorded under the id, and its hold gave `units` back to the deal now.
    Released { units: i32 },
    /// No order will be recorded under the id; there is no hold (yet: a reservation still in
    /// flight may make one).
    NoHold,
    /// No order will be recorded under the id; its hold had been released already.
    AlreadyReleased,
}

/// Gives up the order attempt `id` (an order id, which is also its hold's id): unless its order
/// was recorded, marks the id abandoned, so that no order is ever recorded under it, and releases
/// its hold, in one transaction.
///
/// Safe against an order insert in flight for the same id: both take the hold's advisory lock, and
/// each decides in a statement that starts after the lock is granted (so it sees what the other
/// committed). Either the order was committed first, and it stays with its hold; or the abandonment
/// was, and the insert finds the tombstone and records nothing.
#[tracing::instrument(name = "sql.abandon", skip_all, fields(order = %id))]
pub async fn abandon(pool: &PgPool, id: Uuid) -> Result<Abandoned, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hold_lock_key($1))").bind(id).execute(&mut *tx).await?;
    let (ordered, hold_state, released): (bool, Option<String>, Option<i32>) = sqlx::query_as(
        "with ordered as (
             select exists (select from orders where id = $1) as ordered
         ), marked as (
             insert into abandoned_orders (id) select $1 from ordered where not ordered
             on conflict (id) do nothing
         ), released as (
             update reservations set state = 'released', update_time = now()
              where id = $1 and state = 'reserved' and not (select ordered from ordered)
             returning deal_id, quantity
         )
         select (select ordered from ordered),
                (select state from reservations where id = $1),
                (select quantity from released)",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match (ordered, released, hold_state.as_deref()) {
        (true, _, _) => Abandoned::Ordered,
        (false, Some(units), _) => Abandoned::Released { units },
        (false, None, None) => Abandoned::NoHold,
        // Released before (or, impossibly without an order, confirmed): nothing is held for it.
        (false, None, Some(_)) => Abandoned::AlreadyReleased,
    })
}
