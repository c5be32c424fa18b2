//! Coalescing: requests for one key that arrive while that key's previous batch is being served wait
//! in the key's queue and are served together as the next batch, each with its own answer.
//!
//! No request waits for a timer: an idle key's first request goes at once, alone; batches grow only
//! as long as the work they wait for takes. deal-service uses it to take one deal's reservations in
//! one transaction and one commit, and to confirm holds in one statement.
//!
//! A request whose caller has gone (its deadline passed, or it cancelled) before its batch starts is
//! left out of the batch: no work is done for nobody. A caller that stops waiting drops its answer
//! (a cancelled call); a request may also carry its deadline, for callers that wait on several
//! answers at once (a batch call, whose requests each have their own). [`Coalescer::submit_all`]
//! queues several requests of a key at once, so they go in the same batch.

use std::{
    collections::{HashMap, hash_map::Entry},
    future::Future,
    hash::Hash,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use tokio::sync::oneshot;

/// The future that serves one batch: one answer per request, in order.
pub type BatchFuture<A> = Pin<Box<dyn Future<Output = Vec<A>> + Send>>;

type ServeBatch<K, R, A> = Box<dyn Fn(K, Vec<R>) -> BatchFuture<A> + Send + Sync>;

struct Pending<R, A> {
    request: R,
    reply: oneshot::Sender<A>,
    /// When its caller stops waiting, if it said.
    deadline: Option<Instant>,
}

impl<R, A> Pending<R, A> {
    fn caller_gone(&self, now: Instant) -> bool {
        self.reply.is_closed() || self.deadline.is_some_and(|deadline| deadline <= now)
    }
}

/// Per-key queues and the function that serves a batch.
pub struct Coalescer<K, R, A> {
    /// A key has an entry while a task is serving its queue; requests join the entry's queue.
    queues: Mutex<HashMap<K, Vec<Pending<R, A>>>>,
    max_batch: usize,
    serve: ServeBatch<K, R, A>,
}

impl<K, R, A> Coalescer<K, R, A>
where
    K: Hash + Eq + Copy + Send + Sync + 'static,
    R: Send + 'static,
    A: Send + 'static,
{
    /// Batches of at most `max_batch` requests, each served by `serve`, which must return exactly
    /// one answer per request, in order.
    pub fn new(max_batch: usize, serve: impl Fn(K, Vec<R>) -> BatchFuture<A> + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self { queues: Mutex::new(HashMap::new()), max_batch: max_batch.max(1), serve: Box::new(serve) })
    }

    /// Serves `request` with the next batch of `key`. `None` only if serving its batch panicked.
    pub async fn submit(self: &Arc<Self>, key: K, request: R) -> Option<A> {
        let answer = self.submit_all(key, [(request, None)]).pop()?;
        answer.await.ok()
    }

    /// Queues `requests` for `key` together (so that they go in the same batch, the batch size
    /// allowing), each with the deadline past which it is left out of a batch not started yet.
    /// Each receiver gets its request's answer; an error if it was left out, or if serving its
    /// batch panicked. Dropping a receiver leaves its request out likewise.
    pub fn submit_all(
        self: &Arc<Self>,
        key: K,
        requests: impl IntoIterator<Item = (R, Option<Instant>)>,
    ) -> Vec<oneshot::Receiver<A>> {
        let (pending, answers): (Vec<_>, Vec<_>) = requests
            .into_iter()
            .map(|(request, deadline)| {
                let (reply, answer) = oneshot::channel();
                (Pending { request, reply, deadline }, answer)
            })
            .unzip();
        if pending.is_empty() {
            return answers;
        }
        let first = match self.queues().entry(key) {
            Entry::Occupied(mut queue) => {
                queue.get_mut().extend(pending);
                false
            }
            Entry::Vacant(entry) => {
                entry.insert(pending);
                true
            }
        };
        if first {
            // A task of its own, so that a caller giving up (a deadline) never strands the others.
            tokio::spawn(Arc::clone(self).drain(key));
        }
        answers
    }

    fn queues(&self) -> MutexGuard<'_, HashMap<K, Vec<Pending<R, A>>>> {
        // Every change under the lock is a single call, so a panic cannot leave the map half-changed.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves the key's queue batch after batch until it is empty, then removes the entry under the
    /// same lock as the check, so no request joins a queue nobody serves.
    async fn drain(self: Arc<Self>, key: K) {
        let mut on_panic = RemoveOnPanic { coalescer: &self, key, armed: true };
        loop {
            let batch: Vec<Pending<R, A>> = {
                let mut queues = self.queues();
                let Some(queue) = queues.get_mut(&key) else { return };
                if queue.is_empty() {
                    queues.remove(&key);
                    on_panic.armed = false;
                    return;
                }
                // Callers that gave up while waiting are dropped here, without counting to the batch.
                let now = Instant::now();
                queue.retain(|pending| !pending.caller_gone(now));
                let size = queue.len().min(self.max_batch);
                queue.drain(..size).collect()
            };
            if batch.is_empty() {
                continue;
            }
            let (requests, replies): (Vec<R>, Vec<oneshot::Sender<A>>) =
                batch.into_iter().map(|pending| (pending.request, pending.reply)).unzip();
            let answers = (self.serve)(key, requests).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The caller may have given up while its batch ran; the batch was served all the same.
                let _ = reply.send(answer);
            }
        }
    }
}

