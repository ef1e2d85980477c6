//! Garbage collection: deleting part objects no state references, and
//! commit log entries every shard has folded in.
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
//! - every part of a finalized shard;
//! - commit log entries ([`S3Backend::gc_log`], decision 120): entry `seq`
//!   once every shard it names has `applied >= seq` in its stored state,
//!   it is older than the grace period, and it is not the highest entry.
//!   A shard whose stored state lags behind such an entry (its writer
//!   stopped before folding it in) is folded forward first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tidemark_storage_types::{BackendError, ShardId};

use crate::clock::from_epoch_millis;
use crate::errors::{RequestContext, classify};
use crate::keys::Keys;
use crate::log::LogEntry;
use crate::state::ShardState;
use crate::store::{ListedObject, bounded_in_order};
use crate::{S3Backend, Step};

/// Log entries one gc pass looks at, at most (one listing page).
pub(crate) const LOG_GC_ENTRIES_PER_PASS: usize = 1000;

/// Shards one log gc pass folds forward, at most.
const LOG_GC_FOLDS_PER_PASS: usize = 64;

/// Requests a log gc pass has in flight at once.
const LOG_GC_CONCURRENCY: usize = 16;

/// What [`S3Backend::gc`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Shards whose objects were examined.
    pub shards_scanned: u64,
    /// Part objects deleted.
    pub parts_deleted: u64,
    /// What the commit log pass did.
    pub log: LogGcStats,
}

/// What one pass of [`S3Backend::gc_log`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogGcStats {
    /// Entries old enough to delete (and not the highest) that the pass
    /// read.
    pub entries_examined: u64,
    /// Entries deleted.
    pub entries_deleted: u64,
    /// Shards whose stored state was behind an old entry naming them,
    /// folded forward by the pass.
    pub shards_folded: u64,
    /// S3 requests the pass made (listing, entry and state reads,
    /// deletes), not counting those of the folds.
    pub requests: u64,
    /// Whether the pass made progress and left work for a next one (the
    /// listing page was full, or folds were left out).
    pub more: bool,
}

