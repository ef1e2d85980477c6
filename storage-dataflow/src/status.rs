//! [`DataflowStatus`]: what an operator reports to the code driving the
//! dataflow, from any thread.

use std::sync::{Arc, Mutex, MutexGuard};

use timely::progress::{Antichain, Timestamp};

use crate::errors::DataflowError;

/// A shared view of one operator's progress and failure, readable from any
/// thread (the one driving the workers, a test, a replica's status task).
///
/// - For a [`ShardSource`](crate::ShardSource) on one worker, the
///   [`frontier`](Self::frontier) is where its output frontier is: every
///   update at a time not beyond it has been emitted.
/// - For a [`ShardSink`](crate::ShardSink), it is the shard's upper as the
///   sink last wrote (or found) it: every update at a time not beyond it is
///   durable.
///
/// After a failure, [`error`](Self::error) says why and the operator makes
/// no more progress.
#[derive(Clone, Debug)]
pub struct DataflowStatus<T> {
    inner: Arc<Mutex<StatusInner<T>>>,
}

#[derive(Debug)]
struct StatusInner<T> {
    frontier: Antichain<T>,
    error: Option<DataflowError>,
}

impl<T: Timestamp> DataflowStatus<T> {
    pub(crate) fn new() -> DataflowStatus<T> {
        DataflowStatus {
            inner: Arc::new(Mutex::new(StatusInner {
                frontier: Antichain::from_elem(T::minimum()),
                error: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StatusInner<T>> {
        tidemark_storage_types::sync::lock(&self.inner)
    }

    /// The frontier the operator has reached (see the type's docs).
    #[must_use]
    pub fn frontier(&self) -> Antichain<T> {
        self.lock().frontier.clone()
    }

    /// Why the operator stopped, if it failed.
    #[must_use]
    pub fn error(&self) -> Option<DataflowError> {
        self.lock().error.clone()
    }

    pub(crate) fn set_frontier(&self, frontier: Antichain<T>) {
        self.lock().frontier = frontier;
    }

    /// Records the first failure (later ones are consequences of it).
    pub(crate) fn fail(&self, error: DataflowError) {
        let mut inner = self.lock();
        if inner.error.is_none() {
            tracing::warn!(%error, "dataflow operator failed");
            inner.error = Some(error);
        }
    }
}
