//! Frontiers as stored: a totally ordered frontier is stored as a nullable
//! `BIGINT`, its [`EncodedFrontier`](tidemark_storage_types::EncodedFrontier)
//! (`NULL` = the empty frontier), so SQL compares times exactly as `T` does.

use tidemark_storage_types::{ShardFrontiers, StorageTimestamp, decode_frontier};

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
