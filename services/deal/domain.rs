//! The rules of a deal, as validated types and pure functions: what a valid deal is, what an update
//! may change, and why a reservation was refused. No I/O here.

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::{
    proto::deal as pb,
    shared::{money::Price, status::Violations, time},
};

use super::error::DealError;

/// The longest a deal may run.
pub const MAX_DEAL_DURATION: TimeDelta = TimeDelta::hours(12);
/// The most units one deal may sell.
pub const MAX_TOTAL_UNITS: i32 = 1_000_000;
/// The longest product name, in characters.
pub const MAX_PRODUCT_NAME_CHARS: usize = 200;
/// How far in the past a start time may be, to allow for clocks and latency.
pub const START_TIME_TOLERANCE: TimeDelta = TimeDelta::minutes(1);

/// What a deal is at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DealState {
    /// Waiting for its start time.
    Scheduled,
    /// Started, not expired: it can be ordered while units are left.
    Active,
    /// Past its expiry or its daily reset. Final.
    Expired,
}

impl DealState {
    /// The name the database uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Active => "active",
            Self::Expired => "expired",
        }
    }

    /// Reads the name the database uses.
    pub fn from_db(name: &str) -> Option<Self> {
        match name {
            "scheduled" => Some(Self::Scheduled),
            "active" => Some(Self::Active),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// Where a reservation is in the protocol of docs/reservations.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    /// Units taken, held while the order is being recorded.
    Held,
    /// Units belong to a recorded order.
    Confirmed,
    /// Units given back. Final.
    Released,
}

impl ReservationState {
    /// Reads the name the database uses.
    pub fn from_db(name: &str) -> Option<Self> {
        match name {
            "reserved" => Some(Self::Held),
            "confirmed" => Some(Self::Confirmed),
            "released" => Some(Self::Released),
            _ => None,
        }
    }
}

/// Units held for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: Uuid,
    pub deal_id: Uuid,
    /// The customer the units are for, when the caller said.
    pub customer: Option<String>,
    /// In the answer to a reservation: the deal's approval window then, in seconds.
    pub approval_window_seconds: Option<i32>,
    pub quantity: i32,
    pub unit_price: Price,
    pub state: ReservationState,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// Everything an admin sets on a deal, valid on its own and as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DealTerms {
    pub product_name: String,
    pub actual_price: Price,
    pub final_price: Price,
    pub total_units: i32,
    pub start_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    /// The most units one customer may hold of the deal; `None`: no limit but an order's.
    pub max_units_per_customer: Option<i32>,
    /// How long an order may wait for approval, in seconds; `None`: as long as it takes.
    pub approval_window_seconds: Option<i32>,
    /// How long a waitlist entry has to claim an offer, in seconds.
    pub offer_window_seconds: i32,
}

impl DealTerms {
    /// When the deal ends: its `expire_time`, or the daily reset after its start if that comes
    /// first. The one definition in Rust; SQL's is `deal_end_time` (migrations), and a test checks
    /// the two agree.
    pub fn end_time(&self) -> DateTime<Utc> {
        self.expire_time.min(daily_reset_after(self.start_time))
    }
}

/// A deal as stored, with its state at the instant it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deal {
    pub id: Uuid,
    pub terms: DealTerms,
    pub available_units: i32,
    pub state: DealState,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Deal {
    /// Units held by reservations: what total units may not go below.
    pub fn reserved_units(&self) -> i32 {
        self.terms.total_units - self.available_units
    }
}

/// The first 00:00 UTC after `start`, when the daily reset ends the deal; the same instant as the
/// `daily_reset_time` column.
pub fn daily_reset_after(start: DateTime<Utc>) -> DateTime<Utc> {
    (start.date_naive() + chrono::Days::new(1)).and_time(chrono::NaiveTime::MIN).and_utc()
}

/// The state a new deal is stored with.
pub fn initial_state(terms: &DealTerms, now: DateTime<Utc>) -> DealState {
    if terms.start_time <= now { DealState::Active } else { DealState::Scheduled }
}

