//! One shard: its frontiers, stored updates and applied tokens behind one
//! lock, and a watch channel that publishes its upper.
//!
//! Every operation that checks state and then writes holds the shard's lock
//! across both, which makes operations on one shard linearizable. Nothing
//! awaits while holding the lock. Reads take a [`ReadView`] (frontiers plus
//! shared batches) under the lock and do their work after releasing it.

use std::sync::{Arc, Mutex, MutexGuard};

use differential_dataflow::lattice::Lattice;
use tidemark_storage_types::{
    BackendError, CompactionStats, IdempotencyToken, ShardFrontiers, ShardId, ShardUsage,
    StorageTimestamp, Update, UpperMismatch, WriteFence, contract,
};
use timely::progress::Antichain;
use tokio::sync::watch;

use crate::spine::{Batch, Spine, compact_batches};
use crate::tokens::{AppliedTokens, REMEMBERED_APPENDS};

/// A consistent view of a shard for a read: taken under the lock, so it
/// holds all or none of each append. Cloning shares the batches.
#[derive(Clone, Debug)]
pub struct ReadView<T> {
    /// The since when the view was taken.
    pub since: Antichain<T>,
    /// The upper when the view was taken.
    pub upper: Antichain<T>,
    /// Every stored batch.
    pub batches: Vec<Arc<Batch<T>>>,
}

/// An append checked against its own bounds, with its updates sorted and
/// consolidated into a batch: the part of an append that needs no lock.
#[derive(Debug)]
pub struct PreparedAppend<T> {
    batch: Batch<T>,
    expected_upper: Antichain<T>,
    new_upper: Antichain<T>,
    token: IdempotencyToken,
    fence: WriteFence,
}

impl<T: StorageTimestamp> PreparedAppend<T> {
    /// Checks the bounds of an append to `shard` and builds its batch.
    ///
    /// # Errors
    ///
    /// [`BackendError::InvalidUsage`] as
    /// [`contract::check_append_bounds`] gives it: a new upper before the
    /// expected upper, or an update outside `[expected_upper, new_upper)`.
    pub fn new(
        shard: ShardId,
        updates: Vec<Update<T>>,
        expected_upper: Antichain<T>,
        new_upper: Antichain<T>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Self, BackendError> {
        contract::check_append_bounds(shard, &updates, &expected_upper, &new_upper)?;
        // The updates move into the batch's tuples in place (same layout).
        let batch = Batch::from_unsorted(
            updates
                .into_iter()
                .map(|update| (update.row, update.timestamp, update.diff))
                .collect(),
        );
        Ok(PreparedAppend {
            batch,
            expected_upper,
            new_upper,
            token,
            fence,
        })
    }
}

/// What a [`PreparedAppend`] would do to a shard, as read under its lock.
#[derive(Debug)]
pub enum AppendCheck<T> {
    /// The append's token already applied with the same bounds: it answers
    /// success and writes nothing.
    AlreadyApplied,
    /// The shard's upper is not the append's expected upper.
    Mismatch(UpperMismatch<T>),
    /// The append applies, raising the shard's writer epoch to `epoch`.
    Applies {
        /// The writer epoch the shard has after the append.
        epoch: u64,
    },
}

/// A shard held under its lock: the checks and writes of an append, which
/// an append to several shards can run on each of them while holding every
/// lock.
#[derive(Debug)]
pub struct LockedShard<'a, T> {
    shard: &'a Shard<T>,
    state: MutexGuard<'a, ShardState<T>>,
}

