//! Every SQL statement of order-service.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::shared::{money::Price, paging::Cursor};

use super::domain::{Order, OrderState};

/// An order's state as of the statement: a pending order past its approve deadline is expired
/// already, before the worker marks it, as a deal past its expiry is.
macro_rules! order_state {
    () => {
        "(case when state = 'pending_approval' and approve_deadline <= now() then 'expired' else state end)"
    };
}

macro_rules! order_columns {
    () => {
        concat!(
            "id, deal_id, customer_id, quantity, currency_code, unit_price_micros, total_price_micros, ",
            order_state!(),
            " as state, create_time, update_time, approve_deadline"
        )
    };
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    deal_id: Uuid,
    customer_id: String,
    quantity: i32,
    currency_code: String,
    unit_price_micros: i64,
    total_price_micros: i64,
    state: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    approve_deadline: Option<DateTime<Utc>>,
}

impl From<OrderRow> for Order {
    fn from(row: OrderRow) -> Self {
        Order {
            id: row.id,
            deal_id: row.deal_id,
            customer_id: row.customer_id,
            quantity: row.quantity,
            unit_price: Price::from_stored(row.currency_code.clone(), row.unit_price_micros),
            total_price: Price::from_stored(row.currency_code, row.total_price_micros),
            // The check constraint allows only the five names.
            state: OrderState::from_db(&row.state).unwrap_or(OrderState::PendingApproval),
            create_time: row.create_time,
            update_time: row.update_time,
            approve_deadline: row.approve_deadline,
        }
    }
}

/// A placed order to record, and the instant by which it must be recorded.
#[derive(Debug, Clone)]
pub struct OrderInsert {
    pub id: Uuid,
    pub deal_id: Uuid,
    pub customer_id: String,
    pub quantity: i32,
    pub unit_price: Price,
    pub total_price: Price,
    /// The instant its units were reserved (the hold's time, by the database clock): the order's
    /// `create_time`, so no order reads as placed after its deal's end.
    pub placed_at: DateTime<Utc>,
    /// The hold's time plus the write window, by the database clock.
    pub write_by: DateTime<Utc>,
    /// `placed_at` plus the deal's approval window, if it has one.
    pub approve_deadline: Option<DateTime<Utc>>,
}

/// Records placed orders, pending approval, in one transaction, each unless the database clock has
/// passed its `write_by` or its attempt was abandoned. Returns the orders it recorded; the others
/// were too late, abandoned, or their id was recorded before (a retry).
///
/// The first statement takes every hold's advisory lock (`hold_lock_key`), in id order so that two
/// batches sharing ids cannot deadlock, held until the commit; the insert comes after, in a
/// statement of its own, so its snapshot is taken once every lock is granted. Under those locks:
/// - the expiry worker settles a hold only under its lock and only long after `write_by`, so it
///   either sees the order, or the insert comes after it and finds `write_by` long past (the clock
///   is read per row, `clock_timestamp()`);
/// - an abandonment ([`abandon_attempt`]) marks the id under the same lock,
///   so either it sees the order and leaves the hold, or the insert sees its mark and records
///   nothing.
///
/// An order recorded here always keeps its units.
#[tracing::instrument(name = "sql.insert_orders", skip_all, fields(rows = orders.len()))]
pub async fn insert_orders(pool: &PgPool, orders: &[OrderInsert]) -> Result<Vec<Order>, sqlx::Error> {
    let mut sorted: Vec<&OrderInsert> = orders.iter().collect();
    sorted.sort_by_key(|order| order.id);
    let ids: Vec<Uuid> = sorted.iter().map(|order| order.id).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "select pg_advisory_xact_lock(hold_lock_key(attempt.id))
           from unnest($1::uuid[]) with ordinality as attempt (id, position)
          order by attempt.position",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    let rows: Vec<OrderRow> = sqlx::query_as(concat!(
        "insert into orders (id, deal_id, customer_id, quantity, currency_code, unit_price_micros, \
                             total_price_micros, state, create_time, approve_deadline)
         select id, deal_id, customer_id, quantity, currency_code, unit_price_micros, total_price_micros,
                'pending_approval', placed_at, approve_deadline
           from unnest($1::uuid[], $2::uuid[], $3::text[], $4::integer[], $5::text[], $6::bigint[],
                       $7::bigint[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[])
                as attempt (id, deal_id, customer_id, quantity, currency_code, unit_price_micros,
                            total_price_micros, write_by, placed_at, approve_deadline)
          where clock_timestamp() < write_by
            and not exists (select from abandoned_orders where abandoned_orders.id = attempt.id)
         on conflict (id) do nothing
         returning ",
        order_columns!()
    ))
    .bind(&ids)
    .bind(sorted.iter().map(|order| order.deal_id).collect::<Vec<_>>())
    .bind(sorted.iter().map(|order| order.customer_id.as_str()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|order| order.quantity).collect::<Vec<_>>())
    .bind(sorted.iter().map(|order| order.unit_price.currency_code()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|order| order.unit_price.micros()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|order| order.total_price.micros()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|order| order.write_by).collect::<Vec<_>>())
    .bind(sorted.iter().map(|order| order.placed_at).collect::<Vec<_>>())
    .bind(sorted.iter().map(|order| order.approve_deadline).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(Order::from).collect())
}

