//! Creating, appending to, reading and reconciling collections.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use tidemark_storage_types::{
    BackendError, ChunkLimit, CollectionDescription, DataSource, Diff, GlobalId, InvalidUsage,
    PersistBackend, ReadPolicy, ReadShare, Row, ShardId, StorageError, StorageTimestamp,
};
use timely::progress::frontier::MutableAntichain;
use timely::progress::{Antichain, ChangeBatch};
use tokio::sync::oneshot;

use super::Controller;
use super::statuses::{StatusChange, validate_status_collections};
use crate::protocol::{IngestionCommand, StorageCommand};
use crate::retry::{RetryPolicy, retry_indeterminate};
use crate::state::{CollectionMetadata, CollectionState};
use crate::subscribe::{OpenRead, ResumingRead, Subscription};
use crate::worker::{ShardAppend, WorkerCommand};

/// The collections `description` needs to exist.
fn required_collections<T>(description: &CollectionDescription<T>) -> Vec<GlobalId> {
    let mut required: Vec<GlobalId> = description.status_collection_id.into_iter().collect();
    if let DataSource::Ingestion(ingestion) = &description.data_source {
        required.extend(ingestion.remap_collection_id);
        required.extend(ingestion.source_exports.keys().copied());
    }
    required
}

/// The collections ingestion `description` writes besides itself: its
/// source exports and its progress collection.
fn ingestion_outputs<T>(description: &CollectionDescription<T>) -> Vec<GlobalId> {
    match &description.data_source {
        DataSource::Ingestion(ingestion) => ingestion
            .source_exports
            .keys()
            .copied()
            .chain(ingestion.remap_collection_id)
            .collect(),
        _ => Vec::new(),
    }
}

/// The collections `description` holds reads on.
fn storage_dependencies<T>(description: &CollectionDescription<T>) -> Vec<GlobalId> {
    match &description.data_source {
        DataSource::Ingestion(ingestion) => ingestion.remap_collection_id.into_iter().collect(),
        _ => Vec::new(),
    }
}

