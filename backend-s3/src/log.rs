//! The commit log: one conditional PUT commits many appends, to any shards
//! (decision 118).
//!
//! ```text
//! PREFIX/log/00000000000000000001     entry 1, created with If-None-Match: *, never changed
//! PREFIX/log/00000000000000000002     ...
//! ```
//!
//! - **Entries** are created in seq order from seq 1: a committer writes
//!   entry `head + 1` only once it has read entry `head`, so a seq is
//!   created only after every lower one. An entry holds calls; a call holds
//!   parts, each one change of one shard (an append, a since downgrade, a
//!   finalize), already checked against the shard as of the entry before.
//! - **Gc** ([`S3Backend::gc_log`], decision 120) deletes old entries every
//!   shard they name has folded in, never the highest: readers fold across
//!   the gaps ([`S3Backend::with_log_tail`]), and a committer never writes
//!   at a deleted seq ([`S3Backend::may_write_entry`]).
//! - **Log-mode shards** have [`LogLink::applied`] in their state: every
//!   entry up to it that names the shard is folded into the state. The
//!   shard is the state with every later entry naming it folded in, in seq
//!   order ([`S3Backend::read_view`]). Only the log changes a log-mode
//!   shard's upper, contents, tokens, epoch, since or finalization; state
//!   CASes of such a shard (the applier, compaction, gc) only fold entries
//!   in or rewrite what the state already says.
//! - **The committer** (one task per handle) takes every call queued to it,
//!   checks each in order against the shards as of its head plus the calls
//!   accepted before it, answers the refused ones and writes the accepted
//!   ones as entry `head + 1`. That PUT is the commit point of every call
//!   in the entry.
//! - **The applier** folds entries into shard states in the background,
//!   a few entries at a time, so readers have a short tail to read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tidemark_storage_types::sync::lock;
use tidemark_storage_types::{
    BackendError, DeterminateKind, IdempotencyToken, ShardAppend, ShardId, StorageTimestamp,
    UpperMismatches, WriteFence, contract,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::append::{inline_batch, mismatch};
use crate::clock::epoch_millis;
use crate::codec::{EncodedPart, encode_parts};
use crate::state::{
    BatchRef, EncodedFrontier, LogLink, ShardState, decode_frontier, encode_frontier, frontier_join,
};
use crate::store::{Condition, ConditionalPut, bounded_in_order};
use crate::{Inner, S3Backend, Step};

/// The entry format this code writes and reads.
pub(crate) const LOG_ENTRY_FORMAT: u32 = 1;

/// Entries a handle keeps in memory (entries never change, so any number
/// is correct; this only bounds memory).
const CACHED_ENTRIES: usize = 4096;

/// Calls packed into one entry at most.
const MAX_CALLS_PER_ENTRY: usize = 512;

/// Encoded batch bytes packed into one entry at most (a call larger than
/// this goes alone).
const MAX_ENTRY_BATCH_BYTES: usize = 4 << 20;

/// Times the committer tries to write one group of calls, each time on a
/// newer head, before answering them `Determinate(Conflict)`.
const MAX_ENTRY_ATTEMPTS: usize = 64;

/// Entries naming a shard, written by this handle and not yet folded into
/// its state, after which the applier folds them at once.
const APPLY_AFTER_ENTRIES: u32 = 16;

/// How long the committer waits with nothing queued before the applier
/// folds every shard that has unapplied entries of this handle.
const APPLY_WHEN_IDLE_AFTER: Duration = Duration::from_millis(200);

/// Shards whose state the committer keeps (only bounds memory).
const COMMITTER_SHARDS: usize = 16_384;

/// Times the committer reads the log on when a shard's state, read again
/// after a tail with gaps, is past the tail, before giving up.
const MAX_CATCH_UP_ROUNDS: usize = 8;

/// Entries fetched at once when a tail is listed.
const TAIL_FETCH_CONCURRENCY: usize = 16;

/// One commit log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogEntry {
    pub format: u32,
    pub seq: u64,
    pub written_at_ms: u64,
    /// Identifies the PUT that wrote it, so a committer whose PUT failed
    /// indeterminately can tell its own entry from another's at that seq.
    pub attempt: Uuid,
    pub calls: Vec<LogCall>,
}

/// One call: all of its parts apply, in one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogCall {
    /// The call's idempotency token (appends only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Uuid>,
    /// The writer epoch the call was fenced with (`None`: unfenced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    pub parts: Vec<LogPart>,
}

/// One shard's change in a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogPart {
    pub shard: ShardId,
    pub change: Change,
    /// The writer epoch the shard has after the change.
    pub epoch: u64,
}

/// What a part changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Change {
    /// An append: the batch (none if its updates cancelled out), the upper
    /// moved from `expected_upper` to `new_upper`, the token remembered.
    Append {
        expected_upper: EncodedFrontier,
        new_upper: EncodedFrontier,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<BatchRef>,
    },
    /// The since joined with this one.
    Since { since: EncodedFrontier },
    /// Sealed, unreadable, data gone.
    Finalize,
}

impl LogEntry {
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a log entry serializes")
    }

    /// Reads a stored entry; `key` names the object in errors.
    ///
    /// # Errors
    ///
    /// `Determinate(Corrupted)` naming the key if the bytes are not an entry
    /// of a known format, or not the entry of `seq`.
    pub(crate) fn from_bytes(key: &str, seq: u64, bytes: &[u8]) -> Result<Self, BackendError> {
        let not_valid = |err: serde_json::Error| {
            BackendError::determinate(
                DeterminateKind::Corrupted,
                format!("commit log entry is not valid: key={key} error={err}"),
            )
            .caused_by(err)
        };
        // The format is checked first, so a newer format with fields this
        // code does not know is named as such.
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let format = serde_json::from_slice::<Format>(bytes).map_err(not_valid)?;
        if format.format != LOG_ENTRY_FORMAT {
            return Err(BackendError::determinate(
                DeterminateKind::Corrupted,
                format!(
                    "commit log entry has an unknown format: key={key} format={} supported={LOG_ENTRY_FORMAT}",
                    format.format
                ),
            ));
        }
        let entry: LogEntry = serde_json::from_slice(bytes).map_err(not_valid)?;
        if entry.seq != seq {
            return Err(BackendError::determinate(
                DeterminateKind::Corrupted,
                format!(
                    "commit log entry names another seq than its key: key={key} seq={}",
                    entry.seq
                ),
            ));
        }
        Ok(entry)
    }

    /// The shards the entry names (a shard once per part naming it).
    pub(crate) fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.parts().map(|(_, part)| part.shard)
    }

    fn parts(&self) -> impl Iterator<Item = (&LogCall, &LogPart)> {
        self.calls
            .iter()
            .flat_map(|call| call.parts.iter().map(move |part| (call, part)))
    }
}

