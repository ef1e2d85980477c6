//! Streamed snapshots and fetches, computed lazily from a [`ReadView`].
//!
//! A read takes the shard's view under the lock (its since, upper and the
//! shared, immutable batches) and then merges the batches one entry at a
//! time, without the lock: a snapshot merges the batches' `(row, time)`
//! runs by row and sums each row's diffs at times `<= as_of`; a fetch
//! merges runs in `(advanced time, row)` order and sums equal neighbours.
//! Nothing is copied up front, so a reader holds the view (which the shard
//! shares with every other reader) and the chunk it is filling: the state
//! is the one at the call, whatever the shard does afterwards.
//!
//! A fetch run is a batch read in place when all its times advance to one
//! time (each append's batch, and every batch of a compacted shard, has a
//! single time); a batch spanning several times in the range is read
//! through an index of its positions sorted by `(advanced time, row)`, a
//! position and a time per update, never a copy of the rows.
//!
//! The `Vec` forms ([`crate::read`]) are the same merges read as one chunk.

use std::cmp::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use tidemark_storage_types::{
    ChunkEntry, ChunkLimit, Diff, FetchStream, InvalidUsage, ReadShare, Row, ShardId,
    SnapshotStream, StorageTimestamp, Update, contract,
};
use timely::progress::Antichain;

use crate::shard::ReadView;
use crate::spine::Batch;

/// A limit no read reaches: the whole read as one chunk.
pub(crate) const WHOLE_READ: ChunkLimit =
    ChunkLimit::new(std::num::NonZeroUsize::MAX, std::num::NonZeroUsize::MAX);

/// The snapshot at `as_of` of the rows `share` holds, as chunks within
/// `limit` in row order, read lazily from `view`.
///
/// # Errors
///
/// [`InvalidUsage::InvalidShare`] for an invalid share;
/// [`InvalidUsage::AsOfNotReadable`] unless `since <= as_of` and not
/// `upper <= as_of`. Both at the call: the stream itself never fails.
pub fn snapshot_stream<T: StorageTimestamp>(
    shard: ShardId,
    view: ReadView<T>,
    as_of: &T,
    share: ReadShare,
    limit: ChunkLimit,
) -> Result<SnapshotStream, InvalidUsage> {
    let merge = SnapshotMerge::new(shard, view, as_of, share)?;
    Ok(futures::stream::iter(Chunks::new(merge, limit).map(Ok)).boxed())
}

/// The fetch of `[lower, upper)` (times advanced by the since) of the rows
/// `share` holds, as chunks within `limit` in `(time, row)` order, read
/// lazily from `view`.
///
/// # Errors
///
/// [`InvalidUsage::InvalidShare`] for an invalid share;
/// [`InvalidUsage::FetchRangeInvalid`] unless `lower <= upper` and `upper`
/// is not beyond the shard's upper. Both at the call.
pub fn fetch_stream<T: StorageTimestamp>(
    shard: ShardId,
    view: ReadView<T>,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    share: ReadShare,
    limit: ChunkLimit,
) -> Result<FetchStream<T>, InvalidUsage> {
    let merge = FetchMerge::new(shard, view, lower, upper, share)?;
    Ok(futures::stream::iter(Chunks::new(merge, limit).map(Ok)).boxed())
}

/// The fewest bytes an entry counts against a chunk's byte limit (its time
/// and diff).
const MIN_ENTRY_BYTES: usize = 16;

/// Cuts the entries of a merge into chunks within a limit, reading one
/// entry ahead at most: the entry that did not fit waits for the next
/// chunk.
pub(crate) struct Chunks<I: Iterator> {
    entries: I,
    limit: ChunkLimit,
    waiting: Option<I::Item>,
}

impl<I: Iterator> Chunks<I>
where
    I::Item: ChunkEntry,
{
    pub(crate) fn new(entries: I, limit: ChunkLimit) -> Self {
        Chunks {
            entries,
            limit,
            waiting: None,
        }
    }
}

