//! The [`PersistBackend`](crate::PersistBackend) contract's checks of a
//! call's arguments, written once for every backend.
//!
//! Each check answers the [`InvalidUsage`] the contract names for a call
//! that breaks it, before the backend does anything. A backend calls them
//! with what it read of the shard (its since and upper) where the check
//! needs that; a new backend gets the same answers, messages included, for
//! free.

use std::collections::BTreeSet;

use timely::PartialOrder;
use timely::progress::Antichain;

use crate::backend::{EarlierAttempts, ShardAppend, WriteFence};
use crate::errors::{BackendError, DeterminateKind, ErasedFrontier, ErasedTime, InvalidUsage};
use crate::ids::ShardId;
use crate::time::{StorageTimestamp, Update, display_frontier, readable_at};

/// Checks the bounds of a
/// [`compare_and_append`](crate::PersistBackend::compare_and_append):
/// `new_upper` not behind `expected_upper`, and every update time in
/// `[expected_upper, new_upper)` (`expected_upper <= time` and not
/// `new_upper <= time`; an empty `new_upper` admits every time from
/// `expected_upper` on, an empty `expected_upper` none).
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_types::{InvalidUsage, Row, ShardId, Update, contract};
/// let shard = ShardId::new();
/// let (lower, upper) = (Antichain::from_elem(2u64), Antichain::from_elem(5u64));
/// let inside = [Update::new(Row::default(), 4u64, 1)];
/// assert!(contract::check_append_bounds(shard, &inside, &lower, &upper).is_ok());
/// let outside = [Update::new(Row::default(), 5u64, 1)];
/// let err = contract::check_append_bounds(shard, &outside, &lower, &upper).unwrap_err();
/// assert!(matches!(err, InvalidUsage::UpdateOutsideBounds { .. }));
/// let err = contract::check_append_bounds::<u64>(shard, &[], &upper, &lower).unwrap_err();
/// assert!(matches!(err, InvalidUsage::UpperRegression { .. }));
/// ```
///
/// # Errors
///
/// [`InvalidUsage::UpperRegression`] if `new_upper` is behind
/// `expected_upper`; otherwise [`InvalidUsage::UpdateOutsideBounds`] naming
/// the first update outside the bounds.
pub fn check_append_bounds<T: StorageTimestamp>(
    shard: ShardId,
    updates: &[Update<T>],
    expected_upper: &Antichain<T>,
    new_upper: &Antichain<T>,
) -> Result<(), InvalidUsage> {
    if !PartialOrder::less_equal(expected_upper, new_upper) {
        return Err(InvalidUsage::UpperRegression {
            shard,
            expected_upper: display_frontier(expected_upper).to_string(),
            new_upper: display_frontier(new_upper).to_string(),
        });
    }
    let outside = updates.iter().find(|update| {
        !expected_upper.less_equal(&update.timestamp) || new_upper.less_equal(&update.timestamp)
    });
    match outside {
        Some(update) => Err(InvalidUsage::UpdateOutsideBounds {
            shard,
            time: update.timestamp.to_string(),
            expected_upper: display_frontier(expected_upper).to_string(),
            new_upper: display_frontier(new_upper).to_string(),
        }),
        None => Ok(()),
    }
}

/// Checks the arguments of a
/// [`compare_and_append_all`](crate::PersistBackend::compare_and_append_all):
/// no shard named twice, and every part's bounds as
/// [`check_append_bounds`] checks them. Parts are checked in the call's
/// order, so the error names the first offending part; a backend that gets
/// an error writes nothing at all.
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_types::{InvalidUsage, Row, ShardAppend, ShardId, Update, contract};
/// let part = |shard, time| ShardAppend {
///     shard,
///     updates: vec![Update::new(Row::default(), time, 1)],
///     expected_upper: Antichain::from_elem(0u64),
///     new_upper: Antichain::from_elem(5u64),
/// };
/// let (a, b) = (ShardId::new(), ShardId::new());
/// assert!(contract::check_append_all(&[part(a, 1), part(b, 4)]).is_ok());
/// let err = contract::check_append_all(&[part(a, 1), part(b, 9)]).unwrap_err();
/// assert!(matches!(err, InvalidUsage::UpdateOutsideBounds { shard, .. } if shard == b));
/// let err = contract::check_append_all(&[part(a, 1), part(a, 2)]).unwrap_err();
/// assert_eq!(err, InvalidUsage::DuplicateShardInAppend { shard: a });
/// ```
///
/// # Errors
///
/// [`InvalidUsage::DuplicateShardInAppend`] for a shard already named by an
/// earlier part; otherwise the error of [`check_append_bounds`] for the
/// first part whose bounds are broken.
pub fn check_append_all<T: StorageTimestamp>(
    appends: &[ShardAppend<T>],
) -> Result<(), InvalidUsage> {
    let mut seen = BTreeSet::new();
    for part in appends {
        if !seen.insert(part.shard) {
            return Err(InvalidUsage::DuplicateShardInAppend { shard: part.shard });
        }
        check_append_bounds(
            part.shard,
            &part.updates,
            &part.expected_upper,
            &part.new_upper,
        )?;
    }
    Ok(())
}

