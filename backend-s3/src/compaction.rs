//! Physical compaction: merge batches size-tiered, advancing times to the
//! since, and commit by the same compare-and-swap as appends.
//!
//! # Which batches are rewritten
//!
//! - **Tiers.** Batches are kept oldest first; walking back from the newest,
//!   a batch joins the run being merged while it holds fewer than twice the
//!   updates of the run so far. After a compaction every batch holds at
//!   least twice the updates of all newer ones together, so a shard of `n`
//!   updates has `O(log n)` batches, and an update is rewritten `O(log n)`
//!   times by tiering over its life (the batch it lives in grows by at
//!   least half, before consolidation, each time it is rewritten).
//! - **Since.** A batch that still holds times below the since that were not
//!   advanced (`max(lower, batch since) < since` and `batch since < upper`)
//!   is rewritten too, so compaction reclaims what logical compaction
//!   allows. Once the since passes a batch's upper and the batch has been
//!   rewritten, it is never rewritten for the since again.
//!
//! - **Inline data.** Once the parts stored inline in the state hold at
//!   least half of the configured inline bound, every batch holding one is
//!   rewritten too. Compaction always writes part objects, so it moves
//!   inline data out of the state, and appends find room to inline again
//!   (decision 064).
//!
//! Adjacent selected batches are merged into one batch (time order is kept:
//! batches cover consecutive time ranges).
//!
//! # Deleting replaced parts
//!
//! Replaced parts are not deleted at once: the committed state lists them as
//! retired with the time, and they are deleted by a later compaction or
//! [`gc`](crate::S3Backend::gc) once the grace period has passed, so readers
//! holding the older state can finish.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidemark_storage_types::{
    BackendError, Batch, CompactionStats, Diff, Row, ShardId, StorageTimestamp, Update,
    encode_batch,
};
use timely::progress::Antichain;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::buckets::{BUCKETS, BucketSet, bucket_bit, bucket_of, group_count};
use crate::clock::epoch_millis;
use crate::codec::{CODEC_BYTES_PER_UPDATE, EncodedPart, advance_time};
use crate::config::MIN_PART_SIZE_BYTES;
use crate::state::{
    BatchRef, EncodedFrontier, PartRef, RetiredPart, ShardState, decode_frontier, frontier_le,
};
use crate::store::Store;
use crate::stream::{Merger, PartFetcher, PartTransform};
use crate::{S3Backend, Step};

/// A run of adjacent batches `[start, end)` to merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub start: usize,
    pub end: usize,
}

/// Picks the runs of batches to rewrite; `inline_state_bytes` is the bound
/// on the state's inline bytes.
pub(crate) fn plan_runs(state: &ShardState, inline_state_bytes: usize) -> Vec<Run> {
    let count = state.batches.len();
    let mut selected = vec![false; count];
    // Tiers, from the newest batch back.
    if count >= 2 {
        let mut start = count - 1;
        let mut run_updates = state.batches[start].updates();
        while start > 0 && state.batches[start - 1].updates() < 2 * run_updates {
            start -= 1;
            run_updates += state.batches[start].updates();
        }
        if count - start >= 2 {
            selected[start..].iter_mut().for_each(|flag| *flag = true);
        }
    }
    // Batches holding times below the since that were never advanced, and
    // inline batches once they fill half their bound.
    let move_inline_out = state.inline_bytes() > 0
        && state.inline_bytes().saturating_mul(2) >= inline_state_bytes as u64;
    for (index, batch) in state.batches.iter().enumerate() {
        let inline = batch.parts.iter().any(PartRef::is_inline);
        if holds_unadvanced_times(batch, state) || (move_inline_out && inline) {
            selected[index] = true;
        }
    }
    let mut runs = Vec::new();
    let mut index = 0;
    while index < count {
        if selected[index] {
            let start = index;
            while index < count && selected[index] {
                index += 1;
            }
            runs.push(Run { start, end: index });
        } else {
            index += 1;
        }
    }
    runs
}

/// Whether the batch may hold two different times that the shard's since
/// would advance to one.
fn holds_unadvanced_times(batch: &BatchRef, state: &ShardState) -> bool {
    let Some(since) = state.since else {
        return false;
    };
    let Some(batch_since) = batch.since else {
        return false;
    };
    // Times in the batch are >= max(lower, batch since).
    let least = batch
        .lower
        .map_or(batch_since, |lower| lower.max(batch_since));
    // Every time is already the batch since: advancing merges nothing.
    let all_at_batch_since = frontier_le(batch.upper, Some(batch_since));
    batch_since < since && least < since && !all_at_batch_since
}

