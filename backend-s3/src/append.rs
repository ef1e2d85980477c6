//! `compare_and_append`: a small batch is committed inline in the state (one
//! conditional PUT); a larger one writes its parts, then commits the state
//! that references them.

use std::sync::Arc;

use tidemark_storage_types::{
    BackendError, EarlierAttempts, IdempotencyToken, ShardAppend, ShardId, StorageTimestamp,
    Update, UpperMismatch, UpperMismatches, WriteFence, contract,
};
use timely::progress::Antichain;

use crate::S3Backend;
use crate::Step;
use crate::codec::{EncodedPart, encode_parts};
use crate::log::LogAppend;
use crate::state::{BatchRef, EncodedFrontier, ShardState, decode_frontier, encode_frontier};
use crate::store::bounded_in_order;

/// What the state said about an append.
pub(crate) enum Verdict {
    /// The token was applied with these bounds already.
    AlreadyApplied,
    /// The upper is not the expected one.
    Mismatch(EncodedFrontier, EarlierAttempts),
    /// The state's writer epoch (higher than the write's) refused it.
    Fenced(u64),
    /// Committed now.
    Committed,
    /// The batch would take the state's inline bytes past their bound.
    NoInlineRoom,
    /// The shard is in log mode: the append goes through the commit log.
    LogMode,
}

/// The batch stored inline, if it is small enough: one part of at most
/// `inline_batch_bytes` encoded bytes.
pub(crate) fn inline_batch(
    batch: &BatchRef,
    parts: &[EncodedPart],
    inline_batch_bytes: usize,
) -> Option<BatchRef> {
    let [part] = parts else {
        return None;
    };
    if part.body.len() > inline_batch_bytes {
        return None;
    }
    let mut inline = batch.clone();
    inline.parts[0].inline = Some(part.body.clone());
    Some(inline)
}

/// The state after committing `batch` (none if everything cancelled out)
/// with `token`, moving the upper to `new`.
fn committed(
    state: &ShardState,
    batch: &BatchRef,
    token: IdempotencyToken,
    expected: EncodedFrontier,
    new: EncodedFrontier,
    epoch: u64,
) -> ShardState {
    let mut next = state.successor();
    next.apply_append(Some(batch), token, expected, new, epoch);
    next
}

/// One append's bounds and fence, judged against states.
#[derive(Clone, Copy)]
pub(crate) struct AppendCheck<'a, T> {
    pub shard: ShardId,
    pub token: IdempotencyToken,
    pub expected: EncodedFrontier,
    pub new: EncodedFrontier,
    pub new_upper: &'a Antichain<T>,
    pub fence: WriteFence,
}

impl<T: StorageTimestamp> AppendCheck<'_, T> {
    /// What `state` says about the append, or `None` if it may commit.
    pub(crate) fn judge(&self, state: &ShardState) -> Option<Verdict> {
        // SUBTLE: the token is looked for before the upper is compared:
        // after an indeterminate commit, a retry must find its own write
        // (which moved the upper) rather than report a mismatch.
        if state.token_applied(self.token, self.expected, self.new) {
            Some(Verdict::AlreadyApplied)
        } else if self.admitted(state).is_none() {
            Some(Verdict::Fenced(state.writer_epoch))
        } else if state.upper != self.expected {
            let oldest = state.oldest_remembered_lower().map(decode_frontier::<T>);
            let earlier = contract::earlier_attempts(self.new_upper, oldest.as_ref());
            Some(Verdict::Mismatch(state.upper, earlier))
        } else {
            None
        }
    }

    /// The epoch a committed state records; `None` if the fence refuses.
    fn admitted(&self, state: &ShardState) -> Option<u64> {
        contract::check_fence(self.shard, state.writer_epoch, self.fence).ok()
    }

    /// The epoch the state has once the append commits on it.
    pub(crate) fn epoch(&self, state: &ShardState) -> u64 {
        self.admitted(state).unwrap_or(state.writer_epoch)
    }

    /// The error of a refused fence.
    pub(crate) fn fenced(&self, shard_epoch: u64) -> BackendError {
        match self.fence {
            WriteFence::Epoch(write_epoch) => {
                contract::fenced(self.shard, shard_epoch, write_epoch)
            }
            WriteFence::Unfenced => BackendError::indeterminate(format!(
                "an unfenced append was judged fenced: shard={}",
                self.shard
            )),
        }
    }
}

/// What a small append's own work before its request produced (see
/// [`S3Backend::encode_small_append`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmallAppendEncoding {
    /// Encoded bytes of the batch's one part (what goes inline).
    pub batch_bytes: usize,
    /// Bytes of the state body its conditional PUT would write.
    pub state_bytes: usize,
}