impl<I: Iterator> Iterator for Chunks<I>
where
    I::Item: ChunkEntry,
{
    type Item = Vec<I::Item>;

    fn next(&mut self) -> Option<Vec<I::Item>> {
        let first = self.waiting.take().or_else(|| self.entries.next())?;
        // The merge knows how many entries it may still yield at most: a
        // chunk reserves no more than that, nor more than the limit's
        // entries, nor more than its bytes allow (every entry counts at
        // least its time and diff).
        let remaining = self.entries.size_hint().1.unwrap_or(usize::MAX);
        let capacity = self
            .limit
            .max_entries
            .get()
            .min(remaining.saturating_add(1))
            .min(self.limit.max_bytes.get() / MIN_ENTRY_BYTES + 1);
        let mut chunk = Vec::with_capacity(capacity);
        let mut bytes = first.chunk_bytes();
        chunk.push(first);
        for entry in self.entries.by_ref() {
            let entry_bytes = entry.chunk_bytes();
            if !self.limit.admits(chunk.len(), bytes, entry_bytes) {
                self.waiting = Some(entry);
                break;
            }
            bytes = bytes.saturating_add(entry_bytes);
            chunk.push(entry);
        }
        Some(chunk)
    }
}

/// Whether `left` (with order key `left_key`) orders before, with or after
/// `right`, in the row order batches are sorted by.
fn row_order(left_key: u64, left: &Row, right_key: u64, right: &Row) -> Ordering {
    left_key
        .cmp(&right_key)
        .then_with(|| left.as_bytes().cmp(right.as_bytes()))
}

/// Moves `cursor` to the next update of `batch` a snapshot at `as_of` of
/// `share` sees.
fn skip_unseen<T: StorageTimestamp>(
    batch: &Batch<T>,
    cursor: &mut usize,
    as_of: &T,
    share: ReadShare,
) {
    let updates = batch.updates();
    while let Some((row, time, _)) = updates.get(*cursor) {
        if time.less_equal(as_of) && share.holds_row(row) {
            break;
        }
        *cursor += 1;
    }
}

/// A snapshot as a merge of the batches holding times `<= as_of`.
///
/// Invariant: each cursor is at the end of its batch or at an update the
/// snapshot sees (time `<= as_of`, row held by the share).
pub(crate) struct SnapshotMerge<T> {
    batches: Vec<Arc<Batch<T>>>,
    cursors: Vec<usize>,
    as_of: T,
    share: ReadShare,
}

impl<T: StorageTimestamp> SnapshotMerge<T> {
    pub(crate) fn new(
        shard: ShardId,
        view: ReadView<T>,
        as_of: &T,
        share: ReadShare,
    ) -> Result<Self, InvalidUsage> {
        share.check(shard)?;
        contract::check_readable(shard, &view.since, &view.upper, as_of)?;
        let batches: Vec<Arc<Batch<T>>> = view
            .batches
            .into_iter()
            .filter(|batch| {
                batch
                    .time_bounds()
                    .is_some_and(|(earliest, _)| earliest.less_equal(as_of))
            })
            .collect();
        let mut merge = SnapshotMerge {
            cursors: vec![0; batches.len()],
            batches,
            as_of: *as_of,
            share,
        };
        for index in 0..merge.batches.len() {
            merge.skip_unseen(index);
        }
        Ok(merge)
    }

    /// Moves cursor `index` to the next update the snapshot sees.
    fn skip_unseen(&mut self, index: usize) {
        skip_unseen(
            &self.batches[index],
            &mut self.cursors[index],
            &self.as_of,
            self.share,
        );
    }

    /// The batch whose current row is the least, if any is left.
    fn least(&self) -> Option<usize> {
        let mut least: Option<(usize, u64, &Row)> = None;
        for (index, batch) in self.batches.iter().enumerate() {
            let cursor = self.cursors[index];
            let Some((row, _, _)) = batch.updates().get(cursor) else {
                continue;
            };
            let key = batch.keys()[cursor];
            let before = least.is_none_or(|(_, least_key, least_row)| {
                row_order(key, row, least_key, least_row) == Ordering::Less
            });
            if before {
                least = Some((index, key, row));
            }
        }
        least.map(|(index, _, _)| index)
    }
}

impl<T: StorageTimestamp> Iterator for SnapshotMerge<T> {
    type Item = (Row, Diff);

