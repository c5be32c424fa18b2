//! The SQL of deals themselves: insert, read, list, update, and the lock a sale takes. The holds
//! (`holds::store`) and the waitlist (`waitlist::store`) have their own. Statements that keep an
//! invariant say how beside them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, postgres::PgArguments, query::QueryAs};
use uuid::Uuid;

use crate::shared::{money::Price, paging::Cursor};

use super::domain::{Deal, DealState, DealTerms};

/// The columns every deal query returns; `state` is the deal's state at the transaction's start, or
/// at the instant given.
macro_rules! deal_columns {
    () => {
        deal_columns!("now()")
    };
    ($at:literal) => {
        concat!(
            "id, product_name, currency_code, actual_price_micros, final_price_micros, total_units, \
             available_units, start_time, expire_time, max_units_per_customer, approval_window_seconds, \
             offer_window_seconds, deal_state_at(deals, ",
            $at,
            ") as state, create_time, update_time"
        )
    };
}

#[derive(sqlx::FromRow)]
struct DealRow {
    id: Uuid,
    product_name: String,
    currency_code: String,
    actual_price_micros: i64,
    final_price_micros: i64,
    total_units: i32,
    available_units: i32,
    start_time: DateTime<Utc>,
    expire_time: DateTime<Utc>,
    max_units_per_customer: Option<i32>,
    approval_window_seconds: Option<i32>,
    offer_window_seconds: i32,
    state: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl From<DealRow> for Deal {
    fn from(row: DealRow) -> Self {
        Deal {
            id: row.id,
            terms: DealTerms {
                product_name: row.product_name,
                actual_price: Price::from_stored(row.currency_code.clone(), row.actual_price_micros),
                final_price: Price::from_stored(row.currency_code, row.final_price_micros),
                total_units: row.total_units,
                start_time: row.start_time,
                expire_time: row.expire_time,
                max_units_per_customer: row.max_units_per_customer,
                approval_window_seconds: row.approval_window_seconds,
                offer_window_seconds: row.offer_window_seconds,
            },
            available_units: row.available_units,
            // deal_state_at only ever returns the three names.
            state: DealState::from_db(&row.state).unwrap_or(DealState::Expired),
            create_time: row.create_time,
            update_time: row.update_time,
        }
    }
}

/// Binds `terms` as parameters $2 to $11: product name, currency, actual and final price, total
/// units, start, expiry, the per-customer limit, the approval window and the offer window (insert
/// and update share the order).
fn bind_terms<'q>(
    query: QueryAs<'q, Postgres, DealRow, PgArguments>,
    terms: &'q DealTerms,
) -> QueryAs<'q, Postgres, DealRow, PgArguments> {
    query
        .bind(&terms.product_name)
        .bind(terms.final_price.currency_code())
        .bind(terms.actual_price.micros())
        .bind(terms.final_price.micros())
        .bind(terms.total_units)
        .bind(terms.start_time)
        .bind(terms.expire_time)
        .bind(terms.max_units_per_customer)
        .bind(terms.approval_window_seconds)
        .bind(terms.offer_window_seconds)
}

/// Inserts a new deal with all its units available.
#[tracing::instrument(name = "sql.insert_deal", skip_all, fields(deal = %id))]
pub async fn insert_deal(pool: &PgPool, id: Uuid, terms: &DealTerms, state: DealState) -> Result<Deal, sqlx::Error> {
    let query = sqlx::query_as(concat!(
        "insert into deals (id, product_name, currency_code, actual_price_micros, final_price_micros, \
                            total_units, available_units, start_time, expire_time, max_units_per_customer, \
                            approval_window_seconds, offer_window_seconds, state)
         values ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11, $12)
         returning ",
        deal_columns!()
    ))
    .bind(id);
    let row: DealRow = bind_terms(query, terms).bind(state.as_str()).fetch_one(pool).await?;
    Ok(row.into())
}

/// One deal, if it exists.
#[tracing::instrument(name = "sql.get_deal", skip_all, fields(deal = %id))]
pub async fn get_deal(pool: &PgPool, id: Uuid) -> Result<Option<Deal>, sqlx::Error> {
    let row: Option<DealRow> = sqlx::query_as(concat!("select ", deal_columns!(), " from deals where id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(Deal::from))
}

/// The deals among `ids` that exist.
#[tracing::instrument(name = "sql.get_deals", skip_all, fields(rows = ids.len()))]
pub async fn get_deals(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Deal>, sqlx::Error> {
    let rows: Vec<DealRow> = sqlx::query_as(concat!("select ", deal_columns!(), " from deals where id = any($1)"))
        .bind(ids)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(Deal::from).collect())
}

/// One deal, locked until the transaction ends so that no reservation slips in while it is updated.
#[tracing::instrument(name = "sql.lock_deal", skip_all, fields(deal = %id))]
pub async fn lock_deal(conn: &mut PgConnection, id: Uuid) -> Result<Option<Deal>, sqlx::Error> {
    let row: Option<DealRow> =
        sqlx::query_as(concat!("select ", deal_columns!(), " from deals where id = $1 for update"))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(Deal::from))
}

/// Writes new terms to a locked deal. Available units move by as much as total units do, so the
/// units reserved stay the same; the check constraint refuses anything below zero.
#[tracing::instrument(name = "sql.update_deal", skip_all, fields(deal = %id))]
pub async fn update_deal(conn: &mut PgConnection, id: Uuid, terms: &DealTerms) -> Result<Deal, sqlx::Error> {
    let query = sqlx::query_as(concat!(
        "update deals
            set product_name = $2, currency_code = $3, actual_price_micros = $4, final_price_micros = $5,
                available_units = available_units + ($6 - total_units), total_units = $6,
                start_time = $7, expire_time = $8, max_units_per_customer = $9, approval_window_seconds = $10,
                offer_window_seconds = $11,
                max_units_per_customer_since = case when max_units_per_customer is distinct from $9
                                                    then clock_timestamp() else max_units_per_customer_since end,
                state = case when state = 'scheduled' and $7 <= now() then 'active' else state end,
                update_time = now()
          where id = $1
         returning ",
        deal_columns!()
    ))
    .bind(id);
    let row: DealRow = bind_terms(query, terms).fetch_one(conn).await?;
    Ok(row.into())
}

/// Which deals a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DealFilter {
    /// Deals a customer can order now: active, unexpired, with units left.
    Live,
    /// Every deal in this state now.
    InState(DealState),
}

