//! Behaviour under a surge: calls beyond the in-flight limit wait their turn, fairly per caller,
//! and a caller's calls beyond its share are refused with a retry delay (and not answered before
//! it), while admitted calls finish; health keeps answering, each caller has its own rate limit,
//! and an order whose caller gives up leaves no hold behind.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::Semaphore;
use tonic::{Code, Request, Status};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_types::StatusExt;
use topkart::{
    proto::{deal as dealpb, order as orderpb},
    shared::{
        auth::Role,
        layers::{Limits, rate_limit::RateLimit},
    },
};

use crate::{faults::Faults, helpers::*};

/// A CreateOrder request for one unit of `deal`.
fn create(deal: &str, request_id: &str) -> orderpb::CreateOrderRequest {
    orderpb::CreateOrderRequest {
        waitlist_entry: String::new(),
        order: Some(order_request(deal, 1)),
        request_id: request_id.into(),
    }
}

/// Asserts `status` is RESOURCE_EXHAUSTED with `reason` and a positive retry delay.
#[track_caller]
fn assert_retry_later(status: &Status, reason: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(details.error_info().map(|info| info.reason.as_str()), Some(reason), "{status:?}");
    let delay = details.retry_info().and_then(|retry| retry.retry_delay).expect("a RetryInfo delay");
    assert!(delay > Duration::ZERO, "{delay:?}");
}

/// How many holds a deal has in `state`.
async fn holds(pool: &PgPool, state: &str) -> i64 {
    sqlx::query_scalar("select count(*) from reservations where state = $1").bind(state).fetch_one(pool).await.unwrap()
}

