//! `compare_and_append_all`: one append over several shards, under all of
//! their locks at once.
//!
//! The call takes every shard's lock in shard-id order (so two calls that
//! share shards never wait for each other in a cycle), checks every shard
//! (token, fence, upper), and only then writes every shard and publishes
//! every new upper, before it releases any lock. Every read of a shard
//! takes that shard's lock, so a reader either runs before the call on
//! that shard or after the whole call: having seen the call on one shard,
//! a later read of another shard must wait for its lock, which is released
//! only once every part is written. See
//! `docs/decisions/110-atomic-multi-collection-appends.md`.

use std::sync::Arc;

use tidemark_storage_types::{
    BackendError, IdempotencyToken, ShardAppend, StorageTimestamp, UpperMismatches, WriteFence,
    contract,
};

use crate::registry::Store;
use crate::shard::{AppendCheck, LockedShard, PreparedAppend, Shard};

pub(crate) fn compare_and_append_all<T: StorageTimestamp>(
    store: &Store,
    appends: Vec<ShardAppend<T>>,
    token: IdempotencyToken,
    fence: WriteFence,
) -> Result<Result<(), UpperMismatches<T>>, BackendError> {
    contract::check_append_all(&appends)?;
    if appends.is_empty() {
        return Ok(Ok(()));
    }
    let shards: Vec<Arc<Shard<T>>> = appends
        .iter()
        .map(|part| store.shard::<T>(part.shard))
        .collect::<Result<_, _>>()?;
    let order = contract::lock_order(&appends);
    // Sorting and consolidating needs no state: done before any lock is
    // taken, so concurrent readers and writers wait less.
    let mut ids = Vec::with_capacity(appends.len());
    let mut parts = Vec::with_capacity(appends.len());
    for part in appends {
        ids.push(part.shard);
        parts.push(PreparedAppend::new(
            part.shard,
            part.updates,
            part.expected_upper,
            part.new_upper,
            token,
            fence,
        )?);
    }

    // SUBTLE: every lock is taken, in shard-id order, before anything is
    // checked, and held until every part is written.
    let mut slots: Vec<Option<LockedShard<'_, T>>> = shards.iter().map(|_| None).collect();
    for index in order {
        slots[index] = Some(shards[index].lock_for_write()?);
    }
    let mut locked: Vec<LockedShard<'_, T>> = slots.into_iter().flatten().collect();

    // Every shard is checked before anything is written; a check writes
    // nothing. A retry of a call that applied: the call applied on every
    // shard or on none, so one shard that remembers the token with its
    // bounds is proof, and it answers before any fence or upper.
    let checks: Vec<Result<AppendCheck<T>, BackendError>> = locked
        .iter()
        .zip(&parts)
        .map(|(shard, part)| shard.check_append(part))
        .collect();
    if checks
        .iter()
        .any(|check| matches!(check, Ok(AppendCheck::AlreadyApplied)))
    {
        return Ok(Ok(()));
    }
    let mut epochs = Vec::with_capacity(checks.len());
    let mut mismatches = Vec::new();
    for (id, check) in ids.iter().zip(checks) {
        match check? {
            AppendCheck::Applies { epoch } => epochs.push(epoch),
            AppendCheck::Mismatch(mismatch) => mismatches.push((*id, mismatch)),
            // Answered above, before any check could fail.
            AppendCheck::AlreadyApplied => return Ok(Ok(())),
        }
    }
    if !mismatches.is_empty() {
        return Ok(Err(UpperMismatches { mismatches }));
    }
    for ((shard, part), epoch) in locked.iter_mut().zip(parts).zip(epochs) {
        shard.apply_append(part, epoch);
    }
    // The locks are released here, after every part is written.
    drop(locked);
    Ok(Ok(()))
}
