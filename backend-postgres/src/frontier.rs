//! Frontiers and times as stored: a totally ordered frontier is empty or
//! one time, stored as a nullable `BIGINT` ([`Codec64`] encoding, `NULL` =
//! the empty frontier), so SQL compares times exactly as `T` does.

use tidemark_storage_types::{ShardFrontiers, StorageTimestamp, frontier_time};
use timely::progress::Antichain;

/// The stored form of a frontier.
pub(crate) fn encode_frontier<T: StorageTimestamp>(frontier: &Antichain<T>) -> Option<i64> {
    frontier_time(frontier).map(|t| t.encode())
}

/// The frontier a stored value stands for.
pub(crate) fn decode_frontier<T: StorageTimestamp>(stored: Option<i64>) -> Antichain<T> {
    match stored {
        Some(encoded) => Antichain::from_elem(T::decode(encoded)),
        None => Antichain::new(),
    }
}

/// The frontiers of a stored `(since, upper)` pair.
pub(crate) fn decode_frontiers<T: StorageTimestamp>(
    since: Option<i64>,
    upper: Option<i64>,
) -> ShardFrontiers<T> {
    ShardFrontiers {
        since: decode_frontier(since),
        upper: decode_frontier(upper),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontiers_round_trip() {
        for frontier in [
            Antichain::new(),
            Antichain::from_elem(0u64),
            Antichain::from_elem(u64::MAX),
        ] {
            assert_eq!(decode_frontier::<u64>(encode_frontier(&frontier)), frontier);
        }
        assert_eq!(encode_frontier(&Antichain::<u64>::new()), None);
        assert_eq!(encode_frontier(&Antichain::from_elem(0u64)), Some(i64::MIN));
    }
}
