//! Faults injected between order-service and deal-service, at the seam order-service calls
//! deal-service through (`HoldCalls`): a decorator over the real calls that holds them back, loses
//! their replies, or cuts deal-service off after it made a hold, as a broken network would.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use std::net::SocketAddr;

use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::{net::TcpListener, runtime::Runtime, sync::Semaphore};
use tonic::{Code, Request, Status};
use topkart::{
    order::placing::holds::{DealsClient, HoldCalls, Reply},
    proto::holds as pb,
};

use crate::helpers::{deals_client, test_settings};

/// An order-service that can crash: it runs on a runtime of its own, with a pool of its own, and a
/// crash stops that runtime at once, as the end of its process would: no task of it runs again, so
/// nothing it would have done next (recording an order, abandoning an attempt) happens.
pub struct CrashableOrderService {
    pub addr: SocketAddr,
    runtime: Option<Runtime>,
}

impl CrashableOrderService {
    /// Starts order-service on port 0 over `pool`'s database, calling the deal-service at
    /// `deal_addr` with `faults` injected.
    pub async fn start(pool: &PgPool, deal_addr: SocketAddr, faults: Faults) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let options = (*pool.connect_options()).clone();
        let (started, addr) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let pool = PgPoolOptions::new().max_connections(4).connect_with(options).await.unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _ = started.send(listener.local_addr().unwrap());
            let deals = faults.on(deals_client(deal_addr));
            topkart::order::run(listener, pool, deals, test_settings(), std::future::pending()).await
        });
        Self { addr: addr.await.unwrap(), runtime: Some(runtime) }
    }

    /// Stops every task of the service where it is.
    pub fn crash(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for CrashableOrderService {
    fn drop(&mut self) {
        // A runtime may not be dropped where a test's runtime runs; it stops in the background.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Faults to inject; none by default. Clones share their counters and gates.
#[derive(Clone, Default)]
pub struct Faults {
    /// Every n-th reservation (0: none) is cut off once deal-service has made its hold: its result,
    /// and every later call for its id (a resend, the release of its abandoned attempt), fail as
    /// UNAVAILABLE. Its hold is left behind, for the expiry worker.
    cut_off_every: u64,
    reservations_seen: Arc<AtomicU64>,
    cut_off: Arc<Mutex<HashSet<String>>>,
    /// Every BatchReserveUnits call's reply waits here, after deal-service made its holds, for a
    /// permit per reservation.
    after_reserve: Option<Arc<Semaphore>>,
    /// Every BatchReserveUnits call (but a resend) waits here, before it is sent, for a permit.
    before_reserve: Option<Arc<Semaphore>>,
    /// The size of every BatchReserveUnits call, as it reached the seam (resends not counted).
    batch_sizes: Arc<Mutex<Vec<usize>>>,
    /// The reservations sent so far: a call whose first one was sent before is a resend.
    sent: Arc<Mutex<HashSet<String>>>,
    /// The reply of this BatchReserveUnits call (counted from 1, resends included) is lost after
    /// deal-service made it (0: none).
    lose_reply_of_call: u64,
    calls_sent: Arc<AtomicU64>,
}

impl Faults {
    /// Cuts every `n`-th reservation off from order-service once its hold is made.
    pub fn cut_off_after_reserve_every(n: u64) -> Self {
        Self { cut_off_every: n, ..Self::default() }
    }

    /// Holds every reservation's reply, once its hold is made, until `gate` gives it a permit
    /// (which it keeps): the test decides how long calls stay in flight.
    pub fn pause_after_reserve(gate: Arc<Semaphore>) -> Self {
        Self { after_reserve: Some(gate), ..Self::default() }
    }

    /// Also holds every BatchReserveUnits call, before it is sent, until `gate` gives it a permit.
    pub fn pause_reserve_batches(self, gate: Arc<Semaphore>) -> Self {
        Self { before_reserve: Some(gate), ..self }
    }

    /// Also loses the reply of the `n`-th BatchReserveUnits call sent (resends count): deal-service
    /// has served it, and order-service sees the stream fail as a broken connection would make it.
    pub fn lose_reserve_batch_reply(self, n: u64) -> Self {
        Self { lose_reply_of_call: n, ..self }
    }

    /// The size of every BatchReserveUnits call made so far, in order, resends left out.
    pub fn reserve_batch_sizes(&self) -> Vec<usize> {
        self.batch_sizes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How many BatchReserveUnits calls were sent so far, resends included.
    pub fn reserve_batch_sends(&self) -> u64 {
        self.calls_sent.load(Ordering::Relaxed)
    }

    /// `deals` with these faults injected into its calls.
    pub fn on(&self, deals: DealsClient) -> DealsClient {
        let faults = self.clone();
        deals.wrapped(move |calls| Arc::new(Faulty { calls, faults }))
    }

    /// Whether the call of `ids` is sent for the first time, not resent.
    fn first_send(&self, ids: &[String]) -> bool {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        let resend = ids.first().is_some_and(|first| sent.contains(first));
        sent.extend(ids.iter().cloned());
        !resend
    }

    fn is_cut_off(&self, id: &str) -> bool {
        self.cut_off.lock().unwrap_or_else(PoisonError::into_inner).contains(id)
    }

    /// Cuts off the reservations among `ids` whose turn it is (each counted the first time seen),
    /// and fails the results of every reservation cut off.
    fn cut_off_results(&self, ids: &[String], response: &mut pb::BatchReserveUnitsResponse) {
        let mut cut_off = self.cut_off.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, result) in ids.iter().zip(&mut response.results) {
            let fresh = !cut_off.contains(id);
            if fresh && self.cut_off_every > 0 {
                let seen = self.reservations_seen.fetch_add(1, Ordering::Relaxed) + 1;
                if seen.is_multiple_of(self.cut_off_every) {
                    cut_off.insert(id.clone());
                }
            }
            if cut_off.contains(id) {
                result.result = Some(pb::reservation_result::Result::Error(tonic_types::pb::Status {
                    code: Code::Unavailable as i32,
                    message: "injected fault: deal-service cut off".into(),
                    details: Vec::new(),
                }));
            }
        }
    }
}

/// The real calls, with [`Faults`] injected.
struct Faulty {
    calls: Arc<dyn HoldCalls>,
    faults: Faults,
}

impl HoldCalls for Faulty {
    fn batch_reserve(&self, request: Request<pb::BatchReserveUnitsRequest>) -> Reply<pb::BatchReserveUnitsResponse> {
        let (calls, faults) = (Arc::clone(&self.calls), self.faults.clone());
        Box::pin(async move {
            let ids: Vec<String> = request.get_ref().requests.iter().map(|r| r.reservation_id.clone()).collect();
            if faults.first_send(&ids) {
                faults.batch_sizes.lock().unwrap_or_else(PoisonError::into_inner).push(ids.len());
                if let Some(gate) = &faults.before_reserve
                    && let Ok(permit) = gate.acquire().await
                {
                    permit.forget();
                }
            }
            let mut reply = calls.batch_reserve(request).await?;
            let call = faults.calls_sent.fetch_add(1, Ordering::Relaxed) + 1;
            if call == faults.lose_reply_of_call {
                return Err(Status::unknown("injected fault: the reply was lost"));
            }
            if let Some(gate) = &faults.after_reserve
                && let Ok(permits) = gate.acquire_many(ids.len() as u32).await
            {
                permits.forget();
            }
            faults.cut_off_results(&ids, reply.get_mut());
            Ok(reply)
        })
    }

    fn batch_confirm(&self, request: Request<pb::BatchConfirmUnitsRequest>) -> Reply<pb::BatchConfirmUnitsResponse> {
        self.calls.batch_confirm(request)
    }

    fn release(&self, request: Request<pb::ReleaseUnitsRequest>) -> Reply<pb::Reservation> {
        if self.faults.is_cut_off(&request.get_ref().reservation_id) {
            return Box::pin(std::future::ready(Err(Status::unavailable("injected fault: deal-service cut off"))));
        }
        self.calls.release(request)
    }
}
