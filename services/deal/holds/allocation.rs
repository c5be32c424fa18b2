//! The rules of reserving: which of the reservations that arrived together for one deal get units,
//! and what a retried reservation is answered. No I/O here.
//!
//! A batch is decided as if its requests had come one by one in arrival order: each is checked
//! against the deal as the requests before it left it, so a batch gives exactly the answers the
//! same requests would have got one transaction each.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::shared::money::Price;

use crate::deal::{
    domain::{self, Deal, Reservation, ReservationState},
    error::DealError,
};

use super::customer_limit;

/// One `ReserveUnits` request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRequest {
    /// The reservation's id, chosen by the caller (order-service uses the order id).
    pub id: Uuid,
    pub quantity: i32,
    /// The unit price the buyer was shown, if the caller said.
    pub expected_price: Option<Price>,
    /// The customer the units are for, if the caller said; required by a per-customer limit.
    pub customer: Option<String>,
}

/// Whether `existing` was reserved for another customer than `request` names. A reservation made
/// before customers were recorded has none, and matches any.
fn other_customer(existing: &Reservation, request: &UnitRequest) -> bool {
    existing.customer.is_some() && existing.customer != request.customer
}

/// What becomes of one request of a batch.
#[derive(Debug, Clone)]
pub enum Allocation {
    /// A reservation with this id existed before the batch: the request is a retry.
    Existing,
    /// The request takes its units.
    Take,
    /// An earlier request of the same batch has the same id: answered like a retry of it.
    SameAsEarlier,
    /// The deal cannot give the units.
    Refused(DealError),
}

/// Decides every request of a batch against `deal`, read under its row lock at the instant of the
/// sale. `existing` holds the ids among the requests that were reserved before; `held` the units
/// each customer of the batch held of the deal before it (held and confirmed reservations, and the
/// units their waiting and offered waitlist entries ask for), which the deal's per-customer limit
/// counts together with what the batch gives them.
pub fn allocate(
    deal: &Deal,
    requests: &[UnitRequest],
    existing: &HashSet<Uuid>,
    held: &HashMap<String, i32>,
) -> Vec<Allocation> {
    let mut left = deal.clone();
    let mut taken = HashSet::new();
    let mut held = held.clone();
    requests
        .iter()
        .map(|request| {
            if existing.contains(&request.id) {
                Allocation::Existing
            } else if taken.contains(&request.id) {
                Allocation::SameAsEarlier
            } else if let Some(refusal) = domain::refusal(&left, request.quantity, request.expected_price.as_ref()) {
                Allocation::Refused(refusal)
            } else if let Some(refusal) = customer_limit::refusal(
                &left,
                request.customer.as_deref(),
                request.quantity,
                request.customer.as_ref().and_then(|customer| held.get(customer)).copied().unwrap_or(0),
            ) {
                Allocation::Refused(refusal)
            } else {
                left.available_units -= request.quantity;
                taken.insert(request.id);
                if let Some(customer) = &request.customer {
                    *held.entry(customer.clone()).or_default() += request.quantity;
                }
                Allocation::Take
            }
        })
        .collect()
}

