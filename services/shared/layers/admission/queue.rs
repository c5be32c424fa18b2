//! The fair queue behind admission: a fixed number of permits (calls in flight), and, when they are
//! all taken, a short FIFO queue per caller, served round robin among the callers with calls
//! waiting (deficit round robin with every call costing one). A caller with ten thousand calls gets
//! one turn in each round, like a caller with one: it cannot get ahead by hammering, and its own
//! calls keep their order (Queue-it, Cloudflare's waiting room).
//!
//! Waiting is bounded three ways: a caller may have [`QueueLimits::per_caller`] calls waiting (its
//! share), all callers together [`QueueLimits::total`], and a call waits no longer than
//! [`QueueLimits::max_wait`], or only [`QueueLimits::max_wait_overloaded`] once the queue has not
//! been empty for [`QueueLimits::overload_after`] (controlled delay, as in Facebook's "Fail at
//! Scale": a standing queue only makes every call late). What a waiting call holds is a queue entry
//! and a one-shot channel: memory, not CPU.
//!
//! A permit freed is handed to the next caller's oldest call under the queue's lock, so no
//! newcomer can take it first. A call waiting for a deal found sold out or ended is answered at once
//! ([`FairQueue::stock_out`]).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::stock::Out;
use crate::shared::metrics;

/// Who a call is queued for: its token's subject, or its address without a verified token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QueueKey {
    Subject(String),
    Peer(std::net::IpAddr),
    /// Neither is known (a connection without an address): all such calls share one queue.
    Anonymous,
}

/// How many calls run and wait, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueLimits {
    /// Calls in flight at once.
    pub in_flight: usize,
    /// Calls one caller may have waiting.
    pub per_caller: usize,
    /// Calls waiting, all callers together.
    pub total: usize,
    /// The longest a call waits while the queue drains now and then.
    pub max_wait: Duration,
    /// The longest a call waits once the queue has not been empty for `overload_after`.
    pub max_wait_overloaded: Duration,
    pub overload_after: Duration,
}

/// The queue, shared by every connection and service of one server.
pub struct FairQueue {
    limits: QueueLimits,
    state: Mutex<State>,
    /// How long admitted calls hold their permit, smoothed (µs): what a call admitted now can
    /// expect, against its deadline.
    service_micros: AtomicU64,
}

struct State {
    in_flight: usize,
    waiting: usize,
    /// The calls waiting, per caller, oldest first.
    queues: HashMap<QueueKey, VecDeque<Waiter>>,
    /// The callers with calls waiting, in the order of their next turn.
    turns: VecDeque<QueueKey>,
    next_id: u64,
    /// Since when calls have waited without the queue emptying (set as the first call queues).
    standing_since: Instant,
}

struct Waiter {
    id: u64,
    deal: Option<Uuid>,
    turn: oneshot::Sender<Turn>,
}

/// What a waiting call is told.
#[derive(Debug)]
pub enum Turn {
    /// A permit was handed to it (it is counted in flight).
    Admitted,
    /// The deal it orders is out: it is answered so without a permit.
    Out(Out),
}

/// Why a call was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Its caller has its share of calls waiting already.
    CallerShare,
    /// The queue holds as many calls as it may.
    Queue,
    /// Its deadline leaves it no time to wait.
    NoTime,
}

/// A call's place: admitted at once, waiting, or not queued.
pub enum Entry {
    Admitted(Permit),
    Waiting(Waiting),
    Full(Full),
}