/// Validates a `CreateDeal` request's deal at `now`.
pub fn new_deal(deal: Option<&pb::Deal>, now: DateTime<Utc>) -> Result<DealTerms, DealError> {
    let mut violations = Violations::default();
    let Some(deal) = deal else {
        violations.add("deal", "is required");
        return Err(violations.into());
    };
    let product_name = product_name("deal.product_name", &deal.product_name, &mut violations);
    let actual_price = Price::parse("deal.actual_price", deal.actual_price.as_ref(), &mut violations);
    let final_price = Price::parse("deal.final_price", deal.final_price.as_ref(), &mut violations);
    let total_units = total_units("deal.total_units", deal.total_units, &mut violations);
    let start_time = match &deal.start_time {
        Some(start) => start_time("deal.start_time", start, now, &mut violations),
        None => Some(now),
    };
    let expire_time = required_time("deal.expire_time", deal.expire_time.as_ref(), &mut violations);
    let max_units_per_customer =
        per_customer_limit("deal.max_units_per_customer", deal.max_units_per_customer, &mut violations);
    let approval_window_seconds =
        approval_window("deal.approval_window", deal.approval_window.as_ref(), &mut violations);
    let offer_window_seconds = offer_window("deal.offer_window", deal.offer_window.as_ref(), &mut violations);
    let (
        Some(product_name),
        Some(actual_price),
        Some(final_price),
        Some(total_units),
        Some(start_time),
        Some(expire_time),
    ) = (product_name, actual_price, final_price, total_units, start_time, expire_time)
    else {
        return Err(violations.into());
    };
    let terms = DealTerms {
        product_name,
        actual_price,
        final_price,
        total_units,
        start_time,
        expire_time,
        max_units_per_customer,
        approval_window_seconds,
        offer_window_seconds,
    };
    check_whole(&terms, now, &mut violations);
    Ok(violations.into_result(terms)?)
}

/// The fields `UpdateDeal` may change, as named in an update mask.
pub const UPDATABLE_FIELDS: [&str; 9] = [
    "product_name",
    "actual_price",
    "final_price",
    "total_units",
    "start_time",
    "expire_time",
    "max_units_per_customer",
    "approval_window",
    "offer_window",
];

/// Applies an `UpdateDeal` request to `current`, read at `now`, and returns the new terms.
pub fn update_deal(
    current: &Deal,
    patch: &pb::Deal,
    mask: &[String],
    now: DateTime<Utc>,
) -> Result<DealTerms, DealError> {
    let mut mask_violations = Violations::default();
    check_update_mask(mask, &mut mask_violations);
    mask_violations.into_result(())?;
    if current.state == DealState::Expired {
        return Err(DealError::DealExpired);
    }
    let mut violations = Violations::default();
    let mut terms = current.terms.clone();
    for field in mask {
        let path = format!("deal.{field}");
        match field.as_str() {
            "product_name" => set(&mut terms.product_name, product_name(&path, &patch.product_name, &mut violations)),
            "actual_price" => {
                set(&mut terms.actual_price, Price::parse(&path, patch.actual_price.as_ref(), &mut violations))
            }
            "final_price" => {
                set(&mut terms.final_price, Price::parse(&path, patch.final_price.as_ref(), &mut violations))
            }
            "total_units" => set(&mut terms.total_units, total_units(&path, patch.total_units, &mut violations)),
            "start_time" => {
                let new = required_time(&path, patch.start_time.as_ref(), &mut violations)
                    .filter(|new| *new != current.terms.start_time);
                if new.is_some() && current.state != DealState::Scheduled {
                    return Err(DealError::StartTimeLocked);
                }
                let new = new.filter(|new| not_in_the_past(&path, *new, now, &mut violations));
                set(&mut terms.start_time, new);
            }
            "expire_time" => {
                set(&mut terms.expire_time, required_time(&path, patch.expire_time.as_ref(), &mut violations))
            }
            // Unset in the patch removes the limit.
            "max_units_per_customer" => {
                terms.max_units_per_customer = per_customer_limit(&path, patch.max_units_per_customer, &mut violations)
            }
            "approval_window" => {
                terms.approval_window_seconds = approval_window(&path, patch.approval_window.as_ref(), &mut violations)
            }
            // Unset in the patch restores the default.
            "offer_window" => {
                terms.offer_window_seconds = offer_window(&path, patch.offer_window.as_ref(), &mut violations)
            }
            // check_update_mask has refused every other path.
            _ => {}
        }
    }
    check_whole(&terms, now, &mut violations);
    if !violations.is_empty() {
        return Err(violations.into());
    }
    if terms.total_units < current.reserved_units() {
        return Err(DealError::TotalUnitsBelowSold { sold: current.reserved_units() });
    }
    Ok(terms)
}

