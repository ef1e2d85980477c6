//! Snapshots and fetches, whole or one [`ReadShare`] of them, computed from
//! a [`ReadView`] without the shard's lock. A share keeps the rows it holds
//! by a stable hash of the row ([`ReadShare::holds_row`]), so the shares of
//! one read are disjoint by row.

use tidemark_storage_types::{
    Diff, InvalidUsage, ReadShare, Row, ShardId, StorageTimestamp, Update,
};
use timely::progress::Antichain;

use crate::shard::ReadView;
use crate::stream::{Chunks, FetchMerge, SnapshotMerge, WHOLE_READ};

/// The consolidated contents at `as_of` of the rows `share` holds: each row
/// with the sum of its diffs at times `<= as_of`, zero sums omitted, sorted
/// by row.
///
/// The snapshot stream's merge read as one chunk: each batch is sorted by
/// row, so merging the batches by row sums each row's diffs in one pass (a
/// compacted shard, one batch, is a linear walk).
///
/// # Errors
///
/// [`InvalidUsage::InvalidShare`] for an invalid share;
/// [`InvalidUsage::AsOfNotReadable`] unless `since <= as_of` and not
/// `upper <= as_of`.
pub fn snapshot<T: StorageTimestamp>(
    shard: ShardId,
    view: &ReadView<T>,
    as_of: &T,
    share: ReadShare,
) -> Result<Vec<(Row, Diff)>, InvalidUsage> {
    let merge = SnapshotMerge::new(shard, view.clone(), as_of, share)?;
    Ok(Chunks::new(merge, WHOLE_READ).next().unwrap_or_default())
}

