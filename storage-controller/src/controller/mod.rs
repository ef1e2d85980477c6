//! [`Controller`]: the [`StorageController`] over a [`PersistBackend`].
//!
//! The controller's state is in memory and changed by `&mut self` methods;
//! every backend write is queued to its write task (`crate::worker`).
//! Results that come back asynchronously (new uppers of completed appends,
//! replica responses, subscription hold changes, background failures)
//! arrive on one internal channel that [`ready`](StorageController::ready)
//! waits on and [`process`](StorageController::process) applies.

mod collections;
pub(crate) use collections::read_snapshot;
mod exports;
mod frontiers;
mod replicas;
mod statuses;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tidemark_storage_types::{
    CollectionDescription, Diff, ExportDescription, GlobalId, PersistBackend, ReadPolicy, Row,
    StorageError, StorageInstanceId, StorageParameters, StorageTimestamp,
};
use timely::progress::{Antichain, ChangeBatch};
use tokio::sync::{mpsc, oneshot};

use crate::StorageController;
use crate::durable::{AwaitingDrop, MetadataStore};
use crate::instance::Instance;
use crate::internal::Internal;
use crate::protocol::{ClusterReplicaLocation, StatisticsUpdate, StorageCommand, StorageResponse};
use crate::reconnect::ReconnectPolicy;
use crate::retry::RetryPolicy;
use crate::state::{CollectionState, CreateExportToken, ExportState};
use crate::transport::{InProcessTransport, ReplicaTransport};
use crate::worker::{Worker, WorkerCommand};

/// How a [`Controller`] runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// The initial storage parameters.
    pub parameters: StorageParameters,
    /// How many times an indeterminate backend failure is retried (with
    /// the same idempotency token for appends) before it is reported.
    pub backend_retries: u32,
    /// The wait before the first retry; it doubles with every retry.
    pub initial_backoff: Duration,
    /// How soon a replica whose connection was lost is reconnected.
    pub replica_reconnect: ReconnectPolicy,
    /// How append calls queued together are coalesced into one store
    /// commit.
    pub group_commit: GroupCommitConfig,
}

/// How the write task coalesces queued `append` calls into one
/// `compare_and_append_all` (group commit).
///
/// Calls that arrive while a commit is in flight wait in the write task's
/// queue; the next round of commits takes the queued calls. Calls linked
/// by shared collections (directly or through other queued calls) form one
/// group, in submission order, up to these bounds (a single call larger
/// than the bounds still commits, alone); groups that share no collection
/// commit side by side, concurrently, unless `join_disjoint_calls` puts
/// them into one commit too. Each call still gets its own answer: a call
/// whose expectation cannot hold gets its own `InvalidUppers` and the
/// others of its group commit without it. `max_calls: 1` commits every
/// call on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupCommitConfig {
    /// The most calls in one commit (at least 1; 0 is read as 1).
    pub max_calls: usize,
    /// The most updates in one commit, summed over its calls.
    pub max_updates: usize,
    /// The most bytes of rows (plus a fixed amount per update) in one
    /// commit, summed over its calls.
    pub max_bytes: usize,
    /// How long the write task waits, after the first queued call, for
    /// more calls to join the commit. Zero (the default) adds no delay: a
    /// commit takes only what is already queued.
    pub max_delay: Duration,
    /// Whether calls sharing no collection also join one commit (one wider
    /// `compare_and_append_all`) instead of committing side by side. Off
    /// by default: measured, one wide atomic commit costs more than
    /// concurrent narrow ones on S3, and on PostgreSQL under many writers
    /// (decision 113).
    pub join_disjoint_calls: bool,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            max_calls: 256,
            max_updates: 100_000,
            max_bytes: 64 << 20,
            max_delay: Duration::ZERO,
            join_disjoint_calls: false,
        }
    }
}

impl GroupCommitConfig {
    /// Every call commits on its own, as one `compare_and_append_all` of
    /// its commands.
    #[must_use]
    pub fn one_commit_per_call() -> Self {
        GroupCommitConfig {
            max_calls: 1,
            ..GroupCommitConfig::default()
        }
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            parameters: StorageParameters::default(),
            backend_retries: 8,
            initial_backoff: Duration::from_millis(10),
            replica_reconnect: ReconnectPolicy::default(),
            group_commit: GroupCommitConfig::default(),
        }
    }
}

