//! The hot paths of reserving, coalesced ([`crate::shared::coalesce`]): the reservations of one deal
//! that arrive while its previous batch is in the database go together as the next batch, in one
//! transaction and one commit, each with its own exact answer; confirmations of holds likewise, in
//! one statement.
//!
//! A deal's row takes one transaction at a time, and each holds the row's lock through its commit (a
//! disk flush). One transaction per reservation caps a deal at about one flush per sale; a batch
//! shares the lock and the flush among everyone who came while the last one ran. Several
//! deal-service instances may batch the same deal: their batches take the row lock in turn.
//!
//! A batch call (BatchReserveUnits, BatchConfirmUnits) feeds its requests into these same batches,
//! all at once, so that they share one transaction (with whatever else waits for the deal); each
//! request of it that carries a deadline is left out of a batch that starts after it.
//!
//! The batches run on the sale's thread ([`RuntimeThread`]) with a pool of their own, whose
//! connections it opens and whose replies it reads: a transaction's round trips never wait behind
//! the main thread's work (thousands of WatchDeal messages, say).

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::Instant,
};

use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

use crate::shared::{
    coalesce::{BatchFuture, Coalescer},
    metrics,
    runtime_thread::{RuntimeThread, run_on},
};

use crate::deal::{
    Database,
    domain::{Reservation, ReservationState},
    error::DealError,
    store as deals,
};

use super::{
    allocation::{self, Allocation, UnitRequest},
    store,
};

/// The most requests one batch takes; the rest go in the next one. Also the most one batch call
/// may carry, so that its requests fit one batch.
pub const MAX_BATCH: usize = 500;

type Answer = Result<Reservation, DealError>;

/// The answer to one request of a batch call, coming.
pub type AnswerFuture = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// The sale's thread and its pool, which nothing else uses: made on that thread's runtime, so that
/// its connections are opened, their replies read and its upkeep done there.
pub struct Sale {
    thread: RuntimeThread,
    pool: PgPool,
    /// Its connections on /metrics (`pool="sale"`).
    _report: metrics::PoolReport,
}

impl Sale {
    /// Starts the thread, and a pool of at most `database.sale_connections` to `database.pool`'s
    /// database, connected when first used.
    pub fn start(database: &Database) -> std::io::Result<Self> {
        let thread = RuntimeThread::start("sale")?;
        let pool = {
            // sqlx starts the pool's upkeep task on the runtime it is made in.
            let _on_sale_thread = thread.handle().enter();
            PgPoolOptions::new()
                .max_connections(database.sale_connections.max(1))
                .acquire_timeout(database.pool.options().get_acquire_timeout())
                .connect_lazy_with((*database.pool.connect_options()).clone())
        };
        let report = metrics::PoolReport::start("sale", pool.clone());
        Ok(Self { thread, pool, _report: report })
    }

    /// Closes the pool's connections, then stops the thread. Batches still running then fail.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

/// Reservations per deal, and confirmations, coalesced, run on the sale's thread.
pub struct Batches {
    reservations: Arc<Coalescer<Uuid, UnitRequest, Answer>>,
    confirmations: Arc<Coalescer<(), Uuid, Answer>>,
}

impl Batches {
    /// Batches that run on `sale`'s thread, over its pool; they fail once it is closed.
    pub fn new(sale: &Sale) -> Self {
        let (runtime, pool) = (sale.thread.handle().clone(), sale.pool.clone());
        let reservations = Coalescer::new(MAX_BATCH, move |deal_id, requests: Vec<UnitRequest>| {
            let pool = pool.clone();
            on_sale_thread(&runtime, requests.len(), async move { reserve_batch(&pool, deal_id, &requests).await })
        });
        let (runtime, pool) = (sale.thread.handle().clone(), sale.pool.clone());
        let confirmations = Coalescer::new(MAX_BATCH, move |(), ids: Vec<Uuid>| {
            let pool = pool.clone();
            on_sale_thread(&runtime, ids.len(), async move { confirm_batch(&pool, &ids).await })
        });
        Self { reservations, confirmations }
    }

