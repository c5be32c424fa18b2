//! An admin's changes to a deal: the rules applied to the stored deal under its row lock, in one
//! transaction, and the first page of live deals dropped so this instance shows the change at once.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::proto::deal as pb;

use super::{
    domain::{self, Deal, DealTerms},
    error::DealError,
    live_deals::LiveDeals,
    store,
};

/// Stores a new deal of `terms`, validated at `now`: scheduled or live by its start time then.
pub async fn create(
    pool: &PgPool,
    live_deals: &LiveDeals,
    terms: &DealTerms,
    now: DateTime<Utc>,
) -> Result<Deal, DealError> {
    let state = domain::initial_state(terms, now);
    let deal = store::insert_deal(pool, Uuid::new_v4(), terms, state).await?;
    live_deals.invalidate();
    tracing::info!(deal = %deal.id, "deal created");
    Ok(deal)
}

/// Applies the fields of `patch` named in `mask` to deal `id`. The deal is locked while the rules
/// are checked against it, so an update cannot race a reservation into selling more than its
/// new total. Units added by a raised total are offered to the deal's waitlist first.
pub async fn update(
    pool: &PgPool,
    live_deals: &LiveDeals,
    id: Uuid,
    patch: &pb::Deal,
    mask: &[String],
) -> Result<Deal, DealError> {
    let mut tx = pool.begin().await?;
    let current = store::lock_deal(&mut tx, id).await?.ok_or(DealError::DealNotFound)?;
    let terms = domain::update_deal(&current, patch, mask, Utc::now())?;
    let mut deal = store::update_deal(&mut tx, id, &terms).await?;
    let added = terms.total_units - current.terms.total_units;
    if added > 0 {
        // Units added go to the waitlist first, as units that come back do.
        super::waitlist::store::offer_added_units(&mut tx, id, added).await?;
        deal = store::lock_deal(&mut tx, id).await?.ok_or(DealError::Internal("a locked deal vanished"))?;
    }
    tx.commit().await?;
    live_deals.invalidate();
    tracing::info!(deal = %deal.id, fields = ?mask, "deal updated");
    Ok(deal)
}
