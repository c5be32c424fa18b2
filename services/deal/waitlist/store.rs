//! The SQL of deal-service's waitlist. Every statement that changes an entry runs under its deal's
//! row lock (taken by the caller with `lock_deal_for_sale`), as the hand-out of returned units
//! (`return_units`, in the database) does: so joins, leaves, claims and offers of one deal happen
//! one at a time, and join order is commit order.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{
    deal::{
        domain::Reservation,
        holds::store::{ReservationRow, reservation_columns},
    },
    shared::paging::Cursor,
};

use super::domain::{Claim, EntryState, Join, WaitlistEntry};

/// The columns every entry query returns, for an entry aliased `e`: its state at the transaction's
/// start (an ended offer reads expired before the worker marks it). `position` counts the entries
/// ahead of a waiting one that still want units: waiting, or holding a live offer of fewer units
/// than they asked for.
macro_rules! entry_columns {
    () => {
        "e.id, e.deal_id, e.customer_id, e.quantity,
         waitlist_entry_state_at(e.state, e.offer_expire_time, e.deal_id, now()) as state,
         e.offered_units, e.offer_expire_time,
         e.claim_reservation_id, e.claimed_units, e.create_time, e.update_time,
         case when e.state = 'waiting' then
             (select count(*) from waitlist_entries ahead
               where ahead.deal_id = e.deal_id and ahead.join_seq < e.join_seq
                 and (ahead.state = 'waiting'
                      or (ahead.state = 'offered' and ahead.offered_units < ahead.quantity
                          and ahead.offer_expire_time > now())))
         else 0 end as position"
    };
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    id: Uuid,
    deal_id: Uuid,
    customer_id: String,
    quantity: i32,
    state: String,
    offered_units: Option<i32>,
    offer_expire_time: Option<DateTime<Utc>>,
    claim_reservation_id: Option<Uuid>,
    claimed_units: Option<i32>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    position: i64,
}

impl From<EntryRow> for WaitlistEntry {
    fn from(row: EntryRow) -> Self {
        WaitlistEntry {
            id: row.id,
            deal_id: row.deal_id,
            customer: row.customer_id,
            quantity: row.quantity,
            // The check constraint allows only the five names.
            state: EntryState::from_db(&row.state).unwrap_or(EntryState::Expired),
            position: i32::try_from(row.position).unwrap_or(i32::MAX),
            offered_units: row.offered_units.unwrap_or(0),
            offer_expire_time: row.offer_expire_time,
            claim: row.claim_reservation_id.zip(row.claimed_units),
            create_time: row.create_time,
            update_time: row.update_time,
        }
    }
}

/// Entry `id`, if it exists (of any deal: a join's id is unique across deals).
#[tracing::instrument(name = "sql.get_waitlist_entry", skip_all, fields(entry = %id))]
pub async fn get_entry<'c>(conn: impl PgExecutor<'c>, id: Uuid) -> Result<Option<WaitlistEntry>, sqlx::Error> {
    let row: Option<EntryRow> =
        sqlx::query_as(concat!("select ", entry_columns!(), " from waitlist_entries e where e.id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(WaitlistEntry::from))
}

/// Adds `join` at the end of its deal's waitlist. `None` when an entry with its id exists already
/// (a retry served by another instance, or another deal's entry): the caller reads that one.
#[tracing::instrument(name = "sql.insert_waitlist_entry", skip_all, fields(deal = %join.deal_id, entry = %join.id))]
pub async fn insert_entry(conn: &mut PgConnection, join: &Join) -> Result<Option<WaitlistEntry>, sqlx::Error> {
    let row: Option<EntryRow> = sqlx::query_as(concat!(
        "with e as (
             insert into waitlist_entries (id, deal_id, customer_id, quantity) values ($1, $2, $3, $4)
             on conflict (id) do nothing
             returning *
         )
         select ",
        entry_columns!(),
        " from e"
    ))
    .bind(join.id)
    .bind(join.deal_id)
    .bind(&join.customer)
    .bind(join.quantity)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(WaitlistEntry::from))
}