    /// Reserves for `request` from deal `deal_id`, with the deal's next batch.
    pub async fn reserve(&self, deal_id: Uuid, request: UnitRequest) -> Answer {
        self.reservations.submit(deal_id, request).await.unwrap_or_else(|| Err(batch_crashed()))
    }

    /// Confirms hold `id`, with the next batch of confirmations.
    pub async fn confirm(&self, id: Uuid) -> Answer {
        self.confirmations.submit((), id).await.unwrap_or_else(|| Err(batch_crashed()))
    }

    /// Reserves for every request of `requests` from deal `deal_id`, all in the deal's next batch;
    /// a request whose deadline has passed when that batch starts is left out of it
    /// (`DeadlineExceeded`). One answer per request, in order.
    pub fn reserve_all(&self, deal_id: Uuid, requests: Vec<(UnitRequest, Option<Instant>)>) -> Vec<AnswerFuture> {
        let deadlines: Vec<Option<Instant>> = requests.iter().map(|(_, deadline)| *deadline).collect();
        answers_of(self.reservations.submit_all(deal_id, requests), deadlines)
    }

    /// Confirms every hold of `ids`, in the next batch of confirmations.
    pub fn confirm_all(&self, ids: Vec<Uuid>) -> Vec<AnswerFuture> {
        let deadlines = vec![None; ids.len()];
        answers_of(self.confirmations.submit_all((), ids.into_iter().map(|id| (id, None))), deadlines)
    }
}

fn answers_of(
    receivers: Vec<tokio::sync::oneshot::Receiver<Answer>>,
    deadlines: Vec<Option<Instant>>,
) -> Vec<AnswerFuture> {
    receivers
        .into_iter()
        .zip(deadlines)
        .map(|(receiver, deadline)| -> AnswerFuture {
            Box::pin(async move {
                receiver.await.unwrap_or_else(|_| match deadline {
                    Some(deadline) if deadline <= Instant::now() => Err(DealError::DeadlineExceeded),
                    _ => Err(batch_crashed()),
                })
            })
        })
        .collect()
}

/// `batch`, run on the sale's thread: its `requests` answers, or each the same failure if it
/// panicked (or the thread has stopped: the server is gone).
fn on_sale_thread(
    runtime: &tokio::runtime::Handle,
    requests: usize,
    batch: impl Future<Output = Vec<Answer>> + Send + 'static,
) -> BatchFuture<Answer> {
    let running = run_on(runtime, batch);
    Box::pin(async move { running.await.unwrap_or_else(|| (0..requests).map(|_| Err(batch_crashed())).collect()) })
}

fn batch_crashed() -> DealError {
    DealError::Internal("the batch serving this request crashed")
}

/// Answers every request of a batch with the same failure.
fn failed<T>(requests: &[T], err: sqlx::Error) -> Vec<Answer> {
    let err = DealError::from(err);
    requests.iter().map(|_| Err(err.clone())).collect()
}

/// One batch: every request's answer, in order. A database failure fails the whole batch (nothing
/// of it was committed).
async fn reserve_batch(pool: &PgPool, deal_id: Uuid, requests: &[UnitRequest]) -> Vec<Answer> {
    metrics::reservation_batch(requests.len());
    let answers = try_reserve_batch(pool, deal_id, requests).await.unwrap_or_else(|err| failed(requests, err));
    for answer in &answers {
        metrics::reservation(match answer {
            Ok(_) => "reserved",
            Err(err) => err.reason(),
        });
    }
    answers
}

async fn try_reserve_batch(pool: &PgPool, deal_id: Uuid, requests: &[UnitRequest]) -> Result<Vec<Answer>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut customers: Vec<&str> = requests.iter().filter_map(|request| request.customer.as_deref()).collect();
    customers.sort_unstable();
    customers.dedup();
    let Some(deals::Sale { deal, at, held }) = deals::lock_deal_for_sale(&mut tx, deal_id, &customers).await? else {
        return Ok(requests.iter().map(|_| Err(DealError::DealNotFound)).collect());
    };
    // Under the lock: a retry of an id that another instance's batch is inserting must find that
    // batch's hold, or it would be decided again against units and a limit that already count it.
    let ids: Vec<Uuid> = requests.iter().map(|request| request.id).collect();
    let existing: HashMap<Uuid, Reservation> = store::reservations_by_id(&mut tx, &ids)
        .await?
        .into_iter()
        .map(|reservation| (reservation.id, reservation))
        .collect();
    let existing_ids: HashSet<Uuid> = existing.keys().copied().collect();
    let allocations = allocation::allocate(&deal, requests, &existing_ids, &held);
    let takes: Vec<store::Take<'_>> = requests
        .iter()
        .zip(&allocations)
        .filter(|(_, allocation)| matches!(allocation, Allocation::Take))
        .map(|(request, _)| store::Take {
            id: request.id,
            quantity: request.quantity,
            customer: request.customer.as_deref(),
        })
        .collect();
    let made: HashMap<Uuid, Reservation> = if takes.is_empty() {
        HashMap::new()
    } else {
        store::take_units(&mut tx, deal_id, at, &takes).await?.into_iter().map(|made| (made.id, made)).collect()
    };
    tx.commit().await?;

