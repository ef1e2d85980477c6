//! Running dataflows from a test: timely workers on a blocking thread, a
//! stop flag the test sets, and the operators' statuses for the test to
//! read while the workers run.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidemark_storage_dataflow::{DataflowError, DataflowStatus};
use timely::dataflow::Scope;
use tokio::task::JoinHandle;

/// How long a test waits for something that must happen before declaring
/// the dataflow hung. A guard against a hang, not an assertion about speed.
pub(crate) const HANG_GUARD: Duration = Duration::from_secs(90);

/// A dataflow running on `workers` timely workers until stopped.
pub(crate) struct RunningDataflow {
    stop: Arc<AtomicBool>,
    statuses: Arc<Mutex<Vec<DataflowStatus<u64>>>>,
    workers: Option<JoinHandle<Vec<Result<(), String>>>>,
}

impl RunningDataflow {
    /// Starts `workers` workers, each building one dataflow with `build`,
    /// which returns the statuses of the operators it built (in a fixed
    /// order; [`statuses`](Self::statuses) lists them worker by worker).
    pub(crate) fn start<F>(workers: usize, build: F) -> RunningDataflow
    where
        F: for<'scope> Fn(Scope<'scope, u64>) -> Vec<DataflowStatus<u64>> + Send + Sync + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let (worker_stop, worker_statuses) = (Arc::clone(&stop), Arc::clone(&statuses));
        let handle = tokio::task::spawn_blocking(move || {
            let guards = timely::execute(timely::Config::process(workers), move |worker| {
                let built = worker.dataflow::<u64, _, _>(&build);
                worker_statuses.lock().expect("statuses lock").extend(built);
                while !worker_stop.load(Ordering::SeqCst) {
                    worker.step_or_park(Some(Duration::from_millis(5)));
                }
                for dataflow in worker.installed_dataflows() {
                    worker.drop_dataflow(dataflow);
                }
            })
            .expect("timely workers start");
            guards.join()
        });
        RunningDataflow {
            stop,
            statuses,
            workers: Some(handle),
        }
    }

    /// The statuses every worker has registered so far.
    pub(crate) fn statuses(&self) -> Vec<DataflowStatus<u64>> {
        self.statuses.lock().expect("statuses lock").clone()
    }

    /// The first error any operator reported.
    pub(crate) fn error(&self) -> Option<DataflowError> {
        self.statuses().iter().find_map(DataflowStatus::error)
    }

    /// Polls `condition` until it holds, panicking with `what` if an
    /// operator fails first or it does not hold within [`HANG_GUARD`].
    pub(crate) async fn wait_until<C, Fut>(&self, what: &str, mut condition: C)
    where
        C: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            if let Some(error) = self.error() {
                panic!("{what}: an operator failed: {error}");
            }
            if condition().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: did not happen within {HANG_GUARD:?}, the dataflow looks hung"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Polls until some operator reports an error and returns it.
    pub(crate) async fn wait_for_error(&self, what: &str) -> DataflowError {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            if let Some(error) = self.error() {
                return error;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: no error was reported within {HANG_GUARD:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the workers (dropping their dataflows) and waits for them.
    pub(crate) async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(workers) = self.workers.take() {
            let results = workers.await.expect("worker thread");
            for result in results {
                result.unwrap_or_else(|panic| panic!("a timely worker panicked: {panic}"));
            }
        }
    }
}

impl Drop for RunningDataflow {
    fn drop(&mut self) {
        // A test that fails while the workers run must not leave them
        // running: the runtime would wait for them forever.
        self.stop.store(true, Ordering::SeqCst);
    }
}
