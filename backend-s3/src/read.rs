//! Reads: snapshots, fetches of a time range, and waiting for the upper.
//!
//! A read takes a fresh state and fetches the parts it needs in parallel
//! (bounded by the configured concurrency, each part decoded on the runtime
//! as it arrives). Parts are deleted only a grace period after compaction
//! unreferenced them, so a reader rarely finds one gone; when it does, it
//! reads the state again and starts over.

use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::consolidation::{consolidate, consolidate_updates};
use tidemark_storage_types::{
    BackendError, DeterminateKind, Diff, InvalidUsage, Row, ShardId, StorageTimestamp, Update,
    display_frontier,
};
use timely::PartialOrder;
use timely::progress::Antichain;

use crate::S3Backend;
use crate::codec::{advance_time, decode_part};
use crate::state::{
    EncodedFrontier, PartRef, ShardState, decode_frontier, encode_frontier, frontier_le,
    frontier_le_time,
};
use crate::store::bounded_in_order;

/// Times a read starts over after finding a part gone.
const MAX_READ_ATTEMPTS: usize = 5;

/// A part was deleted under the reader.
pub(crate) struct PartGone {
    key: String,
}

impl S3Backend {
    pub(crate) async fn read_snapshot<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        as_of: &T,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        let as_of_encoded = as_of.encode();
        let mut last_gone = String::new();
        for _ in 0..MAX_READ_ATTEMPTS {
            let state = self.read_state(shard).await?;
            if !frontier_le_time(state.since, as_of_encoded)
                || frontier_le_time(state.upper, as_of_encoded)
            {
                return Err(InvalidUsage::AsOfNotReadable {
                    shard,
                    as_of: as_of.to_string(),
                    since: display_frontier(&decode_frontier::<T>(state.since)).to_string(),
                    upper: display_frontier(&decode_frontier::<T>(state.upper)).to_string(),
                }
                .into());
            }
            let parts = state
                .batches
                .iter()
                .filter(|batch| frontier_le_time(batch.lower, as_of_encoded))
                .flat_map(|batch| batch.parts.iter().cloned())
                .collect();
            let as_of = *as_of;
            let loaded = self
                .load_parts::<T, _, _>(shard, parts, move |updates| {
                    updates
                        .into_iter()
                        .filter(|update| update.timestamp <= as_of)
                        .map(|update| (update.row, update.diff))
                        .collect::<Vec<_>>()
                })
                .await?;
            match loaded {
                Ok(runs) => {
                    // Parts are sorted by row; concatenated in state order the
                    // rows form a few sorted runs, which the sort merges.
                    let mut rows: Vec<(Row, Diff)> = runs.into_iter().flatten().collect();
                    consolidate(&mut rows);
                    return Ok(rows);
                }
                Err(gone) => last_gone = gone.key,
            }
        }
        Err(part_missing(shard, &last_gone))
    }

    pub(crate) async fn read_range<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
    ) -> Result<Vec<Update<T>>, BackendError> {
        let lower_encoded = encode_frontier(lower);
        let upper_encoded = encode_frontier(upper);
        let mut last_gone = String::new();
        for _ in 0..MAX_READ_ATTEMPTS {
            let state = self.read_state(shard).await?;
            if !PartialOrder::less_equal(lower, upper) || !frontier_le(upper_encoded, state.upper) {
                return Err(InvalidUsage::FetchRangeInvalid {
                    shard,
                    lower: display_frontier(lower).to_string(),
                    upper: display_frontier(upper).to_string(),
                    shard_upper: display_frontier(&decode_frontier::<T>(state.upper)).to_string(),
                }
                .into());
            }
            // An empty since means nothing is readable (a finalized shard has
            // no data left either).
            if state.since.is_none() {
                return Ok(Vec::new());
            }
            let since = state.since;
            let parts = parts_in_range(&state, lower_encoded, upper_encoded);
            let loaded = self
                .load_parts::<T, _, _>(shard, parts, move |updates| {
                    updates
                        .into_iter()
                        .filter_map(|mut update| {
                            update.timestamp = advance_time(update.timestamp, since);
                            let time = update.timestamp.encode();
                            let in_range = frontier_le_time(lower_encoded, time)
                                && !frontier_le_time(upper_encoded, time);
                            in_range.then_some((update.row, update.timestamp, update.diff))
                        })
                        .collect::<Vec<_>>()
                })
                .await?;
            match loaded {
                Ok(runs) => {
                    let mut updates: Vec<(Row, T, Diff)> = runs.into_iter().flatten().collect();
                    consolidate_updates(&mut updates);
                    let mut updates: Vec<Update<T>> = updates
                        .into_iter()
                        .map(|(row, time, diff)| Update::new(row, time, diff))
                        .collect();
                    updates.sort_by(|left, right| {
                        (left.timestamp, &left.row).cmp(&(right.timestamp, &right.row))
                    });
                    return Ok(updates);
                }
                Err(gone) => last_gone = gone.key,
            }
        }
        Err(part_missing(shard, &last_gone))
    }

    pub(crate) async fn poll_upper_past<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        frontier: &Antichain<T>,
    ) -> Result<Antichain<T>, BackendError> {
        if frontier.is_empty() {
            return Err(InvalidUsage::WaitPastEmptyFrontier { shard }.into());
        }
        let frontier = encode_frontier(frontier);
        let config = self.config();
        let mut delay = config.poll_interval_min;
        loop {
            let state = self.read_state(shard).await?;
            if !frontier_le(state.upper, frontier) {
                return Ok(decode_frontier(state.upper));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2)
                .min(config.poll_interval_max)
                .max(Duration::from_millis(1));
        }
    }

    /// Fetches and decodes parts (in order, at most `concurrency` at once),
    /// applying `transform` to each part's updates as it arrives.
    ///
    /// Returns `Ok(Err(gone))` if a part no longer exists: the caller reads
    /// the state again and starts over.
    pub(crate) async fn load_parts<T, O, F>(
        &self,
        shard: ShardId,
        parts: Vec<PartRef>,
        transform: F,
    ) -> Result<Result<Vec<O>, PartGone>, BackendError>
    where
        T: StorageTimestamp,
        O: Send + 'static,
        F: Fn(Vec<Update<T>>) -> O + Clone + Send + Sync + 'static,
    {
        let store = Arc::new(self.store().clone());
        let fetches = parts
            .into_iter()
            .map(|part| {
                let store = Arc::clone(&store);
                let transform = transform.clone();
                let key = store.keys.part(shard, part.id);
                let task = tokio::spawn(async move {
                    let fetched: Result<Result<O, PartGone>, BackendError> =
                        match store.get("get_part", &key).await? {
                            None => Ok(Err(PartGone { key })),
                            Some(bytes) => Ok(Ok(transform(decode_part::<T>(&key, &bytes)?))),
                        };
                    fetched
                });
                async move {
                    task.await.map_err(|err| {
                        BackendError::indeterminate(format!("part fetch task failed: error={err}"))
                    })?
                }
            })
            .collect();
        let mut outputs = Vec::new();
        for fetched in bounded_in_order(fetches, self.config().concurrency).await {
            match fetched? {
                Ok(output) => outputs.push(output),
                Err(gone) => return Ok(Err(gone)),
            }
        }
        Ok(Ok(outputs))
    }
}

/// The parts of batches that may hold updates whose times, advanced by the
/// since, fall in `[lower, upper)`.
fn parts_in_range(
    state: &ShardState,
    lower: EncodedFrontier,
    upper: EncodedFrontier,
) -> Vec<PartRef> {
    state
        .batches
        .iter()
        .filter(|batch| {
            // Advanced times are >= join(batch.lower, since).
            let least = crate::state::frontier_join(batch.lower, state.since);
            let starts_before_upper = !frontier_le(upper, least);
            // Advanced times are < batch.upper, or all equal to the since
            // when the since is at or past batch.upper.
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

fn part_missing(shard: ShardId, key: &str) -> BackendError {
    BackendError::determinate(
        DeterminateKind::Corrupted,
        format!(
            "a part the shard state references is missing after re-reading the state: shard={shard} key={key}"
        ),
    )
}
