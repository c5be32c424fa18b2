//! The worker fails locally and loudly: a deal whose rows make a step fail holds back no other
//! deal's expiries, offers or settlements; the failure is counted, logged at ERROR with its step and
//! deal, and, when it lasts, turns the worker's health NOT_SERVING until the step succeeds again.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::PgPool;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use topkart::{
    proto::{deal as dealpb, order as orderpb},
    shared::auth::Role,
    worker::{self, StepHealth},
};
use uuid::Uuid;

use crate::{helpers::*, surge::sample};

/// A deal of two units with an approval window where, as the worker will find it, one order's
/// approval window has passed and a waitlist entry's offer has ended. Returns the deal's id, the
/// order's and the entry's.
async fn deal_with_due_order_and_offer(app: &TestApp) -> (Uuid, Uuid, Uuid) {
    wait_out_midnight(&app.pool).await;
    let deal =
        dealpb::Deal { approval_window: Some(prost_types::Duration { seconds: 3600, nanos: 0 }), ..deal_request(2) };
    let deal =
        app.deals.clone().create_deal(dealpb::CreateDealRequest { deal: Some(deal) }).await.unwrap().into_inner();
    let order_as = |customer: &'static str| {
        let request = orderpb::CreateOrderRequest {
            order: Some(orderpb::Order { customer_id: customer.into(), ..order_request(&deal.name, 1) }),
            request_id: Uuid::new_v4().to_string(),
            waitlist_entry: String::new(),
        };
        let mut orders = app.orders_as(customer);
        async move { orders.create_order(request).await.unwrap().into_inner() }
    };
    let due = order_as("ann").await;
    let cancelled = order_as("ben").await;
    let join = dealpb::JoinWaitlistRequest { deal: deal.name.clone(), quantity: 1, request_id: String::new() };
    let carol = deals_with(&app.deal_channel, Bearer::of(&token(Role::Customer, "carol")));
    let entry = carol.clone().join_waitlist(join).await.unwrap().into_inner();
    app.orders_as("ben").cancel_order(orderpb::CancelOrderRequest { name: cancelled.name }).await.unwrap();
    let (due, entry) = (uuid(&due.name), uuid(&entry.name));
    sqlx::query("update orders set approve_deadline = now() - interval '1 second' where id = $1")
        .bind(due)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("update waitlist_entries set offer_expire_time = now() - interval '1 second' where id = $1")
        .bind(entry)
        .execute(&app.pool)
        .await
        .unwrap();
    (uuid(&deal.name), due, entry)
}

