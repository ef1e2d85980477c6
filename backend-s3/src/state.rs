//! A shard's state object: since, upper, the batches that hold its data,
//! the recent idempotency tokens, and the parts waiting out their grace
//! period.
//!
//! Frontiers are stored encoded: a totally ordered antichain is empty or one
//! time, and [`Codec64`] maps times to `i64` preserving order, so a frontier
//! is an `Option<i64>` (`None` = empty) and the state can be compared and
//! updated without knowing the timestamp type.
//!
//! Small batches are stored *inline*: their encoded part (the shared batch
//! codec, with its checksum) sits base64-encoded in the [`PartRef`] instead
//! of in an object of its own, so an append of a few rows is one conditional
//! PUT of the state (decision 064).
//!
//! A plain state (no pending intent, not in log mode), which every small
//! append rewrites, is stored in a compact, checksummed binary encoding
//! (decision 125); a state with an intent or a log link is JSON, and the
//! JSON form of every format stays readable. Every committed state carries
//! a `seqno` one greater than the state it replaced, so no two versions of a shard's state have the
//! same bytes (and so the same ETag): a compare-and-swap on the ETag can never
//! succeed against an older version that happens to look like the current
//! one.

use std::collections::VecDeque;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tidemark_storage_types::{BackendError, Codec64, DeterminateKind, IdempotencyToken};
use timely::progress::Timestamp;
use uuid::Uuid;

use crate::buckets::{ALL_BUCKETS, BucketSet};
use crate::codec::{
    BINARY_STATE_MAGIC, binary_state_format, decode_state_binary, encode_state_binary,
};

/// The state format this code writes for a plain state. Format 2 added
/// inline parts ([`PartRef::inline`]); format 1 states read as having none.
/// Format 3 added [`ShardState::writer_epoch`]; older states read as epoch
/// 0. Format 6 is format 3's contents in the binary encoding
/// ([`crate::codec::encode_state_binary`], decision 125): code that knows
/// only JSON refuses it as `Corrupted` rather than misreading it.
pub(crate) const STATE_FORMAT: u32 = 6;

/// The format of a state that holds a pending intent of a multi-shard
/// append ([`ShardState::pending`]). Only such states are written in it, so
/// code that does not know intents refuses them (rather than reading the
/// shard without a part that may have committed) and reads every other
/// state as before.
pub(crate) const INTENT_FORMAT: u32 = 4;

/// The format of a shard in log mode ([`ShardState::log`]): its state is
/// only part of the shard, the rest is in the commit log (decision 118).
/// Only such states are written in it, so code that does not know the log
/// refuses them (rather than reading the shard without its log entries).
pub(crate) const LOG_FORMAT: u32 = 5;

/// The newest state format this code reads.
pub(crate) const NEWEST_READABLE_FORMAT: u32 = STATE_FORMAT;

/// The oldest state format this code reads.
pub(crate) const OLDEST_READABLE_FORMAT: u32 = 1;

/// How many applied idempotency tokens a shard remembers (the contract asks
/// for at least 128).
pub(crate) const REMEMBERED_TOKENS: usize = 256;

pub(crate) use tidemark_storage_types::{EncodedFrontier, decode_frontier, encode_frontier};

/// Whether `frontier <= time` (some element of the frontier is `<= time`).
pub(crate) fn frontier_le_time(frontier: EncodedFrontier, time: i64) -> bool {
    frontier.is_some_and(|element| element <= time)
}

/// Whether frontier `left <= right` in the antichain order (the empty
/// frontier is the greatest).
pub(crate) fn frontier_le(left: EncodedFrontier, right: EncodedFrontier) -> bool {
    match (left, right) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(left), Some(right)) => left <= right,
    }
}

/// The join of two frontiers (the later of the two).
pub(crate) fn frontier_join(left: EncodedFrontier, right: EncodedFrontier) -> EncodedFrontier {
    if frontier_le(left, right) {
        right
    } else {
        left
    }
}

