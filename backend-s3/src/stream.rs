//! Streamed reads: snapshots and fetches merged from the parts as they
//! arrive, delivered as bounded chunks (decision 114).
//!
//! # How a streamed read works
//!
//! - **State fixed at the call.** The stream reads the shard state once,
//!   when it is created, checks its arguments against it (an argument error
//!   is the call's error, never an item), and reads the parts that state
//!   references. Appends and compactions after the call change nothing it
//!   yields.
//! - **Runs merged as they arrive.** Every part holds a stretch of one
//!   sorted run (updates sorted by row, then time). A read is a k-way merge
//!   of the runs it needs, with a cursor per run that holds the part being
//!   merged and has the run's next part fetched and decoded ahead. Equal
//!   keys arrive one after the other from the merge and are consolidated as
//!   they do, so entries are final as soon as the merge passes their key.
//! - **Bounded parallelism.** At most `concurrency` GETs are in flight for
//!   one read (a semaphore shared by its cursors); decoding runs on the
//!   blocking pool, so the runtime keeps driving downloads while parts
//!   decode.
//! - **Bounded memory.** A read holds, per run, the part being merged and
//!   at most one part fetched ahead, plus the chunk being built: about
//!   `2 x runs x part size`. A batch smaller than its run count times the
//!   part size has one part per run and is held whole; compaction writes
//!   parts small enough that a compacted batch is not (decision 114).
//!   A snapshot whose runs would hold more than the configured read memory
//!   ([`crate::S3Config::with_read_memory_bytes`]; a shard of many appended
//!   batches, never compacted) is read in row windows instead: each pass
//!   reads every part, keeps the entries from the window's first row on
//!   (rows copied out of the part buffers) within a quarter of the read
//!   memory, moving the window's end back whenever they pass it, and
//!   yields them sorted; the next pass starts at the window's end. Such a
//!   snapshot is downloaded once per window (decision 119).
//! - **Fetches in time order.** A fetch yields `(time, row)` order. The
//!   batches of a shard cover consecutive time ranges, so a fetch reads them
//!   in order; a batch whose times (advanced by the since) are one time is
//!   merged by row like a snapshot. A batch holding several times is read
//!   in time windows: each pass reads its parts and keeps the entries from
//!   the window's first time on, moving the window's end back to the
//!   median kept time whenever they exceed a budget
//!   ([`WINDOW_BUDGET_BYTES`]); the window is sorted and yielded and the
//!   next pass starts where it ended. A first time that alone fills half
//!   the budget is read by itself, merged by row. Memory stays bounded;
//!   such a batch is downloaded once per window.
//! - **Parts deleted under an open stream.** Replaced parts are deleted a
//!   grace period after the replacement commits, so a stream that stays
//!   open longer may find one gone. It then reads the state again: if the
//!   new state gives the same answer (a snapshot's as-of is still readable,
//!   a fetch's since is unchanged), the read resumes from the new state
//!   after the last key it yielded; otherwise the stream ends with a
//!   `Determinate(Conflict)` error naming what changed.
//! - **Shares divided by row bucket** ([`crate::buckets`]). A share reads
//!   only the parts whose buckets meet its own, keeps every row of a part
//!   holding only its buckets, and filters rows only in parts that mix its
//!   buckets with others. `SUBTLE:` the division must be a function of the
//!   update alone. The readers of one source follow the upper on their
//!   own, so they read different ranges from different states (appends and
//!   compactions in between); a division by stored part would give a part
//!   to one share in one read and to another share in the next, and the
//!   readers together would see some updates twice and others never. A
//!   row's bucket never changes, whichever part holds it (decisions 061
//!   and 063).

use std::cmp::Ordering;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use futures::StreamExt;
use tidemark_storage_types::{
    BackendError, ChunkBuilder, ChunkEntry, ChunkLimit, DeterminateKind, Diff, ReadShare,
    ReadStream, Row, ShardId, StorageTimestamp, Update, contract,
};
use timely::progress::Antichain;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::S3Backend;
use crate::buckets::ShareBuckets;
use crate::codec::{advance_time, decode_part};
use crate::downloads::DownloadCounters;
use crate::read::consolidate_sorted_rows;
use crate::state::{
    BatchRef, EncodedFrontier, PartRef, ShardState, decode_frontier, encode_frontier,
    frontier_join, frontier_le, frontier_le_time,
};
use crate::store::Store;

/// Times a stream starts over from a fresh state after finding a part gone.
const MAX_RESTARTS: usize = 5;

/// The entries (counted as [`ChunkEntry::chunk_bytes`]) one pass over a
/// segment of several times keeps before it narrows its time window.
const WINDOW_BUDGET_BYTES: usize = 64 << 20;

/// A part no longer exists: its key.
#[derive(Debug)]
pub(crate) struct PartGone {
    pub key: String,
}

/// What fetching one part gives: its entries, or that it is gone.
pub(crate) type PartOutcome<E> = Result<Result<Vec<E>, PartGone>, BackendError>;

/// Turns a part's decoded updates into the entries a read merges, sorted by
/// the read's key.
pub(crate) type PartTransform<T, E> =
    Arc<dyn Fn(&PartRef, Vec<Update<T>>) -> Vec<E> + Send + Sync + 'static>;

/// An entry a merge orders, consolidates and drops when its diff sums to
/// zero.
pub(crate) trait MergeEntry: Clone + Send + Sync + 'static {
    /// The merge order of the entries' keys (everything but the diff).
    fn key_cmp(&self, other: &Self) -> Ordering;
    /// The entry's diff.
    fn diff(&self) -> Diff;
    /// The entry's diff, to add to.
    fn diff_mut(&mut self) -> &mut Diff;
}