impl<T: StorageTimestamp> LockedShard<'_, T> {
    /// What `append` would do, without writing anything.
    ///
    /// # Errors
    ///
    /// [`BackendError::Determinate`] of kind `Fenced` when the append's
    /// fence is older than the shard's writer epoch.
    pub fn check_append(&self, append: &PreparedAppend<T>) -> Result<AppendCheck<T>, BackendError> {
        let state = &self.state;
        // SUBTLE: the token check comes before the upper check. A retry of an
        // append that applied finds the upper already moved past its
        // expected upper, and must answer success, not a mismatch.
        if state
            .tokens
            .applied(&append.token, &append.expected_upper, &append.new_upper)
        {
            return Ok(AppendCheck::AlreadyApplied);
        }
        // The fence is checked under the same lock as the write that follows.
        let epoch = contract::check_fence(self.shard.id, state.writer_epoch, append.fence)?;
        if state.upper != append.expected_upper {
            let earlier_attempts = contract::earlier_attempts(
                &append.new_upper,
                state.tokens.oldest_remembered_lower(),
            );
            return Ok(AppendCheck::Mismatch(UpperMismatch {
                expected: append.expected_upper.clone(),
                current: state.upper.clone(),
                earlier_attempts,
            }));
        }
        Ok(AppendCheck::Applies { epoch })
    }

    /// Writes `append`, which [`check_append`](Self::check_append) answered
    /// [`AppendCheck::Applies`] with `epoch` for under this same lock:
    /// stores its batch, sets the upper, remembers the token and publishes
    /// the new upper.
    pub fn apply_append(&mut self, append: PreparedAppend<T>, epoch: u64) {
        let PreparedAppend {
            batch,
            expected_upper,
            new_upper,
            token,
            fence: _,
        } = append;
        let state = &mut *self.state;
        debug_assert!(state.upper == expected_upper);
        state.writer_epoch = epoch;
        state.spine.insert(batch);
        state.upper = new_upper.clone();
        state
            .tokens
            .record(token, expected_upper, new_upper.clone());
        self.shard.upper_watch.send_replace(new_upper);
    }
}

#[derive(Debug)]
struct ShardState<T> {
    since: Antichain<T>,
    upper: Antichain<T>,
    spine: Spine<T>,
    tokens: AppliedTokens<T>,
    /// The highest writer epoch a fenced write brought (0 at first).
    writer_epoch: u64,
    finalized: bool,
}

/// One shard of a memory store.
#[derive(Debug)]
pub struct Shard<T> {
    id: ShardId,
    state: Mutex<ShardState<T>>,
    /// Publishes the upper. SUBTLE: only ever sent while holding `state`'s
    /// lock, right after the upper changed, so a waiter never sees an upper
    /// older than one a reader already observed.
    upper_watch: watch::Sender<Antichain<T>>,
}

