//! A tokio runtime on an OS thread of its own, for work whose latency must not wait behind the main
//! runtime's tasks. deal-service runs the sale's transactions on one: on the main thread, each of a
//! transaction's round trips to Postgres waited its turn behind thousands of WatchDeal messages
//! (with 10,000 watchers the hot deal kept a median 0.71× of its orders, 0.81× with the sale on a
//! thread of its own: BENCHMARKS.md). On a thread of its own the kernel schedules it
//! beside the main thread, and a reply from Postgres is handled as soon as it arrives.

use std::future::Future;

use tokio::{runtime::Handle, sync::oneshot};

/// The runtime's thread runs until this is dropped; the tasks still on it are then dropped too.
pub struct RuntimeThread {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl RuntimeThread {
    /// Starts a current-thread runtime, with I/O and timers, on a new thread named `name`.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
        Ok(Self { handle, _stop: stop })
    }

    /// What spawns tasks on this thread. A task spawned once the thread has stopped is dropped
    /// unrun (its `JoinHandle` reports it cancelled).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// Starts `future` on `runtime` at once; its output, or `None` if it panicked or the runtime had
/// stopped. Dropping the waiting future leaves `future` running.
pub fn run_on<F>(runtime: &Handle, future: F) -> impl Future<Output = Option<F::Output>> + Send + 'static
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = runtime.spawn(future);
    async move { task.await.ok() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_future_runs_on_the_thread_and_its_output_comes_back() {
        let thread = RuntimeThread::start("test-runtime-thread").unwrap();
        let name = run_on(thread.handle(), async { std::thread::current().name().map(str::to_owned) }).await;
        assert_eq!(name, Some(Some("test-runtime-thread".to_owned())));
    }

    #[tokio::test]
    async fn a_panic_or_a_stopped_thread_gives_none() {
        let thread = RuntimeThread::start("test-runtime-thread").unwrap();
        let handle = thread.handle().clone();
        assert_eq!(run_on(&handle, async { panic!("in a batch") }).await, None::<()>);
        drop(thread);
        // The thread stops once it sees the stop; from then on nothing runs on it.
        let mut outcome = Some(());
        for _ in 0..100 {
            outcome = run_on(&handle, async {}).await;
            if outcome.is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(outcome, None);
    }
}