/// Snapshot entries: ordered by row.
impl MergeEntry for (Row, Diff) {
    fn key_cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
    fn diff(&self) -> Diff {
        self.1
    }
    fn diff_mut(&mut self) -> &mut Diff {
        &mut self.1
    }
}

/// Fetch entries: ordered by time, then row.
impl<T: StorageTimestamp> MergeEntry for Update<T> {
    fn key_cmp(&self, other: &Self) -> Ordering {
        (self.timestamp, &self.row).cmp(&(other.timestamp, &other.row))
    }
    fn diff(&self) -> Diff {
        self.diff
    }
    fn diff_mut(&mut self) -> &mut Diff {
        &mut self.diff
    }
}

/// Compaction entries: ordered by row, then time (the order parts store).
impl<T: StorageTimestamp> MergeEntry for (Row, T, Diff) {
    fn key_cmp(&self, other: &Self) -> Ordering {
        (&self.0, self.1).cmp(&(&other.0, other.1))
    }
    fn diff(&self) -> Diff {
        self.2
    }
    fn diff_mut(&mut self) -> &mut Diff {
        &mut self.2
    }
}

/// Fetches and decodes one read's parts, at most `concurrency` GETs at once.
#[derive(Clone)]
pub(crate) struct PartFetcher {
    store: Arc<Store>,
    downloads: Arc<DownloadCounters>,
    shard: ShardId,
    requests: Arc<Semaphore>,
}

impl PartFetcher {
    pub(crate) fn new(backend: &S3Backend, shard: ShardId) -> Self {
        PartFetcher {
            store: Arc::new(backend.store().clone()),
            downloads: Arc::clone(backend.downloads()),
            shard,
            requests: Arc::new(Semaphore::new(backend.config().concurrency.max(1))),
        }
    }

    /// Starts fetching `part` on a task of its own.
    pub(crate) fn spawn<T: StorageTimestamp, E: Send + 'static>(
        &self,
        part: PartRef,
        transform: PartTransform<T, E>,
    ) -> JoinHandle<PartOutcome<E>> {
        let fetcher = self.clone();
        tokio::spawn(async move { fetcher.fetch(part, transform).await })
    }

    /// Fetches `part` (an inline part is decoded from the state, without a
    /// request) and applies `transform` to its updates, on the blocking
    /// pool.
    async fn fetch<T: StorageTimestamp, E: Send + 'static>(
        &self,
        part: PartRef,
        transform: PartTransform<T, E>,
    ) -> PartOutcome<E> {
        if let Some(body) = part.inline.clone() {
            let name = format!(
                "{} (inline part {})",
                self.store.keys.state(self.shard),
                part.id
            );
            return decode_part::<T>(&name, body).map(|updates| Ok(transform(&part, updates)));
        }
        let key = self.store.keys.part(self.shard, part.id);
        let fetched = {
            // The semaphore is never closed: acquiring only waits.
            let _request = self.requests.acquire().await.map_err(|err| {
                BackendError::indeterminate(format!("part fetch limiter closed: error={err}"))
            })?;
            self.store.get("get_part", &key).await?
        };
        let Some(bytes) = fetched else {
            return Ok(Err(PartGone { key }));
        };
        self.downloads.record(bytes.len());
        tokio::task::spawn_blocking(move || {
            decode_part::<T>(&key, bytes).map(|updates| Ok(transform(&part, updates)))
        })
        .await
        .map_err(|err| {
            BackendError::indeterminate(format!("part decode task failed: error={err}"))
        })?
    }
}

/// Part tasks aborted when their reader is dropped: a dropped stream stops
/// its downloads.
struct AbortOnDrop<E>(VecDeque<JoinHandle<PartOutcome<E>>>);

impl<E> Drop for AbortOnDrop<E> {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

async fn join_part<E>(handle: &mut JoinHandle<PartOutcome<E>>) -> PartOutcome<E> {
    handle.await.map_err(|err| {
        BackendError::indeterminate(format!("part fetch task failed: error={err}"))
    })?
}

/// One sorted run: the entries of the part being merged, the next part
/// fetched ahead, and the parts after it.
struct RunCursor<E> {
    entries: std::vec::IntoIter<E>,
    ahead: AbortOnDrop<E>,
    rest: VecDeque<PartRef>,
}

impl<E: Send + 'static> RunCursor<E> {
    /// A cursor over `parts` (one run, in order), fetching the first.
    fn new<T: StorageTimestamp>(
        parts: Vec<PartRef>,
        fetcher: &PartFetcher,
        transform: &PartTransform<T, E>,
    ) -> Self {
        let mut rest: VecDeque<PartRef> = parts.into();
        let ahead = rest
            .pop_front()
            .map(|part| fetcher.spawn(part, Arc::clone(transform)))
            .into_iter()
            .collect();
        RunCursor {
            entries: Vec::new().into_iter(),
            ahead: AbortOnDrop(ahead),
            rest,
        }
    }

    /// A cursor over entries already read.
    fn from_entries(entries: Vec<E>) -> Self {
        RunCursor {
            entries: entries.into_iter(),
            ahead: AbortOnDrop(VecDeque::new()),
            rest: VecDeque::new(),
        }
    }

