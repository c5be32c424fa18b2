//! gRPC-Web over HTTP/1.1, as browsers and `fetch` speak it: the generated clients through
//! tonic-web's client layer on an HTTP/1.1-only connection, raw requests where the test reads the
//! HTTP itself (versions, headers, trailers), and CORS preflights.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use prost::Message;
use sqlx::PgPool;
use tonic::{Code, service::interceptor::InterceptedService};
use tonic_web::{GrpcWebCall, GrpcWebClientService};
use topkart::{
    proto::{
        deal::{self as dealpb, deal_service_client::DealServiceClient},
        order::{self as orderpb, order_service_client::OrderServiceClient},
    },
    shared::{auth::Role, server::ServerSettings},
};

use crate::{helpers::*, processes::*};

/// The origin of the test's pages, allowed by the servers that allow one.
const PAGE_ORIGIN: &str = "http://board.topkart.test:8080";

/// An HTTP/1.1-only client carrying gRPC-Web.
type WebChannel = GrpcWebClientService<Client<HttpConnector, GrpcWebCall<tonic::body::Body>>>;

fn web_channel() -> WebChannel {
    GrpcWebClientService::new(Client::builder(TokioExecutor::new()).build_http())
}

fn web_deals(addr: SocketAddr, bearer: Bearer) -> DealServiceClient<InterceptedService<WebChannel, Bearer>> {
    DealServiceClient::with_origin(InterceptedService::new(web_channel(), bearer), origin(addr))
}

fn web_orders(addr: SocketAddr, bearer: Bearer) -> OrderServiceClient<InterceptedService<WebChannel, Bearer>> {
    OrderServiceClient::with_origin(InterceptedService::new(web_channel(), bearer), origin(addr))
}

fn origin(addr: SocketAddr) -> http::Uri {
    format!("http://{addr}").parse().unwrap()
}

/// One HTTP/1.1 request, read to its end: the head and the whole body.
async fn send(request: Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response: Response<_> = client.request(request).await.expect("an HTTP response");
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.expect("the whole body").to_bytes())
}

/// A gRPC-Web POST of `message` to `method` on `addr`, as a browser sends it.
fn web_request(addr: SocketAddr, method: &str, message: &impl Message, extra: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(encoded.len() as u32);
    frame.put_slice(&encoded);
    let mut request = Request::builder()
        .method(Method::POST)
        .version(Version::HTTP_11)
        .uri(format!("http://{addr}/{method}"))
        .header(header::CONTENT_TYPE, "application/grpc-web+proto")
        .header("x-grpc-web", "1");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.body(Full::new(frame.freeze())).unwrap()
}

/// The messages and the trailers of a gRPC-Web reply body.
fn web_frames(mut body: Bytes) -> (Vec<Bytes>, String) {
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    while body.has_remaining() {
        let flags = body.get_u8();
        let length = body.get_u32() as usize;
        let payload = body.split_to(length);
        if flags & 0x80 == 0 {
            messages.push(payload);
        } else {
            trailers.push_str(std::str::from_utf8(&payload).expect("trailers are text"));
        }
    }
    (messages, trailers)
}

/// The status of a gRPC-Web reply, from its headers (a trailers-only reply) or its trailer frame,
/// asserting the reply is gRPC-Web.
fn web_status(head: &http::response::Parts, body: Bytes) -> tonic::Status {
    let content_type = head.headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("application/grpc-web"), "{content_type}");
    let mut fields = head.headers.clone();
    for line in web_frames(body).1.split("\r\n").filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':').expect("a trailer is name:value");
        let name = header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap();
        fields.insert(name, value.trim().parse().unwrap());
    }
    tonic::Status::from_header_map(&fields).expect("a grpc-status")
}

/// Asserts a reply read by a generated client came as gRPC-Web, not as gRPC over HTTP/1.1.
fn assert_web<T>(reply: &tonic::Response<T>) {
    let content_type = reply.metadata().get("content-type").and_then(|value| value.to_str().ok());
    assert!(content_type.is_some_and(|value| value.starts_with("application/grpc-web")), "{content_type:?}");
}

fn preflight(addr: SocketAddr, from: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri(format!("http://{addr}/topkart.deal.v1.DealService/ListDeals"))
        .header(header::ORIGIN, from)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout,x-request-id",
        )
        .body(Full::default())
        .unwrap()
}

/// The comma-separated values of `name`, lowercased.
fn listed(headers: &HeaderMap, name: header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().unwrap().split(','))
        .map(|item| item.trim().to_ascii_lowercase())
        .collect()
}

