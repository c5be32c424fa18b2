//! Traces on by configuration: the real binaries, given an OTLP endpoint (a receiver in this test),
//! export one CreateOrder as one trace across both services, with the RPC semantic conventions,
//! and every log line of the call carries its trace id.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use topkart::{
    proto::{deal as dealpb, order as orderpb},
    shared::auth::Role,
};

use crate::{helpers::*, processes::*};

/// A span as received, with the service that exported it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP/gRPC trace receiver keeping every span.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut kept = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let attributes = resource_spans.resource.map(|resource| resource.attributes).unwrap_or_default();
            let service = string_attribute(&attributes, "service.name").unwrap_or_default();
            for scope in resource_spans.scope_spans {
                kept.extend(scope.spans.into_iter().map(|span| Received { service: service.clone(), span }));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    fn spans(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key) {
        Some(Value::StringValue(value)) => Some(value.clone()),
        _ => None,
    }
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key) {
        Some(Value::IntValue(value)) => Some(*value),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The span named `name` of `kind` that `service` exported, if any.
fn find<'a>(spans: &'a [Received], service: &str, name: &str, kind: SpanKind) -> Option<&'a Span> {
    spans
        .iter()
        .find(|received| received.service == service && received.span.name == name && received.span.kind == kind as i32)
        .map(|received| &received.span)
}

/// Whether `ancestor` is `span`'s parent, or its parent's, and so on, among `spans`.
fn descends_from(spans: &[Received], span: &Span, ancestor: &Span) -> bool {
    let mut parent = span.parent_span_id.clone();
    for _ in 0..8 {
        if parent == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|received| received.span.span_id == parent) {
            Some(received) => parent = received.span.parent_span_id.clone(),
            None => return false,
        }
    }
    false
}

const CREATE_ORDER: &str = "topkart.order.v1.OrderService/CreateOrder";
const RESERVE: &str = "topkart.deal.internal.v1.HoldService/BatchReserveUnits";
/// The caller's trace: the one the order joins.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn one_order_is_one_trace_across_both_services_exported_over_otlp_and_its_log_lines_carry_the_trace_id(
    pool: PgPool,
) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let url = database_url(&pool);
    let (deal_addr, order_addr) = (free_addr().await, free_addr().await);
    let logs = std::env::temp_dir().join(format!("topkart-traces-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&logs).unwrap();
    // Spans exported within 100 ms of their end; every successful call given an access-log line.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "info"),
        ("LOG_FORMAT", "json"),
        ("ACCESS_LOG_OK_SAMPLE", "1"),
    ];
    let _deal = Process::start_with(
        env!("CARGO_BIN_EXE_deal-service"),
        &url,
        &["--listen-addr", &deal_addr.to_string()],
        &env,
        &logs.join("deal-service.log"),
    );
    let _order = Process::start_with(
        env!("CARGO_BIN_EXE_order-service"),
        &url,
        &["--listen-addr", &order_addr.to_string(), "--deal-service-url", &format!("http://{deal_addr}")],
        &env,
        &logs.join("order-service.log"),
    );
    wait_serving(deal_addr).await;
    wait_serving(order_addr).await;

    let mut deals = deals_with(&channel(deal_addr).await, Bearer::of(&token(Role::Admin, "admin")));
    let deal = deals.create_deal(dealpb::CreateDealRequest { deal: Some(deal_request(5)) }).await.unwrap().into_inner();
    let alice = token(Role::Customer, "alice");
    let mut orders = orders_with(&channel(order_addr).await, Bearer::of(&alice));
    let mut request =
        Request::new(orderpb::CreateOrderRequest { order: Some(order_request(&deal.name, 1)), ..Default::default() });
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap());
    orders.create_order(request).await.expect("an order");

    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = receiver.spans();
        if find(&spans, "deal-service", RESERVE, SpanKind::Server).is_some()
            && find(&spans, "order-service", CREATE_ORDER, SpanKind::Server).is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = find(&spans, "order-service", CREATE_ORDER, SpanKind::Server).expect("CreateOrder's server span");
    let calling = find(&spans, "order-service", RESERVE, SpanKind::Client).expect("order-service's client span");
    let reserved = find(&spans, "deal-service", RESERVE, SpanKind::Server).expect("deal-service's server span");

    // One trace, the caller's, each span a child of the one before.
    for span in [created, calling, reserved] {
        assert_eq!(hex(&span.trace_id), TRACE_ID, "{}", span.name);
    }
    assert_eq!(hex(&created.parent_span_id), CALLER_SPAN);
    assert!(descends_from(&spans, calling, created), "the client call is within CreateOrder");
    assert_eq!(reserved.parent_span_id, calling.span_id, "deal-service's span is the client call's child");

    // The RPC semantic conventions.
    for (span, service, method) in [
        (created, "topkart.order.v1.OrderService", "CreateOrder"),
        (calling, "topkart.deal.internal.v1.HoldService", "BatchReserveUnits"),
        (reserved, "topkart.deal.internal.v1.HoldService", "BatchReserveUnits"),
    ] {
        assert_eq!(string_attribute(&span.attributes, "rpc.system").as_deref(), Some("grpc"), "{}", span.name);
        assert_eq!(string_attribute(&span.attributes, "rpc.service").as_deref(), Some(service));
        assert_eq!(string_attribute(&span.attributes, "rpc.method").as_deref(), Some(method));
        assert_eq!(int_attribute(&span.attributes, "rpc.grpc.status_code"), Some(0));
    }

    // A refusal that is no fault of the server's is not an error span; the status code says it.
    let missing = orders.get_order(orderpb::GetOrderRequest { name: format!("orders/{}", uuid::Uuid::new_v4()) }).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    let mut not_found = None;
    for _ in 0..100 {
        spans = receiver.spans();
        not_found = find(&spans, "order-service", "topkart.order.v1.OrderService/GetOrder", SpanKind::Server).cloned();
        if not_found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let not_found = not_found.expect("GetOrder's span");
    assert_eq!(int_attribute(&not_found.attributes, "rpc.grpc.status_code"), Some(5));
    assert_ne!(not_found.status.map(|status| status.code), Some(2), "not an error span");

    // Every line of the order's call carries its trace id and its caller, never the token.
    let log = std::fs::read_to_string(logs.join("order-service.log")).unwrap();
    assert!(!log.contains(&alice), "the token is never logged");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &serde_json::Value| line["spans"][0]["method"] == format!("/{CREATE_ORDER}"))
        .collect();
    assert!(!lines.is_empty(), "CreateOrder logged: {log}");
    for line in &lines {
        assert_eq!(line["spans"][0]["trace_id"], TRACE_ID, "{line}");
        assert_eq!(line["spans"][0]["subject"], "alice", "{line}");
    }
    let access = lines.iter().find(|line| line["fields"]["message"] == "call finished").expect("an access-log line");
    assert_eq!((&access["level"], &access["fields"]["code"]), (&"INFO".into(), &"OK".into()), "{access}");
    let _ = std::fs::remove_dir_all(&logs);
}