/// One part of a batch: a contiguous stretch of one of the batch's sorted
/// runs (updates sorted by row, then time), in a write-once object or, for a
/// small batch, inline in the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartRef {
    /// The object is `PREFIX/shards/SHARD/batches/ID` (an inline part has
    /// no object; its id only names it in errors).
    pub id: Uuid,
    /// Updates in the part.
    pub updates: u64,
    /// Encoded size of the part object.
    pub bytes: u64,
    /// The buckets its rows fall in ([`crate::buckets`]). A state written
    /// before parts recorded them reads as every bucket.
    #[serde(default = "every_bucket")]
    pub buckets: BucketSet,
    /// Which sorted run of the batch the part belongs to. A batch's parts
    /// are in run order, and the parts of one run are consecutive row
    /// ranges. A state written before batches had several runs reads as
    /// run 0 for every part: one run, as those batches were written.
    #[serde(default, skip_serializing_if = "is_first_run")]
    pub run: u32,
    /// The encoded part itself, when it is stored in the state rather than
    /// in an object (base64 in the JSON). A format 1 state has none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "inline_base64"
    )]
    pub inline: Option<Bytes>,
}

impl PartRef {
    /// Whether the part is stored in the state (it has no object).
    pub(crate) fn is_inline(&self) -> bool {
        self.inline.is_some()
    }
}

/// Inline part bodies as base64 strings.
mod inline_base64 {
    use aws_smithy_types::base64;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    // serde's `with` passes the field by reference.
    #[allow(clippy::ref_option)]
    pub(super) fn serialize<S: Serializer>(
        body: &Option<Bytes>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match body {
            Some(body) => serializer.serialize_some(&base64::encode(body)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Bytes>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        base64::decode(&text)
            .map(|body| Some(Bytes::from(body)))
            .map_err(|err| D::Error::custom(format!("inline part is not base64: {err}")))
    }
}

fn every_bucket() -> BucketSet {
    ALL_BUCKETS
}

fn is_first_run(run: &u32) -> bool {
    *run == 0
}

/// A batch: the updates of one append, or the merge of adjacent batches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BatchRef {
    /// Every (original) update time is `>= lower`.
    pub lower: EncodedFrontier,
    /// Every (original) update time is not `>= upper`.
    pub upper: EncodedFrontier,
    /// Times were advanced by this frontier when the batch was written.
    pub since: EncodedFrontier,
    /// The batch's parts, in `(row, time)` order.
    pub parts: Vec<PartRef>,
}

impl BatchRef {
    /// The batch's sorted runs, in order, each as its consecutive parts.
    pub(crate) fn runs(&self) -> impl Iterator<Item = &[PartRef]> {
        self.parts.chunk_by(|left, right| left.run == right.run)
    }

    /// Updates in the batch.
    pub(crate) fn updates(&self) -> u64 {
        self.parts.iter().map(|part| part.updates).sum()
    }

    /// Encoded bytes of the batch.
    pub(crate) fn bytes(&self) -> u64 {
        self.parts.iter().map(|part| part.bytes).sum()
    }
}

/// An idempotency token that was applied, with the bounds of its append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppliedToken {
    pub token: Uuid,
    pub expected_upper: EncodedFrontier,
    pub new_upper: EncodedFrontier,
}

/// A part no batch references any more, waiting out the grace period
/// before it is deleted (readers holding an older state may still fetch it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetiredPart {
    pub id: Uuid,
    /// When it was unreferenced, in milliseconds since the Unix epoch.
    pub retired_at_ms: u64,
}

/// The durable state of a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShardState {
    pub format: u32,
    /// One more than the version this state replaced.
    pub seqno: u64,
    pub since: EncodedFrontier,
    pub upper: EncodedFrontier,
    /// Set by finalize: the shard is sealed and its data gone.
    pub finalized: bool,
    /// Batches, oldest (lowest times) first.
    pub batches: Vec<BatchRef>,
    /// Recently applied tokens, oldest first.
    pub tokens: VecDeque<AppliedToken>,
    /// Unreferenced parts not yet deleted.
    pub retired: Vec<RetiredPart>,
    /// The highest writer epoch a fenced write brought: checked and raised
    /// by the same conditional PUT that writes.
    #[serde(default)]
    pub writer_epoch: u64,
    /// This shard's part of a multi-shard append that may not be decided
    /// yet: it applies iff the append's record says committed
    /// ([`crate::txn`]). Every other field is the state without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Box<Intent>>,
    /// Set iff the shard is in log mode: appends, since downgrades and
    /// finalize go through the commit log, and the shard is this state with
    /// every later log entry naming it folded in ([`crate::log`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogLink>,
}

