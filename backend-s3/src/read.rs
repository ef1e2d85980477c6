//! Waiting for the upper, and the consolidation of a part's rows that every
//! snapshot applies (the reads themselves are streamed:
//! [`crate::stream`]).

use std::time::Duration;

use tidemark_storage_types::{BackendError, Diff, Row, ShardId, StorageTimestamp, contract};
use timely::progress::Antichain;

use crate::S3Backend;
use crate::state::{decode_frontier, encode_frontier, frontier_le};

impl S3Backend {
    pub(crate) async fn wait_for_upper_past<T: StorageTimestamp>(
        &self,
        shard: ShardId,
        frontier: &Antichain<T>,
    ) -> Result<Antichain<T>, BackendError> {
        contract::check_wait_frontier(shard, frontier)?;
        let frontier = encode_frontier(frontier);
        let config = self.config();
        let mut delay = config.poll_interval_min;
        loop {
            let state = self.read_state(shard).await?;
            if !frontier_le(state.upper, frontier) {
                return Ok(decode_frontier(state.upper));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2)
                .min(config.poll_interval_max)
                .max(Duration::from_millis(1));
        }
    }
}

/// Sums the diffs of adjacent equal rows of a row-sorted sequence and drops
/// zero sums.
pub(crate) fn consolidate_sorted_rows(rows: impl Iterator<Item = (Row, Diff)>) -> Vec<(Row, Diff)> {
    let mut consolidated: Vec<(Row, Diff)> = Vec::new();
    for (row, diff) in rows {
        match consolidated.last_mut() {
            Some((last, sum)) if *last == row => *sum += diff,
            _ => {
                if consolidated.last().is_some_and(|(_, sum)| *sum == 0) {
                    consolidated.pop();
                }
                consolidated.push((row, diff));
            }
        }
    }
    if consolidated.last().is_some_and(|(_, sum)| *sum == 0) {
        consolidated.pop();
    }
    consolidated
}

#[cfg(test)]
mod tests {
    use tidemark_storage_types::Datum;

    use super::*;

    fn rows(pairs: &[(i64, Diff)]) -> Vec<(Row, Diff)> {
        pairs
            .iter()
            .map(|&(value, diff)| (Row::pack([Datum::Int64(value)]), diff))
            .collect()
    }

    #[test]
    fn adjacent_equal_rows_sum_and_zero_sums_drop() {
        let consolidated =
            consolidate_sorted_rows(rows(&[(1, 1), (1, -1), (2, 1), (2, 2), (3, -1)]).into_iter());
        assert_eq!(consolidated, rows(&[(2, 3), (3, -1)]));
        let consolidated = consolidate_sorted_rows(rows(&[(1, 1), (2, 1), (2, -1)]).into_iter());
        assert_eq!(consolidated, rows(&[(1, 1)]));
    }
}