    let mut answers = Vec::with_capacity(requests.len());
    for (request, allocation) in requests.iter().zip(allocations) {
        let answer = match allocation {
            Allocation::Refused(refusal) => Err(refusal),
            Allocation::Existing => allocation::same_reservation(existing[&request.id].clone(), deal_id, request),
            Allocation::Take | Allocation::SameAsEarlier => match made.get(&request.id) {
                Some(reservation) => allocation::same_reservation(reservation.clone(), deal_id, request),
                // Another transaction inserted this id first: answer from what it made.
                None => match store::get_reservation(pool, request.id).await? {
                    Some(theirs) => allocation::same_reservation(theirs, deal_id, request),
                    // Reservations are never deleted: this cannot happen.
                    None => Err(DealError::Internal("a reservation inserted by another transaction vanished")),
                },
            },
        };
        // The order being placed takes its approve deadline from the deal's window as it is now.
        let window = deal.terms.approval_window_seconds;
        answers.push(answer.map(|reservation| Reservation { approval_window_seconds: window, ..reservation }));
    }
    Ok(answers)
}

/// Confirms a batch of holds in one statement; a hold that was not held is answered from what it
/// is: confirmed before (a retry, answered the same), released, or unknown.
async fn confirm_batch(pool: &PgPool, ids: &[Uuid]) -> Vec<Answer> {
    try_confirm_batch(pool, ids).await.unwrap_or_else(|err| failed(ids, err))
}

async fn try_confirm_batch(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Answer>, sqlx::Error> {
    let mut found: HashMap<Uuid, Reservation> =
        store::confirm(pool, ids).await?.into_iter().map(|confirmed| (confirmed.id, confirmed)).collect();
    let unconfirmed: Vec<Uuid> = ids.iter().filter(|id| !found.contains_key(id)).copied().collect();
    if !unconfirmed.is_empty() {
        let mut conn = pool.acquire().await?;
        found.extend(store::reservations_by_id(&mut conn, &unconfirmed).await?.into_iter().map(|r| (r.id, r)));
    }
    Ok(ids
        .iter()
        .map(|id| match found.get(id) {
            None => Err(DealError::ReservationNotFound),
            Some(reservation) if reservation.state == ReservationState::Released => Err(DealError::ReservationReleased),
            Some(reservation) => Ok(reservation.clone()),
        })
        .collect())
}
