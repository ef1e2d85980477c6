//! The [`PersistBackend`] contract: durable, versioned shards.

use std::fmt::{self, Debug};

use async_trait::async_trait;
use timely::progress::Antichain;

use crate::errors::BackendError;
use crate::ids::{IdempotencyToken, ShardId};
use crate::row::Row;
use crate::share::ReadShare;
use crate::stream::{ChunkLimit, FetchStream, SnapshotStream};
use crate::time::{Diff, Update, display_frontier};

/// A shard's read frontier (`since`) and write frontier (`upper`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFrontiers<T> {
    /// Times not `>= since` may have been compacted.
    pub since: Antichain<T>,
    /// Every update at a time not `>= upper` is final.
    pub upper: Antichain<T>,
}

/// Which writer a [`compare_and_append`](PersistBackend::compare_and_append)
/// or [`downgrade_since`](PersistBackend::downgrade_since) comes from, as far
/// as fencing goes.
///
/// Each shard records a writer epoch (0 for a new shard). A write with
/// [`WriteFence::Epoch`] is checked against it atomically with the write:
/// a lower epoch is refused, an equal or higher one is admitted and raises
/// the recorded epoch to it. A superseded writer (one with a lower epoch)
/// therefore cannot land a write once a newer writer has written, however
/// its own calls interleave with the newer writer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteFence {
    /// Not fenced: admitted whatever the shard's epoch, which it leaves
    /// unchanged. For writers that are never superseded by a newer instance
    /// of themselves (a dataflow sink, a replica's ingestion, operator
    /// tools).
    Unfenced,
    /// A fenced writer's epoch (the controller's metadata-shard epoch).
    Epoch(u64),
}

impl fmt::Display for WriteFence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteFence::Unfenced => f.write_str("unfenced"),
            WriteFence::Epoch(epoch) => write!(f, "epoch {epoch}"),
        }
    }
}

/// What an [`UpperMismatch`] says about earlier attempts of the same append
/// (the same idempotency token and bounds): whether a caller retrying after
/// an indeterminate outcome may conclude that its append did not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EarlierAttempts {
    /// No attempt with this token and these bounds applied: the backend
    /// still remembers every append that could have been one of them.
    NotApplied,
    /// The backend has forgotten appends that could have been an earlier
    /// attempt (the token left its remembered window): whether one applied
    /// cannot be determined from this answer.
    Undetermined,
}

/// An expectation failure of
/// [`compare_and_append`](PersistBackend::compare_and_append): the shard's
/// upper was not the expected one, and nothing was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpperMismatch<T> {
    /// The upper the caller expected.
    pub expected: Antichain<T>,
    /// The shard's upper when the append was attempted.
    pub current: Antichain<T>,
    /// Whether an earlier attempt with the same token is known not to have
    /// applied. Only a retry needs it: a first attempt has no earlier one.
    pub earlier_attempts: EarlierAttempts,
}

impl<T: fmt::Display> fmt::Display for UpperMismatch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upper mismatch: expected={} current={}",
            display_frontier(&self.expected),
            display_frontier(&self.current)
        )?;
        if self.earlier_attempts == EarlierAttempts::Undetermined {
            f.write_str(
                " (whether an earlier attempt with this token applied cannot be determined)",
            )?;
        }
        Ok(())
    }
}

/// One shard's part of a [`PersistBackend::compare_and_append_all`] call:
/// the same four things a [`PersistBackend::compare_and_append`] takes.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardAppend<T> {
    /// The shard.
    pub shard: ShardId,
    /// Its updates, each at a time in `[expected_upper, new_upper)`.
    pub updates: Vec<Update<T>>,
    /// The upper the shard must have.
    pub expected_upper: Antichain<T>,
    /// The upper it gets.
    pub new_upper: Antichain<T>,
}