/// The storage controller over backend `B`.
///
/// Construct it inside a tokio runtime (it spawns its write task). Dropping
/// it lets the write task finish what is queued and stop.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tidemark_backend_memory::MemoryBackend;
/// use tidemark_storage_controller::{Controller, ControllerConfig, StorageController};
/// use tidemark_storage_types::{
///     CollectionDescription, Datum, GlobalId, RelationDesc, Row, ScalarType, Update,
/// };
///
/// let backend = MemoryBackend::open("controller-doc");
/// let mut controller = Controller::<u64, _>::new(backend, ControllerConfig::default())
///     .await
///     .unwrap();
/// let id = GlobalId::User(1);
/// let relation = RelationDesc::empty().with_column("n", ScalarType::Int64.nullable(false));
/// controller
///     .create_collections(vec![(id, CollectionDescription::table(relation))])
///     .await
///     .unwrap();
/// let row = Row::pack([Datum::Int64(7)]);
/// let durable = controller
///     .append(vec![(id, vec![Update::new(row.clone(), 0, 1)], 1)])
///     .unwrap();
/// durable.await.unwrap().unwrap();
/// assert_eq!(controller.snapshot(id, 0).await.unwrap(), vec![(row, 1)]);
/// // An unknown id is refused before anything is written.
/// assert!(controller.append(vec![(id, vec![], 1), (GlobalId::User(2), vec![], 2)]).is_err());
/// # });
/// ```
pub struct Controller<T: StorageTimestamp, B: PersistBackend<T>> {
    pub(crate) backend: Arc<B>,
    pub(crate) parameters: StorageParameters,
    pub(crate) initialized: bool,
    pub(crate) collections: BTreeMap<GlobalId, CollectionState<T>>,
    pub(crate) exports: BTreeMap<GlobalId, ExportState<T>>,
    pub(crate) instances: BTreeMap<StorageInstanceId, Instance<T>>,
    pub(crate) transport: Arc<dyn ReplicaTransport<T>>,
    pub(crate) worker: mpsc::UnboundedSender<WorkerCommand<T>>,
    pub(crate) internal_sender: mpsc::UnboundedSender<Internal<T>>,
    internal_receiver: mpsc::UnboundedReceiver<Internal<T>>,
    stashed: Option<Internal<T>>,
    /// `AllowCompaction` commands to send at the next `process`.
    pub(crate) pending_compaction: BTreeMap<StorageInstanceId, Vec<(GlobalId, Antichain<T>)>>,
    /// The latest statistics per id and replica process.
    statistics: BTreeMap<GlobalId, BTreeMap<usize, StatisticsUpdate>>,
    /// The latest statistics per id, whichever process reported them.
    latest_statistics: BTreeMap<GlobalId, StatisticsUpdate>,
    statuses: BTreeMap<GlobalId, String>,
    /// Source exports and progress collections, each with the ingestion
    /// that writes it.
    pub(crate) ingestion_outputs: BTreeMap<GlobalId, GlobalId>,
    /// Per ingestion, its dropped outputs whose shards wait for its
    /// `DroppedIds` (mirrors the durable record).
    pub(crate) awaiting_drop: BTreeMap<GlobalId, AwaitingDrop>,
    /// Dropped exports whose hold on their source waits for their
    /// `DroppedIds`.
    pub(crate) dropping_exports: BTreeSet<GlobalId>,
    /// The last status written to a status collection, per id.
    pub(crate) last_statuses: BTreeMap<GlobalId, statuses::StatusChange>,
    /// The next time to write at, per status collection.
    pub(crate) status_uppers: BTreeMap<GlobalId, T>,
    pub(crate) fenced: Arc<AtomicBool>,
    pub(crate) retry: RetryPolicy,
    reconnect: ReconnectPolicy,
    epoch: i64,
}