/// The positions of a
/// [`compare_and_append_all`](crate::PersistBackend::compare_and_append_all)'s
/// parts sorted by shard id: the order in which a backend that locks each
/// shard takes the locks, so that two calls sharing shards never wait for
/// each other in a cycle.
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_types::{ShardAppend, ShardId, contract};
/// let part = |shard| ShardAppend::<u64> {
///     shard,
///     updates: vec![],
///     expected_upper: Antichain::from_elem(0),
///     new_upper: Antichain::from_elem(1),
/// };
/// let (mut low, mut high) = (ShardId::new(), ShardId::new());
/// if high < low {
///     std::mem::swap(&mut low, &mut high);
/// }
/// assert_eq!(contract::lock_order(&[part(high), part(low)]), vec![1, 0]);
/// ```
#[must_use]
pub fn lock_order<T>(appends: &[ShardAppend<T>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..appends.len()).collect();
    order.sort_by_key(|index| appends[*index].shard);
    order
}

/// Checks that a [`snapshot`](crate::PersistBackend::snapshot) at `as_of`
/// is readable given the shard's `since` and `upper`: `since <= as_of` and
/// not `upper <= as_of`.
///
/// # Errors
///
/// [`InvalidUsage::AsOfNotReadable`] carrying the frontiers, so a caller can
/// tell "before since" from "not yet written".
pub fn check_readable<T: StorageTimestamp>(
    shard: ShardId,
    since: &Antichain<T>,
    upper: &Antichain<T>,
    as_of: &T,
) -> Result<(), InvalidUsage> {
    if readable_at(since, upper, as_of) {
        return Ok(());
    }
    Err(InvalidUsage::AsOfNotReadable {
        shard,
        as_of: ErasedTime::new(as_of),
        since: ErasedFrontier::new(since),
        upper: ErasedFrontier::new(upper),
    })
}

/// Checks the range of a [`fetch`](crate::PersistBackend::fetch): `lower <=
/// upper` and `upper` not beyond the shard's upper (only final data can be
/// fetched).
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_types::{ShardId, contract};
/// let shard = ShardId::new();
/// let (three, five) = (Antichain::from_elem(3u64), Antichain::from_elem(5u64));
/// assert!(contract::check_fetch_range(shard, &three, &five, &five).is_ok());
/// assert!(contract::check_fetch_range(shard, &five, &three, &five).is_err());
/// assert!(contract::check_fetch_range(shard, &three, &five, &three).is_err());
/// ```
///
/// # Errors
///
/// [`InvalidUsage::FetchRangeInvalid`] otherwise.
pub fn check_fetch_range<T: StorageTimestamp>(
    shard: ShardId,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    shard_upper: &Antichain<T>,
) -> Result<(), InvalidUsage> {
    if PartialOrder::less_equal(lower, upper) && PartialOrder::less_equal(upper, shard_upper) {
        return Ok(());
    }
    Err(InvalidUsage::FetchRangeInvalid {
        shard,
        lower: display_frontier(lower).to_string(),
        upper: display_frontier(upper).to_string(),
        shard_upper: display_frontier(shard_upper).to_string(),
    })
}

/// Checks the frontier of a
/// [`wait_for_upper_past`](crate::PersistBackend::wait_for_upper_past): no
/// upper is ever past the empty frontier, so waiting for one could never
/// finish.
///
/// # Errors
///
/// [`InvalidUsage::WaitPastEmptyFrontier`] if `frontier` is empty.
pub fn check_wait_frontier<T>(shard: ShardId, frontier: &Antichain<T>) -> Result<(), InvalidUsage> {
    if frontier.is_empty() {
        return Err(InvalidUsage::WaitPastEmptyFrontier { shard });
    }
    Ok(())
}