/// Removes a key's entry if serving it panics: the requests waiting in it get `None` (their senders
/// are dropped) and the next request starts a new task.
struct RemoveOnPanic<'a, K: Hash + Eq, R, A> {
    coalescer: &'a Coalescer<K, R, A>,
    key: K,
    armed: bool,
}

impl<K: Hash + Eq, R, A> Drop for RemoveOnPanic<'_, K, R, A> {
    fn drop(&mut self) {
        if self.armed {
            self.coalescer.queues.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use super::*;

    /// A coalescer that doubles numbers, and records the size of every batch; each batch first waits
    /// for a permit of `gate`, so the test decides when batches finish.
    fn doubler(gate: Arc<Semaphore>, sizes: Arc<Mutex<Vec<usize>>>) -> Arc<Coalescer<u8, u32, u32>> {
        Coalescer::new(3, move |_key, requests: Vec<u32>| {
            let gate = Arc::clone(&gate);
            let sizes = Arc::clone(&sizes);
            Box::pin(async move {
                gate.acquire().await.unwrap().forget();
                sizes.lock().unwrap().push(requests.len());
                requests.into_iter().map(|n| n * 2).collect()
            })
        })
    }

    #[tokio::test]
    async fn requests_arriving_during_a_batch_go_together_in_the_next_each_with_its_own_answer() {
        let gate = Arc::new(Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let coalescer = doubler(Arc::clone(&gate), Arc::clone(&sizes));
        let first = tokio::spawn({
            let coalescer = Arc::clone(&coalescer);
            async move { coalescer.submit(1, 10).await }
        });
        tokio::task::yield_now().await;
        // While the first batch waits at the gate, five more arrive: the next batches take 3, then 2.
        let later: Vec<_> = (1..=5)
            .map(|n| {
                let coalescer = Arc::clone(&coalescer);
                tokio::spawn(async move { coalescer.submit(1, n).await })
            })
            .collect();
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(3);
        assert_eq!(first.await.unwrap(), Some(20));
        for (n, answer) in (1..=5).zip(later) {
            assert_eq!(answer.await.unwrap(), Some(n * 2));
        }
        assert_eq!(*sizes.lock().unwrap(), [1, 3, 2]);
    }

    #[tokio::test]
    async fn keys_are_served_independently_and_an_idle_key_starts_again() {
        let gate = Arc::new(Semaphore::new(100));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let coalescer = doubler(gate, Arc::clone(&sizes));
        assert_eq!(coalescer.submit(1, 1).await, Some(2));
        assert_eq!(coalescer.submit(2, 2).await, Some(4));
        assert_eq!(coalescer.submit(1, 3).await, Some(6));
        assert!(coalescer.queues().is_empty());
    }

    #[tokio::test]
    async fn a_caller_gone_before_its_batch_starts_is_left_out_of_it() {
        let gate = Arc::new(Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let coalescer = doubler(Arc::clone(&gate), Arc::clone(&sizes));
        let spawn = |n| {
            let coalescer = Arc::clone(&coalescer);
            tokio::spawn(async move { coalescer.submit(1, n).await })
        };
        let first = spawn(1);
        tokio::task::yield_now().await;
        let (gone, stays) = (spawn(2), spawn(3));
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        // Request 2's caller gives up while request 1's batch runs: the next batch is request 3 alone.
        gone.abort();
        let _ = gone.await;
        gate.add_permits(2);
        assert_eq!(first.await.unwrap(), Some(2));
        assert_eq!(stays.await.unwrap(), Some(6));
        assert_eq!(*sizes.lock().unwrap(), [1, 1]);
    }

    #[tokio::test]
    async fn requests_submitted_together_go_in_one_batch_and_one_past_its_deadline_is_left_out() {
        let gate = Arc::new(Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let coalescer = doubler(Arc::clone(&gate), Arc::clone(&sizes));
        let first = coalescer.submit_all(1, [(1, None)]);
        tokio::task::yield_now().await;
        // While the first batch waits, three come together, one of them with a deadline that passes
        // before their batch starts: it is left out, and the two others go together.
        let passed = Instant::now();
        let together = coalescer.submit_all(1, [(2, None), (3, Some(passed)), (4, None)]);
        gate.add_permits(2);
        assert_eq!(first.into_iter().next().unwrap().await.ok(), Some(2));
        let answers: Vec<Option<u32>> = futures_of(together).await;
        assert_eq!(answers, [Some(4), None, Some(8)]);
        assert_eq!(*sizes.lock().unwrap(), [1, 2]);
    }

    async fn futures_of(receivers: Vec<oneshot::Receiver<u32>>) -> Vec<Option<u32>> {
        let mut answers = Vec::new();
        for receiver in receivers {
            answers.push(receiver.await.ok());
        }
        answers
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_requests_and_the_key_recovers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let coalescer: Arc<Coalescer<u8, u32, u32>> = Coalescer::new(10, {
            let calls = Arc::clone(&calls);
            move |_key, requests: Vec<u32>| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    assert!(call > 0, "the first batch fails");
                    requests
                })
            }
        });
        assert_eq!(coalescer.submit(7, 1).await, None);
        assert_eq!(coalescer.submit(7, 2).await, Some(2));
    }
}
