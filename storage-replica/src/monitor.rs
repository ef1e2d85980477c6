//! What a dataflow's operators tell the worker that runs them: the first
//! failure, counters, and the statuses of the storage operators inside.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use tidemark_storage_controller::protocol::StatisticsUpdate;
use tidemark_storage_dataflow::DataflowStatus;
use tidemark_storage_types::StorageTimestamp;
use timely::dataflow::ProbeHandle;
use timely::progress::Antichain;

use crate::lag::{Pace, export_lag, ingestion_lag};

/// What a dataflow's frontier lag is measured against.
#[derive(Clone, Debug)]
enum Reference<T> {
    /// Nothing yet (or not on this worker): no lag.
    Unknown,
    /// An ingestion's generator pace.
    Pace(Pace),
    /// An export's source upper, as its reader last saw it.
    Source(Antichain<T>),
}

/// Shared by a dataflow's operators and its worker (one thread).
#[derive(Debug)]
pub(crate) struct Monitor<T> {
    error: RefCell<Option<String>>,
    statistics: Cell<StatisticsUpdate>,
    parts: RefCell<Vec<DataflowStatus<T>>>,
    reference: RefCell<Reference<T>>,
}

impl<T: StorageTimestamp> Monitor<T> {
    pub(crate) fn new() -> Rc<Monitor<T>> {
        Rc::new(Monitor {
            error: RefCell::new(None),
            statistics: Cell::new(StatisticsUpdate::default()),
            parts: RefCell::new(Vec::new()),
            reference: RefCell::new(Reference::Unknown),
        })
    }

    /// Records the first failure; the dataflow stalls.
    pub(crate) fn fail(&self, error: impl Into<String>) {
        let mut slot = self.error.borrow_mut();
        if slot.is_none() {
            let error = error.into();
            tracing::warn!(%error, "replica dataflow stalled");
            *slot = Some(error);
        }
    }

    /// Why the dataflow stalled: its own failure or a storage operator's.
    pub(crate) fn error(&self) -> Option<String> {
        if let Some(error) = self.error.borrow().clone() {
            return Some(error);
        }
        self.parts
            .borrow()
            .iter()
            .find_map(|part| part.error().map(|error| error.to_string()))
    }

    /// Watches a storage operator's status too.
    pub(crate) fn watch(&self, part: DataflowStatus<T>) {
        self.parts.borrow_mut().push(part);
    }

    /// The storage operators watched.
    pub(crate) fn parts(&self) -> Vec<DataflowStatus<T>> {
        self.parts.borrow().clone()
    }

    /// Counts `updates` updates of `bytes` bytes in one message.
    pub(crate) fn count(&self, updates: u64, bytes: u64) {
        let mut statistics = self.statistics.get();
        statistics.messages += 1;
        statistics.updates += updates;
        statistics.bytes += bytes;
        self.statistics.set(statistics);
    }

    /// An ingestion's generator paces itself so.
    pub(crate) fn pace(&self, pace: Pace) {
        *self.reference.borrow_mut() = Reference::Pace(pace);
    }

    /// An export's reader sees its source at `upper`.
    pub(crate) fn source_upper(&self, upper: &Antichain<T>) {
        let mut reference = self.reference.borrow_mut();
        if !matches!(&*reference, Reference::Source(seen) if seen == upper) {
            *reference = Reference::Source(upper.clone());
        }
    }

    /// The counters so far, with the lag of the committed `upper` at `now`.
    pub(crate) fn statistics(&self, upper: &Antichain<T>, now: Instant) -> StatisticsUpdate {
        let frontier_lag = match &*self.reference.borrow() {
            Reference::Unknown => 0,
            Reference::Pace(pace) => ingestion_lag(pace, now, upper),
            Reference::Source(source) => export_lag(source, upper),
        };
        StatisticsUpdate {
            frontier_lag,
            ..self.statistics.get()
        }
    }
}

/// A dataflow as built on one worker.
pub(crate) struct Built<T: StorageTimestamp> {
    /// The frontier of the dataflow's progress stream: what is durable, on
    /// every worker of the cluster.
    pub(crate) probe: ProbeHandle<T>,
    /// Its operators' reports.
    pub(crate) monitor: Rc<Monitor<T>>,
    /// Whether this worker runs it (writes, reports status and statistics).
    pub(crate) placed: bool,
}