/// Checks a write's [`WriteFence`] against the shard's recorded writer
/// epoch and returns the epoch the shard records if the write goes ahead:
/// the higher of the two for [`WriteFence::Epoch`], unchanged for
/// [`WriteFence::Unfenced`].
///
/// ```
/// use tidemark_storage_types::{DeterminateKind, ShardId, WriteFence, contract};
/// let shard = ShardId::new();
/// assert_eq!(contract::check_fence(shard, 3, WriteFence::Epoch(5)), Ok(5));
/// assert_eq!(contract::check_fence(shard, 3, WriteFence::Epoch(3)), Ok(3));
/// assert_eq!(contract::check_fence(shard, 3, WriteFence::Unfenced), Ok(3));
/// let err = contract::check_fence(shard, 3, WriteFence::Epoch(2)).unwrap_err();
/// assert_eq!(err.determinate_kind(), Some(DeterminateKind::Fenced));
/// ```
///
/// # Errors
///
/// `Determinate(Fenced)` naming both epochs if the write's epoch is lower
/// than the shard's.
pub fn check_fence(
    shard: ShardId,
    shard_epoch: u64,
    fence: WriteFence,
) -> Result<u64, BackendError> {
    match fence {
        WriteFence::Unfenced => Ok(shard_epoch),
        WriteFence::Epoch(epoch) if epoch >= shard_epoch => Ok(epoch),
        WriteFence::Epoch(epoch) => Err(fenced(shard, shard_epoch, epoch)),
    }
}

/// The `Determinate(Fenced)` error of a write with epoch `epoch` refused by
/// a shard whose recorded epoch is `shard_epoch`.
#[must_use]
pub fn fenced(shard: ShardId, shard_epoch: u64, epoch: u64) -> BackendError {
    BackendError::determinate(
        DeterminateKind::Fenced,
        format!(
            "write fenced by a newer writer, nothing written: shard={shard} write_epoch={epoch} shard_epoch={shard_epoch}"
        ),
    )
}