    /// The run's next entry; `None` at its end.
    async fn next<T: StorageTimestamp>(
        &mut self,
        fetcher: &PartFetcher,
        transform: &PartTransform<T, E>,
    ) -> Result<Result<Option<E>, PartGone>, BackendError> {
        loop {
            if let Some(entry) = self.entries.next() {
                return Ok(Ok(Some(entry)));
            }
            let Some(mut handle) = self.ahead.0.pop_front() else {
                return Ok(Ok(None));
            };
            // The part after is fetched while this one is merged.
            if let Some(part) = self.rest.pop_front() {
                self.ahead
                    .0
                    .push_back(fetcher.spawn(part, Arc::clone(transform)));
            }
            match join_part(&mut handle).await? {
                Ok(entries) => self.entries = entries.into_iter(),
                Err(gone) => return Ok(Err(gone)),
            }
        }
    }
}

/// A run's smallest unmerged entry, ordered for a min-heap (ties by run, so
/// the merge is deterministic).
struct Head<E> {
    entry: E,
    run: usize,
}

impl<E: MergeEntry> PartialEq for Head<E> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<E: MergeEntry> Eq for Head<E> {}
impl<E: MergeEntry> PartialOrd for Head<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E: MergeEntry> Ord for Head<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .entry
            .key_cmp(&self.entry)
            .then_with(|| other.run.cmp(&self.run))
    }
}

/// A k-way merge of sorted runs that consolidates equal keys and drops
/// zero sums.
pub(crate) struct Merger<T, E> {
    fetcher: PartFetcher,
    transform: PartTransform<T, E>,
    runs: Vec<RunCursor<E>>,
    heap: BinaryHeap<Head<E>>,
    seeded: bool,
    pending: Option<E>,
}

impl<T: StorageTimestamp, E: MergeEntry> Merger<T, E> {
    /// A merge of `runs` (each a run's parts in order), fetching the first
    /// part of every run.
    pub(crate) fn new(
        runs: Vec<Vec<PartRef>>,
        fetcher: PartFetcher,
        transform: PartTransform<T, E>,
    ) -> Self {
        let runs = runs
            .into_iter()
            .filter(|run| !run.is_empty())
            .map(|run| RunCursor::new(run, &fetcher, &transform))
            .collect();
        Merger {
            fetcher,
            transform,
            runs,
            heap: BinaryHeap::new(),
            seeded: false,
            pending: None,
        }
    }

    /// A merge of one run of entries already read and sorted.
    fn of_sorted(entries: Vec<E>, fetcher: PartFetcher, transform: PartTransform<T, E>) -> Self {
        Merger {
            fetcher,
            transform,
            runs: vec![RunCursor::from_entries(entries)],
            heap: BinaryHeap::new(),
            seeded: false,
            pending: None,
        }
    }

    /// The next consolidated entry with a non-zero diff; `None` at the end.
    pub(crate) async fn next(&mut self) -> Result<Result<Option<E>, PartGone>, BackendError> {
        if !self.seeded {
            for run in 0..self.runs.len() {
                match self.runs[run].next(&self.fetcher, &self.transform).await? {
                    Ok(Some(entry)) => self.heap.push(Head { entry, run }),
                    Ok(None) => {}
                    Err(gone) => return Ok(Err(gone)),
                }
            }
            self.seeded = true;
        }
        loop {
            let Some(mut top) = self.heap.peek_mut() else {
                return Ok(Ok(self.pending.take().filter(|entry| entry.diff() != 0)));
            };
            // The smallest entry is replaced by the next of its run (one
            // sift down), or leaves the heap with its run. The next entry
            // of the part being merged needs no await.
            let run = &mut self.runs[top.run];
            let next = match run.entries.next() {
                Some(next) => Ok(Some(next)),
                None => run.next(&self.fetcher, &self.transform).await?,
            };
            let entry = match next {
                Ok(Some(next)) => std::mem::replace(&mut top.entry, next),
                Ok(None) => PeekMut::pop(top).entry,
                Err(gone) => return Ok(Err(gone)),
            };
            match &mut self.pending {
                Some(pending) if pending.key_cmp(&entry) == Ordering::Equal => {
                    *pending.diff_mut() += entry.diff();
                }
                slot => {
                    if let Some(done) = slot.replace(entry)
                        && done.diff() != 0
                    {
                        return Ok(Ok(Some(done)));
                    }
                }
            }
        }
    }
}

/// One stretch of a read, in the read's key order.
enum Segment {
    /// Runs whose merge by the parts' order is the read's order.
    Merge(Vec<Vec<PartRef>>),
    /// Runs holding several times, read in time windows: each pass reads
    /// every part and keeps the entries from time `from` (encoded) on, up
    /// to a cutoff that shrinks to keep them within
    /// [`WINDOW_BUDGET_BYTES`]; they are sorted and yielded, and the next
    /// pass starts at the cutoff.
    Windows { runs: Vec<Vec<PartRef>>, from: i64 },
    /// Runs of a snapshot too many to merge whole parts of within the read
    /// memory, read in row windows: each pass reads every part and keeps
    /// the entries from row `from` on (all, if `None`), up to a cutoff that
    /// shrinks to keep them within a quarter of the read memory; they are
    /// sorted and yielded, and the next pass starts at the cutoff
    /// (decision 119).
    RowWindows {
        runs: Vec<Vec<PartRef>>,
        from: Option<Row>,
    },
}

