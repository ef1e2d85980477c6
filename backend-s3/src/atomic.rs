//! `compare_and_append_all`: an append to several shards that applies to all
//! of them or to none, by intents in the shard states and one record that
//! decides them ([`crate::txn`]).
//!
//! An attempt, for `N >= 2` shards:
//!
//! 1. Batches too large to go inline write their parts (as a single-shard
//!    append does), acknowledged before anything references them.
//! 2. Each shard's state gets the attempt's intent, by the shard's own
//!    conditional PUT, all shards at once. Each PUT is decided on the
//!    shard's state with any earlier intent decided first, and checks what
//!    a single-shard append checks: the token, the fence, the upper, the
//!    inline bound.
//! 3. If every shard took its intent, the record `PREFIX/txns/TXN` is
//!    created saying committed (`If-None-Match: *`): the commit point. If
//!    another handle aborted the attempt first (it waited for an undecided
//!    intent in its way), the call tries again with a new attempt.
//! 4. The intents are rolled forward in the background; until then readers
//!    fold them in by reading the record.
//!
//! A one-shard call is exactly [`S3Backend::compare_and_append`].

use futures::future::join_all;
use tidemark_storage_types::{
    BackendError, DeterminateKind, IdempotencyToken, ShardAppend, ShardId, StorageTimestamp,
    UpperMismatches, WriteFence, contract,
};
use timely::progress::Antichain;
use uuid::Uuid;

use crate::append::{AppendCheck, Verdict, inline_batch, mismatch};
use crate::codec::{EncodedPart, encode_parts};
use crate::log::LogAppend;
use crate::state::{BatchRef, EncodedFrontier, Intent, Outcome, encode_frontier};
use crate::store::ConditionalPut;
use crate::{CachedState, MAX_STATE_ATTEMPTS, S3Backend, Step};

/// Attempts of one call that other handles abort before it gives up with
/// `Determinate(Conflict)`.
const MAX_TXN_ATTEMPTS: usize = 16;

/// Where a multi-shard append stops, as if its process died there (for
/// crash tests: see [`S3Backend::stop_atomic_appends_at`]). The call then
/// returns an indeterminate error and cleans nothing up.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomicAppendStop {
    /// After the parts are written and the intents of the first `n` shards
    /// of the call are, before the commit.
    AfterIntents(usize),
    /// After the commit record, before any intent is rolled forward.
    AfterCommit,
    /// After the first `n` intents are rolled forward.
    AfterRollForward(usize),
}

/// One shard's part of the call, encoded.
struct Prepared<T> {
    shard: ShardId,
    expected_upper: Antichain<T>,
    new_upper: Antichain<T>,
    expected: EncodedFrontier,
    new: EncodedFrontier,
    /// The batch by reference to part objects.
    batch: BatchRef,
    parts: Vec<EncodedPart>,
    /// The batch inline in the state, if it is small enough.
    inline: Option<BatchRef>,
    /// Whether its part objects are written.
    uploaded: bool,
}

impl<T: StorageTimestamp> Prepared<T> {
    fn check(&self, token: IdempotencyToken, fence: WriteFence) -> AppendCheck<'_, T> {
        AppendCheck {
            shard: self.shard,
            token,
            expected: self.expected,
            new: self.new,
            new_upper: &self.new_upper,
            fence,
        }
    }
}

/// What writing one shard's intent came to.
enum Placement {
    /// The intent is in the shard's state.
    Placed,
    /// The shard refused it (a token found, the fence, the upper).
    Refused(Verdict),
}

/// The answer of a call that did not commit, from the shards' verdicts.
enum Refusal {
    /// A shard is in log mode: the call goes through the commit log.
    LogMode,
    AlreadyApplied,
    Fenced(BackendError),
    Mismatches(Vec<(usize, Verdict)>),
}

fn stopped(stop: AtomicAppendStop) -> BackendError {
    BackendError::indeterminate(format!(
        "a multi-shard append was stopped part way by a test hook: stop={stop:?}"
    ))
}

