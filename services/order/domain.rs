//! The rules of an order: what a valid order request is and which state changes are allowed.
//! No I/O here.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    proto::order as pb,
    shared::{customers::customer_id, money::Price, names, quantity::quantity, status::Violations},
};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderState {
    /// Units reserved, waiting for an admin.
    PendingApproval,
    /// Approved. Final.
    Approved,
    /// Rejected by an admin, units given back. Final.
    Rejected,
    /// Cancelled by the customer, units given back. Final.
    Cancelled,
    /// Not approved by its deadline, units given back. Final.
    Expired,
}

impl OrderState {
    /// The name the database uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingApproval => "pending_approval",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// Reads the name the database uses.
    pub fn from_db(name: &str) -> Option<Self> {
        [Self::PendingApproval, Self::Approved, Self::Rejected, Self::Cancelled, Self::Expired]
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

/// What an admin or the customer decides about a pending order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
    Cancel,
}

impl Decision {
    /// The state the order moves to.
    pub fn outcome(self) -> OrderState {
        match self {
            Self::Approve => OrderState::Approved,
            Self::Reject => OrderState::Rejected,
            Self::Cancel => OrderState::Cancelled,
        }
    }

    /// Whether the order's units go back to the deal.
    pub fn releases_units(self) -> bool {
        matches!(self, Self::Reject | Self::Cancel)
    }

    /// Checks that an order in `current` may take this decision.
    pub fn check(self, current: OrderState) -> Result<(), NotPending> {
        if current == OrderState::PendingApproval { Ok(()) } else { Err(NotPending(current)) }
    }
}

/// Why a decision was refused: the order has left PENDING_APPROVAL and is in this state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPending(pub OrderState);

/// A valid `CreateOrder` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub deal_id: Uuid,
    pub customer_id: String,
    pub quantity: i32,
    /// The unit price the customer was shown, if the request said.
    pub shown_unit_price: Option<Price>,
    /// The client's idempotency key, which becomes the order's id.
    pub request_id: Option<Uuid>,
    /// The waitlist entry (of the deal) whose offer the order claims.
    pub waitlist_entry: Option<Uuid>,
}

impl NewOrder {
    /// Whether `existing`, found under this request's id, is the order this request placed: a retry
    /// then gets it back.
    pub fn placed(&self, existing: &Order) -> bool {
        existing.deal_id == self.deal_id
            && existing.customer_id == self.customer_id
            && existing.quantity == self.quantity
            && self.shown_unit_price.as_ref().is_none_or(|shown| *shown == existing.unit_price)
    }
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: Uuid,
    pub deal_id: Uuid,
    pub customer_id: String,
    pub quantity: i32,
    pub unit_price: Price,
    pub total_price: Price,
    pub state: OrderState,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// When it expires unless approved; `None` when its deal has no approval window.
    pub approve_deadline: Option<DateTime<Utc>>,
}

