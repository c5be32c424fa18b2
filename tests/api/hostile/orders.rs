//! Hostile CreateOrder, GetOrder, ListOrders, ApproveOrder, RejectOrder and CancelOrder requests.

use super::{Expect::*, *};

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn hostile_order_requests_are_refused_and_write_nothing(pool: PgPool) {
    let (scene, fixtures) = Scene::new(pool).await;
    let call = &scene.call;
    let Fixtures {
        live,
        live_id,
        alice_request_id,
        alice_order,
        scheduled,
        expired,
        unknown_deal,
        unknown_order,
        cursor,
        huge,
        ..
    } = fixtures;
    let order = |deal: &str, quantity| Some(order_request(deal, quantity));
    let priced = |price: Money| Some(orderpb::Order { unit_price: Some(price), ..order_request(&live.name, 1) });
    let list_orders_token = |token: String| orderpb::ListOrdersRequest { page_token: token, ..Default::default() };
    let cases = vec![
        // CreateOrder.
        case("order unset", call.create_order(None, ""), Invalid(&["order"])),
        case("order unset and a bad request id", call.create_order(None, "retry-1"), Invalid(&["request_id", "order"])),
        case("request id not a UUID", call.create_order(order(&live.name, 1), "retry-1"), Invalid(&["request_id"])),
        case(
            "request id a resource name",
            call.create_order(order(&live.name, 1), format!("orders/{}", Uuid::new_v4())),
            Invalid(&["request_id"]),
        ),
        case(
            "order of deals/not-a-uuid",
            call.create_order(order("deals/not-a-uuid", 1), ""),
            Invalid(&["order.deal"]),
        ),
        case(
            "order of deal/uuid",
            call.create_order(order(&format!("deal/{live_id}"), 1), ""),
            Invalid(&["order.deal"]),
        ),
        case(
            "order of orders/uuid where a deal is expected",
            call.create_order(order(&format!("orders/{live_id}"), 1), ""),
            Invalid(&["order.deal"]),
        ),
        case("order of a bare uuid", call.create_order(order(&live_id.to_string(), 1), ""), Invalid(&["order.deal"])),
        case("order of no deal", call.create_order(order("", 1), ""), Invalid(&["order.deal"])),
        case("order of zero units", call.create_order(order(&live.name, 0), ""), Invalid(&["order.quantity"])),
        case("order of -1 units", call.create_order(order(&live.name, -1), ""), Invalid(&["order.quantity"])),
        case("order of 101 units", call.create_order(order(&live.name, 101), ""), Invalid(&["order.quantity"])),
        // With at most 100 units of at most 1e9 + 0.999999 each, a total is below 1.0000001e17 micros,
        // far from i64::MAX (9.2e18): a quantity that could overflow is refused before any
        // multiplication (the accepted maximum is in `hostile_inputs_that_are_accepted`).
        case(
            "order of i32::MAX units (price × quantity would overflow)",
            call.create_order(order(&live.name, i32::MAX), ""),
            Invalid(&["order.quantity"]),
        ),
        case(
            "order of i32::MIN units",
            call.create_order(order(&live.name, i32::MIN), ""),
            Invalid(&["order.quantity"]),
        ),
        case("order at a zero price", call.create_order(priced(inr(0)), ""), Invalid(&["order.unit_price"])),
        case("order at i64::MAX", call.create_order(priced(inr(i64::MAX)), ""), Invalid(&["order.unit_price.units"])),
        case(
            "order at a sub-micro price",
            call.create_order(priced(money("INR", 600, 1)), ""),
            Invalid(&["order.unit_price.nanos"]),
        ),
        case(
            "order in a 4-letter currency",
            call.create_order(priced(money("INRR", 600, 0)), ""),
            Invalid(&["order.unit_price.currency_code"]),
        ),
        case(
            "order with everything wrong",
            call.create_order(
                Some(orderpb::Order {
                    deal: "deals/1".into(),
                    quantity: 0,
                    unit_price: Some(money("inr", -1, -1)),
                    ..Default::default()
                }),
                "x",
            ),
            Invalid(&[
                "request_id",
                "order.deal",
                "order.quantity",
                "order.unit_price.currency_code",
                "order.unit_price.nanos",
                "order.unit_price.units",
            ]),
        ),
        case(
            "order of an unknown deal",
            call.create_order(order(&unknown_deal, 1), ""),
            Refused(Code::NotFound, "DEAL_NOT_FOUND"),
        ),
        case(
            "order of an expired deal",
            call.create_order(order(&expired, 1), ""),
            Refused(Code::FailedPrecondition, "DEAL_EXPIRED"),
        ),
        case(
            "order of a scheduled deal",
            call.create_order(order(&scheduled, 1), ""),
            Refused(Code::FailedPrecondition, "DEAL_NOT_STARTED"),
        ),
        case(
            "order at another price",
            call.create_order(priced(inr(599)), ""),
            Refused(Code::FailedPrecondition, "PRICE_CHANGED"),
        ),
        case(
            "order of more units than left",
            call.create_order(order(&live.name, 7), ""),
            Refused(Code::FailedPrecondition, "INSUFFICIENT_UNITS"),
        ),
        case(
            "order reusing a request id for another quantity",
            call.create_order(order(&live.name, 1), alice_request_id.to_string()),
            Refused(Code::AlreadyExists, "REQUEST_ID_REUSED"),
        ),
        case(
            "order by a token with an empty subject",
            call.create_order_as("", order_request(&live.name, 1)),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
        case(
            "order by a token with a 129-character subject",
            call.create_order_as(&"s".repeat(129), order_request(&live.name, 1)),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
        case(
            "order by a token whose subject holds NUL",
            call.create_order_as(CONTROL_SUBJECT, order_request(&live.name, 1)),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
        case(
            "order by an admin",
            call.create_order_as_admin(order_request(&live.name, 1)),
            Refused(Code::PermissionDenied, "PERMISSION_DENIED"),
        ),
        case(
            "order with a 100 KB customer_id",
            call.create_order(Some(orderpb::Order { customer_id: huge.clone(), ..order_request(&live.name, 1) }), ""),
            CodeOnly(Code::OutOfRange),
        ),
        // GetOrder, ApproveOrder, RejectOrder, CancelOrder.
        case("GetOrder orders/not-a-uuid", call.get_order(&call.alice, "orders/not-a-uuid"), Invalid(&["name"])),
        case(
            "GetOrder of a deal's name",
            call.get_order(&call.alice, format!("deals/{}", uuid(&alice_order.name))),
            Invalid(&["name"]),
        ),
        case(
            "GetOrder bare uuid",
            call.get_order(&call.alice, uuid(&alice_order.name).to_string()),
            Invalid(&["name"]),
        ),
        case("GetOrder empty", call.get_order(&call.alice, ""), Invalid(&["name"])),
        case(
            "GetOrder unknown",
            call.get_order(&call.alice, &unknown_order),
            Refused(Code::NotFound, "ORDER_NOT_FOUND"),
        ),
        case(
            "GetOrder of alice's order by bob",
            call.get_order(&call.bob, &alice_order.name),
            Refused(Code::NotFound, "ORDER_NOT_FOUND"),
        ),
        case("ApproveOrder malformed", call.approve("orders/1"), Invalid(&["name"])),
        case("ApproveOrder unknown", call.approve(&unknown_order), Refused(Code::NotFound, "ORDER_NOT_FOUND")),
        case("RejectOrder of a deal's name", call.reject(&live.name), Invalid(&["name"])),
        case("RejectOrder unknown", call.reject(&unknown_order), Refused(Code::NotFound, "ORDER_NOT_FOUND")),
        case(
            "CancelOrder unknown",
            call.cancel_as(&call.alice, &unknown_order),
            Refused(Code::NotFound, "ORDER_NOT_FOUND"),
        ),
        case(
            "CancelOrder of alice's order by bob",
            call.cancel_as(&call.bob, &alice_order.name),
            Refused(Code::NotFound, "ORDER_NOT_FOUND"),
        ),
        case(
            "CancelOrder of alice's order by a subject holding NUL",
            call.cancel_as(
                &orders_with(&scene.app.order_channel, Bearer::of(&token(Role::Customer, CONTROL_SUBJECT))),
                &alice_order.name,
            ),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
        case(
            "GetOrder of alice's order by a subject holding NUL",
            call.get_order(
                &orders_with(&scene.app.order_channel, Bearer::of(&token(Role::Customer, CONTROL_SUBJECT))),
                &alice_order.name,
            ),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
        // ListOrders.
        case(
            "ListOrders state 42",
            call.list_orders(&call.alice, orderpb::ListOrdersRequest { state: 42, ..Default::default() }),
            Invalid(&["state"]),
        ),
        case(
            "ListOrders state -1",
            call.list_orders(&call.admin_orders, orderpb::ListOrdersRequest { state: -1, ..Default::default() }),
            Invalid(&["state"]),
        ),
        case(
            "ListOrders page_size -1",
            call.list_orders(&call.alice, orderpb::ListOrdersRequest { page_size: -1, ..Default::default() }),
            Invalid(&["page_size"]),
        ),
        case(
            "ListOrders with everything wrong",
            call.list_orders(
                &call.admin_orders,
                orderpb::ListOrdersRequest {
                    page_size: i32::MIN,
                    page_token: "0".into(),
                    customer_id: "a\nb".into(),
                    state: i32::MAX,
                },
            ),
            Invalid(&["page_size", "customer_id", "state", "page_token"]),
        ),
        case(
            "ListOrders customer_id of 129 characters",
            call.list_orders(
                &call.admin_orders,
                orderpb::ListOrdersRequest { customer_id: "c".repeat(129), ..Default::default() },
            ),
            Invalid(&["customer_id"]),
        ),
        case(
            "ListOrders random hex token",
            call.list_orders(&call.alice, list_orders_token("0123456789abcdef".repeat(4))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListOrders token of another customer",
            call.list_orders(&call.alice, list_orders_token(cursor.to_token("any|bob"))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListOrders token of another state",
            call.list_orders(
                &call.alice,
                orderpb::ListOrdersRequest {
                    page_token: cursor.to_token("any|alice"),
                    state: OrderState::Approved.into(),
                    ..Default::default()
                },
            ),
            Invalid(&["page_token"]),
        ),
        case(
            "ListOrders token with a timestamp after 9999",
            call.list_orders(
                &call.alice,
                list_orders_token(hex_token(&format!("v1|253402300800000000|{}|any|alice", Uuid::new_v4()))),
            ),
            Invalid(&["page_token"]),
        ),
        case(
            "ListOrders as a subject holding NUL",
            call.list_orders_as(CONTROL_SUBJECT, orderpb::ListOrdersRequest::default()),
            Refused(Code::Unauthenticated, "UNAUTHENTICATED"),
        ),
    ];
    scene.refuse_all(cases, 54).await;
}
