//! The suite checks itself: a backend broken in one way (the memory backend
//! behind a wrapper that breaks one promise) must fail the property about
//! that promise. A property that passes on a broken backend is worthless.

use futures::StreamExt;
use std::future::Future;
use std::time::Duration;
use tidemark_storage_types::{
    ChunkLimit, FetchStream, ReadStream, SnapshotStream, stream_from_vec,
};
use tidemark_storage_types::{EarlierAttempts, WriteFence};

use async_trait::async_trait;
use tidemark_backend_conformance::{
    BackendFactory, append, atomic_append, atomic_model, compaction, concurrency, fencing,
    idempotency, model, read, since, streamed, token_window, unknown, wait,
};
use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_types::{
    BackendError, CompactionStats, Diff, IdempotencyToken, InvalidUsage, PersistBackend, ReadShare,
    Row, ShardAppend, ShardFrontiers, ShardId, ShardUsage, Update, UpperMismatch, UpperMismatches,
};
use timely::progress::Antichain;

/// One way to break the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutation {
    /// Every append attempt gets a fresh token: retries apply twice or
    /// mismatch.
    IgnoresIdempotencyToken,
    /// Snapshots come back in reverse order.
    ReversedSnapshot,
    /// Waits return the current upper without waiting.
    WaitReturnsAtOnce,
    /// `downgrade_since` reports the requested since, even a regression.
    SinceRegresses,
    /// A lost race is reported as a success.
    MismatchReportedAsSuccess,
    /// A fetch beyond the upper returns what there is instead of an error.
    FetchBeyondUpperAllowed,
    /// A read of an unknown shard creates it.
    UnknownShardCreated,
    /// The last update of every append with more than one is dropped.
    DropsLastUpdate,
    /// Compaction reports doing nothing.
    CompactionStatsEmpty,
    /// Updates outside the append bounds are silently dropped.
    OutOfBoundsUpdatesDropped,
    /// Every write is passed on unfenced: a stale epoch is never refused.
    IgnoresFence,
    /// Every mismatch claims no earlier attempt applied, even when the
    /// token may have left the window.
    ForgottenTokenReportedNotApplied,
    /// An append over several shards is a `compare_and_append` per shard,
    /// in the call's order: the parts before a mismatching one stay
    /// written.
    AppendAllShardByShard,
    /// An append over several shards checks every upper first, then writes
    /// shard by shard with a pause between: never half written when it
    /// answers, but a concurrent reader can see one shard's part without
    /// the others'.
    AppendAllVisibleInPart,
    /// Streams lose their last chunk.
    StreamDropsLastChunk,
    /// Streams cut chunks one entry over the entry limit.
    StreamExceedsEntryLimit,
    /// Streams cut chunks by entries only, ignoring the byte limit.
    StreamIgnoresByteLimit,
    /// Streams end with an empty chunk.
    StreamYieldsEmptyChunk,
    /// Streams yield their chunks last first.
    StreamChunksReversed,
    /// Streams check their arguments at the call but read the shard's
    /// live state when first polled.
    StreamRereadsLiveState,
    /// An invalid share is reported as the stream's first item instead of
    /// at the call.
    StreamRejectsInvalidShareLate,
}

impl MutantBackend {
    /// The limit the inner backend cuts this mutant's streams with.
    fn inner_limit(&self, limit: ChunkLimit) -> ChunkLimit {
        match self.mutation {
            Mutation::StreamExceedsEntryLimit => {
                ChunkLimit::new(limit.max_entries.saturating_add(1), limit.max_bytes)
            }
            Mutation::StreamIgnoresByteLimit => ChunkLimit::entries(limit.max_entries),
            _ => limit,
        }
    }