impl<T: StorageTimestamp> Shard<T> {
    /// A new shard with `since = upper = [minimum]`.
    pub fn new(id: ShardId) -> Self {
        let minimum = Antichain::from_elem(T::minimum());
        Shard {
            id,
            state: Mutex::new(ShardState {
                since: minimum.clone(),
                upper: minimum.clone(),
                spine: Spine::default(),
                tokens: AppliedTokens::with_capacity(REMEMBERED_APPENDS),
                writer_epoch: 0,
                finalized: false,
            }),
            upper_watch: watch::Sender::new(minimum),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, ShardState<T>>, BackendError> {
        self.state.lock().map_err(|_| {
            BackendError::indeterminate(format!(
                "memory shard state was poisoned by a panic during an earlier operation: shard={}",
                self.id
            ))
        })
    }

    /// The shard's since and upper.
    pub fn frontiers(&self) -> Result<ShardFrontiers<T>, BackendError> {
        let state = self.lock()?;
        Ok(ShardFrontiers {
            since: state.since.clone(),
            upper: state.upper.clone(),
        })
    }

    /// Whether the shard was finalized.
    pub fn is_finalized(&self) -> bool {
        // A poisoned lock still tells whether finalize completed: it sets the
        // flag last.
        match self.state.lock() {
            Ok(state) => state.finalized,
            Err(poisoned) => poisoned.into_inner().finalized,
        }
    }

    /// Iff the upper is `expected_upper`, stores `updates` and sets the upper
    /// to `new_upper`; a token already applied with these bounds answers
    /// success without writing. See
    /// [`PersistBackend::compare_and_append`](tidemark_storage_types::PersistBackend::compare_and_append).
    ///
    /// The steps are [`PreparedAppend::new`] (no lock), then
    /// [`LockedShard::check_append`] and [`LockedShard::apply_append`] under
    /// the shard's lock.
    pub fn compare_and_append(
        &self,
        updates: Vec<Update<T>>,
        expected_upper: Antichain<T>,
        new_upper: Antichain<T>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatch<T>>, BackendError> {
        let append =
            PreparedAppend::new(self.id, updates, expected_upper, new_upper, token, fence)?;
        let mut locked = self.lock_for_write()?;
        match locked.check_append(&append)? {
            AppendCheck::AlreadyApplied => Ok(Ok(())),
            AppendCheck::Mismatch(mismatch) => Ok(Err(mismatch)),
            AppendCheck::Applies { epoch } => {
                locked.apply_append(append, epoch);
                Ok(Ok(()))
            }
        }
    }

    /// The shard under its lock, for writes that check state and then
    /// write. Nothing may await while it is held.
    pub fn lock_for_write(&self) -> Result<LockedShard<'_, T>, BackendError> {
        Ok(LockedShard {
            shard: self,
            state: self.lock()?,
        })
    }

    /// The frontiers and shared batches, for a read done without the lock.
    pub fn read_view(&self) -> Result<ReadView<T>, BackendError> {
        let state = self.lock()?;
        Ok(ReadView {
            since: state.since.clone(),
            upper: state.upper.clone(),
            batches: state.spine.batches(),
        })
    }

    /// A receiver of the shard's upper.
    pub fn subscribe_upper(&self) -> watch::Receiver<Antichain<T>> {
        self.upper_watch.subscribe()
    }

    /// Sets since to its join with `new_since` and returns it, if `fence`
    /// admits the write (raising the shard's epoch to it).
    pub fn downgrade_since(
        &self,
        new_since: &Antichain<T>,
        fence: WriteFence,
    ) -> Result<Antichain<T>, BackendError> {
        let mut state = self.lock()?;
        state.writer_epoch = contract::check_fence(self.id, state.writer_epoch, fence)?;
        state.since = state.since.join(new_since);
        Ok(state.since.clone())
    }

    /// Physical compaction to the current since.
    ///
    /// The expensive part runs without the lock, on the batches and since
    /// read under it, so appends and reads go on meanwhile. The result
    /// replaces those batches only if no merge rewrote them in between;
    /// otherwise the compaction is redone under the lock. Compacting to a
    /// since read earlier is still correct: it is never ahead of the current
    /// since.
    pub fn compact(&self) -> Result<CompactionStats, BackendError> {
        let (input, since) = {
            let state = self.lock()?;
            (state.spine.batches(), state.since.clone())
        };
        let compacted = compact_batches(input.clone(), &since);

        let mut state = self.lock()?;
        let before = state.spine.usage();
        if !state.spine.replace_compacted(&input, compacted) {
            let since = state.since.clone();
            state.spine.compact_to(&since);
        }
        let after = state.spine.usage();
        Ok(CompactionStats {
            updates_before: before.updates,
            updates_after: after.updates,
            bytes_before: before.bytes,
            bytes_after: after.bytes,
        })
    }

    /// What the shard stores.
    pub fn usage(&self) -> Result<ShardUsage, BackendError> {
        let usage = self.lock()?.spine.usage();
        Ok(ShardUsage {
            updates: usage.updates,
            bytes: usage.bytes,
        })
    }

    /// Seals the shard and drops its data. Applied tokens are kept (they are
    /// bounded), so a retry of an append that applied before the shard was
    /// finalized still answers success.
    pub fn finalize(&self) -> Result<(), BackendError> {
        let mut state = self.lock()?;
        state.since = Antichain::new();
        state.upper = Antichain::new();
        state.spine.clear();
        state.finalized = true;
        self.upper_watch.send_replace(Antichain::new());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tidemark_storage_types::{Datum, InvalidUsage, Row};

    use super::*;

    fn update(value: i64, time: u64, diff: i64) -> Update<u64> {
        Update::new(Row::pack([Datum::Int64(value)]), time, diff)
    }

    fn frontier(time: u64) -> Antichain<u64> {
        Antichain::from_elem(time)
    }

    #[test]
    fn append_checks_bounds_before_anything_is_written() {
        let shard = Shard::<u64>::new(ShardId::new());
        let token = IdempotencyToken::new();
        let equal_bounds = shard.compare_and_append(
            vec![],
            frontier(0),
            frontier(0),
            token,
            WriteFence::Unfenced,
        );
        assert!(
            equal_bounds.is_ok(),
            "an equal new upper is not a regression"
        );
        let err = shard
            .compare_and_append(
                vec![],
                frontier(3),
                frontier(2),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                BackendError::InvalidUsage(InvalidUsage::UpperRegression { .. })
            ),
            "{err}"
        );
        let err = shard
            .compare_and_append(
                vec![update(1, 0, 1), update(2, 5, 1)],
                frontier(0),
                frontier(5),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .unwrap_err();
        assert!(err.to_string().contains("update at time 5"), "{err}");
        assert_eq!(shard.usage().unwrap(), ShardUsage::default());
        assert_eq!(shard.frontiers().unwrap().upper, frontier(0));
    }

    #[test]
    fn checking_an_append_writes_nothing_until_it_is_applied() {
        let shard = Shard::<u64>::new(ShardId::new());
        let prepare = |expected, new| {
            PreparedAppend::new(
                shard.id,
                vec![update(1, expected, 1)],
                frontier(expected),
                frontier(new),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .unwrap()
        };
        let append = prepare(0, 1);
        let mut locked = shard.lock_for_write().unwrap();
        let check = locked.check_append(&append).unwrap();
        assert!(
            matches!(check, AppendCheck::Applies { epoch: 0 }),
            "{check:?}"
        );
        assert_eq!(locked.state.upper, frontier(0), "checking wrote nothing");
        locked.apply_append(append, 0);
        assert_eq!(locked.state.upper, frontier(1));
        let stale = prepare(0, 2);
        let check = locked.check_append(&stale).unwrap();
        assert!(matches!(check, AppendCheck::Mismatch(_)), "{check:?}");
        drop(locked);
        assert_eq!(shard.usage().unwrap().updates, 1);
        assert_eq!(*shard.subscribe_upper().borrow(), frontier(1));
    }

    #[test]
    fn a_retried_append_applies_once() {
        let shard = Shard::<u64>::new(ShardId::new());
        let token = IdempotencyToken::new();
        let append = |token| {
            shard
                .compare_and_append(
                    vec![update(1, 0, 1)],
                    frontier(0),
                    frontier(1),
                    token,
                    WriteFence::Unfenced,
                )
                .unwrap()
        };
        assert_eq!(append(token), Ok(()));
        assert_eq!(append(token), Ok(()), "the retry answers success");
        assert_eq!(shard.usage().unwrap().updates, 1, "and writes nothing");
        assert_eq!(
            append(IdempotencyToken::new()),
            Err(UpperMismatch {
                expected: frontier(0),
                current: frontier(1),
                earlier_attempts: tidemark_storage_types::EarlierAttempts::NotApplied,
            }),
            "another token with the same bounds is a different write"
        );
    }

    #[test]
    fn appends_publish_the_upper_and_finalize_publishes_empty() {
        let shard = Shard::<u64>::new(ShardId::new());
        let receiver = shard.subscribe_upper();
        assert_eq!(*receiver.borrow(), frontier(0));
        shard
            .compare_and_append(
                vec![],
                frontier(0),
                frontier(4),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .unwrap()
            .unwrap();
        assert_eq!(*receiver.borrow(), frontier(4));
        shard.finalize().unwrap();
        assert!(receiver.borrow().is_empty());
        assert!(shard.is_finalized());
        let frontiers = shard.frontiers().unwrap();
        assert!(frontiers.since.is_empty() && frontiers.upper.is_empty());
    }

    #[test]
    fn since_only_moves_forward() {
        let shard = Shard::<u64>::new(ShardId::new());
        assert_eq!(
            shard
                .downgrade_since(&frontier(5), WriteFence::Unfenced)
                .unwrap(),
            frontier(5)
        );
        assert_eq!(
            shard
                .downgrade_since(&frontier(2), WriteFence::Unfenced)
                .unwrap(),
            frontier(5)
        );
        assert_eq!(
            shard
                .downgrade_since(&Antichain::new(), WriteFence::Unfenced)
                .unwrap(),
            Antichain::new()
        );
        assert_eq!(
            shard
                .downgrade_since(&frontier(9), WriteFence::Unfenced)
                .unwrap(),
            Antichain::new()
        );
    }

    #[test]
    fn compaction_reports_what_it_reclaimed() {
        let shard = Shard::<u64>::new(ShardId::new());
        for time in 0..10u64 {
            shard
                .compare_and_append(
                    vec![update(1, time, 1), update(2, time, 1), update(2, time, -1)],
                    frontier(time),
                    frontier(time + 1),
                    IdempotencyToken::new(),
                    WriteFence::Unfenced,
                )
                .unwrap()
                .unwrap();
        }
        shard
            .downgrade_since(&frontier(10), WriteFence::Unfenced)
            .unwrap();
        let stats = shard.compact().unwrap();
        assert_eq!(stats.updates_before, 10);
        assert_eq!(stats.updates_after, 1);
        assert_eq!(stats.bytes_before, 10 * stats.bytes_after);
        assert_eq!(shard.usage().unwrap().updates, 1);
    }
}
