//! `compare_and_append`: write the batch's parts, then commit the state that
//! references them.

use std::sync::Arc;

use tidemark_storage_types::{
    BackendError, IdempotencyToken, ShardId, StorageTimestamp, Update, UpperMismatch, contract,
};
use timely::progress::Antichain;

use crate::S3Backend;
use crate::Step;
use crate::codec::{EncodedPart, encode_parts};
use crate::state::{EncodedFrontier, ShardState, decode_frontier, encode_frontier};
use crate::store::bounded_in_order;

/// What the state said about an append.
enum Verdict {
    /// The token was applied with these bounds already.
    AlreadyApplied,
    /// The upper is not the expected one.
    Mismatch(EncodedFrontier),
    /// Committed now.
    Committed,
}

impl S3Backend {
    pub(crate) async fn compare_and_append<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        updates: Vec<Update<T>>,
        expected_upper: Antichain<T>,
        new_upper: Antichain<T>,
        token: IdempotencyToken,
    ) -> Result<Result<(), UpperMismatch<T>>, BackendError> {
        contract::check_append_bounds(shard, &updates, &expected_upper, &new_upper)?;
        let expected = encode_frontier(&expected_upper);
        let new = encode_frontier(&new_upper);
        let judge = |state: &ShardState| {
            // SUBTLE: the token is looked for before the upper is compared:
            // after an indeterminate commit, a retry must find its own write
            // (which moved the upper) rather than report a mismatch.
            if state.token_applied(token, expected, new) {
                Some(Verdict::AlreadyApplied)
            } else if state.upper != expected {
                Some(Verdict::Mismatch(state.upper))
            } else {
                None
            }
        };

        // Decide on what this handle knows before writing anything: an
        // answer without a write must come from a fresh read.
        let mut state = match self.cached(shard) {
            Some(cached) => cached.state,
            None => self.read_state(shard).await?,
        };
        if judge(&state).is_some() {
            state = self.read_state(shard).await?;
            match judge(&state) {
                Some(Verdict::AlreadyApplied) => return Ok(Ok(())),
                Some(Verdict::Mismatch(current)) => {
                    return Ok(Err(mismatch(expected_upper, current)));
                }
                Some(Verdict::Committed) | None => {}
            }
        }

        // SUBTLE: the parts are written (and acknowledged) before the state
        // that references them is committed, so a committed state never
        // names a missing part.
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
        );
        self.upload_parts(shard, &parts).await?;

        let outcome = self
            .update_state(shard, true, |state, _fresh| {
                if let Some(verdict) = judge(state) {
                    return Ok(Step::Done(verdict));
                }
                let mut next = state.successor();
                next.upper = new;
                if !batch.parts.is_empty() {
                    next.batches.push(batch.clone());
                }
                next.remember_token(token, expected, new);
                Ok(Step::Write(next, Verdict::Committed))
            })
            .await;
        match outcome {
            Ok((Verdict::Committed, _)) => Ok(Ok(())),
            Ok((verdict, _)) => {
                // Nothing references the parts just written; deleting them
                // need not delay the answer.
                self.discard_parts_in_background(shard, &parts);
                match verdict {
                    Verdict::Mismatch(current) => Ok(Err(mismatch(expected_upper, current))),
                    Verdict::AlreadyApplied | Verdict::Committed => Ok(Ok(())),
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

fn mismatch<T: StorageTimestamp>(
    expected: Antichain<T>,
    current: EncodedFrontier,
) -> UpperMismatch<T> {
    UpperMismatch {
        expected,
        current: decode_frontier(current),
    }
}