/// Why a [`PersistBackend::compare_and_append_all`] wrote nothing: every
/// shard of the call whose upper was not the expected one, in the call's
/// order, each with its current upper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpperMismatches<T> {
    /// `(shard, mismatch)` for each mismatching shard.
    pub mismatches: Vec<(ShardId, UpperMismatch<T>)>,
}

impl<T: fmt::Display> fmt::Display for UpperMismatches<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "atomic append wrote nothing: {} shard(s) mismatched:",
            self.mismatches.len()
        )?;
        for (shard, mismatch) in &self.mismatches {
            write!(f, " shard={shard} {mismatch};")?;
        }
        Ok(())
    }
}

/// What a physical compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Stored updates before.
    pub updates_before: u64,
    /// Stored updates after.
    pub updates_after: u64,
    /// Stored bytes before (as the backend accounts them).
    pub bytes_before: u64,
    /// Stored bytes after.
    pub bytes_after: u64,
}

/// How much a shard stores right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardUsage {
    /// Stored updates (after the backend's own consolidation, before
    /// compaction to since).
    pub updates: u64,
    /// Stored bytes, as the backend accounts them.
    pub bytes: u64,
}

/// Durable storage of shards: collections of `(Row, T, Diff)` with a since
/// and an upper.
///
/// # Frontiers
///
/// See [the `time` module](crate::time) for what since and upper mean. A new
/// shard has `since = upper = [T::minimum()]`.
///
/// # Contract
///
/// - **Handles share storage.** Every handle a backend's constructor returns
///   for the same location (name, database schema, bucket prefix) sees the
///   same shards; operations through different handles are linearizable
///   with each other.
/// - **Frontiers never move backward.** `upper` only advances, by
///   [`compare_and_append`](Self::compare_and_append); `since` only
///   advances, by [`downgrade_since`](Self::downgrade_since) (which joins)
///   and [`finalize`](Self::finalize). `since` may be ahead of `upper`.
/// - **`compare_and_append` is linearizable and atomic.** Of several
///   concurrent appends with the same `expected_upper`, at most one
///   succeeds. An append either writes all its updates and sets the upper,
///   or writes nothing. An expectation failure is the value
///   `Ok(Err(UpperMismatch))`, never an error.
/// - **Idempotency.** A `compare_and_append` retried with the same token
///   after an indeterminate outcome, and with the same expected and new
///   upper, answers `Ok(Ok(()))` if the first attempt applied, and is applied
///   at most once. Backends remember at least the most recent 128 tokens per
///   shard.
/// - **Retries outside the token window are told apart.** When such a retry
///   answers `UpperMismatch`, its
///   [`earlier_attempts`](UpperMismatch::earlier_attempts) is
///   [`EarlierAttempts::NotApplied`] only if no earlier attempt applied;
///   if the backend may have forgotten an earlier attempt that applied, it
///   is [`EarlierAttempts::Undetermined`]. A backend decides this with
///   [`contract::earlier_attempts`](crate::contract::earlier_attempts): an
///   append it no longer remembers applied before the oldest one it does,
///   so only a retry whose `new_upper` is not beyond that oldest
///   remembered append's `expected_upper` can have been forgotten.
/// - **Writes are fenced atomically.** Each shard records a writer epoch
///   (0 when opened). A `compare_and_append` or `downgrade_since` with
///   [`WriteFence::Epoch`]`(e)` compares `e` with it in the same atomic step
///   as the write: `e` lower is refused with
///   [`DeterminateKind::Fenced`](crate::DeterminateKind::Fenced) and writes
///   nothing; otherwise the call proceeds and, if it writes (an applied
///   append, or any `downgrade_since`, even one that leaves the since
///   unchanged), raises the recorded epoch to `e` in the same step.
///   [`WriteFence::Unfenced`] is never refused and never changes the epoch.
///   A retry of an append that already applied (its token is remembered
///   with its bounds) answers `Ok(Ok(()))` before the fence is checked: it
///   writes nothing, and it did land before any newer writer fenced it.
///   Otherwise the fence is checked before the upper: a fenced writer gets
///   `Fenced`, not a mismatch.
/// - **`compare_and_append_all` is atomic across shards and
///   linearizable.** The call takes effect at one instant for all its
///   shards or not at all. Any read (frontiers, snapshot, fetch, shares,
///   `wait_for_upper_past`, from any handle) that reflects the call on one
///   shard and is followed by a read of another of its shards reflects it
///   there too; no reader ever observes one shard's part without the
///   others'. Each shard's part obeys every rule of `compare_and_append`
///   (bounds, upper regression, sealing with an empty `new_upper`, empty
///   updates); any `InvalidUsage` in any part, or the same shard twice
///   ([`InvalidUsage::DuplicateShardInAppend`](crate::InvalidUsage::DuplicateShardInAppend)),
///   refuses the whole call with nothing written. An empty call is
///   `Ok(Ok(()))` and writes nothing. The fence is checked against every
///   shard in the same atomic step: any shard whose epoch is above the
///   call's refuses the call with `Fenced`, nothing written; an applied
///   call raises every shard's epoch to it. One token names the whole call:
///   a retry with the same token, shards and bounds answers `Ok(Ok(()))` if
///   the call applied, and applies at most once; when a retry answers
///   [`UpperMismatches`], each mismatch's `earlier_attempts` follows the
///   single-shard rule for its shard. A one-element call behaves exactly
///   like `compare_and_append` (with an `UpperMismatches` of one entry
///   instead of an `UpperMismatch`). A backend checks a call's arguments
///   with [`contract::check_append_all`](crate::contract::check_append_all).
/// - **Reads are consistent.** A snapshot or fetch sees all or none of each
///   append.
/// - **Compaction is invisible.** `snapshot(as_of)` equals the logical
///   compaction of every update ever appended, to `as_of`, whatever physical
///   compaction has run; `fetch` returns times advanced by the since.
/// - **Finalized shards stay sealed.** After [`finalize`](Self::finalize),
///   `since = upper = []` forever (opening it again reports that) and its
///   data is gone; it is no longer listed by
///   [`list_shards`](Self::list_shards).
///
/// # Errors
///
/// Every method returns [`BackendError`]:
/// - [`BackendError::InvalidUsage`] for calls that break the contract (an
///   unknown shard, updates outside the append bounds, a new upper behind
///   the expected one, an unreadable `as_of`, an invalid fetch range, an
///   invalid read share, waiting past the empty frontier). Nothing happened.
/// - [`BackendError::Determinate`] when the operation definitely did not
///   happen (connection refused, bad credentials, missing database or
///   bucket, a serialization conflict, corrupted stored data).
/// - [`BackendError::Indeterminate`] otherwise: the operation may have
///   happened. Retry policy belongs to the caller; retry a
///   `compare_and_append` only with the same idempotency token.
///
/// # Wrappers
///
/// A backend that wraps another (fault injection, latency) must forward
/// every method explicitly: this trait has no default methods, so that a
/// new method cannot be inherited silently.
#[async_trait]
pub trait PersistBackend<T>: Debug + Send + Sync + 'static {
    /// Creates the shard if it does not exist (`since = upper = [minimum]`)
    /// and returns its frontiers. Idempotent: opening an existing shard
    /// changes nothing.
    async fn open(&self, shard: ShardId) -> Result<ShardFrontiers<T>, BackendError>;

    /// A linearizable read of the shard's since and upper.
    ///
    /// # Errors
    ///
    /// `InvalidUsage::UnknownShard` if the shard was never opened.
    async fn frontiers(&self, shard: ShardId) -> Result<ShardFrontiers<T>, BackendError>;

    /// Atomically: iff the shard's upper equals `expected_upper`, adds
    /// `updates` and sets the upper to `new_upper`.
    ///
    /// Every update time must be in `[expected_upper, new_upper)`:
    /// `expected_upper <= time` and not `new_upper <= time`. An empty
    /// `updates` with a greater `new_upper` just advances the upper; an empty
    /// `new_upper` seals the shard. Updates need not be consolidated or
    /// sorted.
    ///
    /// Returns `Ok(Err(mismatch))` with the current upper if the upper was
    /// not `expected_upper` (nothing written), unless `token` was already
    /// applied with these bounds, in which case it returns `Ok(Ok(()))`
    /// without writing again. `fence` is checked atomically with the write
    /// (see the contract's fencing rule); an applied append with
    /// `WriteFence::Epoch(e)` raises the shard's epoch to `e`.
    ///
    /// # Errors
    ///
    /// `InvalidUsage` (nothing written) for an unknown shard, an update
    /// outside the bounds, or `new_upper` behind `expected_upper`.
    /// `Determinate(Fenced)` (nothing written) if `fence` is an epoch lower
    /// than the shard's.
    async fn compare_and_append(
        &self,
        shard: ShardId,
        updates: Vec<Update<T>>,
        expected_upper: Antichain<T>,
        new_upper: Antichain<T>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatch<T>>, BackendError>;

    /// Atomically across shards: iff every shard's upper equals its
    /// `expected_upper`, adds each shard's updates and sets each upper to
    /// its `new_upper`; otherwise writes nothing and returns every mismatch.
    ///
    /// Each part follows the rules of
    /// [`compare_and_append`](Self::compare_and_append); the call as a
    /// whole is one atomic, linearizable step (see the contract): no read
    /// ever sees one shard's part without the others'.
    ///
    /// Returns `Ok(Err(mismatches))` naming every shard whose upper was not
    /// its `expected_upper`, in the call's order (nothing written), unless
    /// `token` was already applied with these shards and bounds, in which
    /// case it returns `Ok(Ok(()))` without writing again. An empty
    /// `appends` returns `Ok(Ok(()))`. `fence` is checked against every
    /// shard atomically with the write; an applied call with
    /// `WriteFence::Epoch(e)` raises every shard's epoch to `e`.
    ///
    /// # Errors
    ///
    /// `InvalidUsage` (nothing written) for an unknown shard, a part with an
    /// update outside its bounds or a `new_upper` behind its
    /// `expected_upper`, or a shard named twice
    /// (`InvalidUsage::DuplicateShardInAppend`). `Determinate(Fenced)`
    /// (nothing written) if `fence` is an epoch lower than any shard's.
    async fn compare_and_append_all(
        &self,
        appends: Vec<ShardAppend<T>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<T>>, BackendError>;

    /// The consolidated contents at `as_of`: each row with the sum of the
    /// diffs of its updates at times `<= as_of`, rows with a zero sum
    /// omitted, sorted by row.
    ///
    /// # Errors
    ///
    /// `InvalidUsage::AsOfNotReadable` unless `since <= as_of` and not
    /// `upper <= as_of`.
    async fn snapshot(&self, shard: ShardId, as_of: &T) -> Result<Vec<(Row, Diff)>, BackendError>;

    /// The updates with times in `[lower, upper)` after advancing every time
    /// by the shard's since, consolidated and sorted by `(time, row)`.
    ///
    /// Lets listeners and sinks follow a shard: fetch `[since, upper)` first,
    /// then each new `[previous upper, new upper)`.
    ///
    /// # Errors
    ///
    /// `InvalidUsage::FetchRangeInvalid` unless `lower <= upper` and `upper`
    /// is not beyond the shard's upper (only final data can be fetched).
    async fn fetch(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
    ) -> Result<Vec<Update<T>>, BackendError>;

    /// One share of [`snapshot`](Self::snapshot): the shares `0..count` of
    /// one `as_of`, taken together, consolidate to the snapshot at `as_of`;
    /// each share is itself consolidated and sorted by row. The division
    /// depends only on the update (its row), never on the stored layout, so
    /// share `i` holds the same updates in every read (see [`ReadShare`]).
    /// A backend divides as early as it can, so that a reader of one share
    /// receives and decodes as little of the rest as its storage allows.
    /// `ReadShare::WHOLE` is the whole snapshot.
    ///
    /// # Errors
    ///
    /// As [`snapshot`](Self::snapshot), and
    /// `InvalidUsage::InvalidShare` unless `share.count > 0` and
    /// `share.index < share.count`.
    async fn snapshot_share(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError>;

    /// One share of [`fetch`](Self::fetch): the shares `0..count` of one
    /// range, taken together, consolidate to the fetch of that range; each
    /// share is itself consolidated and sorted by `(time, row)`. As for
    /// snapshots, share `i` holds the same updates in every read, so readers
    /// of different shares may follow a shard over different ranges and
    /// together still read every update exactly once.
    ///
    /// # Errors
    ///
    /// As [`fetch`](Self::fetch), and `InvalidUsage::InvalidShare` for an
    /// invalid share.
    async fn fetch_share(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
    ) -> Result<Vec<Update<T>>, BackendError>;

    /// [`snapshot_share`](Self::snapshot_share) as a stream of chunks, so
    /// that the reader holds one chunk at a time rather than the whole
    /// snapshot.
    ///
    /// The snapshot is of the shard as it is when this call returns: later
    /// appends and compactions do not change what the stream yields. Every
    /// chunk is non-empty and within `limit`; the chunks come in row order
    /// and their concatenation equals `snapshot_share(shard, as_of, share)`.
    /// A backend that reads incrementally holds memory bounded by the limit
    /// (and its own buffers), not by the shard. Dropping the stream before
    /// its end is harmless: it releases what the read held. A failure
    /// part-way is the stream's last item; the entries already yielded are
    /// correct, and a reader may resume by reading again.
    ///
    /// A backend whose reads are not incremental may read the whole share
    /// and cut it with [`stream_from_vec`](crate::stream::stream_from_vec).
    ///
    /// # Errors
    ///
    /// As [`snapshot_share`](Self::snapshot_share), at the call (an invalid
    /// as-of or share is never reported part-way through the stream).
    async fn snapshot_stream(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<SnapshotStream, BackendError>;

    /// [`fetch_share`](Self::fetch_share) as a stream of chunks in
    /// `(time, row)` order whose concatenation equals
    /// `fetch_share(shard, lower, upper, share)`, with the guarantees of
    /// [`snapshot_stream`](Self::snapshot_stream): the shard's state is
    /// fixed at the call, chunks are non-empty and within `limit`, dropping
    /// is harmless and a failure part-way is the last item.
    ///
    /// # Errors
    ///
    /// As [`fetch_share`](Self::fetch_share), at the call.
    async fn fetch_stream(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<FetchStream<T>, BackendError>;

    /// Waits until the shard's upper is not `<= frontier` (some write moved
    /// it past `frontier`) and returns that upper. Returns at once if it
    /// already is. Cancellation safe; no timeout of its own.
    ///
    /// # Errors
    ///
    /// `InvalidUsage::WaitPastEmptyFrontier` if `frontier` is empty.
    async fn wait_for_upper_past(
        &self,
        shard: ShardId,
        frontier: &Antichain<T>,
    ) -> Result<Antichain<T>, BackendError>;

    /// Logical compaction: sets `since` to the join of the current since and
    /// `new_since` (a `new_since` behind the current one changes nothing) and
    /// returns the resulting since. Reads before the new since become invalid;
    /// physical compaction may then rewrite times to it. With
    /// `WriteFence::Epoch(e)` it also raises the shard's epoch to `e`, even
    /// when the since does not move (so a new writer can fence an older one
    /// without changing anything else).
    ///
    /// # Errors
    ///
    /// `Determinate(Fenced)` (since unchanged) if `fence` is an epoch lower
    /// than the shard's.
    async fn downgrade_since(
        &self,
        shard: ShardId,
        new_since: &Antichain<T>,
        fence: WriteFence,
    ) -> Result<Antichain<T>, BackendError>;

    /// Physical compaction: rewrites stored updates at times not beyond since
    /// to since, consolidated, so the shard stores fewer updates. Changes no
    /// read result. Returns what it did.
    async fn compact(&self, shard: ShardId) -> Result<CompactionStats, BackendError>;

    /// What the shard stores right now.
    async fn usage(&self, shard: ShardId) -> Result<ShardUsage, BackendError>;

    /// Seals the shard (`since = upper = []`) and deletes its data.
    /// Idempotent. A finalized shard is no longer listed.
    async fn finalize(&self, shard: ShardId) -> Result<(), BackendError>;

    /// Every shard that has been opened and not finalized, sorted.
    async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError>;
}

/// A shared handle forwards every method, so `Arc<dyn PersistBackend<T>>`
/// (what `tidemark::open` returns) is itself a backend.
#[async_trait]
impl<T, B> PersistBackend<T> for std::sync::Arc<B>
where
    T: Send + Sync + 'static,
    B: PersistBackend<T> + ?Sized,
{
    async fn open(&self, shard: ShardId) -> Result<ShardFrontiers<T>, BackendError> {
        (**self).open(shard).await
    }

    async fn frontiers(&self, shard: ShardId) -> Result<ShardFrontiers<T>, BackendError> {
        (**self).frontiers(shard).await
    }

    async fn compare_and_append(
        &self,
        shard: ShardId,
        updates: Vec<Update<T>>,
        expected_upper: Antichain<T>,
        new_upper: Antichain<T>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatch<T>>, BackendError> {
        (**self)
            .compare_and_append(shard, updates, expected_upper, new_upper, token, fence)
            .await
    }

    async fn compare_and_append_all(
        &self,
        appends: Vec<ShardAppend<T>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<T>>, BackendError> {
        (**self).compare_and_append_all(appends, token, fence).await
    }

    async fn snapshot(&self, shard: ShardId, as_of: &T) -> Result<Vec<(Row, Diff)>, BackendError> {
        (**self).snapshot(shard, as_of).await
    }

    async fn fetch(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
    ) -> Result<Vec<Update<T>>, BackendError> {
        (**self).fetch(shard, lower, upper).await
    }

    async fn snapshot_share(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        (**self).snapshot_share(shard, as_of, share).await
    }

    async fn fetch_share(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
    ) -> Result<Vec<Update<T>>, BackendError> {
        (**self).fetch_share(shard, lower, upper, share).await
    }

    async fn snapshot_stream(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<SnapshotStream, BackendError> {
        (**self).snapshot_stream(shard, as_of, share, limit).await
    }

    async fn fetch_stream(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<FetchStream<T>, BackendError> {
        (**self)
            .fetch_stream(shard, lower, upper, share, limit)
            .await
    }

    async fn wait_for_upper_past(
        &self,
        shard: ShardId,
        frontier: &Antichain<T>,
    ) -> Result<Antichain<T>, BackendError> {
        (**self).wait_for_upper_past(shard, frontier).await
    }

    async fn downgrade_since(
        &self,
        shard: ShardId,
        new_since: &Antichain<T>,
        fence: WriteFence,
    ) -> Result<Antichain<T>, BackendError> {
        (**self).downgrade_since(shard, new_since, fence).await
    }

    async fn compact(&self, shard: ShardId) -> Result<CompactionStats, BackendError> {
        (**self).compact(shard).await
    }

    async fn usage(&self, shard: ShardId) -> Result<ShardUsage, BackendError> {
        (**self).usage(shard).await
    }

    async fn finalize(&self, shard: ShardId) -> Result<(), BackendError> {
        (**self).finalize(shard).await
    }

    async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError> {
        (**self).list_shards().await
    }
}
