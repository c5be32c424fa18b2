//! Every conversion between deal-service's protobuf messages and its domain types, in one place:
//! what the API shows of a deal, a reservation and a waitlist entry, and the enum values of their
//! states.

use tonic::Status;

use crate::{
    proto::{deal as pb, holds as holds_pb},
    shared::{
        auth::{Caller, Role},
        names, status, time,
    },
};

use super::error::DealError;

use super::{
    domain::{Deal, DealState, Reservation, ReservationState},
    waitlist::domain::{EntryState, WaitlistEntry},
};

/// A deal as the API shows it.
pub fn deal_to_proto(deal: &Deal) -> pb::Deal {
    pb::Deal {
        name: names::format(names::DEALS, deal.id),
        product_name: deal.terms.product_name.clone(),
        actual_price: Some(deal.terms.actual_price.to_proto()),
        final_price: Some(deal.terms.final_price.to_proto()),
        total_units: deal.terms.total_units,
        available_units: deal.available_units,
        start_time: Some(time::to_proto(deal.terms.start_time)),
        expire_time: Some(time::to_proto(deal.terms.expire_time)),
        state: deal_state_to_proto(deal.state).into(),
        create_time: Some(time::to_proto(deal.create_time)),
        update_time: Some(time::to_proto(deal.update_time)),
        max_units_per_customer: deal.terms.max_units_per_customer,
        approval_window: deal.terms.approval_window_seconds.map(seconds),
        claimed_percent: claimed_percent(deal),
        offer_window: Some(seconds(deal.terms.offer_window_seconds)),
    }
}

/// A waitlist entry as the API shows it.
pub fn entry_to_proto(entry: &WaitlistEntry) -> pb::WaitlistEntry {
    let state = match entry.state {
        EntryState::Waiting => pb::waitlist_entry::State::Waiting,
        EntryState::Offered => pb::waitlist_entry::State::Offered,
        EntryState::Claimed => pb::waitlist_entry::State::Claimed,
        EntryState::Left => pb::waitlist_entry::State::Left,
        EntryState::Expired => pb::waitlist_entry::State::Expired,
    };
    pb::WaitlistEntry {
        name: names::format_waitlist_entry(entry.deal_id, entry.id),
        customer_id: entry.customer.clone(),
        quantity: entry.quantity,
        state: state.into(),
        position: entry.position,
        offered_units: entry.offered_units,
        offer_expire_time: entry.offer_expire_time.map(time::to_proto),
        claimed_units: entry.claim.map_or(0, |(_, units)| units),
        create_time: Some(time::to_proto(entry.create_time)),
        update_time: Some(time::to_proto(entry.update_time)),
        // order-service reserves a claim under the order's id.
        order: entry.claim.map(|(order, _)| names::format(names::ORDERS, order)).unwrap_or_default(),
    }
}

/// A reservation as the API shows it.
pub fn reservation_to_proto(reservation: &Reservation) -> holds_pb::Reservation {
    let state = reservation_state_to_proto(reservation.state);
    holds_pb::Reservation {
        reservation_id: reservation.id.to_string(),
        deal: names::format(names::DEALS, reservation.deal_id),
        quantity: reservation.quantity,
        unit_price: Some(reservation.unit_price.to_proto()),
        state: state.into(),
        create_time: Some(time::to_proto(reservation.create_time)),
        update_time: Some(time::to_proto(reservation.update_time)),
        approval_window: reservation.approval_window_seconds.map(seconds),
    }
}

/// The results of a batch call, one per request, in order: each reservation as ReserveUnits or
/// ConfirmUnits would return it, or the status it would fail with, as a `google.rpc.Status`.
pub fn reservation_results_to_proto(results: Vec<Result<Reservation, DealError>>) -> Vec<holds_pb::ReservationResult> {
    results
        .into_iter()
        .map(|result| holds_pb::ReservationResult {
            result: Some(match result {
                Ok(reservation) => {
                    holds_pb::reservation_result::Result::Reservation(reservation_to_proto(&reservation))
                }
                Err(err) => holds_pb::reservation_result::Result::Error(status::to_message(&Status::from(err))),
            }),
        })
        .collect()
}

/// Who a deal is shown to: customers see a scheduled deal's terms but its final price only once it
/// starts (admins always see it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Admins,
    Customers,
}

impl Audience {
    /// The audience of `caller`.
    pub fn of(caller: &Caller) -> Self {
        if caller.is_any(&[Role::Admin]) { Self::Admins } else { Self::Customers }
    }

    /// `deal` as this audience sees it.
    pub fn deal(self, deal: &Deal) -> pb::Deal {
        let mut shown = deal_to_proto(deal);
        if self == Self::Customers && deal.state == DealState::Scheduled {
            shown.final_price = None;
        }
        shown
    }
}

/// The API's value of a deal's state.
pub fn deal_state_to_proto(state: DealState) -> pb::deal::State {
    match state {
        DealState::Scheduled => pb::deal::State::Scheduled,
        DealState::Active => pb::deal::State::Active,
        DealState::Expired => pb::deal::State::Expired,
    }
}

/// The state an API filter names; `None` for STATE_UNSPECIFIED.
pub fn deal_state_from_proto(state: pb::deal::State) -> Option<DealState> {
    match state {
        pb::deal::State::Unspecified => None,
        pb::deal::State::Scheduled => Some(DealState::Scheduled),
        pb::deal::State::Active => Some(DealState::Active),
        pb::deal::State::Expired => Some(DealState::Expired),
    }
}

/// The API's value of a reservation's state.
pub fn reservation_state_to_proto(state: ReservationState) -> holds_pb::reservation::State {
    match state {
        ReservationState::Held => holds_pb::reservation::State::Reserved,
        ReservationState::Confirmed => holds_pb::reservation::State::Confirmed,
        ReservationState::Released => holds_pb::reservation::State::Released,
    }
}

/// A duration of whole `seconds`.
fn seconds(seconds: i32) -> prost_types::Duration {
    prost_types::Duration { seconds: i64::from(seconds), nanos: 0 }
}

/// The share of a deal's units claimed, in whole percent, rounded down.
fn claimed_percent(deal: &Deal) -> i32 {
    let claimed = i64::from(deal.terms.total_units - deal.available_units);
    i32::try_from(claimed * 100 / i64::from(deal.terms.total_units.max(1))).unwrap_or(100).clamp(0, 100)
}