/// Gives up the order attempt `id` unless its order was recorded: marks the id abandoned, so that
/// no order is ever recorded under it. Returns whether the order exists (then nothing is marked,
/// and the hold is the order's).
///
/// Safe against an order insert in flight for the same id: both take the hold's advisory lock, and
/// each decides in a statement that starts after the lock is granted (so it sees what the other
/// committed). Either the order was committed first, and it stays with its hold; or the mark was,
/// and the insert ([`insert_orders`]) finds it and records nothing.
#[tracing::instrument(name = "sql.abandon_attempt", skip_all, fields(order = %id))]
pub async fn abandon_attempt(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hold_lock_key($1))").bind(id).execute(&mut *tx).await?;
    let ordered: bool = sqlx::query_scalar(
        "with ordered as (
             select exists (select from orders where id = $1) as ordered
         ), marked as (
             insert into abandoned_orders (id) select $1 from ordered where not ordered
             on conflict (id) do nothing
         )
         select ordered from ordered",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ordered)
}

/// The orders among `ids` that exist.
#[tracing::instrument(name = "sql.get_orders", skip_all, fields(rows = ids.len()))]
pub async fn get_orders(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Order>, sqlx::Error> {
    let rows: Vec<OrderRow> = sqlx::query_as(concat!("select ", order_columns!(), " from orders where id = any($1)"))
        .bind(ids)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(Order::from).collect())
}

/// One order, if it exists.
#[tracing::instrument(name = "sql.get_order", skip_all, fields(order = %id))]
pub async fn get_order(pool: &PgPool, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    let row: Option<OrderRow> = sqlx::query_as(concat!("select ", order_columns!(), " from orders where id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(Order::from))
}

/// Moves a pending order to `state`, in one conditional statement: of concurrent decisions on one
/// order exactly one finds it pending. `None` when it was not pending (or does not exist), or its
/// approve deadline has come by the database clock: then it is expired, and the worker's expiry
/// (which takes the row's lock too) and a decision never both pass. With an `owner`, only that
/// customer's order moves.
#[tracing::instrument(name = "sql.decide", skip_all, fields(order = %id, state = state.as_str()))]
pub async fn decide(
    pool: &PgPool,
    id: Uuid,
    state: OrderState,
    owner: Option<&str>,
) -> Result<Option<Order>, sqlx::Error> {
    let row: Option<OrderRow> = sqlx::query_as(concat!(
        "update orders set state = $2, update_time = now()
          where id = $1 and state = 'pending_approval' and ($3::text is null or customer_id = $3)
            and (approve_deadline is null or approve_deadline > now())
         returning ",
        order_columns!()
    ))
    .bind(id)
    .bind(state.as_str())
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Order::from))
}

/// Notes that a rejected or cancelled order's units are back with the deal.
#[tracing::instrument(name = "sql.mark_units_released", skip_all, fields(order = %id))]
pub async fn mark_units_released(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("update orders set units_released = true where id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// A page of orders, newest first, after `after`, optionally of one customer and in one state.
#[tracing::instrument(name = "sql.list_orders", skip_all, fields(state = state.map(OrderState::as_str), limit = limit))]
pub async fn list_orders(
    pool: &PgPool,
    customer_id: Option<&str>,
    state: Option<OrderState>,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<Order>, sqlx::Error> {
    let rows: Vec<OrderRow> = sqlx::query_as(concat!(
        "select ",
        order_columns!(),
        " from orders
          where ($1::timestamptz is null or (create_time, id) < ($1, $2))
            and ($3::text is null or customer_id = $3)
            and ($4::text is null or ",
        order_state!(),
        " = $4)
          order by create_time desc, id desc
          limit $5"
    ))
    .bind(after.map(|cursor| cursor.at))
    .bind(after.map(|cursor| cursor.id))
    .bind(customer_id)
    .bind(state.map(OrderState::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Order::from).collect())
}