/// How many parts' worth of bytes the parts of all bucket groups of a
/// compacted batch hold together, one part per group: a batch of more than
/// this many groups gets parts smaller than the configured size, so that a
/// reader, which merges every run of a batch at once holding a part of
/// each, holds at most this many parts' worth of it (decision 114).
const MERGED_PARTS_PER_BATCH: usize = 8;

/// How many passes a merge of `replaced` into `groups` bucket groups makes:
/// pass `p` merges the rows whose bucket `b` has `b % passes == p`, so it
/// holds a part of only the input runs that can hold such rows. As many
/// passes as the input batch with the most runs has (at most `groups`, a
/// power of two), so each input part is downloaded once when the inputs
/// are comparable batches, and a small input (fewer runs, each holding
/// many buckets) is downloaded once per pass it meets.
fn merge_passes(replaced: &[BatchRef], groups: usize) -> u32 {
    let most_runs = replaced
        .iter()
        .map(|batch| batch.runs().count())
        .max()
        .unwrap_or(1)
        .clamp(1, groups.max(1));
    1 << most_runs.ilog2()
}

/// The buckets pass `pass` of `passes` merges.
fn pass_buckets(passes: u32, pass: u32) -> BucketSet {
    (0..BUCKETS)
        .filter(|bucket| bucket % passes == pass)
        .fold(0, |set, bucket| set | bucket_bit(bucket))
}

/// Writes a merged batch as parts while the merge runs: one buffer per
/// bucket group (the layout of [`encode_parts`](crate::codec::encode_parts)),
/// a group's part written when it reaches the part target (the configured
/// size, smaller for a batch of more than [`MERGED_PARTS_PER_BATCH`]
/// groups), at most `concurrency` uploads in flight.
struct StreamingPartWriter<T: StorageTimestamp> {
    store: Arc<Store>,
    shard: ShardId,
    bounds: Arc<[Antichain<T>; 3]>,
    part_target_bytes: usize,
    concurrency: usize,
    groups: Vec<GroupBuffer<T>>,
    /// Every part started, in `(group, order written)` order once sorted.
    started: Vec<(u32, usize, PartRef)>,
    /// Uploads in flight, each answering its part's index in `started`
    /// and its encoded size.
    uploads: VecDeque<JoinHandle<Result<(usize, u64), BackendError>>>,
}

/// The updates of one bucket group not yet written.
struct GroupBuffer<T> {
    updates: Vec<Update<T>>,
    bytes: usize,
    buckets: BucketSet,
}

impl<T: StorageTimestamp> StreamingPartWriter<T> {
    /// A writer for a batch with `bounds` (lower, upper, since) of at most
    /// about `input_bytes` encoded bytes (which fixes its group count).
    fn new(
        backend: &S3Backend,
        shard: ShardId,
        bounds: [EncodedFrontier; 3],
        input_bytes: usize,
    ) -> Self {
        let config = backend.config();
        let part_size_bytes = config.part_size_bytes;
        let groups = group_count(input_bytes, part_size_bytes);
        let part_target_bytes = (part_size_bytes.saturating_mul(MERGED_PARTS_PER_BATCH)
            / groups as usize)
            .clamp(MIN_PART_SIZE_BYTES.min(part_size_bytes), part_size_bytes);
        StreamingPartWriter {
            store: Arc::new(backend.store().clone()),
            shard,
            bounds: Arc::new(bounds.map(decode_frontier)),
            part_target_bytes,
            concurrency: config.concurrency.max(1),
            groups: (0..groups)
                .map(|_| GroupBuffer {
                    updates: Vec::new(),
                    bytes: 0,
                    buckets: 0,
                })
                .collect(),
            started: Vec::new(),
            uploads: VecDeque::new(),
        }
    }

    /// Adds the next update (in `(row, time)` order).
    async fn push(&mut self, row: Row, time: T, diff: Diff) -> Result<(), BackendError> {
        let bucket = bucket_of(&row);
        let group = (bucket % self.groups.len() as u32) as usize;
        let bytes = row.byte_len() + CODEC_BYTES_PER_UPDATE;
        let buffer = &mut self.groups[group];
        buffer.bytes += bytes;
        buffer.buckets |= bucket_bit(bucket);
        buffer.updates.push(Update::new(row, time, diff));
        if buffer.bytes >= self.part_target_bytes {
            self.write_group(group).await?;
        }
        Ok(())
    }

