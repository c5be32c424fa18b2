//! The statements on `reservations` (deal-service is the only service that writes it): inserting
//! holds and taking their units, confirming, releasing (a row trigger gives the units back:
//! `return_units`, migrations/…_waitlist.sql). A claim of a waitlist offer inserts its hold with the
//! entry's change, in `waitlist::store::claim`. Statements that keep an invariant say how beside them.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    deal::domain::{Reservation, ReservationState},
    shared::money::Price,
};

/// The columns every reservation query returns, in [`ReservationRow`]'s order.
macro_rules! reservation_columns {
    () => {
        "id, deal_id, customer_id, quantity, currency_code, unit_price_micros, state, create_time, update_time"
    };
}
pub(crate) use reservation_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct ReservationRow {
    id: Uuid,
    deal_id: Uuid,
    customer_id: Option<String>,
    quantity: i32,
    currency_code: String,
    unit_price_micros: i64,
    state: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl From<ReservationRow> for Reservation {
    fn from(row: ReservationRow) -> Self {
        Reservation {
            id: row.id,
            deal_id: row.deal_id,
            customer: row.customer_id,
            approval_window_seconds: None,
            quantity: row.quantity,
            unit_price: Price::from_stored(row.currency_code, row.unit_price_micros),
            // The check constraint allows only the three names.
            state: ReservationState::from_db(&row.state).unwrap_or(ReservationState::Released),
            create_time: row.create_time,
            update_time: row.update_time,
        }
    }
}

/// The reservations among `ids` that exist.
#[tracing::instrument(name = "sql.reservations_by_id", skip_all, fields(rows = ids.len()))]
pub async fn reservations_by_id(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Reservation>, sqlx::Error> {
    let rows: Vec<ReservationRow> =
        sqlx::query_as(concat!("select ", reservation_columns!(), " from reservations where id = any($1)"))
            .bind(ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(Reservation::from).collect())
}

/// Inserts the reservations `takes` (id, quantity) of a deal locked by [`crate::deal::store::lock_deal_for_sale`], at its
/// price, stamped `at`, and takes their units, in one statement. Returns the reservations inserted:
/// an id some other transaction inserted first (another instance serving a retry) is skipped, and
/// only the units of the inserted ones are taken.
#[tracing::instrument(name = "sql.take_units", skip_all, fields(deal = %deal_id, rows = takes.len()))]
pub async fn take_units(
    conn: &mut PgConnection,
    deal_id: Uuid,
    at: DateTime<Utc>,
    takes: &[Take<'_>],
) -> Result<Vec<Reservation>, sqlx::Error> {
    let ids: Vec<Uuid> = takes.iter().map(|take| take.id).collect();
    let quantities: Vec<i32> = takes.iter().map(|take| take.quantity).collect();
    let customers: Vec<Option<&str>> = takes.iter().map(|take| take.customer).collect();
    let rows: Vec<ReservationRow> = sqlx::query_as(concat!(
        "with taken as (
             insert into reservations (id, deal_id, customer_id, quantity, currency_code, unit_price_micros,
                                       create_time, update_time)
             select take.id, deals.id, take.customer_id, take.quantity, deals.currency_code,
                    deals.final_price_micros, $2, $2
               from unnest($3::uuid[], $4::integer[], $5::text[]) as take (id, quantity, customer_id), deals
              where deals.id = $1
             on conflict (id) do nothing
             returning ",
        reservation_columns!(),
        "
         ), subtracted as (
             update deals set available_units = available_units - (select sum(quantity) from taken), update_time = $2
              where id = $1 and exists (select from taken)
         )
         select * from taken"
    ))
    .bind(deal_id)
    .bind(at)
    .bind(&ids)
    .bind(&quantities)
    .bind(&customers)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Reservation::from).collect())
}

/// One reservation to insert: its id, units and customer.
#[derive(Debug, Clone, Copy)]
pub struct Take<'a> {
    pub id: Uuid,
    pub quantity: i32,
    pub customer: Option<&'a str>,
}

/// One reservation, if it exists.
#[tracing::instrument(name = "sql.get_reservation", skip_all, fields(reservation = %id))]
pub async fn get_reservation(pool: &PgPool, id: Uuid) -> Result<Option<Reservation>, sqlx::Error> {
    let row: Option<ReservationRow> =
        sqlx::query_as(concat!("select ", reservation_columns!(), " from reservations where id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(Reservation::from))
}

/// Gives a reservation's units back, in one statement: only the call that moves it to 'released'
/// restores units, so a retried release gives nothing back twice. Returns the reservation and
/// whether this call released it; `None` when there is no reservation with the id.
///
/// One statement, so one snapshot: a hold committed while the release runs is either released by it
/// or not seen at all (then `None`, and the caller may look again), never read back as held after
/// an update that missed it.
#[tracing::instrument(name = "sql.release", skip_all, fields(reservation = %id))]
pub async fn release(pool: &PgPool, id: Uuid) -> Result<Option<(Reservation, bool)>, sqlx::Error> {
    let row: Option<ReleasedRow> = sqlx::query_as(concat!(
        "with released as (
             update reservations set state = 'released', update_time = now()
              where id = $1 and state in ('reserved', 'confirmed')
             returning ",
        reservation_columns!(),
        "
         )
         select *, true as released_now from released
         union all
         select ",
        reservation_columns!(),
        ", false from reservations where id = $1 and not exists (select from released)"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| (Reservation::from(row.reservation), row.released_now)))
}

#[derive(sqlx::FromRow)]
struct ReleasedRow {
    #[sqlx(flatten)]
    reservation: ReservationRow,
    released_now: bool,
}

/// Confirms the held reservations among `ids`, in one statement. Returns those it confirmed; the
/// others were not held (confirmed before, released, or unknown).
///
/// Written as a join with the ids so that the plan looks each one up by primary key. With `id =
/// any($1) and state = 'reserved'` the generic plan also scanned the partial index of held
/// reservations (`reservations_held_by_create_time`) whole, dead entries of every hold confirmed
/// since the last vacuum included: 75,000 of them and 4 of a batch's 6 ms in a hot-deal run.
#[tracing::instrument(name = "sql.confirm", skip_all, fields(rows = ids.len()))]
pub async fn confirm(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Reservation>, sqlx::Error> {
    let rows: Vec<ReservationRow> = sqlx::query_as(concat!(
        "update reservations set state = 'confirmed', update_time = now()
           from unnest($1::uuid[]) as confirming (reservation_id)
          where reservations.id = confirming.reservation_id and reservations.state = 'reserved'
         returning ",
        reservation_columns!()
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Reservation::from).collect())
}