/// How far a log-mode shard's state has taken in the commit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogLink {
    /// Every log entry with a seq at most this that names the shard is
    /// folded into the state; later ones are not.
    pub applied: u64,
}

/// One shard's part of a multi-shard append, written into the shard's state
/// before the append's record decides it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Intent {
    /// The attempt's record is `PREFIX/txns/TXN`.
    pub txn: Uuid,
    /// The shard's batch (none if its updates cancelled out or were empty).
    pub batch: Option<BatchRef>,
    /// The call's idempotency token.
    pub token: Uuid,
    pub expected_upper: EncodedFrontier,
    pub new_upper: EncodedFrontier,
    /// The writer epoch the shard has once the part applies.
    pub writer_epoch: u64,
}

/// How a multi-shard append's record decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Every shard's intent applies.
    Committed,
    /// No shard's intent applies.
    Aborted,
}

impl ShardState {
    /// The state of a new shard: `since = upper = [minimum]`, no data.
    pub(crate) fn new_shard<T: Timestamp + Codec64>() -> Self {
        let minimum = Some(T::minimum().encode());
        ShardState {
            format: STATE_FORMAT,
            seqno: 0,
            since: minimum,
            upper: minimum,
            finalized: false,
            batches: Vec::new(),
            tokens: VecDeque::new(),
            retired: Vec::new(),
            writer_epoch: 0,
            pending: None,
            log: None,
        }
    }

    /// The state that replaces this one: the same contents, the next seqno.
    pub(crate) fn successor(&self) -> Self {
        let mut next = self.clone();
        next.seqno += 1;
        // A state read in an older format is written in the current one.
        next.format = next.format_to_write();
        next
    }

    /// The format this state is written in: [`LOG_FORMAT`] iff the shard
    /// is in log mode, else [`INTENT_FORMAT`] iff it holds a pending intent.
    pub(crate) fn format_to_write(&self) -> u32 {
        if self.log.is_some() {
            LOG_FORMAT
        } else if self.pending.is_some() {
            INTENT_FORMAT
        } else {
            STATE_FORMAT
        }
    }

    /// Applies an append to this state: adds its batch (if any), moves the
    /// upper, records the writer epoch and remembers the token.
    pub(crate) fn apply_append(
        &mut self,
        batch: Option<&BatchRef>,
        token: IdempotencyToken,
        expected: EncodedFrontier,
        new: EncodedFrontier,
        epoch: u64,
    ) {
        self.upper = new;
        self.writer_epoch = epoch;
        if let Some(batch) = batch.filter(|batch| !batch.parts.is_empty()) {
            self.batches.push(batch.clone());
        }
        self.remember_token(token, expected, new);
    }

    /// The state as it is once its pending intent (if any) is decided:
    /// applied if `outcome` is committed, dropped if aborted. The same
    /// version (seqno), without the intent.
    #[must_use]
    pub(crate) fn decided(&self, outcome: Outcome) -> ShardState {
        let mut view = self.clone();
        if let Some(intent) = view.pending.take() {
            if outcome == Outcome::Committed {
                view.apply_append(
                    intent.batch.as_ref(),
                    IdempotencyToken(intent.token),
                    intent.expected_upper,
                    intent.new_upper,
                    intent.writer_epoch,
                );
            }
            view.format = view.format_to_write();
        }
        view
    }

    /// Whether `token` was applied with these bounds.
    pub(crate) fn token_applied(
        &self,
        token: IdempotencyToken,
        expected_upper: EncodedFrontier,
        new_upper: EncodedFrontier,
    ) -> bool {
        self.tokens.iter().any(|applied| {
            applied.token == token.0
                && applied.expected_upper == expected_upper
                && applied.new_upper == new_upper
        })
    }

