//! Streamed reads: a snapshot or fetch delivered as a stream of bounded
//! chunks, so that a reader of a large shard holds one chunk at a time
//! instead of the whole read.
//!
//! [`PersistBackend::snapshot_stream`](crate::PersistBackend::snapshot_stream)
//! and [`fetch_stream`](crate::PersistBackend::fetch_stream) return a
//! [`ReadStream`]: each item is a non-empty chunk within a [`ChunkLimit`],
//! the chunks come in the read's order (row order for a snapshot,
//! `(time, row)` order for a fetch), and their concatenation is exactly the
//! `Vec` the non-streamed form returns.

use std::num::NonZeroUsize;

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::errors::BackendError;
use crate::row::Row;
use crate::time::{Diff, Update};

/// How large one chunk of a streamed read may be: at most `max_entries`
/// entries, and at most `max_bytes` encoded bytes unless a single entry is
/// larger on its own (a chunk always holds at least one entry, so that any
/// row can be delivered).
///
/// ```
/// use std::num::NonZeroUsize;
/// use tidemark_storage_types::ChunkLimit;
/// let limit = ChunkLimit::new(NonZeroUsize::new(2).unwrap(), NonZeroUsize::new(100).unwrap());
/// assert!(limit.admits(1, 60, 30));
/// assert!(!limit.admits(1, 80, 30)); // bytes would exceed 100
/// assert!(!limit.admits(2, 10, 10)); // entries would exceed 2
/// assert!(limit.admits(0, 0, 500)); // a first entry is always admitted
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkLimit {
    /// The most entries one chunk holds.
    pub max_entries: NonZeroUsize,
    /// The most encoded bytes (rows plus fixed per-entry overhead) one chunk
    /// holds, unless its single entry is larger.
    pub max_bytes: NonZeroUsize,
}

impl ChunkLimit {
    /// 4,096 entries or 4 MiB, whichever is reached first.
    pub const DEFAULT: ChunkLimit = ChunkLimit {
        max_entries: NonZeroUsize::new(4096).expect("nonzero"),
        max_bytes: NonZeroUsize::new(4 << 20).expect("nonzero"),
    };

    /// A limit of `max_entries` entries and `max_bytes` bytes.
    #[must_use]
    pub const fn new(max_entries: NonZeroUsize, max_bytes: NonZeroUsize) -> ChunkLimit {
        ChunkLimit {
            max_entries,
            max_bytes,
        }
    }

    /// A limit of `max_entries` entries and no byte bound to speak of.
    #[must_use]
    pub const fn entries(max_entries: NonZeroUsize) -> ChunkLimit {
        ChunkLimit {
            max_entries,
            max_bytes: NonZeroUsize::MAX,
        }
    }

    /// Whether a chunk now holding `entries` entries of `bytes` bytes may
    /// take one more entry of `entry_bytes` bytes.
    #[must_use]
    pub fn admits(&self, entries: usize, bytes: usize, entry_bytes: usize) -> bool {
        entries == 0
            || (entries < self.max_entries.get()
                && bytes.saturating_add(entry_bytes) <= self.max_bytes.get())
    }
}

impl Default for ChunkLimit {
    fn default() -> Self {
        ChunkLimit::DEFAULT
    }
}

/// An entry of a streamed read, with the size that counts against
/// [`ChunkLimit::max_bytes`].
pub trait ChunkEntry: Send + 'static {
    /// The row's encoded length plus a fixed overhead for time and diff.
    fn chunk_bytes(&self) -> usize;
}

/// Bytes counted for the time and diff of an entry, beside its row.
const ENTRY_OVERHEAD: usize = 16;

impl ChunkEntry for (Row, Diff) {
    fn chunk_bytes(&self) -> usize {
        self.0.byte_len() + ENTRY_OVERHEAD
    }
}

impl<T: Send + 'static> ChunkEntry for Update<T> {
    fn chunk_bytes(&self) -> usize {
        self.row.byte_len() + ENTRY_OVERHEAD
    }
}

/// A streamed read: non-empty chunks within the read's [`ChunkLimit`], in the
/// read's order; an error, if any, is the last item.
pub type ReadStream<C> = BoxStream<'static, Result<Vec<C>, BackendError>>;

/// A streamed snapshot: `(row, diff)` chunks in row order.
pub type SnapshotStream = ReadStream<(Row, Diff)>;

/// A streamed fetch: update chunks in `(time, row)` order.
pub type FetchStream<T> = ReadStream<Update<T>>;