/// What a streamed read reads from a state.
trait ReadPlan<T: StorageTimestamp>: Send + Sync + 'static {
    type Entry: MergeEntry + ChunkEntry;

    /// The read's segments in `state`, in key order.
    fn segments(&self, state: &ShardState) -> VecDeque<Segment>;

    /// How the read transforms a part's updates, given `state`.
    fn transform(&self, state: &ShardState) -> PartTransform<T, Self::Entry>;

    /// `None` if `fresh`, a later state of the shard, gives the same answer
    /// as `fixed`, the state the read was opened on; else what changed.
    fn changed(&self, fixed: &ShardState, fresh: &ShardState) -> Option<String>;

    /// An entry's time, encoded: what [`Segment::Windows`] divides by (only
    /// reads ordered by time first have such segments).
    fn entry_time(entry: &Self::Entry) -> i64;

    /// An entry's row: what [`Segment::RowWindows`] divides by.
    fn entry_row(entry: &Self::Entry) -> &Row;

    /// The entry with its row in an allocation of its own, so that keeping
    /// it does not keep the whole part it was decoded from.
    fn detached(entry: Self::Entry) -> Self::Entry;

    /// `transform`, keeping only the entries at time `time` (encoded).
    fn at_time(
        transform: PartTransform<T, Self::Entry>,
        time: i64,
    ) -> PartTransform<T, Self::Entry> {
        Arc::new(move |part, updates| {
            let mut entries = transform(part, updates);
            entries.retain(|entry| Self::entry_time(entry) == time);
            entries
        })
    }
}

/// A row in an allocation of its own.
fn detached_row(row: &Row) -> Row {
    // A row that was decoded once decodes again.
    Row::from_bytes(row.as_bytes()).unwrap_or_else(|_| row.clone())
}

/// A snapshot share at an as-of.
struct SnapshotPlan<T> {
    as_of: T,
    buckets: ShareBuckets,
    /// The decoded part bytes the read may hold at once
    /// ([`crate::S3Config::with_read_memory_bytes`]).
    memory_bytes: usize,
}

impl<T: StorageTimestamp> ReadPlan<T> for SnapshotPlan<T> {
    type Entry = (Row, Diff);

