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
/// holds all or none of each append.
#[derive(Debug)]
pub struct ReadView<T> {
    /// The since when the view was taken.
    pub since: Antichain<T>,
    /// The upper when the view was taken.
    pub upper: Antichain<T>,
    /// Every stored batch.
    pub batches: Vec<Arc<Batch<T>>>,
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
    pub fn compare_and_append(
        &self,
        updates: Vec<Update<T>>,
        expected_upper: Antichain<T>,
        new_upper: Antichain<T>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatch<T>>, BackendError> {
        contract::check_append_bounds(self.id, &updates, &expected_upper, &new_upper)?;
        // Sorting and consolidating needs no state: do it before taking the
        // lock so concurrent readers and writers wait less.
        let batch = batch_of(updates);

        let mut locked = self.lock_for_write()?;
        // SUBTLE: the token check comes before the upper check. A retry of an
        // append that applied finds the upper already moved past its
        // expected upper, and must answer success, not a mismatch.
        if locked.token_applied(&token, &expected_upper, &new_upper) {
            return Ok(Ok(()));
        }
        // The fence is checked under the same lock as the write below.
        let epoch = locked.check_fence(fence)?;
        if let Some(mismatch) = locked.mismatch(&expected_upper, &new_upper) {
            return Ok(Err(mismatch));
        }
        locked.apply(batch, expected_upper, new_upper, token, epoch);
        Ok(Ok(()))
    }

    /// The shard's state, locked for a check-and-write that may span
    /// several shards (see [`Locked`]).
    pub fn lock_for_write(&self) -> Result<Locked<'_, T>, BackendError> {
        Ok(Locked {
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

/// The updates of an append as a sorted, consolidated batch.
pub fn batch_of<T: StorageTimestamp>(updates: Vec<Update<T>>) -> Batch<T> {
    Batch::from_unsorted(
        updates
            .into_iter()
            .map(|update| (update.row, update.timestamp, update.diff))
            .collect(),
    )
}

/// A shard whose lock is held by a writer: the checks and the write of an
/// append, as separate steps so that an append over several shards can
/// check every shard before it writes any.
///
/// Nothing awaits while one is alive.
pub struct Locked<'a, T> {
    shard: &'a Shard<T>,
    state: MutexGuard<'a, ShardState<T>>,
}

impl<T: StorageTimestamp> Locked<'_, T> {
    /// Whether an append with `token` applied with exactly these bounds.
    pub fn token_applied(
        &self,
        token: &IdempotencyToken,
        expected_upper: &Antichain<T>,
        new_upper: &Antichain<T>,
    ) -> bool {
        self.state.tokens.applied(token, expected_upper, new_upper)
    }

    /// The writer epoch the shard records if a write with `fence` goes
    /// ahead.
    ///
    /// # Errors
    ///
    /// `Determinate(Fenced)` if `fence` is an epoch below the shard's.
    pub fn check_fence(&self, fence: WriteFence) -> Result<u64, BackendError> {
        contract::check_fence(self.shard.id, self.state.writer_epoch, fence)
    }

    /// The mismatch an append from `expected_upper` to `new_upper` meets,
    /// or `None` if the upper is `expected_upper`.
    pub fn mismatch(
        &self,
        expected_upper: &Antichain<T>,
        new_upper: &Antichain<T>,
    ) -> Option<UpperMismatch<T>> {
        if self.state.upper == *expected_upper {
            return None;
        }
        let earlier_attempts =
            contract::earlier_attempts(new_upper, self.state.tokens.oldest_remembered_lower());
        Some(UpperMismatch {
            expected: expected_upper.clone(),
            current: self.state.upper.clone(),
            earlier_attempts,
        })
    }

    /// Writes a checked append: stores `batch`, sets the upper, records the
    /// token and the epoch, and publishes the new upper.
    pub fn apply(
        &mut self,
        batch: Batch<T>,
        expected_upper: Antichain<T>,
        new_upper: Antichain<T>,
        token: IdempotencyToken,
        epoch: u64,
    ) {
        let state = &mut *self.state;
        state.writer_epoch = epoch;
        state.spine.insert(batch);
        state.upper = new_upper.clone();
        state
            .tokens
            .record(token, expected_upper, new_upper.clone());
        self.shard.upper_watch.send_replace(new_upper);
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