/// The answer to `request` when a reservation with its id already exists: the reservation itself
/// for a retry; a refusal for an id used for another deal, quantity or customer, for a retry that expects
/// another price than the one the units were taken at, and for a retry after the reservation was
/// released (its units went back; taking them again under the same id could revive a cancelled
/// order's hold).
pub fn same_reservation(existing: Reservation, deal_id: Uuid, request: &UnitRequest) -> Result<Reservation, DealError> {
    if existing.deal_id != deal_id || existing.quantity != request.quantity || other_customer(&existing, request) {
        Err(DealError::ReservationIdReused)
    } else if existing.state == ReservationState::Released {
        Err(DealError::ReservationReleased)
    } else if request.expected_price.as_ref().is_some_and(|expected| *expected != existing.unit_price) {
        Err(DealError::PriceChanged { current: existing.unit_price })
    } else {
        Ok(existing)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::deal::domain::{DealState, DealTerms};

    fn deal(available_units: i32, state: DealState) -> Deal {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap();
        Deal { available_units, state, ..domain::sample_deal(now) }
    }

    fn request(quantity: i32) -> UnitRequest {
        UnitRequest { id: Uuid::new_v4(), quantity, expected_price: None, customer: None }
    }

    fn by(customer: &str, quantity: i32) -> UnitRequest {
        UnitRequest { customer: Some(customer.into()), ..request(quantity) }
    }

    fn kinds(allocations: &[Allocation]) -> Vec<&'static str> {
        allocations
            .iter()
            .map(|allocation| match allocation {
                Allocation::Existing => "existing",
                Allocation::Take => "take",
                Allocation::SameAsEarlier => "same",
                Allocation::Refused(DealError::InsufficientUnits { .. }) => "sold out",
                Allocation::Refused(DealError::PriceChanged { .. }) => "price",
                Allocation::Refused(DealError::DealExpired) => "expired",
                Allocation::Refused(DealError::PerCustomerLimitExceeded { .. }) => "limit",
                Allocation::Refused(DealError::InvalidArgument(_)) => "invalid",
                Allocation::Refused(other) => panic!("unexpected refusal {other:?}"),
            })
            .collect()
    }

    #[test]
    fn requests_take_units_in_arrival_order_until_too_few_are_left() {
        let requests = [request(2), request(2), request(3), request(1)];
        let allocations = allocate(&deal(5, DealState::Active), &requests, &HashSet::new(), &HashMap::new());
        // The third asks for more than the one unit left; the fourth still gets that unit.
        assert_eq!(kinds(&allocations), ["take", "take", "sold out", "take"]);
        match &allocations[2] {
            Allocation::Refused(DealError::InsufficientUnits { requested, available }) => {
                assert_eq!((*requested, *available), (3, 1));
            }
            other => panic!("expected sold out, got {other:?}"),
        }
    }

    #[test]
    fn retries_and_repeated_ids_take_nothing() {
        let retried = request(1);
        let first = request(1);
        let repeated = UnitRequest { id: first.id, ..request(1) };
        let requests = [retried.clone(), first, repeated, request(1)];
        let allocations =
            allocate(&deal(2, DealState::Active), &requests, &HashSet::from([retried.id]), &HashMap::new());
        assert_eq!(kinds(&allocations), ["existing", "take", "same", "take"]);
    }

    #[test]
    fn an_expired_deal_refuses_the_whole_batch() {
        let allocations =
            allocate(&deal(10, DealState::Expired), &[request(1), request(1)], &HashSet::new(), &HashMap::new());
        assert_eq!(kinds(&allocations), ["expired", "expired"]);
    }

    #[test]
    fn a_request_expecting_another_price_is_refused_alone() {
        let shown = UnitRequest { expected_price: Some(Price::from_stored("INR".into(), 500_000_000)), ..request(1) };
        let allocations =
            allocate(&deal(10, DealState::Active), &[shown, request(1)], &HashSet::new(), &HashMap::new());
        assert_eq!(kinds(&allocations), ["price", "take"]);
    }

    #[test]
    fn a_customer_gets_units_up_to_the_limit_counting_what_it_held_before_and_what_the_batch_gave_it() {
        let limited = Deal {
            terms: DealTerms { max_units_per_customer: Some(5), ..deal(50, DealState::Active).terms },
            ..deal(50, DealState::Active)
        };
        let held = HashMap::from([("alice".to_owned(), 2)]);
        let requests = [by("alice", 2), by("bob", 5), by("alice", 2), by("alice", 1), by("bob", 1), request(1)];
        let allocations = allocate(&limited, &requests, &HashSet::new(), &held);
        // alice: 2 held + 2 = 4, then 2 more would be 6 (refused with 1 remaining), then 1 is 5.
        assert_eq!(kinds(&allocations), ["take", "take", "limit", "take", "limit", "invalid"]);
        match &allocations[2] {
            Allocation::Refused(DealError::PerCustomerLimitExceeded { limit, remaining }) => {
                assert_eq!((*limit, *remaining), (5, 1));
            }
            other => panic!("expected the limit, got {other:?}"),
        }
        let unlimited = allocate(&deal(50, DealState::Active), &[by("alice", 100), request(1)], &HashSet::new(), &held);
        assert_eq!(kinds(&unlimited), ["sold out", "take"], "without a limit only the units left count");
    }
}