/// Waits (up to `patience`) until `check` holds.
async fn eventually<F: std::future::Future<Output = bool>>(patience: Duration, mut check: impl FnMut() -> F) -> bool {
    let until = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < until {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().await
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn with_every_permit_taken_callers_wait_their_turn_a_flood_is_refused_late_and_health_goes_on(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    // A deal per customer: each order is then a batch call of its own, held after its reservation.
    let mut deals = std::collections::HashMap::new();
    for customer in ["alice", "bob", "carol", "dave"] {
        deals.insert(customer, app.create_deal(10).await.name);
    }
    let gate = Arc::new(Semaphore::new(0));
    // Waits long enough for the test's steps: the default would refuse them after 500 ms.
    let limits = Limits {
        max_in_flight: 2,
        max_waiting_per_caller: 2,
        max_wait: Duration::from_secs(20),
        max_wait_overloaded: Duration::from_secs(20),
        ..Limits::default()
    };
    // Held in the call to deal-service for the test's steps, which the default deadline would cut.
    let held = Faults::pause_after_reserve(Arc::clone(&gate))
        .on(deals_client_with_deadline(app.deal_addr, Duration::from_secs(30)));
    let (addr, _stop) = spawn_order_service_with(pool.clone(), held, settings_with_limits(limits)).await;
    let order_channel = channel(addr).await;
    let as_customer = |name: &str| orders_with(&order_channel, Bearer::of(&token(Role::Customer, name)));
    let order_as = |name: &str| {
        let (mut orders, deal) = (as_customer(name), deals[name].clone());
        tokio::spawn(async move { orders.create_order(create(&deal, "")).await })
    };

    // Two orders take both permits and wait after reserving.
    let admitted = [order_as("alice"), order_as("bob")];
    assert!(eventually(Duration::from_secs(5), || async { holds(&pool, "reserved").await == 2 }).await);

    // dave floods: two calls wait (his share), the third is refused, but not before its retry delay.
    let flood = [order_as("dave"), order_as("dave")];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let refused = as_customer("dave").create_order(create(&deals["dave"], "")).await.unwrap_err();
    assert_retry_later(&refused, "OVERLOADED");
    let delay = refused.get_error_details().retry_info().and_then(|retry| retry.retry_delay).unwrap();
    assert!(started.elapsed() >= delay, "answered after {:?}, before its delay {delay:?}", started.elapsed());
    // carol asks once, after the flood: she waits in a queue of her own.
    let carol = order_as("carol");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!carol.is_finished(), "carol waits for a permit");
    assert_eq!(holds(&pool, "reserved").await, 2, "nothing reserved for the waiting calls");

    // Health never waits.
    let health = HealthClient::new(order_channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health answers under overload");
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);

    // Permits free one by one: dave's oldest call was first in line; the next goes to carol, before
    // his second. (Reservations are counted whatever their state: a finished order's is confirmed.)
    let taken = || async {
        sqlx::query_scalar::<_, String>("select customer_id from reservations order by create_time")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    gate.add_permits(1);
    assert!(eventually(Duration::from_secs(5), || async { taken().await.len() == 3 }).await);
    gate.add_permits(1);
    assert!(eventually(Duration::from_secs(5), || async { taken().await.len() == 4 }).await);
    assert_eq!(taken().await[2..], ["dave", "carol"], "carol's one call before dave's second");
    gate.add_permits(10);
    for call in admitted.into_iter().chain(flood).chain([carol]) {
        call.await.unwrap().expect("every call that waited is served");
    }
    for (customer, ordered) in [("alice", 1), ("bob", 1), ("carol", 1), ("dave", 2)] {
        assert_eq!(app.get_deal(&deals[customer]).await.available_units, 10 - ordered, "{customer}");
    }
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn once_a_deal_is_sold_out_orders_without_a_request_id_are_answered_without_asking_deal_service(pool: PgPool) {
    let mut app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(1).await;
    // A sold-out mark that outlasts the test's steps (the default lasts 100 ms).
    let limits = Limits { sold_out_for: Duration::from_secs(60), ..Limits::default() };
    let (addr, _stop) =
        spawn_order_service_with(pool.clone(), deals_client(app.deal_addr), settings_with_limits(limits)).await;
    let order_channel = channel(addr).await;
    let as_customer = |name: &str| orders_with(&order_channel, Bearer::of(&token(Role::Customer, name)));
    let request_id = uuid::Uuid::new_v4().to_string();
    let alices = as_customer("alice").create_order(create(&deal.name, &request_id)).await.expect("the last unit");

    // deal-service says the deal is sold out: SOLD_OUT, and order-service knows it from now on.
    let bobs = as_customer("bob").create_order(create(&deal.name, "")).await;
    assert_refused(bobs, Code::FailedPrecondition, "SOLD_OUT");
    let reservations_asked =
        || async { sqlx::query_scalar::<_, i64>("select count(*) from reservations").fetch_one(&pool).await.unwrap() };
    assert_eq!(reservations_asked().await, 1);
    app.stop_deal_service().await;

    // With deal-service gone, only order-service's own answers are left: SOLD_OUT at once for an
    // order without a request id; one with a request id may be a retry of an order placed before,
    // so it is served as any call, and alice's gets her order back.
    let carols = as_customer("carol").create_order(create(&deal.name, "")).await;
    assert_refused(carols, Code::FailedPrecondition, "SOLD_OUT");
    let retried = as_customer("alice").create_order(create(&deal.name, &request_id)).await.expect("her order back");
    assert_eq!(retried.into_inner().name, alices.into_inner().name);
    assert_eq!(app.order_count().await, 1);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn each_caller_is_rate_limited_alone_and_order_services_own_calls_are_not(pool: PgPool) {
    let limits = Limits { rate_limit: Some(RateLimit { per_second: 0.2, burst: 2 }), ..Limits::default() };
    let (deal_addr, _stop_deal) = spawn_deal_service_with(pool.clone(), settings_with_limits(limits)).await;
    let (order_addr, _stop_order) =
        spawn_order_service_with(pool.clone(), deals_client(deal_addr), settings_with_limits(limits)).await;
    let (deal_channel, order_channel) = (channel(deal_addr).await, channel(order_addr).await);
    let mut admin = deals_with(&deal_channel, Bearer::of(&token(Role::Admin, "admin")));
    let deal = admin
        .create_deal(topkart::proto::deal::CreateDealRequest { deal: Some(deal_request(10)) })
        .await
        .unwrap()
        .into_inner();
    let as_customer = |name: &str| orders_with(&order_channel, Bearer::of(&token(Role::Customer, name)));

    // Alice's burst is two calls; her third is refused with the time until her next token.
    let mut alice = as_customer("alice");
    for _ in 0..2 {
        alice.list_orders(orderpb::ListOrdersRequest::default()).await.expect("within the burst");
    }
    let limited = alice.list_orders(orderpb::ListOrdersRequest::default()).await.unwrap_err();
    assert_retry_later(&limited, "RATE_LIMITED");

    // Bob has his own bucket.
    as_customer("bob").list_orders(orderpb::ListOrdersRequest::default()).await.expect("bob is not alice");

    // Five buyers order once each: five reservations (and confirmations) from order-service, past
    // any burst of two, none limited, since order-service's own calls are not.
    for buyer in ["c1", "c2", "c3", "c4", "c5"] {
        as_customer(buyer).create_order(create(&deal.name, "")).await.expect("order placed");
    }

    // Calls without a valid token share their address's bucket, checked before the token is.
    let forged = orders_with(&order_channel, Bearer::of("not-a-token"));
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(forged.clone().list_orders(orderpb::ListOrdersRequest::default()).await.unwrap_err());
    }
    assert_eq!(codes[0].code(), Code::Unauthenticated);
    assert_eq!(codes[1].code(), Code::Unauthenticated);
    assert_retry_later(&codes[2], "RATE_LIMITED");
    assert_invariants(&pool).await;
}

/// order-service over the app's deal-service, stopping every order after its reservation until
/// the returned gate lets it go on.
async fn paused_order_service(app: &TestApp) -> (Orders, Arc<Semaphore>, tokio::sync::oneshot::Sender<()>) {
    let gate = Arc::new(Semaphore::new(0));
    let faults = Faults::pause_after_reserve(Arc::clone(&gate));
    let (addr, stop) = spawn_order_service(app.pool.clone(), faults.on(deals_client(app.deal_addr))).await;
    (orders_with(&channel(addr).await, Bearer::of(&token(Role::Customer, "alice"))), gate, stop)
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_order_whose_deadline_passes_after_its_reservation_gives_its_units_back_at_once(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let (mut orders, gate, _stop) = paused_order_service(&app).await;
    let request_id = uuid::Uuid::new_v4().to_string();

    let mut request = Request::new(create(&deal.name, &request_id));
    request.set_timeout(Duration::from_millis(400));
    let status = orders.create_order(request).await.unwrap_err();
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");

    // No worker runs here, and the worker would wait 30 s: the release is the abandonment's.
    let released = eventually(Duration::from_secs(3), || async { holds(&pool, "released").await == 1 }).await;
    assert!(released, "the hold was not released at once");
    assert_eq!(app.get_deal(&deal.name).await.available_units, 10);

    // The attempt stopped with its caller; a retry under the same id cannot order it any more.
    gate.add_permits(10);
    let retry = orders.create_order(create(&deal.name, &request_id)).await;
    assert_refused(retry, Code::Aborted, "ORDER_ABANDONED");
    assert_eq!(app.order_count().await, 0);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 10);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_order_whose_caller_goes_away_gives_its_units_back_at_once(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let (mut orders, gate, _stop) = paused_order_service(&app).await;

    // The caller gives up without a deadline of its own: its stream is reset.
    let call = orders.create_order(create(&deal.name, ""));
    let gave_up = tokio::time::timeout(Duration::from_millis(400), call).await;
    assert!(gave_up.is_err(), "the call was still waiting at the gate");

    let released = eventually(Duration::from_secs(3), || async { holds(&pool, "released").await == 1 }).await;
    assert!(released, "the hold was not released at once");
    gate.add_permits(10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.order_count().await, 0);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 10);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_call_whose_deadline_is_too_short_to_be_answered_reserves_nothing(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    // 55 ms: enough for a reservation here, not for the 60 ms order-service wants before starting one.
    let mut request = Request::new(create(&deal.name, ""));
    request.set_timeout(Duration::from_millis(55));
    let status = app.orders.clone().create_order(request).await.unwrap_err();
    assert_refused(Err::<(), _>(status), Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reservations: i64 = sqlx::query_scalar("select count(*) from reservations").fetch_one(&pool).await.unwrap();
    assert_eq!(reservations, 0, "no reservation was started for a caller that could not be answered");
}

/// This process's metrics recorder, installed and served on a port of its own.
async fn serve_metrics(pool: &PgPool) -> std::net::SocketAddr {
    let handle = topkart::shared::metrics::install("test").expect("install the recorder");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let exposition = topkart::shared::metrics::Exposition::new(pool.clone());
    tokio::spawn(topkart::shared::metrics::serve(listener, handle, exposition));
    metrics_addr
}

/// The metrics text served on `addr`.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics port");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the sample of `name` whose labels include every one of `labels` (0 if none).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels.iter().all(|(key, value)| series.contains(&format!("{key}=\"{value}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap_or(0.0))
        .sum()
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_metrics_count_calls_as_go_grpc_prometheus_does_on_both_sides_and_the_batches_behind_them(pool: PgPool) {
    let metrics_addr = serve_metrics(&pool).await;
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let create_order =
        [("grpc_type", "unary"), ("grpc_service", "topkart.order.v1.OrderService"), ("grpc_method", "CreateOrder")];
    let code = |code| [create_order[0], create_order[1], create_order[2], ("grpc_code", code)];
    let reserve = [("grpc_service", "topkart.deal.internal.v1.HoldService"), ("grpc_method", "BatchReserveUnits")];
    let before = scrape(metrics_addr).await;

    app.orders.clone().create_order(create(&deal.name, "")).await.expect("an order");
    let invalid = app.orders.clone().create_order(create("deals/nope", "")).await;
    assert_invalid(invalid, &["order.deal"]);
    let missing = app
        .orders
        .clone()
        .get_order(orderpb::GetOrderRequest { name: format!("orders/{}", uuid::Uuid::new_v4()) })
        .await;
    assert_refused(missing, Code::NotFound, "ORDER_NOT_FOUND");

    let after = scrape(metrics_addr).await;
    // The recorder is the process's: exact counts need nextest's process per test (scripts/test
    // uses it); under `cargo test`, other tests' calls may add to them.
    let alone = std::env::var_os("NEXTEST").is_some();
    let moved = |name: &str, labels: &[(&str, &str)]| {
        let delta = sample(&after, name, labels) - sample(&before, name, labels);
        if alone || delta < 1.0 { delta } else { 1.0 }
    };
    assert_eq!(moved("grpc_server_started_total", &create_order), 2.0);
    assert_eq!(moved("grpc_server_handled_total", &code("OK")), 1.0);
    assert_eq!(moved("grpc_server_handled_total", &code("InvalidArgument")), 1.0);
    assert_eq!(moved("grpc_server_handled_total", &[("grpc_method", "GetOrder"), ("grpc_code", "NotFound")]), 1.0);
    assert_eq!(moved("grpc_server_handling_seconds_count", &create_order), 2.0);
    assert_eq!(moved("grpc_server_msg_received_total", &create_order), 2.0);
    assert_eq!(moved("grpc_server_msg_sent_total", &create_order), 1.0, "an error reply carries no message");
    // order-service's call to deal-service, seen from both ends.
    assert_eq!(moved("grpc_server_handled_total", &[reserve[0], reserve[1], ("grpc_code", "OK")]), 1.0);
    assert_eq!(moved("grpc_client_started_total", &reserve), 1.0);
    assert_eq!(moved("grpc_client_handled_total", &[reserve[0], reserve[1], ("grpc_code", "OK")]), 1.0);
    assert_eq!(moved("grpc_client_handling_seconds_count", &reserve), 1.0);
    assert_eq!(moved("grpc_client_msg_sent_total", &reserve), 1.0);
    assert_eq!(moved("grpc_client_msg_received_total", &reserve), 1.0);
    assert_eq!(moved("topkart_reservations_total", &[("outcome", "reserved")]), 1.0);
    assert_eq!(moved("topkart_reservation_batch_size_count", &[]), 1.0);
    assert_eq!(moved("topkart_order_inserts_total", &[("outcome", "recorded")]), 1.0);
    // The reservation's batch ran on deal-service's sale pool, the rest on the main one: both hold
    // a connection now (in use or idle), and both are reported with their limits.
    assert!(sample(&after, "topkart_db_pool_connections", &[("pool", "main")]) >= 1.0, "{after}");
    assert!(sample(&after, "topkart_db_pool_connections", &[("pool", "sale")]) >= 1.0, "{after}");
    assert!(sample(&after, "topkart_db_pool_max_connections", &[("pool", "main")]) >= 1.0, "{after}");
    assert!(after.contains("# TYPE grpc_server_handling_seconds histogram"), "{after}");
    assert!(after.contains("grpc_server_in_flight"), "{after}");
    // The process and the build.
    assert!(sample(&after, "process_resident_memory_bytes", &[]) > 0.0, "{after}");
    assert!(after.contains("\nprocess_cpu_seconds_total "), "{after}");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(sample(&after, "topkart_build_info", &[("service", "test"), ("version", version)]), 1.0, "{after}");
}

/// A WatchDeal stream is counted as a stream: `server_stream`, its messages as they are sent,
/// while it is open.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_watch_streams_messages_are_counted_while_it_is_open(pool: PgPool) {
    let metrics_addr = serve_metrics(&pool).await;
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let watch =
        [("grpc_type", "server_stream"), ("grpc_service", "topkart.deal.v1.DealService"), ("grpc_method", "WatchDeal")];
    let mut stream = app
        .deals
        .clone()
        .watch_deal(dealpb::WatchDealRequest { name: deal.name.clone() })
        .await
        .expect("a stream")
        .into_inner();
    stream.message().await.expect("the deal as it is").expect("a message");
    app.orders.clone().create_order(create(&deal.name, "")).await.expect("an order");
    stream.message().await.expect("the deal after the order").expect("a message");

    let open = scrape(metrics_addr).await;
    assert_eq!(sample(&open, "grpc_server_started_total", &watch), 1.0, "{open}");
    assert!(sample(&open, "grpc_server_msg_sent_total", &watch) >= 2.0, "{open}");
    assert_eq!(sample(&open, "grpc_server_msg_received_total", &watch), 1.0, "{open}");
    assert_eq!(sample(&open, "grpc_server_handled_total", &watch), 0.0, "not ended: {open}");
    drop(stream);
    assert!(
        eventually(Duration::from_secs(5), || async {
            sample(&scrape(metrics_addr).await, "grpc_server_handled_total", &watch) == 1.0
        })
        .await,
        "the stream counted as ended once its watcher left"
    );
}

/// A caller that resets its stream before its request is whole, or drops its connection, is
/// counted CANCELLED, not INTERNAL or UNKNOWN (what tonic answers it, to nobody): an alert on
/// INTERNAL must mean a fault of ours.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_request_cut_by_its_caller_counts_as_cancelled_not_internal(pool: PgPool) {
    let metrics_addr = serve_metrics(&pool).await;
    let app = spawn_app(pool.clone()).await;
    let before = scrape(metrics_addr).await;

    for reset in [true, false] {
        let tcp = tokio::net::TcpStream::connect(app.deal_addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let driving = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request =
            http::Request::post(format!("http://{}/topkart.deal.internal.v1.HoldService/ReleaseUnits", app.deal_addr))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", format!("Bearer {}", token(Role::Service, "order-service")))
                .body(())
                .unwrap();
        // The headers go, the body never comes: the caller resets the stream, or its connection.
        let (_response, mut body) = client.send_request(request, false).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if reset {
            body.send_reset(h2::Reason::CANCEL);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop((client, body));
        driving.abort();
    }
    let released = |text: &str, code: &str| {
        let labels = [
            ("grpc_service", "topkart.deal.internal.v1.HoldService"),
            ("grpc_method", "ReleaseUnits"),
            ("grpc_code", code),
        ];
        sample(text, "grpc_server_handled_total", &labels) - sample(&before, "grpc_server_handled_total", &labels)
    };
    assert!(
        eventually(Duration::from_secs(5), || async { released(&scrape(metrics_addr).await, "Canceled") >= 2.0 }).await,
        "both cut calls counted CANCELLED"
    );
    let after = scrape(metrics_addr).await;
    assert_eq!((released(&after, "Internal"), released(&after, "Unknown")), (0.0, 0.0));
}
