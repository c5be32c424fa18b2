//! The rules of a deal's waitlist: who may join, and whether an offer can be claimed. The hand-out
//! of units that come back (strictly in join order) is the database function `return_units`
//! (migrations/…_waitlist.sql), called in the statement that frees them. No I/O here.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::shared::money::Price;

use crate::deal::error::DealError;
use crate::deal::{
    domain::{Deal, DealState, refusal},
    holds::customer_limit,
};

/// Where an entry is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    Waiting,
    Offered,
    Claimed,
    Left,
    Expired,
}

impl EntryState {
    /// Reads the name the database uses.
    pub fn from_db(name: &str) -> Option<Self> {
        match name {
            "waiting" => Some(Self::Waiting),
            "offered" => Some(Self::Offered),
            "claimed" => Some(Self::Claimed),
            "left" => Some(Self::Left),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// A customer's place in a deal's waitlist, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitlistEntry {
    pub id: Uuid,
    pub deal_id: Uuid,
    pub customer: String,
    pub quantity: i32,
    pub state: EntryState,
    /// Entries ahead of it while it waits; 0 otherwise.
    pub position: i32,
    /// The units offered to it; 0 before an offer.
    pub offered_units: i32,
    pub offer_expire_time: Option<DateTime<Utc>>,
    /// The order (reservation) that claimed it, and its units.
    pub claim: Option<(Uuid, i32)>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// A `JoinWaitlist` request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The entry's id: the request id, or a fresh one.
    pub id: Uuid,
    pub deal_id: Uuid,
    pub customer: String,
    pub quantity: i32,
}

/// Why `deal`, read under its row lock at the instant of the join, refuses `join`; `holds` is what
/// the deal's per-customer limit counts of the customer already.
pub fn join_refusal(deal: &Deal, join: &Join, holds: i32) -> Option<DealError> {
    match refusal(deal, join.quantity, None) {
        // Enough units are left: the customer can order them.
        None => return Some(DealError::UnitsAvailable { available: deal.available_units }),
        Some(DealError::InsufficientUnits { .. }) => {}
        Some(other) => return Some(other),
    }
    customer_limit::refusal(deal, Some(&join.customer), join.quantity, holds)
}

/// Whether `existing`, found under a join's id, is the entry this join made: a retry then gets it.
pub fn same_join(existing: &WaitlistEntry, join: &Join) -> bool {
    existing.deal_id == join.deal_id && existing.customer == join.customer && existing.quantity == join.quantity
}

/// A claim of an offer: a `ReserveUnits` request naming a waitlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The reservation's id (order-service's order id).
    pub id: Uuid,
    pub entry_id: Uuid,
    pub customer: String,
    pub quantity: i32,
    pub expected_price: Option<Price>,
}

/// Why `entry` of `deal`, both read under the deal's row lock at instant `at`, cannot give `claim`
/// its units.
pub fn claim_refusal(deal: &Deal, entry: &WaitlistEntry, claim: &Claim, at: DateTime<Utc>) -> Option<DealError> {
    if entry.customer != claim.customer {
        return Some(DealError::WaitlistEntryNotFound);
    }
    match entry.state {
        EntryState::Waiting => return Some(DealError::OfferNotMade),
        EntryState::Expired => return Some(DealError::OfferExpired),
        EntryState::Claimed | EntryState::Left => return Some(DealError::WaitlistEntryClosed),
        EntryState::Offered if entry.offer_expire_time.is_none_or(|end| end <= at) => {
            return Some(DealError::OfferExpired);
        }
        EntryState::Offered => {}
    }
    if deal.state != DealState::Active {
        return refusal(deal, claim.quantity, None);
    }
    if claim.expected_price.as_ref().is_some_and(|expected| *expected != deal.terms.final_price) {
        return Some(DealError::PriceChanged { current: deal.terms.final_price.clone() });
    }
    (claim.quantity > entry.offered_units)
        .then_some(DealError::InsufficientUnits { requested: claim.quantity, available: entry.offered_units })
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone};

