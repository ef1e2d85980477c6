//! Garbage collection: deleting part objects no state references.
//!
//! Unreferenced parts come from appends and compactions that wrote parts
//! and then lost their compare-and-swap (and could not delete them), or
//! whose commit was indeterminate, and from compaction (replaced parts,
//! listed as retired in the state). [`S3Backend::gc`] deletes:
//!
//! - retired parts once the grace period has passed since they were
//!   retired (and drops them from the state);
//! - parts neither referenced nor retired whose `LastModified` is older
//!   than the grace period (an append in flight writes its parts just
//!   before committing, so a young unreferenced part may be about to be
//!   referenced);
//! - every part of a finalized shard.

use std::collections::{BTreeMap, HashSet};

use tidemark_storage_types::{BackendError, ShardId};

use crate::state::ShardState;
use crate::store::ListedObject;
use crate::{S3Backend, Step};

/// What [`S3Backend::gc`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Shards whose objects were examined.
    pub shards_scanned: u64,
    /// Part objects deleted.
    pub parts_deleted: u64,
}

impl S3Backend {
    /// Deletes the part objects of every shard under this prefix that no
    /// state references: parts compaction retired, once the grace period has
    /// passed since they were retired; parts neither referenced nor retired
    /// (left by writers that lost a race or crashed), once their
    /// `LastModified` is older than the grace period; and every part of a
    /// finalized shard. Safe to run at any time, from any process,
    /// concurrently with appends, reads and compactions.
    ///
    /// # Errors
    ///
    /// S3 failures, classified as for every operation; a failure leaves
    /// everything readable (a later run finishes the job).
    pub async fn gc(&self) -> Result<GcStats, BackendError> {
        let store = self.store();
        let shards_dir = store.keys.shards_dir();
        let mut objects_by_shard: BTreeMap<ShardId, Vec<ListedObject>> = BTreeMap::new();
        for object in store.list("list_shard_objects", &shards_dir).await? {
            let Some(rest) = object.key.strip_prefix(&shards_dir) else {
                continue;
            };
            let Some((shard, _)) = rest.split_once('/') else {
                continue;
            };
            let Ok(shard) = shard.parse::<ShardId>() else {
                continue;
            };
            objects_by_shard.entry(shard).or_default().push(object);
        }
        let mut stats = GcStats::default();
        for (shard, objects) in objects_by_shard {
            stats.shards_scanned += 1;
            stats.parts_deleted += self.gc_shard(shard, objects).await?;
        }
        Ok(stats)
    }

    async fn gc_shard(
        &self,
        shard: ShardId,
        objects: Vec<ListedObject>,
    ) -> Result<u64, BackendError> {
        let store = self.store();
        let state = match store.get_state(shard).await? {
            // SUBTLE: a log-mode shard's parts are referenced by its state
            // and by the log entries not yet folded into it.
            Some((state, _)) if state.log.is_some() => Some(
                self.read_view(shard, std::sync::Arc::new(state))
                    .await?
                    .as_ref()
                    .clone(),
            ),
            other => other.map(|(state, _)| state),
        };
        let grace = self.config().grace_period;
        let now = self.clock().now();
        let old_enough = |object: &ListedObject| {
            object
                .last_modified
                .is_some_and(|modified| now.duration_since(modified).is_ok_and(|age| age >= grace))
        };
        let parts = objects
            .into_iter()
            .filter(|object| store.keys.part_id(shard, &object.key).is_some());
        let doomed: Vec<String> = match &state {
            Some(state) if state.finalized => parts.map(|object| object.key).collect(),
            Some(state) => {
                let kept = kept_parts(state);
                parts
                    .filter(|object| {
                        let id = store.keys.part_id(shard, &object.key);
                        id.is_some_and(|id| !kept.contains(&id)) && old_enough(object)
                    })
                    .map(|object| object.key)
                    .collect()
            }
            // A state that was never created: parts of an open that failed.
            None => parts.filter(old_enough).map(|object| object.key).collect(),
        };
        let mut deleted = doomed.len() as u64;
        store
            .delete_many("delete_unreferenced_parts", doomed)
            .await?;

        if let Some(state) = state.filter(|state| !state.retired.is_empty()) {
            let expired = self.delete_expired_retired(shard, &state).await?;
            if !expired.is_empty() {
                deleted += expired.len() as u64;
                self.update_state(shard, false, |current, _fresh| {
                    if !current
                        .retired
                        .iter()
                        .any(|retired| expired.contains(&retired.id))
                    {
                        return Ok(Step::Done(()));
                    }
                    let mut next = current.successor();
                    next.retired
                        .retain(|retired| !expired.contains(&retired.id));
                    Ok(Step::Write(next, ()))
                })
                .await?;
            }
        }
        Ok(deleted)
    }
}

/// Parts the state references or has retired (retired ones are deleted by
/// their own rule).
fn kept_parts(state: &ShardState) -> HashSet<uuid::Uuid> {
    state
        .referenced_parts()
        .map(|part| part.id)
        .chain(state.retired.iter().map(|retired| retired.id))
        .collect()
}
