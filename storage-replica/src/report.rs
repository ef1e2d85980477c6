//! What the workers of one process tell the session loop, and how the
//! loop turns it into [`StorageResponse`]s for the controller.
//!
//! - An upper is reported by every worker (each sees the cluster-wide
//!   frontier of the dataflow's progress stream); the process reports the
//!   meet over its workers, once every worker has reported one, and only
//!   when it advances.
//! - A dataflow is reported dropped once every worker of the process has
//!   dropped it.
//! - Statuses and statistics come from the worker that runs the dataflow
//!   and pass straight through (the latest status per id is kept, to be
//!   told again to a controller that reconnects).

use std::collections::{BTreeMap, BTreeSet};

use tidemark_storage_controller::protocol::{StatisticsUpdate, StorageResponse};
use tidemark_storage_types::{GlobalId, StorageTimestamp};
use timely::PartialOrder;
use timely::progress::Antichain;

/// One worker's report.
#[derive(Clone, Debug)]
pub(crate) enum WorkerEvent<T> {
    /// Worker `worker` (index within this process) sees `upper` for `ids`.
    Upper {
        worker: usize,
        ids: Vec<GlobalId>,
        upper: Antichain<T>,
    },
    /// Worker `worker` has dropped the dataflows writing `ids`.
    Dropped { worker: usize, ids: Vec<GlobalId> },
    /// A status change.
    Status(GlobalId, String),
    /// Cumulative counters.
    Statistics(Vec<(GlobalId, StatisticsUpdate)>),
}

/// One id's uppers: each worker's, and the meet last reported.
type Uppers<T> = (Vec<Option<Antichain<T>>>, Option<Antichain<T>>);

/// The process's aggregate of its workers' reports.
#[derive(Debug)]
pub(crate) struct Reports<T> {
    workers: usize,
    uppers: BTreeMap<GlobalId, Uppers<T>>,
    dropped: BTreeMap<GlobalId, BTreeSet<usize>>,
    statuses: BTreeMap<GlobalId, String>,
}

impl<T: StorageTimestamp> Reports<T> {
    pub(crate) fn new(workers: usize) -> Reports<T> {
        Reports {
            workers,
            uppers: BTreeMap::new(),
            dropped: BTreeMap::new(),
            statuses: BTreeMap::new(),
        }
    }

    /// The response `event` leads to, if any.
    pub(crate) fn absorb(&mut self, event: WorkerEvent<T>) -> Option<StorageResponse<T>> {
        match event {
            WorkerEvent::Upper { worker, ids, upper } => {
                let mut advanced = Vec::new();
                for id in ids {
                    let (per_worker, reported) = self
                        .uppers
                        .entry(id)
                        .or_insert_with(|| (vec![None; self.workers], None));
                    per_worker[worker] = Some(upper.clone());
                    let Some(meet) = meet(per_worker) else {
                        continue;
                    };
                    if reported
                        .as_ref()
                        .is_none_or(|reported| PartialOrder::less_than(reported, &meet))
                    {
                        *reported = Some(meet.clone());
                        advanced.push((id, meet));
                    }
                }
                (!advanced.is_empty()).then_some(StorageResponse::FrontierUppers(advanced))
            }
            WorkerEvent::Dropped { worker, ids } => {
                let mut done = BTreeSet::new();
                for id in ids {
                    let workers = self.dropped.entry(id).or_default();
                    workers.insert(worker);
                    if workers.len() == self.workers {
                        self.dropped.remove(&id);
                        self.uppers.remove(&id);
                        self.statuses.remove(&id);
                        done.insert(id);
                    }
                }
                (!done.is_empty()).then_some(StorageResponse::DroppedIds(done))
            }
            WorkerEvent::Status(id, status) => {
                self.statuses.insert(id, status.clone());
                Some(StorageResponse::StatusUpdates(vec![(id, status)]))
            }
            WorkerEvent::Statistics(updates) => {
                (!updates.is_empty()).then_some(StorageResponse::StatisticsUpdates(updates))
            }
        }
    }

    /// What a newly connected controller is told first: every upper
    /// reported so far and every current status.
    pub(crate) fn replay(&self) -> Vec<StorageResponse<T>> {
        let uppers: Vec<_> = self
            .uppers
            .iter()
            .filter_map(|(id, (_, reported))| Some((*id, reported.clone()?)))
            .collect();
        let statuses: Vec<_> = self
            .statuses
            .iter()
            .map(|(id, status)| (*id, status.clone()))
            .collect();
        let mut responses = Vec::new();
        if !uppers.is_empty() {
            responses.push(StorageResponse::FrontierUppers(uppers));
        }
        if !statuses.is_empty() {
            responses.push(StorageResponse::StatusUpdates(statuses));
        }
        responses
    }
}

/// The meet of every worker's upper, once each has one.
fn meet<T: StorageTimestamp>(per_worker: &[Option<Antichain<T>>]) -> Option<Antichain<T>> {
    let mut meet = Antichain::new();
    for upper in per_worker {
        for time in upper.as_ref()?.elements() {
            meet.insert(*time);
        }
    }
    Some(meet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(worker: usize, time: u64) -> WorkerEvent<u64> {
        WorkerEvent::Upper {
            worker,
            ids: vec![GlobalId::User(1)],
            upper: Antichain::from_elem(time),
        }
    }

    #[test]
    fn an_upper_is_reported_once_every_worker_has_passed_it() {
        let mut reports = Reports::<u64>::new(2);
        assert_eq!(reports.absorb(upper(0, 5)), None);
        assert_eq!(
            reports.absorb(upper(1, 3)),
            Some(StorageResponse::FrontierUppers(vec![(
                GlobalId::User(1),
                Antichain::from_elem(3)
            )]))
        );
        // Worker 1 at 3 still holds the meet.
        assert_eq!(reports.absorb(upper(0, 9)), None);
        assert_eq!(
            reports.absorb(upper(1, 7)),
            Some(StorageResponse::FrontierUppers(vec![(
                GlobalId::User(1),
                Antichain::from_elem(7)
            )]))
        );
        assert_eq!(reports.replay().len(), 1);
    }

    #[test]
    fn a_drop_is_reported_once_every_worker_has_dropped() {
        let mut reports = Reports::<u64>::new(2);
        let dropped = |worker| WorkerEvent::Dropped {
            worker,
            ids: vec![GlobalId::User(1)],
        };
        reports.absorb(upper(0, 5));
        assert_eq!(reports.absorb(dropped(1)), None);
        assert_eq!(
            reports.absorb(dropped(0)),
            Some(StorageResponse::DroppedIds([GlobalId::User(1)].into()))
        );
        assert!(reports.replay().is_empty());
    }
}
