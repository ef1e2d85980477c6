//! Read policies: how a collection's implied read capability follows its
//! write frontier.

use std::fmt;
use std::sync::Arc;

use timely::progress::frontier::AntichainRef;
use timely::progress::{Antichain, Timestamp};

use crate::time::{StorageTimestamp, step_back_frontier};

/// A function from a write frontier to the read frontier it allows.
pub type LagFn<T> = Arc<dyn Fn(AntichainRef<'_, T>) -> Antichain<T> + Send + Sync>;

/// Computes a collection's implied read capability from its write frontier.
///
/// The controller applies the computed frontier only when it is not behind
/// the current implied capability: capabilities never move backward.
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_types::ReadPolicy;
/// let upper = Antichain::from_elem(1_234u64);
/// assert_eq!(ReadPolicy::lag_writes_by(100, 10).frontier(upper.borrow()), Antichain::from_elem(1_130));
/// assert_eq!(ReadPolicy::step_back().frontier(upper.borrow()), Antichain::from_elem(1_233));
/// let both = ReadPolicy::Multiple(vec![
///     ReadPolicy::ValidFrom(Antichain::from_elem(7u64)),
///     ReadPolicy::step_back(),
/// ]);
/// assert_eq!(both.frontier(upper.borrow()), Antichain::from_elem(7));
/// ```
#[derive(Clone)]
pub enum ReadPolicy<T> {
    /// The capability stays at `initial_since` forever.
    NoPolicy {
        /// The frontier the collection was created with.
        initial_since: Antichain<T>,
    },
    /// The capability is the given frontier, whatever the writes.
    ValidFrom(Antichain<T>),
    /// The capability is a function of the write frontier.
    LagWriteFrontier(LagFn<T>),
    /// The capability is the meet (the least) of all the policies'
    /// frontiers; no policies gives the empty frontier.
    Multiple(Vec<ReadPolicy<T>>),
}

impl<T: StorageTimestamp> ReadPolicy<T> {
    /// The read frontier this policy allows when the write frontier is
    /// `upper`.
    #[must_use]
    pub fn frontier(&self, upper: AntichainRef<'_, T>) -> Antichain<T> {
        match self {
            ReadPolicy::NoPolicy { initial_since } => initial_since.clone(),
            ReadPolicy::ValidFrom(frontier) => frontier.clone(),
            ReadPolicy::LagWriteFrontier(lag) => lag(upper),
            ReadPolicy::Multiple(policies) => {
                let mut meet = Antichain::new();
                for policy in policies {
                    for time in policy.frontier(upper).iter() {
                        meet.insert(*time);
                    }
                }
                meet
            }
        }
    }

    /// Allows reads one tick behind the write frontier: each element minus
    /// one (the minimum stays the minimum); an empty write frontier gives
    /// `[minimum]`.
    #[must_use]
    pub fn step_back() -> Self {
        ReadPolicy::LagWriteFrontier(Arc::new(|upper: AntichainRef<'_, T>| {
            step_back_frontier(&upper.to_owned())
        }))
    }

    /// Allows reads `lag` behind the write frontier, rounded down to a
    /// multiple of `granularity` (so the capability moves in steps). An empty
    /// write frontier gives `[minimum]`; a lag of zero gives the write
    /// frontier itself.
    #[must_use]
    pub fn lag_writes_by(lag: T, granularity: T) -> Self {
        ReadPolicy::LagWriteFrontier(Arc::new(move |upper: AntichainRef<'_, T>| {
            if upper.is_empty() {
                return Antichain::from_elem(T::minimum());
            }
            if lag == T::minimum() {
                return upper.to_owned();
            }
            upper
                .iter()
                .map(|time| time.saturating_sub(lag).round_down_to(granularity))
                .collect()
        }))
    }
}

impl<T: Timestamp> fmt::Debug for ReadPolicy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadPolicy::NoPolicy { initial_since } => f
                .debug_struct("NoPolicy")
                .field("initial_since", &initial_since.elements())
                .finish(),
            ReadPolicy::ValidFrom(frontier) => f
                .debug_tuple("ValidFrom")
                .field(&frontier.elements())
                .finish(),
            ReadPolicy::LagWriteFrontier(_) => f.write_str("LagWriteFrontier(<fn>)"),
            ReadPolicy::Multiple(policies) => f.debug_tuple("Multiple").field(policies).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontier(t: Option<u64>) -> Antichain<u64> {
        t.into_iter().collect()
    }

    #[test]
    fn lag_writes_by_edges() {
        let policy = ReadPolicy::lag_writes_by(10u64, 5);
        assert_eq!(
            policy.frontier(frontier(Some(3)).borrow()),
            frontier(Some(0))
        );
        assert_eq!(
            policy.frontier(frontier(Some(27)).borrow()),
            frontier(Some(15))
        );
        assert_eq!(policy.frontier(frontier(None).borrow()), frontier(Some(0)));
        let zero = ReadPolicy::lag_writes_by(0u64, 5);
        assert_eq!(
            zero.frontier(frontier(Some(27)).borrow()),
            frontier(Some(27))
        );
        assert_eq!(zero.frontier(frontier(None).borrow()), frontier(Some(0)));
    }

    #[test]
    fn multiple_is_the_meet() {
        let policy = ReadPolicy::Multiple(vec![
            ReadPolicy::ValidFrom(frontier(None)),
            ReadPolicy::NoPolicy {
                initial_since: frontier(Some(9)),
            },
            ReadPolicy::lag_writes_by(2u64, 1),
        ]);
        assert_eq!(
            policy.frontier(frontier(Some(20)).borrow()),
            frontier(Some(9))
        );
        assert_eq!(
            policy.frontier(frontier(Some(5)).borrow()),
            frontier(Some(3))
        );
        assert_eq!(
            ReadPolicy::<u64>::Multiple(vec![]).frontier(frontier(Some(5)).borrow()),
            frontier(None)
        );
        assert_eq!(
            format!("{:?}", ReadPolicy::<u64>::step_back()),
            "LagWriteFrontier(<fn>)"
        );
    }
}
