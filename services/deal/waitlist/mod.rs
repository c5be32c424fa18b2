//! A deal's waitlist, applied: joining, leaving and claiming an offer, each in one transaction that
//! takes the deal's row lock first — as the database's hand-out of returned units does — so they
//! and the offers happen one at a time per deal, whatever instance serves them.

use sqlx::PgPool;
use uuid::Uuid;

use crate::shared::{metrics, paging::Cursor};

use super::{
    domain::Reservation,
    error::DealError,
    holds::{
        allocation::{self, UnitRequest},
        store as holds,
    },
    store as deals,
};

use self::{
    domain::{self as waitlist, Claim, EntryState, Join, WaitlistEntry},
    store as entries,
};

pub mod domain;
pub mod store;

/// Adds `join` to its deal's waitlist, or answers a retry with the entry it made.
pub async fn join(pool: &PgPool, join: &Join) -> Result<WaitlistEntry, DealError> {
    let mut tx = pool.begin().await?;
    let deals::Sale { deal, held, .. } = deals::lock_deal_for_sale(&mut tx, join.deal_id, &[join.customer.as_str()])
        .await?
        .ok_or(DealError::DealNotFound)?;
    if let Some(existing) = entries::get_entry(&mut *tx, join.id).await? {
        return retried_join(existing, join);
    }
    let holds = held.get(&join.customer).copied().unwrap_or(0);
    if let Some(refusal) = waitlist::join_refusal(&deal, join, holds) {
        return Err(refusal);
    }
    let Some(entry) = entries::insert_entry(&mut tx, join).await? else {
        // Another deal's join inserted the id first.
        drop(tx);
        let existing = entries::get_entry(pool, join.id).await?;
        return retried_join(existing.ok_or(DealError::Internal("a waitlist entry vanished"))?, join);
    };
    tx.commit().await?;
    metrics::waitlist("joined");
    tracing::info!(deal = %join.deal_id, entry = %entry.id, quantity = join.quantity, "waitlist joined");
    Ok(entry)
}

fn retried_join(existing: WaitlistEntry, join: &Join) -> Result<WaitlistEntry, DealError> {
    if waitlist::same_join(&existing, join) { Ok(existing) } else { Err(DealError::RequestIdReused) }
}

/// Entry `entry_id` of deal `deal_id`, if `customer` (when given) is its customer.
pub async fn get(
    pool: &PgPool,
    deal_id: Uuid,
    entry_id: Uuid,
    customer: Option<&str>,
) -> Result<WaitlistEntry, DealError> {
    entries::get_entry(pool, entry_id)
        .await?
        .filter(|entry| entry.deal_id == deal_id && customer.is_none_or(|customer| entry.customer == customer))
        .ok_or(DealError::WaitlistEntryNotFound)
}

/// Takes `customer`'s entry `entry_id` of deal `deal_id` out of the waitlist; its offer, if it had
/// one, goes on to the next entries in the same transaction. Leaving twice is answered the same.
pub async fn leave(pool: &PgPool, deal_id: Uuid, entry_id: Uuid, customer: &str) -> Result<WaitlistEntry, DealError> {
    let mut tx = pool.begin().await?;
    deals::lock_deal(&mut tx, deal_id).await?.ok_or(DealError::WaitlistEntryNotFound)?;
    let entry = entries::get_entry(&mut *tx, entry_id)
        .await?
        .filter(|entry| entry.deal_id == deal_id && entry.customer == customer)
        .ok_or(DealError::WaitlistEntryNotFound)?;
    match entry.state {
        EntryState::Left => return Ok(entry),
        EntryState::Claimed | EntryState::Expired => return Err(DealError::WaitlistEntryClosed),
        EntryState::Waiting | EntryState::Offered => {}
    }
    // Under the deal's lock the entry cannot have changed since it was read.
    let left = entries::leave(&mut tx, entry_id).await?.ok_or(DealError::Internal("a locked entry changed"))?;
    tx.commit().await?;
    metrics::waitlist("left");
    tracing::info!(deal = %deal_id, entry = %entry_id, offered = entry.offered_units, "waitlist left");
    Ok(left)
}

/// Claims an offer for `claim` (order-service's reservation naming the entry), or answers a retry
/// with the reservation it made. The units come from the offer; what the claim leaves of it goes on
/// to the next entries, in the same transaction.
pub async fn claim(pool: &PgPool, deal_id: Uuid, claim: &Claim) -> Result<Reservation, DealError> {
    let as_request = UnitRequest {
        id: claim.id,
        quantity: claim.quantity,
        expected_price: claim.expected_price.clone(),
        customer: Some(claim.customer.clone()),
    };
    let mut tx = pool.begin().await?;
    let deals::Sale { deal, at, .. } =
        deals::lock_deal_for_sale(&mut tx, deal_id, &[]).await?.ok_or(DealError::DealNotFound)?;
    let window = deal.terms.approval_window_seconds;
    let with_window = |reservation: Reservation| Reservation { approval_window_seconds: window, ..reservation };
    if let Some(existing) = holds::reservations_by_id(&mut tx, &[claim.id]).await?.pop() {
        return allocation::same_reservation(existing, deal_id, &as_request).map(with_window);
    }
    let entry = entries::get_entry(&mut *tx, claim.entry_id)
        .await?
        .filter(|entry| entry.deal_id == deal_id)
        .ok_or(DealError::WaitlistEntryNotFound)?;
    if let Some(refusal) = waitlist::claim_refusal(&deal, &entry, claim, at) {
        metrics::waitlist(refusal.reason());
        return Err(refusal);
    }
    let Some(reservation) = entries::claim(&mut tx, deal_id, at, claim).await? else {
        // Another transaction inserted a reservation under this id first: answer from it.
        drop(tx);
        let theirs = holds::get_reservation(pool, claim.id).await?;
        let theirs = theirs.ok_or(DealError::Internal("a reservation inserted by another transaction vanished"))?;
        return allocation::same_reservation(theirs, deal_id, &as_request).map(with_window);
    };
    tx.commit().await?;
    metrics::waitlist("claimed");
    tracing::info!(deal = %deal_id, entry = %claim.entry_id, units = claim.quantity, "waitlist offer claimed");
    Ok(with_window(reservation))
}

/// A page of deal `deal_id`'s waitlist (only `customer`'s entries, when given), after `after`.
pub async fn list(
    pool: &PgPool,
    deal_id: Uuid,
    customer: Option<&str>,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<WaitlistEntry>, DealError> {
    if deals::get_deal(pool, deal_id).await?.is_none() {
        return Err(DealError::DealNotFound);
    }
    Ok(entries::list_entries(pool, deal_id, customer, after, limit).await?)
}