    /// Writes the buffered updates of every group whose buckets are in
    /// `buckets`.
    async fn write_groups(&mut self, buckets: BucketSet) -> Result<(), BackendError> {
        for group in 0..self.groups.len() {
            if self.groups[group].buckets & !buckets == 0 {
                self.write_group(group).await?;
            }
        }
        Ok(())
    }

    /// Starts writing group `group`'s buffered updates as a part.
    async fn write_group(&mut self, group: usize) -> Result<(), BackendError> {
        let buffer = &mut self.groups[group];
        if buffer.updates.is_empty() {
            return Ok(());
        }
        let updates = std::mem::take(&mut buffer.updates);
        let buckets = std::mem::take(&mut buffer.buckets);
        buffer.bytes = 0;
        while self.uploads.len() >= self.concurrency {
            self.wait_oldest().await?;
        }
        let id = Uuid::new_v4();
        let group = u32::try_from(group).expect("at most BUCKETS groups");
        self.started.push((
            group,
            self.started.len(),
            PartRef {
                id,
                updates: updates.len() as u64,
                bytes: 0,
                buckets,
                run: group,
                inline: None,
            },
        ));
        let index = self.started.len() - 1;
        let (store, shard, bounds) = (
            Arc::clone(&self.store),
            self.shard,
            Arc::clone(&self.bounds),
        );
        self.uploads.push_back(tokio::spawn(async move {
            let [lower, upper, since] = &*bounds;
            let batch = Batch {
                lower: lower.clone(),
                upper: upper.clone(),
                since: since.clone(),
                updates,
            };
            let body = encode_batch(&batch).map_err(|err| err.into_backend_error(shard))?;
            let size = body.len() as u64;
            let key = store.keys.part(shard, id);
            store.put("put_part", &key, Bytes::from(body)).await?;
            Ok((index, size))
        }));
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), BackendError> {
        let Some(upload) = self.uploads.pop_front() else {
            return Ok(());
        };
        let (index, size) = upload.await.map_err(|err| {
            BackendError::indeterminate(format!("part upload task failed: error={err}"))
        })??;
        self.started[index].2.bytes = size;
        Ok(())
    }

    /// Writes what is buffered and waits for every upload; returns the
    /// batch's parts in run order.
    async fn finish(&mut self) -> Result<Vec<PartRef>, BackendError> {
        for group in 0..self.groups.len() {
            self.write_group(group).await?;
        }
        while !self.uploads.is_empty() {
            self.wait_oldest().await?;
        }
        let mut parts = self.started.clone();
        parts.sort_by_key(|(group, order, _)| (*group, *order));
        Ok(parts.into_iter().map(|(_, _, part)| part).collect())
    }

    /// The parts started, to delete if the batch is not committed.
    fn written_parts(&self) -> Vec<EncodedPart> {
        self.started
            .iter()
            .map(|(_, _, part)| EncodedPart {
                part: part.clone(),
                body: Bytes::new(),
            })
            .collect()
    }

    /// Stops the uploads and deletes whatever parts were started.
    async fn abandon(&mut self) {
        for upload in self.uploads.drain(..) {
            upload.abort();
            let _ = upload.await;
        }
        let keys: Vec<String> = self
            .started
            .iter()
            .map(|(_, _, part)| self.store.keys.part(self.shard, part.id))
            .collect();
        if keys.is_empty() {
            return;
        }
        if let Err(err) = self
            .store
            .delete_many("delete_unreferenced_parts", keys)
            .await
        {
            tracing::warn!(shard = %self.shard, error = %err, "could not delete unreferenced parts, gc will");
        }
    }
}

/// The merged replacement of one run.
struct Merged {
    run: Run,
    replaced: Vec<BatchRef>,
    batch: BatchRef,
    parts: Vec<EncodedPart>,
}

