//! Who may call what: every RPC against every kind of caller, each with the code it must get.
//! Health and reflection stay open to anonymous callers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::PgPool;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest,
};
use topkart::{
    proto::{deal as dealpb, holds as holdspb, order as orderpb},
    shared::auth::{Claims, Role, Signer},
};

use crate::helpers::*;

/// The callers of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    CustomerA,
    CustomerB,
    Admin,
    Service,
    Expired,
    ForeignKey,
    AlgNone,
}

const EVERYONE: [Who; 8] = [
    Who::Anonymous,
    Who::CustomerA,
    Who::CustomerB,
    Who::Admin,
    Who::Service,
    Who::Expired,
    Who::ForeignKey,
    Who::AlgNone,
];

/// An admin token with `alg: none` and no signature.
const ALG_NONE_TOKEN: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
    eyJzdWIiOiJhZG1pbiIsInJvbGUiOiJhZG1pbiIsImV4cCI6NDEwMjQ0NDgwMCwiaWF0IjowfQ.";

fn bearer(who: Who) -> Bearer {
    match who {
        Who::Anonymous => Bearer::anonymous(),
        Who::CustomerA => Bearer::of(&token(Role::Customer, "alice")),
        Who::CustomerB => Bearer::of(&token(Role::Customer, "bob")),
        Who::Admin => Bearer::of(&token(Role::Admin, "admin")),
        Who::Service => Bearer::of(&token(Role::Service, "order-service")),
        Who::Expired => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let claims = Claims {
                sub: "alice".into(),
                role: Role::Admin,
                iat: now - 7200,
                exp: now - 3600,
                nbf: None,
                iss: None,
                aud: None,
            };
            let key = jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes());
            Bearer::of(&jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap())
        }
        Who::ForeignKey => Bearer::of(
            &Signer::hs256(b"somebody-elses-secret").token("admin", Role::Admin, Duration::from_secs(3600)).unwrap(),
        ),
        Who::AlgNone => Bearer::of(ALG_NONE_TOKEN),
    }
}