    /// The inner backend's stream, reordered or cut as the mutation says.
    async fn mutate_stream<C: Send + 'static>(&self, stream: ReadStream<C>) -> ReadStream<C> {
        let reorders = matches!(
            self.mutation,
            Mutation::StreamDropsLastChunk
                | Mutation::StreamYieldsEmptyChunk
                | Mutation::StreamChunksReversed
        );
        if !reorders {
            return stream;
        }
        let mut items: Vec<_> = stream.collect().await;
        match self.mutation {
            Mutation::StreamDropsLastChunk => {
                items.pop();
            }
            Mutation::StreamYieldsEmptyChunk => items.push(Ok(Vec::new())),
            _ => items.reverse(),
        }
        futures::stream::iter(items).boxed()
    }

    /// A stream that fails with `err` when first polled.
    fn failing_stream<C: Send + 'static>(err: BackendError) -> ReadStream<C> {
        futures::stream::iter([Err(err)]).boxed()
    }
}

#[derive(Debug)]
struct MutantBackend {
    inner: MemoryBackend,
    mutation: Mutation,
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl PersistBackend<u64> for MutantBackend {
    async fn open(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        self.inner.open(shard).await
    }

    async fn frontiers(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        let result = self.inner.frontiers(shard).await;
        match result {
            Err(BackendError::InvalidUsage(InvalidUsage::UnknownShard { .. }))
                if self.mutation == Mutation::UnknownShardCreated =>
            {
                self.inner.open(shard).await
            }
            other => other,
        }
    }

    async fn compare_and_append(
        &self,
        shard: ShardId,
        mut updates: Vec<Update<u64>>,
        expected_upper: Antichain<u64>,
        new_upper: Antichain<u64>,
        mut token: IdempotencyToken,
        mut fence: WriteFence,
    ) -> Result<Result<(), UpperMismatch<u64>>, BackendError> {
        match self.mutation {
            Mutation::IgnoresFence => fence = WriteFence::Unfenced,
            Mutation::IgnoresIdempotencyToken => token = IdempotencyToken::new(),
            Mutation::DropsLastUpdate if updates.len() > 1 => {
                updates.pop();
            }
            Mutation::OutOfBoundsUpdatesDropped => updates.retain(|update| {
                expected_upper.less_equal(&update.timestamp)
                    && !new_upper.less_equal(&update.timestamp)
            }),
            _ => {}
        }
        let result = self
            .inner
            .compare_and_append(shard, updates, expected_upper, new_upper, token, fence)
            .await;
        match result {
            Ok(Err(_)) if self.mutation == Mutation::MismatchReportedAsSuccess => Ok(Ok(())),
            Ok(Err(mismatch)) if self.mutation == Mutation::ForgottenTokenReportedNotApplied => {
                Ok(Err(UpperMismatch {
                    earlier_attempts: EarlierAttempts::NotApplied,
                    ..mismatch
                }))
            }
            other => other,
        }
    }

    async fn compare_and_append_all(
        &self,
        appends: Vec<ShardAppend<u64>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<u64>>, BackendError> {
        match self.mutation {
            Mutation::AppendAllShardByShard => {
                let mut mismatches = Vec::new();
                for part in appends {
                    let outcome = self
                        .inner
                        .compare_and_append(
                            part.shard,
                            part.updates,
                            part.expected_upper,
                            part.new_upper,
                            token,
                            fence,
                        )
                        .await?;
                    if let Err(mismatch) = outcome {
                        mismatches.push((part.shard, mismatch));
                    }
                }
                Ok(if mismatches.is_empty() {
                    Ok(())
                } else {
                    Err(UpperMismatches { mismatches })
                })
            }
            Mutation::AppendAllVisibleInPart => {
                let mut mismatches = Vec::new();
                for part in &appends {
                    let upper = self.inner.frontiers(part.shard).await?.upper;
                    if upper != part.expected_upper {
                        mismatches.push((
                            part.shard,
                            UpperMismatch {
                                expected: part.expected_upper.clone(),
                                current: upper,
                                earlier_attempts: EarlierAttempts::NotApplied,
                            },
                        ));
                    }
                }
                if !mismatches.is_empty() {
                    return Ok(Err(UpperMismatches { mismatches }));
                }
                for (index, part) in appends.into_iter().enumerate() {
                    if index > 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let outcome = self
                        .inner
                        .compare_and_append(
                            part.shard,
                            part.updates,
                            part.expected_upper,
                            part.new_upper,
                            token,
                            fence,
                        )
                        .await?;
                    if let Err(mismatch) = outcome {
                        return Ok(Err(UpperMismatches {
                            mismatches: vec![(part.shard, mismatch)],
                        }));
                    }
                }
                Ok(Ok(()))
            }
            _ => {
                self.inner
                    .compare_and_append_all(appends, token, fence)
                    .await
            }
        }
    }

    async fn snapshot(
        &self,
        shard: ShardId,
        as_of: &u64,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        let mut rows = self.inner.snapshot(shard, as_of).await?;
        if self.mutation == Mutation::ReversedSnapshot {
            rows.reverse();
        }
        Ok(rows)
    }

    async fn fetch(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        let result = self.inner.fetch(shard, lower, upper).await;
        match result {
            Err(BackendError::InvalidUsage(InvalidUsage::FetchRangeInvalid { .. }))
                if self.mutation == Mutation::FetchBeyondUpperAllowed =>
            {
                let shard_upper = self.inner.frontiers(shard).await?.upper;
                self.inner.fetch(shard, lower, &shard_upper).await
            }
            other => other,
        }
    }

    async fn snapshot_share(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.inner.snapshot_share(shard, as_of, share).await
    }

    async fn fetch_share(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
        share: ReadShare,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        self.inner.fetch_share(shard, lower, upper, share).await
    }

    async fn snapshot_stream(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<SnapshotStream, BackendError> {
        let result = self
            .inner
            .snapshot_stream(shard, as_of, share, self.inner_limit(limit))
            .await;
        match (self.mutation, result) {
            (
                Mutation::StreamRejectsInvalidShareLate,
                Err(err @ BackendError::InvalidUsage(InvalidUsage::InvalidShare { .. })),
            ) => Ok(Self::failing_stream(err)),
            (Mutation::StreamRereadsLiveState, Ok(_)) => {
                let (inner, as_of) = (self.inner.clone(), *as_of);
                let reread = futures::stream::once(async move {
                    inner.snapshot_share(shard, &as_of, share).await
                });
                Ok(reread
                    .flat_map(move |read| match read {
                        Ok(entries) => stream_from_vec(entries, limit),
                        Err(err) => Self::failing_stream(err),
                    })
                    .boxed())
            }
            (_, result) => Ok(self.mutate_stream(result?).await),
        }
    }

    async fn fetch_stream(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<FetchStream<u64>, BackendError> {
        let result = self
            .inner
            .fetch_stream(shard, lower, upper, share, self.inner_limit(limit))
            .await;
        match (self.mutation, result) {
            (
                Mutation::StreamRejectsInvalidShareLate,
                Err(err @ BackendError::InvalidUsage(InvalidUsage::InvalidShare { .. })),
            ) => Ok(Self::failing_stream(err)),
            (Mutation::StreamRereadsLiveState, Ok(_)) => {
                let (inner, lower, upper) = (self.inner.clone(), lower.clone(), upper.clone());
                let reread = futures::stream::once(async move {
                    inner.fetch_share(shard, &lower, &upper, share).await
                });
                Ok(reread
                    .flat_map(move |read| match read {
                        Ok(entries) => stream_from_vec(entries, limit),
                        Err(err) => Self::failing_stream(err),
                    })
                    .boxed())
            }
            (_, result) => Ok(self.mutate_stream(result?).await),
        }
    }

    async fn wait_for_upper_past(
        &self,
        shard: ShardId,
        frontier: &Antichain<u64>,
    ) -> Result<Antichain<u64>, BackendError> {
        if self.mutation == Mutation::WaitReturnsAtOnce && !frontier.is_empty() {
            return Ok(self.inner.frontiers(shard).await?.upper);
        }
        self.inner.wait_for_upper_past(shard, frontier).await
    }

    async fn downgrade_since(
        &self,
        shard: ShardId,
        new_since: &Antichain<u64>,
        mut fence: WriteFence,
    ) -> Result<Antichain<u64>, BackendError> {
        if self.mutation == Mutation::IgnoresFence {
            fence = WriteFence::Unfenced;
        }
        let since = self.inner.downgrade_since(shard, new_since, fence).await?;
        if self.mutation == Mutation::SinceRegresses {
            return Ok(new_since.clone());
        }
        Ok(since)
    }

    async fn compact(&self, shard: ShardId) -> Result<CompactionStats, BackendError> {
        let stats = PersistBackend::<u64>::compact(&self.inner, shard).await?;
        if self.mutation == Mutation::CompactionStatsEmpty {
            return Ok(CompactionStats::default());
        }
        Ok(stats)
    }

    async fn usage(&self, shard: ShardId) -> Result<ShardUsage, BackendError> {
        PersistBackend::<u64>::usage(&self.inner, shard).await
    }

    async fn finalize(&self, shard: ShardId) -> Result<(), BackendError> {
        PersistBackend::<u64>::finalize(&self.inner, shard).await
    }

    async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError> {
        PersistBackend::<u64>::list_shards(&self.inner).await
    }
}

struct MutantFactory {
    name: String,
    mutation: Mutation,
}

#[async_trait]
impl BackendFactory for MutantFactory {
    type Backend = MutantBackend;

    async fn open_handle(&self) -> MutantBackend {
        MutantBackend {
            inner: MemoryBackend::open(&self.name),
            mutation: self.mutation,
        }
    }
}

/// Runs `property` on a backend with `mutation` and checks it fails.
async fn assert_caught<Fut>(mutation: Mutation, property: impl FnOnce(MutantFactory) -> Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    let factory = MutantFactory {
        name: format!("mutant-{}", ShardId::new()),
        mutation,
    };
    let outcome = tokio::spawn(property(factory)).await;
    match outcome {
        Err(err) if err.is_panic() => {}
        other => panic!("the suite did not catch {mutation:?}: {other:?}"),
    }
}

macro_rules! caught_by {
    ($test:ident, $mutation:ident, $($property:tt)+) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            assert_caught(Mutation::$mutation, |factory| async move {
                $($property)+(&factory).await
            })
            .await;
        }
    };
}

caught_by!(
    ignored_tokens_are_caught,
    IgnoresIdempotencyToken,
    idempotency::retry_with_same_token_after_success_applies_once
);
caught_by!(
    unsorted_snapshots_are_caught,
    ReversedSnapshot,
    read::snapshot_is_consolidated_and_sorted
);
caught_by!(
    waits_that_do_not_wait_are_caught,
    WaitReturnsAtOnce,
    wait::wait_wakes_when_another_handle_appends
);
caught_by!(
    since_regressions_are_caught,
    SinceRegresses,
    since::downgrade_to_earlier_since_returns_current
);
caught_by!(
    lost_races_reported_as_wins_are_caught,
    MismatchReportedAsSuccess,
    concurrency::racing_writers_exactly_one_wins_each_round
);
caught_by!(
    fetches_beyond_the_upper_are_caught,
    FetchBeyondUpperAllowed,
    read::fetch_beyond_shard_upper_is_rejected
);
caught_by!(
    reads_that_create_shards_are_caught,
    UnknownShardCreated,
    unknown::frontiers_of_unknown_shard_is_rejected
);
caught_by!(
    lost_updates_are_caught_by_the_model,
    DropsLastUpdate,
    model::random_operations_match_the_model
);
caught_by!(
    empty_compaction_stats_are_caught,
    CompactionStatsEmpty,
    compaction::compaction_reduces_stored_updates
);
caught_by!(
    dropped_out_of_bounds_updates_are_caught,
    OutOfBoundsUpdatesDropped,
    append::update_at_or_beyond_new_upper_is_rejected
);
caught_by!(
    ignored_fences_are_caught_on_appends,
    IgnoresFence,
    fencing::stale_epoch_append_is_refused_and_writes_nothing
);
caught_by!(
    ignored_fences_are_caught_on_downgrades,
    IgnoresFence,
    fencing::stale_epoch_since_downgrade_is_refused
);
caught_by!(
    ignored_fences_are_caught_when_writers_race,
    IgnoresFence,
    fencing::racing_writers_only_the_new_one_lands_after_the_fence
);
caught_by!(
    forgotten_tokens_reported_not_applied_are_caught,
    ForgottenTokenReportedNotApplied,
    token_window::retry_outside_the_window_is_undetermined
);
caught_by!(
    atomic_appends_applied_shard_by_shard_are_caught,
    AppendAllShardByShard,
    atomic_append::append_all_writes_nothing_when_one_shard_mismatches
);
caught_by!(
    atomic_appends_applied_shard_by_shard_are_caught_by_the_model,
    AppendAllShardByShard,
    atomic_model::append_all_random_calls_match_the_model
);
caught_by!(
    atomic_appends_visible_in_part_are_caught_by_concurrent_readers,
    AppendAllVisibleInPart,
    atomic_append::append_all_is_never_seen_in_part_by_concurrent_readers
);
caught_by!(
    atomic_appends_fenced_shard_by_shard_are_caught,
    AppendAllShardByShard,
    atomic_append::append_all_stale_fence_on_one_shard_refuses_the_call
);
caught_by!(
    streams_that_drop_their_last_chunk_are_caught,
    StreamDropsLastChunk,
    streamed::snapshot_stream_concatenates_to_the_snapshot
);
caught_by!(
    fetch_streams_that_drop_their_last_chunk_are_caught,
    StreamDropsLastChunk,
    streamed::fetch_stream_concatenates_to_the_fetch
);
caught_by!(
    streams_that_drop_their_last_chunk_are_caught_by_the_model,
    StreamDropsLastChunk,
    model::random_operations_with_streamed_reads_match_the_model
);
caught_by!(
    streams_over_the_entry_limit_are_caught,
    StreamExceedsEntryLimit,
    streamed::stream_chunks_are_non_empty_and_within_the_entry_limit
);
caught_by!(
    streams_over_the_byte_limit_are_caught,
    StreamIgnoresByteLimit,
    streamed::stream_chunks_are_within_the_byte_limit
);
caught_by!(
    streams_with_an_empty_chunk_are_caught,
    StreamYieldsEmptyChunk,
    streamed::stream_chunks_are_non_empty_and_within_the_entry_limit
);
caught_by!(
    snapshot_streams_out_of_row_order_are_caught,
    StreamChunksReversed,
    streamed::snapshot_stream_chunks_come_in_row_order
);
caught_by!(
    fetch_streams_out_of_time_order_are_caught,
    StreamChunksReversed,
    streamed::fetch_stream_chunks_come_in_time_then_row_order
);
caught_by!(
    snapshot_streams_reading_live_state_are_caught,
    StreamRereadsLiveState,
    streamed::snapshot_stream_is_fixed_at_the_call
);
caught_by!(
    fetch_streams_reading_live_state_are_caught,
    StreamRereadsLiveState,
    streamed::fetch_stream_is_fixed_at_the_call
);
caught_by!(
    invalid_shares_reported_part_way_are_caught,
    StreamRejectsInvalidShareLate,
    streamed::stream_with_an_invalid_share_or_shard_is_rejected_at_the_call
);
