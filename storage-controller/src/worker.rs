//! The controller's write task: every backend write the controller makes
//! (appends, since downgrades, compaction, finalization, durable metadata)
//! runs here, one command after another in submission order.
//!
//! SUBTLE: running them on one task in order is what makes appends to one
//! collection apply in submission order, a finalization follow every
//! append and downgrade queued before it, and a re-created id's new shard
//! be recorded after the old one is retired.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tidemark_storage_types::{
    BackendError, DeterminateKind, EarlierAttempts, GlobalId, IdempotencyToken, PersistBackend,
    ShardFrontiers, ShardId, StorageError, StorageInstanceId, StorageParameters, StorageTimestamp,
    Update, WriteFence,
};
use timely::PartialOrder;
use timely::progress::Antichain;
use tokio::sync::{mpsc, oneshot};

use crate::controller::GroupCommitConfig;
use crate::durable::{
    AwaitingDrop, DurableMetadata, MetadataStore, decode_frontier, encode_frontier,
};
use crate::internal::Internal;
use crate::retry::{RetryPolicy, retry_indeterminate};

/// A collection to register: its id, and the since to raise its shard to.
pub(crate) type Registration<T> = (GlobalId, Option<Antichain<T>>);

/// What registering collections answers: each id's shard and its
/// frontiers.
pub(crate) type Registered<T> = Vec<(GlobalId, ShardId, ShardFrontiers<T>)>;

/// One command of an append call.
#[derive(Debug)]
pub(crate) struct ShardAppend<T> {
    pub(crate) id: GlobalId,
    pub(crate) shard: ShardId,
    pub(crate) updates: Vec<Update<T>>,
    pub(crate) new_upper: Antichain<T>,
}