fn with_page_origin() -> ServerSettings {
    ServerSettings { cors_allowed_origins: vec![http::HeaderValue::from_static(PAGE_ORIGIN)], ..test_settings() }
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_flow_runs_over_grpc_web_on_http1_with_the_generated_clients(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut deals = web_deals(app.deal_addr, Bearer::of(&token(Role::Admin, "admin")));
    let mut orders = web_orders(app.order_addr, Bearer::of(&token(Role::Customer, "alice")));

    let deal = deals.create_deal(dealpb::CreateDealRequest { deal: Some(deal_request(5)) }).await.unwrap().into_inner();
    let listed = deals.list_deals(dealpb::ListDealsRequest::default()).await.unwrap();
    assert_web(&listed);
    let listed = listed.into_inner();
    assert_eq!(listed.deals.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), [deal.name.as_str()]);
    let order = orders
        .create_order(orderpb::CreateOrderRequest { order: Some(order_request(&deal.name, 2)), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.state(), orderpb::order::State::PendingApproval);
    // What gRPC clients see is what gRPC-Web clients did.
    assert_eq!(app.get_deal(&deal.name).await.available_units, 3);
    assert_invariants(&app.pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_unary_call_over_grpc_web_answers_on_http1_with_its_status_in_the_body(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(5).await;
    let admin = format!("Bearer {}", token(Role::Admin, "admin"));
    let get = dealpb::GetDealRequest { name: deal.name.clone() };
    let (head, body) = send(web_request(
        app.deal_addr,
        "topkart.deal.v1.DealService/GetDeal",
        &get,
        &[("authorization", &admin), ("x-request-id", "web-call-1")],
    ))
    .await;

    assert_eq!((head.status, head.version), (StatusCode::OK, Version::HTTP_11));
    assert_eq!(head.headers[header::CONTENT_TYPE], "application/grpc-web+proto");
    // The request id layer saw the call.
    assert_eq!(head.headers["x-request-id"], "web-call-1");
    let (messages, trailers) = web_frames(body);
    assert_eq!(messages.len(), 1);
    assert_eq!(dealpb::Deal::decode(messages[0].clone()).unwrap().name, deal.name);
    assert!(trailers.to_ascii_lowercase().contains("grpc-status:0"), "{trailers}");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn watch_deal_streams_over_grpc_web_on_http1(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(5).await;
    let mut customer = web_deals(app.deal_addr, Bearer::of(&token(Role::Customer, "bob")));
    let stream = customer.watch_deal(dealpb::WatchDealRequest { name: deal.name.clone() }).await.unwrap();
    assert_web(&stream);
    let mut stream = stream.into_inner();

    let first = stream.message().await.unwrap().expect("the deal as it is");
    assert_eq!(first.available_units, 5);
    app.order(order_request(&deal.name, 2)).await.unwrap();
    let changed = stream.message().await.unwrap().expect("the deal after the order");
    assert_eq!(changed.available_units, 3);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn refusals_over_grpc_web_carry_their_error_details(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deal = app.create_deal(1).await;

    let mut orders = web_orders(app.order_addr, Bearer::of(&token(Role::Customer, "alice")));
    let too_many = orders
        .create_order(orderpb::CreateOrderRequest { order: Some(order_request(&deal.name, 2)), ..Default::default() })
        .await;
    let status = assert_refused(too_many, Code::FailedPrecondition, "INSUFFICIENT_UNITS");
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(details.error_info().unwrap().metadata["available_units"], "1");

    let mut deals = web_deals(app.deal_addr, Bearer::of(&token(Role::Customer, "alice")));
    let missing = deals.get_deal(dealpb::GetDealRequest { name: format!("deals/{}", uuid::Uuid::new_v4()) }).await;
    assert_refused(missing, Code::NotFound, "DEAL_NOT_FOUND");
    let invalid = deals.get_deal(dealpb::GetDealRequest { name: "deals/not-a-uuid".into() }).await;
    assert_invalid(invalid, &["name"]);
    // The caller layer checks gRPC-Web calls like any other.
    let mut anonymous = web_deals(app.deal_addr, Bearer::anonymous());
    let refused = anonymous.list_deals(dealpb::ListDealsRequest::default()).await;
    assert_refused(refused, Code::Unauthenticated, "UNAUTHENTICATED");

    // On the wire, as a browser reads it: the ErrorInfo is in `grpc-status-details-bin`.
    let customer = format!("Bearer {}", token(Role::Customer, "alice"));
    let missing = dealpb::GetDealRequest { name: format!("deals/{}", uuid::Uuid::new_v4()) };
    let (head, body) = send(web_request(
        app.deal_addr,
        "topkart.deal.v1.DealService/GetDeal",
        &missing,
        &[("authorization", &customer)],
    ))
    .await;
    assert_refused::<()>(Err(web_status(&head, body)), Code::NotFound, "DEAL_NOT_FOUND");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_preflight_from_an_allowed_origin_is_answered_and_replies_expose_the_status(pool: PgPool) {
    let (addr, _stop) = spawn_deal_service_with(pool, with_page_origin()).await;

    let (head, _) = send(preflight(addr, PAGE_ORIGIN)).await;
    assert!(head.status.is_success(), "{head:?}");
    assert_eq!(head.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], PAGE_ORIGIN);
    assert_eq!(listed(&head.headers, header::ACCESS_CONTROL_ALLOW_METHODS), ["post"]);
    let allowed = listed(&head.headers, header::ACCESS_CONTROL_ALLOW_HEADERS);
    for name in ["authorization", "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "x-request-id"] {
        assert!(allowed.iter().any(|allowed| allowed == name), "{name} not allowed: {allowed:?}");
    }

    // The call itself: its status headers are readable by the page.
    let customer = format!("Bearer {}", token(Role::Customer, "alice"));
    let (head, body) = send(web_request(
        addr,
        "topkart.deal.v1.DealService/ListDeals",
        &dealpb::ListDealsRequest::default(),
        &[("authorization", &customer), ("origin", PAGE_ORIGIN)],
    ))
    .await;
    assert_eq!(head.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], PAGE_ORIGIN);
    let exposed = listed(&head.headers, header::ACCESS_CONTROL_EXPOSE_HEADERS);
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"] {
        assert!(exposed.iter().any(|exposed| exposed == name), "{name} not exposed: {exposed:?}");
    }
    assert!(web_frames(body).1.contains("grpc-status:0"));
}

/// The CORS headers among `headers`.
fn cors_headers(headers: &http::HeaderMap) -> Vec<&str> {
    headers.keys().map(http::HeaderName::as_str).filter(|name| name.starts_with("access-control-")).collect()
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn another_origin_gets_no_cors_header_on_its_preflight_or_its_calls(pool: PgPool) {
    let (addr, _stop) = spawn_deal_service_with(pool, with_page_origin()).await;
    let (head, _) = send(preflight(addr, "http://elsewhere.example")).await;
    assert_eq!(cors_headers(&head.headers), Vec::<&str>::new(), "{head:?}");
    assert_eq!(listed(&head.headers, header::VARY), ["origin"], "caches keep replies per origin");

    let customer = format!("Bearer {}", token(Role::Customer, "alice"));
    for origin in [Some("http://elsewhere.example"), None] {
        let mut headers = vec![("authorization", customer.as_str())];
        headers.extend(origin.map(|origin| ("origin", origin)));
        let (head, body) = send(web_request(
            addr,
            "topkart.deal.v1.DealService/ListDeals",
            &dealpb::ListDealsRequest::default(),
            &headers,
        ))
        .await;
        assert_eq!(cors_headers(&head.headers), Vec::<&str>::new(), "{origin:?}: {head:?}");
        assert!(web_frames(body).1.contains("grpc-status:0"), "the call itself is served");
    }
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn without_allowed_origins_no_origin_gets_cors_permission(pool: PgPool) {
    let (addr, _stop) = spawn_deal_service(pool).await;
    let (head, _) = send(preflight(addr, PAGE_ORIGIN)).await;
    assert!(!head.headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN), "{head:?}");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_binary_counts_grpc_web_calls_and_takes_its_origins_from_the_flag(pool: PgPool) {
    let (addr, metrics) = (free_addr().await, free_addr().await);
    let args = [
        "--listen-addr",
        &addr.to_string(),
        "--metrics-addr",
        &metrics.to_string(),
        "--cors-allowed-origins",
        &format!("http://other.example,{PAGE_ORIGIN}"),
    ];
    let _deal = Process::start(env!("CARGO_BIN_EXE_deal-service"), &database_url(&pool), &args);
    wait_serving(addr).await;

    let (head, _) = send(preflight(addr, PAGE_ORIGIN)).await;
    assert_eq!(head.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], PAGE_ORIGIN);
    let customer = format!("Bearer {}", token(Role::Customer, "alice"));
    let missing = dealpb::GetDealRequest { name: format!("deals/{}", uuid::Uuid::new_v4()) };
    let (head, body) = send(web_request(
        addr,
        "topkart.deal.v1.DealService/GetDeal",
        &missing,
        &[("authorization", &customer), ("origin", PAGE_ORIGIN)],
    ))
    .await;
    assert_eq!(web_status(&head, body).code(), Code::NotFound);

    let text = crate::surge::scrape(metrics).await;
    let not_found = [("grpc_method", "GetDeal"), ("grpc_code", "NotFound")];
    assert_eq!(crate::surge::sample(&text, "grpc_server_handled_total", &not_found), 1.0, "{text}");
}