/// Folds `entry`'s parts naming `shard` into `state` and records the entry
/// as applied. `state` must be in log mode.
pub(crate) fn fold_entry(state: &mut ShardState, shard: ShardId, entry: &LogEntry) {
    for (call, part) in entry.parts().filter(|(_, part)| part.shard == shard) {
        match &part.change {
            Change::Append {
                expected_upper,
                new_upper,
                batch,
            } => state.apply_append(
                batch.as_ref(),
                IdempotencyToken(call.token.unwrap_or_default()),
                *expected_upper,
                *new_upper,
                part.epoch,
            ),
            Change::Since { since } => {
                state.since = frontier_join(state.since, *since);
                state.writer_epoch = part.epoch;
            }
            Change::Finalize => {
                state.since = None;
                state.upper = None;
                state.finalized = true;
                state.batches.clear();
                state.retired.clear();
                state.tokens.clear();
                state.writer_epoch = part.epoch;
            }
        }
    }
    state.log = Some(LogLink { applied: entry.seq });
}

/// The entries this handle knows, the highest seq it knows exists, and
/// when it last knew where the log ended.
#[derive(Default)]
pub(crate) struct LogCache {
    head: u64,
    entries: BTreeMap<u64, Arc<LogEntry>>,
    /// The latest time (by the backend's clock) at which this handle knew
    /// that no entry above some seq at or below `head` existed: the start
    /// of a request that found the log's end (a listing, a `404` probe) or
    /// of an entry PUT that succeeded.
    end_verified_at: Option<SystemTime>,
}

impl LogCache {
    fn insert(&mut self, entry: Arc<LogEntry>) {
        self.head = self.head.max(entry.seq);
        self.entries.insert(entry.seq, entry);
        while self.entries.len() > CACHED_ENTRIES {
            self.entries.pop_first();
        }
    }

    /// Records that at `at`, no entry above `last` existed.
    fn verified_end(&mut self, last: u64, at: SystemTime) {
        self.head = self.head.max(last);
        if self.end_verified_at.is_none_or(|verified| verified < at) {
            self.end_verified_at = Some(at);
        }
    }

    /// Whether a `404` for a seq above `head` still shows that the log ends
    /// there: the end was verified less than half the grace period ago.
    ///
    /// `SUBTLE:` gc deletes only entries older than the grace period, and
    /// every seq above `head` was created (if at all) after the
    /// verification. So within half the grace period of it, a seq above
    /// `head` that is missing was never written (rather than written and
    /// deleted), and a PUT there (sent now, landing within the other half)
    /// cannot land on a deleted seq. A clock that moved backwards counts
    /// as stale.
    fn end_fresh(&self, now: SystemTime, grace: Duration) -> bool {
        self.end_verified_at.is_some_and(|verified| {
            now.duration_since(verified)
                .is_ok_and(|age| age < grace / 2)
        })
    }

    /// Every entry in `(after, head]`, if all of them are cached and the
    /// head is an entry this handle read or wrote (a head only learned
    /// from a state's applied seq says nothing of the entries after it, so
    /// a cold handle lists rather than probing one seq at a time).
    fn tail(&self, after: u64) -> Option<Vec<Arc<LogEntry>>> {
        if !self.entries.contains_key(&self.head) {
            return None;
        }
        if after >= self.head {
            return Some(Vec::new());
        }
        let tail: Vec<_> = self
            .entries
            .range(after + 1..=self.head)
            .map(|(_, entry)| Arc::clone(entry))
            .collect();
        (tail.len() as u64 == self.head - after).then_some(tail)
    }
}

/// The entries after some seq that still exist ([`S3Backend::log_tail`]).
pub(crate) struct LogTail {
    /// In seq order, up to the newest entry at the request that found the
    /// log's end.
    pub entries: Vec<Arc<LogEntry>>,
    /// Whether some seq between the one asked after and the newest entry
    /// is missing (deleted by gc).
    pub has_gaps: bool,
}

/// A shard as readers see it ([`S3Backend::with_log_tail`]).
pub(crate) struct LogView {
    /// The state with its log tail folded in.
    pub view: Arc<ShardState>,
    /// Whether any entry was folded in (writing `view` applies them).
    pub folded: bool,
    /// The state as read again (and its ETag) when the tail had gaps:
    /// `view` is built on it, so a write of `view` replaces it.
    pub reread: Option<(Arc<ShardState>, String)>,
}

impl LogView {
    fn unchanged(state: Arc<ShardState>) -> Self {
        LogView {
            view: state,
            folded: false,
            reread: None,
        }
    }
}

/// A change queued to the committer, its checks all encoded.
pub(crate) enum Request {
    Append {
        token: IdempotencyToken,
        fence: WriteFence,
        parts: Vec<AppendPart>,
        /// When the call's part objects were written: a call whose parts
        /// are older than half the grace period is not committed (gc may
        /// delete unreferenced parts after the grace period).
        uploaded_at: Option<tokio::time::Instant>,
        reply: oneshot::Sender<Result<Answer, BackendError>>,
    },
    Since {
        shard: ShardId,
        since: EncodedFrontier,
        fence: WriteFence,
        reply: oneshot::Sender<Result<Answer, BackendError>>,
    },
    Finalize {
        shard: ShardId,
        reply: oneshot::Sender<Result<Answer, BackendError>>,
    },
}

/// One shard's part of an append through the log, encoded.
pub(crate) struct LogAppend<T> {
    pub shard: ShardId,
    pub expected_upper: timely::progress::Antichain<T>,
    pub new_upper: timely::progress::Antichain<T>,
    /// The batch by reference to part objects.
    pub batch: BatchRef,
    pub parts: Vec<EncodedPart>,
    /// Whether the part objects are written already.
    pub uploaded: bool,
}

pub(crate) struct AppendPart {
    shard: ShardId,
    expected: EncodedFrontier,
    new: EncodedFrontier,
    batch: Option<BatchRef>,
}

impl Request {
    fn shards(&self) -> Vec<ShardId> {
        match self {
            Request::Append { parts, .. } => parts.iter().map(|part| part.shard).collect(),
            Request::Since { shard, .. } | Request::Finalize { shard, .. } => vec![*shard],
        }
    }

    fn batch_bytes(&self) -> usize {
        match self {
            Request::Append { parts, .. } => parts
                .iter()
                .filter_map(|part| part.batch.as_ref())
                .map(|batch| usize::try_from(batch.bytes()).unwrap_or(usize::MAX))
                .sum(),
            _ => 0,
        }
    }

    fn answer(self, answer: Result<Answer, BackendError>) {
        let reply = match self {
            Request::Append { reply, .. }
            | Request::Since { reply, .. }
            | Request::Finalize { reply, .. } => reply,
        };
        // A caller that went away no longer wants the answer.
        let _ = reply.send(answer);
    }
}