impl<T: StorageTimestamp, B: PersistBackend<T>> Controller<T, B> {
    /// Checks a batch of new collections and orders it so that every
    /// storage dependency comes before its dependents.
    fn validate_new_collections(
        &self,
        collections: Vec<(GlobalId, CollectionDescription<T>)>,
    ) -> Result<Vec<(GlobalId, CollectionDescription<T>)>, StorageError> {
        let mut batch: BTreeMap<GlobalId, CollectionDescription<T>> = BTreeMap::new();
        for (id, description) in collections {
            match batch.entry(id) {
                Entry::Occupied(existing) if *existing.get() != description => {
                    return Err(StorageError::SourceIdReused(id));
                }
                Entry::Occupied(_) => {}
                Entry::Vacant(vacant) => {
                    vacant.insert(description);
                }
            }
        }
        for (id, description) in &batch {
            if let Some(existing) = self.collections.get(id)
                && existing.description != *description
            {
                return Err(StorageError::SourceIdReused(*id));
            }
        }
        batch.retain(|id, _| !self.collections.contains_key(id));
        validate_status_collections(&batch, |id| {
            batch
                .get(&id)
                .or_else(|| self.collections.get(&id).map(|c| &c.description))
        })?;
        for (id, description) in &batch {
            for required in required_collections(description) {
                if !self.collections.contains_key(&required) && !batch.contains_key(&required) {
                    return Err(StorageError::IdentifierMissing(required));
                }
            }
            if let DataSource::Ingestion(ingestion) = &description.data_source
                && !self.instances.contains_key(&ingestion.instance_id)
            {
                return Err(StorageError::IngestionInstanceMissing {
                    storage_instance_id: ingestion.instance_id,
                    ingestion_id: *id,
                });
            }
        }
        // Dependencies first; a cycle is refused.
        let mut ordered = Vec::with_capacity(batch.len());
        let mut placed: BTreeSet<GlobalId> = BTreeSet::new();
        while !batch.is_empty() {
            let ready: Vec<GlobalId> = batch
                .iter()
                .filter(|(_, description)| {
                    storage_dependencies(description).iter().all(|dependency| {
                        !batch.contains_key(dependency) || placed.contains(dependency)
                    })
                })
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                return Err(StorageError::DependencyCycle(
                    batch.keys().copied().collect(),
                ));
            }
            for id in ready {
                let description = batch.remove(&id).expect("ready ids are in the batch");
                placed.insert(id);
                ordered.push((id, description));
            }
        }
        let batch = ordered.iter().cloned().collect();
        self.validate_ingestion_outputs(&batch)?;
        Ok(ordered)
    }

    /// Each collection has one writer: an ingestion's outputs are not
    /// tables (the controller writes those) and not another ingestion's.
    fn validate_ingestion_outputs(
        &self,
        batch: &BTreeMap<GlobalId, CollectionDescription<T>>,
    ) -> Result<(), StorageError> {
        let mut writers: BTreeMap<GlobalId, GlobalId> = BTreeMap::new();
        for (id, description) in batch {
            for output in ingestion_outputs(description) {
                let output_description = batch
                    .get(&output)
                    .or_else(|| self.collections.get(&output).map(|c| &c.description));
                if output_description
                    .is_some_and(|output| output.data_source.is_controller_written())
                {
                    return Err(StorageError::TableWrittenByIngestion {
                        table: output,
                        ingestion: *id,
                    });
                }
                let taken =
                    self.ingestion_outputs.get(&output).is_some_and(|writer| {
                        writer != id && self.ingestion_writing(output).is_some()
                    }) || batch.contains_key(&output)
                        && matches!(batch[&output].data_source, DataSource::Ingestion(_))
                        || self.collections.get(&output).is_some_and(|collection| {
                            matches!(collection.description.data_source, DataSource::Ingestion(_))
                        });
                if taken
                    || writers
                        .insert(output, *id)
                        .is_some_and(|other| other != *id)
                {
                    return Err(StorageError::SourceIdReused(output));
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn create_collections_inner(
        &mut self,
        collections: Vec<(GlobalId, CollectionDescription<T>)>,
    ) -> Result<(), StorageError> {
        self.check_not_fenced()?;
        let ordered = self.validate_new_collections(collections)?;
        if ordered.is_empty() {
            return Ok(());
        }
        let registrations = ordered
            .iter()
            .map(|(id, description)| (*id, description.since.clone()))
            .collect();
        let registered = self
            .call_worker(|reply| WorkerCommand::Register {
                collections: registrations,
                reply,
            })
            .await?;
        let shards: BTreeMap<GlobalId, _> = registered
            .into_iter()
            .map(|(id, shard, frontiers)| (id, (shard, frontiers)))
            .collect();

        let mut holds: BTreeMap<GlobalId, ChangeBatch<T>> = BTreeMap::new();
        let mut ingestions = Vec::new();
        for (id, description) in ordered {
            let (shard, frontiers) = shards[&id].clone();
            let dependencies = storage_dependencies(&description);
            // SUBTLE: a hold on a dependency must not be behind the
            // dependency's since (that would move its since back), so the
            // collection starts at the join of its own and its
            // dependencies' sinces.
            let mut since = frontiers.since.clone();
            for dependency in &dependencies {
                let dependency_since = self.collections[dependency].since();
                since = join(&since, &dependency_since);
            }
            for dependency in &dependencies {
                holds
                    .entry(*dependency)
                    .or_default()
                    .extend(since.iter().map(|time| (*time, 1)));
            }
            let mut read_capabilities = MutableAntichain::new();
            read_capabilities.update_iter(since.iter().map(|time| (*time, 1)));
            if matches!(description.data_source, DataSource::Ingestion(_)) {
                ingestions.push(id);
                for output in ingestion_outputs(&description) {
                    self.ingestion_outputs.insert(output, id);
                }
            }
            let state = CollectionState {
                description,
                read_capabilities,
                implied_capability: since.clone(),
                read_policy: ReadPolicy::NoPolicy {
                    initial_since: since,
                },
                write_frontier: frontiers.upper,
                storage_dependencies: dependencies,
                collection_metadata: CollectionMetadata { data_shard: shard },
            };
            self.collections.insert(id, state);
            if timely::PartialOrder::less_than(&frontiers.since, &self.collections[&id].since()) {
                // The shard lags the join above; bring it up.
                let _ = self.worker.send(WorkerCommand::DowngradeSinces(vec![(
                    shard,
                    self.collections[&id].since(),
                )]));
            }
        }
        self.update_read_capabilities_inner(&mut holds);
        for id in ingestions {
            self.send_ingestion(id);
            self.record_status(id, StatusChange::plain("starting"), None);
        }
        Ok(())
    }

    /// Sends `CreateSources` for ingestion `id` to its instance.
    fn send_ingestion(&mut self, id: GlobalId) {
        let collection = &self.collections[&id];
        let DataSource::Ingestion(ingestion) = &collection.description.data_source else {
            return;
        };
        // Every output: itself, its source exports, its progress collection.
        let mut outputs = vec![id];
        outputs.extend(ingestion_outputs(&collection.description));
        let mut resume_upper = Antichain::new();
        let mut data_shards = Vec::with_capacity(outputs.len());
        for output in outputs {
            let state = &self.collections[&output];
            for time in state.write_frontier.elements() {
                resume_upper.insert(*time);
            }
            data_shards.push((output, state.collection_metadata.data_shard));
        }
        let command = IngestionCommand {
            id,
            description: collection.description.clone(),
            data_shards,
            resume_upper,
        };
        let instance_id = ingestion.instance_id;
        if let Some(instance) = self.instances.get_mut(&instance_id) {
            instance.send(StorageCommand::CreateSources(vec![command]));
        }
    }

    pub(crate) fn append_inner(
        &mut self,
        commands: Vec<crate::AppendCommand<T>>,
    ) -> Result<oneshot::Receiver<Result<(), StorageError>>, StorageError> {
        self.check_not_fenced()?;
        let (reply, receiver) = oneshot::channel();
        if commands.is_empty() {
            let _ = reply.send(Ok(()));
            return Ok(receiver);
        }
        let mut seen = BTreeSet::new();
        let mut append_commands = Vec::with_capacity(commands.len());
        for (id, updates, upper) in commands {
            let collection = self
                .collections
                .get(&id)
                .ok_or(StorageError::IdentifierMissing(id))?;
            if !collection.description.data_source.is_controller_written() {
                return Err(StorageError::NotControllerWritten(id));
            }
            if !seen.insert(id) {
                return Err(StorageError::DuplicateAppend(id));
            }
            for update in &updates {
                if update.timestamp >= upper {
                    return Err(StorageError::UpdateBeyondUpper(id));
                }
                collection
                    .description
                    .desc
                    .validate(&update.row)
                    .map_err(|error| StorageError::InvalidRow { id, error })?;
            }
            append_commands.push(ShardAppend {
                id,
                shard: collection.collection_metadata.data_shard,
                updates,
                new_upper: Antichain::from_elem(upper),
            });
        }
        self.worker
            .send(WorkerCommand::Append {
                commands: append_commands,
                reply,
            })
            .map_err(|_| super::write_task_stopped())?;
        Ok(receiver)
    }

    pub(crate) async fn snapshot_inner(
        &self,
        id: GlobalId,
        as_of: T,
    ) -> Result<Vec<(Row, Diff)>, StorageError> {
        self.check_not_fenced()?;
        let collection = self
            .collections
            .get(&id)
            .ok_or(StorageError::IdentifierMissing(id))?;
        if !collection.read_capabilities.frontier().less_equal(&as_of) {
            return Err(StorageError::ReadBeforeSince(id));
        }
        let shard = collection.collection_metadata.data_shard;
        let mut read = read_snapshot(
            &*self.backend,
            self.retry,
            id,
            shard,
            as_of,
            &collection.write_frontier,
            SNAPSHOT_CHUNK_LIMIT,
        )
        .await?;
        // The chunks are moved into one Vec as they arrive: the read holds
        // one chunk beside the answer, never a second copy of it.
        let mut rows = Vec::new();
        loop {
            match read.next_chunk().await {
                Ok(Some(chunk)) if rows.is_empty() => rows = chunk,
                Ok(Some(chunk)) => rows.extend(chunk),
                Ok(None) => return Ok(rows),
                // A read started again part-way (after an indeterminate
                // failure) finds the as-of compacted away or the collection
                // dropped in the meantime: said as at the call.
                Err(err @ BackendError::InvalidUsage(InvalidUsage::AsOfNotReadable { .. })) => {
                    return Err(
                        unreadable(&*self.backend, self.retry, id, shard, as_of, err).await,
                    );
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// A [`Subscription`] to collection `id` from `as_of`: the snapshot at
    /// `as_of`, then every later batch of updates with a progress message
    /// after each. It holds a read capability on the collection (just before
    /// the times it has yet to read) until it is dropped; hold changes reach the
    /// collection at the next [`process`](crate::StorageController::process).
    ///
    /// # Errors
    ///
    /// [`StorageError::IdentifierMissing`], [`StorageError::ReadBeforeSince`]
    /// (`as_of` before the since), [`StorageError::Fenced`]. Later failures
    /// are items of the stream.
    pub fn subscribe(&mut self, id: GlobalId, as_of: T) -> Result<Subscription<T>, StorageError> {
        self.check_not_fenced()?;
        let collection = self
            .collections
            .get(&id)
            .ok_or(StorageError::IdentifierMissing(id))?;
        if !collection.read_capabilities.frontier().less_equal(&as_of) {
            return Err(StorageError::ReadBeforeSince(id));
        }
        let shard = collection.collection_metadata.data_shard;
        let mut hold = BTreeMap::from([(id, ChangeBatch::new_from(as_of, 1))]);
        self.update_read_capabilities_inner(&mut hold);
        Ok(Subscription::start(
            std::sync::Arc::clone(&self.backend),
            self.retry,
            id,
            shard,
            as_of,
            self.internal_sender.clone(),
        ))
    }

    /// A [`ReadHold`](crate::ReadHold) on collection `id` at `as_of`: the
    /// collection's since cannot pass the hold until it is downgraded past
    /// `as_of` or dropped. For readers outside the controller (a dataflow
    /// source) that need the data kept readable while they read. Taking the
    /// hold applies at once; its later changes reach the collection at the
    /// next [`process`](crate::StorageController::process).
    ///
    /// # Errors
    ///
    /// [`StorageError::IdentifierMissing`], [`StorageError::ReadBeforeSince`]
    /// (`as_of` before the since), [`StorageError::Fenced`].
    pub fn acquire_read_hold(
        &mut self,
        id: GlobalId,
        as_of: T,
    ) -> Result<crate::ReadHold<T>, StorageError> {
        self.check_not_fenced()?;
        let collection = self
            .collections
            .get(&id)
            .ok_or(StorageError::IdentifierMissing(id))?;
        if !collection.read_capabilities.frontier().less_equal(&as_of) {
            return Err(StorageError::ReadBeforeSince(id));
        }
        let mut hold = BTreeMap::from([(id, ChangeBatch::new_from(as_of, 1))]);
        self.update_read_capabilities_inner(&mut hold);
        Ok(crate::ReadHold::new(
            id,
            as_of,
            self.internal_sender.clone(),
        ))
    }

    pub(crate) async fn migrate_collections_inner(
        &mut self,
        collections: Vec<(GlobalId, CollectionDescription<T>)>,
    ) -> Result<(), StorageError> {
        self.check_not_fenced()?;
        tracing::debug!(
            collections = collections.len(),
            "migrating durable controller metadata"
        );
        self.call_worker(|reply| WorkerCommand::Migrate { reply })
            .await
    }

    /// [`reconcile_state`](crate::StorageController::reconcile_state),
    /// returning its failure instead of reporting it through
    /// [`process`](crate::StorageController::process).
    ///
    /// # Errors
    ///
    /// [`StorageError::Fenced`] if a newer controller owns the metadata;
    /// [`StorageError::Backend`] if finalizing a shard or writing the
    /// metadata failed (what was not reclaimed stays recorded).
    pub async fn try_reconcile_state(&mut self) -> Result<(), StorageError> {
        self.check_not_fenced()?;
        let live_shards: BTreeSet<ShardId> = self
            .collections
            .values()
            .map(|collection| collection.collection_metadata.data_shard)
            .collect();
        let live_sinks: BTreeSet<GlobalId> = self
            .exports
            .iter()
            .filter(|(_, export)| !export.read_capability.is_empty())
            .map(|(id, _)| *id)
            .collect();
        let live_instances = self.instances.keys().copied().collect();
        self.call_worker(|reply| WorkerCommand::Reconcile {
            live_shards,
            live_sinks,
            live_instances,
            reply,
        })
        .await
    }
}

/// The join (the later) of two totally ordered frontiers.
fn join<T: StorageTimestamp>(left: &Antichain<T>, right: &Antichain<T>) -> Antichain<T> {
    if timely::PartialOrder::less_equal(left, right) {
        right.clone()
    } else {
        left.clone()
    }
}

/// The chunks a controller snapshot reads in: bounded by bytes only (the
/// default's 4 MiB), since the answer is one `Vec` anyway. Fewer, larger
/// chunks spare copying entries from chunk to answer (the first chunk
/// becomes the answer); the bytes bound what is held beside it.
const SNAPSHOT_CHUNK_LIMIT: ChunkLimit =
    ChunkLimit::new(std::num::NonZeroUsize::MAX, ChunkLimit::DEFAULT.max_bytes);

/// Reads shard `shard` of collection `id` at `as_of`, waiting for the upper
/// to pass `as_of` first unless `known_upper` (an upper the shard is known
/// to have reached) already does, as a [`ResumingRead`] of chunks within
/// `limit`;
/// maps an unreadable `as_of` to the controller's
/// errors. Reads are idempotent, so indeterminate failures are retried, and
/// one part-way reads again and skips what was delivered (the caller holds
/// the since at `as_of`, so every read of it is the same).
pub(crate) async fn read_snapshot<'a, T, B>(
    backend: &'a B,
    retry: RetryPolicy,
    id: GlobalId,
    shard: ShardId,
    as_of: T,
    known_upper: &Antichain<T>,
    limit: ChunkLimit,
) -> Result<ResumingRead<'a, (Row, Diff), Row>, StorageError>
where
    T: StorageTimestamp,
    B: PersistBackend<T> + ?Sized,
{
    // Uppers only advance: one the shard reached past `as_of` stays past
    // it, so the wait (one backend call) would return at once.
    if known_upper.less_equal(&as_of) {
        let target = Antichain::from_elem(as_of);
        retry_indeterminate(retry, || backend.wait_for_upper_past(shard, &target)).await?;
    }
    let open = move || async move {
        backend
            .snapshot_stream(shard, &as_of, ReadShare::WHOLE, limit)
            .await
    };
    match retry_indeterminate(retry, open).await {
        Ok(stream) => {
            let reopen: OpenRead<'a, (Row, Diff)> = std::sync::Arc::new(move || Box::pin(open()));
            Ok(ResumingRead::new(retry, reopen, |(row, _)| row.clone()).with_stream(stream))
        }
        Err(err @ BackendError::InvalidUsage(InvalidUsage::AsOfNotReadable { .. })) => {
            Err(unreadable(backend, retry, id, shard, as_of, err).await)
        }
        Err(err) => Err(err.into()),
    }
}

/// Why `as_of` of `shard` could not be read.
async fn unreadable<T, B>(
    backend: &B,
    retry: RetryPolicy,
    id: GlobalId,
    shard: ShardId,
    as_of: T,
    err: BackendError,
) -> StorageError
where
    T: StorageTimestamp,
    B: PersistBackend<T> + ?Sized,
{
    match retry_indeterminate(retry, || backend.frontiers(shard)).await {
        Ok(frontiers) if frontiers.since.is_empty() => StorageError::CollectionDropped(id),
        Ok(frontiers) if !frontiers.since.less_equal(&as_of) => StorageError::ReadBeforeSince(id),
        Ok(_) => err.into(),
        Err(err) => err.into(),
    }
}