    use super::*;
    use crate::deal::domain::{DealTerms, sample_deal};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()
    }

    fn join(quantity: i32) -> Join {
        Join { id: Uuid::new_v4(), deal_id: Uuid::nil(), customer: "alice".into(), quantity }
    }

    fn reason(refusal: Option<DealError>) -> Option<&'static str> {
        refusal.map(|refusal| refusal.reason())
    }

    #[test]
    fn a_customer_joins_only_when_too_few_units_are_left_for_it_and_within_the_limit() {
        let deal = Deal { available_units: 2, ..sample_deal(now()) };
        assert_eq!(reason(join_refusal(&deal, &join(2), 0)), Some("UNITS_AVAILABLE"));
        assert_eq!(reason(join_refusal(&deal, &join(3), 0)), None);
        let expired = Deal { state: DealState::Expired, ..deal.clone() };
        assert_eq!(reason(join_refusal(&expired, &join(3), 0)), Some("DEAL_EXPIRED"));
        let scheduled = Deal { state: DealState::Scheduled, ..deal.clone() };
        assert_eq!(reason(join_refusal(&scheduled, &join(3), 0)), Some("DEAL_NOT_STARTED"));
        let limited = Deal { terms: DealTerms { max_units_per_customer: Some(4), ..deal.terms.clone() }, ..deal };
        assert_eq!(reason(join_refusal(&limited, &join(3), 1)), None, "1 held + 3 waited for is the limit");
        match join_refusal(&limited, &join(3), 2) {
            Some(DealError::PerCustomerLimitExceeded { limit: 4, remaining: 2 }) => {}
            other => panic!("expected the limit, got {other:?}"),
        }
    }

    fn offered(units: i32, ends_in: TimeDelta) -> WaitlistEntry {
        WaitlistEntry {
            id: Uuid::new_v4(),
            deal_id: Uuid::nil(),
            customer: "alice".into(),
            quantity: 3,
            state: EntryState::Offered,
            position: 0,
            offered_units: units,
            offer_expire_time: Some(now() + ends_in),
            claim: None,
            create_time: now(),
            update_time: now(),
        }
    }

    fn claim(customer: &str, quantity: i32) -> Claim {
        Claim { id: Uuid::new_v4(), entry_id: Uuid::nil(), customer: customer.into(), quantity, expected_price: None }
    }

    #[test]
    fn an_offer_is_claimed_by_its_customer_before_it_ends_for_at_most_its_units() {
        let deal = Deal { available_units: 0, ..sample_deal(now()) };
        let entry = offered(2, TimeDelta::minutes(1));
        assert_eq!(reason(claim_refusal(&deal, &entry, &claim("alice", 2), now())), None);
        assert_eq!(reason(claim_refusal(&deal, &entry, &claim("alice", 1), now())), None, "fewer is allowed");
        assert_eq!(reason(claim_refusal(&deal, &entry, &claim("alice", 3), now())), Some("INSUFFICIENT_UNITS"));
        assert_eq!(reason(claim_refusal(&deal, &entry, &claim("bob", 1), now())), Some("WAITLIST_ENTRY_NOT_FOUND"));
        let ended = offered(2, TimeDelta::zero());
        assert_eq!(reason(claim_refusal(&deal, &ended, &claim("alice", 1), now())), Some("OFFER_EXPIRED"));
        for (state, expected) in [
            (EntryState::Waiting, "OFFER_NOT_MADE"),
            (EntryState::Expired, "OFFER_EXPIRED"),
            (EntryState::Left, "WAITLIST_ENTRY_CLOSED"),
            (EntryState::Claimed, "WAITLIST_ENTRY_CLOSED"),
        ] {
            let entry = WaitlistEntry { state, ..entry.clone() };
            assert_eq!(reason(claim_refusal(&deal, &entry, &claim("alice", 1), now())), Some(expected), "{state:?}");
        }
        let expired = Deal { state: DealState::Expired, ..deal };
        assert_eq!(reason(claim_refusal(&expired, &entry, &claim("alice", 1), now())), Some("DEAL_EXPIRED"));
    }
}