/// The committer's answer to one call.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Applied (now, or by an earlier attempt with the same token).
    Applied,
    /// Nothing written: these parts (by index in the call) mismatch, with
    /// the shard's upper and its oldest remembered lower.
    Mismatches(Vec<(usize, EncodedFrontier, Option<EncodedFrontier>)>),
    /// The since the shard has after a downgrade.
    Since(EncodedFrontier),
}

/// What checking a call against the shards decided.
enum Judgement {
    /// Goes into the entry; answered so once it is written.
    Accept(LogCall, Answer),
    /// Answered without a write.
    Answer(Result<Answer, BackendError>),
}

/// The committer's view of the shards it writes: each state with every
/// entry up to `head` folded in (batches left out: checks do not need them).
#[derive(Default)]
struct Committer {
    head: u64,
    shards: HashMap<ShardId, ShardState>,
    /// The shards the group being committed names.
    in_use: Vec<ShardId>,
}

/// A state without its batches, for checks.
fn light(state: &ShardState) -> ShardState {
    let mut light = state.clone();
    light.batches.clear();
    light.retired.clear();
    light
}

impl S3Backend {
    /// The highest log seq this handle knows exists.
    pub(crate) fn known_log_head(&self) -> u64 {
        lock(&self.inner.log).head
    }

    fn learn_entry(&self, entry: Arc<LogEntry>) {
        lock(&self.inner.log).insert(entry);
    }

    fn learn_head(&self, head: u64) {
        let mut log = lock(&self.inner.log);
        log.head = log.head.max(head);
    }

    /// Entry `seq`, if this handle holds it.
    pub(crate) fn cached_log_entry(&self, seq: u64) -> Option<Arc<LogEntry>> {
        lock(&self.inner.log).entries.get(&seq).cloned()
    }

    /// Reads entry `seq`; `None` if it does not exist.
    pub(crate) async fn get_log_entry(
        &self,
        seq: u64,
    ) -> Result<Option<Arc<LogEntry>>, BackendError> {
        if let Some(entry) = lock(&self.inner.log).entries.get(&seq) {
            return Ok(Some(Arc::clone(entry)));
        }
        let store = self.store();
        let key = store.keys.log_entry(seq);
        let Some(bytes) = store.get("get_log_entry", &key).await? else {
            return Ok(None);
        };
        let entry = Arc::new(LogEntry::from_bytes(&key, seq, &bytes)?);
        self.learn_entry(Arc::clone(&entry));
        Ok(Some(entry))
    }

    /// Every entry with a seq above `after` that still exists, in seq
    /// order, as of a request that found nothing newer.
    ///
    /// If this handle holds every entry from `after` to its head and
    /// verified where the log ended less than half the grace period ago
    /// ([`LogCache::end_fresh`]), it probes the next seqs until one is
    /// missing; otherwise it lists the log after `after` and reads the
    /// entries it does not hold.
    ///
    /// `SUBTLE:` entries are created in seq order (a committer writes
    /// `head + 1` only once entry `head` exists) and never change, and gc
    /// never deletes the highest entry, so a listing shows where the log
    /// ends at that request, and so does a missing seq while the end is
    /// fresh: the tail read is linearized there. Seqs gc deleted leave
    /// gaps ([`LogTail::has_gaps`]); what a reader does about them is
    /// [`with_log_tail`](Self::with_log_tail)'s business.
    pub(crate) async fn log_tail(&self, after: u64) -> Result<LogTail, BackendError> {
        let cached = lock(&self.inner.log).tail(after);
        let Some(mut entries) = cached else {
            return self.list_log_tail(after).await;
        };
        let mut next = entries.last().map_or(after, |entry| entry.seq) + 1;
        loop {
            let probed_at = self.clock().now();
            if !lock(&self.inner.log).end_fresh(probed_at, self.config().grace_period) {
                return self.list_log_tail(after).await;
            }
            match self.get_log_entry(next).await? {
                Some(entry) => {
                    entries.push(entry);
                    next += 1;
                }
                None => {
                    lock(&self.inner.log).verified_end(next - 1, probed_at);
                    return Ok(LogTail {
                        entries,
                        has_gaps: false,
                    });
                }
            }
        }
    }

    async fn list_log_tail(&self, after: u64) -> Result<LogTail, BackendError> {
        let store = self.store();
        let dir = store.keys.log_dir();
        let start_after = if after == 0 {
            dir.clone()
        } else {
            store.keys.log_entry(after)
        };
        let listed_at = self.clock().now();
        let keys = store
            .list_keys_after("list_log_tail", &dir, &start_after)
            .await?;
        let mut seqs = Vec::with_capacity(keys.len());
        for key in &keys {
            let Some(seq) = store.keys.log_seq(key).filter(|&seq| seq > after) else {
                return Err(BackendError::determinate(
                    DeterminateKind::Corrupted,
                    format!("unexpected object in the commit log: key={key}"),
                ));
            };
            seqs.push(seq);
        }
        lock(&self.inner.log).verified_end(seqs.last().copied().unwrap_or(after), listed_at);
        // Seqs gc deleted before the listing are missing from it.
        let mut has_gaps = seqs
            .iter()
            .zip(std::iter::once(after).chain(seqs.iter().copied()))
            .any(|(&seq, previous)| seq != previous + 1);
        let reads = seqs
            .iter()
            .map(|&seq| async move { self.get_log_entry(seq).await })
            .collect();
        let mut entries = Vec::with_capacity(seqs.len());
        for entry in bounded_in_order(reads, TAIL_FETCH_CONCURRENCY).await {
            match entry? {
                Some(entry) => entries.push(entry),
                // Deleted by gc since the listing: a gap like the others
                // (never the last entry: gc keeps the highest one).
                None => has_gaps = true,
            }
        }
        Ok(LogTail { entries, has_gaps })
    }

    /// A log-mode state with `tail` (the entries after its applied seq, in
    /// order) folded in.
    pub(crate) fn fold_tail(
        shard: ShardId,
        state: &ShardState,
        tail: &[Arc<LogEntry>],
    ) -> ShardState {
        let mut view = state.clone();
        let applied = state.log.map_or(0, |link| link.applied);
        for entry in tail.iter().filter(|entry| entry.seq > applied) {
            fold_entry(&mut view, shard, entry);
        }
        view
    }

