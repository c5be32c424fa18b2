//! Every conversion between order-service's protobuf messages and its domain types, in one place.

use crate::{
    proto::order as pb,
    shared::{names, time},
};

use super::domain::{Order, OrderState};

/// An order as the API shows it.
pub fn order_to_proto(order: &Order) -> pb::Order {
    pb::Order {
        name: names::format(names::ORDERS, order.id),
        deal: names::format(names::DEALS, order.deal_id),
        customer_id: order.customer_id.clone(),
        quantity: order.quantity,
        unit_price: Some(order.unit_price.to_proto()),
        total_price: Some(order.total_price.to_proto()),
        state: order_state_to_proto(order.state).into(),
        create_time: Some(time::to_proto(order.create_time)),
        update_time: Some(time::to_proto(order.update_time)),
        approve_deadline: order.approve_deadline.map(time::to_proto),
    }
}

/// The API's value of an order's state.
pub fn order_state_to_proto(state: OrderState) -> pb::order::State {
    match state {
        OrderState::PendingApproval => pb::order::State::PendingApproval,
        OrderState::Approved => pb::order::State::Approved,
        OrderState::Rejected => pb::order::State::Rejected,
        OrderState::Cancelled => pb::order::State::Cancelled,
        OrderState::Expired => pb::order::State::Expired,
    }
}

/// The state an API filter names; `None` for STATE_UNSPECIFIED.
pub fn order_state_from_proto(state: pb::order::State) -> Option<OrderState> {
    match state {
        pb::order::State::Unspecified => None,
        pb::order::State::PendingApproval => Some(OrderState::PendingApproval),
        pb::order::State::Approved => Some(OrderState::Approved),
        pb::order::State::Rejected => Some(OrderState::Rejected),
        pb::order::State::Cancelled => Some(OrderState::Cancelled),
        pb::order::State::Expired => Some(OrderState::Expired),
    }
}
