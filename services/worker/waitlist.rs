//! The ends of waitlist entries: an offer not claimed by its `offer_expire_time` expires, and its
//! units go on to the next entries; when a deal ends, its waiting and offered entries expire (the
//! units of its offers go back to the deal). Entries read as expired from then on whether or not
//! this has run; this makes it so and moves the units.
//!
//! Each deal's entries expire in a transaction that takes the deal's row lock first, as joins,
//! leaves and claims do: a claim in flight and the expiry of its offer take turns, and the claim
//! checks the offer's end under the lock. Safe with several workers: the second finds nothing left.
//! A deal whose expiry fails is skipped and named; the other deals' entries still expire.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::failures::{Done, each_deal};

/// The most deals one pass expires entries of; the next pass takes the rest.
const DEALS_PER_PASS: i64 = 100;

/// Which open entries `e` of deals `d` are due to expire at `$1` (now, the database clock): ended
/// offers, and the entries of deals that have ended.
macro_rules! due {
    () => {
        "(e.state = 'offered' and e.offer_expire_time <= $1) or deal_state_at(d, $1) = 'expired'"
    };
}

/// Expires the waitlist entries due at `now`, deal by deal (those of `failed_before` first): a deal
/// whose expiry fails is named in the result and the others go on. Returns how many entries
/// expired.
#[tracing::instrument(name = "sql.expire_waitlist_entries", skip(pool, failed_before))]
pub async fn expire_waitlist_entries(
    pool: &PgPool,
    now: DateTime<Utc>,
    failed_before: &[Uuid],
) -> Result<Done<u64>, sqlx::Error> {
    // The rest in random order, so that deals failing pass after pass cannot fill every pass.
    let deals: Vec<Uuid> = sqlx::query_scalar(concat!(
        "select deal_id from (
             select distinct e.deal_id
               from waitlist_entries e join deals d on d.id = e.deal_id
              where e.state in ('waiting', 'offered') and (",
        due!(),
        ")
         ) due
          order by deal_id = any($3) desc, random()
          limit $2"
    ))
    .bind(now)
    .bind(DEALS_PER_PASS)
    .bind(failed_before)
    .fetch_all(pool)
    .await?;
    each_deal(deals, |deal| expire_deal_entries(pool, deal, now)).await
}

/// Expires deal `deal`'s entries due at `now`, under its row lock.
#[tracing::instrument(name = "sql.expire_deal_waitlist_entries", skip(pool))]
async fn expire_deal_entries(pool: &PgPool, deal: Uuid, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // A deal locked for long (a stuck transaction) fails this deal alone, not the whole pass.
    sqlx::query("set local lock_timeout = '5s'").execute(&mut *tx).await?;
    sqlx::query("select from deals where id = $1 for update").bind(deal).execute(&mut *tx).await?;
    let expired = sqlx::query(concat!(
        "update waitlist_entries e
            set state = 'expired', update_time = clock_timestamp(),
                waited_until = coalesce(e.waited_until, clock_timestamp())
           from deals d
          where d.id = e.deal_id and e.deal_id = $2 and e.state in ('waiting', 'offered') and (",
        due!(),
        ")"
    ))
    .bind(now)
    .bind(deal)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(expired)
}
