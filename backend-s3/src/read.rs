//! Reads: snapshots and fetches as `Vec`s, and waiting for the upper.
//!
//! The `Vec` reads load whole parts and merge them pairwise; the streamed
//! reads ([`crate::stream`]) merge runs part by part in bounded memory. The
//! pairwise merge is the faster when the whole read is wanted anyway
//! (decision 114).
//!
//! A read takes a fresh state and fetches the parts it needs in parallel
//! (bounded by the configured concurrency, each part decoded on the runtime
//! as it arrives). Parts are deleted only a grace period after compaction
//! unreferenced them, so a reader rarely finds one gone; when it does, it
//! reads the state again and starts over.

use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::consolidation::consolidate_updates;
use tidemark_storage_types::{
    BackendError, DeterminateKind, Diff, Row, ShardId, StorageTimestamp, Update, contract,
};
use timely::progress::Antichain;

use crate::S3Backend;
use crate::codec::{advance_time, decode_part};
use crate::state::{
    BatchRef, EncodedFrontier, PartRef, ShardState, decode_frontier, encode_frontier, frontier_le,
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
    pub(crate) async fn snapshot<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        as_of: &T,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        let as_of_encoded = as_of.encode();
        let mut last_gone = String::new();
        for _ in 0..MAX_READ_ATTEMPTS {
            let state = self.read_state(shard).await?;
            contract::check_readable(
                shard,
                &decode_frontier(state.since),
                &decode_frontier(state.upper),
                as_of,
            )?;
            let batches: Vec<&BatchRef> = state
                .batches
                .iter()
                .filter(|batch| frontier_le_time(batch.lower, as_of_encoded))
                .collect();
            let parts_per_run: Vec<usize> = batches
                .iter()
                .flat_map(|batch| batch.runs().map(<[PartRef]>::len))
                .collect();
            let parts = batches
                .iter()
                .flat_map(|batch| batch.parts.iter().cloned())
                .collect();
            let as_of = *as_of;
            // Each part is consolidated on the runtime as it arrives (parts
            // hold updates sorted by row, then time).
            let loaded = self
                .load_parts::<T, _, _>(shard, parts, move |_part, updates| {
                    consolidate_sorted_rows(
                        updates
                            .into_iter()
                            .filter(|update| update.timestamp <= as_of)
                            .map(|update| (update.row, update.diff)),
                    )
                })
                .await?;
            match loaded {
                Ok(part_rows) => return Ok(merge_part_runs(part_rows, &parts_per_run)),
                Err(gone) => last_gone = gone.key,
            }
        }
        Err(part_missing(shard, &last_gone))
    }

    pub(crate) async fn fetch<T: StorageTimestamp>(
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
            contract::check_fetch_range(shard, lower, upper, &decode_frontier(state.upper))?;
            // An empty since means nothing is readable (a finalized shard has
            // no data left either).
            if state.since.is_none() {
                return Ok(Vec::new());
            }
            let since = state.since;
            let parts = parts_in_range(&state, lower_encoded, upper_encoded);
            let loaded = self
                .load_parts::<T, _, _>(shard, parts, move |_part, updates| {
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

    pub(crate) async fn wait_for_upper_past<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        frontier: &Antichain<T>,
    ) -> Result<Antichain<T>, BackendError> {
        contract::check_wait_frontier(shard, frontier)?;
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
    /// applying `transform` to each part (its reference and its updates) as
    /// it arrives. Inline parts are decoded from the state, like fetched
    /// ones, without a request.
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
        F: Fn(&PartRef, Vec<Update<T>>) -> O + Clone + Send + Sync + 'static,
    {
        let store = Arc::new(self.store().clone());
        let fetches = parts
            .into_iter()
            .map(|part| {
                let store = Arc::clone(&store);
                let downloads = Arc::clone(self.downloads());
                let transform = transform.clone();
                let task = tokio::spawn(async move {
                    // An inline part is read from the state (no request);
                    // its checksum is checked by the same decode.
                    if let Some(body) = part.inline.clone() {
                        let name = format!("{} (inline part {})", store.keys.state(shard), part.id);
                        return decode_part::<T>(&name, body)
                            .map(|updates| Ok(transform(&part, updates)));
                    }
                    let key = store.keys.part(shard, part.id);
                    let fetched: Result<Result<O, PartGone>, BackendError> =
                        match store.get("get_part", &key).await? {
                            None => Ok(Err(PartGone { key })),
                            // Decoding is CPU work: off the runtime's
                            // workers, so they keep driving the downloads.
                            Some(bytes) => {
                                downloads.record(bytes.len());
                                tokio::task::spawn_blocking(move || {
                                    decode_part::<T>(&key, bytes)
                                        .map(|updates| Ok(transform(&part, updates)))
                                })
                                .await
                                .map_err(|err| {
                                    BackendError::indeterminate(format!(
                                        "part decode task failed: error={err}"
                                    ))
                                })?
                            }
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

/// Merges the consolidated rows of parts, in state order, where the parts of
/// each sorted run (`parts_per_run` of them, in order) are consecutive row
/// ranges: appended in order they form the run, and the runs are merged.
pub(crate) fn merge_part_runs(
    part_rows: Vec<Vec<(Row, Diff)>>,
    parts_per_run: &[usize],
) -> Vec<(Row, Diff)> {
    let mut part_rows = part_rows.into_iter();
    let runs = parts_per_run
        .iter()
        .map(|count| {
            let mut run = Vec::new();
            for rows in part_rows.by_ref().take(*count) {
                append_sorted_run(&mut run, rows);
            }
            run
        })
        .collect();
    merge_sorted_runs(runs)
}

/// Sums the diffs of adjacent equal rows of a row-sorted sequence and drops
/// zero sums.
pub(crate) fn consolidate_sorted_rows(rows: impl Iterator<Item = (Row, Diff)>) -> Vec<(Row, Diff)> {
    let mut consolidated: Vec<(Row, Diff)> = Vec::new();
    for (row, diff) in rows {
        match consolidated.last_mut() {
            Some((last, sum)) if *last == row => *sum += diff,
            _ => {
                if consolidated.last().is_some_and(|(_, sum)| *sum == 0) {
                    consolidated.pop();
                }
                consolidated.push((row, diff));
            }
        }
    }
    if consolidated.last().is_some_and(|(_, sum)| *sum == 0) {
        consolidated.pop();
    }
    consolidated
}

/// Appends a consolidated run whose rows are all `>=` the last row of
/// `run`, merging the one row they may share.
fn append_sorted_run(run: &mut Vec<(Row, Diff)>, next: Vec<(Row, Diff)>) {
    let mut next = next.into_iter();
    if let (Some((last, sum)), Some((first, diff))) = (run.last_mut(), next.as_slice().first())
        && last == first
    {
        *sum += *diff;
        if *sum == 0 {
            run.pop();
        }
        next.next();
    }
    run.extend(next);
}

/// Merges consolidated runs, each strictly increasing by row, into one,
/// pairwise (`n log k` comparisons for `k` runs).
fn merge_sorted_runs(mut runs: Vec<Vec<(Row, Diff)>>) -> Vec<(Row, Diff)> {
    runs.retain(|run| !run.is_empty());
    while runs.len() > 1 {
        let mut merged = Vec::with_capacity(runs.len().div_ceil(2));
        let mut pairs = runs.into_iter();
        while let Some(left) = pairs.next() {
            match pairs.next() {
                Some(right) => merged.push(merge_two_runs(left, right)),
                None => merged.push(left),
            }
        }
        runs = merged;
    }
    runs.pop().unwrap_or_default()
}

fn merge_two_runs(left: Vec<(Row, Diff)>, right: Vec<(Row, Diff)>) -> Vec<(Row, Diff)> {
    let mut merged = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        let order = match (left.peek(), right.peek()) {
            (Some((l, _)), Some((r, _))) => l.cmp(r),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => break,
        };
        match order {
            std::cmp::Ordering::Less => merged.extend(left.next()),
            std::cmp::Ordering::Greater => merged.extend(right.next()),
            std::cmp::Ordering::Equal => {
                let (row, left_diff) = left.next().expect("peeked");
                let (_, right_diff) = right.next().expect("peeked");
                if left_diff + right_diff != 0 {
                    merged.push((row, left_diff + right_diff));
                }
            }
        }
    }
    merged
}

fn part_missing(shard: ShardId, key: &str) -> BackendError {
    BackendError::determinate(
        DeterminateKind::Corrupted,
        format!(
            "a part the shard state references is missing after re-reading the state: shard={shard} key={key}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use differential_dataflow::consolidation::consolidate;
    use tidemark_storage_types::Datum;

    use super::*;

    fn row(value: i64) -> Row {
        Row::pack([Datum::Int64(value)])
    }

    fn rows(pairs: &[(i64, Diff)]) -> Vec<(Row, Diff)> {
        pairs
            .iter()
            .map(|&(value, diff)| (row(value), diff))
            .collect()
    }

    #[test]
    fn runs_consolidate_and_merge_like_a_sort() {
        let consolidated =
            consolidate_sorted_rows(rows(&[(1, 1), (1, -1), (2, 1), (2, 2), (3, -1)]).into_iter());
        assert_eq!(consolidated, rows(&[(2, 3), (3, -1)]));

        let mut run = rows(&[(1, 1), (4, 2)]);
        append_sorted_run(&mut run, rows(&[(4, -2), (5, 1)]));
        assert_eq!(run, rows(&[(1, 1), (5, 1)]));
        append_sorted_run(&mut run, rows(&[(5, 1), (6, 1)]));
        assert_eq!(run, rows(&[(1, 1), (5, 2), (6, 1)]));

        let runs = vec![
            rows(&[(1, 1), (3, 1), (5, 1)]),
            rows(&[(2, 1), (3, -1)]),
            Vec::new(),
            rows(&[(5, 1), (9, 4)]),
        ];
        let mut expected: Vec<(Row, Diff)> = runs.iter().flatten().cloned().collect();
        consolidate(&mut expected);
        assert_eq!(merge_sorted_runs(runs), expected);
        assert!(merge_sorted_runs(Vec::new()).is_empty());
    }
}
