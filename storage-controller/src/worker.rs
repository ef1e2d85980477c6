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
    BackendError, EarlierAttempts, GlobalId, IdempotencyToken, PersistBackend, ShardFrontiers,
    ShardId, StorageError, StorageInstanceId, StorageParameters, StorageTimestamp, Update,
    WriteFence,
};
use timely::PartialOrder;
use timely::progress::Antichain;
use tokio::sync::{mpsc, oneshot};

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
}

impl<T: StorageTimestamp, B: PersistBackend<T>> Worker<T, B> {
    /// Runs until the controller drops its sender.
    pub(crate) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<WorkerCommand<T>>) {
        let mut chunk = Vec::new();
        loop {
            chunk.clear();
            if commands.recv_many(&mut chunk, 256).await == 0 {
                return;
            }
            // One fence check per chunk: a fenced controller must not touch
            // data a newer controller owns.
            let needs_fence_check = chunk
                .iter()
                .any(|command| !matches!(command, WorkerCommand::Barrier { .. }));
            let fence = if needs_fence_check {
                self.metadata.check_fence(&*self.backend).await
            } else {
                Ok(())
            };
            drop_superseded_downgrades(&mut chunk);
            let mut appends = Vec::new();
            for command in chunk.drain(..) {
                match (command, &fence) {
                    (WorkerCommand::Append { commands, reply }, Ok(())) => {
                        appends.push((commands, reply));
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
                self.append_calls(vec![(commands, reply)]).await;
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

    /// Runs consecutive `append` calls in submission order, each as one
    /// atomic `compare_and_append_all` over its collections' shards.
    /// Consecutive calls on disjoint shards run concurrently; a call that
    /// shares a shard with an earlier one waits for it. Each call's reply
    /// resolves once its write is done.
    async fn append_calls(&mut self, calls: Vec<(Vec<ShardAppend<T>>, AppendReply)>) {
        let mut batch = Vec::new();
        let mut batch_shards = BTreeSet::new();
        for call in calls {
            let shards: BTreeSet<ShardId> = call.0.iter().map(|command| command.shard).collect();
            if !batch_shards.is_disjoint(&shards) {
                self.append_disjoint_calls(std::mem::take(&mut batch)).await;
                batch_shards.clear();
            }
            batch_shards.extend(shards);
            batch.push(call);
        }
        self.append_disjoint_calls(batch).await;
    }

    /// Runs calls whose shards are disjoint, concurrently.
    async fn append_disjoint_calls(&mut self, calls: Vec<(Vec<ShardAppend<T>>, AppendReply)>) {
        if calls.is_empty() {
            return;
        }
        let backend = &*self.backend;
        let retry = self.retry;
        let fence = self.metadata.write_fence();
        let runs = calls.into_iter().map(|(commands, reply)| {
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
            for (shard, upper) in outcome.uppers {
                match upper {
                    Some(upper) => self.uppers.insert(shard, upper),
                    None => self.uppers.remove(&shard),
                };
            }
            // SUBTLE: the new uppers are queued before the caller's receiver
            // resolves, so a process() after the write completes sees them.
            if !outcome.written.is_empty() {
                let _ = self
                    .internal
                    .send(Internal::WriteCompleted(outcome.written));
            }
            let _ = reply.send(outcome.result);
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
        Err(err) => failed(&commands, err),
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
