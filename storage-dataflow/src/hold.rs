//! Read holds of sources: how a running source keeps its shard readable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tidemark_storage_controller::ReadHold;
use tidemark_storage_types::StorageTimestamp;
use tidemark_storage_types::sync::lock;
use timely::progress::Antichain;

/// Something that keeps a collection readable from a frontier on, and can
/// be moved forward: the controller's [`ReadHold`], or a caller's own
/// mechanism (an export whose hold the controller keeps elsewhere).
pub trait ReadHoldHandle<T>: Send + Sync + 'static {
    /// Moves the hold forward to `frontier` (empty: release it). Never moves
    /// it backward.
    fn downgrade(&self, frontier: &Antichain<T>);
}

impl<T: StorageTimestamp> ReadHoldHandle<T> for ReadHold<T> {
    fn downgrade(&self, frontier: &Antichain<T>) {
        ReadHold::downgrade(self, frontier);
    }
}

/// One read hold shared by the workers of one process that run the same
/// source: the hold moves to the meet of what every worker still has to
/// read, so the collection cannot be compacted past any worker's progress.
/// Until all `workers` have reported, it stays where it was taken.
///
/// Make one per process, before the workers start, and give each worker a
/// clone:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use timely::progress::Antichain;
/// use tidemark_storage_dataflow::{ReadHoldHandle, SharedReadHold};
/// struct Recorder(Arc<Mutex<Vec<Antichain<u64>>>>);
/// impl ReadHoldHandle<u64> for Recorder {
///     fn downgrade(&self, frontier: &Antichain<u64>) {
///         self.0.lock().unwrap().push(frontier.clone());
///     }
/// }
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let hold = SharedReadHold::new(Recorder(Arc::clone(&seen)), 2);
/// hold.report(0, &Antichain::from_elem(5));
/// hold.report(1, &Antichain::from_elem(3));
/// hold.report(1, &Antichain::new());
/// // Held at the least progress of the two workers: 3, then 5.
/// assert_eq!(*seen.lock().unwrap(), vec![Antichain::from_elem(3), Antichain::from_elem(5)]);
/// ```
pub struct SharedReadHold<T> {
    inner: Arc<SharedInner<T>>,
}

impl<T> Clone for SharedReadHold<T> {
    fn clone(&self) -> Self {
        SharedReadHold {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> std::fmt::Debug for SharedReadHold<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedReadHold")
            .field("workers", &self.inner.workers)
            .finish_non_exhaustive()
    }
}

struct SharedInner<T> {
    hold: Box<dyn ReadHoldHandle<T>>,
    workers: usize,
    progress: Mutex<BTreeMap<usize, Antichain<T>>>,
}

impl<T: StorageTimestamp> SharedReadHold<T> {
    /// Shares `hold` among the `workers` workers of this process that run
    /// the source.
    pub fn new(hold: impl ReadHoldHandle<T>, workers: usize) -> SharedReadHold<T> {
        SharedReadHold {
            inner: Arc::new(SharedInner {
                hold: Box::new(hold),
                workers,
                progress: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Worker `worker` has read everything before `frontier`.
    pub fn report(&self, worker: usize, frontier: &Antichain<T>) {
        let mut progress = lock(&self.inner.progress);
        progress.insert(worker, frontier.clone());
        if progress.len() < self.inner.workers {
            return;
        }
        // Totally ordered times: the meet is the least element, and the
        // empty frontier (done) is above every time.
        let meet = progress
            .values()
            .filter_map(|frontier| frontier.elements().first().copied())
            .min();
        let meet = meet.map_or_else(Antichain::new, Antichain::from_elem);
        self.inner.hold.downgrade(&meet);
    }
}
