//! Shares of snapshots and fetches, divided by row bucket
//! ([`crate::buckets`]): a share downloads only the parts whose buckets meet
//! its own, keeps every row of a part holding only its buckets, and filters
//! rows only in parts that mix its buckets with others.
//!
//! SUBTLE: the division must be a function of the update alone. The readers
//! of one source follow the upper on their own, so they read different
//! ranges from different states (appends and compactions in between); a
//! division by stored part (part `i` of the read's list to share `i % count`)
//! gives a part to one share in one read and to another share in the next,
//! and the readers together see some updates twice and others never. A
//! row's bucket never changes, whichever part holds it (see decisions 061
//! and 063).

use differential_dataflow::consolidation::consolidate_updates;
use tidemark_storage_types::{
    BackendError, DeterminateKind, Diff, ReadShare, Row, ShardId, StorageTimestamp, Update,
    contract,
};
use timely::progress::Antichain;

use crate::S3Backend;
use crate::buckets::ShareBuckets;
use crate::codec::advance_time;
use crate::read::{consolidate_sorted_rows, merge_part_runs};
use crate::state::{
    EncodedFrontier, PartRef, ShardState, decode_frontier, encode_frontier, frontier_join,
    frontier_le, frontier_le_time,
};

/// Times a share read starts over after finding a part gone.
const MAX_SHARE_READ_ATTEMPTS: usize = 5;

impl S3Backend {
    pub(crate) async fn snapshot_share<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        share.check(shard)?;
        let buckets = ShareBuckets::new(share);
        let as_of_encoded = as_of.encode();
        for _ in 0..MAX_SHARE_READ_ATTEMPTS {
            let state = self.read_state(shard).await?;
            contract::check_readable(
                shard,
                &decode_frontier::<T>(state.since),
                &decode_frontier::<T>(state.upper),
                as_of,
            )?;
            // The share's parts of each sorted run, run by run.
            let mut parts = Vec::new();
            let mut parts_per_run = Vec::new();
            for batch in state
                .batches
                .iter()
                .filter(|batch| frontier_le_time(batch.lower, as_of_encoded))
            {
                for run in batch.runs() {
                    let before = parts.len();
                    parts.extend(
                        run.iter()
                            .filter(|part| buckets.needs_part(part.buckets))
                            .cloned(),
                    );
                    parts_per_run.push(parts.len() - before);
                }
            }
            let as_of = *as_of;
            let loaded = self
                .load_parts::<T, _, _>(shard, parts, move |part, updates| {
                    let whole = buckets.holds_whole_part(part.buckets);
                    consolidate_sorted_rows(
                        updates
                            .into_iter()
                            .filter(|update| {
                                update.timestamp <= as_of
                                    && (whole || buckets.holds_row(&update.row))
                            })
                            .map(|update| (update.row, update.diff)),
                    )
                })
                .await?;
            if let Ok(part_rows) = loaded {
                return Ok(merge_part_runs(part_rows, &parts_per_run));
            }
        }
        Err(share_part_missing(shard, share))
    }

    pub(crate) async fn fetch_share<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
    ) -> Result<Vec<Update<T>>, BackendError> {
        share.check(shard)?;
        let buckets = ShareBuckets::new(share);
        let lower_encoded = encode_frontier(lower);
        let upper_encoded = encode_frontier(upper);
        for _ in 0..MAX_SHARE_READ_ATTEMPTS {
            let state = self.read_state(shard).await?;
            contract::check_fetch_range(shard, lower, upper, &decode_frontier::<T>(state.upper))?;
            if state.since.is_none() {
                return Ok(Vec::new());
            }
            let since = state.since;
            let parts = parts_overlapping(&state, lower_encoded, upper_encoded)
                .into_iter()
                .filter(|part| buckets.needs_part(part.buckets))
                .collect();
            let loaded = self
                .load_parts::<T, _, _>(shard, parts, move |part, updates| {
                    let whole = buckets.holds_whole_part(part.buckets);
                    updates
                        .into_iter()
                        .filter(|update| whole || buckets.holds_row(&update.row))
                        .filter_map(|update| {
                            let time = advance_time(update.timestamp, since);
                            let encoded = time.encode();
                            let in_range = frontier_le_time(lower_encoded, encoded)
                                && !frontier_le_time(upper_encoded, encoded);
                            in_range.then_some((time, update.row, update.diff))
                        })
                        .collect::<Vec<_>>()
                })
                .await?;
            if let Ok(runs) = loaded {
                let mut updates: Vec<(T, Row, Diff)> = runs.into_iter().flatten().collect();
                consolidate_updates(&mut updates);
                return Ok(updates
                    .into_iter()
                    .map(|(time, row, diff)| Update::new(row, time, diff))
                    .collect());
            }
        }
        Err(share_part_missing(shard, share))
    }
}

/// The parts of the batches that may hold updates whose times, advanced by
/// the since, fall in `[lower, upper)`: the same selection as a whole fetch.
fn parts_overlapping(
    state: &ShardState,
    lower: EncodedFrontier,
    upper: EncodedFrontier,
) -> Vec<PartRef> {
    state
        .batches
        .iter()
        .filter(|batch| {
            let least = frontier_join(batch.lower, state.since);
            let starts_before_upper = !frontier_le(upper, least);
            let ends_after_lower = if frontier_le(batch.upper, state.since) {
                frontier_le(lower, state.since)
            } else {
                !frontier_le(batch.upper, lower)
            };
            starts_before_upper && ends_after_lower
        })
        .flat_map(|batch| batch.parts.iter().cloned())
        .collect()
}

fn share_part_missing(shard: ShardId, share: ReadShare) -> BackendError {
    BackendError::determinate(
        DeterminateKind::Corrupted,
        format!(
            "a part the shard state references stayed missing after re-reading the state: shard={shard} share={share}"
        ),
    )
}