/// Cuts a sequence of entries into chunks within a limit, one entry at a
/// time: [`push`](Self::push) returns a chunk when the next entry would not
/// fit in the current one.
///
/// ```
/// use std::num::NonZeroUsize;
/// use tidemark_storage_types::{ChunkBuilder, ChunkLimit, Datum, Row};
/// let mut builder = ChunkBuilder::new(ChunkLimit::entries(NonZeroUsize::new(2).unwrap()));
/// let mut chunks = Vec::new();
/// for i in 0..5 {
///     chunks.extend(builder.push((Row::pack([Datum::Int64(i)]), 1)));
/// }
/// chunks.extend(builder.finish());
/// assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
/// ```
#[derive(Debug)]
pub struct ChunkBuilder<C> {
    limit: ChunkLimit,
    chunk: Vec<C>,
    bytes: usize,
}

impl<C: ChunkEntry> ChunkBuilder<C> {
    /// An empty builder for chunks within `limit`.
    #[must_use]
    pub fn new(limit: ChunkLimit) -> Self {
        ChunkBuilder {
            limit,
            chunk: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds `entry`; returns the chunk it closed, if it did not fit in the
    /// current one.
    pub fn push(&mut self, entry: C) -> Option<Vec<C>> {
        let entry_bytes = entry.chunk_bytes();
        let closed = if self.limit.admits(self.chunk.len(), self.bytes, entry_bytes) {
            None
        } else {
            self.bytes = 0;
            Some(std::mem::take(&mut self.chunk))
        };
        self.bytes = self.bytes.saturating_add(entry_bytes);
        self.chunk.push(entry);
        closed
    }

    /// Whether no entry is waiting in the current chunk.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.chunk.is_empty()
    }

    /// The current chunk, if it holds any entry.
    pub fn finish(&mut self) -> Option<Vec<C>> {
        self.bytes = 0;
        if self.chunk.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.chunk))
        }
    }
}

/// A stream of the chunks of `entries`, already read in full, within
/// `limit`: for backends (or wrappers) whose read is not incremental.
#[must_use]
pub fn stream_from_vec<C: ChunkEntry>(entries: Vec<C>, limit: ChunkLimit) -> ReadStream<C> {
    let mut builder = ChunkBuilder::new(limit);
    let mut chunks = Vec::new();
    for entry in entries {
        chunks.extend(builder.push(entry));
    }
    chunks.extend(builder.finish());
    futures::stream::iter(chunks.into_iter().map(Ok)).boxed()
}

/// Reads a stream to its end and concatenates its chunks: the `Vec` form of
/// a streamed read.
///
/// # Errors
///
/// The first error the stream yields.
pub async fn collect_stream<C>(mut stream: ReadStream<C>) -> Result<Vec<C>, BackendError> {
    let mut entries = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if entries.is_empty() {
            entries = chunk;
        } else {
            entries.extend(chunk);
        }
    }
    Ok(entries)
}

/// Where a reader of a streamed read is, so that after an indeterminate
/// failure part-way it can read again from the start and skip what it has
/// already delivered.
///
/// A read's entries come in a strict order (rows for a snapshot,
/// `(time, row)` for a fetch), and reading the same snapshot or fetch again
/// yields the same entries as long as the since has not passed what the
/// read depends on (the as-of; for a fetch, the time before its lower). So
/// the entries of the new read up to the last one delivered are exactly
/// those already delivered: [`admit`](Self::admit) drops them.
///
/// ```
/// use tidemark_storage_types::ResumePoint;
/// let mut point = ResumePoint::new();
/// assert_eq!(point.admit(vec![1, 2, 3], |entry| *entry), vec![1, 2, 3]);
/// // The read failed after 3; it is read again from the start.
/// point.restart();
/// assert_eq!(point.admit(vec![1, 2], |entry| *entry), Vec::<i32>::new());
/// assert_eq!(point.admit(vec![3, 4, 5], |entry| *entry), vec![4, 5]);
/// assert_eq!(point.admit(vec![6], |entry| *entry), vec![6]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ResumePoint<K> {
    /// The key of the last entry delivered.
    last: Option<K>,
    /// Whether the read was restarted and has not yet passed `last`.
    skipping: bool,
}

impl<K: Ord> ResumePoint<K> {
    /// A read that has delivered nothing.
    #[must_use]
    pub fn new() -> Self {
        ResumePoint {
            last: None,
            skipping: false,
        }
    }

    /// The read is being started again from its beginning.
    pub fn restart(&mut self) {
        self.skipping = self.last.is_some();
    }

    /// The entries of `chunk` not yet delivered (`key` gives an entry's
    /// place in the read's order), which the caller now delivers.
    pub fn admit<C>(&mut self, chunk: Vec<C>, key: impl Fn(&C) -> K) -> Vec<C> {
        let chunk = match (&self.last, self.skipping) {
            (Some(last), true) => {
                let fresh: Vec<C> = chunk
                    .into_iter()
                    .skip_while(|entry| key(entry) <= *last)
                    .collect();
                self.skipping = fresh.is_empty();
                fresh
            }
            _ => chunk,
        };
        if let Some(entry) = chunk.last() {
            self.last = Some(key(entry));
        }
        chunk
    }
}