/// The updates of the rows `share` holds with times in `[lower, upper)` after
/// advancing every time by the since, consolidated and sorted by
/// `(time, row)`.
///
/// The range applies to the advanced times: physical compaction may already
/// have advanced a stored time to an earlier since, and advancing again to
/// the current since gives the same time either way, so the answer does not
/// depend on what compaction has run. An empty since means nothing can be
/// read again: the answer is empty. The fetch stream's merge read as one
/// chunk.
///
/// # Errors
///
/// [`InvalidUsage::InvalidShare`] for an invalid share;
/// [`InvalidUsage::FetchRangeInvalid`] unless `lower <= upper` and `upper`
/// is not beyond the shard's upper.
pub fn fetch<T: StorageTimestamp>(
    shard: ShardId,
    view: &ReadView<T>,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    share: ReadShare,
) -> Result<Vec<Update<T>>, InvalidUsage> {
    let merge = FetchMerge::new(shard, view.clone(), lower, upper, share)?;
    Ok(Chunks::new(merge, WHOLE_READ).next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tidemark_storage_types::Datum;

    use super::*;
    use crate::spine::Batch;

    fn row(value: i64) -> Row {
        Row::pack([Datum::Int64(value)])
    }

    fn view(since: u64, upper: u64, batches: &[&[(i64, u64, Diff)]]) -> ReadView<u64> {
        ReadView {
            since: Antichain::from_elem(since),
            upper: Antichain::from_elem(upper),
            batches: batches
                .iter()
                .map(|updates| {
                    Arc::new(Batch::from_unsorted(
                        updates
                            .iter()
                            .map(|&(value, time, diff)| (row(value), time, diff))
                            .collect(),
                    ))
                })
                .collect(),
        }
    }

    #[test]
    fn snapshot_sums_across_batches_up_to_as_of() {
        let shard = ShardId::new();
        let view = view(
            0,
            10,
            &[&[(1, 0, 1), (2, 1, 1), (3, 5, 1)], &[(1, 2, 1), (2, 3, -1)]],
        );
        assert_eq!(
            snapshot(shard, &view, &0, ReadShare::WHOLE).unwrap(),
            vec![(row(1), 1)]
        );
        assert_eq!(
            snapshot(shard, &view, &1, ReadShare::WHOLE).unwrap(),
            vec![(row(1), 1), (row(2), 1)]
        );
        assert_eq!(
            snapshot(shard, &view, &4, ReadShare::WHOLE).unwrap(),
            vec![(row(1), 2)]
        );
        assert_eq!(
            snapshot(shard, &view, &9, ReadShare::WHOLE).unwrap(),
            vec![(row(1), 2), (row(3), 1)]
        );
    }

    #[test]
    fn a_single_batch_snapshot_sums_a_row_over_times() {
        let shard = ShardId::new();
        let view = view(
            0,
            10,
            &[&[(1, 0, 1), (1, 1, -1), (2, 0, 1), (2, 2, 2), (3, 1, 1)]],
        );
        assert_eq!(
            snapshot(shard, &view, &2, ReadShare::WHOLE).unwrap(),
            vec![(row(2), 3), (row(3), 1)]
        );
        assert_eq!(
            snapshot(shard, &view, &0, ReadShare::WHOLE).unwrap(),
            vec![(row(1), 1), (row(2), 1)]
        );
    }

    #[test]
    fn snapshot_rejects_unreadable_times() {
        let shard = ShardId::new();
        let view = view(3, 6, &[]);
        for as_of in [2, 6, 7] {
            let err = snapshot(shard, &view, &as_of, ReadShare::WHOLE).unwrap_err();
            assert!(
                matches!(err, InvalidUsage::AsOfNotReadable { .. }),
                "as_of {as_of}: {err}"
            );
        }
        assert_eq!(
            snapshot(shard, &view, &7, ReadShare::WHOLE)
                .unwrap_err()
                .to_string(),
            format!("as_of 7 is not readable: shard={shard} since=[3] upper=[6]")
        );
        assert!(
            snapshot(shard, &view, &3, ReadShare::WHOLE)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn fetch_advances_by_since_and_orders_by_time() {
        let shard = ShardId::new();
        let view = view(
            2,
            10,
            &[&[(5, 0, 1), (1, 1, 1), (4, 3, 1)], &[(1, 2, 1), (2, 3, 1)]],
        );
        let all = fetch(
            shard,
            &view,
            &Antichain::from_elem(0),
            &Antichain::from_elem(10),
            ReadShare::WHOLE,
        )
        .unwrap();
        assert_eq!(
            all,
            vec![
                Update::new(row(1), 2, 2),
                Update::new(row(5), 2, 1),
                Update::new(row(2), 3, 1),
                Update::new(row(4), 3, 1),
            ]
        );
        let later = fetch(
            shard,
            &view,
            &Antichain::from_elem(3),
            &Antichain::from_elem(4),
            ReadShare::WHOLE,
        )
        .unwrap();
        assert_eq!(later, all[2..].to_vec());
        let before_since = fetch(
            shard,
            &view,
            &Antichain::from_elem(0),
            &Antichain::from_elem(2),
            ReadShare::WHOLE,
        )
        .unwrap();
        assert!(before_since.is_empty(), "every time was advanced to 2");
    }

    #[test]
    fn fetch_reads_exactly_the_batches_its_range_needs() {
        let shard = ShardId::new();
        let view = view(
            4,
            9,
            &[
                &[(1, 0, 1), (2, 2, 1)],
                &[(3, 3, 1), (4, 5, 1)],
                &[(5, 6, 1), (6, 8, 1)],
            ],
        );
        let fetched = |lower, upper| {
            fetch(
                shard,
                &view,
                &Antichain::from_elem(lower),
                &Antichain::from_elem(upper),
                ReadShare::WHOLE,
            )
            .unwrap()
        };
        assert_eq!(
            fetched(5, 7),
            vec![Update::new(row(4), 5, 1), Update::new(row(5), 6, 1)]
        );
        assert_eq!(
            fetched(0, 5),
            vec![
                Update::new(row(1), 4, 1),
                Update::new(row(2), 4, 1),
                Update::new(row(3), 4, 1),
            ]
        );
        assert_eq!(fetched(8, 9), vec![Update::new(row(6), 8, 1)]);
        assert!(fetched(7, 8).is_empty());
        assert_eq!(
            snapshot(shard, &view, &4, ReadShare::WHOLE).unwrap().len(),
            3
        );
    }

    #[test]
    fn fetch_rejects_ranges_beyond_the_upper_or_inverted() {
        let shard = ShardId::new();
        let view = view(0, 5, &[]);
        let ranges = [
            (Antichain::from_elem(3), Antichain::from_elem(2)),
            (Antichain::from_elem(0), Antichain::from_elem(6)),
            (Antichain::from_elem(0), Antichain::new()),
        ];
        for (lower, upper) in ranges {
            let err = fetch(shard, &view, &lower, &upper, ReadShare::WHOLE).unwrap_err();
            assert!(
                matches!(err, InvalidUsage::FetchRangeInvalid { .. }),
                "{err}"
            );
        }
        let err = fetch(
            shard,
            &view,
            &Antichain::from_elem(0),
            &Antichain::from_elem(6),
            ReadShare::WHOLE,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "fetch range is not within the written data: shard={shard} lower=[0] upper=[6] shard_upper=[5]"
            )
        );
        assert!(
            fetch(
                shard,
                &view,
                &Antichain::from_elem(5),
                &Antichain::from_elem(5),
                ReadShare::WHOLE,
            )
            .unwrap()
            .is_empty()
        );
    }
}
