//! Shard lifecycle: open, since, finalize, listing.
//!
//! A shard is listed while an empty marker `PREFIX/live/SHARD` exists. Open
//! writes the marker after the state exists and then reads the state again;
//! finalize commits the sealed state and then deletes the marker. Whatever
//! the interleaving, a finalized shard's marker is deleted by one of the two
//! (see `docs/decisions/030-s3-state-protocol.md`).

use bytes::Bytes;
use tidemark_storage_types::{
    BackendError, DeterminateKind, ShardFrontiers, ShardId, StorageTimestamp, WriteFence, contract,
};
use timely::progress::Antichain;

use crate::state::{LogLink, ShardState, decode_frontier, encode_frontier, frontier_join};
use crate::store::ConditionalPut;
use crate::{S3Backend, Step};

/// Creating a state refused this many times in a row (409s from concurrent
/// creators whose write then vanished) gives up.
const MAX_CREATE_ATTEMPTS: usize = 16;

/// A state's frontiers as antichains.
pub(crate) fn frontiers_of<T: StorageTimestamp>(state: &ShardState) -> ShardFrontiers<T> {
    ShardFrontiers {
        since: decode_frontier(state.since),
        upper: decode_frontier(state.upper),
    }
}

impl S3Backend {
    pub(crate) async fn open_shard<T: StorageTimestamp>(
        &self,
        shard: ShardId,
    ) -> Result<ShardFrontiers<T>, BackendError> {
        let store = self.store();
        let mut attempts = 0;
        let state = loop {
            let mut initial = ShardState::new_shard::<T>();
            // SUBTLE: no entry names a shard before its state exists, so
            // any seq known to exist is a sound start for a new one.
            if self.config().commit_log {
                initial.log = Some(LogLink {
                    applied: self.known_log_head(),
                });
                initial.format = initial.format_to_write();
            }
            match store.create_state(shard, &initial).await? {
                ConditionalPut::Written(_) => break initial,
                // It exists (412), or someone else is creating it (409).
                ConditionalPut::Refused => match self.read_state(shard).await {
                    Ok(state) => break (*state).clone(),
                    Err(BackendError::InvalidUsage(_)) if attempts < MAX_CREATE_ATTEMPTS => {
                        attempts += 1;
                    }
                    Err(err) => return Err(err),
                },
            }
        };
        if state.finalized {
            return Ok(frontiers_of(&state));
        }
        // SUBTLE: the marker goes in after the state exists, and the state is
        // read again afterwards: a finalize that committed before that read is
        // seen here (and the marker removed); one that commits after it
        // deletes the marker itself.
        let marker = store.keys.live(shard);
        store.put("put_live_marker", &marker, Bytes::new()).await?;
        let state = self.read_state(shard).await?;
        if state.finalized {
            store.delete("delete_live_marker", &marker).await?;
        }
        Ok(frontiers_of(&state))
    }

    pub(crate) async fn downgrade_since<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        new_since: &Antichain<T>,
        fence: WriteFence,
    ) -> Result<Antichain<T>, BackendError> {
        let requested = encode_frontier(new_since);
        if self.known_log_mode(shard) {
            return Ok(decode_frontier(
                self.log_downgrade_since(shard, requested, fence).await?,
            ));
        }
        let (since, _) = self
            .update_state(shard, true, |state, _fresh| {
                // A log-mode shard's since and epoch change only through
                // the log.
                if state.log.is_some() {
                    return Ok(Step::Done(None));
                }
                // The fence is checked on the state the conditional PUT
                // replaces, so it holds at the write.
                let epoch = match contract::check_fence(shard, state.writer_epoch, fence) {
                    Ok(epoch) => epoch,
                    Err(err) => return Ok(Step::Done(Some(Err(err)))),
                };
                let joined = frontier_join(state.since, requested);
                if joined == state.since && epoch == state.writer_epoch {
                    return Ok(Step::Done(Some(Ok(joined))));
                }
                let mut next = state.successor();
                next.since = joined;
                next.writer_epoch = epoch;
                Ok(Step::Write(next, Some(Ok(joined))))
            })
            .await?;
        match since {
            Some(since) => Ok(decode_frontier(since?)),
            None => Ok(decode_frontier(
                self.log_downgrade_since(shard, requested, fence).await?,
            )),
        }
    }

    pub(crate) async fn finalize_shard(&self, shard: ShardId) -> Result<(), BackendError> {
        let through_log = if self.known_log_mode(shard) {
            true
        } else {
            self.update_state(shard, true, |state, _fresh| {
                // A log-mode shard is finalized through the log.
                if state.log.is_some() {
                    return Ok(Step::Done(true));
                }
                if state.finalized {
                    return Ok(Step::Done(false));
                }
                let mut next = state.successor();
                next.since = None;
                next.upper = None;
                next.finalized = true;
                next.batches.clear();
                next.retired.clear();
                next.tokens.clear();
                Ok(Step::Write(next, false))
            })
            .await?
            .0
        };
        if through_log {
            self.log_finalize(shard).await?;
            // Fold it in now: the state itself then drops its batches.
            self.apply_log(shard).await?;
        }
        self.delete_finalized_data(shard).await
    }

    async fn delete_finalized_data(&self, shard: ShardId) -> Result<(), BackendError> {
        // The shard is sealed and unreadable: its parts can go at once (a
        // reader that finds one gone re-reads the state and learns that).
        let store = self.store();
        let parts = store
            .list_keys("list_finalized_parts", &store.keys.batches_dir(shard))
            .await?;
        store.delete_many("delete_finalized_parts", parts).await?;
        store
            .delete("delete_live_marker", &store.keys.live(shard))
            .await
    }

    pub(crate) async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError> {
        let store = self.store();
        let dir = store.keys.live_dir();
        let mut shards = Vec::new();
        for key in store.list_keys("list_live_markers", &dir).await? {
            let name = key.strip_prefix(&dir).unwrap_or(&key);
            let shard = name.parse::<ShardId>().map_err(|err| {
                BackendError::determinate(
                    DeterminateKind::Corrupted,
                    format!("unexpected object among the shard markers: key={key} error={err}"),
                )
            })?;
            shards.push(shard);
        }
        shards.sort();
        Ok(shards)
    }
}