/// Checks an `UpdateDeal` mask, recording what is wrong; the handler runs it before it looks the deal
/// up, so a malformed request is INVALID_ARGUMENT whether or not the deal exists.
pub fn check_update_mask(mask: &[String], violations: &mut Violations) {
    if mask.is_empty() {
        violations.add("update_mask", "is required: name the fields to change");
    }
    for (index, field) in mask.iter().enumerate() {
        if !UPDATABLE_FIELDS.contains(&field.as_str()) {
            violations.add(
                format!("update_mask.paths[{index}]"),
                format!("{field:?} cannot be updated; updatable fields: {}", UPDATABLE_FIELDS.join(", ")),
            );
        } else if mask[..index].contains(field) {
            violations.add(format!("update_mask.paths[{index}]"), format!("{field:?} is named twice"));
        }
    }
}

/// Why `deal`, read at the same instant as a refused reservation, could not give `quantity` units at
/// `expected_price`.
pub fn refusal(deal: &Deal, quantity: i32, expected_price: Option<&Price>) -> Option<DealError> {
    match deal.state {
        DealState::Expired => return Some(DealError::DealExpired),
        DealState::Scheduled => return Some(DealError::DealNotStarted),
        DealState::Active => {}
    }
    if expected_price.is_some_and(|expected| *expected != deal.terms.final_price) {
        return Some(DealError::PriceChanged { current: deal.terms.final_price.clone() });
    }
    if deal.available_units < quantity {
        return Some(DealError::InsufficientUnits { requested: quantity, available: deal.available_units });
    }
    None
}