    fn segments(&self, state: &ShardState) -> VecDeque<Segment> {
        let as_of = self.as_of.encode();
        let runs = state
            .batches
            .iter()
            .filter(|batch| frontier_le_time(batch.lower, as_of))
            .flat_map(BatchRef::runs)
            .map(|run| {
                run.iter()
                    .filter(|part| self.buckets.needs_part(part.buckets))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .filter(|run| !run.is_empty())
            .collect::<Vec<_>>();
        if merge_resident_bytes(&runs) <= self.memory_bytes {
            VecDeque::from([Segment::Merge(runs)])
        } else {
            VecDeque::from([Segment::RowWindows { runs, from: None }])
        }
    }

    fn transform(&self, _state: &ShardState) -> PartTransform<T, (Row, Diff)> {
        let (as_of, buckets) = (self.as_of, self.buckets);
        Arc::new(move |part, updates| {
            let whole = buckets.holds_whole_part(part.buckets);
            consolidate_sorted_rows(
                updates
                    .into_iter()
                    .filter(|update| {
                        update.timestamp <= as_of && (whole || buckets.holds_row(&update.row))
                    })
                    .map(|update| (update.row, update.diff)),
            )
        })
    }

    fn changed(&self, _fixed: &ShardState, fresh: &ShardState) -> Option<String> {
        if fresh.finalized {
            return Some("the shard was finalized".to_string());
        }
        if !frontier_le_time(fresh.since, self.as_of.encode()) {
            return Some(format!(
                "the since advanced past the as-of: as_of={} since={:?}",
                self.as_of,
                decode_frontier::<T>(fresh.since).elements()
            ));
        }
        None
    }

    /// A snapshot has no windows: every entry counts as one time.
    fn entry_time(_entry: &(Row, Diff)) -> i64 {
        0
    }

    fn entry_row(entry: &(Row, Diff)) -> &Row {
        &entry.0
    }

    fn detached((row, diff): (Row, Diff)) -> (Row, Diff) {
        (detached_row(&row), diff)
    }
}

/// A fetch share of `[lower, upper)`.
struct FetchPlan {
    lower: EncodedFrontier,
    upper: EncodedFrontier,
    buckets: ShareBuckets,
}

impl FetchPlan {
    /// Whether every time of `batch`, advanced by `since`, is one time.
    fn one_time<T: StorageTimestamp>(batch: &BatchRef, since: EncodedFrontier) -> bool {
        if frontier_le(batch.upper, since) {
            return true;
        }
        let least = frontier_join(batch.lower, since);
        match (least, batch.upper) {
            (Some(least), Some(upper)) => T::decode(upper).step_back().encode() == least,
            _ => false,
        }
    }
}

impl<T: StorageTimestamp> ReadPlan<T> for FetchPlan {
    type Entry = Update<T>;

    fn segments(&self, state: &ShardState) -> VecDeque<Segment> {
        let since = state.since;
        if since.is_none() {
            return VecDeque::new();
        }
        let batches: Vec<&BatchRef> = state
            .batches
            .iter()
            .filter(|batch| batch_in_range(batch, since, self.lower, self.upper))
            .collect();
        // Batches whose lower is at or below the since all hold the since
        // (advanced): they are one segment. Every later batch's times are
        // beyond the earlier batches'.
        let (at_since, later): (Vec<&BatchRef>, Vec<&BatchRef>) = batches
            .into_iter()
            .partition(|batch| frontier_join(batch.lower, since) == since);
        let runs_of = |batches: &[&BatchRef]| -> Vec<Vec<PartRef>> {
            batches
                .iter()
                .flat_map(|batch| batch.runs())
                .map(|run| {
                    run.iter()
                        .filter(|part| self.buckets.needs_part(part.buckets))
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .filter(|run| !run.is_empty())
                .collect()
        };
        let segment = |batches: &[&BatchRef]| -> Segment {
            if batches
                .iter()
                .all(|batch| Self::one_time::<T>(batch, since))
            {
                Segment::Merge(runs_of(batches))
            } else {
                let from = batches
                    .iter()
                    .filter_map(|batch| frontier_join(batch.lower, since))
                    .min()
                    .unwrap_or(i64::MIN);
                Segment::Windows {
                    runs: runs_of(batches),
                    from,
                }
            }
        };
        let mut segments = VecDeque::new();
        if !at_since.is_empty() {
            segments.push_back(segment(&at_since));
        }
        for batch in later {
            segments.push_back(segment(&[batch]));
        }
        segments
    }

    fn transform(&self, state: &ShardState) -> PartTransform<T, Update<T>> {
        let (lower, upper, since, buckets) = (self.lower, self.upper, state.since, self.buckets);
        Arc::new(move |part, updates| {
            let whole = buckets.holds_whole_part(part.buckets);
            updates
                .into_iter()
                .filter(|update| whole || buckets.holds_row(&update.row))
                .filter_map(|mut update| {
                    update.timestamp = advance_time(update.timestamp, since);
                    let time = update.timestamp.encode();
                    let in_range = frontier_le_time(lower, time) && !frontier_le_time(upper, time);
                    in_range.then_some(update)
                })
                .collect()
        })
    }

    fn changed(&self, fixed: &ShardState, fresh: &ShardState) -> Option<String> {
        if fresh.finalized {
            return Some("the shard was finalized".to_string());
        }
        if fresh.since != fixed.since {
            return Some(format!(
                "the since moved, so the fetched times would differ: since was {:?}, is {:?}",
                fixed.since, fresh.since
            ));
        }
        None
    }

    fn entry_time(entry: &Update<T>) -> i64 {
        entry.timestamp.encode()
    }

    fn entry_row(entry: &Update<T>) -> &Row {
        &entry.row
    }

    fn detached(entry: Update<T>) -> Update<T> {
        Update::new(detached_row(&entry.row), entry.timestamp, entry.diff)
    }
}

/// Whether `batch` may hold updates whose times, advanced by `since`, fall
/// in `[lower, upper)`.
pub(crate) fn batch_in_range(
    batch: &BatchRef,
    since: EncodedFrontier,
    lower: EncodedFrontier,
    upper: EncodedFrontier,
) -> bool {
    // Advanced times are >= join(batch.lower, since).
    let least = frontier_join(batch.lower, since);
    let starts_before_upper = !frontier_le(upper, least);
    // Advanced times are < batch.upper, or all equal to the since when the
    // since is at or past batch.upper.
    let ends_after_lower = if frontier_le(batch.upper, since) {
        frontier_le(lower, since)
    } else {
        !frontier_le(batch.upper, lower)
    };
    starts_before_upper && ends_after_lower
}

/// The parts of `runs`, fetched and transformed at most `ahead` at once,
/// in order.
fn parts_in_order<'a, T: StorageTimestamp, E: Send + 'static>(
    fetcher: &'a PartFetcher,
    runs: &[Vec<PartRef>],
    transform: &PartTransform<T, E>,
    ahead: usize,
) -> impl futures::Stream<Item = PartOutcome<E>> + 'a {
    let parts: Vec<PartRef> = runs.iter().flatten().cloned().collect();
    let transform = Arc::clone(transform);
    futures::stream::iter(parts)
        .map(move |part| {
            let mut task =
                AbortOnDrop(VecDeque::from(
                    [fetcher.spawn(part, Arc::clone(&transform))],
                ));
            async move {
                match task.0.front_mut() {
                    Some(handle) => join_part(handle).await,
                    None => Ok(Ok(Vec::new())),
                }
            }
        })
        .buffered(ahead)
}

/// Decoded bytes a part takes per encoded byte, about: its rows stay in
/// the part's buffer, and each update adds its entry beside them.
const DECODED_PER_ENCODED_BYTE: usize = 2;

/// The decoded bytes a k-way merge of whole parts holds for `runs`, about:
/// per run, the part being merged and the one fetched ahead (its two
/// largest, to be safe).
fn merge_resident_bytes(runs: &[Vec<PartRef>]) -> usize {
    let encoded: u64 = runs
        .iter()
        .map(|run| {
            let mut largest = [0u64; 2];
            for part in run {
                if part.bytes > largest[0] {
                    largest = [part.bytes, largest[0]];
                } else if part.bytes > largest[1] {
                    largest[1] = part.bytes;
                }
            }
            largest[0] + largest[1]
        })
        .sum();
    usize::try_from(encoded)
        .unwrap_or(usize::MAX)
        .saturating_mul(DECODED_PER_ENCODED_BYTE)
}

/// Keeps the entries of a row window within `budget` bytes (`kept_bytes`
/// is their sum): while they exceed it, the window's end moves back to the
/// row at the rank that keeps about three quarters of the budget, and the
/// entries at or after it are dropped. Returns the window's new end, if it
/// moved.
///
/// The least kept row always stays (a window that ends after it makes
/// progress): if every entry is at one row (copies from different runs),
/// they stay over the budget.
fn narrow_rows<E: ChunkEntry>(
    kept: &mut Vec<E>,
    kept_bytes: &mut usize,
    budget: usize,
    row_of: impl Fn(&E) -> &Row,
) -> Option<Row> {
    let mut end = None;
    while *kept_bytes > budget && kept.len() > 1 {
        let wanted = (budget / 4).saturating_mul(3) as u128;
        let rank = (kept.len() as u128 * wanted / *kept_bytes as u128) as usize;
        let rank = rank.clamp(1, kept.len() - 1);
        kept.select_nth_unstable_by(rank, |left, right| row_of(left).cmp(row_of(right)));
        let at_rank = row_of(&kept[rank]);
        let least = kept[..rank]
            .iter()
            .map(&row_of)
            .min()
            .expect("rank is at least 1");
        let new_end = if at_rank > least {
            at_rank.clone()
        } else {
            // Everything before the rank is the least row: end at the next
            // row instead.
            match kept.iter().map(&row_of).filter(|row| *row > least).min() {
                Some(next) => next.clone(),
                None => break,
            }
        };
        kept.retain(|entry| row_of(entry) < &new_end);
        *kept_bytes = kept.iter().map(ChunkEntry::chunk_bytes).sum();
        end = Some(new_end);
    }
    end
}

/// How [`narrow_window`] left a window.
#[derive(Debug, PartialEq, Eq)]
enum Narrowed {
    /// The kept entries are within the budget.
    Fits,
    /// The window now ends before this time (encoded); the kept entries are
    /// those before it, within the budget.
    EndsAt(i64),
    /// Half the kept entries or more are at the window's first time, `from`.
    FirstTimeAlone,
}

/// Keeps the entries of a window starting at `from` within `budget` bytes
/// (`kept_bytes` is their sum): while they exceed it, the window's end
/// moves back to the median kept time (or to the least one, if that is the
/// median) and the entries at or after it are dropped.
fn narrow_window<E: ChunkEntry>(
    kept: &mut Vec<E>,
    kept_bytes: &mut usize,
    budget: usize,
    from: i64,
    time_of: impl Fn(&E) -> i64,
) -> Narrowed {
    let mut narrowed = Narrowed::Fits;
    while *kept_bytes > budget && !kept.is_empty() {
        let middle = kept.len() / 2;
        kept.select_nth_unstable_by_key(middle, |entry| time_of(entry));
        let median = time_of(&kept[middle]);
        let least = kept.iter().map(&time_of).min().unwrap_or(median);
        let end = if median > least {
            median
        } else if least > from {
            least
        } else {
            return Narrowed::FirstTimeAlone;
        };
        kept.retain(|entry| time_of(entry) < end);
        *kept_bytes = kept.iter().map(ChunkEntry::chunk_bytes).sum();
        narrowed = Narrowed::EndsAt(end);
    }
    narrowed
}

/// What one pass of a [`Segment::Windows`] found.
enum WindowPass<E> {
    /// The entries of the window, sorted; the next window's first time, if
    /// the window ended before the segment did.
    Sorted { entries: Vec<E>, next: Option<i64> },
    /// The window's first time alone holds half the budget or more.
    FirstTimeAlone,
}

/// A streamed read in progress.
struct StreamState<T: StorageTimestamp, P: ReadPlan<T>> {
    backend: S3Backend,
    shard: ShardId,
    plan: P,
    fixed: Arc<ShardState>,
    transform: PartTransform<T, P::Entry>,
    segments: VecDeque<Segment>,
    current: Option<Merger<T, P::Entry>>,
    builder: ChunkBuilder<P::Entry>,
    /// The last entry yielded: after a restart, entries up to it are
    /// skipped.
    last_yielded: Option<P::Entry>,
    /// Entries up to this one are skipped (set by a restart).
    skip_through: Option<P::Entry>,
    restarts: usize,
    finished: bool,
}

impl<T: StorageTimestamp, P: ReadPlan<T>> StreamState<T, P> {
    fn new(
        backend: S3Backend,
        shard: ShardId,
        plan: P,
        state: Arc<ShardState>,
        limit: ChunkLimit,
    ) -> Self {
        let segments = plan.segments(&state);
        let transform = plan.transform(&state);
        StreamState {
            backend,
            shard,
            plan,
            fixed: state,
            transform,
            segments,
            current: None,
            builder: ChunkBuilder::new(limit),
            last_yielded: None,
            skip_through: None,
            restarts: 0,
            finished: false,
        }
    }

    /// The next chunk; `None` at the end. An error ends the stream.
    async fn next_chunk(&mut self) -> Option<Result<Vec<P::Entry>, BackendError>> {
        if self.finished {
            return None;
        }
        match self.fill().await {
            Ok(chunk) => {
                if chunk.is_none() {
                    self.finished = true;
                }
                if let Some(chunk) = &chunk {
                    self.last_yielded = chunk.last().cloned();
                }
                chunk.map(Ok)
            }
            Err(err) => {
                self.finished = true;
                self.current = None;
                Some(Err(err))
            }
        }
    }

    async fn fill(&mut self) -> Result<Option<Vec<P::Entry>>, BackendError> {
        loop {
            let Some(merger) = self.current.as_mut() else {
                match self.segments.pop_front() {
                    None => return Ok(self.builder.finish()),
                    Some(Segment::Merge(runs)) => {
                        let fetcher = PartFetcher::new(&self.backend, self.shard);
                        self.current =
                            Some(Merger::new(runs, fetcher, Arc::clone(&self.transform)));
                    }
                    Some(Segment::Windows { runs, from }) => {
                        let fetcher = PartFetcher::new(&self.backend, self.shard);
                        match self.window_pass(&fetcher, &runs, from).await? {
                            Ok(WindowPass::Sorted { entries, next }) => {
                                if let Some(next) = next {
                                    self.segments
                                        .push_front(Segment::Windows { runs, from: next });
                                }
                                self.current = Some(Merger::of_sorted(
                                    entries,
                                    fetcher,
                                    Arc::clone(&self.transform),
                                ));
                            }
                            Ok(WindowPass::FirstTimeAlone) => {
                                let transform = P::at_time(Arc::clone(&self.transform), from);
                                self.current = Some(Merger::new(runs.clone(), fetcher, transform));
                                if let Some(next) = from.checked_add(1) {
                                    self.segments
                                        .push_front(Segment::Windows { runs, from: next });
                                }
                            }
                            Err(gone) => {
                                if let Some(chunk) = self.restart(&gone).await? {
                                    return Ok(Some(chunk));
                                }
                            }
                        }
                    }
                    Some(Segment::RowWindows { runs, from }) => {
                        let fetcher = PartFetcher::new(&self.backend, self.shard);
                        match self.row_window_pass(&fetcher, &runs, from.as_ref()).await? {
                            Ok((entries, next)) => {
                                if let Some(next) = next {
                                    self.segments.push_front(Segment::RowWindows {
                                        runs,
                                        from: Some(next),
                                    });
                                }
                                self.current = Some(Merger::of_sorted(
                                    entries,
                                    fetcher,
                                    Arc::clone(&self.transform),
                                ));
                            }
                            Err(gone) => {
                                if let Some(chunk) = self.restart(&gone).await? {
                                    return Ok(Some(chunk));
                                }
                            }
                        }
                    }
                }
                continue;
            };
            match merger.next().await? {
                Ok(None) => self.current = None,
                Ok(Some(entry)) => {
                    if let Some(skip) = &self.skip_through {
                        if entry.key_cmp(skip) != Ordering::Greater {
                            continue;
                        }
                        self.skip_through = None;
                    }
                    if let Some(chunk) = self.builder.push(entry) {
                        return Ok(Some(chunk));
                    }
                }
                Err(gone) => {
                    if let Some(chunk) = self.restart(&gone).await? {
                        return Ok(Some(chunk));
                    }
                }
            }
        }
    }

    /// One pass of a [`Segment::Windows`] from time `from`: every part read
    /// (at most `concurrency` ahead), the entries from `from` on kept while
    /// within [`WINDOW_BUDGET_BYTES`], the window's end moved back to the
    /// median kept time whenever they are not.
    async fn window_pass(
        &self,
        fetcher: &PartFetcher,
        runs: &[Vec<PartRef>],
        from: i64,
    ) -> Result<Result<WindowPass<P::Entry>, PartGone>, BackendError> {
        let ahead = self.backend.config().concurrency.max(1);
        let mut parts = parts_in_order(fetcher, runs, &self.transform, ahead);
        let mut kept: Vec<P::Entry> = Vec::new();
        let mut kept_bytes = 0usize;
        // Entries at or after `cutoff` are left to a later pass.
        let mut cutoff: Option<i64> = None;
        while let Some(outcome) = parts.next().await {
            let entries = match outcome? {
                Ok(entries) => entries,
                Err(gone) => return Ok(Err(gone)),
            };
            for entry in entries {
                let time = P::entry_time(&entry);
                if time < from || cutoff.is_some_and(|cutoff| time >= cutoff) {
                    continue;
                }
                let entry = P::detached(entry);
                kept_bytes += entry.chunk_bytes();
                kept.push(entry);
            }
            match narrow_window(
                &mut kept,
                &mut kept_bytes,
                WINDOW_BUDGET_BYTES,
                from,
                P::entry_time,
            ) {
                Narrowed::Fits => {}
                Narrowed::EndsAt(end) => cutoff = Some(end),
                Narrowed::FirstTimeAlone => return Ok(Ok(WindowPass::FirstTimeAlone)),
            }
        }
        kept.sort_by(MergeEntry::key_cmp);
        Ok(Ok(WindowPass::Sorted {
            entries: kept,
            next: cutoff,
        }))
    }

    /// One pass of a [`Segment::RowWindows`] from row `from` (the first
    /// row, if `None`): every part read (at most `concurrency` ahead), the
    /// entries from `from` on kept, with their rows copied out of the part
    /// buffers, while within a quarter of the read memory, and the window's
    /// end moved back whenever they are not. Returns the window's entries,
    /// sorted, and the next window's first row if the window ended before
    /// the runs did.
    async fn row_window_pass(
        &self,
        fetcher: &PartFetcher,
        runs: &[Vec<PartRef>],
        from: Option<&Row>,
    ) -> Result<Result<(Vec<P::Entry>, Option<Row>), PartGone>, BackendError> {
        let config = self.backend.config();
        let budget = config.read_memory_bytes() / 4;
        let mut parts = parts_in_order(fetcher, runs, &self.transform, config.concurrency.max(1));
        let mut kept: Vec<P::Entry> = Vec::new();
        let mut kept_bytes = 0usize;
        // Entries at or after `cutoff` are left to a later pass.
        let mut cutoff: Option<Row> = None;
        while let Some(outcome) = parts.next().await {
            let entries = match outcome? {
                Ok(entries) => entries,
                Err(gone) => return Ok(Err(gone)),
            };
            for entry in entries {
                let row = P::entry_row(&entry);
                if from.is_some_and(|from| row < from)
                    || cutoff.as_ref().is_some_and(|cutoff| row >= cutoff)
                {
                    continue;
                }
                let entry = P::detached(entry);
                kept_bytes += entry.chunk_bytes();
                kept.push(entry);
            }
            fetcher.downloads.record_window(kept_bytes);
            if let Some(end) = narrow_rows(&mut kept, &mut kept_bytes, budget, P::entry_row) {
                cutoff = Some(end);
            }
        }
        // Equal rows (from different runs) are consolidated by the merge
        // that yields the window, whatever their order.
        kept.sort_unstable_by(MergeEntry::key_cmp);
        Ok(Ok((kept, cutoff)))
    }

    /// Continues from a fresh state after `gone` was found missing, if the
    /// fresh state gives the same answer. Returns the chunk built so far
    /// (the fresh read resumes after its last entry).
    async fn restart(&mut self, gone: &PartGone) -> Result<Option<Vec<P::Entry>>, BackendError> {
        self.current = None;
        self.restarts += 1;
        if self.restarts > MAX_RESTARTS {
            return Err(BackendError::determinate(
                DeterminateKind::Corrupted,
                format!(
                    "a part the shard state references is missing after re-reading the state {MAX_RESTARTS} times: shard={} key={}",
                    self.shard, gone.key
                ),
            ));
        }
        let fresh = self.backend.read_state(self.shard).await?;
        if let Some(change) = self.plan.changed(&self.fixed, &fresh) {
            return Err(BackendError::determinate(
                DeterminateKind::Conflict,
                format!(
                    "a streamed read cannot continue: a part it needed was deleted and {change}: shard={} key={}",
                    self.shard, gone.key
                ),
            ));
        }
        let chunk = self.builder.finish();
        let resume_after = chunk
            .as_ref()
            .and_then(|chunk| chunk.last())
            .or(self.last_yielded.as_ref())
            .cloned();
        self.skip_through = resume_after;
        self.segments = self.plan.segments(&fresh);
        self.transform = self.plan.transform(&fresh);
        if let Some(chunk) = &chunk {
            self.last_yielded = chunk.last().cloned();
        }
        Ok(chunk)
    }
}

/// The stream of a read state, one chunk per item.
fn into_stream<T: StorageTimestamp, P: ReadPlan<T>>(
    state: StreamState<T, P>,
) -> ReadStream<P::Entry> {
    futures::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((chunk, state))
    })
    .boxed()
}

impl S3Backend {
    /// A streamed snapshot share (see the module documentation).
    pub(crate) async fn snapshot_stream<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<ReadStream<(Row, Diff)>, BackendError> {
        share.check(shard)?;
        let state = self.read_state(shard).await?;
        contract::check_readable(
            shard,
            &decode_frontier::<T>(state.since),
            &decode_frontier::<T>(state.upper),
            as_of,
        )?;
        let plan = SnapshotPlan {
            as_of: *as_of,
            buckets: ShareBuckets::new(share),
            memory_bytes: self.config().read_memory_bytes(),
        };
        Ok(into_stream(StreamState::new(
            self.clone(),
            shard,
            plan,
            state,
            limit,
        )))
    }