    /// The `expected_upper` of the oldest remembered token once the window
    /// is full (older appends may have been forgotten), else `None`: see
    /// [`contract::earlier_attempts`](tidemark_storage_types::contract::earlier_attempts).
    pub(crate) fn oldest_remembered_lower(&self) -> Option<EncodedFrontier> {
        if self.tokens.len() < REMEMBERED_TOKENS {
            return None;
        }
        self.tokens.front().map(|oldest| oldest.expected_upper)
    }

    /// Remembers an applied token, forgetting the oldest beyond
    /// [`REMEMBERED_TOKENS`].
    pub(crate) fn remember_token(
        &mut self,
        token: IdempotencyToken,
        expected_upper: EncodedFrontier,
        new_upper: EncodedFrontier,
    ) {
        self.tokens.push_back(AppliedToken {
            token: token.0,
            expected_upper,
            new_upper,
        });
        while self.tokens.len() > REMEMBERED_TOKENS {
            self.tokens.pop_front();
        }
    }

    /// Every part object the batches and the pending intent reference
    /// (inline parts have none).
    pub(crate) fn referenced_parts(&self) -> impl Iterator<Item = &PartRef> {
        self.batches_with_pending()
            .flat_map(|batch| batch.parts.iter())
            .filter(|part| !part.is_inline())
    }

    /// The batches, then the pending intent's batch.
    fn batches_with_pending(&self) -> impl Iterator<Item = &BatchRef> {
        self.batches.iter().chain(
            self.pending
                .as_ref()
                .and_then(|intent| intent.batch.as_ref()),
        )
    }

    /// Encoded bytes of the parts stored inline in the state (the pending
    /// intent's included: they are in the same object).
    pub(crate) fn inline_bytes(&self) -> u64 {
        self.batches_with_pending()
            .flat_map(|batch| batch.parts.iter())
            .filter(|part| part.is_inline())
            .map(|part| part.bytes)
            .sum()
    }

    /// Stored updates.
    pub(crate) fn stored_updates(&self) -> u64 {
        self.batches.iter().map(BatchRef::updates).sum()
    }

    /// Stored bytes (encoded part sizes).
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.batches.iter().map(BatchRef::bytes).sum()
    }

    /// The state as stored: binary for a plain state of the current format,
    /// else JSON.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        encode_state_binary(self)
            .unwrap_or_else(|| serde_json::to_vec(self).expect("shard state serializes"))
    }

    /// Reads a stored state; `key` names the object in the error.
    ///
    /// # Errors
    ///
    /// `Determinate(Corrupted)` naming the key if the bytes are not a state
    /// of a known format.
    pub(crate) fn from_bytes(key: &str, bytes: &[u8]) -> Result<Self, BackendError> {
        fn not_valid(
            key: &str,
            err: impl std::error::Error + Send + Sync + 'static,
        ) -> BackendError {
            BackendError::determinate(
                DeterminateKind::Corrupted,
                format!("shard state object is not valid: key={key} error={err}"),
            )
            .caused_by(err)
        }
        fn unknown_format(key: &str, format: u32) -> BackendError {
            BackendError::determinate(
                DeterminateKind::Corrupted,
                format!(
                    "shard state has an unknown format: key={key} format={format} supported={OLDEST_READABLE_FORMAT}..={NEWEST_READABLE_FORMAT}"
                ),
            )
        }
        let state: ShardState = if bytes.starts_with(&BINARY_STATE_MAGIC) {
            // The binary encoding holds only plain states of its format. The
            // format is checked before the fields are read: a later one may
            // lay them out otherwise.
            match binary_state_format(bytes) {
                Some(format) if format != STATE_FORMAT => {
                    return Err(unknown_format(key, format));
                }
                _ => decode_state_binary(bytes).map_err(|err| not_valid(key, err))?,
            }
        } else {
            let state: ShardState =
                serde_json::from_slice(bytes).map_err(|err| not_valid(key, err))?;
            if !(OLDEST_READABLE_FORMAT..=NEWEST_READABLE_FORMAT).contains(&state.format) {
                return Err(unknown_format(key, state.format));
            }
            state
        };
        // Only log-mode states are written in the log format, and only they
        // carry a log link: anything else was not written by this code.
        if (state.format == LOG_FORMAT) != state.log.is_some() {
            return Err(BackendError::determinate(
                DeterminateKind::Corrupted,
                format!(
                    "shard state's format and log link disagree: key={key} format={} log_link={}",
                    state.format,
                    state.log.is_some()
                ),
            ));
        }
        Ok(state)
    }
}

