//! The batch calls between the services (BatchReserveUnits, BatchConfirmUnits): each request
//! answered as if it came alone; callers that give up while their batch is in flight, and a batch
//! whose reply is lost and which is sent again. Each order keeps its own answer, hold and deadline;
//! no unit is taken twice or lost.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::{Semaphore, oneshot};
use tonic::{Code, Request};
use topkart::{
    proto::{deal as dealpb, holds as holdspb, order as pb},
    shared::auth::Role,
};
use uuid::Uuid;

use crate::{faults::Faults, helpers::*};

/// Orders that wait together, behind the first, for their deal's next batch call.
const TOGETHER: usize = 8;
/// How long the buyers who give up wait for their orders.
const IMPATIENT: Duration = Duration::from_millis(1500);
const PATIENT: Duration = Duration::from_secs(8);

/// A second order-service on `app`'s deal-service, with `faults`; it stops when the sender drops.
async fn faulty_order_service(app: &TestApp, faults: Faults) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    spawn_order_service(app.pool.clone(), faults.on(deals_client(app.deal_addr))).await
}

/// `buyer` orders `quantity` units of `deal` under `id` over `channel`, waiting at most `timeout`.
fn order(
    channel: &tonic::transport::Channel,
    deal: &str,
    buyer: String,
    quantity: i32,
    id: Uuid,
    timeout: Duration,
) -> impl Future<Output = Result<pb::Order, tonic::Status>> + Send + 'static {
    let deal = deal.to_owned();
    let mut orders = orders_with(channel, Bearer::of(&token(Role::Customer, &buyer)));
    async move {
        let mut request = Request::new(pb::CreateOrderRequest {
            waitlist_entry: String::new(),
            order: Some(order_request(&deal, quantity)),
            request_id: id.to_string(),
        });
        request.set_timeout(timeout);
        orders.create_order(request).await.map(tonic::Response::into_inner)
    }
}

/// Waits (at most 5 s) until `done` holds.
async fn eventually<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    for _ in 0..250 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 5 s");
}