/// The code `who` must get from `rpc` (on customer A's order, where the RPC takes one).
fn expected(rpc: &str, who: Who) -> Code {
    use Who::*;
    if matches!(who, Anonymous | Expired | ForeignKey | AlgNone) {
        return Code::Unauthenticated;
    }
    let allowed: &[Who] = match rpc {
        "CreateDeal" | "UpdateDeal" | "ListDeals(state)" | "ApproveOrder" | "RejectOrder" => &[Admin],
        "GetDeal" | "WatchDeal" | "ListDeals" | "ListOrders" | "ListWaitlistEntries" => &[CustomerA, CustomerB, Admin],
        "ReserveUnits" | "ConfirmUnits" | "ReleaseUnits" | "BatchReserveUnits" | "BatchConfirmUnits" => &[Service],
        "CreateOrder" | "JoinWaitlist" => &[CustomerA, CustomerB],
        "GetOrder" | "GetWaitlistEntry" => &[CustomerA, Admin],
        "CancelOrder" | "LeaveWaitlist" => &[CustomerA],
        _ => panic!("unknown rpc {rpc}"),
    };
    if allowed.contains(&who) {
        Code::Ok
    } else if who == CustomerB && matches!(rpc, "GetOrder" | "CancelOrder" | "GetWaitlistEntry" | "LeaveWaitlist") {
        // Another customer's order or waitlist entry does not exist, as far as B can tell.
        Code::NotFound
    } else {
        Code::PermissionDenied
    }
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// Calls `rpc` as `who`, on fresh fixtures where the call changes them.
async fn call(app: &TestApp, deal: &dealpb::Deal, rpc: &str, who: Who) -> Code {
    let mut deals = deals_with(&app.deal_channel, bearer(who));
    let mut holds = holds_with(&app.deal_channel, bearer(who));
    let mut orders = orders_with(&app.order_channel, bearer(who));
    let alices_order = || async { app.order(order_request(&deal.name, 1)).await.unwrap().name };
    let reservation = || async {
        let id = uuid::Uuid::new_v4().to_string();
        let request = holdspb::ReserveUnitsRequest {
            deal: deal.name.clone(),
            reservation_id: id.clone(),
            quantity: 1,
            ..Default::default()
        };
        app.reservations.clone().reserve_units(request).await.unwrap();
        id
    };
    // A deal alice bought out, so it has a waitlist; and alice's entry in it.
    let sold_out = || async {
        let deal = app.create_deal(1).await;
        app.order(order_request(&deal.name, 1)).await.unwrap();
        deal.name
    };
    let alices_entry = || async {
        let alice = deals_with(&app.deal_channel, bearer(Who::CustomerA));
        let request = dealpb::JoinWaitlistRequest { deal: sold_out().await, quantity: 1, request_id: String::new() };
        alice.clone().join_waitlist(request).await.unwrap().into_inner().name
    };
    match rpc {
        "JoinWaitlist" => {
            let request =
                dealpb::JoinWaitlistRequest { deal: sold_out().await, quantity: 1, request_id: String::new() };
            code(deals.join_waitlist(request).await)
        }
        "GetWaitlistEntry" => {
            code(deals.get_waitlist_entry(dealpb::GetWaitlistEntryRequest { name: alices_entry().await }).await)
        }
        "LeaveWaitlist" => {
            code(deals.leave_waitlist(dealpb::LeaveWaitlistRequest { name: alices_entry().await }).await)
        }
        "ListWaitlistEntries" => {
            let request = dealpb::ListWaitlistEntriesRequest { parent: deal.name.clone(), ..Default::default() };
            code(deals.list_waitlist_entries(request).await)
        }
        "CreateDeal" => code(deals.create_deal(dealpb::CreateDealRequest { deal: Some(deal_request(5)) }).await),
        "UpdateDeal" => {
            let patch = dealpb::Deal { name: deal.name.clone(), product_name: "Renamed".into(), ..Default::default() };
            let mask = prost_types::FieldMask { paths: vec!["product_name".into()] };
            code(deals.update_deal(dealpb::UpdateDealRequest { deal: Some(patch), update_mask: Some(mask) }).await)
        }
        "GetDeal" => code(deals.get_deal(dealpb::GetDealRequest { name: deal.name.clone() }).await),
        "WatchDeal" => code(deals.watch_deal(dealpb::WatchDealRequest { name: deal.name.clone() }).await),
        "ListDeals" => code(deals.list_deals(dealpb::ListDealsRequest::default()).await),
        "ListDeals(state)" => {
            let request = dealpb::ListDealsRequest { state: dealpb::deal::State::Expired.into(), ..Default::default() };
            code(deals.list_deals(request).await)
        }
        "ReserveUnits" => {
            let request = holdspb::ReserveUnitsRequest {
                deal: deal.name.clone(),
                reservation_id: uuid::Uuid::new_v4().to_string(),
                quantity: 1,
                ..Default::default()
            };
            code(holds.reserve_units(request).await)
        }
        "ConfirmUnits" => {
            code(holds.confirm_units(holdspb::ConfirmUnitsRequest { reservation_id: reservation().await }).await)
        }
        "BatchReserveUnits" => {
            let request = holdspb::ReserveUnitsRequest {
                deal: deal.name.clone(),
                reservation_id: uuid::Uuid::new_v4().to_string(),
                quantity: 1,
                ..Default::default()
            };
            code(holds.batch_reserve_units(holdspb::BatchReserveUnitsRequest { requests: vec![request] }).await)
        }
        "BatchConfirmUnits" => {
            let request = holdspb::ConfirmUnitsRequest { reservation_id: reservation().await };
            code(holds.batch_confirm_units(holdspb::BatchConfirmUnitsRequest { requests: vec![request] }).await)
        }
        "ReleaseUnits" => {
            code(holds.release_units(holdspb::ReleaseUnitsRequest { reservation_id: reservation().await }).await)
        }
        "CreateOrder" => code(
            orders
                .create_order(orderpb::CreateOrderRequest {
                    waitlist_entry: String::new(),
                    order: Some(order_request(&deal.name, 1)),
                    request_id: String::new(),
                })
                .await,
        ),
        "GetOrder" => code(orders.get_order(orderpb::GetOrderRequest { name: alices_order().await }).await),
        "ListOrders" => code(orders.list_orders(orderpb::ListOrdersRequest::default()).await),
        "ApproveOrder" => code(orders.approve_order(orderpb::ApproveOrderRequest { name: alices_order().await }).await),
        "RejectOrder" => code(orders.reject_order(orderpb::RejectOrderRequest { name: alices_order().await }).await),
        "CancelOrder" => code(orders.cancel_order(orderpb::CancelOrderRequest { name: alices_order().await }).await),
        _ => panic!("unknown rpc {rpc}"),
    }
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn every_rpc_answers_every_caller_with_the_code_it_must(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(1000).await;
    let rpcs = [
        "CreateDeal",
        "UpdateDeal",
        "GetDeal",
        "WatchDeal",
        "ListDeals",
        "ListDeals(state)",
        "ReserveUnits",
        "ConfirmUnits",
        "ReleaseUnits",
        "BatchReserveUnits",
        "BatchConfirmUnits",
        "CreateOrder",
        "GetOrder",
        "ListOrders",
        "ApproveOrder",
        "RejectOrder",
        "CancelOrder",
        "JoinWaitlist",
        "GetWaitlistEntry",
        "LeaveWaitlist",
        "ListWaitlistEntries",
    ];
    let mut wrong = Vec::new();
    for rpc in rpcs {
        for who in EVERYONE {
            let got = call(&app, &deal, rpc, who).await;
            if got != expected(rpc, who) {
                wrong.push(format!("{rpc} as {who:?}: got {got:?}, expected {:?}", expected(rpc, who)));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn customers_see_only_their_own_orders_and_buy_as_themselves(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(10).await;
    let mallory_in_payload = orderpb::Order { customer_id: "mallory".into(), ..order_request(&deal.name, 1) };
    let alices = app.order(mallory_in_payload).await.unwrap();
    assert_eq!(alices.customer_id, "alice");

    let list = |mut orders: Orders, customer_id: &str| {
        let request = orderpb::ListOrdersRequest { customer_id: customer_id.into(), ..Default::default() };
        async move { orders.list_orders(request).await.unwrap().into_inner().orders }
    };
    assert_eq!(list(app.orders.clone(), "").await, std::slice::from_ref(&alices));
    assert!(list(app.orders_as("bob"), "").await.is_empty());
    assert!(list(app.orders_as("bob"), "alice").await.is_empty(), "a customer's filter cannot reach another's orders");
    assert_eq!(list(app.admin_orders.clone(), "alice").await, [alices]);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn health_and_reflection_answer_anonymous_callers(pool: PgPool) {
    let app = spawn_app(pool).await;
    // Health answers without a token (and turns SERVING once the database answers).
    crate::processes::wait_serving(app.deal_addr).await;
    let health = HealthClient::new(app.deal_channel.clone()).check(HealthCheckRequest { service: String::new() }).await;
    assert_eq!(health.unwrap().into_inner().status(), ServingStatus::Serving);

    let mut reflection = ServerReflectionClient::new(app.order_channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let reply = replies.message().await.unwrap().expect("a reply");
    assert!(format!("{reply:?}").contains("topkart.order.v1.OrderService"), "{reply:?}");
}

/// Reflection describes the public contracts only: the internal HoldService, which deal-service
/// serves to order-service, is neither listed nor described, while DealService is.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn reflection_describes_the_public_contracts_and_not_the_internal_service(pool: PgPool) {
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let app = spawn_app(pool).await;
    let ask = |message_request| {
        let mut reflection = ServerReflectionClient::new(app.deal_channel.clone());
        let request = ServerReflectionRequest { host: String::new(), message_request: Some(message_request) };
        async move {
            let mut replies = reflection.server_reflection_info(tokio_stream::iter([request])).await?.into_inner();
            let reply = replies.message().await?.expect("a reply");
            Ok::<_, tonic::Status>(reply.message_response.expect("an answer"))
        }
    };
    let Ok(MessageResponse::ListServicesResponse(listed)) = ask(MessageRequest::ListServices(String::new())).await
    else {
        panic!("no list of services");
    };
    let names: Vec<&str> = listed.service.iter().map(|service| service.name.as_str()).collect();
    assert!(names.contains(&"topkart.deal.v1.DealService"), "{names:?}");
    assert!(!names.iter().any(|name| name.contains("internal")), "{names:?}");
    let public = ask(MessageRequest::FileContainingSymbol("topkart.deal.v1.DealService".into())).await;
    assert!(matches!(public, Ok(MessageResponse::FileDescriptorResponse(_))), "{public:?}");
    for hidden in [
        MessageRequest::FileContainingSymbol("topkart.deal.internal.v1.HoldService".into()),
        MessageRequest::FileByFilename("topkart/deal/internal/v1/holds.proto".into()),
    ] {
        match ask(hidden).await {
            Err(status) => assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}"),
            Ok(MessageResponse::ErrorResponse(error)) => assert_eq!(error.error_code, tonic::Code::NotFound as i32),
            Ok(described) => panic!("described: {described:?}"),
        }
    }
}
