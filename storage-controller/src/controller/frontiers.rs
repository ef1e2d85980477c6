//! Read policies, write frontiers and read capabilities: how a
//! collection's since is computed and where its changes go.

use std::collections::BTreeMap;

use tidemark_storage_types::{
    DataSource, GlobalId, PersistBackend, ReadPolicy, StorageTimestamp, display_frontier,
};
use timely::PartialOrder;
use timely::progress::{Antichain, ChangeBatch};

use super::Controller;
use crate::worker::WorkerCommand;

/// Moves `capability` to `proposed` if that is not behind it, recording the
/// change (+1 at the new elements, -1 at the old) in `changes`.
pub(crate) fn advance_capability<T: StorageTimestamp>(
    capability: &mut Antichain<T>,
    proposed: Antichain<T>,
    changes: &mut ChangeBatch<T>,
) {
    if *capability != proposed && PartialOrder::less_equal(capability, &proposed) {
        changes.extend(proposed.iter().map(|time| (*time, 1)));
        changes.extend(capability.iter().map(|time| (*time, -1)));
        *capability = proposed;
    }
}

impl<T: StorageTimestamp, B: PersistBackend<T>> Controller<T, B> {
    pub(crate) fn set_read_policy_inner(&mut self, policies: Vec<(GlobalId, ReadPolicy<T>)>) {
        let mut changes: BTreeMap<GlobalId, ChangeBatch<T>> = BTreeMap::new();
        for (id, policy) in policies {
            if let Some(collection) = self.collections.get_mut(&id) {
                let proposed = policy.frontier(collection.write_frontier.borrow());
                advance_capability(
                    &mut collection.implied_capability,
                    proposed,
                    changes.entry(id).or_default(),
                );
                collection.read_policy = policy;
            } else if let Some(export) = self.exports.get_mut(&id) {
                let proposed = policy.frontier(export.write_frontier.borrow());
                advance_capability(
                    &mut export.read_capability,
                    proposed,
                    changes.entry(export.description.from).or_default(),
                );
                export.read_policy = policy;
            } else {
                panic!("set_read_policy: unknown collection or export {id}");
            }
        }
        self.update_read_capabilities_inner(&mut changes);
    }

    pub(crate) fn update_write_frontiers_inner(&mut self, updates: &[(GlobalId, Antichain<T>)]) {
        let mut changes: BTreeMap<GlobalId, ChangeBatch<T>> = BTreeMap::new();
        for (id, upper) in updates {
            if let Some(collection) = self.collections.get_mut(id) {
                if PartialOrder::less_than(&collection.write_frontier, upper) {
                    collection.write_frontier.clone_from(upper);
                }
                let proposed = collection
                    .read_policy
                    .frontier(collection.write_frontier.borrow());
                advance_capability(
                    &mut collection.implied_capability,
                    proposed,
                    changes.entry(*id).or_default(),
                );
            } else if let Some(export) = self.exports.get_mut(id) {
                if PartialOrder::less_than(&export.write_frontier, upper) {
                    export.write_frontier.clone_from(upper);
                }
                let proposed = export.read_policy.frontier(export.write_frontier.borrow());
                advance_capability(
                    &mut export.read_capability,
                    proposed,
                    changes.entry(export.description.from).or_default(),
                );
            } else {
                panic!("update_write_frontiers: unknown collection or export {id}");
            }
        }
        self.update_read_capabilities_inner(&mut changes);
    }

    pub(crate) fn update_read_capabilities_inner(
        &mut self,
        updates: &mut BTreeMap<GlobalId, ChangeBatch<T>>,
    ) {
        let mut new_sinces: BTreeMap<GlobalId, Antichain<T>> = BTreeMap::new();
        while let Some((id, mut batch)) = updates.pop_last() {
            if !self.collections.contains_key(&id)
                && let Some(export) = self.exports.get(&id)
            {
                let from = export.description.from;
                updates.entry(from).or_default().extend(batch.drain());
                continue;
            }
            let Some(collection) = self.collections.get_mut(&id) else {
                panic!("update_read_capabilities: unknown collection {id}");
            };
            for (time, diff) in batch.iter() {
                let count = collection.read_capabilities.count_for(time);
                assert!(
                    count + diff >= 0,
                    "read capability count of collection {id} would become negative: time={time} count={count} change={diff}"
                );
            }
            let since_changes: Vec<(T, i64)> = collection
                .read_capabilities
                .update_iter(batch.drain())
                .collect();
            if since_changes.is_empty() {
                continue;
            }
            // A dependency is held at this collection's since.
            for dependency in &collection.storage_dependencies {
                updates
                    .entry(*dependency)
                    .or_default()
                    .extend(since_changes.iter().copied());
            }
            new_sinces.insert(id, collection.read_capabilities.frontier().to_owned());
        }
        for (id, since) in new_sinces {
            self.since_advanced(id, since);
        }
    }

    /// Acts on a collection's new since: downgrades its shard, tells the
    /// instance running it, and retires it when the since is empty.
    fn since_advanced(&mut self, id: GlobalId, since: Antichain<T>) {
        let Some(collection) = self.collections.get(&id) else {
            return;
        };
        tracing::trace!(%id, since = %display_frontier(&since), "since advanced");
        let shard = collection.collection_metadata.data_shard;
        if let DataSource::Ingestion(ingestion) = &collection.description.data_source {
            self.pending_compaction
                .entry(ingestion.instance_id)
                .or_default()
                .push((id, since.clone()));
        }
        if since.is_empty() {
            // SUBTLE: the state goes now, the shard after every write queued
            // before (the write task runs commands in order).
            self.collections.remove(&id);
            let _ = self.worker.send(WorkerCommand::Finalize { id, shard });
        } else {
            let _ = self
                .worker
                .send(WorkerCommand::DowngradeSince { shard, since });
        }
    }
}