    /// The shard as readers see it: a log-mode state with its log tail
    /// folded in; any other state as it is.
    ///
    /// `SUBTLE:` if the tail has gaps (entries gc deleted), the state is
    /// read again after the listing and the tail folded into that one. gc
    /// deletes an entry only once every shard it names has an `applied` at
    /// or past it in its stored state, and `applied` never decreases. So a
    /// deleted entry that named this shard is at or below the `applied` of
    /// the state read after the listing: the entries missing above that
    /// `applied` did not name it, and the state plus the listed entries
    /// above its `applied` is the whole shard as of the listing's newest
    /// entry.
    pub(crate) async fn with_log_tail(
        &self,
        shard: ShardId,
        state: Arc<ShardState>,
    ) -> Result<LogView, BackendError> {
        let Some(link) = state.log else {
            return Ok(LogView::unchanged(state));
        };
        self.learn_head(link.applied);
        let tail = self.log_tail(link.applied).await?;
        let (base, reread) = if tail.has_gaps {
            let (again, etag) = self.read_state_and_etag(shard).await?;
            let applied_again = again.log.map(|link| link.applied);
            if applied_again.is_none_or(|applied| applied < link.applied) {
                return Err(BackendError::determinate(
                    DeterminateKind::Corrupted,
                    format!(
                        "a log-mode shard's state went back in the log: shard={shard} applied={} applied_now={applied_again:?}",
                        link.applied
                    ),
                ));
            }
            (Arc::clone(&again), Some((again, etag)))
        } else {
            (state, None)
        };
        let applied = base.log.map_or(0, |link| link.applied);
        if tail.entries.iter().all(|entry| entry.seq <= applied) {
            return Ok(LogView {
                view: base,
                folded: false,
                reread,
            });
        }
        Ok(LogView {
            view: Arc::new(Self::fold_tail(shard, &base, &tail.entries)),
            folded: true,
            reread,
        })
    }

    /// Whether this handle knows `shard` to be in log mode (from the state
    /// it last saw).
    pub(crate) fn known_log_mode(&self, shard: ShardId) -> bool {
        lock(&self.inner.cache)
            .get(&shard)
            .is_some_and(|cached| cached.state.log.is_some())
    }

    /// Whether an append to these shards goes through the log: this handle
    /// writes through it, or it knows one of them is in log mode.
    pub(crate) fn appends_through_log(&self, shards: impl IntoIterator<Item = ShardId>) -> bool {
        self.config().commit_log || shards.into_iter().any(|shard| self.known_log_mode(shard))
    }