/// A page of deals ordered by expiry then id, after `after`.
#[tracing::instrument(name = "sql.list_deals", skip_all, fields(filter = ?filter, limit = limit))]
pub async fn list_deals(
    pool: &PgPool,
    filter: DealFilter,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<Deal>, sqlx::Error> {
    let after = after.unwrap_or(Cursor { at: DateTime::UNIX_EPOCH, id: Uuid::nil() });
    let rows: Vec<DealRow> = match filter {
        // The first two conditions let the partial index on expire_time do the work; deal_state_at
        // has the final word.
        DealFilter::Live => {
            sqlx::query_as(concat!(
                "select ",
                deal_columns!(),
                " from deals
              where state <> 'expired' and expire_time > now()
                and deal_state_at(deals, now()) = 'active' and available_units > 0
                and (expire_time, id) > ($1, $2)
              order by expire_time, id
              limit $3"
            ))
            .bind(after.at)
            .bind(after.id)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }
        DealFilter::InState(state) => {
            sqlx::query_as(concat!(
                "select ",
                deal_columns!(),
                " from deals
              where deal_state_at(deals, now()) = $4
                and (expire_time, id) > ($1, $2)
              order by expire_time, id
              limit $3"
            ))
            .bind(after.at)
            .bind(after.id)
            .bind(limit)
            .bind(state.as_str())
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows.into_iter().map(Deal::from).collect())
}

/// A deal locked for a sale by [`lock_deal_for_sale`].
#[derive(Debug)]
pub struct Sale {
    pub deal: Deal,
    /// The instant of the sale: the deal's state is as of then.
    pub at: DateTime<Utc>,
    /// The units each of the customers asked about holds of the deal, as its per-customer limit
    /// counts them: held and confirmed reservations, and the units asked for by waiting and
    /// offered waitlist entries. Triggers keep these totals for deals with a limit only (migration
    /// 12), so a customer with thousands of holds is one row; a customer who holds nothing, or a
    /// deal without a limit, has no entry. Read under the lock, they cannot change before the
    /// transaction ends.
    pub held: HashMap<String, i32>,
}

/// Locks a deal for a sale, until the transaction ends, and reads it with its state at the instant
/// of the sale, and what each of `customers` holds of it. `None` when there is no such deal.
///
/// The lock is taken by a statement of its own first, so that the read starts only once the lock is
/// ours: its `statement_timestamp()` is then the instant of the sale. (With `now()`, fixed when the
/// transaction starts, a batch queued on the lock across the expiry would still pass.) The deal and
/// its customers' holdings come in that one read: a deal's batches take its lock one after the
/// other, so each round trip made while holding it delays every batch behind.
#[tracing::instrument(name = "sql.lock_deal_for_sale", skip_all, fields(deal = %id, customers = customers.len()))]
pub async fn lock_deal_for_sale(
    conn: &mut PgConnection,
    id: Uuid,
    customers: &[&str],
) -> Result<Option<Sale>, sqlx::Error> {
    let locked: Option<i32> =
        sqlx::query_scalar("select 1 from deals where id = $1 for update").bind(id).fetch_optional(&mut *conn).await?;
    if locked.is_none() {
        return Ok(None);
    }
    // Each asked customer is one lookup by the whole key, whatever the deal's number of customers:
    // the `limit` (the key is unique) keeps the planner from turning the lateral lookups into a
    // join that reads every holding of the deal, as a correlated `deal_id = deals.id` did. The two
    // arrays come from one aggregation, so they list the same rows in the same order. A deal without
    // a limit has no holdings: the `exists`, checked once, skips the lookups.
    let row: SaleRow = sqlx::query_as(concat!(
        "with held as (
             select coalesce(array_agg(asked.customer_id), '{}') as held_by, coalesce(array_agg(h.units), '{}') as held_units
               from unnest($2::text[]) as asked (customer_id)
               cross join lateral (select units from customer_holdings
                                    where deal_id = $1 and customer_id = asked.customer_id limit 1) h
              where exists (select from deals where id = $1 and max_units_per_customer is not null)
         )
         select statement_timestamp() as at, ",
        deal_columns!("statement_timestamp()"),
        ", held.held_by, held.held_units
           from deals, held where deals.id = $1"
    ))
    .bind(id)
    .bind(customers)
    .fetch_one(&mut *conn)
    .await?;
    let held = row.held_by.into_iter().zip(row.held_units).collect();
    Ok(Some(Sale { deal: row.deal.into(), at: row.at, held }))
}

#[derive(sqlx::FromRow)]
struct SaleRow {
    at: DateTime<Utc>,
    #[sqlx(flatten)]
    deal: DealRow,
    held_by: Vec<String>,
    held_units: Vec<i32>,
}