impl<T: StorageTimestamp, B: PersistBackend<T>> fmt::Debug for Controller<T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("backend", &self.backend)
            .field("epoch", &self.epoch)
            .field("fenced", &self.fenced.load(Ordering::SeqCst))
            .field("initialized", &self.initialized)
            .field("collections", &self.collections.keys().collect::<Vec<_>>())
            .field("exports", &self.exports.keys().collect::<Vec<_>>())
            .field("instances", &self.instances.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<T: StorageTimestamp, B: PersistBackend<T>> Controller<T, B> {
    /// A controller over `backend` with a fresh, private
    /// [`InProcessTransport`]: it can run tables, but to serve replicas use
    /// [`with_transport`](Self::with_transport) with a transport the
    /// replicas listen on.
    ///
    /// Reads the durable metadata and fences every older controller on the
    /// same backend.
    ///
    /// # Errors
    ///
    /// [`StorageError::Backend`] if the backend fails or the metadata is
    /// corrupted; [`StorageError::MetadataFormatTooNew`] if the metadata was
    /// written by a newer version of this crate.
    pub async fn new(backend: B, config: ControllerConfig) -> Result<Self, StorageError> {
        let transport = InProcessTransport::<T>::new();
        Self::with_transport(backend, config, transport).await
    }

    /// As [`new`](Self::new), reaching replicas through `transport`.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub async fn with_transport(
        backend: B,
        config: ControllerConfig,
        transport: Arc<dyn ReplicaTransport<T>>,
    ) -> Result<Self, StorageError> {
        let backend = Arc::new(backend);
        let retry = RetryPolicy {
            retries: config.backend_retries,
            initial_backoff: config.initial_backoff,
        };
        let fenced = Arc::new(AtomicBool::new(false));
        let metadata = MetadataStore::open_and_fence(&*backend, retry, Arc::clone(&fenced)).await?;
        let epoch = metadata.epoch();
        let awaiting_drop = metadata.metadata().awaiting_drop.clone();
        let (internal_sender, internal_receiver) = mpsc::unbounded_channel();
        let (worker_sender, worker_receiver) = mpsc::unbounded_channel();
        let worker = Worker {
            backend: Arc::clone(&backend),
            metadata,
            retry,
            parameters: config.parameters.clone(),
            uppers: BTreeMap::new(),
            internal: internal_sender.clone(),
            group_commit: config.group_commit.clone(),
        };
        tokio::spawn(worker.run(worker_receiver));
        Ok(Controller {
            backend,
            parameters: config.parameters,
            initialized: false,
            collections: BTreeMap::new(),
            exports: BTreeMap::new(),
            instances: BTreeMap::new(),
            transport,
            worker: worker_sender,
            internal_sender,
            internal_receiver,
            stashed: None,
            pending_compaction: BTreeMap::new(),
            statistics: BTreeMap::new(),
            latest_statistics: BTreeMap::new(),
            statuses: BTreeMap::new(),
            ingestion_outputs: BTreeMap::new(),
            awaiting_drop,
            dropping_exports: BTreeSet::new(),
            last_statuses: BTreeMap::new(),
            status_uppers: BTreeMap::new(),
            fenced,
            retry,
            reconnect: config.replica_reconnect,
            epoch,
        })
    }

    /// The backend the controller stores data in.
    #[must_use]
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// The epoch this controller wrote to the durable metadata (each
    /// controller started on a backend gets the next one).
    #[must_use]
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether a newer controller has taken over the backend (this one then
    /// refuses work with [`StorageError::Fenced`]).
    #[must_use]
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// The current storage parameters.
    #[must_use]
    pub fn parameters(&self) -> &StorageParameters {
        &self.parameters
    }

    /// Whether some dropped outputs of ingestion `id` (its own collection,
    /// source exports, progress collection) keep their shards until the
    /// ingestion's replica confirms with `DroppedIds` that it stopped.
    #[must_use]
    pub fn is_awaiting_drop(&self, id: GlobalId) -> bool {
        self.awaiting_drop.contains_key(&id)
    }

    /// Whether dropped export `id` still holds its source, waiting for its
    /// replica to confirm with `DroppedIds` that the sink stopped.
    #[must_use]
    pub fn is_export_dropping(&self, id: GlobalId) -> bool {
        self.dropping_exports.contains(&id)
    }

    /// The latest statistics a replica reported for `id` (from whichever
    /// of its processes reported last); `None` before the first report and
    /// once `id` is dropped.
    #[must_use]
    pub fn statistics(&self, id: GlobalId) -> Option<&StatisticsUpdate> {
        self.latest_statistics.get(&id)
    }

    /// The latest statistics of `id` from each replica process that
    /// reported some, by process index.
    pub fn statistics_per_process(
        &self,
        id: GlobalId,
    ) -> impl Iterator<Item = (usize, &StatisticsUpdate)> + '_ {
        self.statistics
            .get(&id)
            .into_iter()
            .flatten()
            .map(|(process, update)| (*process, update))
    }

    /// The latest statistics of every live id, per replica process, in id
    /// then process order.
    pub fn all_statistics(
        &self,
    ) -> impl Iterator<Item = (GlobalId, usize, &StatisticsUpdate)> + '_ {
        self.statistics.iter().flat_map(|(id, processes)| {
            processes
                .iter()
                .map(move |(process, update)| (*id, *process, update))
        })
    }

    /// Forgets what replicas reported about `id`.
    pub(crate) fn forget_reports(&mut self, id: GlobalId) {
        self.forget_statistics(id);
        self.statuses.remove(&id);
    }

    /// Forgets `id`'s statistics and status history bookkeeping, keeping
    /// the replica's last status (`status(id)`) until its `DroppedIds`.
    pub(crate) fn forget_statistics(&mut self, id: GlobalId) {
        self.statistics.remove(&id);
        self.latest_statistics.remove(&id);
        self.last_statuses.remove(&id);
        self.status_uppers.remove(&id);
    }

    /// The latest status a replica reported for `id`.
    #[must_use]
    pub fn status(&self, id: GlobalId) -> Option<&str> {
        self.statuses.get(&id).map(String::as_str)
    }

    /// Waits until every backend write queued so far (appends, since
    /// downgrades, compactions, finalizations, metadata) is done. Their
    /// failures still surface through [`process`](StorageController::process).
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.worker.send(WorkerCommand::Barrier { reply }).is_ok() {
            let _ = done.await;
        }
    }

    /// [`append`](StorageController::append) with one result: checks the
    /// commands at once (nothing is written on error) and returns a future
    /// that resolves when every command is durable. The future does not
    /// borrow the controller, so it can be awaited while the controller
    /// does other work.
    ///
    /// ```
    /// # use tidemark_backend_memory::MemoryBackend;
    /// # use tidemark_storage_controller::{Controller, ControllerConfig, StorageController};
    /// # use tidemark_storage_types::{CollectionDescription, GlobalId, RelationDesc, Row, Datum, ScalarType, Update};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tidemark_storage_types::StorageError> {
    /// let backend = MemoryBackend::open("append-durable-doc");
    /// let mut controller = Controller::<u64, _>::new(backend, ControllerConfig::default()).await?;
    /// let table = GlobalId::User(1);
    /// let desc = RelationDesc::empty().with_column("n", ScalarType::Int64.nullable(false));
    /// controller.create_collections(vec![(table, CollectionDescription::table(desc))]).await?;
    /// let row = Row::pack([Datum::Int64(7)]);
    /// controller.append_durable(vec![(table, vec![Update::new(row, 0, 1)], 1)]).await?;
    /// assert_eq!(controller.snapshot(table, 0).await?.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`append`](StorageController::append), whether found at
    /// once or when the write completes, and
    /// [`StorageError::WriteTaskStopped`] if the write task stopped before
    /// answering.
    pub fn append_durable(
        &mut self,
        commands: Vec<crate::AppendCommand<T>>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send + 'static {
        let submitted = self.append_inner(commands);
        async move { submitted?.await.map_err(|_| write_task_stopped())? }
    }

    pub(crate) fn check_not_fenced(&self) -> Result<(), StorageError> {
        if self.is_fenced() {
            Err(StorageError::Fenced)
        } else {
            Ok(())
        }
    }

    /// Sends a command to the write task and waits for its reply.
    pub(crate) async fn call_worker<R>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<R, StorageError>>) -> WorkerCommand<T>,
    ) -> Result<R, StorageError> {
        let (reply, result) = oneshot::channel();
        self.worker
            .send(command(reply))
            .map_err(|_| write_task_stopped())?;
        result.await.map_err(|_| write_task_stopped())?
    }

    fn handle_response(
        &mut self,
        instance: StorageInstanceId,
        process: usize,
        response: StorageResponse<T>,
    ) {
        match response {
            StorageResponse::FrontierUppers(uppers) => self.update_known_write_frontiers(uppers),
            StorageResponse::DroppedIds(ids) => {
                for id in ids {
                    if self
                        .awaiting_drop
                        .get(&id)
                        .is_some_and(|awaiting| awaiting.stopping)
                    {
                        self.finalize_awaited(id);
                    }
                    self.release_dropped_export(id);
                    let dropped = self.exports.get(&id).is_some_and(|export| {
                        export.write_frontier.is_empty() && export.read_capability.is_empty()
                    });
                    if dropped {
                        self.exports.remove(&id);
                    }
                    self.forget_reports(id);
                }
            }
            StorageResponse::StatisticsUpdates(updates) => {
                for (id, update) in updates {
                    // Late reports of an id dropped meanwhile are ignored.
                    if !self.collections.contains_key(&id) && !self.exports.contains_key(&id) {
                        continue;
                    }
                    self.statistics
                        .entry(id)
                        .or_default()
                        .insert(process, update);
                    self.latest_statistics.insert(id, update);
                }
            }
            StorageResponse::StatusUpdates(updates) => {
                for (id, text) in updates {
                    let change = statuses::StatusChange::parse(&text);
                    self.record_status(id, change, Some((instance, process)));
                    self.statuses.insert(id, text);
                }
            }
        }
    }

    /// Applies uppers that arrived asynchronously, skipping ids dropped
    /// (and forgotten) in the meantime.
    fn update_known_write_frontiers(&mut self, uppers: Vec<(GlobalId, Antichain<T>)>) {
        let known: Vec<_> = uppers
            .into_iter()
            .filter(|(id, _)| self.collections.contains_key(id) || self.exports.contains_key(id))
            .collect();
        self.update_write_frontiers_inner(&known);
    }

    fn send_pending_compaction(&mut self) {
        for (instance_id, frontiers) in std::mem::take(&mut self.pending_compaction) {
            if let Some(instance) = self.instances.get_mut(&instance_id)
                && !frontiers.is_empty()
            {
                instance.send(StorageCommand::AllowCompaction(frontiers));
            }
        }
    }
}