    /// `compare_and_append_all` through the commit log: the parts that do
    /// not go inline are written first, then the call is queued to the
    /// committer and answered when its entry is written (or it is refused).
    pub(crate) async fn log_append_all<T: StorageTimestamp>(
        &self,
        appends: Vec<ShardAppend<T>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<T>>, BackendError> {
        let mut inputs = Vec::with_capacity(appends.len());
        for append in appends {
            let rows = append
                .updates
                .into_iter()
                .map(|update| (update.row, update.timestamp, update.diff))
                .collect();
            let (batch, parts) = encode_parts(
                rows,
                &append.expected_upper,
                &append.new_upper,
                &append.expected_upper,
                self.config().part_size_bytes,
            )
            .map_err(|err| err.into_backend_error(append.shard))?;
            inputs.push(LogAppend {
                shard: append.shard,
                expected_upper: append.expected_upper,
                new_upper: append.new_upper,
                batch,
                parts,
                uploaded: false,
            });
        }
        self.log_append_encoded(inputs, token, fence).await
    }

    /// [`log_append_all`](Self::log_append_all) of batches already encoded
    /// (and possibly written).
    pub(crate) async fn log_append_encoded<T: StorageTimestamp>(
        &self,
        inputs: Vec<LogAppend<T>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<T>>, BackendError> {
        let mut parts = Vec::with_capacity(inputs.len());
        let mut uploads = Vec::new();
        let mut written_before = false;
        for input in &inputs {
            let batch = if input.parts.is_empty() {
                None
            } else if input.uploaded {
                written_before = true;
                Some(input.batch.clone())
            } else if let Some(inline) =
                inline_batch(&input.batch, &input.parts, self.config().inline_batch_bytes)
            {
                Some(inline)
            } else {
                uploads.push((input.shard, input.parts.as_slice()));
                Some(input.batch.clone())
            };
            parts.push(AppendPart {
                shard: input.shard,
                expected: encode_frontier(&input.expected_upper),
                new: encode_frontier(&input.new_upper),
                batch,
            });
        }
        let started = tokio::time::Instant::now();
        // SUBTLE: part objects are written (and acknowledged) before the
        // entry that references them.
        for uploaded in join_all(
            uploads
                .iter()
                .map(|(shard, parts)| self.upload_parts(*shard, parts)),
        )
        .await
        {
            uploaded?;
        }
        let uploaded_at = (written_before || !uploads.is_empty()).then_some(started);
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Append {
            token,
            fence,
            parts,
            uploaded_at,
            reply,
        })?;
        let answer = receive(answer).await;
        let discard = |backend: &S3Backend| {
            for input in inputs.iter().filter(|input| input.uploaded) {
                backend.discard_parts_in_background(input.shard, &input.parts);
            }
            for (shard, parts) in &uploads {
                backend.discard_parts_in_background(*shard, parts);
            }
        };
        match answer {
            Ok(Answer::Applied) => Ok(Ok(())),
            Ok(Answer::Mismatches(refused)) => {
                discard(self);
                Ok(Err(UpperMismatches {
                    mismatches: refused
                        .into_iter()
                        .map(|(index, current, oldest)| {
                            let input = &inputs[index];
                            let oldest = oldest.map(decode_frontier::<T>);
                            let earlier =
                                contract::earlier_attempts(&input.new_upper, oldest.as_ref());
                            (
                                input.shard,
                                mismatch(input.expected_upper.clone(), current, earlier),
                            )
                        })
                        .collect(),
                }))
            }
            Ok(Answer::Since(_)) => Err(BackendError::indeterminate(
                "the commit log answered an append as a since downgrade".to_string(),
            )),
            Err(err) => {
                // SUBTLE: only a determinate failure proves the parts are
                // unreferenced; otherwise gc collects them.
                if err.is_determinate() {
                    discard(self);
                }
                Err(err)
            }
        }
    }

    /// `downgrade_since` of a log-mode shard, through the log.
    pub(crate) async fn log_downgrade_since(
        &self,
        shard: ShardId,
        since: EncodedFrontier,
        fence: WriteFence,
    ) -> Result<EncodedFrontier, BackendError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Since {
            shard,
            since,
            fence,
            reply,
        })?;
        match receive(answer).await? {
            Answer::Since(since) => Ok(since),
            other => Err(BackendError::indeterminate(format!(
                "the commit log answered a since downgrade as something else: shard={shard} answer={other:?}"
            ))),
        }
    }

    /// `finalize` of a log-mode shard, through the log (the caller deletes
    /// the parts and the marker afterwards).
    pub(crate) async fn log_finalize(&self, shard: ShardId) -> Result<(), BackendError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Finalize { shard, reply })?;
        receive(answer).await.map(|_| ())
    }

    /// Queues a request to this handle's committer, starting it if needed.
    fn submit(&self, request: Request) -> Result<(), BackendError> {
        let mut committer = lock(&self.inner.committer);
        let request = match committer.as_ref() {
            Some(sender) => match sender.send(request) {
                Ok(()) => return Ok(()),
                // The committer's runtime ended: start another.
                Err(mpsc::error::SendError(request)) => request,
            },
            None => request,
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(run_committer(weak, receiver));
        sender.send(request).map_err(|_| {
            BackendError::indeterminate("the commit log committer stopped at once".to_string())
        })?;
        *committer = Some(sender);
        Ok(())
    }

    /// Folds the log into `shard`'s state (one CAS), if it has a tail.
    pub(crate) async fn apply_log(&self, shard: ShardId) -> Result<(), BackendError> {
        self.update_state(shard, true, |_, _| Ok(Step::Done(())))
            .await
            .map(|_| ())
    }

    /// Starts folding the shards this handle wrote entries for into their
    /// states, in the background: those with `at_least` unapplied entries.
    pub(crate) fn apply_in_background(&self, at_least: u32) {
        if self.log_applier_held() {
            return;
        }
        self.gc_log_in_background();
        let due: Vec<ShardId> = {
            let mut unapplied = lock(&self.inner.unapplied);
            let due: Vec<ShardId> = unapplied
                .iter()
                .filter(|(_, count)| **count >= at_least)
                .map(|(shard, _)| *shard)
                .collect();
            for shard in &due {
                unapplied.remove(shard);
            }
            due
        };
        for shard in due {
            let backend = self.clone();
            self.spawn_background(async move {
                if let Err(err) = backend.apply_log(shard).await {
                    tracing::debug!(%shard, error = %err, "could not fold the commit log into a state; readers fold it");
                }
            });
        }
    }

    /// Whether tests hold the applier ([`hold_log_applier`](Self::hold_log_applier)).
    pub(crate) fn log_applier_held(&self) -> bool {
        self.inner.applier_held.load(Ordering::SeqCst)
    }

    /// Stops (or restarts) the background folding of the log into states
    /// (by the applier, and by log gc, which then deletes only entries
    /// already folded in), so tests can look at a log that is not applied.
    #[doc(hidden)]
    pub fn hold_log_applier(&self, hold: bool) {
        self.inner.applier_held.store(hold, Ordering::SeqCst);
    }

    /// Writes one group of queued calls as (at most) one entry.
    async fn commit_group(&self, committer: &mut Committer, requests: Vec<Request>) {
        // Every shard named must be known in log mode, as of the head.
        let mut pending = Vec::with_capacity(requests.len());
        let mut needed: Vec<ShardId> = requests.iter().flat_map(Request::shards).collect();
        needed.sort();
        needed.dedup();
        committer.in_use.clone_from(&needed);
        let loads = join_all(
            needed
                .iter()
                .filter(|shard| !committer.shards.contains_key(shard))
                .map(|&shard| async move { (shard, self.load_for_log(shard).await) }),
        )
        .await;
        let mut failed: HashMap<ShardId, BackendError> = HashMap::new();
        for (shard, loaded) in loads {
            match loaded {
                Ok(state) => {
                    if committer.shards.len() >= COMMITTER_SHARDS {
                        committer.shards.clear();
                    }
                    committer.shards.insert(shard, state);
                }
                Err(err) => {
                    failed.insert(shard, err);
                }
            }
        }
        for request in requests {
            match request.shards().iter().find_map(|shard| failed.get(shard)) {
                Some(err) => request.answer(Err(err.clone())),
                None => pending.push(request),
            }
        }
        if pending.is_empty() {
            return;
        }
        if let Err(err) = self.align(committer).await {
            answer_all_with(pending, &err);
            return;
        }

        let mut fresh = false;
        for _ in 0..MAX_ENTRY_ATTEMPTS {
            // Check every call in order against the shards as of the head
            // plus the calls accepted before it.
            let mut overlay: HashMap<ShardId, ShardState> = HashMap::new();
            let mut judged = Vec::with_capacity(pending.len());
            for request in &pending {
                judged.push(judge(&committer.shards, &mut overlay, request, self));
            }
            let refused_any = judged
                .iter()
                .any(|judgement| matches!(judgement, Judgement::Answer(_)));
            // SUBTLE: an answer without a write must come from a fresh read
            // of the log: read the tail first and judge again.
            if refused_any && !fresh {
                match self.caught_up_for(committer, pending).await {
                    Some(requests) => pending = requests,
                    None => return,
                }
                fresh = true;
                continue;
            }
            let mut accepted = Vec::new();
            let mut calls = Vec::new();
            for (request, judgement) in pending.drain(..).zip(judged) {
                match judgement {
                    Judgement::Answer(answer) => request.answer(answer),
                    Judgement::Accept(call, answer) => {
                        accepted.push((request, answer));
                        calls.push(call);
                    }
                }
            }
            if accepted.is_empty() {
                return;
            }
            let seq = committer.head + 1;
            // SUBTLE: never PUT at a seq that may have existed and been
            // deleted by gc (the PUT would succeed and the shards that
            // folded past it would ignore it): only above every seq this
            // handle knows exists, and within half the grace period of
            // verifying where the log ended (decision 120).
            if !self.may_write_entry(seq) {
                match self.caught_up_for(committer, requests_of(accepted)).await {
                    Some(requests) => pending = requests,
                    None => return,
                }
                fresh = true;
                continue;
            }
            let sent_at = self.clock().now();
            let entry = LogEntry {
                format: LOG_ENTRY_FORMAT,
                seq,
                written_at_ms: epoch_millis(sent_at),
                attempt: Uuid::new_v4(),
                calls,
            };
            match self.put_log_entry(&entry).await {
                Ok(true) => {
                    self.acknowledge(committer, entry, sent_at, accepted);
                    return;
                }
                // Another handle wrote this seq: read the tail, judge again.
                Ok(false) => {}
                Err(err) => {
                    let answer = if err.is_determinate() {
                        err
                    } else {
                        match self.resolve_entry_put(&entry).await {
                            Ok(true) => {
                                self.acknowledge(committer, entry, sent_at, accepted);
                                return;
                            }
                            Ok(false) => {
                                match self.caught_up_for(committer, requests_of(accepted)).await {
                                    Some(requests) => pending = requests,
                                    None => return,
                                }
                                fresh = true;
                                continue;
                            }
                            Err(resolve_err) => {
                                tracing::debug!(seq, error = %resolve_err, "could not read back a commit log entry");
                                err
                            }
                        }
                    };
                    for (request, _) in accepted {
                        request.answer(Err(answer.clone()));
                    }
                    return;
                }
            }
            match self.caught_up_for(committer, requests_of(accepted)).await {
                Some(requests) => pending = requests,
                None => return,
            }
            fresh = true;
        }
        for request in pending {
            request.answer(Err(BackendError::determinate(
                DeterminateKind::Conflict,
                format!(
                    "the commit log moved under every attempt, giving up: attempts={MAX_ENTRY_ATTEMPTS}"
                ),
            )));
        }
    }

    /// Creates `entry` iff its seq is free: `true` written, `false` taken.
    async fn put_log_entry(&self, entry: &LogEntry) -> Result<bool, BackendError> {
        let store = self.store();
        let key = store.keys.log_entry(entry.seq);
        match store
            .put_conditional("put_log_entry", &key, entry.to_bytes(), Condition::Absent)
            .await?
        {
            ConditionalPut::Written(_) => Ok(true),
            ConditionalPut::Refused => Ok(false),
        }
    }

    /// After an indeterminate PUT of `entry`: `true` if it is there, `false`
    /// if another entry took its seq.
    ///
    /// # Errors
    ///
    /// Indeterminate if the seq is still free: the PUT may yet land there
    /// (and only there), which a retry with the token finds.
    async fn resolve_entry_put(&self, entry: &LogEntry) -> Result<bool, BackendError> {
        match self.get_log_entry(entry.seq).await? {
            Some(found) => Ok(found.attempt == entry.attempt),
            None => Err(BackendError::indeterminate(format!(
                "a commit log entry write failed and its seq is still free: key={}",
                self.store().keys.log_entry(entry.seq)
            ))),
        }
    }

    /// Records entry `entry` as written: in the committer's shards, the
    /// cache, and the shards the applier folds.
    ///
    /// `sent_at` is when its PUT was sent: the seq was free then, so no
    /// entry above it existed.
    /// Records `entry` as committed and answers each accepted call.
    fn acknowledge(
        &self,
        committer: &mut Committer,
        entry: LogEntry,
        sent_at: SystemTime,
        accepted: Vec<(Request, Answer)>,
    ) {
        self.committed(committer, entry, sent_at);
        for (request, answer) in accepted {
            request.answer(Ok(answer));
        }
    }

    /// Reads the log's tail into `committer` so that `requests` can be
    /// judged again: the requests back, or `None` when the read failed and
    /// each of them was answered with its error.
    async fn caught_up_for(
        &self,
        committer: &mut Committer,
        requests: Vec<Request>,
    ) -> Option<Vec<Request>> {
        match self.catch_up(committer).await {
            Ok(()) => Some(requests),
            Err(err) => {
                answer_all_with(requests, &err);
                None
            }
        }
    }

    fn committed(&self, committer: &mut Committer, entry: LogEntry, sent_at: SystemTime) {
        let entry = Arc::new(entry);
        lock(&self.inner.log).verified_end(entry.seq, sent_at);
        // Every state the committer holds was at `entry.seq - 1`.
        for (shard, state) in &mut committer.shards {
            fold_entry(state, *shard, &entry);
            state.batches.clear();
        }
        committer.head = entry.seq;
        let mut named: Vec<ShardId> = entry.parts().map(|(_, part)| part.shard).collect();
        named.sort();
        named.dedup();
        self.learn_entry(entry);
        {
            let mut unapplied = lock(&self.inner.unapplied);
            for shard in named {
                *unapplied.entry(shard).or_default() += 1;
            }
        }
        self.apply_in_background(APPLY_AFTER_ENTRIES);
    }

    /// Brings the committer's shards to one head, from the entries this
    /// handle holds if it can (no request), else as [`catch_up`](Self::catch_up).
    async fn align(&self, committer: &mut Committer) -> Result<(), BackendError> {
        let cached = {
            let log = lock(&self.inner.log);
            let oldest = committer
                .shards
                .values()
                .map(|state| state.log.map_or(0, |link| link.applied))
                .min()
                .unwrap_or(committer.head)
                .min(committer.head);
            let newest = committer
                .shards
                .values()
                .map(|state| state.log.map_or(0, |link| link.applied))
                .max()
                .unwrap_or(0);
            log.tail(oldest)
                .filter(|_| newest <= log.head)
                .map(|tail| (tail, log.head.max(committer.head)))
        };
        let Some((tail, head)) = cached else {
            return self.catch_up(committer).await;
        };
        for entry in &tail {
            for (shard, state) in &mut committer.shards {
                let applied = state.log.map_or(0, |link| link.applied);
                if entry.seq > applied {
                    fold_entry(state, *shard, entry);
                    state.batches.clear();
                }
            }
        }
        committer.head = head;
        for state in committer.shards.values_mut() {
            state.log = Some(LogLink { applied: head });
        }
        Ok(())
    }

    /// Whether the committer may PUT entry `seq`: it is above every seq
    /// this handle knows exists, and the log's end was verified less than
    /// half the grace period ago ([`LogCache::end_fresh`]).
    fn may_write_entry(&self, seq: u64) -> bool {
        let now = self.clock().now();
        let log = lock(&self.inner.log);
        log.head < seq && log.end_fresh(now, self.config().grace_period)
    }

    /// Brings the committer's shards to the log's current head.
    async fn catch_up(&self, committer: &mut Committer) -> Result<(), BackendError> {
        for _ in 0..MAX_CATCH_UP_ROUNDS {
            let oldest = committer
                .shards
                .values()
                .map(|state| state.log.map_or(0, |link| link.applied))
                .min()
                .unwrap_or(committer.head)
                .min(committer.head);
            let tail = self.log_tail(oldest).await?;
            if tail.has_gaps {
                self.reload_after_gaps(committer).await?;
            }
            for entry in &tail.entries {
                for (shard, state) in &mut committer.shards {
                    let applied = state.log.map_or(0, |link| link.applied);
                    if entry.seq > applied {
                        fold_entry(state, *shard, entry);
                        state.batches.clear();
                    }
                }
            }
            let listed_end = tail.entries.last().map_or(oldest, |entry| entry.seq);
            committer.head = committer.head.max(listed_end);
            let newest = committer
                .shards
                .values()
                .map(|state| state.log.map_or(0, |link| link.applied))
                .max()
                .unwrap_or(0);
            // A state read again after the listing may be past it: read on
            // from the listing's end, so every shard reaches one head.
            if newest <= committer.head {
                for state in committer.shards.values_mut() {
                    state.log = Some(LogLink {
                        applied: committer.head,
                    });
                }
                return Ok(());
            }
        }
        Err(BackendError::determinate(
            DeterminateKind::Conflict,
            format!(
                "the commit log moved under every catch-up of the committer, giving up: rounds={MAX_CATCH_UP_ROUNDS}"
            ),
        ))
    }

    /// After a tail with gaps (entries gc deleted), reads the states of the
    /// shards in use again and keeps, per shard, whichever of the stored
    /// state and the committer's view is further along the log; the others
    /// are dropped (loaded again when next named).
    ///
    /// `SUBTLE:` as for readers ([`with_log_tail`](Self::with_log_tail)):
    /// a deleted entry that named a shard is at or below the `applied` of
    /// its state read after the listing. If that `applied` is not past the
    /// committer's view, no missing seq above the view named the shard.
    async fn reload_after_gaps(&self, committer: &mut Committer) -> Result<(), BackendError> {
        let in_use: std::collections::HashSet<ShardId> = committer.in_use.iter().copied().collect();
        committer.shards.retain(|shard, _| in_use.contains(shard));
        let reads = committer
            .shards
            .keys()
            .map(|&shard| async move { (shard, self.read_state_and_etag(shard).await) })
            .collect();
        for (shard, read) in bounded_in_order(reads, TAIL_FETCH_CONCURRENCY).await {
            let (stored, _) = read?;
            let Some(stored_link) = stored.log else {
                return Err(BackendError::determinate(
                    DeterminateKind::Corrupted,
                    format!("a log-mode shard's state left log mode: shard={shard}"),
                ));
            };
            let view = committer
                .shards
                .get_mut(&shard)
                .expect("the shard was read because the committer holds it");
            if view
                .log
                .is_none_or(|link| link.applied < stored_link.applied)
            {
                let mut stored = light(&stored);
                stored.pending = None;
                *view = stored;
            }
        }
        Ok(())
    }

    /// A shard's state for the committer, in log mode: a plain shard is
    /// converted first (one CAS), at the head this handle knows.
    ///
    /// `SUBTLE:` every entry that names a shard is written by a committer
    /// that saw the shard in log mode, at a seq above its head, which is at
    /// least the seq recorded at conversion (entries up to it existed
    /// then): so no entry at or below the recorded seq names the shard.
    async fn load_for_log(&self, shard: ShardId) -> Result<ShardState, BackendError> {
        let head = self.known_log_head();
        let (_, state) = self
            .update_state(shard, false, |view, _fresh| {
                if view.log.is_some() {
                    return Ok(Step::Done(()));
                }
                let mut next = view.successor();
                next.log = Some(LogLink { applied: head });
                Ok(Step::Write(next, ()))
            })
            .await?;
        let mut state = light(&state);
        // The committer folds from the state's own applied seq.
        if let Some(link) = state.log {
            self.learn_head(link.applied);
        }
        state.pending = None;
        Ok(state)
    }
}