/// What an [`UpperMismatch`](crate::UpperMismatch) answer says about earlier
/// attempts of an append whose token (with its bounds) the backend does not
/// remember.
///
/// `oldest_remembered_lower` is the `expected_upper` of the oldest append
/// the backend still remembers, or `None` if it has forgotten none of the
/// shard's applied appends. Applied appends form a chain (each one's
/// `expected_upper` is the previous one's `new_upper`), so every forgotten
/// append has a `new_upper <= oldest_remembered_lower`: an append whose
/// `new_upper` is not that low cannot have been forgotten, and did not
/// apply.
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_types::{EarlierAttempts, contract};
/// let (five, nine) = (Antichain::from_elem(5u64), Antichain::from_elem(9u64));
/// assert_eq!(contract::earlier_attempts(&five, None), EarlierAttempts::NotApplied);
/// assert_eq!(contract::earlier_attempts(&five, Some(&nine)), EarlierAttempts::Undetermined);
/// assert_eq!(contract::earlier_attempts(&nine, Some(&five)), EarlierAttempts::NotApplied);
/// ```
pub fn earlier_attempts<T: StorageTimestamp>(
    new_upper: &Antichain<T>,
    oldest_remembered_lower: Option<&Antichain<T>>,
) -> EarlierAttempts {
    match oldest_remembered_lower {
        Some(lower) if PartialOrder::less_equal(new_upper, lower) => EarlierAttempts::Undetermined,
        _ => EarlierAttempts::NotApplied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Row;

    fn at(time: u64) -> Update<u64> {
        Update::new(Row::default(), time, 1)
    }

    #[test]
    fn append_bounds_follow_the_frontiers() {
        let shard = ShardId::new();
        let two = Antichain::from_elem(2u64);
        let five = Antichain::from_elem(5u64);
        let sealed = Antichain::<u64>::new();
        assert!(check_append_bounds(shard, &[at(2), at(4)], &two, &five).is_ok());
        assert!(check_append_bounds(shard, &[at(1)], &two, &five).is_err());
        assert!(check_append_bounds(shard, &[at(5)], &two, &five).is_err());
        // Sealing admits every time from the expected upper on.
        assert!(check_append_bounds(shard, &[at(u64::MAX)], &two, &sealed).is_ok());
        // Nothing can be appended at or after the empty frontier.
        assert!(check_append_bounds::<u64>(shard, &[], &sealed, &sealed).is_ok());
        assert!(check_append_bounds(shard, &[at(9)], &sealed, &sealed).is_err());
        let err = check_append_bounds(shard, &[at(7)], &two, &five).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "update at time 7 is outside the append bounds: shard={shard} expected_upper=[2] new_upper=[5]"
            )
        );
        assert!(matches!(
            check_append_bounds::<u64>(shard, &[], &sealed, &five),
            Err(InvalidUsage::UpperRegression { .. })
        ));
    }

    #[test]
    fn append_all_checks_every_part_and_duplicates() {
        let (a, b) = (ShardId::new(), ShardId::new());
        let part = |shard, updates: Vec<Update<u64>>, lower: u64, upper: Option<u64>| ShardAppend {
            shard,
            updates,
            expected_upper: Antichain::from_elem(lower),
            new_upper: upper.map_or_else(Antichain::new, Antichain::from_elem),
        };
        assert_eq!(check_append_all::<u64>(&[]), Ok(()));
        assert_eq!(
            check_append_all(&[
                part(a, vec![at(3)], 2, Some(5)),
                part(b, vec![at(9)], 7, None)
            ]),
            Ok(())
        );
        assert!(matches!(
            check_append_all(&[part(a, vec![], 2, Some(5)), part(b, vec![], 7, Some(6))]),
            Err(InvalidUsage::UpperRegression { shard, .. }) if shard == b
        ));
        let duplicate =
            check_append_all(&[part(a, vec![], 0, Some(1)), part(a, vec![], 1, Some(2))])
                .unwrap_err();
        assert_eq!(duplicate, InvalidUsage::DuplicateShardInAppend { shard: a });
        assert_eq!(
            duplicate.to_string(),
            format!("shard {a} appears more than once in one atomic append")
        );
    }

    #[test]
    fn lock_order_sorts_by_shard() {
        let mut shards: Vec<ShardId> = (0..5).map(|_| ShardId::new()).collect();
        let parts: Vec<ShardAppend<u64>> = shards
            .iter()
            .map(|shard| ShardAppend {
                shard: *shard,
                updates: vec![],
                expected_upper: Antichain::from_elem(0),
                new_upper: Antichain::from_elem(1),
            })
            .collect();
        let ordered: Vec<ShardId> = lock_order(&parts)
            .into_iter()
            .map(|i| parts[i].shard)
            .collect();
        shards.sort();
        assert_eq!(ordered, shards);
    }

    #[test]
    fn not_readable_tells_before_since_from_not_yet_written() {
        let shard = ShardId::new();
        let since = Antichain::from_elem(3u64);
        let upper = Antichain::from_elem(6u64);
        assert!(check_readable(shard, &since, &upper, &3).is_ok());
        let before_since = check_readable(shard, &since, &upper, &2).unwrap_err();
        let InvalidUsage::AsOfNotReadable {
            as_of,
            since: err_since,
            upper: err_upper,
            ..
        } = before_since
        else {
            panic!("expected AsOfNotReadable")
        };
        assert!(!err_since.less_equal(&as_of));
        assert!(!err_upper.less_equal(&as_of));
        assert_eq!(err_since.decode::<u64>(), since);
        assert_eq!(as_of.decode::<u64>(), 2);
        let not_yet = check_readable(shard, &since, &upper, &6).unwrap_err();
        let InvalidUsage::AsOfNotReadable {
            as_of,
            since,
            upper,
            ..
        } = not_yet
        else {
            panic!("expected AsOfNotReadable")
        };
        assert!(since.less_equal(&as_of) && upper.less_equal(&as_of));
        let sealed = check_readable(shard, &Antichain::new(), &Antichain::new(), &0u64);
        let Err(InvalidUsage::AsOfNotReadable { since, .. }) = sealed else {
            panic!("expected AsOfNotReadable")
        };
        assert!(since.is_empty());
    }

    #[test]
    fn fetch_range_and_wait_frontier() {
        let shard = ShardId::new();
        let empty = Antichain::<u64>::new();
        let one = Antichain::from_elem(1u64);
        assert!(check_fetch_range(shard, &one, &empty, &empty).is_ok());
        assert!(check_fetch_range(shard, &empty, &one, &empty).is_err());
        assert!(check_wait_frontier(shard, &one).is_ok());
        assert_eq!(
            check_wait_frontier(shard, &empty),
            Err(InvalidUsage::WaitPastEmptyFrontier { shard })
        );
    }
}