pub(crate) fn write_task_stopped() -> StorageError {
    StorageError::WriteTaskStopped
}

#[async_trait]
impl<T: StorageTimestamp, B: PersistBackend<T>> StorageController for Controller<T, B> {
    type Timestamp = T;

    fn initialization_complete(&mut self) {
        self.initialized = true;
        for instance in self.instances.values_mut() {
            instance.send(StorageCommand::InitializationComplete);
        }
    }

    fn update_configuration(&mut self, config_params: StorageParameters) {
        self.parameters.update(config_params);
        let _ = self
            .worker
            .send(WorkerCommand::Configure(self.parameters.clone()));
        for instance in self.instances.values_mut() {
            instance.send(StorageCommand::UpdateConfiguration(self.parameters.clone()));
        }
    }

    fn collection(&self, id: GlobalId) -> Result<&CollectionState<T>, StorageError> {
        self.collections
            .get(&id)
            .ok_or(StorageError::IdentifierMissing(id))
    }

    fn create_instance(&mut self, id: StorageInstanceId) {
        assert!(
            !self.instances.contains_key(&id),
            "storage instance already exists: {id}"
        );
        let mut instance = Instance::new(id, self.parameters.clone(), self.initialized);
        // Ingestions dropped before a restart and not yet confirmed: any
        // replica of the instance is asked to confirm them.
        let stopping: Vec<_> = self
            .awaiting_drop
            .iter()
            .filter(|(ingestion, awaiting)| {
                awaiting.instance == id
                    && awaiting.stopping
                    && !self.collections.contains_key(ingestion)
            })
            .map(|(ingestion, _)| (*ingestion, Antichain::new()))
            .collect();
        if !stopping.is_empty() {
            instance.send(StorageCommand::AllowCompaction(stopping));
        }
        self.instances.insert(id, instance);
    }