impl S3Backend {
    pub(crate) async fn compact_shard<T: StorageTimestamp>(
        &self,
        shard: ShardId,
    ) -> Result<CompactionStats, BackendError> {
        let state = self.read_state(shard).await?;
        let before = CompactionStats {
            updates_before: state.stored_updates(),
            updates_after: state.stored_updates(),
            bytes_before: state.stored_bytes(),
            bytes_after: state.stored_bytes(),
        };
        let expired = self.delete_expired_retired(shard, &state).await?;
        let runs = if state.finalized {
            Vec::new()
        } else {
            plan_runs(&state, self.config().inline_state_bytes)
        };
        if runs.is_empty() && expired.is_empty() {
            return Ok(before);
        }

        let mut merged = Vec::new();
        for run in runs {
            match self.merge_run::<T>(shard, &state, run).await? {
                Some(result) => merged.push(result),
                // A part vanished: another compaction replaced these batches.
                None => {
                    for done in &merged {
                        self.discard_parts(shard, &done.parts).await;
                    }
                    return Ok(before);
                }
            }
        }

        let now_ms = epoch_millis(self.clock().now());
        let outcome = self
            .update_state(shard, false, |current, _fresh| {
                let Some(next) = replace_runs(current, &merged, &expired, now_ms) else {
                    return Ok(Step::Done(false));
                };
                Ok(Step::Write(next, true))
            })
            .await;
        match outcome {
            // SUBTLE: the commit may have retried on a newer state holding
            // appends made meanwhile; the stats count only what this
            // compaction rewrote, against the state it read.
            Ok((true, _committed)) => Ok(rewrite_stats(&state, &merged)),
            Ok((false, _)) => {
                for done in &merged {
                    self.discard_parts(shard, &done.parts).await;
                }
                Ok(before)
            }
            Err(err) => {
                // SUBTLE: as for appends, only a determinate failure proves
                // the new parts are unreferenced.
                if err.is_determinate() {
                    for done in &merged {
                        self.discard_parts(shard, &done.parts).await;
                    }
                }
                Err(err)
            }
        }
    }

    /// Merges a run's batches as a stream: the runs of their parts are
    /// merged (times advanced to the state's since, equal updates
    /// consolidated as the merge passes them) and the result is written as
    /// new parts as they fill, so the run is never in memory whole.
    /// `None` if a part is gone (another compaction replaced these batches);
    /// the parts already written are then deleted.
    async fn merge_run<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        state: &ShardState,
        run: Run,
    ) -> Result<Option<Merged>, BackendError> {
        let replaced: Vec<BatchRef> = state.batches[run.start..run.end].to_vec();
        let since = state.since;
        let first = replaced.first().expect("runs are not empty");
        let last = replaced.last().expect("runs are not empty");
        let input_bytes: u64 = replaced.iter().map(BatchRef::bytes).sum();
        let mut writer = StreamingPartWriter::<T>::new(
            self,
            shard,
            [first.lower, last.upper, since],
            usize::try_from(input_bytes).unwrap_or(usize::MAX),
        );
        let passes = merge_passes(&replaced, writer.groups.len());
        let outcome = async {
            for pass in 0..passes {
                let pass_buckets = pass_buckets(passes, pass);
                // Each pass merges the rows of its buckets: the input parts
                // holding any, and of those only the rows in its buckets.
                let runs: Vec<Vec<PartRef>> = replaced
                    .iter()
                    .flat_map(BatchRef::runs)
                    .map(|run| {
                        run.iter()
                            .filter(|part| part.buckets & pass_buckets != 0)
                            .cloned()
                            .collect()
                    })
                    .collect();
                // Advancing times by the since keeps each run's
                // `(row, time)` order (the join with a fixed time is
                // monotone).
                let transform: PartTransform<T, (Row, T, Diff)> = Arc::new(move |part, updates| {
                    let whole = part.buckets & !pass_buckets == 0;
                    updates
                        .into_iter()
                        .filter(|update| {
                            whole || bucket_bit(bucket_of(&update.row)) & pass_buckets != 0
                        })
                        .map(|update| {
                            (
                                update.row,
                                advance_time(update.timestamp, since),
                                update.diff,
                            )
                        })
                        .collect()
                });
                let mut merger = Merger::new(runs, PartFetcher::new(self, shard), transform);
                loop {
                    match merger.next().await? {
                        Ok(Some((row, time, diff))) => writer.push(row, time, diff).await?,
                        Ok(None) => break,
                        Err(_gone) => return Ok(None),
                    }
                }
                // The pass's groups are complete: their last parts are
                // written now, so the buffers hold one pass at a time.
                writer.write_groups(pass_buckets).await?;
            }
            writer.finish().await.map(Some)
        }
        .await;
        match outcome {
            Ok(Some(parts)) => {
                let batch = BatchRef {
                    lower: first.lower,
                    upper: last.upper,
                    since,
                    parts,
                };
                let parts = writer.written_parts();
                Ok(Some(Merged {
                    run,
                    replaced,
                    batch,
                    parts,
                }))
            }
            Ok(None) => {
                writer.abandon().await;
                Ok(None)
            }
            Err(err) => {
                writer.abandon().await;
                Err(err)
            }
        }
    }

    /// Deletes retired parts whose grace period has passed; returns their ids
    /// (to drop from the state).
    pub(crate) async fn delete_expired_retired(
        &self,
        shard: ShardId,
        state: &ShardState,
    ) -> Result<HashSet<Uuid>, BackendError> {
        let grace = self.config().grace_period;
        let now = self.clock().now();
        let expired: HashSet<Uuid> = state
            .retired
            .iter()
            .filter(|retired| {
                let retired_at =
                    std::time::UNIX_EPOCH + Duration::from_millis(retired.retired_at_ms);
                now.duration_since(retired_at).is_ok_and(|age| age >= grace)
            })
            .map(|retired| retired.id)
            .collect();
        if !expired.is_empty() {
            let store = self.store();
            let keys = expired
                .iter()
                .map(|id| store.keys.part(shard, *id))
                .collect();
            store.delete_many("delete_retired_parts", keys).await?;
        }
        Ok(expired)
    }
}

