//! Read policies, write frontiers and read capabilities: how a
//! collection's since is computed and where its changes go.

use std::collections::BTreeMap;

use tidemark_storage_types::{
    DataSource, GlobalId, PersistBackend, ReadPolicy, ShardId, StorageInstanceId, StorageTimestamp,
    display_frontier,
};
use timely::PartialOrder;
use timely::progress::{Antichain, ChangeBatch};

use super::Controller;
use super::statuses::StatusChange;
use crate::durable::AwaitingDrop;
use crate::state::CollectionState;
use crate::worker::WorkerCommand;

/// A change batch of `diff` at every element of `frontier` (a hold taken
/// or released there).
pub(crate) fn frontier_changes<T: StorageTimestamp>(
    frontier: &Antichain<T>,
    diff: i64,
) -> ChangeBatch<T> {
    let mut batch = ChangeBatch::new();
    batch.extend(frontier.iter().map(|time| (*time, diff)));
    batch
}

/// The proposed capability if it is ahead of `capability` (capabilities
/// never move back), as the change batch that moves it there.
fn capability_change<T: StorageTimestamp>(
    capability: &mut Antichain<T>,
    proposed: Antichain<T>,
) -> Option<ChangeBatch<T>> {
    if *capability == proposed || !PartialOrder::less_equal(capability, &proposed) {
        return None;
    }
    let mut batch = frontier_changes(&proposed, 1);
    batch.extend(capability.iter().map(|time| (*time, -1)));
    *capability = proposed;
    Some(batch)
}

/// A collection's since moved.
pub(crate) struct SinceChange<T> {
    id: GlobalId,
    since: Antichain<T>,
    shard: ShardId,
    instance: Option<StorageInstanceId>,
}

/// Applies `batch` to `collection`'s read capabilities. A since change is
/// pushed to `since_changes` and propagated to the collection's storage
/// dependencies through `pending`.
///
/// # Panics
///
/// If a count would become negative.
fn apply_read_changes<T: StorageTimestamp>(
    id: GlobalId,
    collection: &mut CollectionState<T>,
    batch: &mut ChangeBatch<T>,
    pending: &mut BTreeMap<GlobalId, ChangeBatch<T>>,
    since_changes: &mut Vec<SinceChange<T>>,
) {
    for (time, diff) in batch.iter() {
        let count = collection.read_capabilities.count_for(time);
        assert!(
            count + diff >= 0,
            "read capability count of collection {id} would become negative: time={time} count={count} change={diff}"
        );
    }
    let mut changed = false;
    for (time, diff) in collection.read_capabilities.update_iter(batch.drain()) {
        changed = true;
        // A dependency is held at this collection's since.
        for dependency in &collection.storage_dependencies {
            pending.entry(*dependency).or_default().update(time, diff);
        }
    }
    if changed {
        let instance = match &collection.description.data_source {
            DataSource::Ingestion(ingestion) => Some(ingestion.instance_id),
            _ => None,
        };
        since_changes.push(SinceChange {
            id,
            since: collection.read_capabilities.frontier().to_owned(),
            shard: collection.collection_metadata.data_shard,
            instance,
        });
    }
}

impl<T: StorageTimestamp, B: PersistBackend<T>> Controller<T, B> {
    /// The ingestion that writes collection `id` (`id` itself, or the
    /// ingestion it is a source export or progress collection of) and its
    /// instance, if that ingestion may still be running: it is live, or
    /// dropped but not yet confirmed stopped, and its instance exists.
    pub(crate) fn ingestion_writing(&self, id: GlobalId) -> Option<(GlobalId, StorageInstanceId)> {
        let ingestion = self.ingestion_outputs.get(&id).copied().unwrap_or(id);
        let instance = match self.collections.get(&ingestion) {
            Some(collection) => match &collection.description.data_source {
                DataSource::Ingestion(description) => Some(description.instance_id),
                _ => None,
            },
            None => self
                .awaiting_drop
                .get(&ingestion)
                .map(|awaiting| awaiting.instance),
        }?;
        self.instances
            .contains_key(&instance)
            .then_some((ingestion, instance))
    }

