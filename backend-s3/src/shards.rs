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

use crate::state::{ShardState, decode_frontier, encode_frontier, frontier_join};
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
            let initial = ShardState::new_shard::<T>();
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
        let (since, _) = self
            .update_state(shard, true, |state, _fresh| {
                // The fence is checked on the state the conditional PUT
                // replaces, so it holds at the write.
                let epoch = match contract::check_fence(shard, state.writer_epoch, fence) {
                    Ok(epoch) => epoch,
                    Err(err) => return Ok(Step::Done(Err(err))),
                };
                let joined = frontier_join(state.since, requested);
                if joined == state.since && epoch == state.writer_epoch {
                    return Ok(Step::Done(Ok(joined)));
                }
                let mut next = state.successor();
                next.since = joined;
                next.writer_epoch = epoch;
                Ok(Step::Write(next, Ok(joined)))
            })
            .await?;
        Ok(decode_frontier(since?))
    }

    pub(crate) async fn finalize_shard(&self, shard: ShardId) -> Result<(), BackendError> {
        self.update_state(shard, true, |state, _fresh| {
            if state.finalized {
                return Ok(Step::Done(()));
            }
            let mut next = state.successor();
            next.since = None;
            next.upper = None;
            next.finalized = true;
            next.batches.clear();
            next.retired.clear();
            next.tokens.clear();
            Ok(Step::Write(next, ()))
        })
        .await?;
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