/// What rewriting `merged` did to `read`, the state the compaction planned
/// on: its stored updates and bytes before, and after replacing each run's
/// batches by the merged batch. Appends committed while the compaction ran
/// are in neither.
fn rewrite_stats(read: &ShardState, merged: &[Merged]) -> CompactionStats {
    let (mut updates_after, mut bytes_after) = (read.stored_updates(), read.stored_bytes());
    for result in merged {
        let replaced_updates: u64 = result.replaced.iter().map(BatchRef::updates).sum();
        let replaced_bytes: u64 = result.replaced.iter().map(BatchRef::bytes).sum();
        updates_after = updates_after - replaced_updates + result.batch.updates();
        bytes_after = bytes_after - replaced_bytes + result.batch.bytes();
    }
    CompactionStats {
        updates_before: read.stored_updates(),
        updates_after,
        bytes_before: read.stored_bytes(),
        bytes_after,
    }
}

/// The state with each merged run replaced by its batch (the run's batches
/// found by identity, wherever they now are), the replaced parts retired,
/// and the expired retired parts dropped. `None` if some run's batches are
/// no longer in the state (another compaction replaced them).
fn replace_runs(
    current: &ShardState,
    merged: &[Merged],
    expired: &HashSet<Uuid>,
    now_ms: u64,
) -> Option<ShardState> {
    let mut next = current.successor();
    for result in merged {
        let position = next
            .batches
            .windows(result.replaced.len())
            .position(|window| window == result.replaced.as_slice())?;
        let end = position + result.replaced.len();
        let replacement: Vec<BatchRef> = if result.batch.parts.is_empty() {
            Vec::new()
        } else {
            vec![result.batch.clone()]
        };
        next.batches.splice(position..end, replacement);
        debug_assert!(result.run.end > result.run.start);
        // Inline parts have no object to delete.
        next.retired.extend(
            result
                .replaced
                .iter()
                .flat_map(|batch| batch.parts.iter())
                .filter(|part| !part.is_inline())
                .map(|part| RetiredPart {
                    id: part.id,
                    retired_at_ms: now_ms,
                }),
        );
    }
    next.retired
        .retain(|retired| !expired.contains(&retired.id));
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(lower: i64, upper: i64, since: i64, updates: u64) -> BatchRef {
        BatchRef {
            lower: Some(lower),
            upper: Some(upper),
            since: Some(since),
            parts: vec![PartRef {
                id: Uuid::new_v4(),
                updates,
                bytes: updates * 10,
                buckets: crate::buckets::ALL_BUCKETS,
                run: 0,
                inline: None,
            }],
        }
    }

    fn state(since: i64, batches: Vec<BatchRef>) -> ShardState {
        let mut state = ShardState::new_shard::<u64>();
        state.since = Some(since);
        state.batches = batches;
        state
    }

    #[test]
    fn tiers_merge_the_newest_comparable_batches() {
        // 100 >= 2 * (10 + 5 + 5): the big batch stays.
        let shard = state(
            0,
            vec![
                batch(0, 1, 0, 100),
                batch(1, 2, 1, 10),
                batch(2, 3, 2, 5),
                batch(3, 4, 3, 5),
            ],
        );
        assert_eq!(plan_runs(&shard, 1 << 16), vec![Run { start: 1, end: 4 }]);
        // Already tiered: nothing to do.
        let shard = state(0, vec![batch(0, 1, 0, 100), batch(1, 2, 1, 10)]);
        assert_eq!(plan_runs(&shard, 1 << 16), vec![]);
    }

    #[test]
    fn batches_with_unadvanced_times_below_since_are_rewritten() {
        let shard = state(10, vec![batch(0, 5, 0, 100), batch(5, 20, 5, 10)]);
        assert_eq!(plan_runs(&shard, 1 << 16), vec![Run { start: 0, end: 2 }]);
        // Already advanced to since 10 and entirely below it: left alone.
        let shard = state(12, vec![batch(0, 10, 10, 100), batch(10, 20, 12, 10)]);
        assert_eq!(plan_runs(&shard, 1 << 16), vec![]);
    }

    fn inline_batch(lower: i64, bytes: u64) -> BatchRef {
        let mut batch = batch(lower, lower + 1, lower, 1);
        batch.parts[0].bytes = bytes;
        batch.parts[0].inline = Some(bytes::Bytes::from(vec![0; bytes as usize]));
        batch
    }

    #[test]
    fn inline_batches_are_moved_out_once_they_fill_half_their_bound() {
        // Tiered (100 >= 2 * 1), one inline batch of 10 bytes.
        let shard = state(0, vec![batch(0, 1, 0, 100), inline_batch(1, 10)]);
        assert_eq!(plan_runs(&shard, 100), vec![]);
        assert_eq!(plan_runs(&shard, 20), vec![Run { start: 1, end: 2 }]);
        // Inline batches between large ones are moved out one run each.
        let shard = state(
            0,
            vec![
                batch(0, 1, 0, 1000),
                inline_batch(1, 30),
                batch(2, 3, 2, 100),
                inline_batch(3, 30),
            ],
        );
        assert_eq!(
            plan_runs(&shard, 100),
            vec![Run { start: 1, end: 2 }, Run { start: 3, end: 4 }]
        );
        // Moving them out retires no object.
        let merged = Merged {
            run: Run { start: 1, end: 2 },
            replaced: shard.batches[1..2].to_vec(),
            batch: batch(1, 2, 0, 1),
            parts: Vec::new(),
        };
        let next = replace_runs(&shard, &[merged], &HashSet::new(), 7).unwrap();
        assert!(next.retired.is_empty());
        assert_eq!(next.inline_bytes(), 30);
    }

    #[test]
    fn replacing_a_vanished_run_gives_up() {
        let old = state(0, vec![batch(0, 1, 0, 1), batch(1, 2, 1, 1)]);
        let merged = Merged {
            run: Run { start: 0, end: 2 },
            replaced: old.batches.clone(),
            batch: batch(0, 2, 0, 2),
            parts: Vec::new(),
        };
        let next = replace_runs(&old, std::slice::from_ref(&merged), &HashSet::new(), 7).unwrap();
        assert_eq!(next.batches, vec![merged.batch.clone()]);
        assert_eq!(next.retired.len(), 2);
        let other = state(0, vec![batch(0, 2, 0, 2)]);
        assert!(replace_runs(&other, &[merged], &HashSet::new(), 7).is_none());
    }

    #[test]
    fn stats_count_only_what_the_compaction_rewrote() {
        let read = state(
            0,
            vec![batch(0, 1, 0, 50), batch(1, 2, 1, 4), batch(2, 3, 2, 4)],
        );
        let merged = Merged {
            run: Run { start: 1, end: 3 },
            replaced: read.batches[1..].to_vec(),
            batch: batch(1, 3, 0, 3),
            parts: Vec::new(),
        };
        // An append of 40 updates committed while the compaction ran: the
        // commit lands on this newer state.
        let mut newer = read.successor();
        newer.batches.push(batch(3, 4, 3, 40));
        let committed =
            replace_runs(&newer, std::slice::from_ref(&merged), &HashSet::new(), 7).unwrap();
        assert_eq!(committed.stored_updates(), 50 + 3 + 40);
        let stats = rewrite_stats(&read, &[merged]);
        assert_eq!(
            stats,
            CompactionStats {
                updates_before: 58,
                updates_after: 53,
                bytes_before: 580,
                bytes_after: 530,
            }
        );
    }
}