/// Makes every statement that gives units back to `deal` fail, as a broken trigger would.
async fn break_deal(pool: &PgPool, deal: Uuid) {
    sqlx::raw_sql(
        "create table broken_deals (id uuid primary key);
         create function units_back_fail() returns trigger language plpgsql as $$
         begin
             if new.available_units > old.available_units and exists (select from broken_deals where id = new.id) then
                 raise exception 'units back to deal % refused by the test', new.id;
             end if;
             return new;
         end $$;
         create trigger units_back_fail before update on deals for each row execute function units_back_fail();",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("insert into broken_deals values ($1)").bind(deal).execute(pool).await.unwrap();
}

async fn repair(pool: &PgPool) {
    sqlx::query("delete from broken_deals").execute(pool).await.unwrap();
}

async fn states(pool: &PgPool, order: Uuid, entry: Uuid) -> (String, String, i32) {
    sqlx::query_as(
        "select o.state, e.state, d.available_units
           from orders o, waitlist_entries e join deals d on d.id = e.deal_id
          where o.id = $1 and e.id = $2",
    )
    .bind(order)
    .bind(entry)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Log lines written while the guard lives, in this thread (the test's runtime is single-threaded).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_deal_whose_expiries_fail_holds_back_no_other_deal_and_is_named_until_it_is_repaired(pool: PgPool) {
    let metrics = topkart::shared::metrics::install("test").expect("install the recorder");
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let app = spawn_app(pool.clone()).await;
    let (broken, broken_order, broken_entry) = deal_with_due_order_and_offer(&app).await;
    let (_, order, entry) = deal_with_due_order_and_offer(&app).await;
    break_deal(&pool, broken).await;

    let mut health = StepHealth::default();
    assert!(!worker::tick(&pool, &mut health).await, "the tick reports the failure");
    // The healthy deal's order and offer expired, their units back (to nobody: the entry's was the
    // only one), while the broken deal's stayed as they were.
    assert_eq!(states(&pool, order, entry).await, ("expired".into(), "expired".into(), 2));
    assert_eq!(states(&pool, broken_order, broken_entry).await, ("pending_approval".into(), "offered".into(), 0));

    let logged = logs.text();
    for step in ["order_expiry", "waitlist_expiry"] {
        let line = logged
            .lines()
            .find(|line| line.contains("ERROR") && line.contains(&format!("step=\"{step}\"")))
            .unwrap_or_else(|| panic!("no ERROR line for {step}:\n{logged}"));
        assert!(line.contains(&broken.to_string()), "the line names the deal: {line}");
    }
    let text = metrics.render();
    let alone = std::env::var_os("NEXTEST").is_some();
    if alone {
        assert_eq!(sample(&text, "topkart_worker_deal_failures_total", &[("step", "order_expiry")]), 1.0, "{text}");
        assert_eq!(sample(&text, "topkart_worker_deal_failures_total", &[("step", "waitlist_expiry")]), 1.0);
        assert_eq!(sample(&text, "topkart_sweeps_total", &[("outcome", "failed")]), 1.0);
        assert_eq!(sample(&text, "topkart_worker_steps_total", &[("step", "sweep"), ("outcome", "ok")]), 1.0);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!worker::tick(&pool, &mut health).await, "still broken");
    assert!(health.failing_for(worker::Step::WaitlistExpiry, std::time::Instant::now()) >= Duration::from_millis(20));

    repair(&pool).await;
    assert!(worker::tick(&pool, &mut health).await, "every step succeeds once repaired");
    assert_eq!(states(&pool, broken_order, broken_entry).await, ("expired".into(), "expired".into(), 2));
    assert_eq!(health.failing_for(worker::Step::WaitlistExpiry, std::time::Instant::now()), Duration::ZERO);
    if alone {
        let text = metrics.render();
        assert_eq!(sample(&text, "topkart_sweeps_total", &[("outcome", "ok")]), 1.0, "{text}");
        assert_eq!(sample(&text, "topkart_worker_step_failing_seconds", &[("step", "waitlist_expiry")]), 0.0);
    }
    assert_invariants(&pool).await;
}

async fn status(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let reply = health.check(HealthCheckRequest { service: service.into() }).await.unwrap();
    reply.into_inner().status()
}

/// Waits (up to 20 s) for `service` to report `wanted`.
async fn until_status(health: &mut HealthClient<tonic::transport::Channel>, service: &str, wanted: ServingStatus) {
    for _ in 0..200 {
        if status(health, service).await == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service:?} never reported {wanted:?}");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_worker_is_not_serving_while_a_step_keeps_failing_and_serving_again_once_it_succeeds(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (broken, _, _) = deal_with_due_order_and_offer(&app).await;
    break_deal(&pool, broken).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let schedule =
        worker::Schedule { sweep_interval: Duration::from_millis(300), unhealthy_after: Duration::from_secs(2) };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(worker::run(listener, pool.clone(), schedule, None, async move {
        let _ = stopped.await;
    }));
    let mut health = HealthClient::new(channel(addr).await);

    // Serving once the database answers, while the failures have not lasted yet; then not.
    until_status(&mut health, worker::HEALTH_SERVICE_NAME, ServingStatus::Serving).await;
    until_status(&mut health, worker::HEALTH_SERVICE_NAME, ServingStatus::NotServing).await;
    assert_eq!(status(&mut health, "").await, ServingStatus::Serving, "the database answers");
    repair(&pool).await;
    until_status(&mut health, worker::HEALTH_SERVICE_NAME, ServingStatus::Serving).await;
    let _ = stop.send(());
}
