//! What order-service tells admission about the deals it is asked to order
//! (`shared::layers::admission::stock`): CreateOrder is the stock-aware method, its request names
//! the deal, and deal-service's refusals say when a deal is sold out or has ended.

use prost::Message as _;
use tonic::Status;
use tonic_types::StatusExt as _;

use crate::{
    proto::order::CreateOrderRequest,
    shared::{
        layers::admission::{
            out_of_stock,
            stock::{Ordered, Out, StockAware, StockBoard},
        },
        names,
    },
};

use crate::order::{DOMAIN, domain::NewOrder};

/// Admission's view of CreateOrder over `board`.
pub fn aware(board: StockBoard) -> StockAware {
    StockAware { board, method: CREATE_ORDER, deal_of, domain: DOMAIN }
}

/// CreateOrder's path (a test checks it against the generated service name).
const CREATE_ORDER: &str = "/topkart.order.v1.OrderService/CreateOrder";

/// What an encoded CreateOrderRequest orders from a deal's available units: none for a claim of a
/// waitlist offer (its units are the offer's), or a request that does not decode. One with a
/// `request_id` may be the retry of an order placed before.
fn deal_of(message: &[u8]) -> Option<Ordered> {
    let request = CreateOrderRequest::decode(message).ok()?;
    if !request.waitlist_entry.is_empty() {
        return None;
    }
    let mut violations = crate::shared::status::Violations::default();
    let deal = names::parse("order.deal", names::DEALS, &request.order?.deal, &mut violations)?;
    Some(Ordered { deal, retriable: !request.request_id.is_empty() })
}

/// Learns from deal-service's refusal of `new` whether its deal is sold out or has ended, and
/// marks `board`; a deal with no unit left is answered SOLD_OUT (the board answers the next orders
/// so). Claims of waitlist offers teach nothing: their units are the offer's.
pub fn learn(board: &StockBoard, new: &NewOrder, refusal: Status) -> Status {
    if new.waitlist_entry.is_some() {
        return refusal;
    }
    let Some(info) = refusal.get_error_details().error_info().cloned() else { return refusal };
    match info.reason.as_str() {
        "INSUFFICIENT_UNITS" if info.metadata.get("available_units").map(String::as_str) == Some("0") => {
            board.mark(new.deal_id, Out::SoldOut);
            out_of_stock(new.deal_id, Out::SoldOut, DOMAIN)
        }
        "DEAL_EXPIRED" => {
            board.mark(new.deal_id, Out::Ended);
            refusal
        }
        _ => refusal,
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::proto::order::{Order, order_service_server::SERVICE_NAME};

    #[test]
    fn the_stock_aware_method_is_create_order() {
        assert_eq!(CREATE_ORDER, format!("/{SERVICE_NAME}/CreateOrder"));
    }

    #[test]
    fn an_order_names_its_deal_and_whether_it_may_be_a_retry_and_a_claim_names_none() {
        let deal = Uuid::new_v4();
        let order = |request_id: &str, entry: &str| CreateOrderRequest {
            order: Some(Order { deal: format!("deals/{deal}"), quantity: 1, ..Default::default() }),
            request_id: request_id.into(),
            waitlist_entry: entry.into(),
        };
        assert_eq!(deal_of(&order("", "").encode_to_vec()), Some(Ordered { deal, retriable: false }));
        let claim = order("", &format!("deals/{deal}/waitlistEntries/{}", Uuid::new_v4()));
        assert_eq!(deal_of(&claim.encode_to_vec()), None, "a claim takes no available unit");
        let retriable = order(&Uuid::new_v4().to_string(), "");
        assert_eq!(deal_of(&retriable.encode_to_vec()), Some(Ordered { deal, retriable: true }));
        assert_eq!(deal_of(b"\xff\xff"), None);
    }
}