    /// A streamed fetch share (see the module documentation).
    pub(crate) async fn fetch_stream<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<ReadStream<Update<T>>, BackendError> {
        share.check(shard)?;
        let state = self.read_state(shard).await?;
        contract::check_fetch_range(shard, lower, upper, &decode_frontier::<T>(state.upper))?;
        let plan = FetchPlan {
            lower: encode_frontier(lower),
            upper: encode_frontier(upper),
            buckets: ShareBuckets::new(share),
        };
        Ok(into_stream(StreamState::<T, _>::new(
            self.clone(),
            shard,
            plan,
            state,
            limit,
        )))
    }
}

#[cfg(test)]
mod tests {
    use tidemark_storage_types::Datum;

    use super::*;

    fn at(times: &[i64]) -> Vec<Update<u64>> {
        times
            .iter()
            .enumerate()
            .map(|(i, &time)| Update::new(Row::pack([Datum::Int64(i as i64)]), time as u64, 1))
            .collect()
    }

    fn time_of(update: &Update<u64>) -> i64 {
        update.timestamp as i64
    }

    fn narrow(kept: &mut Vec<Update<u64>>, entries_budget: usize, from: i64) -> Narrowed {
        let one = kept[0].chunk_bytes();
        let mut bytes = kept.iter().map(ChunkEntry::chunk_bytes).sum();
        let narrowed = narrow_window(kept, &mut bytes, entries_budget * one, from, time_of);
        assert_eq!(
            bytes,
            kept.iter().map(ChunkEntry::chunk_bytes).sum::<usize>()
        );
        narrowed
    }