    /// Keeps dropped output `id` (shard `shard`) of `ingestion` until the
    /// ingestion's `DroppedIds`, durably.
    fn await_drop(
        &mut self,
        ingestion: GlobalId,
        instance: StorageInstanceId,
        stopping: bool,
        id: GlobalId,
        shard: ShardId,
    ) {
        let entry = self
            .awaiting_drop
            .entry(ingestion)
            .or_insert_with(|| AwaitingDrop {
                instance,
                stopping: false,
                shards: BTreeMap::new(),
            });
        entry.stopping |= stopping;
        entry.shards.insert(id, shard);
        tracing::debug!(%id, %ingestion, "dropped output awaits its ingestion's DroppedIds");
        let _ = self.worker.send(WorkerCommand::AwaitDrop {
            ingestion,
            awaiting: AwaitingDrop {
                instance,
                stopping,
                shards: BTreeMap::from([(id, shard)]),
            },
        });
    }

    /// `ingestion` stopped on its replica (or its instance is gone): the
    /// shards awaiting it are finalized.
    pub(crate) fn finalize_awaited(&mut self, ingestion: GlobalId) {
        if self.awaiting_drop.remove(&ingestion).is_some() {
            let _ = self
                .worker
                .send(WorkerCommand::FinalizeAwaited { ingestion });
        }
    }

    pub(crate) fn set_read_policy_inner(&mut self, policies: Vec<(GlobalId, ReadPolicy<T>)>) {
        let mut pending: BTreeMap<GlobalId, ChangeBatch<T>> = BTreeMap::new();
        for (id, policy) in policies {
            if let Some(collection) = self.collections.get_mut(&id) {
                let proposed = policy.frontier(collection.write_frontier.borrow());
                if let Some(batch) = capability_change(&mut collection.implied_capability, proposed)
                {
                    pending
                        .entry(id)
                        .or_default()
                        .extend(batch.into_inner().into_iter());
                }
                collection.read_policy = policy;
            } else if self.dropping_exports.contains(&id) {
                // Dropped: its hold goes when the replica confirms.
            } else if let Some(export) = self.exports.get_mut(&id) {
                let proposed = policy.frontier(export.write_frontier.borrow());
                if let Some(batch) = capability_change(&mut export.read_capability, proposed) {
                    pending
                        .entry(export.description.from)
                        .or_default()
                        .extend(batch.into_inner().into_iter());
                    self.pending_compaction
                        .entry(export.description.instance_id)
                        .or_default()
                        .push((id, export.read_capability.clone()));
                }
                export.read_policy = policy;
            } else {
                panic!("set_read_policy: unknown collection or export {id}");
            }
        }
        self.update_read_capabilities_inner(&mut pending);
    }

    pub(crate) fn update_write_frontiers_inner(&mut self, updates: &[(GlobalId, Antichain<T>)]) {
        let mut pending: BTreeMap<GlobalId, ChangeBatch<T>> = BTreeMap::new();
        let mut since_changes = Vec::new();
        for (id, upper) in updates {
            if let Some(collection) = self.collections.get_mut(id) {
                if PartialOrder::less_than(&collection.write_frontier, upper) {
                    collection.write_frontier.clone_from(upper);
                }
                let proposed = collection
                    .read_policy
                    .frontier(collection.write_frontier.borrow());
                // The common case, applied in place: one lookup per id.
                if let Some(mut batch) =
                    capability_change(&mut collection.implied_capability, proposed)
                {
                    apply_read_changes(
                        *id,
                        collection,
                        &mut batch,
                        &mut pending,
                        &mut since_changes,
                    );
                }
            } else if self.dropping_exports.contains(id) {
                // Dropped: its hold goes when the replica confirms.
            } else if let Some(export) = self.exports.get_mut(id) {
                if PartialOrder::less_than(&export.write_frontier, upper) {
                    export.write_frontier.clone_from(upper);
                }
                let proposed = export.read_policy.frontier(export.write_frontier.borrow());
                if let Some(batch) = capability_change(&mut export.read_capability, proposed) {
                    pending
                        .entry(export.description.from)
                        .or_default()
                        .extend(batch.into_inner().into_iter());
                    // The sink need not read before its hold any more.
                    self.pending_compaction
                        .entry(export.description.instance_id)
                        .or_default()
                        .push((*id, export.read_capability.clone()));
                }
            } else {
                panic!("update_write_frontiers: unknown collection or export {id}");
            }
        }
        self.apply_pending(&mut pending, &mut since_changes);
        self.sinces_changed(since_changes);
    }

