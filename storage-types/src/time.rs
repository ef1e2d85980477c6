//! Timestamps, updates and frontier helpers.
//!
//! # Frontiers
//!
//! A frontier is an [`Antichain`]. For the totally ordered timestamps
//! tidemark stores, an antichain is either empty or holds one element.
//!
//! - A shard's **upper** `U` says which updates are final: every update at a
//!   time `t` with *not* `U <= t` has been written. A write must start exactly
//!   at the current upper. An empty upper means the shard is sealed: no time
//!   can ever be written again.
//! - A shard's **since** `S` says which times can be read: a read `as_of` is
//!   valid iff `S <= as_of` and *not* `U <= as_of`. Times not `>= S` may have
//!   been compacted (advanced to `S`). An empty since means the shard can
//!   never be read again and its storage may be reclaimed.
//! - Since may be ahead of upper (reads then wait for writes).

use std::fmt;

use differential_dataflow::lattice::Lattice;
use serde::{Deserialize, Serialize};
use timely::order::TotalOrder;
use timely::progress::{Antichain, Timestamp};

use crate::row::Row;

/// The multiplicity of an update.
pub type Diff = i64;

/// An order-preserving 8-byte encoding of a timestamp.
///
/// `encode` must be strictly monotone when the result is compared as `i64`,
/// so that backends can compare encoded times (in SQL, say) exactly as the
/// times compare. `decode(encode(t)) == t`.
///
/// ```
/// use tidemark_storage_types::Codec64;
/// assert!(0u64.encode() < u64::MAX.encode());
/// assert_eq!(u64::decode(u64::MAX.encode()), u64::MAX);
/// assert_eq!(0u64.encode(), i64::MIN);
/// ```
pub trait Codec64: Sized {
    /// The time as an `i64` that orders like the time.
    fn encode(&self) -> i64;
    /// The time an [`encode`](Codec64::encode) produced.
    fn decode(encoded: i64) -> Self;
}

impl Codec64 for u64 {
    fn encode(&self) -> i64 {
        // Flipping the sign bit maps 0..=u64::MAX onto i64::MIN..=i64::MAX in order.
        (self ^ (1 << 63)) as i64
    }

    fn decode(encoded: i64) -> Self {
        (encoded as u64) ^ (1 << 63)
    }
}

/// A frontier of totally ordered times in its stored form: an antichain of
/// such times is empty or one time, so it is `None` (the empty frontier) or
/// the [`Codec64`] encoding of its time. Stored forms compare as the
/// frontiers' times do, so a backend can compare them without knowing `T`
/// (in SQL, say).
pub type EncodedFrontier = Option<i64>;

/// The stored form of a totally ordered frontier.
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_types::{decode_frontier, encode_frontier};
/// assert_eq!(encode_frontier(&Antichain::<u64>::new()), None);
/// assert_eq!(encode_frontier(&Antichain::from_elem(0u64)), Some(i64::MIN));
/// let frontier = Antichain::from_elem(9u64);
/// assert_eq!(decode_frontier::<u64>(encode_frontier(&frontier)), frontier);
/// ```
#[must_use]
pub fn encode_frontier<T: Codec64>(frontier: &Antichain<T>) -> EncodedFrontier {
    frontier.elements().first().map(Codec64::encode)
}

/// The frontier a stored form stands for (the inverse of
/// [`encode_frontier`]).
#[must_use]
pub fn decode_frontier<T: Codec64 + Timestamp>(encoded: EncodedFrontier) -> Antichain<T> {
    match encoded {
        Some(time) => Antichain::from_elem(T::decode(time)),
        None => Antichain::new(),
    }
}

/// What tidemark needs of a timestamp: timely's [`Timestamp`], a
/// [`Lattice`], a total order, an 8-byte codec, and the usual thread bounds.
pub trait StorageTimestamp:
    Timestamp + Lattice + TotalOrder + Codec64 + Copy + Send + Sync + fmt::Display + 'static
{
    /// The time just before this one (the minimum stays the minimum).
    #[must_use]
    fn step_back(&self) -> Self;

    /// This time minus `lag`, saturating at the minimum.
    #[must_use]
    fn saturating_sub(&self, lag: Self) -> Self;

    /// The largest multiple of `granularity` not above this time
    /// (`granularity` zero leaves the time as it is).
    #[must_use]
    fn round_down_to(&self, granularity: Self) -> Self;

    /// The time just after this one, or `None` at the maximum.
    #[must_use]
    fn checked_step_forward(&self) -> Option<Self>;
}

impl StorageTimestamp for u64 {
    fn step_back(&self) -> Self {
        self.saturating_sub(1)
    }