/// Checks one call against the shards (`base` as of the head, `overlay`
/// with the calls accepted before it) and, if it is accepted, folds it into
/// `overlay`.
fn judge(
    base: &HashMap<ShardId, ShardState>,
    overlay: &mut HashMap<ShardId, ShardState>,
    request: &Request,
    backend: &S3Backend,
) -> Judgement {
    let current = |shard: ShardId| -> ShardState {
        overlay
            .get(&shard)
            .or_else(|| base.get(&shard))
            .cloned()
            .unwrap_or_else(ShardState::new_shard::<u64>)
    };
    match request {
        Request::Append {
            token,
            fence,
            parts,
            uploaded_at,
            ..
        } => {
            let states: Vec<ShardState> = parts.iter().map(|part| current(part.shard)).collect();
            // SUBTLE: the token first: after an indeterminate commit a
            // retry must find its own write (which moved the upper).
            if parts
                .iter()
                .zip(&states)
                .any(|(part, state)| state.token_applied(*token, part.expected, part.new))
            {
                return Judgement::Answer(Ok(Answer::Applied));
            }
            let mut epochs = Vec::with_capacity(parts.len());
            for (part, state) in parts.iter().zip(&states) {
                match contract::check_fence(part.shard, state.writer_epoch, *fence) {
                    Ok(epoch) => epochs.push(epoch),
                    Err(err) => return Judgement::Answer(Err(err)),
                }
            }
            let mismatches: Vec<_> = parts
                .iter()
                .zip(&states)
                .enumerate()
                .filter(|(_, (part, state))| state.upper != part.expected)
                .map(|(index, (_, state))| (index, state.upper, state.oldest_remembered_lower()))
                .collect();
            if !mismatches.is_empty() {
                return Judgement::Answer(Ok(Answer::Mismatches(mismatches)));
            }
            if let Some(uploaded_at) = uploaded_at
                && uploaded_at.elapsed() >= backend.config().grace_period / 2
            {
                return Judgement::Answer(Err(BackendError::determinate(
                    DeterminateKind::Conflict,
                    "an append's parts were written more than half the grace period ago, not committed"
                        .to_string(),
                )));
            }
            let mut log_parts = Vec::with_capacity(parts.len());
            for ((part, mut state), epoch) in parts.iter().zip(states).zip(epochs) {
                state.apply_append(None, *token, part.expected, part.new, epoch);
                overlay.insert(part.shard, state);
                log_parts.push(LogPart {
                    shard: part.shard,
                    change: Change::Append {
                        expected_upper: part.expected,
                        new_upper: part.new,
                        batch: part.batch.clone(),
                    },
                    epoch,
                });
            }
            Judgement::Accept(
                LogCall {
                    token: Some(token.0),
                    fence: fence_epoch(*fence),
                    parts: log_parts,
                },
                Answer::Applied,
            )
        }
        Request::Since {
            shard,
            since,
            fence,
            ..
        } => {
            let mut state = current(*shard);
            let epoch = match contract::check_fence(*shard, state.writer_epoch, *fence) {
                Ok(epoch) => epoch,
                Err(err) => return Judgement::Answer(Err(err)),
            };
            let joined = frontier_join(state.since, *since);
            if joined == state.since && epoch == state.writer_epoch {
                return Judgement::Answer(Ok(Answer::Since(joined)));
            }
            state.since = joined;
            state.writer_epoch = epoch;
            overlay.insert(*shard, state);
            Judgement::Accept(
                LogCall {
                    token: None,
                    fence: fence_epoch(*fence),
                    parts: vec![LogPart {
                        shard: *shard,
                        change: Change::Since { since: joined },
                        epoch,
                    }],
                },
                Answer::Since(joined),
            )
        }
        Request::Finalize { shard, .. } => {
            let mut state = current(*shard);
            if state.finalized {
                return Judgement::Answer(Ok(Answer::Applied));
            }
            let epoch = state.writer_epoch;
            state.since = None;
            state.upper = None;
            state.finalized = true;
            state.tokens.clear();
            overlay.insert(*shard, state);
            Judgement::Accept(
                LogCall {
                    token: None,
                    fence: None,
                    parts: vec![LogPart {
                        shard: *shard,
                        change: Change::Finalize,
                        epoch,
                    }],
                },
                Answer::Applied,
            )
        }
    }
}

