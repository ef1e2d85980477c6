//! [`ReadHold`]: a read capability on a collection, held by a handle that
//! can travel to other threads (dataflow workers, tasks).

use std::sync::{Arc, Mutex};

use tidemark_storage_types::sync::lock;
use tidemark_storage_types::{GlobalId, StorageTimestamp, display_frontier};
use timely::PartialOrder;
use timely::progress::{Antichain, ChangeBatch};
use tokio::sync::mpsc;

use crate::internal::Internal;

/// A read hold on collection [`id`](Self::id) at [`time`](Self::time): the
/// collection's since cannot pass it while the hold lives. Made by
/// [`Controller::acquire_read_hold`](crate::Controller::acquire_read_hold).
///
/// The hold only moves forward: [`downgrade`](Self::downgrade) to a later
/// frontier releases the times before it; a frontier that is not beyond the
/// current one changes nothing. Downgrading to the empty frontier, or
/// dropping the handle, releases the hold. Changes reach the collection at
/// the controller's next [`process`](crate::StorageController::process),
/// through the same path as a [`Subscription`](crate::Subscription)'s hold
/// (which is one of these).
///
/// `Send + Sync`: a dataflow source shared by several workers can downgrade
/// it from any of them (see `tidemark-storage-dataflow`).
pub struct ReadHold<T: StorageTimestamp> {
    id: GlobalId,
    time: Arc<Mutex<Option<T>>>,
    internal: mpsc::UnboundedSender<Internal<T>>,
}

impl<T: StorageTimestamp> std::fmt::Debug for ReadHold<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadHold")
            .field("id", &self.id)
            .field("time", &display_frontier(&self.time()).to_string())
            .finish_non_exhaustive()
    }
}

impl<T: StorageTimestamp> ReadHold<T> {
    /// A handle on a hold at `time` whose +1 the controller has already
    /// applied.
    pub(crate) fn new(
        id: GlobalId,
        time: T,
        internal: mpsc::UnboundedSender<Internal<T>>,
    ) -> ReadHold<T> {
        ReadHold {
            id,
            time: Arc::new(Mutex::new(Some(time))),
            internal,
        }
    }

    /// The collection held.
    #[must_use]
    pub fn id(&self) -> GlobalId {
        self.id
    }

    /// Where the hold is: `[t]`, or `[]` once released.
    #[must_use]
    pub fn time(&self) -> Antichain<T> {
        let time = lock(&self.time);
        time.iter().copied().collect()
    }

    /// Moves the hold forward to `frontier` (the empty frontier releases
    /// it). A `frontier` that is not beyond the current hold changes
    /// nothing: a hold never moves backward.
    pub fn downgrade(&self, frontier: &Antichain<T>) {
        // SUBTLE: the time is swapped and the change sent under the lock,
        // with no await in between, so a task aborted between the two (a
        // dropped subscription) cannot lose or double a hold.
        let mut time = lock(&self.time);
        let Some(from) = *time else {
            return;
        };
        let current = Antichain::from_elem(from);
        if !PartialOrder::less_than(&current, frontier) {
            return;
        }
        let to = frontier.elements().first().copied();
        let mut changes = ChangeBatch::new();
        if let Some(to) = to {
            changes.update(to, 1);
        }
        changes.update(from, -1);
        *time = to;
        // The receiver lives as long as the controller; after it is gone
        // there is nothing left to hold.
        let _ = self.internal.send(Internal::HoldChanges(self.id, changes));
    }

    /// Releases the hold now (as dropping it does).
    pub fn release(&self) {
        self.downgrade(&Antichain::new());
    }
}

impl<T: StorageTimestamp> Drop for ReadHold<T> {
    fn drop(&mut self) {
        self.release();
    }
}