/// Validates a `CreateOrder` request placed by `buyer` (the token's subject), or, without
/// authentication, by the request's `customer_id`.
pub fn new_order(request: &pb::CreateOrderRequest, buyer: Option<&str>) -> Result<NewOrder, Violations> {
    let mut violations = Violations::default();
    let request_id = (!request.request_id.is_empty())
        .then(|| names::parse_uuid("request_id", &request.request_id, &mut violations))
        .flatten();
    let Some(order) = request.order.as_ref() else {
        violations.add("order", "is required");
        return Err(violations);
    };
    let deal_id = names::parse("order.deal", names::DEALS, &order.deal, &mut violations);
    let customer_id = match buyer {
        Some(buyer) => customer_id("authorization (the token's subject)", buyer, &mut violations),
        None => customer_id("order.customer_id", &order.customer_id, &mut violations),
    };
    let quantity = quantity("order.quantity", order.quantity, &mut violations);
    let shown_unit_price =
        order.unit_price.as_ref().and_then(|price| Price::parse("order.unit_price", Some(price), &mut violations));
    let waitlist_entry = (!request.waitlist_entry.is_empty())
        .then(|| names::parse_waitlist_entry("waitlist_entry", &request.waitlist_entry, &mut violations))
        .flatten()
        .map(|(entry_deal, entry)| {
            if deal_id.is_some_and(|deal_id| deal_id != entry_deal) {
                violations.add("waitlist_entry", "must be an entry of the waitlist of `order.deal`");
            }
            entry
        });
    match (deal_id, customer_id, quantity) {
        (Some(deal_id), Some(customer_id), Some(quantity)) if violations.is_empty() => {
            Ok(NewOrder { deal_id, customer_id, quantity, shown_unit_price, request_id, waitlist_entry })
        }
        _ => Err(violations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Money;

    fn request() -> pb::Order {
        pb::Order {
            deal: names::format(names::DEALS, Uuid::new_v4()),
            customer_id: "alice".into(),
            quantity: 2,
            ..Default::default()
        }
    }

    fn new_order_of(request: &pb::CreateOrderRequest) -> Result<NewOrder, Violations> {
        new_order(request, None)
    }

    #[test]
    fn the_buyer_is_the_token_subject_not_the_payload() {
        let request = create(Some(pb::Order { customer_id: "mallory".into(), ..request() }));
        assert_eq!(new_order(&request, Some("alice")).unwrap().customer_id, "alice");
    }

    fn create(order: Option<pb::Order>) -> pb::CreateOrderRequest {
        pb::CreateOrderRequest { order, request_id: String::new(), waitlist_entry: String::new() }
    }

    fn invalid_fields(result: Result<NewOrder, Violations>) -> Vec<String> {
        match result {
            Err(violations) => violations.fields().map(str::to_owned).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_order_may_carry_the_price_shown() {
        let shown = Money { currency_code: "INR".into(), units: 599, nanos: 0 };
        let order = new_order_of(&create(Some(pb::Order { unit_price: Some(shown), ..request() }))).unwrap();
        assert_eq!(order.shown_unit_price.unwrap().micros(), 599_000_000);
        assert_eq!(new_order_of(&create(Some(request()))).unwrap().shown_unit_price, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = pb::Order {
            deal: "orders/1".into(),
            customer_id: String::new(),
            quantity: 0,
            unit_price: Some(Money { currency_code: "INR".into(), units: -1, nanos: 0 }),
            ..Default::default()
        };
        assert_eq!(
            invalid_fields(new_order_of(&create(Some(bad)))),
            ["order.deal", "order.customer_id", "order.quantity", "order.unit_price.units"]
        );
        assert_eq!(invalid_fields(new_order_of(&create(None))), ["order"]);
        let too_many = pb::Order { quantity: 101, ..request() };
        assert_eq!(invalid_fields(new_order_of(&create(Some(too_many)))), ["order.quantity"]);
        let bad_key = pb::CreateOrderRequest { request_id: "retry-1".into(), ..create(Some(request())) };
        assert_eq!(invalid_fields(new_order_of(&bad_key)), ["request_id"]);
        let not_an_entry = pb::CreateOrderRequest { waitlist_entry: "deals/1".into(), ..create(Some(request())) };
        assert_eq!(invalid_fields(new_order_of(&not_an_entry)), ["waitlist_entry"]);
        let other_deal = names::format_waitlist_entry(Uuid::new_v4(), Uuid::new_v4());
        let of_another_deal = pb::CreateOrderRequest { waitlist_entry: other_deal, ..create(Some(request())) };
        assert_eq!(invalid_fields(new_order_of(&of_another_deal)), ["waitlist_entry"]);
    }

    #[test]
    fn a_claim_names_an_entry_of_the_order_s_deal() {
        let order = request();
        let deal = names::parse("deal", names::DEALS, &order.deal, &mut Violations::default()).unwrap();
        let entry = Uuid::new_v4();
        let claim =
            pb::CreateOrderRequest { waitlist_entry: names::format_waitlist_entry(deal, entry), ..create(Some(order)) };
        assert_eq!(new_order_of(&claim).unwrap().waitlist_entry, Some(entry));
        assert_eq!(new_order_of(&create(Some(request()))).unwrap().waitlist_entry, None);
    }

    #[test]
    fn a_retry_is_recognised_by_its_body() {
        let key = Uuid::new_v4();
        let request = pb::CreateOrderRequest { request_id: key.to_string(), ..create(Some(request())) };
        let new = new_order_of(&request).unwrap();
        assert_eq!(new.request_id, Some(key));
        let price = Price::from_stored("INR".into(), 600_000_000);
        let placed = Order {
            id: key,
            deal_id: new.deal_id,
            customer_id: "alice".into(),
            quantity: 2,
            total_price: price.times(2).unwrap(),
            unit_price: price,
            state: OrderState::PendingApproval,
            create_time: Utc::now(),
            update_time: Utc::now(),
            approve_deadline: None,
        };
        assert!(new.placed(&placed));
        assert!(!new.placed(&Order { quantity: 3, ..placed.clone() }));
        assert!(!new.placed(&Order { customer_id: "bob".into(), ..placed.clone() }));
        let shown_other = NewOrder { shown_unit_price: Some(Price::from_stored("INR".into(), 1)), ..new };
        assert!(!shown_other.placed(&placed));
    }

    #[test]
    fn only_a_pending_order_can_be_decided() {
        for decision in [Decision::Approve, Decision::Reject, Decision::Cancel] {
            assert!(decision.check(OrderState::PendingApproval).is_ok());
            for done in [OrderState::Approved, OrderState::Rejected, OrderState::Cancelled] {
                assert_eq!(decision.check(done), Err(NotPending(done)));
            }
        }
        assert!(!Decision::Approve.releases_units());
        assert!(Decision::Reject.releases_units() && Decision::Cancel.releases_units());
    }
}