/// Answers every request with `err`.
fn answer_all_with(requests: Vec<Request>, err: &BackendError) {
    for request in requests {
        request.answer(Err(err.clone()));
    }
}

/// The requests of accepted calls, their answers set aside.
fn requests_of(accepted: Vec<(Request, Answer)>) -> Vec<Request> {
    accepted.into_iter().map(|(request, _)| request).collect()
}

fn fence_epoch(fence: WriteFence) -> Option<u64> {
    match fence {
        WriteFence::Unfenced => None,
        WriteFence::Epoch(epoch) => Some(epoch),
    }
}

async fn receive(
    answer: oneshot::Receiver<Result<Answer, BackendError>>,
) -> Result<Answer, BackendError> {
    answer.await.unwrap_or_else(|_| {
        Err(BackendError::indeterminate(
            "the commit log committer stopped before answering".to_string(),
        ))
    })
}

/// The committer task of one handle: runs until every clone of the handle
/// is dropped.
async fn run_committer(
    inner: std::sync::Weak<Inner>,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    let mut committer = Committer::default();
    loop {
        let idle_apply_due = inner
            .upgrade()
            .is_some_and(|inner| !lock(&inner.unapplied).is_empty());
        let first = if idle_apply_due {
            match tokio::time::timeout(APPLY_WHEN_IDLE_AFTER, requests.recv()).await {
                Ok(request) => request,
                Err(_) => {
                    if let Some(inner) = inner.upgrade() {
                        S3Backend { inner }.apply_in_background(1);
                    }
                    continue;
                }
            }
        } else {
            requests.recv().await
        };
        let Some(first) = first else {
            return;
        };
        let mut bytes = first.batch_bytes();
        let mut group = vec![first];
        while group.len() < MAX_CALLS_PER_ENTRY && bytes < MAX_ENTRY_BATCH_BYTES {
            match requests.try_recv() {
                Ok(request) => {
                    bytes += request.batch_bytes();
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let backend = S3Backend { inner };
        backend.commit_group(&mut committer, group).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, shard: ShardId) -> LogEntry {
        LogEntry {
            format: LOG_ENTRY_FORMAT,
            seq,
            written_at_ms: 1,
            attempt: Uuid::new_v4(),
            calls: vec![LogCall {
                token: Some(Uuid::new_v4()),
                fence: Some(3),
                parts: vec![LogPart {
                    shard,
                    change: Change::Append {
                        expected_upper: Some(seq as i64 - 1),
                        new_upper: Some(seq as i64),
                        batch: None,
                    },
                    epoch: 3,
                }],
            }],
        }
    }

    #[test]
    fn entries_round_trip_and_bad_ones_name_the_key() {
        let shard = ShardId::from_bytes([3; 16]);
        let written = entry(7, shard);
        let bytes = written.to_bytes();
        assert_eq!(LogEntry::from_bytes("k", 7, &bytes).unwrap(), written);
        let err = LogEntry::from_bytes("p/log/7", 8, &bytes).unwrap_err();
        assert_eq!(err.determinate_kind(), Some(DeterminateKind::Corrupted));
        assert!(err.to_string().contains("p/log/7"), "{err}");
        let err = LogEntry::from_bytes("p/log/x", 7, b"{not json").unwrap_err();
        assert_eq!(err.determinate_kind(), Some(DeterminateKind::Corrupted));
        assert!(err.to_string().contains("p/log/x"), "{err}");
        let future = String::from_utf8(bytes)
            .unwrap()
            .replace("\"format\":1", "\"format\":9");
        let err = LogEntry::from_bytes("p/log/y", 7, future.as_bytes()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("unknown format") && text.contains("p/log/y"),
            "{text}"
        );
    }

    #[test]
    fn folding_applies_only_the_named_shard_and_records_the_seq() {
        let shard = ShardId::from_bytes([1; 16]);
        let other = ShardId::from_bytes([2; 16]);
        let mut state = ShardState::new_shard::<u64>();
        state.log = Some(LogLink { applied: 0 });
        fold_entry(&mut state, shard, &entry(1, shard));
        fold_entry(&mut state, shard, &entry(2, other));
        assert_eq!(state.upper, Some(1));
        assert_eq!(state.writer_epoch, 3);
        assert_eq!(state.tokens.len(), 1);
        assert_eq!(state.log, Some(LogLink { applied: 2 }));
        let mut since = entry(3, shard);
        since.calls[0].parts[0].change = Change::Since { since: Some(1) };
        fold_entry(&mut state, shard, &since);
        assert_eq!(state.since, Some(1));
        let mut finalize = entry(4, shard);
        finalize.calls[0].parts[0].change = Change::Finalize;
        fold_entry(&mut state, shard, &finalize);
        assert!(state.finalized);
        assert_eq!(state.upper, None);
    }

    #[test]
    fn the_end_of_the_log_is_trusted_for_half_the_grace_period() {
        let grace = Duration::from_secs(60);
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut cache = LogCache::default();
        assert!(!cache.end_fresh(start, grace), "never verified");
        cache.verified_end(7, start);
        assert_eq!(cache.head, 7, "a verified end is a known seq");
        assert!(cache.end_fresh(start + Duration::from_secs(29), grace));
        assert!(!cache.end_fresh(start + Duration::from_secs(30), grace));
        assert!(
            !cache.end_fresh(start - Duration::from_secs(1), grace),
            "a clock that went back is stale"
        );
        // An older verification finishing late does not move it back.
        cache.verified_end(5, start - Duration::from_secs(20));
        assert_eq!(cache.head, 7);
        assert!(cache.end_fresh(start + Duration::from_secs(29), grace));
        cache.verified_end(8, start + Duration::from_secs(40));
        assert!(cache.end_fresh(start + Duration::from_secs(60), grace));
    }

    #[test]
    fn the_cache_knows_a_tail_only_when_it_holds_all_of_it() {
        let shard = ShardId::from_bytes([1; 16]);
        let mut cache = LogCache::default();
        assert!(cache.tail(0).is_none(), "a cold cache lists");
        cache.insert(Arc::new(entry(2, shard)));
        assert!(cache.tail(0).is_none(), "entry 1 is missing");
        assert_eq!(cache.tail(1).map(|tail| tail.len()), Some(1));
        cache.insert(Arc::new(entry(1, shard)));
        assert_eq!(cache.tail(0).map(|tail| tail.len()), Some(2));
        assert_eq!(cache.tail(2).map(|tail| tail.len()), Some(0));
        cache.head = 5;
        assert!(cache.tail(2).is_none(), "a head learned from a state lists");
        cache.insert(Arc::new(entry(5, shard)));
        assert!(cache.tail(2).is_none(), "entries 3 and 4 are missing");
        for seq in 3..(CACHED_ENTRIES as u64 + 10) {
            cache.insert(Arc::new(entry(seq, shard)));
        }
        assert_eq!(cache.entries.len(), CACHED_ENTRIES);
        assert!(cache.tail(0).is_none());
    }
}