impl FairQueue {
    pub fn new(limits: QueueLimits) -> Arc<Self> {
        let state = State {
            in_flight: 0,
            waiting: 0,
            queues: HashMap::new(),
            turns: VecDeque::new(),
            next_id: 0,
            standing_since: Instant::now(),
        };
        Arc::new(Self { limits, state: Mutex::new(state), service_micros: AtomicU64::new(0) })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call of `caller` (ordering `deal`, if it does) arrives, with `budget` to wait at most (what
    /// its deadline leaves): admitted, or queued to wait the least of the budget and the queue's
    /// longest wait (short once the queue has stood), or not queued.
    pub fn enter(self: &Arc<Self>, caller: QueueKey, deal: Option<Uuid>, budget: Duration) -> Entry {
        let mut state = self.state();
        if state.in_flight < self.limits.in_flight {
            state.in_flight += 1;
            return Entry::Admitted(Permit::new(self));
        }
        if budget.is_zero() {
            return Entry::Full(Full::NoTime);
        }
        if state.waiting >= self.limits.total {
            return Entry::Full(Full::Queue);
        }
        let queue_len = state.queues.get(&caller).map_or(0, VecDeque::len);
        if queue_len >= self.limits.per_caller {
            return Entry::Full(Full::CallerShare);
        }
        let now = Instant::now();
        if state.waiting == 0 {
            state.standing_since = now;
        }
        let longest = if now.saturating_duration_since(state.standing_since) >= self.limits.overload_after {
            self.limits.max_wait_overloaded
        } else {
            self.limits.max_wait
        };
        let (turn, told) = oneshot::channel();
        let id = state.next_id;
        state.next_id += 1;
        if queue_len == 0 {
            state.turns.push_back(caller.clone());
        }
        state.queues.entry(caller.clone()).or_default().push_back(Waiter { id, deal, turn });
        state.waiting += 1;
        let patience = longest.min(budget);
        let waiting = Waiting { queue: Arc::clone(self), caller, id, told: Some(told), since: now, patience };
        report(&state);
        Entry::Waiting(waiting)
    }

    /// What an admitted call can expect to hold its permit.
    pub fn expected_service(&self) -> Duration {
        Duration::from_micros(self.service_micros.load(Ordering::Relaxed))
    }

    /// A permit comes back, held `held` by a call (none when it was never used): it goes to the
    /// next caller's oldest waiting call.
    fn release(&self, held: Option<Duration>) {
        if let Some(held) = held {
            let held = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
            let smoothed = self.service_micros.load(Ordering::Relaxed);
            // An exponential average over about the last 32 calls; a lost update under a race is harmless.
            let next = if smoothed == 0 { held } else { smoothed - smoothed / 32 + held / 32 };
            self.service_micros.store(next, Ordering::Relaxed);
        }

        let mut state = self.state();
        while let Some(caller) = state.turns.pop_front() {
            let Some(queue) = state.queues.get_mut(&caller) else { continue };
            let waiter = queue.pop_front();
            if queue.is_empty() {
                state.queues.remove(&caller);
            } else {
                state.turns.push_back(caller);
            }
            let Some(waiter) = waiter else { continue };
            state.waiting -= 1;
            // A waiter in the queue is alive (leaving takes it out under this lock), unless it is
            // being dropped right now: then the next one gets the permit.
            if waiter.turn.send(Turn::Admitted).is_ok() {
                report(&state);
                return;
            }
        }
        state.in_flight -= 1;
        report(&state);
    }

    /// Takes waiting call `id` of `caller` out of the queue; false when it was no longer there
    /// (a turn was sent to it).
    fn leave(&self, caller: &QueueKey, id: u64) -> bool {
        let mut state = self.state();
        let Some(queue) = state.queues.get_mut(caller) else { return false };
        let Some(at) = queue.iter().position(|waiter| waiter.id == id) else { return false };
        queue.remove(at);
        if queue.is_empty() {
            state.queues.remove(caller);
            state.turns.retain(|turn| turn != caller);
        }
        state.waiting -= 1;
        report(&state);
        true
    }

    /// `deal` is out: every call waiting to order it is told so at once.
    pub fn stock_out(&self, deal: Uuid, out: Out) {
        let mut state = self.state();
        let mut told = Vec::new();
        for queue in state.queues.values_mut().filter(|queue| queue.iter().any(|waiter| waiter.deal == Some(deal))) {
            let (out_of_stock, rest): (VecDeque<Waiter>, VecDeque<Waiter>) =
                std::mem::take(queue).into_iter().partition(|waiter| waiter.deal == Some(deal));
            *queue = rest;
            told.extend(out_of_stock);
        }
        if told.is_empty() {
            return;
        }
        state.queues.retain(|_, queue| !queue.is_empty());
        let State { turns, queues, .. } = &mut *state;
        turns.retain(|caller| queues.contains_key(caller));
        state.waiting -= told.len();
        // Told under the lock, so that a waiter whose time runs out meanwhile finds its answer.
        for waiter in told {
            let _ = waiter.turn.send(Turn::Out(out));
        }
        report(&state);
    }
}

fn report(state: &State) {
    metrics::admission_queue(state.waiting, state.turns.len());
}

/// An admitted call's permit, counted in flight: given back (to the next waiting call) when
/// dropped.
pub struct Permit {
    queue: Arc<FairQueue>,
    since: Instant,
}

impl Permit {
    fn new(queue: &Arc<FairQueue>) -> Self {
        metrics::in_flight(1.0);
        Self { queue: Arc::clone(queue), since: Instant::now() }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        metrics::in_flight(-1.0);
        self.queue.release(Some(self.since.elapsed()));
    }
}

/// A call waiting in the queue. Dropping it (the caller went away) takes it out, or gives back the
/// permit it was handed meanwhile.
pub struct Waiting {
    queue: Arc<FairQueue>,
    caller: QueueKey,
    id: u64,
    told: Option<oneshot::Receiver<Turn>>,
    since: Instant,
    /// How long it may wait.
    patience: Duration,
}

/// How a wait ended.
pub enum Waited {
    Admitted(Permit),
    Out(Out),
    /// It waited as long as it could.
    TimedOut,
}

impl Waiting {
    /// Waits for a turn, at most its patience.
    pub async fn wait(mut self) -> Waited {
        let Some(told) = self.told.as_mut() else { return Waited::TimedOut };
        let outcome = match tokio::time::timeout(self.patience, told).await {
            Ok(Ok(turn)) => Some(turn),
            // The sender is dropped only after a turn is sent or the waiter left: not here.
            Ok(Err(_)) => None,
            // Out of time, unless a turn was sent as the time ran out (under the queue's lock, so
            // it is there to be read): then it is the answer.
            Err(_elapsed) if self.queue.leave(&self.caller, self.id) => None,
            Err(_elapsed) => self.told.as_mut().and_then(|told| told.try_recv().ok()),
        };
        self.told = None;
        metrics::admission_wait(self.since.elapsed().as_secs_f64(), matches!(outcome, Some(Turn::Admitted)));
        match outcome {
            Some(Turn::Admitted) => Waited::Admitted(Permit::new(&self.queue)),
            Some(Turn::Out(out)) => Waited::Out(out),
            None => Waited::TimedOut,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut told) = self.told.take() else { return };
        if !self.queue.leave(&self.caller, self.id) {
            told.close();
            if let Ok(Turn::Admitted) = told.try_recv() {
                self.queue.release(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(in_flight: usize, per_caller: usize, total: usize) -> QueueLimits {
        QueueLimits {
            in_flight,
            per_caller,
            total,
            max_wait: Duration::from_secs(5),
            max_wait_overloaded: Duration::from_millis(10),
            overload_after: Duration::from_millis(30),
        }
    }

    /// A budget longer than any wait.
    const LONG: Duration = Duration::from_secs(60);

    fn caller(name: &str) -> QueueKey {
        QueueKey::Subject(name.into())
    }

    fn admitted(entry: Entry) -> Permit {
        match entry {
            Entry::Admitted(permit) => permit,
            _ => panic!("not admitted at once"),
        }
    }

    fn waiting(entry: Entry) -> Waiting {
        match entry {
            Entry::Waiting(waiting) => waiting,
            _ => panic!("not queued"),
        }
    }

    /// Starts waiting for a turn; the result tells who got one.
    fn wait_in_task(
        waiting: Waiting,
        label: &'static str,
        turns: &tokio::sync::mpsc::UnboundedSender<(&'static str, Permit)>,
    ) {
        let turns = turns.clone();
        tokio::spawn(async move {
            if let Waited::Admitted(permit) = waiting.wait().await {
                let _ = turns.send((label, permit));
            }
        });
    }

    #[tokio::test]
    async fn freed_permits_go_to_the_callers_in_turn_and_each_callers_calls_in_order() {
        let queue = FairQueue::new(limits(1, 10, 100));
        let first = admitted(queue.enter(caller("loud"), None, LONG));
        let (turns, mut turned) = tokio::sync::mpsc::unbounded_channel();
        for label in ["loud-1", "loud-2", "loud-3", "loud-4"] {
            wait_in_task(waiting(queue.enter(caller("loud"), None, LONG)), label, &turns);
        }
        wait_in_task(waiting(queue.enter(caller("quiet"), None, LONG)), "quiet-1", &turns);
        tokio::task::yield_now().await;

        drop(first);
        let mut order = Vec::new();
        for _ in 0..5 {
            let (label, permit) = turned.recv().await.unwrap();
            order.push(label);
            drop(permit);
        }
        // The quiet caller's one call waited behind one of the loud caller's four, not all four.
        assert_eq!(order, ["loud-1", "quiet-1", "loud-2", "loud-3", "loud-4"]);
        assert_eq!(queue.state().in_flight, 0);
        assert_eq!(queue.state().waiting, 0);
    }

    #[tokio::test]
    async fn a_caller_beyond_its_share_and_any_call_beyond_the_total_are_not_queued() {
        let queue = FairQueue::new(limits(1, 2, 3));
        let _running = admitted(queue.enter(caller("a"), None, LONG));
        let _a1 = waiting(queue.enter(caller("a"), None, LONG));
        let _a2 = waiting(queue.enter(caller("a"), None, LONG));
        assert!(matches!(queue.enter(caller("a"), None, LONG), Entry::Full(Full::CallerShare)));
        let _b1 = waiting(queue.enter(caller("b"), None, LONG));
        assert!(matches!(queue.enter(caller("c"), None, LONG), Entry::Full(Full::Queue)));
    }

    #[tokio::test]
    async fn a_call_that_gives_up_leaves_the_queue_and_the_permit_goes_to_the_next() {
        let queue = FairQueue::new(limits(1, 10, 100));
        let running = admitted(queue.enter(caller("a"), None, LONG));
        let gone = waiting(queue.enter(caller("b"), None, LONG));
        let timed_out = waiting(queue.enter(caller("c"), None, Duration::from_millis(5)));
        let next = waiting(queue.enter(caller("d"), None, LONG));
        drop(gone);
        assert!(matches!(timed_out.wait().await, Waited::TimedOut));
        assert_eq!(queue.state().waiting, 1);
        drop(running);
        assert!(matches!(next.wait().await, Waited::Admitted(_)));
        let state = queue.state();
        assert_eq!((state.in_flight, state.waiting), (0, 0), "its permit came back when dropped");
    }

    #[tokio::test]
    async fn a_permit_handed_to_a_call_that_went_away_comes_back() {
        let queue = FairQueue::new(limits(1, 10, 100));
        let running = admitted(queue.enter(caller("a"), None, LONG));
        let vanishing = waiting(queue.enter(caller("b"), None, LONG));
        drop(running);
        // The turn was sent to it; it never read it.
        drop(vanishing);
        assert_eq!(queue.state().in_flight, 0);
        let _again = admitted(queue.enter(caller("c"), None, LONG));
    }

    #[tokio::test]
    async fn calls_waiting_for_a_deal_that_is_out_are_answered_at_once_and_the_rest_wait_on() {
        let queue = FairQueue::new(limits(1, 10, 100));
        let running = admitted(queue.enter(caller("a"), None, LONG));
        let (sold, other) = (Uuid::new_v4(), Uuid::new_v4());
        let for_sold = waiting(queue.enter(caller("b"), Some(sold), LONG));
        let for_other = waiting(queue.enter(caller("b"), Some(other), LONG));
        queue.stock_out(sold, Out::SoldOut);
        assert!(matches!(for_sold.wait().await, Waited::Out(Out::SoldOut)));
        drop(running);
        assert!(matches!(for_other.wait().await, Waited::Admitted(_)));
    }

    #[tokio::test]
    async fn waits_get_short_once_the_queue_has_stood_for_a_while_and_never_outlast_the_budget() {
        let queue = FairQueue::new(limits(1, 10, 100));
        let _running = admitted(queue.enter(caller("a"), None, LONG));
        let first = waiting(queue.enter(caller("b"), None, LONG));
        assert_eq!(first.patience, Duration::from_secs(5), "the queue starts standing now");
        let short_budget = waiting(queue.enter(caller("c"), None, Duration::from_millis(7)));
        assert_eq!(short_budget.patience, Duration::from_millis(7), "no longer than its deadline allows");
        tokio::time::sleep(Duration::from_millis(40)).await;
        let late = waiting(queue.enter(caller("d"), None, LONG));
        assert_eq!(late.patience, Duration::from_millis(10), "a standing queue");
        drop((first, short_budget, late));
        // Empty again: the next call to wait starts a new stand.
        let fresh = waiting(queue.enter(caller("e"), None, LONG));
        assert_eq!(fresh.patience, Duration::from_secs(5));
        assert!(matches!(queue.enter(caller("f"), None, Duration::ZERO), Entry::Full(Full::NoTime)));
    }
}