    fn drop_instance(&mut self, id: StorageInstanceId) {
        assert!(
            self.instances.remove(&id).is_some(),
            "storage instance does not exist: {id}"
        );
        self.pending_compaction.remove(&id);
        // Nothing runs on a dropped instance any more.
        let orphaned: Vec<GlobalId> = self
            .awaiting_drop
            .iter()
            .filter(|(_, awaiting)| awaiting.instance == id)
            .map(|(ingestion, _)| *ingestion)
            .collect();
        for ingestion in orphaned {
            self.finalize_awaited(ingestion);
        }
        let exports: Vec<GlobalId> = self
            .dropping_exports
            .iter()
            .filter(|export| {
                self.exports
                    .get(export)
                    .is_some_and(|export| export.description.instance_id == id)
            })
            .copied()
            .collect();
        for export in exports {
            self.release_dropped_export(export);
        }
    }

    fn connect_replica(&mut self, id: StorageInstanceId, location: ClusterReplicaLocation) {
        let instance = self
            .instances
            .get_mut(&id)
            .unwrap_or_else(|| panic!("storage instance does not exist: {id}"));
        instance.connect(&location, &*self.transport, &self.internal_sender);
    }

    fn collection_mut(&mut self, id: GlobalId) -> Result<&mut CollectionState<T>, StorageError> {
        self.collections
            .get_mut(&id)
            .ok_or(StorageError::IdentifierMissing(id))
    }