    #[test]
    fn a_window_within_its_budget_is_left_alone() {
        let mut kept = at(&[3, 1, 2]);
        assert_eq!(narrow(&mut kept, 3, 1), Narrowed::Fits);
        assert_eq!(kept.len(), 3);
    }

    #[test]
    fn a_window_over_its_budget_ends_at_the_median_time() {
        let mut kept = at(&[5, 1, 4, 2, 3, 6]);
        assert_eq!(narrow(&mut kept, 4, 1), Narrowed::EndsAt(4));
        let mut times: Vec<i64> = kept.iter().map(time_of).collect();
        times.sort_unstable();
        assert_eq!(times, vec![1, 2, 3], "everything before the end is kept");
    }

    #[test]
    fn a_heavy_least_time_after_the_start_becomes_the_end() {
        let mut kept = at(&[2, 2, 2, 2, 3, 4]);
        assert_eq!(narrow(&mut kept, 3, 1), Narrowed::EndsAt(2));
        assert!(kept.is_empty(), "nothing before time 2 was kept");
    }

    #[test]
    fn a_heavy_first_time_is_read_alone() {
        let mut kept = at(&[1, 1, 1, 1, 3, 4]);
        assert_eq!(narrow(&mut kept, 3, 1), Narrowed::FirstTimeAlone);
    }
}