impl S3Backend {
    pub(crate) async fn compare_and_append_all<T: StorageTimestamp>(
        &self,
        appends: Vec<ShardAppend<T>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<T>>, BackendError> {
        contract::check_append_all(&appends)?;
        match appends.len() {
            0 => return Ok(Ok(())),
            1 => {
                let append = appends.into_iter().next().expect("one append");
                let shard = append.shard;
                let outcome = self
                    .compare_and_append(
                        shard,
                        append.updates,
                        append.expected_upper,
                        append.new_upper,
                        token,
                        fence,
                    )
                    .await?;
                return Ok(outcome.map_err(|mismatch| UpperMismatches {
                    mismatches: vec![(shard, mismatch)],
                }));
            }
            _ => {}
        }
        if self.appends_through_log(appends.iter().map(|append| append.shard)) {
            return self.log_append_all(appends, token, fence).await;
        }
        let mut prepared: Vec<Prepared<T>> = appends
            .into_iter()
            .map(|append| self.prepare(append))
            .collect::<Result<_, _>>()?;
        let shards: Vec<ShardId> = prepared.iter().map(|part| part.shard).collect();

        // Decide on what this handle knows before writing anything; an
        // answer without a write comes from fresh reads.
        match self.precheck(&prepared, token, fence).await? {
            Some(Refusal::LogMode) => return self.through_log(prepared, token, fence).await,
            Some(refusal) => return answer(&prepared, refusal),
            None => {}
        }

        // SUBTLE: parts are written (and acknowledged) before any intent
        // references them.
        let uploads = prepared
            .iter()
            .filter(|part| part.inline.is_none() && !part.parts.is_empty())
            .map(|part| self.upload_parts(part.shard, &part.parts));
        for uploaded in join_all(uploads).await {
            uploaded?;
        }
        for part in &mut prepared {
            part.uploaded = part.inline.is_none() && !part.parts.is_empty();
        }

        let started = tokio::time::Instant::now();
        for _ in 0..MAX_TXN_ATTEMPTS {
            let txn = Uuid::new_v4();
            let stop = self.stop_point();
            let placing = match stop {
                Some(AtomicAppendStop::AfterIntents(count)) => count.min(prepared.len()),
                _ => prepared.len(),
            };
            let placements = join_all(
                prepared[..placing]
                    .iter_mut()
                    .map(|part| self.place_intent(part, txn, token, fence)),
            )
            .await;
            if let Some(stop @ AtomicAppendStop::AfterIntents(_)) = stop {
                return Err(stopped(stop));
            }
            let mut placed = Vec::new();
            let mut refused = Vec::new();
            let mut error = None;
            for (index, placement) in placements.into_iter().enumerate() {
                match placement {
                    Ok(Placement::Placed) => placed.push(shards[index]),
                    Ok(Placement::Refused(verdict)) => refused.push((index, verdict)),
                    Err(err) => {
                        error.get_or_insert(err);
                    }
                }
            }

            if refused.is_empty() && error.is_none() {
                // SUBTLE: an intent whose record is missing is aborted by
                // whoever needs its shard; a record is only deleted a grace
                // period after it was written (031's rule for parts). An
                // attempt slower than that must not commit: a resolver may
                // already have aborted it by a record that is gone.
                if started.elapsed() >= self.config().grace_period / 2 {
                    self.abort_attempt(txn, &shards, placed);
                    return Err(BackendError::determinate(
                        DeterminateKind::Conflict,
                        format!(
                            "a multi-shard append took more than half the grace period, not committed: shards={}",
                            shards.len()
                        ),
                    ));
                }
                match self.decide_txn(txn, Outcome::Committed, &shards).await? {
                    Outcome::Committed => {
                        self.roll_forward(txn, placed, stop).await?;
                        return Ok(Ok(()));
                    }
                    // Another handle aborted this attempt while waiting for
                    // one of its shards: try again.
                    Outcome::Aborted => {
                        self.clear_intents_in_background(txn, Outcome::Aborted, placed);
                        continue;
                    }
                }
            }

            // SUBTLE: only this call ever records this attempt as committed,
            // and it will not: whatever intents it wrote never apply. The
            // abort record only spares other writers the wait.
            self.abort_attempt(txn, &shards, placed);
            // A shard went into log mode: the whole call goes through the
            // log (its intents here never apply).
            if refused
                .iter()
                .any(|(_, verdict)| matches!(verdict, Verdict::LogMode))
            {
                return self.through_log(prepared, token, fence).await;
            }
            let refusal = refusal_of(&prepared, token, fence, refused);
            match (refusal, error) {
                (Some(refusal), _) => {
                    self.discard_uploaded(&prepared);
                    return answer(&prepared, refusal);
                }
                (None, Some(err)) => return Err(err),
                (None, None) => {
                    return Err(BackendError::indeterminate(format!(
                        "a multi-shard append was refused without a reason: shards={}",
                        shards.len()
                    )));
                }
            }
        }
        Err(BackendError::determinate(
            DeterminateKind::Conflict,
            format!(
                "every attempt of a multi-shard append was aborted by other writers, giving up: shards={} attempts={MAX_TXN_ATTEMPTS}",
                shards.len()
            ),
        ))
    }

    fn prepare<T: StorageTimestamp>(
        &self,
        append: ShardAppend<T>,
    ) -> Result<Prepared<T>, BackendError> {
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
        let inline = inline_batch(&batch, &parts, self.config().inline_batch_bytes);
        Ok(Prepared {
            shard: append.shard,
            expected: encode_frontier(&append.expected_upper),
            new: encode_frontier(&append.new_upper),
            expected_upper: append.expected_upper,
            new_upper: append.new_upper,
            batch,
            parts,
            inline,
            uploaded: false,
        })
    }

    /// Judges the call on the cached states; if any is missing or refuses,
    /// on fresh reads of every shard.
    async fn precheck<T: StorageTimestamp>(
        &self,
        prepared: &[Prepared<T>],
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Option<Refusal>, BackendError> {
        let cached_ok = prepared.iter().all(|part| {
            self.cached_view(part.shard)
                .is_some_and(|state| part.check(token, fence).judge(&state).is_none())
        });
        if cached_ok {
            return Ok(None);
        }
        let states = join_all(prepared.iter().map(|part| self.read_state(part.shard))).await;
        let mut refused = Vec::new();
        for (index, state) in states.into_iter().enumerate() {
            let state = state?;
            if state.log.is_some() {
                return Ok(Some(Refusal::LogMode));
            }
            if let Some(verdict) = prepared[index].check(token, fence).judge(&state) {
                refused.push((index, verdict));
            }
        }
        Ok(refusal_of(prepared, token, fence, refused))
    }

    /// Writes one shard's intent of attempt `txn`: inline if the batch is
    /// small and the state has room, else by reference (writing the parts
    /// first if that is new).
    async fn place_intent<T: StorageTimestamp>(
        &self,
        part: &mut Prepared<T>,
        txn: Uuid,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Placement, BackendError> {
        let inline_limit = self.config().inline_state_bytes as u64;
        loop {
            let inline = part.inline.clone().filter(|_| !part.uploaded);
            let is_inline = inline.is_some();
            let batch = inline.unwrap_or_else(|| part.batch.clone());
            let check = part.check(token, fence);
            let (verdict, _) = self
                .update_state(part.shard, true, |view, _fresh| {
                    if view.log.is_some() {
                        return Ok(Step::Done(Some(Verdict::LogMode)));
                    }
                    if let Some(verdict) = check.judge(view) {
                        return Ok(Step::Done(Some(verdict)));
                    }
                    if is_inline && view.inline_bytes() + batch.bytes() > inline_limit {
                        return Ok(Step::Done(Some(Verdict::NoInlineRoom)));
                    }
                    let mut next = view.successor();
                    next.pending = Some(Box::new(Intent {
                        txn,
                        batch: (!batch.parts.is_empty()).then(|| batch.clone()),
                        token: token.0,
                        expected_upper: part.expected,
                        new_upper: part.new,
                        writer_epoch: check.epoch(view),
                    }));
                    Ok(Step::Write(next, None))
                })
                .await?;
            match verdict {
                None => return Ok(Placement::Placed),
                Some(Verdict::NoInlineRoom) => {
                    self.upload_parts(part.shard, &part.parts).await?;
                    part.uploaded = true;
                }
                Some(verdict) => return Ok(Placement::Refused(verdict)),
            }
        }
    }

    /// Records attempt `txn` as aborted (so no writer waits for it) and
    /// clears its intents, in the background and best effort: the attempt
    /// never commits either way.
    fn abort_attempt(&self, txn: Uuid, shards: &[ShardId], placed: Vec<ShardId>) {
        let backend = self.clone();
        let shards = shards.to_vec();
        self.spawn_background(async move {
            match backend.decide_txn(txn, Outcome::Aborted, &shards).await {
                Ok(outcome) => {
                    join_all(
                        placed
                            .iter()
                            .map(|&shard| backend.clear_intent(shard, txn, outcome)),
                    )
                    .await;
                }
                Err(err) => {
                    tracing::debug!(%txn, error = %err, "could not record an abort; writers will");
                }
            }
        });
    }

    /// Rolls a committed attempt's intents forward, in the background
    /// (unless a test hook stops the call first).
    async fn roll_forward(
        &self,
        txn: Uuid,
        placed: Vec<ShardId>,
        stop: Option<AtomicAppendStop>,
    ) -> Result<(), BackendError> {
        match stop {
            Some(stop @ AtomicAppendStop::AfterCommit) => Err(stopped(stop)),
            Some(stop @ AtomicAppendStop::AfterRollForward(count)) => {
                for &shard in placed.iter().take(count) {
                    self.clear_intent(shard, txn, Outcome::Committed).await;
                }
                Err(stopped(stop))
            }
            _ => {
                self.clear_intents_in_background(txn, Outcome::Committed, placed);
                Ok(())
            }
        }
    }

    fn clear_intents_in_background(&self, txn: Uuid, outcome: Outcome, shards: Vec<ShardId>) {
        if shards.is_empty() {
            return;
        }
        let backend = self.clone();
        self.spawn_background(async move {
            join_all(
                shards
                    .iter()
                    .map(|&shard| backend.clear_intent(shard, txn, outcome)),
            )
            .await;
        });
    }

    /// Replaces `shard`'s state by the same state with attempt `txn`'s
    /// intent decided as `outcome`, if the intent is still there. Best
    /// effort: a failure leaves the intent to the next reader or writer.
    pub(crate) async fn clear_intent(&self, shard: ShardId, txn: Uuid, outcome: Outcome) {
        let mut current = self.cached(shard);
        for _ in 0..MAX_STATE_ATTEMPTS {
            let (state, etag, fresh) = match current.take() {
                Some(CachedState { state, etag }) => (state, etag, false),
                None => match self.read_state_and_etag(shard).await {
                    Ok((state, etag)) => (state, etag, true),
                    Err(err) => {
                        tracing::debug!(%shard, %txn, error = %err, "could not read a state to clear an intent");
                        return;
                    }
                },
            };
            if state
                .pending
                .as_ref()
                .is_none_or(|intent| intent.txn != txn)
            {
                if fresh {
                    return;
                }
                continue;
            }
            let mut next = state.decided(outcome).successor();
            next.seqno = state.seqno + 1;
            next.format = next.format_to_write();
            match self.store().replace_state(shard, &next, &etag).await {
                Ok(ConditionalPut::Written(etag)) => {
                    self.remember(shard, std::sync::Arc::new(next), etag);
                    return;
                }
                Ok(ConditionalPut::Refused) => {}
                Err(err) => {
                    self.forget(shard);
                    tracing::debug!(%shard, %txn, error = %err, "could not clear an intent");
                    return;
                }
            }
        }
    }

    /// The call through the commit log, from its prepared parts (those
    /// already written are referenced, not written again).
    async fn through_log<T: StorageTimestamp>(
        &self,
        prepared: Vec<Prepared<T>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<T>>, BackendError> {
        let inputs = prepared
            .into_iter()
            .map(|part| LogAppend {
                shard: part.shard,
                expected_upper: part.expected_upper,
                new_upper: part.new_upper,
                batch: part.batch,
                parts: part.parts,
                uploaded: part.uploaded,
            })
            .collect();
        self.log_append_encoded(inputs, token, fence).await
    }

    /// Deletes the part objects of a call that did not commit, in the
    /// background (only intents that never apply reference them).
    fn discard_uploaded<T>(&self, prepared: &[Prepared<T>]) {
        for part in prepared.iter().filter(|part| part.uploaded) {
            self.discard_parts_in_background(part.shard, &part.parts);
        }
    }
}

/// The answer the shards' verdicts give, if any refused: a token found
/// (an earlier attempt of the call applied), else the fence, else every
/// mismatch in the call's order.
fn refusal_of<T: StorageTimestamp>(
    prepared: &[Prepared<T>],
    token: IdempotencyToken,
    fence: WriteFence,
    mut refused: Vec<(usize, Verdict)>,
) -> Option<Refusal> {
    if refused
        .iter()
        .any(|(_, verdict)| matches!(verdict, Verdict::AlreadyApplied))
    {
        return Some(Refusal::AlreadyApplied);
    }
    if let Some((index, shard_epoch)) = refused.iter().find_map(|(index, verdict)| match verdict {
        Verdict::Fenced(shard_epoch) => Some((*index, *shard_epoch)),
        _ => None,
    }) {
        return Some(Refusal::Fenced(
            prepared[index].check(token, fence).fenced(shard_epoch),
        ));
    }
    refused.retain(|(_, verdict)| matches!(verdict, Verdict::Mismatch(..)));
    if refused.is_empty() {
        return None;
    }
    refused.sort_by_key(|(index, _)| *index);
    Some(Refusal::Mismatches(refused))
}

fn answer<T: StorageTimestamp>(
    prepared: &[Prepared<T>],
    refusal: Refusal,
) -> Result<Result<(), UpperMismatches<T>>, BackendError> {
    match refusal {
        Refusal::LogMode => Err(BackendError::indeterminate(
            "a multi-shard append meant for the commit log was answered as refused".to_string(),
        )),
        Refusal::AlreadyApplied => Ok(Ok(())),
        Refusal::Fenced(err) => Err(err),
        Refusal::Mismatches(refused) => Ok(Err(UpperMismatches {
            mismatches: refused
                .into_iter()
                .filter_map(|(index, verdict)| match verdict {
                    Verdict::Mismatch(current, earlier) => {
                        let part = &prepared[index];
                        Some((
                            part.shard,
                            mismatch(part.expected_upper.clone(), current, earlier),
                        ))
                    }
                    _ => None,
                })
                .collect(),
        })),
    }
}