/// When this handle last ran a log gc pass in the background.
#[derive(Debug, Default)]
pub(crate) struct LogGcSchedule {
    running: bool,
    last_started: Option<SystemTime>,
    more: bool,
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
        stats.log = self.gc_log().await?;
        Ok(stats)
    }

    /// One pass of commit log gc (decision 120): deletes, among the oldest
    /// 1,000 entries, each entry `seq` that
    /// - is not the highest entry (a committer finds where the log ends by
    ///   it),
    /// - is older than the grace period, by its `LastModified` and by the
    ///   time it records,
    /// - names only shards whose stored state has `applied >= seq`.
    ///
    /// A shard whose stored state is behind an entry that is otherwise
    /// deletable is folded forward first (one state CAS, at most
    /// 64 a pass; not while the applier is held):
    /// a writer that stopped before folding its entries in, or a shard
    /// finalized through the log and never written since, would otherwise
    /// keep them forever. With nothing deletable the pass is one listing
    /// (the entries are young, or only the highest is left). Safe to run
    /// at any time, from any process, concurrently with appends, reads and
    /// other passes.
    ///
    /// # Errors
    ///
    /// S3 failures, classified as for every operation; a failed pass leaves
    /// the log readable (a later pass finishes the job).
    pub async fn gc_log(&self) -> Result<LogGcStats, BackendError> {
        let mut stats = LogGcStats::default();
        let store = self.store();
        let grace = self.config().grace_period;
        let now = self.clock().now();
        let old = |time: SystemTime| now.duration_since(time).is_ok_and(|age| age >= grace);
        let (listed, truncated) = self.list_log_page(LOG_GC_ENTRIES_PER_PASS).await?;
        stats.requests += 1;
        let mut work_left = truncated;
        let candidates = log_gc_candidates(&store.keys, &listed, truncated, now, grace);
        if candidates.is_empty() {
            return Ok(stats);
        }

        let reads = candidates
            .iter()
            .map(|&seq| async move {
                let cached = self.cached_log_entry(seq).is_some();
                (cached, self.get_log_entry(seq).await)
            })
            .collect();
        let mut entries = Vec::with_capacity(candidates.len());
        for (cached, entry) in bounded_in_order(reads, LOG_GC_CONCURRENCY).await {
            if !cached {
                stats.requests += 1;
            }
            // Gone: another pass deleted it meanwhile.
            let Some(entry) = entry? else {
                continue;
            };
            if !old(from_epoch_millis(entry.written_at_ms)) {
                break;
            }
            entries.push(entry);
        }
        stats.entries_examined = entries.len() as u64;

        let mut named: Vec<ShardId> = entries.iter().flat_map(|entry| entry.shards()).collect();
        named.sort();
        named.dedup();
        let reads = named
            .iter()
            .map(|&shard| async move { (shard, store.get_state(shard).await) })
            .collect();
        let mut applied: HashMap<ShardId, u64> = HashMap::new();
        for (shard, read) in bounded_in_order(reads, LOG_GC_CONCURRENCY).await {
            stats.requests += 1;
            match read? {
                Some((state, _)) => match state.log {
                    Some(link) => {
                        applied.insert(shard, link.applied);
                    }
                    None => {
                        tracing::warn!(%shard, "a commit log entry names a shard not in log mode; its entries are kept");
                    }
                },
                None => {
                    tracing::warn!(%shard, "a commit log entry names a shard without a state; its entries are kept");
                }
            }
        }

        // Shards behind an entry that waits only for them, oldest first.
        let mut lagging = Vec::new();
        for entry in &entries {
            for shard in entry.shards() {
                if applied.get(&shard).is_some_and(|&at| at < entry.seq)
                    && !lagging.contains(&shard)
                {
                    lagging.push(shard);
                }
            }
        }
        if self.log_applier_held() {
            lagging.clear();
        } else {
            if lagging.len() > LOG_GC_FOLDS_PER_PASS {
                work_left = true;
                lagging.truncate(LOG_GC_FOLDS_PER_PASS);
            }
            let folds = lagging
                .iter()
                .map(|&shard| async move {
                    let folded = self
                        .update_state(shard, false, |_, _| Ok(Step::Done(())))
                        .await;
                    (shard, folded)
                })
                .collect();
            for (shard, folded) in bounded_in_order(folds, LOG_GC_CONCURRENCY).await {
                match folded {
                    Ok((_, state)) => {
                        stats.shards_folded += 1;
                        if let Some(link) = state.log {
                            applied.insert(shard, link.applied);
                        }
                    }
                    Err(err) => {
                        tracing::debug!(%shard, error = %err, "could not fold the commit log into a state for gc; a later pass will");
                    }
                }
            }
        }

        let doomed: Vec<String> = folded_entries(&entries, &applied)
            .map(|seq| store.keys.log_entry(seq))
            .collect();
        if !doomed.is_empty() {
            stats.entries_deleted = doomed.len() as u64;
            stats.requests += doomed.len().div_ceil(1000) as u64;
            store
                .delete_many("delete_applied_log_entries", doomed)
                .await?;
        }
        // Only a pass that got somewhere asks for another at once.
        stats.more = work_left && (stats.entries_deleted > 0 || stats.shards_folded > 0);
        Ok(stats)
    }

    /// The oldest `limit` keys under `log/`, and whether there are more.
    async fn list_log_page(&self, limit: usize) -> Result<(Vec<ListedObject>, bool), BackendError> {
        const OPERATION: &str = "list_log_for_gc";
        let store = self.store();
        let dir = store.keys.log_dir();
        let output = store
            .client
            .list_objects_v2()
            .bucket(&store.bucket)
            .prefix(&dir)
            .max_keys(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|err| {
                classify(
                    err,
                    RequestContext {
                        operation: OPERATION,
                        bucket: &store.bucket,
                        key: &dir,
                    },
                )
                .into_backend_error(OPERATION, &dir)
            })?;
        let listed: Vec<ListedObject> = output
            .contents()
            .iter()
            .filter_map(|object| {
                Some(ListedObject {
                    key: object.key()?.to_string(),
                    last_modified: object
                        .last_modified()
                        .and_then(|time| SystemTime::try_from(*time).ok()),
                })
            })
            .collect();
        // A server that ignores the limit still has its page cut here.
        let truncated = output.is_truncated().unwrap_or(false) || listed.len() > limit;
        Ok((listed.into_iter().take(limit).collect(), truncated))
    }

    /// Starts a log gc pass in the background if none is running and the
    /// last one started at least a quarter of the grace period ago (or
    /// left work). Entries become deletable a grace period after they are
    /// written, so the log then holds about 1.25 grace periods of entries.
    pub(crate) fn gc_log_in_background(&self) {
        if self.log_applier_held() {
            return;
        }
        let now = self.clock().now();
        let interval = self.config().grace_period / 4;
        {
            let mut schedule = tidemark_storage_types::sync::lock(&self.inner.log_gc);
            let due = schedule.more
                || schedule.last_started.is_none_or(|started| {
                    now.duration_since(started)
                        .map_or(true, |since| since >= interval)
                });
            if schedule.running || !due {
                return;
            }
            schedule.running = true;
            schedule.last_started = Some(now);
        }
        let backend = self.clone();
        self.spawn_background(async move {
            let more = match backend.gc_log().await {
                Ok(stats) => stats.more,
                Err(err) => {
                    tracing::debug!(error = %err, "a background commit log gc pass failed; a later one will retry");
                    false
                }
            };
            let mut schedule = tidemark_storage_types::sync::lock(&backend.inner.log_gc);
            schedule.running = false;
            schedule.more = more;
        });
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

/// The seqs of a listing of the log (oldest first; `truncated` if more
/// keys follow) that may be deleted if folded in: not the highest entry,
/// and older than `grace` by `LastModified`.
///
/// `SUBTLE:` the highest entry is never deleted, so the highest entry ever
/// written always exists: a listing shows where the log ends, and a
/// committer never finds a deleted seq free below it. A page with more
/// keys after it holds no highest entry.
fn log_gc_candidates(
    keys: &Keys,
    listed: &[ListedObject],
    truncated: bool,
    now: SystemTime,
    grace: Duration,
) -> Vec<u64> {
    let below_head = if truncated {
        listed.len()
    } else {
        listed.len().saturating_sub(1)
    };
    let mut candidates = Vec::new();
    for object in &listed[..below_head] {
        let Some(seq) = keys.log_seq(&object.key) else {
            continue;
        };
        // Entries are created in seq order: the ones after a young entry
        // are young too.
        let old = object
            .last_modified
            .is_some_and(|modified| now.duration_since(modified).is_ok_and(|age| age >= grace));
        if !old {
            break;
        }
        candidates.push(seq);
    }
    candidates
}

/// The seqs of `entries` every shard they name has folded in, by the
/// `applied` of its stored state (a shard missing from `applied` has not).
fn folded_entries<'a>(
    entries: &'a [Arc<LogEntry>],
    applied: &'a HashMap<ShardId, u64>,
) -> impl Iterator<Item = u64> + 'a {
    entries
        .iter()
        .filter(|entry| {
            entry
                .shards()
                .all(|shard| applied.get(&shard).is_some_and(|&at| at >= entry.seq))
        })
        .map(|entry| entry.seq)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Change, LOG_ENTRY_FORMAT, LogCall, LogPart};

    fn listed(keys: &Keys, seq: u64, age: Duration, now: SystemTime) -> ListedObject {
        ListedObject {
            key: keys.log_entry(seq),
            last_modified: Some(now - age),
        }
    }

    #[test]
    fn candidates_are_old_and_below_the_highest_entry() {
        let keys = Keys::new("p");
        let now = SystemTime::now();
        let grace = Duration::from_secs(60);
        let old = Duration::from_secs(61);
        let page: Vec<_> = (1..=4).map(|seq| listed(&keys, seq, old, now)).collect();
        assert_eq!(
            log_gc_candidates(&keys, &page, false, now, grace),
            vec![1, 2, 3],
            "the highest entry stays"
        );
        assert_eq!(
            log_gc_candidates(&keys, &page, true, now, grace),
            vec![1, 2, 3, 4],
            "a page with keys after it holds no highest entry"
        );
        let mut young = page.clone();
        young[1].last_modified = Some(now - Duration::from_secs(5));
        assert_eq!(log_gc_candidates(&keys, &young, true, now, grace), vec![1]);
        young[0].last_modified = None;
        assert!(log_gc_candidates(&keys, &young, true, now, grace).is_empty());
        let mut stray = page;
        stray[0].key = "p/log/not-an-entry".to_string();
        assert_eq!(
            log_gc_candidates(&keys, &stray, false, now, grace),
            vec![2, 3]
        );
        assert!(log_gc_candidates(&keys, &[], false, now, grace).is_empty());
    }

    #[test]
    fn an_entry_is_folded_when_every_shard_it_names_is_past_it() {
        let first = ShardId::from_bytes([1; 16]);
        let second = ShardId::from_bytes([2; 16]);
        let entry = |seq: u64, shards: &[ShardId]| {
            Arc::new(LogEntry {
                format: LOG_ENTRY_FORMAT,
                seq,
                written_at_ms: 0,
                attempt: uuid::Uuid::new_v4(),
                calls: vec![LogCall {
                    token: None,
                    fence: None,
                    parts: shards
                        .iter()
                        .map(|&shard| LogPart {
                            shard,
                            change: Change::Finalize,
                            epoch: 0,
                        })
                        .collect(),
                }],
            })
        };
        let entries = vec![
            entry(3, &[first]),
            entry(4, &[first, second]),
            entry(5, &[second]),
            entry(6, &[first]),
        ];
        let applied = HashMap::from([(first, 5), (second, 4)]);
        assert_eq!(
            folded_entries(&entries, &applied).collect::<Vec<_>>(),
            vec![3, 4],
            "5 waits for the second shard, 6 for the first"
        );
        let only_first = HashMap::from([(first, 9)]);
        assert_eq!(
            folded_entries(&entries, &only_first).collect::<Vec<_>>(),
            vec![3, 6],
            "a shard without a known state keeps its entries"
        );
    }
}
