//! The README's flow against the three real binaries, started as processes on free ports over a
//! fresh database and awaited through `grpc.health.v1`.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use sqlx::PgPool;
use tonic::Code;
use topkart::{
    proto::{deal as dealpb, order as orderpb},
    shared::{
        auth::{Role, Signer},
        time,
    },
};

use crate::{helpers::*, processes::*};

/// The issuer and audience the binaries of the README's flow require.
const ISSUER: &str = "https://id.topkart.test";
const AUDIENCE: &str = "topkart-deals";

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_readme_flow_runs_on_the_real_binaries(pool: PgPool) {
    let url = database_url(&pool);
    let (deal_addr, order_addr, worker_addr) = (free_addr().await, free_addr().await, free_addr().await);
    // Both APIs log at debug level into files, which must never show a token or the secret.
    let logs = std::env::temp_dir().join(format!("topkart-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&logs).unwrap();
    // Both APIs require an issuer and an audience: order-service's own token to deal-service must
    // carry them too, or no order could be placed.
    let claims = ["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE];
    let deal = Process::start_logging_to(
        env!("CARGO_BIN_EXE_deal-service"),
        &url,
        &[&["--listen-addr", &deal_addr.to_string()][..], &claims].concat(),
        &logs.join("deal-service.log"),
    );
    let order = Process::start_logging_to(
        env!("CARGO_BIN_EXE_order-service"),
        &url,
        &[
            &["--listen-addr", &order_addr.to_string(), "--deal-service-url", &format!("http://{deal_addr}")][..],
            &claims,
            // The other scheduler: deal-service and the worker run on one thread (the default).
            &["--worker-threads", "3"],
        ]
        .concat(),
        &logs.join("order-service.log"),
    );
    let worker = Process::start(
        env!("CARGO_BIN_EXE_expiry-worker"),
        &url,
        &["--listen-addr", &worker_addr.to_string(), "--sweep-interval-secs", "1"],
    );
    for addr in [deal_addr, order_addr, worker_addr] {
        wait_serving(addr).await;
    }
    let signer = Signer::hs256(TEST_SECRET.as_bytes()).with_issuer(ISSUER).with_audience(AUDIENCE);
    let token = |role, subject| signer.token(subject, role, Duration::from_secs(600)).unwrap();
    let (admin_token, alice_token) = (token(Role::Admin, "admin"), token(Role::Customer, "alice"));
    let unscoped = deals_with(&channel(deal_addr).await, Bearer::of(&crate::helpers::token(Role::Admin, "admin")))
        .list_deals(dealpb::ListDealsRequest::default())
        .await
        .expect_err("a token without the issuer and audience is refused");
    assert_eq!(unscoped.code(), Code::Unauthenticated);
    let mut deals = deals_with(&channel(deal_addr).await, Bearer::of(&admin_token));
    let mut orders = orders_with(&channel(order_addr).await, Bearer::of(&alice_token));
    let mut admin_orders = orders_with(&channel(order_addr).await, Bearer::of(&admin_token));

    // An admin creates a deal; a customer lists the live deals and orders one.
    let created =
        deals.create_deal(dealpb::CreateDealRequest { deal: Some(deal_request(10)) }).await.unwrap().into_inner();
    let live = deals.list_deals(dealpb::ListDealsRequest::default()).await.unwrap().into_inner();
    assert_eq!(live.deals, std::slice::from_ref(&created));
    let shown_price = live.deals[0].final_price.clone();
    let order_req = orderpb::Order { unit_price: shown_price, ..order_request(&created.name, 2) };
    let placed = orders
        .create_order(orderpb::CreateOrderRequest {
            waitlist_entry: String::new(),
            order: Some(order_req),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    // The customer tracks the order; the admin approves it.
    let tracked = orders.get_order(orderpb::GetOrderRequest { name: placed.name.clone() }).await.unwrap().into_inner();
    assert_eq!(tracked.state(), orderpb::order::State::PendingApproval);
    let approved = admin_orders
        .approve_order(orderpb::ApproveOrderRequest { name: placed.name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.state(), orderpb::order::State::Approved);

    // A deal whose expiry has passed cannot be ordered, and the worker marks it expired.
    let expiring = dealpb::Deal {
        expire_time: Some(time::to_proto(Utc::now() + TimeDelta::milliseconds(1500))),
        ..deal_request(5)
    };
    let expiring = deals.create_deal(dealpb::CreateDealRequest { deal: Some(expiring) }).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let refused = orders
        .create_order(orderpb::CreateOrderRequest {
            waitlist_entry: String::new(),
            order: Some(order_request(&expiring.name, 1)),
            request_id: String::new(),
        })
        .await;
    assert_refused(refused, Code::FailedPrecondition, "DEAL_EXPIRED");
    let id = uuid(&expiring.name);
    let mut swept = false;
    for _ in 0..50 {
        if stored_state(&pool, id).await == "expired" {
            swept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(swept, "the worker never swept the expired deal");

    for process in [deal, order, worker] {
        assert!(process.terminate().await.success(), "a binary did not shut down cleanly on SIGTERM");
    }
    for log in ["deal-service.log", "order-service.log"] {
        let text = std::fs::read_to_string(logs.join(log)).unwrap();
        assert!(text.contains("DEBUG") || text.contains("INFO"), "{log} is empty: the check below would prove nothing");
        for secret in [admin_token.as_str(), alice_token.as_str(), TEST_SECRET, "eyJ"] {
            assert!(!text.contains(secret), "{log} shows a token or the secret");
        }
    }
    std::fs::remove_dir_all(logs).unwrap();
}

/// Runs `promtool check metrics` on `text` when promtool is installed (Debian's `prometheus`);
/// CI sets `TOPKART_REQUIRE_PROMTOOL`, so there it cannot be skipped.
fn promtool_accepts(binary: &str, text: &str) {
    use std::io::Write;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) if std::env::var_os("TOPKART_REQUIRE_PROMTOOL").is_none() => {
            eprintln!("promtool not found ({err}); install Debian's prometheus package to check the exposition");
            return;
        }
        Err(err) => panic!("promtool is required here: {err}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool refused {binary}'s metrics: {report}");
    // promtool exits 0 on lint warnings too: a clean exposition has none.
    assert!(report.trim().is_empty(), "promtool found problems in {binary}'s metrics: {report}");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_binaries_log_json_carry_request_ids_across_services_and_serve_metrics_promtool_accepts(pool: PgPool) {
    let url = database_url(&pool);
    let (deal_addr, order_addr, worker_addr) = (free_addr().await, free_addr().await, free_addr().await);
    let (deal_metrics, order_metrics, worker_metrics) = (free_addr().await, free_addr().await, free_addr().await);
    let logs = std::env::temp_dir().join(format!("topkart-json-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&logs).unwrap();
    let json = ["--log-format", "json"];
    let deal = Process::start_logging_to(
        env!("CARGO_BIN_EXE_deal-service"),
        &url,
        &[&json[..], &["--listen-addr", &deal_addr.to_string(), "--metrics-addr", &deal_metrics.to_string()]].concat(),
        &logs.join("deal-service.log"),
    );
    let order = Process::start_logging_to(
        env!("CARGO_BIN_EXE_order-service"),
        &url,
        &[
            &json[..],
            &[
                "--listen-addr",
                &order_addr.to_string(),
                "--metrics-addr",
                &order_metrics.to_string(),
                "--deal-service-url",
                &format!("http://{deal_addr}"),
            ],
        ]
        .concat(),
        &logs.join("order-service.log"),
    );
    let worker = Process::start_logging_to(
        env!("CARGO_BIN_EXE_expiry-worker"),
        &url,
        &[&json[..], &["--listen-addr", &worker_addr.to_string(), "--metrics-addr", &worker_metrics.to_string()]]
            .concat(),
        &logs.join("expiry-worker.log"),
    );
    for addr in [deal_addr, order_addr, worker_addr] {
        wait_serving(addr).await;
    }
    let mut deals = deals_with(&channel(deal_addr).await, Bearer::of(&token(Role::Admin, "admin")));
    let mut orders = orders_with(&channel(order_addr).await, Bearer::of(&token(Role::Customer, "alice")));
    let created =
        deals.create_deal(dealpb::CreateDealRequest { deal: Some(deal_request(10)) }).await.unwrap().into_inner();

    // A request id sent by the caller comes back, and is in both services' log lines of the call.
    let request_id = format!("e2e-{}", uuid::Uuid::new_v4());
    let mut request = tonic::Request::new(orderpb::CreateOrderRequest {
        waitlist_entry: String::new(),
        order: Some(order_request(&created.name, 1)),
        request_id: String::new(),
    });
    request.metadata_mut().insert("x-request-id", request_id.parse().unwrap());
    let reply = orders.create_order(request).await.expect("an order");
    assert_eq!(reply.metadata().get("x-request-id").and_then(|id| id.to_str().ok()), Some(request_id.as_str()));
    // Without one, the call gets a fresh id back.
    let reply = orders.list_orders(orderpb::ListOrdersRequest::default()).await.unwrap();
    let generated = reply.metadata().get("x-request-id").and_then(|id| id.to_str().ok()).expect("a generated id");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    // Every binary's metrics: promtool accepts them, and the calls above are counted.
    for (binary, addr) in
        [("deal-service", deal_metrics), ("order-service", order_metrics), ("expiry-worker", worker_metrics)]
    {
        let text = crate::surge::scrape(addr).await;
        promtool_accepts(binary, &text);
        assert!(text.contains("grpc_server_handled_total"), "{binary}: {text}");
    }
    let order_text = crate::surge::scrape(order_metrics).await;
    let created_ok = [("grpc_method", "CreateOrder"), ("grpc_code", "OK")];
    assert_eq!(crate::surge::sample(&order_text, "grpc_server_handled_total", &created_ok), 1.0);
    let deal_text = crate::surge::scrape(deal_metrics).await;
    let reserved_ok = [("grpc_method", "BatchReserveUnits"), ("grpc_code", "OK")];
    assert_eq!(crate::surge::sample(&deal_text, "grpc_server_handled_total", &reserved_ok), 1.0);
    for (binary, text) in [("deal-service", &deal_text), ("order-service", &order_text)] {
        assert_eq!(crate::surge::sample(text, "topkart_build_info", &[("service", binary)]), 1.0, "{text}");
    }
    // The worker reads the sale from the database at each scrape: the deal's units left, and the
    // order's hold (confirmed at once, or within the worker's settling).
    let worker_text = crate::surge::scrape(worker_metrics).await;
    let deal_id = created.name.trim_start_matches("deals/");
    let this_deal = [("deal", deal_id), ("product", created.product_name.as_str())];
    assert_eq!(crate::surge::sample(&worker_text, "topkart_deal_units_available", &this_deal), 9.0, "{worker_text}");
    assert_eq!(crate::surge::sample(&worker_text, "topkart_deal_units_offered", &this_deal), 10.0, "{worker_text}");
    assert!(worker_text.contains("\ntopkart_holds_oldest_seconds "), "{worker_text}");

    for process in [deal, order, worker] {
        assert!(process.terminate().await.success(), "a binary did not shut down cleanly on SIGTERM");
    }
    for log in ["deal-service.log", "order-service.log", "expiry-worker.log"] {
        let text = std::fs::read_to_string(logs.join(log)).unwrap();
        assert!(!text.is_empty(), "{log} is empty");
        assert!(!text.contains('\u{1b}'), "{log} has ANSI escape codes");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{log}: not JSON ({err}): {line}")))
            .collect();
        if log != "expiry-worker.log" {
            let of_the_call = lines.iter().filter(|line| line.to_string().contains(&request_id)).count();
            assert!(of_the_call > 0, "{log} has no line with the request id {request_id}");
        }
    }
    std::fs::remove_dir_all(logs).unwrap();
}