    fn collections(&self) -> Box<dyn Iterator<Item = (&GlobalId, &CollectionState<T>)> + '_> {
        Box::new(self.collections.iter())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(collections = ?collections.iter().map(|(id, _)| *id).collect::<Vec<_>>()), err(level = "debug"))]
    async fn migrate_collections(
        &mut self,
        collections: Vec<(GlobalId, CollectionDescription<T>)>,
    ) -> Result<(), StorageError> {
        self.migrate_collections_inner(collections).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(collections = ?collections.iter().map(|(id, _)| *id).collect::<Vec<_>>()), err(level = "debug"))]
    async fn create_collections(
        &mut self,
        collections: Vec<(GlobalId, CollectionDescription<T>)>,
    ) -> Result<(), StorageError> {
        self.create_collections_inner(collections).await
    }

    fn export(&self, id: GlobalId) -> Result<&ExportState<T>, StorageError> {
        self.exports
            .get(&id)
            .ok_or(StorageError::IdentifierMissing(id))
    }

    fn export_mut(&mut self, id: GlobalId) -> Result<&mut ExportState<T>, StorageError> {
        self.exports
            .get_mut(&id)
            .ok_or(StorageError::IdentifierMissing(id))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(exports = exports.len()), err(level = "debug"))]
    async fn create_exports(
        &mut self,
        exports: Vec<(CreateExportToken<T>, ExportDescription<T>)>,
    ) -> Result<(), StorageError> {
        self.create_exports_inner(exports).await
    }

    #[tracing::instrument(level = "debug", skip(self), err(level = "debug"))]
    fn prepare_export(
        &mut self,
        id: GlobalId,
        from_id: GlobalId,
    ) -> Result<CreateExportToken<T>, StorageError> {
        self.prepare_export_inner(id, from_id)
    }

    fn cancel_prepare_export(&mut self, token: CreateExportToken<T>) {
        self.release_token(token);
    }

    #[tracing::instrument(level = "debug", skip(self), err(level = "debug"))]
    fn drop_sources(&mut self, identifiers: Vec<GlobalId>) -> Result<(), StorageError> {
        if let Some(missing) = identifiers
            .iter()
            .find(|id| !self.collections.contains_key(id))
        {
            return Err(StorageError::IdentifierMissing(*missing));
        }
        self.drop_sources_unvalidated(identifiers);
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self), err(level = "debug"))]
    fn drop_sinks(&mut self, identifiers: Vec<GlobalId>) -> Result<(), StorageError> {
        if let Some(missing) = identifiers.iter().find(|id| !self.exports.contains_key(id)) {
            return Err(StorageError::IdentifierMissing(*missing));
        }
        self.drop_sinks_unvalidated(identifiers);
        Ok(())
    }

    fn drop_sinks_unvalidated(&mut self, identifiers: Vec<GlobalId>) {
        self.drop_sinks_inner(identifiers);
    }

    fn drop_sources_unvalidated(&mut self, identifiers: Vec<GlobalId>) {
        let policies = identifiers
            .into_iter()
            .filter(|id| self.collections.contains_key(id))
            .map(|id| (id, ReadPolicy::ValidFrom(Antichain::new())))
            .collect();
        self.set_read_policy_inner(policies);
    }

    #[tracing::instrument(level = "debug", skip_all, fields(collections = ?commands.iter().map(|(id, _, _)| *id).collect::<Vec<_>>()), err(level = "debug"))]
    fn append(
        &mut self,
        commands: Vec<crate::AppendCommand<T>>,
    ) -> Result<oneshot::Receiver<Result<(), StorageError>>, StorageError> {
        self.append_inner(commands)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(collection = %id, as_of = ?as_of), err(level = "debug"))]
    async fn snapshot(&self, id: GlobalId, as_of: T) -> Result<Vec<(Row, Diff)>, StorageError> {
        self.snapshot_inner(id, as_of).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(collections = ?policies.iter().map(|(id, _)| *id).collect::<Vec<_>>()))]
    fn set_read_policy(&mut self, policies: Vec<(GlobalId, ReadPolicy<T>)>) {
        self.set_read_policy_inner(policies);
    }

    fn update_write_frontiers(&mut self, updates: &[(GlobalId, Antichain<T>)]) {
        self.update_write_frontiers_inner(updates);
    }

    fn update_read_capabilities(&mut self, updates: &mut BTreeMap<GlobalId, ChangeBatch<T>>) {
        self.update_read_capabilities_inner(updates);
    }

    async fn ready(&mut self) {
        if self.stashed.is_some() || !self.pending_compaction.is_empty() {
            return;
        }
        // SUBTLE: `recv` is cancellation safe, and the message is stored
        // before this future can be dropped again.
        if let Some(message) = self.internal_receiver.recv().await {
            self.stashed = Some(message);
        }
    }

    #[tracing::instrument(level = "trace", skip_all, err(level = "debug"))]
    async fn process(&mut self) -> Result<(), StorageError> {
        let mut result = Ok(());
        match self.stashed.take() {
            Some(Internal::Replica {
                instance,
                epoch,
                process,
                response,
            }) => {
                let filtered = self
                    .instances
                    .get_mut(&instance)
                    .and_then(|instance| instance.absorb_response(epoch, process, response));
                if let Some(response) = filtered {
                    self.handle_response(instance, process, response);
                }
            }
            Some(Internal::ReplicaDisconnected {
                instance,
                epoch,
                process,
            }) => self.schedule_reconnect(instance, epoch, process),
            Some(Internal::ReconnectDue { instance, epoch }) => self.reconnect_due(instance, epoch),
            Some(Internal::WriteCompleted(uppers)) => self.update_known_write_frontiers(uppers),
            Some(Internal::HoldChanges(id, changes)) if self.collections.contains_key(&id) => {
                let mut updates = BTreeMap::from([(id, changes)]);
                self.update_read_capabilities_inner(&mut updates);
            }
            Some(Internal::HoldChanges(..)) => {}
            Some(Internal::BackgroundError(err)) => result = Err(err),
            None => {}
        }
        self.send_pending_compaction();
        result
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn reconcile_state(&mut self) {
        if let Err(err) = self.try_reconcile_state().await {
            // The receiver lives as long as the controller: sending cannot fail.
            let _ = self.internal_sender.send(Internal::BackgroundError(err));
        }
    }
}