impl S3Backend {
    /// Does the work a small append does before its conditional PUT, on the
    /// state this handle last saw of `shard`, and writes nothing: checks the
    /// bounds, encodes the batch, decides the commit and encodes the state
    /// that would be written. For the benchmark that separates the backend's
    /// own work from the request; `None` if this handle has no state of the
    /// shard cached, the batch is too large to go inline, or the append would
    /// not commit as an inline append on that state.
    ///
    /// # Errors
    ///
    /// `InvalidUsage` for bounds `compare_and_append` refuses, and a batch
    /// the codec cannot encode.
    #[doc(hidden)]
    pub fn encode_small_append<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        updates: Vec<Update<T>>,
        expected_upper: &Antichain<T>,
        new_upper: &Antichain<T>,
    ) -> Result<Option<SmallAppendEncoding>, BackendError> {
        contract::check_append_bounds(shard, &updates, expected_upper, new_upper)?;
        let Some(state) = self.cached_view(shard) else {
            return Ok(None);
        };
        let check = AppendCheck {
            shard,
            token: IdempotencyToken::new(),
            expected: encode_frontier(expected_upper),
            new: encode_frontier(new_upper),
            new_upper,
            fence: WriteFence::Unfenced,
        };
        if check.judge(&state).is_some() {
            return Ok(None);
        }
        let rows = updates
            .into_iter()
            .map(|update| (update.row, update.timestamp, update.diff))
            .collect();
        let (batch, parts) = encode_parts(
            rows,
            expected_upper,
            new_upper,
            expected_upper,
            self.config().part_size_bytes,
        )
        .map_err(|err| err.into_backend_error(shard))?;
        let Some(inline) = inline_batch(&batch, &parts, self.config().inline_batch_bytes) else {
            return Ok(None);
        };
        if state.inline_bytes() + inline.bytes() > self.config().inline_state_bytes as u64 {
            return Ok(None);
        }
        let next = committed(
            &state,
            &inline,
            check.token,
            check.expected,
            check.new,
            check.epoch(&state),
        );
        Ok(Some(SmallAppendEncoding {
            batch_bytes: inline.bytes() as usize,
            state_bytes: next.to_bytes().len(),
        }))
    }

    pub(crate) async fn compare_and_append<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        updates: Vec<Update<T>>,
        expected_upper: Antichain<T>,
        new_upper: Antichain<T>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatch<T>>, BackendError> {
        contract::check_append_bounds(shard, &updates, &expected_upper, &new_upper)?;
        if self.appends_through_log([shard]) {
            let append = ShardAppend {
                shard,
                updates,
                expected_upper,
                new_upper,
            };
            let outcome = self.log_append_all(vec![append], token, fence).await?;
            return Ok(outcome.map_err(single_mismatch));
        }
        let expected = encode_frontier(&expected_upper);
        let new = encode_frontier(&new_upper);
        let check = AppendCheck {
            shard,
            token,
            expected,
            new,
            new_upper: &new_upper,
            fence,
        };
        let judge = |state: &ShardState| check.judge(state);
        let epoch = |state: &ShardState| check.epoch(state);
        let fenced = |shard_epoch| check.fenced(shard_epoch);

        // Decide on what this handle knows before writing anything: an
        // answer without a write must come from a fresh read.
        let mut state = match self.cached_view(shard) {
            Some(state) => state,
            None => self.read_state(shard).await?,
        };
        let mut route_to_log = state.log.is_some();
        if !route_to_log && judge(&state).is_some() {
            state = self.read_state(shard).await?;
            route_to_log = state.log.is_some();
        }
        if !route_to_log && judge(&state).is_some() {
            match judge(&state) {
                Some(Verdict::AlreadyApplied) => return Ok(Ok(())),
                Some(Verdict::Mismatch(current, earlier)) => {
                    return Ok(Err(mismatch(expected_upper.clone(), current, earlier)));
                }
                Some(Verdict::Fenced(shard_epoch)) => return Err(fenced(shard_epoch)),
                Some(Verdict::Committed | Verdict::NoInlineRoom | Verdict::LogMode) | None => {}
            }
        }

        let rows = updates
            .into_iter()
            .map(|update| (update.row, update.timestamp, update.diff))
            .collect();
        let (batch, parts) = encode_parts(
            rows,
            &expected_upper,
            &new_upper,
            &expected_upper,
            self.config().part_size_bytes,
        )
        .map_err(|err| err.into_backend_error(shard))?;
        let through_log = |batch: BatchRef, parts: Vec<EncodedPart>, uploaded: bool| {
            let append = LogAppend {
                shard,
                expected_upper: expected_upper.clone(),
                new_upper: new_upper.clone(),
                batch,
                parts,
                uploaded,
            };
            async move {
                let outcome = self.log_append_encoded(vec![append], token, fence).await?;
                Ok(outcome.map_err(single_mismatch))
            }
        };
        if route_to_log {
            return through_log(batch, parts, false).await;
        }
        // A small batch goes into the state itself: one conditional PUT.
        if let Some(inline) = inline_batch(&batch, &parts, self.config().inline_batch_bytes) {
            let inline_limit = self.config().inline_state_bytes as u64;
            let outcome = self
                .update_state(shard, true, |state, _fresh| {
                    if state.log.is_some() {
                        return Ok(Step::Done(Verdict::LogMode));
                    }
                    if let Some(verdict) = judge(state) {
                        return Ok(Step::Done(verdict));
                    }
                    // The state's inline bytes stay bounded: past the bound
                    // the batch goes to a part object instead.
                    if state.inline_bytes() + inline.bytes() > inline_limit {
                        return Ok(Step::Done(Verdict::NoInlineRoom));
                    }
                    Ok(Step::Write(
                        committed(state, &inline, token, expected, new, epoch(state)),
                        Verdict::Committed,
                    ))
                })
                .await?;
            match outcome.0 {
                Verdict::Committed | Verdict::AlreadyApplied => return Ok(Ok(())),
                Verdict::Mismatch(current, earlier) => {
                    return Ok(Err(mismatch(expected_upper.clone(), current, earlier)));
                }
                Verdict::Fenced(shard_epoch) => return Err(fenced(shard_epoch)),
                Verdict::LogMode => return through_log(batch, parts, false).await,
                Verdict::NoInlineRoom => {}
            }
        }

        // SUBTLE: the parts are written (and acknowledged) before the state
        // that references them is committed, so a committed state never
        // names a missing part.
        self.upload_parts(shard, &parts).await?;

        let outcome = self
            .update_state(shard, true, |state, _fresh| {
                if state.log.is_some() {
                    return Ok(Step::Done(Verdict::LogMode));
                }
                if let Some(verdict) = judge(state) {
                    return Ok(Step::Done(verdict));
                }
                Ok(Step::Write(
                    committed(state, &batch, token, expected, new, epoch(state)),
                    Verdict::Committed,
                ))
            })
            .await;
        match outcome {
            Ok((Verdict::Committed, _)) => Ok(Ok(())),
            // The parts are written: the entry references them.
            Ok((Verdict::LogMode, _)) => through_log(batch, parts, true).await,
            Ok((verdict, _)) => {
                // Nothing references the parts just written; deleting them
                // need not delay the answer.
                self.discard_parts_in_background(shard, &parts);
                match verdict {
                    Verdict::Mismatch(current, earlier) => {
                        Ok(Err(mismatch(expected_upper.clone(), current, earlier)))
                    }
                    Verdict::Fenced(shard_epoch) => Err(fenced(shard_epoch)),
                    Verdict::AlreadyApplied
                    | Verdict::Committed
                    | Verdict::NoInlineRoom
                    | Verdict::LogMode => Ok(Ok(())),
                }
            }
            Err(err) => {
                // SUBTLE: after an indeterminate commit the parts may be
                // referenced; only a determinate failure proves they are not.
                // Leftovers are collected by `gc` after the grace period.
                if err.is_determinate() {
                    self.discard_parts(shard, &parts).await;
                }
                Err(err)
            }
        }
    }

    /// Writes parts, several at once.
    pub(crate) async fn upload_parts(
        &self,
        shard: ShardId,
        parts: &[EncodedPart],
    ) -> Result<(), BackendError> {
        let store = Arc::new(self.store().clone());
        let uploads = parts
            .iter()
            .map(|part| {
                let store = Arc::clone(&store);
                let key = store.keys.part(shard, part.part.id);
                let body = part.body.clone();
                async move { store.put("put_part", &key, body).await }
            })
            .collect();
        bounded_in_order(uploads, self.config().concurrency)
            .await
            .into_iter()
            .collect()
    }

    /// [`discard_parts`](Self::discard_parts) on a task of its own.
    pub(crate) fn discard_parts_in_background(&self, shard: ShardId, parts: &[EncodedPart]) {
        if parts.is_empty() {
            return;
        }
        let backend = self.clone();
        let parts = parts.to_vec();
        tokio::spawn(async move { backend.discard_parts(shard, &parts).await });
    }

    /// Deletes parts nothing references, best effort: a failure leaves them
    /// to `gc`.
    pub(crate) async fn discard_parts(&self, shard: ShardId, parts: &[EncodedPart]) {
        if parts.is_empty() {
            return;
        }
        let store = self.store();
        let keys = parts
            .iter()
            .map(|part| store.keys.part(shard, part.part.id))
            .collect();
        if let Err(err) = store.delete_many("delete_unreferenced_parts", keys).await {
            tracing::warn!(%shard, error = %err, "could not delete unreferenced parts, gc will");
        }
    }
}

/// The one mismatch of a one-shard call.
fn single_mismatch<T>(mismatches: UpperMismatches<T>) -> UpperMismatch<T> {
    mismatches
        .mismatches
        .into_iter()
        .next()
        .map(|(_, mismatch)| mismatch)
        .expect("a refused one-shard call names its shard")
}

pub(crate) fn mismatch<T: StorageTimestamp>(
    expected: Antichain<T>,
    current: EncodedFrontier,
    earlier_attempts: EarlierAttempts,
) -> UpperMismatch<T> {
    UpperMismatch {
        expected,
        current: decode_frontier(current),
        earlier_attempts,
    }
}