    fn next(&mut self) -> Option<(Row, Diff)> {
        loop {
            // A compacted shard is one batch: no other batch to compare
            // with, so the least row is the one at the cursor.
            let least = if self.batches.len() == 1 {
                (self.cursors[0] < self.batches[0].len()).then_some(0)?
            } else {
                self.least()?
            };
            let cursor = self.cursors[least];
            let key = self.batches[least].keys()[cursor];
            let row = self.batches[least].updates()[cursor].0.clone();
            let mut sum: Diff = 0;
            for (batch, cursor) in self.batches.iter().zip(self.cursors.iter_mut()) {
                let (updates, keys) = (batch.updates(), batch.keys());
                let start = *cursor;
                while *cursor < updates.len()
                    && keys[*cursor] == key
                    && updates[*cursor].0.as_bytes() == row.as_bytes()
                {
                    let (_, time, diff) = &updates[*cursor];
                    if time.less_equal(&self.as_of) {
                        sum += *diff;
                    }
                    *cursor += 1;
                }
                if *cursor != start {
                    skip_unseen(batch, cursor, &self.as_of, self.share);
                }
            }
            if sum != 0 {
                return Some((row, sum));
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self
            .batches
            .iter()
            .zip(&self.cursors)
            .map(|(batch, cursor)| batch.len() - cursor)
            .sum();
        (0, Some(remaining))
    }
}

/// How a fetch reads one batch in `(advanced time, row)` order.
enum RunOrder<T> {
    /// Every time of the batch advances to this one, which is in the
    /// range: the batch's own row order is the run's order.
    InPlace(T),
    /// Positions of the batch's updates in the range, with their advanced
    /// times, sorted by `(advanced time, row)`.
    Indexed(Vec<(T, usize)>),
}

/// One batch of a fetch, with its order and cursor. Invariant: the cursor
/// is at the end of the run or at an update the fetch returns.
struct Run<T> {
    batch: Arc<Batch<T>>,
    order: RunOrder<T>,
    cursor: usize,
}

impl<T: StorageTimestamp> Run<T> {
    /// The advanced time and position in the batch of the run's current
    /// update, if any is left.
    fn head(&self) -> Option<(T, usize)> {
        match &self.order {
            RunOrder::InPlace(time) => {
                (self.cursor < self.batch.len()).then_some((*time, self.cursor))
            }
            RunOrder::Indexed(index) => index.get(self.cursor).copied(),
        }
    }

    fn len(&self) -> usize {
        match &self.order {
            RunOrder::InPlace(_) => self.batch.len(),
            RunOrder::Indexed(index) => index.len(),
        }
    }

    /// Moves an in-place run's cursor to the next row the share holds (an
    /// indexed run holds only such rows).
    fn skip_unheld(&mut self, share: ReadShare) {
        if let RunOrder::InPlace(_) = self.order {
            let updates = self.batch.updates();
            while self.cursor < updates.len() && !share.holds_row(&updates[self.cursor].0) {
                self.cursor += 1;
            }
        }
    }
}

/// A fetch as a merge of runs in `(advanced time, row)` order.
pub(crate) struct FetchMerge<T> {
    runs: Vec<Run<T>>,
    share: ReadShare,
}

impl<T: StorageTimestamp> FetchMerge<T> {
    pub(crate) fn new(
        shard: ShardId,
        view: ReadView<T>,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
    ) -> Result<Self, InvalidUsage> {
        share.check(shard)?;
        contract::check_fetch_range(shard, lower, upper, &view.upper)?;
        let mut runs = Vec::new();
        // An empty since means nothing can be read again: no runs.
        if !view.since.is_empty() {
            let in_range = |time: &T| lower.less_equal(time) && !upper.less_equal(time);
            for batch in view.batches {
                // Advancing is monotone, so the batch's advanced times lie
                // between its advanced bounds: skip batches entirely outside
                // the range (a listener fetching the newest times reads only
                // the newest batches).
                let Some((earliest, latest)) = batch.time_bounds() else {
                    continue;
                };
                let (mut earliest, mut latest) = (*earliest, *latest);
                earliest.advance_by(view.since.borrow());
                latest.advance_by(view.since.borrow());
                if upper.less_equal(&earliest) || !lower.less_equal(&latest) {
                    continue;
                }
                let order = if earliest == latest {
                    RunOrder::InPlace(earliest)
                } else {
                    let mut index: Vec<(T, usize)> = batch
                        .updates()
                        .iter()
                        .enumerate()
                        .filter_map(|(position, (row, time, _))| {
                            let mut time = *time;
                            time.advance_by(view.since.borrow());
                            (in_range(&time) && share.holds_row(row)).then_some((time, position))
                        })
                        .collect();
                    let (updates, keys) = (batch.updates(), batch.keys());
                    index.sort_unstable_by(|(left_time, left), (right_time, right)| {
                        left_time.cmp(right_time).then_with(|| {
                            row_order(
                                keys[*left],
                                &updates[*left].0,
                                keys[*right],
                                &updates[*right].0,
                            )
                        })
                    });
                    RunOrder::Indexed(index)
                };
                let mut run = Run {
                    batch,
                    order,
                    cursor: 0,
                };
                run.skip_unheld(share);
                runs.push(run);
            }
        }
        Ok(FetchMerge { runs, share })
    }

    /// The run whose current update is the least, if any is left.
    fn least(&self) -> Option<usize> {
        let mut least: Option<(usize, T, u64, &Row)> = None;
        for (index, run) in self.runs.iter().enumerate() {
            let Some((time, position)) = run.head() else {
                continue;
            };
            let key = run.batch.keys()[position];
            let row = &run.batch.updates()[position].0;
            let before = least.is_none_or(|(_, least_time, least_key, least_row)| {
                time.cmp(&least_time)
                    .then_with(|| row_order(key, row, least_key, least_row))
                    == Ordering::Less
            });
            if before {
                least = Some((index, time, key, row));
            }
        }
        least.map(|(index, _, _, _)| index)
    }
}

impl<T: StorageTimestamp> Iterator for FetchMerge<T> {
    type Item = Update<T>;

    fn next(&mut self) -> Option<Update<T>> {
        loop {
            let least = self.least()?;
            let (time, position) = self.runs[least].head()?;
            let key = self.runs[least].batch.keys()[position];
            let row = self.runs[least].batch.updates()[position].0.clone();
            let mut sum: Diff = 0;
            for run in &mut self.runs {
                let start = run.cursor;
                while let Some((run_time, run_position)) = run.head() {
                    let same = run_time == time
                        && run.batch.keys()[run_position] == key
                        && run.batch.updates()[run_position].0.as_bytes() == row.as_bytes();
                    if !same {
                        break;
                    }
                    sum += run.batch.updates()[run_position].2;
                    run.cursor += 1;
                }
                if run.cursor != start {
                    run.skip_unheld(self.share);
                }
            }
            if sum != 0 {
                return Some(Update::new(row, time, sum));
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self.runs.iter().map(|run| run.len() - run.cursor).sum();
        (0, Some(remaining))
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use differential_dataflow::consolidation::{consolidate, consolidate_updates};
    use futures::StreamExt;
    use tidemark_storage_types::Datum;

    use super::*;

    fn row(value: i64) -> Row {
        Row::pack([Datum::Int64(value)])
    }

    /// A deterministic generator of small test shards.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    /// A view of up to five batches of random updates at times below 8.
    fn random_view(rng: &mut Lcg, since: u64) -> (ReadView<u64>, Vec<(Row, u64, Diff)>) {
        let mut all = Vec::new();
        let batches = (0..rng.next(5) + 1)
            .map(|_| {
                let updates: Vec<(Row, u64, Diff)> = (0..rng.next(12))
                    .map(|_| (row(rng.next(6) as i64), rng.next(8), rng.next(3) as i64 - 1))
                    .collect();
                all.extend(updates.iter().cloned());
                Arc::new(Batch::from_unsorted(updates))
            })
            .filter(|batch| !batch.is_empty())
            .collect();
        let view = ReadView {
            since: Antichain::from_elem(since),
            upper: Antichain::from_elem(8),
            batches,
        };
        (view, all)
    }

    fn clone_view(view: &ReadView<u64>) -> ReadView<u64> {
        ReadView {
            since: view.since.clone(),
            upper: view.upper.clone(),
            batches: view.batches.clone(),
        }
    }

    #[test]
    fn snapshot_merges_equal_consolidating_every_update() {
        let mut rng = Lcg(7);
        let shard = ShardId::new();
        for _ in 0..300 {
            let since = rng.next(4);
            let (view, all) = random_view(&mut rng, since);
            for as_of in since..8 {
                for share in [ReadShare::WHOLE, ReadShare::new(0, 2), ReadShare::new(1, 2)] {
                    let mut expected: Vec<(Row, Diff)> = all
                        .iter()
                        .filter(|(row, time, _)| *time <= as_of && share.holds_row(row))
                        .map(|(row, _, diff)| (row.clone(), *diff))
                        .collect();
                    consolidate(&mut expected);
                    let merged: Vec<_> =
                        SnapshotMerge::new(shard, clone_view(&view), &as_of, share)
                            .unwrap()
                            .collect();
                    assert_eq!(merged, expected, "as_of {as_of} share {share}");
                }
            }
        }
    }

    #[test]
    fn fetch_merges_equal_consolidating_every_advanced_update() {
        let mut rng = Lcg(11);
        let shard = ShardId::new();
        for _ in 0..300 {
            let since = rng.next(8);
            let (view, all) = random_view(&mut rng, since);
            for (lower, upper) in [(0, 8), (since, 8), (3, 6), (5, 5)] {
                for share in [ReadShare::WHOLE, ReadShare::new(1, 3)] {
                    let mut expected: Vec<(u64, Row, Diff)> = all
                        .iter()
                        .map(|(row, time, diff)| ((*time).max(since), row.clone(), *diff))
                        .filter(|(time, row, _)| {
                            lower <= *time && *time < upper && share.holds_row(row)
                        })
                        .collect();
                    consolidate_updates(&mut expected);
                    let expected: Vec<Update<u64>> = expected
                        .into_iter()
                        .map(|(time, row, diff)| Update::new(row, time, diff))
                        .collect();
                    let merged: Vec<_> = FetchMerge::new(
                        shard,
                        clone_view(&view),
                        &Antichain::from_elem(lower),
                        &Antichain::from_elem(upper),
                        share,
                    )
                    .unwrap()
                    .collect();
                    assert_eq!(merged, expected, "[{lower}, {upper}) share {share}");
                }
            }
        }
    }

    #[tokio::test]
    async fn chunks_keep_to_the_limit_and_concatenate_to_the_merge() {
        let mut rng = Lcg(3);
        let shard = ShardId::new();
        let (view, _) = random_view(&mut rng, 0);
        let whole: Vec<_> = SnapshotMerge::new(shard, clone_view(&view), &7, ReadShare::WHOLE)
            .unwrap()
            .collect();
        let limit = ChunkLimit::entries(NonZeroUsize::new(2).unwrap());
        let chunks: Vec<Vec<(Row, Diff)>> =
            snapshot_stream(shard, view, &7, ReadShare::WHOLE, limit)
                .unwrap()
                .map(|chunk| chunk.unwrap())
                .collect()
                .await;
        assert!(chunks.iter().all(|chunk| (1..=2).contains(&chunk.len())));
        assert_eq!(chunks.concat(), whole);
    }

    #[test]
    fn a_merge_holds_no_copy_of_the_batches() {
        let batch = Arc::new(Batch::from_unsorted(vec![(row(1), 0, 1), (row(2), 0, 1)]));
        let view = ReadView {
            since: Antichain::from_elem(0),
            upper: Antichain::from_elem(1),
            batches: vec![Arc::clone(&batch)],
        };
        let merge = SnapshotMerge::new(ShardId::new(), view, &0, ReadShare::WHOLE).unwrap();
        assert_eq!(Arc::strong_count(&batch), 2, "the merge shares the batch");
        drop(merge);
        assert_eq!(
            Arc::strong_count(&batch),
            1,
            "dropping the merge releases it"
        );
    }
}