/// The rules that tie fields together.
fn check_whole(terms: &DealTerms, now: DateTime<Utc>, violations: &mut Violations) {
    if terms.final_price.currency_code() != terms.actual_price.currency_code() {
        violations.add("deal.final_price.currency_code", "must be the currency of actual_price");
    } else if terms.final_price.micros() > terms.actual_price.micros() {
        violations.add("deal.final_price", "must not be above actual_price");
    }
    if daily_reset_after(terms.start_time) <= now {
        violations.add("deal.start_time", "must be on the current UTC day: that day's deals ended at 00:00 UTC");
    } else if terms.expire_time <= now {
        violations.add("deal.expire_time", "must be in the future");
    } else if terms.expire_time <= terms.start_time {
        violations.add("deal.expire_time", "must be after start_time");
    } else if terms.expire_time - terms.start_time > MAX_DEAL_DURATION {
        violations.add("deal.expire_time", "must be at most 12 hours after start_time");
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// Validates an optional per-customer limit for `field`: unset, or 1 to [`MAX_TOTAL_UNITS`].
fn per_customer_limit(field: &str, limit: Option<i32>, violations: &mut Violations) -> Option<i32> {
    let limit = limit?;
    if (1..=MAX_TOTAL_UNITS).contains(&limit) {
        Some(limit)
    } else {
        violations.add(field, format!("must be between 1 and {MAX_TOTAL_UNITS} when set"));
        None
    }
}

/// The shortest and longest approval window, in seconds.
pub const APPROVAL_WINDOW_SECONDS: std::ops::RangeInclusive<i32> = 60..=43_200;

/// Validates an optional approval window for `field`: unset, or whole seconds from 1 minute to 12
/// hours.
fn approval_window(field: &str, window: Option<&prost_types::Duration>, violations: &mut Violations) -> Option<i32> {
    let window = window?;
    match i32::try_from(window.seconds) {
        Ok(seconds) if window.nanos == 0 && APPROVAL_WINDOW_SECONDS.contains(&seconds) => Some(seconds),
        _ => {
            violations.add(field, "must be whole seconds from 1 minute to 12 hours when set");
            None
        }
    }
}

/// The offer window of a deal that sets none: 5 minutes.
pub const DEFAULT_OFFER_WINDOW_SECONDS: i32 = 300;
/// The shortest and longest offer window, in seconds.
pub const OFFER_WINDOW_SECONDS: std::ops::RangeInclusive<i32> = 60..=3_600;

/// Validates an optional offer window for `field`: unset (the default), or whole seconds from 1
/// minute to 1 hour.
fn offer_window(field: &str, window: Option<&prost_types::Duration>, violations: &mut Violations) -> i32 {
    let Some(window) = window else { return DEFAULT_OFFER_WINDOW_SECONDS };
    match i32::try_from(window.seconds) {
        Ok(seconds) if window.nanos == 0 && OFFER_WINDOW_SECONDS.contains(&seconds) => seconds,
        _ => {
            violations.add(field, "must be whole seconds from 1 minute to 1 hour when set");
            DEFAULT_OFFER_WINDOW_SECONDS
        }
    }
}

fn total_units(field: &str, units: i32, violations: &mut Violations) -> Option<i32> {
    if (1..=MAX_TOTAL_UNITS).contains(&units) {
        Some(units)
    } else {
        violations.add(field, format!("must be between 1 and {MAX_TOTAL_UNITS}"));
        None
    }
}

fn required_time(
    field: &str,
    timestamp: Option<&prost_types::Timestamp>,
    violations: &mut Violations,
) -> Option<DateTime<Utc>> {
    match timestamp {
        Some(timestamp) => time::parse(field, timestamp, violations),
        None => {
            violations.add(field, "is required");
            None
        }
    }
}

fn start_time(
    field: &str,
    timestamp: &prost_types::Timestamp,
    now: DateTime<Utc>,
    violations: &mut Violations,
) -> Option<DateTime<Utc>> {
    time::parse(field, timestamp, violations).filter(|start| not_in_the_past(field, *start, now, violations))
}

fn not_in_the_past(field: &str, start: DateTime<Utc>, now: DateTime<Utc>, violations: &mut Violations) -> bool {
    let ok = start >= now - START_TIME_TOLERANCE;
    if !ok {
        violations.add(field, "must not be in the past");
    }
    ok
}

/// The deal unit tests start from: 50 phones at ₹600 (₹1,000 before), live from `start` for two
/// hours with every unit left. Tests change what they are about with struct update syntax.
#[cfg(test)]
pub(crate) fn sample_deal(start: DateTime<Utc>) -> Deal {
    Deal {
        id: Uuid::new_v4(),
        terms: DealTerms {
            product_name: "Phone".into(),
            actual_price: Price::from_stored("INR".into(), 1_000_000_000),
            final_price: Price::from_stored("INR".into(), 600_000_000),
            total_units: 50,
            start_time: start,
            expire_time: start + TimeDelta::hours(2),
            max_units_per_customer: None,
            approval_window_seconds: None,
            offer_window_seconds: DEFAULT_OFFER_WINDOW_SECONDS,
        },
        available_units: 50,
        state: DealState::Active,
        create_time: start,
        update_time: start,
    }
}

mod product_name;
use product_name::product_name;
pub use product_name::{DEFAULT_IGNORABLE, is_visible};

#[cfg(test)]
mod tests;