/// Takes waiting or offered entry `id` out of the list; an offer's units go on to the next entries
/// (the `offer_ended` trigger) in the same statement. `None` when the entry was not open.
#[tracing::instrument(name = "sql.leave_waitlist", skip_all, fields(entry = %id))]
pub async fn leave(conn: &mut PgConnection, id: Uuid) -> Result<Option<WaitlistEntry>, sqlx::Error> {
    let row: Option<EntryRow> = sqlx::query_as(concat!(
        "with e as (
             update waitlist_entries
                set state = 'left', update_time = clock_timestamp(),
                    waited_until = coalesce(waited_until, clock_timestamp())
              where id = $1 and state in ('waiting', 'offered')
             returning *
         )
         select ",
        entry_columns!(),
        " from e"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(WaitlistEntry::from))
}

/// Claims an offer for `claim`: inserts its reservation, stamped `at`, with units that come from
/// the offer (the deal's available units do not move) and marks the entry claimed, in one
/// statement; what the offer held beyond the claim goes on to the next entries (the `offer_ended`
/// trigger). The caller holds the deal's row lock and has checked the offer. `None` when a
/// reservation with the claim's id exists already.
#[tracing::instrument(name = "sql.claim_offer", skip_all, fields(deal = %deal_id, entry = %claim.entry_id))]
pub async fn claim(
    conn: &mut PgConnection,
    deal_id: Uuid,
    at: DateTime<Utc>,
    claim: &Claim,
) -> Result<Option<Reservation>, sqlx::Error> {
    let row: Option<ReservationRow> = sqlx::query_as(concat!(
        "with taken as (
             insert into reservations (id, deal_id, customer_id, quantity, currency_code, unit_price_micros,
                                       create_time, update_time, waitlist_entry_id)
             select $1, deals.id, $3, $4, deals.currency_code, deals.final_price_micros, $5, $5, $6
               from deals where deals.id = $2
             on conflict (id) do nothing
             returning ",
        reservation_columns!(),
        "
         ), claimed as (
             update waitlist_entries
                set state = 'claimed', claim_reservation_id = $1, claimed_units = $4,
                    update_time = clock_timestamp()
              where id = $6 and state = 'offered' and exists (select from taken)
         )
         select * from taken"
    ))
    .bind(claim.id)
    .bind(deal_id)
    .bind(&claim.customer)
    .bind(claim.quantity)
    .bind(at)
    .bind(claim.entry_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Reservation::from))
}

/// Offers the `units` just added to a locked deal's available units (its total was raised) to its
/// waitlist, in join order.
#[tracing::instrument(name = "sql.offer_added_units", skip_all, fields(deal = %deal_id, units = units))]
pub async fn offer_added_units(conn: &mut PgConnection, deal_id: Uuid, units: i32) -> Result<(), sqlx::Error> {
    sqlx::query("select offer_to_waitlist($1, $2)").bind(deal_id).bind(units).execute(conn).await?;
    Ok(())
}

/// A page of deal `deal_id`'s entries (only `customer`'s, when given), in join order, after `after`.
#[tracing::instrument(name = "sql.list_waitlist_entries", skip_all, fields(deal = %deal_id, limit = limit))]
pub async fn list_entries<'c>(
    conn: impl PgExecutor<'c>,
    deal_id: Uuid,
    customer: Option<&str>,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<WaitlistEntry>, sqlx::Error> {
    let after = after.unwrap_or(Cursor { at: DateTime::UNIX_EPOCH, id: Uuid::nil() });
    let rows: Vec<EntryRow> = sqlx::query_as(concat!(
        "select ",
        entry_columns!(),
        " from waitlist_entries e
          where e.deal_id = $1 and ($2::text is null or e.customer_id = $2)
            and (e.create_time, e.id) > ($3, $4)
          order by e.create_time, e.id
          limit $5"
    ))
    .bind(deal_id)
    .bind(customer)
    .bind(after.at)
    .bind(after.id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(WaitlistEntry::from).collect())
}