/// A stored shard state, in either encoding, in its JSON form: for tools and
/// tests that inspect or edit a state object (the JSON form of every format
/// reads back).
///
/// # Errors
///
/// `Determinate(Corrupted)` naming `key` if the bytes are not a state of a
/// known format.
#[doc(hidden)]
pub fn stored_state_as_json(key: &str, bytes: &[u8]) -> Result<Vec<u8>, BackendError> {
    let state = ShardState::from_bytes(key, bytes)?;
    Ok(serde_json::to_vec(&state).expect("shard state serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontier_order_treats_empty_as_greatest() {
        assert!(frontier_le(Some(1), Some(2)));
        assert!(!frontier_le(Some(3), Some(2)));
        assert!(frontier_le(Some(3), None));
        assert!(!frontier_le(None, Some(3)));
        assert_eq!(frontier_join(Some(1), Some(4)), Some(4));
        assert_eq!(frontier_join(None, Some(4)), None);
        assert!(frontier_le_time(Some(2), 2));
        assert!(!frontier_le_time(None, i64::MAX));
    }

    #[test]
    fn tokens_are_bounded_and_matched_with_bounds() {
        let mut state = ShardState::new_shard::<u64>();
        let first = IdempotencyToken::new();
        state.remember_token(first, Some(0), Some(1));
        assert!(state.token_applied(first, Some(0), Some(1)));
        assert!(!state.token_applied(first, Some(0), Some(2)));
        for _ in 0..REMEMBERED_TOKENS {
            state.remember_token(IdempotencyToken::new(), Some(1), Some(2));
        }
        assert_eq!(state.tokens.len(), REMEMBERED_TOKENS);
        assert!(!state.token_applied(first, Some(0), Some(1)));
    }

    #[test]
    fn round_trip_and_corruption() {
        let mut state = ShardState::new_shard::<u64>().successor();
        state.batches.push(BatchRef {
            lower: Some(0),
            upper: Some(5),
            since: Some(0),
            parts: vec![PartRef {
                id: Uuid::new_v4(),
                updates: 3,
                bytes: 99,
                buckets: 0b1010,
                run: 0,
                inline: None,
            }],
        });
        let bytes = state.to_bytes();
        assert_eq!(ShardState::from_bytes("k", &bytes).unwrap(), state);
        assert_eq!(state.stored_updates(), 3);
        let err = ShardState::from_bytes("some/key", &bytes[..10]).unwrap_err();
        assert_eq!(err.determinate_kind(), Some(DeterminateKind::Corrupted));
        assert!(err.to_string().contains("some/key"), "{err}");
        // A state written before parts recorded buckets and runs: every
        // part holds every bucket, and each batch is one run.
        let old = br#"{"format":1,"seqno":3,"since":0,"upper":5,"finalized":false,
            "batches":[{"lower":0,"upper":5,"since":0,"parts":[
                {"id":"67e55044-10b1-426f-9247-bb680e5fe0c8","updates":2,"bytes":40},
                {"id":"67e55044-10b1-426f-9247-bb680e5fe0c9","updates":1,"bytes":20}]}],
            "tokens":[],"retired":[]}"#;
        let old = ShardState::from_bytes("k", old).unwrap();
        let parts = &old.batches[0].parts;
        assert!(
            parts
                .iter()
                .all(|part| part.buckets == ALL_BUCKETS && part.run == 0)
        );
        assert_eq!(old.batches[0].runs().count(), 1);
        assert!(
            parts.iter().all(|part| !part.is_inline()),
            "format 1 has no inline parts"
        );
        assert_eq!(
            old.successor().format,
            STATE_FORMAT,
            "rewritten in the current format"
        );
        let mut future = state.clone();
        future.format = 99;
        let err = ShardState::from_bytes("k", &future.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("unknown format"), "{err}");
    }

    /// A plain state with a full token window, inline and object parts,
    /// retired parts and every kind of frontier.
    fn busy_state() -> ShardState {
        let mut state = ShardState::new_shard::<u64>().successor();
        state.seqno = 41;
        state.since = Some(-3);
        state.upper = None;
        state.finalized = false;
        state.writer_epoch = 7;
        for time in 0..20 {
            let inline = (time % 2 == 0).then(|| Bytes::from(vec![time as u8; 30 + time]));
            state.batches.push(BatchRef {
                lower: Some(time as i64),
                upper: Some(time as i64 + 1),
                since: if time == 0 { None } else { Some(0) },
                parts: vec![PartRef {
                    id: Uuid::new_v4(),
                    updates: time as u64,
                    bytes: 30 + time as u64,
                    buckets: if time == 3 { ALL_BUCKETS } else { 1 << time },
                    run: time as u32 % 3,
                    inline,
                }],
            });
        }
        for time in 0..REMEMBERED_TOKENS as i64 {
            state.remember_token(IdempotencyToken::new(), Some(time), Some(time + 1));
        }
        state.retired.push(RetiredPart {
            id: Uuid::new_v4(),
            retired_at_ms: 1_700_000_000_000,
        });
        state
    }

    #[test]
    fn plain_states_are_stored_binary_and_read_back() {
        let state = busy_state();
        let bytes = state.to_bytes();
        assert!(
            bytes.starts_with(&BINARY_STATE_MAGIC),
            "a plain state is binary"
        );
        assert_eq!(ShardState::from_bytes("k", &bytes).unwrap(), state);
        let json = serde_json::to_vec(&state).unwrap();
        assert!(
            bytes.len() * 2 < json.len(),
            "binary {} bytes, JSON {} bytes",
            bytes.len(),
            json.len()
        );
        // The JSON form of the same state still reads, and so does the
        // form `stored_state_as_json` gives of the binary one.
        assert_eq!(ShardState::from_bytes("k", &json).unwrap(), state);
        let converted = stored_state_as_json("k", &bytes).unwrap();
        assert_eq!(ShardState::from_bytes("k", &converted).unwrap(), state);
        // A finalized, sealed, empty state too.
        let mut sealed = ShardState::new_shard::<u64>().successor();
        sealed.finalized = true;
        sealed.since = None;
        sealed.upper = None;
        let bytes = sealed.to_bytes();
        assert!(bytes.starts_with(&BINARY_STATE_MAGIC));
        assert_eq!(ShardState::from_bytes("k", &bytes).unwrap(), sealed);
    }

    #[test]
    fn states_of_earlier_formats_read_and_are_rewritten_binary() {
        // A plain state as format 3 wrote it: JSON, with inline parts and
        // the writer epoch.
        let mut format_3 = busy_state();
        format_3.format = 3;
        let json = serde_json::to_vec(&format_3).unwrap();
        assert_eq!(json.first(), Some(&b'{'));
        let read = ShardState::from_bytes("k", &json).unwrap();
        assert_eq!(read, format_3);
        let next = read.successor();
        assert_eq!(next.format, STATE_FORMAT);
        let bytes = next.to_bytes();
        assert!(bytes.starts_with(&BINARY_STATE_MAGIC));
        assert_eq!(ShardState::from_bytes("k", &bytes).unwrap(), next);
        // A state of an old format that is written without being made a
        // successor keeps its format, so it stays JSON.
        assert_eq!(format_3.to_bytes().first(), Some(&b'{'));
        // States with an intent or a log link are JSON in their formats.
        let mut intent = busy_state();
        intent.pending = Some(Box::new(Intent {
            txn: Uuid::new_v4(),
            batch: None,
            token: Uuid::new_v4(),
            expected_upper: Some(1),
            new_upper: Some(2),
            writer_epoch: 0,
        }));
        intent.format = intent.format_to_write();
        assert_eq!(intent.format, INTENT_FORMAT);
        let bytes = intent.to_bytes();
        assert_eq!(bytes.first(), Some(&b'{'));
        assert_eq!(ShardState::from_bytes("k", &bytes).unwrap(), intent);
        let mut logged = busy_state();
        logged.log = Some(LogLink { applied: 9 });
        logged.format = logged.format_to_write();
        let bytes = logged.to_bytes();
        assert_eq!(bytes.first(), Some(&b'{'));
        assert_eq!(ShardState::from_bytes("k", &bytes).unwrap(), logged);
    }

    #[test]
    fn corrupted_binary_states_are_refused_naming_the_key() {
        let bytes = busy_state().to_bytes();
        let corrupted = |bytes: &[u8], expected: &str| {
            let err = ShardState::from_bytes("some/state", bytes).unwrap_err();
            assert_eq!(err.determinate_kind(), Some(DeterminateKind::Corrupted));
            let text = err.to_string();
            assert!(text.contains("some/state"), "{text}");
            assert!(text.contains(expected), "{text}");
        };
        // One flipped bit anywhere after the format: the checksum.
        for at in [8, bytes.len() / 2, bytes.len() - 5, bytes.len() - 1] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            corrupted(&flipped, "checksum");
        }
        // Cut short, at every length from the magic to the last byte.
        for len in 4..bytes.len() {
            let err = ShardState::from_bytes("some/state", &bytes[..len]).unwrap_err();
            assert_eq!(
                err.determinate_kind(),
                Some(DeterminateKind::Corrupted),
                "len={len}"
            );
        }
        corrupted(&bytes[..6], "truncated");
        // A later binary format is named as such, whatever follows.
        let mut future = bytes.clone();
        future[4..8].copy_from_slice(&7u32.to_le_bytes());
        corrupted(&future, "unknown format");
        // Fields that are not what the format allows, behind a valid
        // checksum: a bad frontier tag, a count past the end, trailing bytes.
        let resealed = |mut body: Vec<u8>| {
            let checksum = crc32fast::hash(&body);
            body.extend_from_slice(&checksum.to_le_bytes());
            body
        };
        let body = bytes[..bytes.len() - 4].to_vec();
        let mut bad_tag = body.clone();
        bad_tag[16] = 2; // the since's tag (after magic, format, seqno)
        corrupted(&resealed(bad_tag), "frontier tag");
        let mut huge_count = body.clone();
        // The batch count follows since, upper, finalized and the epoch.
        let batch_count_at = 16 + 2 * FRONTIER + 1 + 8;
        huge_count[batch_count_at..batch_count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        corrupted(&resealed(huge_count), "count");
        let mut trailing = body;
        trailing.push(0);
        corrupted(&resealed(trailing), "after its last field");
    }

    /// Bytes of a frontier in the binary encoding.
    const FRONTIER: usize = 9;

    #[test]
    fn inline_parts_round_trip_and_count_apart_from_objects() {
        let mut state = ShardState::new_shard::<u64>().successor();
        let body = Bytes::from_static(b"\x00\x01encoded part\xff");
        let part = |inline: Option<Bytes>| PartRef {
            id: Uuid::new_v4(),
            updates: 1,
            bytes: 17,
            buckets: 1,
            run: 0,
            inline,
        };
        state.batches.push(BatchRef {
            lower: Some(0),
            upper: Some(1),
            since: Some(0),
            parts: vec![part(Some(body.clone()))],
        });
        state.batches.push(BatchRef {
            lower: Some(1),
            upper: Some(2),
            since: Some(0),
            parts: vec![part(None)],
        });
        let bytes = state.to_bytes();
        let read = ShardState::from_bytes("k", &bytes).unwrap();
        assert_eq!(read, state);
        assert_eq!(read.batches[0].parts[0].inline.as_ref(), Some(&body));
        assert_eq!(read.inline_bytes(), 17);
        assert_eq!(read.referenced_parts().count(), 1, "only the object part");
        // An inline body that is not base64 is a corrupted JSON state.
        let text = String::from_utf8(serde_json::to_vec(&state).unwrap()).unwrap();
        let encoded = aws_smithy_types::base64::encode(&body);
        let broken = text.replace(&encoded, "not base64!");
        let err = ShardState::from_bytes("some/state", broken.as_bytes()).unwrap_err();
        assert_eq!(err.determinate_kind(), Some(DeterminateKind::Corrupted));
        assert!(err.to_string().contains("base64"), "{err}");
    }
}