/// Work for the write task.
#[derive(Debug)]
pub(crate) enum WorkerCommand<T> {
    /// Records shards for new ids durably, opens every shard, raises sinces.
    Register {
        collections: Vec<Registration<T>>,
        reply: oneshot::Sender<Result<Registered<T>, StorageError>>,
    },
    /// Records sink as_ofs (keeping earlier records); replies with the
    /// recorded as_of of each.
    RecordSinks {
        sinks: Vec<(GlobalId, Antichain<T>)>,
        reply: oneshot::Sender<Result<Vec<Antichain<T>>, StorageError>>,
    },
    /// Forgets sink records.
    ForgetSinks { ids: Vec<GlobalId> },
    /// Appends; replies when durable.
    Append {
        commands: Vec<ShardAppend<T>>,
        reply: AppendReply,
    },
    /// Downgrades shards' sinces (then maybe compacts each).
    DowngradeSinces(Vec<(ShardId, Antichain<T>)>),
    /// Retires a dropped collection's shard: durably marks it, finalizes it,
    /// forgets it.
    Finalize { id: GlobalId, shard: ShardId },
    /// Durably moves dropped outputs of `ingestion` from the live
    /// collections to those awaiting the ingestion's `DroppedIds`.
    AwaitDrop {
        ingestion: GlobalId,
        awaiting: AwaitingDrop,
    },
    /// `ingestion`'s replica confirmed it stopped (or its instance is
    /// gone): finalizes the shards awaiting it and forgets them.
    FinalizeAwaited { ingestion: GlobalId },
    /// Rewrites the metadata in the current format if it is older.
    Migrate {
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    /// Finalizes every recorded shard not in `live_shards` and the shards
    /// awaiting a drop on an instance not in `live_instances`, forgets sink
    /// records not in `live_sinks`, finishes interrupted finalizations.
    Reconcile {
        live_shards: BTreeSet<ShardId>,
        live_sinks: BTreeSet<GlobalId>,
        live_instances: BTreeSet<StorageInstanceId>,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    /// New storage parameters.
    Configure(StorageParameters),
    /// Replies once every earlier command is done.
    Barrier { reply: oneshot::Sender<()> },
}

/// The write task's state.
pub(crate) struct Worker<T, B> {
    pub(crate) backend: Arc<B>,
    pub(crate) metadata: MetadataStore<T>,
    pub(crate) retry: RetryPolicy,
    pub(crate) parameters: StorageParameters,
    /// The upper of each shard as this task last wrote or saw it.
    pub(crate) uppers: BTreeMap<ShardId, Antichain<T>>,
    pub(crate) internal: mpsc::UnboundedSender<Internal<T>>,
    /// How queued append calls are coalesced into one commit.
    pub(crate) group_commit: GroupCommitConfig,
}

impl<T: StorageTimestamp, B: PersistBackend<T>> Worker<T, B> {
    /// Runs until the controller drops its sender.
    pub(crate) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<WorkerCommand<T>>) {
        let mut chunk = Vec::new();
        let limit = self.group_commit.max_calls.max(256);
        loop {
            chunk.clear();
            if commands.recv_many(&mut chunk, limit).await == 0 {
                return;
            }
            self.linger_for_more_calls(&mut commands, &mut chunk, limit)
                .await;
            // One fence check per chunk: a fenced controller must not touch
            // data a newer controller owns.
            //
            // SUBTLE: a chunk of appends only skips the metadata read. Every
            // shard this controller appends to is named in the metadata
            // before its first write, so a newer controller's start-up
            // raises its writer epoch before that controller is ready
            // (`fence_data_shards`, which opens a shard not yet opened), and
            // the backend then refuses this controller's epoch atomically
            // with the append: answered `Fenced` (`fenced_answer`). The read
            // would only add a refusal in the newer controller's start-up
            // window (decision 111).
            let fence = if self.metadata.known_fenced() {
                Err(StorageError::Fenced)
            } else if chunk.iter().any(|command| {
                !matches!(
                    command,
                    WorkerCommand::Barrier { .. } | WorkerCommand::Append { .. }
                )
            }) {
                self.metadata.check_fence(&*self.backend).await
            } else {
                Ok(())
            };
            drop_superseded_downgrades(&mut chunk);
            let mut appends = Vec::new();
            for command in chunk.drain(..) {
                match (command, &fence) {
                    (WorkerCommand::Append { commands, reply }, Ok(())) => {
                        appends.push(AppendCall { commands, reply });
                    }
                    (command, Ok(())) => {
                        // SUBTLE: appends queued before this command run
                        // before it.
                        self.append_calls(std::mem::take(&mut appends)).await;
                        self.handle(command).await;
                    }
                    (command, Err(err)) => self.refuse(command, err.clone()),
                }
            }
            self.append_calls(appends).await;
        }
    }

    /// With a nonzero `max_delay` and an append call in `chunk`, keeps
    /// adding arriving commands to `chunk` until the delay has passed since
    /// now or the chunk holds `max_calls` calls.
    async fn linger_for_more_calls(
        &self,
        commands: &mut mpsc::UnboundedReceiver<WorkerCommand<T>>,
        chunk: &mut Vec<WorkerCommand<T>>,
        limit: usize,
    ) {
        let delay = self.group_commit.max_delay;
        let calls_in = |chunk: &[WorkerCommand<T>]| {
            chunk
                .iter()
                .filter(|command| matches!(command, WorkerCommand::Append { .. }))
                .count()
        };
        if delay.is_zero() || calls_in(chunk) == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + delay;
        while calls_in(chunk) < self.group_commit.max_calls.max(1) && chunk.len() < limit {
            let room = limit - chunk.len();
            match tokio::time::timeout_at(deadline, commands.recv_many(chunk, room)).await {
                // Closed: what is queued still runs; the next receive ends.
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn report(&self, err: StorageError) {
        tracing::warn!(error = %err, "background storage work failed");
        let _ = self.internal.send(Internal::BackgroundError(err));
    }

    fn refuse(&self, command: WorkerCommand<T>, err: StorageError) {
        match command {
            WorkerCommand::Register { reply, .. } => drop(reply.send(Err(err))),
            WorkerCommand::RecordSinks { reply, .. } => drop(reply.send(Err(err))),
            WorkerCommand::Append { reply, .. } => drop(reply.send(Err(err))),
            WorkerCommand::Migrate { reply } => drop(reply.send(Err(err))),
            WorkerCommand::Reconcile { reply, .. } => drop(reply.send(Err(err))),
            WorkerCommand::Barrier { reply } => drop(reply.send(())),
            WorkerCommand::Configure(_) => {}
            WorkerCommand::ForgetSinks { .. }
            | WorkerCommand::DowngradeSinces(_)
            | WorkerCommand::Finalize { .. }
            | WorkerCommand::AwaitDrop { .. }
            | WorkerCommand::FinalizeAwaited { .. } => self.report(err),
        }
    }

    async fn handle(&mut self, command: WorkerCommand<T>) {
        match command {
            WorkerCommand::Register { collections, reply } => {
                let _ = reply.send(self.register(collections).await);
            }
            WorkerCommand::RecordSinks { sinks, reply } => {
                let _ = reply.send(self.record_sinks(sinks).await);
            }
            WorkerCommand::ForgetSinks { ids } => {
                let mut metadata = self.metadata.metadata().clone();
                let before = metadata.sink_as_ofs.len();
                for id in &ids {
                    metadata.sink_as_ofs.remove(id);
                }
                if metadata.sink_as_ofs.len() != before
                    && let Err(err) = self.metadata.write(&*self.backend, metadata).await
                {
                    self.report(err);
                }
            }
            WorkerCommand::Append { commands, reply } => {
                self.append_calls(vec![AppendCall { commands, reply }])
                    .await;
            }
            WorkerCommand::DowngradeSinces(downgrades) => {
                for (shard, since) in downgrades {
                    if let Err(err) = self.downgrade_since(shard, since).await {
                        self.report(err);
                    }
                }
            }
            WorkerCommand::Finalize { id, shard } => {
                if let Err(err) = self.finalize(Some(id), [shard].into()).await {
                    self.report(err);
                }
            }
            WorkerCommand::AwaitDrop {
                ingestion,
                awaiting,
            } => {
                if let Err(err) = self.await_drop(ingestion, awaiting).await {
                    self.report(err);
                }
            }
            WorkerCommand::FinalizeAwaited { ingestion } => {
                let ingestions = BTreeSet::from([ingestion]);
                if let Err(err) = self.finalize_awaited(ingestions, BTreeSet::new()).await {
                    self.report(err);
                }
            }
            WorkerCommand::Migrate { reply } => {
                let result =
                    if self.metadata.format_version() < crate::durable::CURRENT_FORMAT_VERSION {
                        let metadata = self.metadata.metadata().clone();
                        self.metadata.write(&*self.backend, metadata).await
                    } else {
                        Ok(())
                    };
                let _ = reply.send(result);
            }
            WorkerCommand::Reconcile {
                live_shards,
                live_sinks,
                live_instances,
                reply,
            } => {
                let _ = reply.send(
                    self.reconcile(live_shards, live_sinks, live_instances)
                        .await,
                );
            }
            WorkerCommand::Configure(parameters) => self.parameters = parameters,
            WorkerCommand::Barrier { reply } => {
                let _ = reply.send(());
            }
        }
    }

    async fn register(
        &mut self,
        collections: Vec<Registration<T>>,
    ) -> Result<Registered<T>, StorageError> {
        let mut metadata = self.metadata.metadata().clone();
        let mut changed = false;
        for (id, _) in &collections {
            metadata.collections.entry(*id).or_insert_with(|| {
                changed = true;
                ShardId::new()
            });
        }
        // SUBTLE: the mapping is durable before any shard is used, so a
        // crash never leaves data in a shard no metadata names.
        if changed {
            self.metadata
                .write(&*self.backend, metadata.clone())
                .await?;
        }
        let mut registered = Vec::with_capacity(collections.len());
        for (id, since) in collections {
            let shard = metadata.collections[&id];
            let backend = &*self.backend;
            let mut frontiers = retry_indeterminate(self.retry, || backend.open(shard)).await?;
            let fence = self.metadata.write_fence();
            if let Some(since) = since
                && PartialOrder::less_than(&frontiers.since, &since)
            {
                frontiers.since = retry_indeterminate(self.retry, || {
                    backend.downgrade_since(shard, &since, fence)
                })
                .await?;
            } else {
                // Raises the shard's writer epoch, fencing out older
                // controllers; best effort, as the start-up fence of every
                // named shard and the per-chunk metadata check also hold.
                let current = frontiers.since.clone();
                if let Err(err) = retry_indeterminate(self.retry, || {
                    backend.downgrade_since(shard, &current, fence)
                })
                .await
                {
                    tracing::warn!(%shard, %err, "could not raise the shard's writer epoch");
                }
            }
            self.uppers.insert(shard, frontiers.upper.clone());
            registered.push((id, shard, frontiers));
        }
        Ok(registered)
    }

    async fn record_sinks(
        &mut self,
        sinks: Vec<(GlobalId, Antichain<T>)>,
    ) -> Result<Vec<Antichain<T>>, StorageError> {
        let mut metadata = self.metadata.metadata().clone();
        let mut changed = false;
        let mut recorded = Vec::with_capacity(sinks.len());
        for (id, as_of) in sinks {
            let encoded = metadata.sink_as_ofs.entry(id).or_insert_with(|| {
                changed = true;
                encode_frontier(&as_of)
            });
            recorded.push(decode_frontier(encoded));
        }
        if changed {
            self.metadata.write(&*self.backend, metadata).await?;
        }
        Ok(recorded)
    }

    /// Runs consecutive `append` calls, coalesced into groups (see
    /// [`coalesce`]) that each commit as one atomic
    /// `compare_and_append_all`; calls on one shard apply in submission
    /// order. Consecutive groups on disjoint shards commit concurrently; a
    /// group that shares a shard with an earlier one waits for it. Each
    /// call's reply resolves once its group is done.
    async fn append_calls(&mut self, calls: Vec<AppendCall<T>>) {
        let groups = coalesce(calls, &self.group_commit);
        let mut batch = Vec::new();
        let mut batch_shards = BTreeSet::new();
        for group in groups {
            let shards = group_shards(&group);
            if !batch_shards.is_disjoint(&shards) {
                self.commit_disjoint_groups(std::mem::take(&mut batch))
                    .await;
                batch_shards.clear();
            }
            batch_shards.extend(shards);
            batch.push(group);
        }
        self.commit_disjoint_groups(batch).await;
    }

    /// Commits groups whose shards are disjoint, concurrently; then commits
    /// the calls of any group the backend refused one by one, so each gets
    /// its own answer.
    async fn commit_disjoint_groups(&mut self, groups: Vec<Vec<AppendCall<T>>>) {
        if groups.is_empty() {
            return;
        }
        let backend = &*self.backend;
        let retry = self.retry;
        let fence = self.metadata.write_fence();
        let runs = groups.into_iter().map(|group| {
            let known: BTreeMap<ShardId, Antichain<T>> = group_shards(&group)
                .into_iter()
                .filter_map(|shard| Some((shard, self.uppers.get(&shard)?.clone())))
                .collect();
            commit_group(backend, retry, fence, group, known)
        });
        let finished = futures::future::join_all(runs).await;
        let mut refused = Vec::new();
        for outcome in finished {
            self.apply_uppers(outcome.uppers);
            // SUBTLE: the new uppers are queued before the callers'
            // receivers resolve, so a process() after the write completes
            // sees them.
            if !outcome.written.is_empty() {
                let _ = self
                    .internal
                    .send(Internal::WriteCompleted(outcome.written));
            }
            for (reply, result) in outcome.answers {
                let _ = reply.send(self.fenced_answer(result));
            }
            refused.push(outcome.refused);
        }
        for calls in refused {
            self.append_calls_one_by_one(calls).await;
        }
    }

    /// Records each shard's upper as a write left it (`None`: unknown).
    fn apply_uppers(&mut self, uppers: Vec<(ShardId, Option<Antichain<T>>)>) {
        for (shard, upper) in uppers {
            match upper {
                Some(upper) => self.uppers.insert(shard, upper),
                None => self.uppers.remove(&shard),
            };
        }
    }

    /// Runs calls in submission order, each as its own
    /// `compare_and_append_all`; consecutive calls on disjoint shards run
    /// concurrently.
    async fn append_calls_one_by_one(&mut self, calls: Vec<AppendCall<T>>) {
        let mut batch = Vec::new();
        let mut batch_shards = BTreeSet::new();
        for call in calls {
            let shards: BTreeSet<ShardId> =
                call.commands.iter().map(|command| command.shard).collect();
            if !batch_shards.is_disjoint(&shards) {
                self.append_disjoint_calls(std::mem::take(&mut batch)).await;
                batch_shards.clear();
            }
            batch_shards.extend(shards);
            batch.push(call);
        }
        self.append_disjoint_calls(batch).await;
    }

    /// Runs calls whose shards are disjoint, concurrently, each as its own
    /// `compare_and_append_all`.
    async fn append_disjoint_calls(&mut self, calls: Vec<AppendCall<T>>) {
        if calls.is_empty() {
            return;
        }
        let backend = &*self.backend;
        let retry = self.retry;
        let fence = self.metadata.write_fence();
        let runs = calls.into_iter().map(|AppendCall { commands, reply }| {
            let known: Vec<Option<Antichain<T>>> = commands
                .iter()
                .map(|command| self.uppers.get(&command.shard).cloned())
                .collect();
            async move {
                let outcome = append_call(backend, retry, fence, commands, known).await;
                (reply, outcome)
            }
        });
        let finished = futures::future::join_all(runs).await;
        for (reply, outcome) in finished {
            self.apply_uppers(outcome.uppers);
            // SUBTLE: as in commit_disjoint_groups, uppers before replies.
            if !outcome.written.is_empty() {
                let _ = self
                    .internal
                    .send(Internal::WriteCompleted(outcome.written));
            }
            let _ = reply.send(self.fenced_answer(outcome.result));
        }
    }

    /// An append's answer, with a data shard's refusal of this controller's
    /// epoch made the controller's own `Fenced`: only a newer controller
    /// raises a shard's epoch past this one's, so this controller is fenced
    /// for good (as if its metadata check had found it), and nothing of the
    /// refused append was written (the refusal is determinate).
    fn fenced_answer(&self, result: Result<(), StorageError>) -> Result<(), StorageError> {
        match result {
            Err(StorageError::Backend(err))
                if err.determinate_kind() == Some(DeterminateKind::Fenced) =>
            {
                self.metadata.mark_fenced();
                Err(StorageError::Fenced)
            }
            result => result,
        }
    }

    async fn downgrade_since(
        &mut self,
        shard: ShardId,
        since: Antichain<T>,
    ) -> Result<(), StorageError> {
        let backend = &*self.backend;
        retry_indeterminate(self.retry, || {
            backend.downgrade_since(shard, &since, WriteFence::Unfenced)
        })
        .await?;
        if self.parameters.physical_compaction() && !since.is_empty() {
            let usage = retry_indeterminate(self.retry, || backend.usage(shard)).await?;
            if usage.updates >= self.parameters.compaction_min_updates() {
                let stats = retry_indeterminate(self.retry, || backend.compact(shard)).await?;
                tracing::debug!(%shard, ?stats, "compacted shard");
            }
        }
        Ok(())
    }

    /// Marks `shards` as finalizing (dropping `id`'s mapping), finalizes
    /// them, and forgets them.
    async fn finalize(
        &mut self,
        id: Option<GlobalId>,
        shards: BTreeSet<ShardId>,
    ) -> Result<(), StorageError> {
        let mut metadata = self.metadata.metadata().clone();
        if let Some(id) = id
            && metadata
                .collections
                .get(&id)
                .is_some_and(|shard| shards.contains(shard))
        {
            metadata.collections.remove(&id);
        }
        metadata.finalizing.extend(shards.iter().copied());
        if metadata != *self.metadata.metadata() {
            self.metadata
                .write(&*self.backend, metadata.clone())
                .await?;
        }
        let backend = &*self.backend;
        for shard in &shards {
            retry_indeterminate(self.retry, || backend.finalize(*shard)).await?;
            self.uppers.remove(shard);
        }
        for shard in &shards {
            metadata.finalizing.remove(shard);
        }
        self.metadata.write(&*self.backend, metadata).await
    }

    /// Records `awaiting` under `ingestion` (merged with what is already
    /// recorded) and forgets those outputs' live mappings, in one write.
    async fn await_drop(
        &mut self,
        ingestion: GlobalId,
        awaiting: AwaitingDrop,
    ) -> Result<(), StorageError> {
        let mut metadata = self.metadata.metadata().clone();
        for (output, shard) in &awaiting.shards {
            if metadata.collections.get(output) == Some(shard) {
                metadata.collections.remove(output);
            }
        }
        let entry = metadata
            .awaiting_drop
            .entry(ingestion)
            .or_insert_with(|| AwaitingDrop {
                instance: awaiting.instance,
                stopping: false,
                shards: BTreeMap::new(),
            });
        entry.stopping |= awaiting.stopping;
        entry.shards.extend(awaiting.shards);
        if metadata != *self.metadata.metadata() {
            self.metadata.write(&*self.backend, metadata).await?;
        }
        Ok(())
    }

    /// Moves the entries of `ingestions` to the shards being finalized
    /// (with `shards`, in one write), then finalizes them all.
    async fn finalize_awaited(
        &mut self,
        ingestions: BTreeSet<GlobalId>,
        mut shards: BTreeSet<ShardId>,
    ) -> Result<(), StorageError> {
        let mut metadata = self.metadata.metadata().clone();
        for ingestion in &ingestions {
            if let Some(awaiting) = metadata.awaiting_drop.remove(ingestion) {
                shards.extend(awaiting.shards.into_values());
            }
        }
        if metadata != *self.metadata.metadata() {
            self.metadata.write(&*self.backend, metadata).await?;
        }
        if shards.is_empty() {
            return Ok(());
        }
        self.finalize(None, shards).await
    }

    async fn reconcile(
        &mut self,
        live_shards: BTreeSet<ShardId>,
        live_sinks: BTreeSet<GlobalId>,
        live_instances: BTreeSet<StorageInstanceId>,
    ) -> Result<(), StorageError> {
        let mut metadata: DurableMetadata = self.metadata.metadata().clone();
        let unclaimed: Vec<GlobalId> = metadata
            .collections
            .iter()
            .filter(|(_, shard)| !live_shards.contains(shard))
            .map(|(id, _)| *id)
            .collect();
        let mut retiring: BTreeSet<ShardId> = metadata.finalizing.clone();
        for id in unclaimed {
            if let Some(shard) = metadata.collections.remove(&id) {
                tracing::info!(%id, %shard, "reclaiming the shard of a collection nobody re-created");
                retiring.insert(shard);
            }
        }
        metadata.sink_as_ofs.retain(|id, _| live_sinks.contains(id));
        if metadata != *self.metadata.metadata() {
            self.metadata.write(&*self.backend, metadata).await?;
        }
        // An ingestion whose instance nobody re-created has no replica to
        // confirm its drop: nothing writes its outputs any more.
        let orphaned: BTreeSet<GlobalId> = self
            .metadata
            .metadata()
            .awaiting_drop
            .iter()
            .filter(|(_, awaiting)| !live_instances.contains(&awaiting.instance))
            .map(|(id, _)| *id)
            .collect();
        self.finalize_awaited(orphaned, retiring).await
    }
}

/// Where an `append` call's outcome goes.
type AppendReply = oneshot::Sender<Result<(), StorageError>>;

/// One queued `append` call: its commands (one per collection) and where
/// its answer goes.
pub(crate) struct AppendCall<T> {
    commands: Vec<ShardAppend<T>>,
    reply: AppendReply,
}

/// What an `append` call counts for in the group commit bounds: its
/// updates, and their bytes.
fn call_size<T>(call: &AppendCall<T>) -> (usize, usize) {
    call.commands
        .iter()
        .fold((0, 0), |(updates, bytes), command| {
            let command_bytes: usize = command
                .updates
                .iter()
                .map(|update| update.row.byte_len() + UPDATE_OVERHEAD_BYTES)
                .sum();
            (
                updates + command.updates.len(),
                bytes.saturating_add(command_bytes),
            )
        })
}

/// What an update counts for in `max_bytes` beyond its row: its time and
/// diff.
const UPDATE_OVERHEAD_BYTES: usize = 16;

/// Splits `calls` into groups: calls linked by shared shards (directly or
/// through other calls of `calls`; with `join_disjoint_calls`, all of
/// them) in submission order, cut within `config`'s bounds. A group takes
/// calls while adding the next keeps it within every bound; a call that
/// alone exceeds a bound is a group of its own. Groups of one linked set
/// come out in submission order.
fn coalesce<T>(calls: Vec<AppendCall<T>>, config: &GroupCommitConfig) -> Vec<Vec<AppendCall<T>>> {
    let linked = if config.join_disjoint_calls {
        vec![calls]
    } else {
        linked_sets(calls)
    };
    linked
        .into_iter()
        .flat_map(|calls| within_bounds(calls, config))
        .collect()
}

/// Partitions `calls` into sets linked by shared shards, each in
/// submission order, the sets ordered by their first call.
fn linked_sets<T>(calls: Vec<AppendCall<T>>) -> Vec<Vec<AppendCall<T>>> {
    // Each set: its calls' indexes (ascending) and its shards.
    let mut sets: Vec<Option<(Vec<usize>, BTreeSet<ShardId>)>> = Vec::new();
    let mut set_of_shard: BTreeMap<ShardId, usize> = BTreeMap::new();
    for (index, call) in calls.iter().enumerate() {
        let shards: BTreeSet<ShardId> = call.commands.iter().map(|command| command.shard).collect();
        let mut joined: Vec<usize> = shards
            .iter()
            .filter_map(|shard| set_of_shard.get(shard).copied())
            .collect();
        joined.sort_unstable();
        joined.dedup();
        let target = match joined.first() {
            Some(first) => *first,
            None => {
                sets.push(Some((Vec::new(), BTreeSet::new())));
                sets.len() - 1
            }
        };
        let (mut members, mut set_shards) = sets[target].take().expect("a live set");
        for other in joined.iter().skip(1) {
            let (other_members, other_shards) = sets[*other].take().expect("a live set");
            members.extend(other_members);
            set_shards.extend(other_shards);
        }
        members.push(index);
        members.sort_unstable();
        set_shards.extend(shards);
        for shard in &set_shards {
            set_of_shard.insert(*shard, target);
        }
        sets[target] = Some((members, set_shards));
    }
    let mut slots: Vec<Option<AppendCall<T>>> = calls.into_iter().map(Some).collect();
    sets.into_iter()
        .flatten()
        .map(|(members, _)| {
            members
                .into_iter()
                .map(|index| slots[index].take().expect("each call in one set"))
                .collect()
        })
        .collect()
}

/// Cuts `calls`, in order, into groups within `config`'s bounds.
fn within_bounds<T>(
    calls: Vec<AppendCall<T>>,
    config: &GroupCommitConfig,
) -> Vec<Vec<AppendCall<T>>> {
    let max_calls = config.max_calls.max(1);
    let mut groups: Vec<Vec<AppendCall<T>>> = Vec::new();
    let mut current: Vec<AppendCall<T>> = Vec::new();
    let (mut updates, mut bytes) = (0usize, 0usize);
    for call in calls {
        let (call_updates, call_bytes) = call_size(&call);
        let fits = current.len() < max_calls
            && updates.saturating_add(call_updates) <= config.max_updates
            && bytes.saturating_add(call_bytes) <= config.max_bytes;
        if !fits && !current.is_empty() {
            groups.push(std::mem::take(&mut current));
            (updates, bytes) = (0, 0);
        }
        updates = updates.saturating_add(call_updates);
        bytes = bytes.saturating_add(call_bytes);
        current.push(call);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// Every shard some call of `group` writes.
fn group_shards<T>(group: &[AppendCall<T>]) -> BTreeSet<ShardId> {
    group
        .iter()
        .flat_map(|call| call.commands.iter().map(|command| command.shard))
        .collect()
}

/// Whether `command` cannot apply on a shard whose upper is `upper`: it
/// writes before the upper or moves the upper back. Uppers only advance,
/// so this is definitive without a backend call.
fn is_stale<T: StorageTimestamp>(command: &ShardAppend<T>, upper: &Antichain<T>) -> bool {
    !PartialOrder::less_equal(upper, &command.new_upper)
        || command
            .updates
            .iter()
            .any(|update| !upper.less_equal(&update.timestamp))
}

/// What committing one group achieved.
struct GroupOutcome<T> {
    /// The answers of the calls that are decided.
    answers: Vec<(AppendReply, Result<(), StorageError>)>,
    /// The calls the backend refused as a group (an upper mismatch), still
    /// unanswered, in submission order: they commit one by one next.
    refused: Vec<AppendCall<T>>,
    /// The collections written, each with its new upper (once per
    /// collection, the group's last).
    written: Vec<(GlobalId, Antichain<T>)>,
    /// Each shard's upper as the group left it, `None` if unknown.
    uppers: Vec<(ShardId, Option<Antichain<T>>)>,
}

/// One shard's part of a group: the updates of every call of the group
/// that writes it, chained.
struct GroupPart<T> {
    id: GlobalId,
    shard: ShardId,
    expected_upper: Antichain<T>,
    updates: Vec<Update<T>>,
    new_upper: Antichain<T>,
}

/// Commits the calls of `group` as one `compare_and_append_all`, from
/// each shard's upper (`known`, or read from the backend), retrying
/// indeterminate failures with one token.
///
/// Calls to one shard chain: a later call's expected upper is the new
/// upper of the group's previous call to that shard. A call with a command
/// that cannot apply after the group's earlier calls is answered
/// `InvalidUppers` (naming those collections) and left out; the others
/// commit without it. The group's calls are all written or none is; if
/// the backend reports a mismatch, nothing was written and the calls come
/// back in `refused`, unanswered, so each can get its own answer.
async fn commit_group<T: StorageTimestamp, B: PersistBackend<T>>(
    backend: &B,
    retry: RetryPolicy,
    fence: WriteFence,
    group: Vec<AppendCall<T>>,
    mut known: BTreeMap<ShardId, Antichain<T>>,
) -> GroupOutcome<T> {
    let shards = group_shards(&group);
    let unknown_all = |shards: &BTreeSet<ShardId>| -> Vec<(ShardId, Option<Antichain<T>>)> {
        shards.iter().map(|shard| (*shard, None)).collect()
    };
    for shard in &shards {
        if known.contains_key(shard) {
            continue;
        }
        match retry_indeterminate(retry, || backend.frontiers(*shard)).await {
            Ok(frontiers) => {
                known.insert(*shard, frontiers.upper);
            }
            Err(err) => {
                return GroupOutcome {
                    answers: group
                        .into_iter()
                        .map(|call| (call.reply, Err(StorageError::Backend(err.clone()))))
                        .collect(),
                    refused: Vec::new(),
                    written: Vec::new(),
                    uppers: unknown_all(&shards),
                };
            }
        }
    }
    let known_uppers = |known: &BTreeMap<ShardId, Antichain<T>>| {
        known
            .iter()
            .map(|(shard, upper)| (*shard, Some(upper.clone())))
            .collect()
    };
    let mut answers = Vec::new();
    let mut included: Vec<AppendCall<T>> = Vec::new();
    // How many updates each command of each included call moved into its
    // part, in order.
    let mut included_lengths: Vec<Vec<usize>> = Vec::new();
    let mut parts: Vec<GroupPart<T>> = Vec::new();
    for mut call in group {
        let upper_before = |command: &ShardAppend<T>| match parts
            .iter()
            .find(|part| part.shard == command.shard)
        {
            Some(part) => &part.new_upper,
            None => &known[&command.shard],
        };
        let stale: Vec<GlobalId> = call
            .commands
            .iter()
            .filter(|command| is_stale(command, upper_before(command)))
            .map(|command| command.id)
            .collect();
        if !stale.is_empty() {
            answers.push((call.reply, Err(StorageError::InvalidUppers(stale))));
            continue;
        }
        // The updates move into the parts; a refused group gives them back
        // (`give_back_updates`), so each call holds only their count.
        let mut lengths = Vec::with_capacity(call.commands.len());
        for command in &mut call.commands {
            lengths.push(command.updates.len());
            match parts.iter_mut().find(|part| part.shard == command.shard) {
                Some(part) => {
                    part.updates.append(&mut command.updates);
                    part.new_upper = command.new_upper.clone();
                }
                None => parts.push(GroupPart {
                    id: command.id,
                    shard: command.shard,
                    expected_upper: known[&command.shard].clone(),
                    updates: std::mem::take(&mut command.updates),
                    new_upper: command.new_upper.clone(),
                }),
            }
        }
        included.push(call);
        included_lengths.push(lengths);
    }
    if included.is_empty() {
        return GroupOutcome {
            answers,
            refused: Vec::new(),
            written: Vec::new(),
            uppers: known_uppers(&known),
        };
    }
    let request: Vec<tidemark_storage_types::ShardAppend<T>> = parts
        .iter_mut()
        .map(|part| tidemark_storage_types::ShardAppend {
            shard: part.shard,
            updates: std::mem::take(&mut part.updates),
            expected_upper: part.expected_upper.clone(),
            new_upper: part.new_upper.clone(),
        })
        .collect();
    // SUBTLE: one token for the frozen group: every retry sends exactly
    // these parts, so a retry after an attempt that applied finds the
    // token and applies nothing twice.
    let token = IdempotencyToken::new();
    let mut attempts = 0u32;
    let outcome = retry_indeterminate(retry, || {
        attempts += 1;
        backend.compare_and_append_all(request.clone(), token, fence)
    })
    .await;
    let fail_all = |included: Vec<AppendCall<T>>,
                    mut answers: Vec<(AppendReply, Result<(), StorageError>)>,
                    err: BackendError| {
        answers.extend(
            included
                .into_iter()
                .map(|call| (call.reply, Err(StorageError::Backend(err.clone())))),
        );
        GroupOutcome {
            answers,
            refused: Vec::new(),
            written: Vec::new(),
            uppers: unknown_all(&shards),
        }
    };
    match outcome {
        Ok(Ok(())) => {
            answers.extend(included.into_iter().map(|call| (call.reply, Ok(()))));
            let mut uppers: Vec<(ShardId, Option<Antichain<T>>)> = known_uppers(&known);
            for (shard, upper) in &mut uppers {
                if let Some(part) = parts.iter().find(|part| part.shard == *shard) {
                    *upper = Some(part.new_upper.clone());
                }
            }
            GroupOutcome {
                answers,
                refused: Vec::new(),
                written: parts
                    .iter()
                    .map(|part| (part.id, part.new_upper.clone()))
                    .collect(),
                uppers,
            }
        }
        // SUBTLE: as for a single call (see append_call), a retry's
        // mismatches prove the group did not apply only if some mismatching
        // shard says NotApplied; otherwise every call's outcome stays
        // indeterminate.
        Ok(Err(mismatches))
            if attempts > 1
                && !mismatches.mismatches.iter().any(|(_, mismatch)| {
                    mismatch.earlier_attempts == EarlierAttempts::NotApplied
                }) =>
        {
            fail_all(
                included,
                answers,
                BackendError::indeterminate(format!(
                    "append retried after an indeterminate failure; whether it applied cannot be determined: {mismatches}"
                )),
            )
        }
        Ok(Err(mismatches)) if included.len() == 1 => {
            // One call: the group's answer is the call's own.
            let mut uppers: Vec<(ShardId, Option<Antichain<T>>)> = known_uppers(&known);
            let mut invalid = Vec::new();
            for (shard, mismatch) in mismatches.mismatches {
                if let Some(part) = parts.iter().find(|part| part.shard == shard) {
                    invalid.push(part.id);
                }
                if let Some(entry) = uppers.iter_mut().find(|(known, _)| *known == shard) {
                    entry.1 = Some(mismatch.current);
                }
            }
            let call = included.pop().expect("one call");
            answers.push((call.reply, Err(StorageError::InvalidUppers(invalid))));
            GroupOutcome {
                answers,
                refused: Vec::new(),
                written: Vec::new(),
                uppers,
            }
        }
        // Nothing of the group was written; each call commits alone next,
        // from the uppers as they were before the group, so each gets the
        // answer it would have had without grouping.
        Ok(Err(_)) => {
            give_back_updates(&mut included, &included_lengths, request);
            GroupOutcome {
                answers,
                refused: included,
                written: Vec::new(),
                uppers: known_uppers(&known),
            }
        }
        Err(err) => fail_all(included, answers, after_attempts(err, attempts)),
    }
}

/// Moves each command's updates from the group's `request` back into
/// `calls`, undoing how `commit_group` chained them: a shard's part holds
/// its calls' updates one call after another, `lengths[call][command]` of
/// each.
fn give_back_updates<T>(
    calls: &mut [AppendCall<T>],
    lengths: &[Vec<usize>],
    request: Vec<tidemark_storage_types::ShardAppend<T>>,
) {
    let mut remaining: BTreeMap<ShardId, std::vec::IntoIter<Update<T>>> = request
        .into_iter()
        .map(|part| (part.shard, part.updates.into_iter()))
        .collect();
    for (call, lengths) in calls.iter_mut().zip(lengths) {
        for (command, len) in call.commands.iter_mut().zip(lengths) {
            let updates = remaining
                .get_mut(&command.shard)
                .expect("every command's shard has a part");
            command.updates = updates.by_ref().take(*len).collect();
        }
    }
}

/// What one `append` call achieved.
struct CallOutcome<T> {
    /// The caller's answer.
    result: Result<(), StorageError>,
    /// The collections written, with their new uppers.
    written: Vec<(GlobalId, Antichain<T>)>,
    /// Each shard's upper as the call left it, `None` if unknown.
    uppers: Vec<(ShardId, Option<Antichain<T>>)>,
}

/// Appends one call's commands as one `compare_and_append_all` from each
/// shard's upper (`known`, or read from the backend), retrying
/// indeterminate failures with one token, with this controller's `fence`.
/// All of the call's commands are written or none is.
async fn append_call<T: StorageTimestamp, B: PersistBackend<T>>(
    backend: &B,
    retry: RetryPolicy,
    fence: WriteFence,
    commands: Vec<ShardAppend<T>>,
    known: Vec<Option<Antichain<T>>>,
) -> CallOutcome<T> {
    let failed = |commands: &[ShardAppend<T>], err: BackendError| CallOutcome {
        result: Err(StorageError::Backend(err)),
        written: Vec::new(),
        uppers: commands
            .iter()
            .map(|command| (command.shard, None))
            .collect(),
    };
    let mut expected_uppers = Vec::with_capacity(commands.len());
    for (command, known_upper) in commands.iter().zip(known) {
        let upper = match known_upper {
            Some(upper) => upper,
            None => match retry_indeterminate(retry, || backend.frontiers(command.shard)).await {
                Ok(frontiers) => frontiers.upper,
                Err(err) => return failed(&commands, err),
            },
        };
        expected_uppers.push(upper);
    }
    let uppers_as_expected = |commands: &[ShardAppend<T>], expected: &[Antichain<T>]| {
        commands
            .iter()
            .zip(expected)
            .map(|(command, upper)| (command.shard, Some(upper.clone())))
            .collect()
    };
    // A command's idea of the upper is stale if it writes before the
    // current upper or moves the upper back; then nothing of the call is
    // written. Uppers only advance, so this needs no backend call.
    let stale: Vec<GlobalId> = commands
        .iter()
        .zip(&expected_uppers)
        .filter(|(command, expected_upper)| {
            !PartialOrder::less_equal(*expected_upper, &command.new_upper)
                || command
                    .updates
                    .iter()
                    .any(|update| !expected_upper.less_equal(&update.timestamp))
        })
        .map(|(command, _)| command.id)
        .collect();
    if !stale.is_empty() {
        return CallOutcome {
            result: Err(StorageError::InvalidUppers(stale)),
            written: Vec::new(),
            uppers: uppers_as_expected(&commands, &expected_uppers),
        };
    }
    let parts: Vec<tidemark_storage_types::ShardAppend<T>> = commands
        .iter()
        .zip(&expected_uppers)
        .map(
            |(command, expected_upper)| tidemark_storage_types::ShardAppend {
                shard: command.shard,
                updates: command.updates.clone(),
                expected_upper: expected_upper.clone(),
                new_upper: command.new_upper.clone(),
            },
        )
        .collect();
    let token = IdempotencyToken::new();
    let mut attempts = 0u32;
    let outcome = retry_indeterminate(retry, || {
        attempts += 1;
        backend.compare_and_append_all(parts.clone(), token, fence)
    })
    .await;
    match outcome {
        Ok(Ok(())) => CallOutcome {
            result: Ok(()),
            written: commands
                .iter()
                .map(|command| (command.id, command.new_upper.clone()))
                .collect(),
            uppers: commands
                .iter()
                .map(|command| (command.shard, Some(command.new_upper.clone())))
                .collect(),
        },
        // SUBTLE: a retry's mismatches prove the call did not apply only if
        // some mismatching shard still remembers every append an earlier
        // attempt could have been (the call applies on all its shards or
        // none, so one such shard suffices); otherwise the outcome stays
        // indeterminate.
        Ok(Err(mismatches))
            if attempts > 1
                && !mismatches.mismatches.iter().any(|(_, mismatch)| {
                    mismatch.earlier_attempts == EarlierAttempts::NotApplied
                }) =>
        {
            failed(
                &commands,
                BackendError::indeterminate(format!(
                    "append retried after an indeterminate failure; whether it applied cannot be determined: {mismatches}"
                )),
            )
        }
        Ok(Err(mismatches)) => {
            let mut uppers: Vec<(ShardId, Option<Antichain<T>>)> =
                uppers_as_expected(&commands, &expected_uppers);
            let mut invalid = Vec::new();
            for (shard, mismatch) in mismatches.mismatches {
                if let Some(command) = commands.iter().position(|command| command.shard == shard) {
                    invalid.push(commands[command].id);
                    uppers[command].1 = Some(mismatch.current);
                }
            }
            CallOutcome {
                result: Err(StorageError::InvalidUppers(invalid)),
                written: Vec::new(),
                uppers,
            }
        }
        Err(err) => failed(&commands, after_attempts(err, attempts)),
    }
}

/// The outcome of an append whose last attempt failed with `err` after
/// `attempts` attempts: a determinate failure of a retry says only that
/// the retry did not apply; an earlier, indeterminate attempt may have, so
/// the append's outcome is indeterminate.
fn after_attempts(err: BackendError, attempts: u32) -> BackendError {
    if attempts > 1 && err.is_determinate() {
        BackendError::indeterminate(format!(
            "append retried after an indeterminate failure; the retry failed, so whether an earlier attempt applied cannot be determined: {err}"
        ))
    } else {
        err
    }
}

/// Removes downgrades of a shard that a later downgrade of the same shard
/// in `chunk` supersedes (a since only moves forward, so the last wins).
fn drop_superseded_downgrades<T>(chunk: &mut [WorkerCommand<T>]) {
    let mut seen = BTreeSet::new();
    for command in chunk.iter_mut().rev() {
        if let WorkerCommand::DowngradeSinces(downgrades) = command {
            let mut kept: Vec<_> = downgrades
                .drain(..)
                .rev()
                .filter(|(shard, _)| seen.insert(*shard))
                .collect();
            kept.reverse();
            *downgrades = kept;
        }
    }
}

#[cfg(test)]
mod tests {
    use tidemark_storage_types::{Datum, Row};

    use super::*;

    /// A call of one command per `(collection, updates)` pair, with rows
    /// of `row_bytes` bytes each; its reply is dropped.
    fn call(commands: &[(u64, usize)], row_bytes: usize) -> AppendCall<u64> {
        let (reply, _) = oneshot::channel();
        let text = "r".repeat(row_bytes);
        AppendCall {
            commands: commands
                .iter()
                .map(|(n, updates)| ShardAppend {
                    id: GlobalId::User(*n),
                    shard: ShardId::new(),
                    updates: (0..*updates)
                        .map(|time| Update::new(Row::pack([Datum::String(&text)]), time as u64, 1))
                        .collect(),
                    new_upper: Antichain::from_elem(*updates as u64),
                })
                .collect(),
            reply,
        }
    }

    fn sizes(groups: &[Vec<AppendCall<u64>>]) -> Vec<usize> {
        groups.iter().map(Vec::len).collect()
    }

    /// Every call joins one group, within the bounds.
    fn joined(config: GroupCommitConfig) -> GroupCommitConfig {
        GroupCommitConfig {
            join_disjoint_calls: true,
            ..config
        }
    }

    #[test]
    fn calls_sharing_shards_group_and_disjoint_ones_stand_apart() {
        let mut calls: Vec<AppendCall<u64>> = (0..5).map(|n| call(&[(n, 1)], 4)).collect();
        // Call 3 links calls 0 and 2 (it writes their shards); 1 and 4
        // share nothing.
        let (first, third) = (calls[0].commands[0].shard, calls[2].commands[0].shard);
        calls[3].commands[0].shard = first;
        calls[3].commands.push(ShardAppend {
            shard: third,
            ..call(&[(9, 1)], 4).commands.remove(0)
        });
        let groups = coalesce(calls, &GroupCommitConfig::default());
        let ids: Vec<Vec<GlobalId>> = groups
            .iter()
            .map(|group| group.iter().map(|call| call.commands[0].id).collect())
            .collect();
        assert_eq!(
            ids,
            vec![
                vec![GlobalId::User(0), GlobalId::User(2), GlobalId::User(3)],
                vec![GlobalId::User(1)],
                vec![GlobalId::User(4)],
            ]
        );
    }

    #[test]
    fn calls_coalesce_up_to_max_calls() {
        let config = joined(GroupCommitConfig {
            max_calls: 3,
            ..GroupCommitConfig::default()
        });
        let calls = (0..7).map(|n| call(&[(n, 1)], 4)).collect();
        assert_eq!(sizes(&coalesce(calls, &config)), vec![3, 3, 1]);
    }

    #[test]
    fn max_calls_zero_is_one_call_per_group() {
        let config = joined(GroupCommitConfig {
            max_calls: 0,
            ..GroupCommitConfig::default()
        });
        let calls = (0..3).map(|n| call(&[(n, 1)], 4)).collect();
        assert_eq!(sizes(&coalesce(calls, &config)), vec![1, 1, 1]);
    }

    #[test]
    fn updates_of_every_command_count_toward_max_updates() {
        let config = joined(GroupCommitConfig {
            max_updates: 5,
            ..GroupCommitConfig::default()
        });
        // 2 + 3 fit; 2 more would make 7.
        let calls = vec![
            call(&[(1, 1), (2, 1)], 4),
            call(&[(3, 3)], 4),
            call(&[(4, 2)], 4),
        ];
        assert_eq!(sizes(&coalesce(calls, &config)), vec![2, 1]);
    }

    #[test]
    fn a_call_beyond_the_bounds_commits_alone() {
        let config = joined(GroupCommitConfig {
            max_bytes: 1_000,
            ..GroupCommitConfig::default()
        });
        let calls = vec![
            call(&[(1, 1)], 10),
            call(&[(2, 4)], 500),
            call(&[(3, 1)], 10),
        ];
        assert_eq!(sizes(&coalesce(calls, &config)), vec![1, 1, 1]);
    }

    #[test]
    fn a_refused_group_gives_each_command_its_own_updates_back() {
        let mut calls = vec![call(&[(1, 2)], 4), call(&[(2, 1)], 4), call(&[(1, 3)], 4)];
        let (first, second) = (calls[0].commands[0].shard, calls[1].commands[0].shard);
        calls[2].commands[0].shard = first;
        let before: Vec<Vec<Update<u64>>> = calls
            .iter()
            .map(|call| call.commands[0].updates.clone())
            .collect();
        // Chained as commit_group does: shard `first` holds calls 0 and 2.
        let lengths = vec![vec![2], vec![1], vec![3]];
        let mut chained = std::mem::take(&mut calls[0].commands[0].updates);
        chained.append(&mut calls[2].commands[0].updates);
        let request = vec![
            tidemark_storage_types::ShardAppend {
                shard: first,
                updates: chained,
                expected_upper: Antichain::from_elem(0),
                new_upper: Antichain::from_elem(3),
            },
            tidemark_storage_types::ShardAppend {
                shard: second,
                updates: std::mem::take(&mut calls[1].commands[0].updates),
                expected_upper: Antichain::from_elem(0),
                new_upper: Antichain::from_elem(1),
            },
        ];
        give_back_updates(&mut calls, &lengths, request);
        let after: Vec<Vec<Update<u64>>> = calls
            .iter()
            .map(|call| call.commands[0].updates.clone())
            .collect();
        assert_eq!(after, before);
    }

    #[test]
    fn stale_commands_write_before_the_upper_or_move_it_back() {
        let command = |times: &[u64], upper: u64| ShardAppend {
            id: GlobalId::User(1),
            shard: ShardId::new(),
            updates: times
                .iter()
                .map(|time| Update::new(Row::pack([Datum::Int64(1)]), *time, 1))
                .collect(),
            new_upper: Antichain::from_elem(upper),
        };
        let upper = Antichain::from_elem(3u64);
        assert!(!is_stale(&command(&[3, 4], 5), &upper));
        assert!(!is_stale(&command(&[], 3), &upper));
        assert!(is_stale(&command(&[2], 5), &upper));
        assert!(is_stale(&command(&[], 2), &upper));
    }
}