/// The state of each reservation of `ids`, in order (`None`: no reservation).
async fn hold_states(pool: &PgPool, ids: &[Uuid]) -> Vec<Option<String>> {
    let mut states = Vec::new();
    for id in ids {
        states.push(
            sqlx::query_scalar("select state from reservations where id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .unwrap(),
        );
    }
    states
}

/// Sends a first order alone (its batch held at the gate), then `TOGETHER` more, which wait for
/// the deal's next call; lets the first go and returns once the next call, of all `TOGETHER`, has
/// reached the gate.
async fn a_batch_of_together(
    addr: std::net::SocketAddr,
    deal: &dealpb::Deal,
    gate: &Semaphore,
    faults: &Faults,
    buyers: impl Fn(usize) -> (String, i32, Duration),
) -> Vec<(Uuid, tokio::task::JoinHandle<Result<pb::Order, tonic::Status>>)> {
    // One connection, made before: the orders then reach order-service at once.
    let channel = channel(addr).await;
    let first = tokio::spawn(order(&channel, &deal.name, "first".into(), 1, Uuid::new_v4(), PATIENT));
    eventually("the first order's call reaches the gate", || async { faults.reserve_batch_sizes() == [1] }).await;
    let together: Vec<_> = (0..TOGETHER)
        .map(|index| {
            let (buyer, quantity, timeout) = buyers(index);
            let id = Uuid::new_v4();
            (id, tokio::spawn(order(&channel, &deal.name, buyer, quantity, id, timeout)))
        })
        .collect();
    // They reach order-service's queue for the deal while the first call waits at the gate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.add_permits(1);
    first.await.unwrap().expect("the first order is placed");
    eventually("the next call, of every order that waited, reaches the gate", || async {
        faults.reserve_batch_sizes() == [1, TOGETHER]
    })
    .await;
    together
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_reserve_batch_whose_callers_give_up_half_way_releases_their_holds_and_keeps_the_others(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(100).await;
    let gate = Arc::new(Semaphore::new(0));
    let faults = Faults::default().pause_reserve_batches(Arc::clone(&gate));
    let (addr, _stop) = faulty_order_service(&app, faults.clone()).await;
    // Every other buyer gives up after 1.5 s.
    let impatient = |index: usize| index % 2 == 1;
    let together = a_batch_of_together(addr, &deal, &gate, &faults, |index| {
        (format!("buyer-{index}"), 1, if impatient(index) { IMPATIENT } else { PATIENT })
    })
    .await;

    // The deal's row is locked, so the batch, once sent, waits in deal-service's transaction —
    // after it started, so each of its requests is reserved however long it then waits.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("select 1 from deals where id = $1 for update")
        .bind(uuid(&deal.name))
        .execute(&mut *lock)
        .await
        .unwrap();
    gate.add_permits(1);
    eventually("deal-service's batch waits for the deal's row", || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        waiting > 0
    })
    .await;

    let (gave_up, waited): (Vec<_>, Vec<_>) =
        together.into_iter().enumerate().partition(|(index, _)| impatient(*index));
    let mut gave_up_ids = Vec::new();
    for (_, (id, call)) in gave_up {
        let status = call.await.unwrap().expect_err("the buyer gave up");
        assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
        gave_up_ids.push(id);
    }
    // Half-way through: the impatient buyers are gone, and their requests are in the batch.
    lock.commit().await.unwrap();
    for (_, (id, call)) in waited {
        let placed = call.await.unwrap().expect("a buyer who waited gets the order");
        assert_eq!(placed.name, format!("orders/{id}"));
    }

    // The holds of those who gave up were made, and their abandoned attempts give them back.
    eventually("the holds of the buyers who gave up are released", || async {
        hold_states(&pool, &gave_up_ids).await.iter().all(|state| state.as_deref() == Some("released"))
    })
    .await;
    let abandoned: i64 = sqlx::query_scalar("select count(*) from abandoned_orders where id = any($1)")
        .bind(&gave_up_ids)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(abandoned, gave_up_ids.len() as i64);
    assert_eq!(app.order_count().await, 1 + (TOGETHER - gave_up_ids.len()) as i64);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 100 - app.order_count().await as i32);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_reserve_batch_resent_after_its_reply_was_lost_gives_every_order_its_same_hold(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    // Each buyer may hold 2 units, and orders 2: a resend that took units again would be refused.
    let limited = dealpb::Deal { max_units_per_customer: Some(2), ..deal_request(100) };
    let deal = app.deals.clone().create_deal(dealpb::CreateDealRequest { deal: Some(limited) }).await.unwrap();
    let deal = deal.into_inner();
    let gate = Arc::new(Semaphore::new(0));
    // The second call sent (the batch of the orders that waited) is served, and its reply lost.
    let faults = Faults::default().pause_reserve_batches(Arc::clone(&gate)).lose_reserve_batch_reply(2);
    let (addr, _stop) = faulty_order_service(&app, faults.clone()).await;
    let together =
        a_batch_of_together(addr, &deal, &gate, &faults, |index| (format!("buyer-{index}"), 2, PATIENT)).await;
    gate.add_permits(1);

    for (id, call) in together {
        let placed = call.await.unwrap().expect("every order of the batch is placed");
        assert_eq!(placed.name, format!("orders/{id}"));
        assert_eq!(placed.quantity, 2);
        // Its hold is the one the lost reply carried: made once, at the instant the order reads.
        let (holds, hold_time): (i64, chrono::DateTime<chrono::Utc>) =
            sqlx::query_as("select count(*), min(create_time) from reservations where id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(holds, 1);
        assert_eq!(Some(topkart::shared::time::to_proto(hold_time)), placed.create_time);
    }
    assert_eq!(faults.reserve_batch_sends(), 3, "the first call, the lost one and its resend");
    assert_eq!(faults.reserve_batch_sizes(), [1, TOGETHER], "the resend was the same batch");
    let reservations: i64 = sqlx::query_scalar("select count(*) from reservations").fetch_one(&pool).await.unwrap();
    assert_eq!(reservations, 1 + TOGETHER as i64);
    assert_eq!(app.get_deal(&deal.name).await.available_units, 100 - 1 - 2 * TOGETHER as i32);
    assert_invariants(&pool).await;
}

/// A batch's answer to one request: its reservation, or its error's code and `ErrorInfo` reason.
fn outcome(result: holdspb::ReservationResult) -> Result<holdspb::Reservation, (Code, String)> {
    match result.result.expect("a result") {
        holdspb::reservation_result::Result::Reservation(reservation) => Ok(reservation),
        holdspb::reservation_result::Result::Error(status) => {
            let status = topkart::shared::status::from_message(status);
            let reason =
                tonic_types::StatusExt::get_error_details(&status).error_info().map(|info| info.reason.clone());
            Err((status.code(), reason.unwrap_or_default()))
        }
    }
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn each_request_of_a_reserve_batch_gets_its_own_answer_as_if_it_came_alone(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let limited = dealpb::Deal { max_units_per_customer: Some(3), ..deal_request(10) };
    let deal = app.deals.clone().create_deal(dealpb::CreateDealRequest { deal: Some(limited) }).await.unwrap();
    let deal = deal.into_inner().name;
    let reserve = |id: Uuid, customer: &str, quantity| holdspb::ReserveUnitsRequest {
        deal: deal.clone(),
        reservation_id: id.to_string(),
        quantity,
        customer_id: customer.into(),
        ..Default::default()
    };
    let (first, again) = (Uuid::new_v4(), Uuid::new_v4());
    let requests = vec![
        reserve(first, "alice", 2),
        // Invalid: refused alone.
        reserve(Uuid::new_v4(), "alice", 0),
        // Past alice's limit of 3, counting the 2 the request before took.
        reserve(Uuid::new_v4(), "alice", 2),
        // A retry of the first in the same call: its hold, nothing more taken.
        reserve(first, "alice", 2),
        // Its caller's time was up before the call reached the database: left out.
        holdspb::ReserveUnitsRequest { timeout: Some(prost_types::Duration::default()), ..reserve(again, "bob", 1) },
        reserve(Uuid::new_v4(), "bob", 3),
    ];
    let mut call = app.reservations.clone();
    let results = call.batch_reserve_units(holdspb::BatchReserveUnitsRequest { requests }).await.unwrap();
    let outcomes: Vec<Result<i32, (Code, String)>> = results
        .into_inner()
        .results
        .into_iter()
        .map(|result| outcome(result).map(|reservation| reservation.quantity))
        .collect();
    assert_eq!(
        outcomes,
        [
            Ok(2),
            Err((Code::InvalidArgument, "INVALID_ARGUMENT".into())),
            Err((Code::FailedPrecondition, "PER_CUSTOMER_LIMIT_EXCEEDED".into())),
            Ok(2),
            Err((Code::DeadlineExceeded, "DEADLINE_EXCEEDED".into())),
            Ok(3),
        ]
    );
    assert_eq!(hold_states(&pool, &[first, again]).await, [Some("reserved".into()), None]);
    assert_eq!(app.get_deal(&deal).await.available_units, 10 - 2 - 3);
    // An empty call, or one beyond 500, is refused as a whole.
    let empty = call.batch_reserve_units(holdspb::BatchReserveUnitsRequest { requests: Vec::new() }).await;
    assert_invalid(empty, &["requests"]);
    assert_invariants(&pool).await;
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn each_request_of_a_confirm_batch_gets_its_own_answer_as_if_it_came_alone(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await.name;
    let mut call = app.reservations.clone();
    let (held, released) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, quantity) in [(held, 2), (released, 3)] {
        let reserve = holdspb::ReserveUnitsRequest {
            deal: deal.clone(),
            reservation_id: id.to_string(),
            quantity,
            customer_id: "alice".into(),
            ..Default::default()
        };
        call.reserve_units(reserve).await.expect("a hold");
    }
    call.release_units(holdspb::ReleaseUnitsRequest { reservation_id: released.to_string() }).await.unwrap();

    let confirm = |id: String| holdspb::ConfirmUnitsRequest { reservation_id: id };
    let requests = vec![
        confirm(held.to_string()),
        confirm(Uuid::new_v4().to_string()),
        confirm(released.to_string()),
        // Confirmed already, by the request before it in the same call: its reservation again.
        confirm(held.to_string()),
        confirm("not an id".into()),
    ];
    let results = call.batch_confirm_units(holdspb::BatchConfirmUnitsRequest { requests }).await.unwrap();
    let outcomes: Vec<Result<(i32, holdspb::reservation::State), (Code, String)>> = results
        .into_inner()
        .results
        .into_iter()
        .map(|result| outcome(result).map(|reservation| (reservation.quantity, reservation.state())))
        .collect();
    let confirmed = Ok((2, holdspb::reservation::State::Confirmed));
    assert_eq!(
        outcomes,
        [
            confirmed.clone(),
            Err((Code::NotFound, "RESERVATION_NOT_FOUND".into())),
            Err((Code::FailedPrecondition, "RESERVATION_RELEASED".into())),
            confirmed,
            Err((Code::InvalidArgument, "INVALID_ARGUMENT".into())),
        ]
    );
    assert_eq!(hold_states(&pool, &[held, released]).await, [Some("confirmed".into()), Some("released".into())]);
    assert_eq!(app.get_deal(&deal).await.available_units, 10 - 2, "a confirmation takes nothing more");
    let empty = call.batch_confirm_units(holdspb::BatchConfirmUnitsRequest { requests: Vec::new() }).await;
    assert_invalid(empty, &["requests"]);
}