/// How a [`ResumingRead`] starts again after indeterminate failures
/// part-way: at most `restarts` times per read, waiting `initial_backoff`
/// before the first and doubling the wait each time up to `max_backoff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed after the first read.
    pub restarts: u32,
    /// The wait before the first restart.
    pub initial_backoff: std::time::Duration,
    /// The longest wait between two restarts.
    pub max_backoff: std::time::Duration,
}

/// A streamed read (a `snapshot_stream` or `fetch_stream`) being consumed,
/// which survives indeterminate failures part-way: the read is opened
/// again from its beginning and the entries already delivered are skipped
/// ([`ResumePoint`]), so every entry is delivered once, in order.
///
/// Reading again yields the same entries only while the since has not
/// passed what the read depends on: callers hold the since at the as-of of
/// a snapshot, and before the lower of a fetch.
///
/// The caller opens the read (retrying the call as it sees fit) through
/// the `open` it passes to [`next_chunk`](Self::next_chunk), so the call's
/// own errors keep the caller's type.
pub struct ResumingRead<C, K> {
    policy: RestartPolicy,
    key: fn(&C) -> K,
    stream: Option<ReadStream<C>>,
    point: ResumePoint<K>,
    restarts: u32,
    backoff: std::time::Duration,
    finished: bool,
}