    pub(crate) fn update_read_capabilities_inner(
        &mut self,
        updates: &mut BTreeMap<GlobalId, ChangeBatch<T>>,
    ) {
        let mut since_changes = Vec::new();
        self.apply_pending(updates, &mut since_changes);
        self.sinces_changed(since_changes);
    }

    /// Drains `pending` into the collections' read capabilities (an
    /// export's changes go to the collection it reads).
    fn apply_pending(
        &mut self,
        pending: &mut BTreeMap<GlobalId, ChangeBatch<T>>,
        since_changes: &mut Vec<SinceChange<T>>,
    ) {
        while let Some((id, mut batch)) = pending.pop_last() {
            if batch.is_empty() {
                continue;
            }
            if let Some(collection) = self.collections.get_mut(&id) {
                apply_read_changes(id, collection, &mut batch, pending, since_changes);
            } else if let Some(export) = self.exports.get(&id) {
                let from = export.description.from;
                pending.entry(from).or_default().extend(batch.drain());
            } else {
                panic!("update_read_capabilities: unknown collection {id}");
            }
        }
    }

    /// Acts on new sinces: downgrades the shards (one command to the write
    /// task), tells the instances running them, and retires collections
    /// whose since is empty.
    fn sinces_changed(&mut self, since_changes: Vec<SinceChange<T>>) {
        let mut downgrades = Vec::new();
        for SinceChange {
            id,
            since,
            shard,
            instance,
        } in since_changes
        {
            tracing::trace!(%id, since = %display_frontier(&since), "since advanced");
            // Every collection an ingestion writes (itself, its source
            // exports, its progress collection) is compacted on its replica.
            let writer = self.ingestion_writing(id);
            if let Some(instance) = instance.or(writer.map(|(_, instance)| instance)) {
                self.pending_compaction
                    .entry(instance)
                    .or_default()
                    .push((id, since.clone()));
            }
            if since.is_empty() {
                // SUBTLE: the state goes now, the shard after every write
                // queued before (the write task runs commands in order, and
                // the downgrades collected so far are sent first).
                if instance.is_some() {
                    self.record_status(id, StatusChange::plain("dropped"), None);
                }
                self.collections.remove(&id);
                self.ingestion_outputs.remove(&id);
                if !downgrades.is_empty() {
                    let _ = self
                        .worker
                        .send(WorkerCommand::DowngradeSinces(std::mem::take(
                            &mut downgrades,
                        )));
                }
                match writer {
                    // The replica may still write the shard: it is
                    // finalized once the ingestion's `DroppedIds` arrives.
                    Some((ingestion, instance)) => {
                        self.forget_statistics(id);
                        self.await_drop(ingestion, instance, ingestion == id, id, shard);
                    }
                    None => {
                        self.forget_reports(id);
                        let _ = self.worker.send(WorkerCommand::Finalize { id, shard });
                    }
                }
            } else {
                downgrades.push((shard, since));
            }
        }
        if !downgrades.is_empty() {
            let _ = self.worker.send(WorkerCommand::DowngradeSinces(downgrades));
        }
    }
}