    fn saturating_sub(&self, lag: Self) -> Self {
        u64::saturating_sub(*self, lag)
    }

    fn round_down_to(&self, granularity: Self) -> Self {
        if granularity == 0 {
            *self
        } else {
            self - self % granularity
        }
    }

    fn checked_step_forward(&self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// One change to a collection: `diff` copies of `row` at `timestamp`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Update<T> {
    /// The row that changed.
    pub row: Row,
    /// The time of the change.
    pub timestamp: T,
    /// How many copies were added (negative: removed).
    pub diff: Diff,
}

impl<T> Update<T> {
    /// An update of `diff` copies of `row` at `timestamp`.
    pub fn new(row: Row, timestamp: T, diff: Diff) -> Self {
        Update {
            row,
            timestamp,
            diff,
        }
    }
}

/// Formats a frontier as `[t]` or `[]`, for messages.
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_types::display_frontier;
/// assert_eq!(display_frontier(&Antichain::from_elem(5u64)).to_string(), "[5]");
/// assert_eq!(display_frontier(&Antichain::<u64>::new()).to_string(), "[]");
/// ```
#[must_use]
pub fn display_frontier<T: fmt::Display>(frontier: &Antichain<T>) -> impl fmt::Display + '_ {
    FrontierDisplay(frontier)
}

struct FrontierDisplay<'a, T>(&'a Antichain<T>);

impl<T: fmt::Display> fmt::Display for FrontierDisplay<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, t) in self.0.elements().iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{t}")?;
        }
        write!(f, "]")
    }
}

/// The single element of a totally ordered frontier, or `None` when it is
/// empty.
#[must_use]
pub fn frontier_time<T: Copy>(frontier: &Antichain<T>) -> Option<T> {
    frontier.elements().first().copied()
}

/// Whether `as_of` is readable given `since` and `upper`:
/// `since <= as_of` and not `upper <= as_of`.
#[must_use]
pub fn readable_at<T: Timestamp>(since: &Antichain<T>, upper: &Antichain<T>, as_of: &T) -> bool {
    since.less_equal(as_of) && !upper.less_equal(as_of)
}

/// `frontier` with each element stepped back by one (the minimum stays the
/// minimum); the empty frontier gives `[minimum]`.
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_types::step_back_frontier;
/// assert_eq!(step_back_frontier(&Antichain::from_elem(5u64)), Antichain::from_elem(4));
/// assert_eq!(step_back_frontier(&Antichain::from_elem(0u64)), Antichain::from_elem(0));
/// assert_eq!(step_back_frontier(&Antichain::<u64>::new()), Antichain::from_elem(0));
/// ```
#[must_use]
pub fn step_back_frontier<T: StorageTimestamp>(frontier: &Antichain<T>) -> Antichain<T> {
    if frontier.is_empty() {
        return Antichain::from_elem(T::minimum());
    }
    frontier.iter().map(StorageTimestamp::step_back).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec64_preserves_order() {
        let times = [
            0u64,
            1,
            2,
            1 << 62,
            (1 << 63) - 1,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ];
        for pair in times.windows(2) {
            assert!(pair[0].encode() < pair[1].encode(), "{pair:?}");
        }
        for t in times {
            assert_eq!(u64::decode(t.encode()), t);
        }
    }

    #[test]
    fn readable_at_follows_the_frontiers() {
        let since = Antichain::from_elem(3u64);
        let upper = Antichain::from_elem(6u64);
        assert!(!readable_at(&since, &upper, &2));
        assert!(readable_at(&since, &upper, &3));
        assert!(readable_at(&since, &upper, &5));
        assert!(!readable_at(&since, &upper, &6));
        assert!(readable_at(&since, &Antichain::new(), &100));
        assert!(!readable_at(&Antichain::new(), &Antichain::new(), &100));
    }

    #[test]
    fn frontier_encoding_round_trips_and_orders() {
        for frontier in [
            Antichain::new(),
            Antichain::from_elem(0u64),
            Antichain::from_elem(1u64 << 63),
            Antichain::from_elem(u64::MAX),
        ] {
            assert_eq!(decode_frontier::<u64>(encode_frontier(&frontier)), frontier);
        }
        assert_eq!(encode_frontier(&Antichain::<u64>::new()), None);
        assert!(
            encode_frontier(&Antichain::from_elem(3u64))
                < encode_frontier(&Antichain::from_elem(4u64))
        );
    }

    #[test]
    fn rounding() {
        assert_eq!(17u64.round_down_to(5), 15);
        assert_eq!(17u64.round_down_to(0), 17);
        assert_eq!(3u64.saturating_sub(10), 0);
        assert_eq!(u64::MAX.checked_step_forward(), None);
    }
}