impl<C, K> std::fmt::Debug for ResumingRead<C, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumingRead")
            .field("policy", &self.policy)
            .field("open", &self.stream.is_some())
            .field("restarts", &self.restarts)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<C: Send + 'static, K: Ord> ResumingRead<C, K> {
    /// A read not opened yet (the first [`next_chunk`](Self::next_chunk)
    /// opens it), whose entries are ordered by `key`, restarted by
    /// `policy`.
    #[must_use]
    pub fn new(policy: RestartPolicy, key: fn(&C) -> K) -> Self {
        ResumingRead {
            policy,
            key,
            stream: None,
            point: ResumePoint::new(),
            restarts: 0,
            backoff: policy.initial_backoff,
            finished: false,
        }
    }

    /// This read, already opened as `stream` (so that the caller sees the
    /// call's own errors first).
    #[must_use]
    pub fn with_stream(mut self, stream: ReadStream<C>) -> Self {
        self.stream = Some(stream);
        self
    }

    /// The next chunk not yet delivered (never empty), or `None` at the end
    /// of the read. `open` opens the read from its beginning when it is not
    /// open (the first time, unless [`with_stream`](Self::with_stream)
    /// gave it, and after each restart); `on_restart` is told of each
    /// restart (its number, from 0, and the failure) before its wait.
    ///
    /// # Errors
    ///
    /// `open`'s error, or `part_way` of a determinate failure part-way or
    /// of an indeterminate one once the restarts are used up.
    pub async fn next_chunk<E, F, Fut>(
        &mut self,
        mut open: F,
        part_way: impl FnOnce(BackendError) -> E,
        mut on_restart: impl FnMut(u32, &BackendError),
    ) -> Result<Option<Vec<C>>, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<ReadStream<C>, E>>,
    {
        loop {
            if self.finished {
                return Ok(None);
            }
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => {
                    let stream = open().await?;
                    self.stream.insert(stream)
                }
            };
            match stream.next().await {
                None => {
                    self.finished = true;
                    self.stream = None;
                }
                Some(Ok(chunk)) => {
                    let chunk = self.point.admit(chunk, self.key);
                    if !chunk.is_empty() {
                        return Ok(Some(chunk));
                    }
                }
                Some(Err(err)) if !err.is_determinate() && self.restarts < self.policy.restarts => {
                    on_restart(self.restarts, &err);
                    self.restarts += 1;
                    self.stream = None;
                    self.point.restart();
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = self.backoff.saturating_mul(2).min(self.policy.max_backoff);
                }
                Some(Err(err)) => return Err(part_way(err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Datum;

    fn rows(n: i64) -> Vec<(Row, Diff)> {
        (0..n).map(|i| (Row::pack([Datum::Int64(i)]), 1)).collect()
    }

    fn limit(entries: usize, bytes: usize) -> ChunkLimit {
        ChunkLimit::new(
            NonZeroUsize::new(entries).unwrap(),
            NonZeroUsize::new(bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn chunks_concatenate_to_the_input() {
        let input = rows(10);
        let collected = collect_stream(stream_from_vec(input.clone(), limit(3, 1 << 20)))
            .await
            .unwrap();
        assert_eq!(collected, input);
    }

    #[tokio::test]
    async fn every_chunk_is_within_the_entry_limit_and_non_empty() {
        let chunks: Vec<_> = stream_from_vec(rows(10), limit(3, 1 << 20))
            .collect::<Vec<_>>()
            .await;
        let lens: Vec<usize> = chunks.into_iter().map(|c| c.unwrap().len()).collect();
        assert_eq!(lens, vec![3, 3, 3, 1]);
    }

    #[tokio::test]
    async fn the_byte_limit_cuts_chunks_too() {
        let one = rows(1)[0].chunk_bytes();
        let chunks: Vec<_> = stream_from_vec(rows(5), limit(100, one * 2))
            .collect::<Vec<_>>()
            .await;
        let lens: Vec<usize> = chunks.into_iter().map(|c| c.unwrap().len()).collect();
        assert_eq!(lens, vec![2, 2, 1]);
    }

    #[tokio::test]
    async fn an_entry_larger_than_the_byte_limit_is_a_chunk_of_its_own() {
        let chunks: Vec<_> = stream_from_vec(rows(3), limit(100, 1))
            .collect::<Vec<_>>()
            .await;
        let lens: Vec<usize> = chunks.into_iter().map(|c| c.unwrap().len()).collect();
        assert_eq!(lens, vec![1, 1, 1]);
    }

    #[tokio::test]
    async fn an_empty_read_is_an_empty_stream() {
        let chunks: Vec<_> = stream_from_vec(Vec::<(Row, Diff)>::new(), ChunkLimit::DEFAULT)
            .collect::<Vec<_>>()
            .await;
        assert!(chunks.is_empty());
    }

    #[tokio::test]
    async fn collect_stops_at_the_first_error() {
        let shard = crate::ids::ShardId::new();
        let items: Vec<Result<Vec<(Row, Diff)>, BackendError>> = vec![
            Ok(rows(2)),
            Err(BackendError::InvalidUsage(
                crate::errors::InvalidUsage::InvalidShare {
                    shard,
                    index: 1,
                    count: 1,
                },
            )),
        ];
        let stream = futures::stream::iter(items).boxed();
        assert!(collect_stream(stream).await.is_err());
    }

    /// Reads of `0..len` that fail indeterminately after `fail_after`
    /// chunks of one entry, for each of the first `failing` opens.
    fn flaky_opens(
        len: u32,
        fail_after: usize,
        failing: u32,
    ) -> impl FnMut() -> std::future::Ready<Result<ReadStream<u32>, BackendError>> {
        let mut opened = 0;
        move || {
            opened += 1;
            let mut chunks: Vec<Result<Vec<u32>, BackendError>> =
                (0..len).map(|entry| Ok(vec![entry])).collect();
            if opened <= failing {
                chunks.truncate(fail_after);
                chunks.push(Err(BackendError::indeterminate("injected")));
            }
            std::future::ready(Ok(futures::stream::iter(chunks).boxed()))
        }
    }

    fn policy(restarts: u32) -> RestartPolicy {
        RestartPolicy {
            restarts,
            initial_backoff: std::time::Duration::from_millis(1),
            max_backoff: std::time::Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn a_resuming_read_delivers_every_entry_once_across_restarts() {
        let mut read = ResumingRead::new(policy(5), |entry: &u32| *entry);
        let mut open = flaky_opens(6, 3, 2);
        let mut restarts = Vec::new();
        let mut delivered = Vec::new();
        while let Some(chunk) = read
            .next_chunk(&mut open, |err| err, |n, _| restarts.push(n))
            .await
            .unwrap()
        {
            delivered.extend(chunk);
        }
        assert_eq!(delivered, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(restarts, vec![0, 1]);
        // Its backoff doubled once and then stopped at the cap.
        assert_eq!(read.backoff, std::time::Duration::from_millis(2));
        assert!(
            read.next_chunk(&mut open, |err| err, |_, _| {})
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_resuming_read_fails_once_its_restarts_are_used_up() {
        let mut read = ResumingRead::new(policy(1), |entry: &u32| *entry);
        let mut open = flaky_opens(4, 1, 10);
        let first = read.next_chunk(&mut open, |err| err, |_, _| {}).await;
        assert_eq!(first.unwrap(), Some(vec![0]));
        let mut part_way = None;
        let failed = read
            .next_chunk(
                &mut open,
                |err| {
                    part_way = Some(err.to_string());
                    err
                },
                |_, _| {},
            )
            .await;
        assert!(failed.is_err(), "{failed:?}");
        assert!(
            part_way.is_some_and(|err| err.contains("injected")),
            "the failure part-way is what the read answers"
        );
    }
}
