//! Size: one append of a million updates, and its snapshot.

use tidemark_storage_types::{Diff, Row};

use crate::BackendFactory;
use crate::support::{
    append_ok, assert_consolidated_rows, at, frontiers, frontiers_of, int_row, open_new_shard,
    snapshot_of, update,
};

const ROWS: i64 = 10_000;
const TIMES: u64 = 100;

/// The diff of row `row` at `time` in the million-update workload: mostly
/// +1, every third one -1, so some rows cancel out at some times.
fn diff_of(row: i64, time: u64) -> Diff {
    if (row as u64 + time).is_multiple_of(3) {
        -1
    } else {
        1
    }
}

/// The expected snapshot at `as_of`, computed without materialising the
/// updates.
fn expected_at(rows: &[Row], as_of: u64) -> Vec<(Row, Diff)> {
    rows.iter()
        .enumerate()
        .filter_map(|(index, row)| {
            let sum: Diff = (0..=as_of).map(|time| diff_of(index as i64, time)).sum();
            (sum != 0).then(|| (row.clone(), sum))
        })
        .collect()
}

/// One append of 1,000,000 updates (10,000 rows at 100 times) succeeds, and
/// snapshots at the last time and at a middle time are exactly the sums.
/// Rows are shared (`Row` clones are reference counts) to keep memory sane.
pub async fn million_update_append_and_snapshot<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let rows: Vec<Row> = (0..ROWS).map(int_row).collect();
    let mut updates = Vec::with_capacity(rows.len() * TIMES as usize);
    for time in 0..TIMES {
        for (index, row) in rows.iter().enumerate() {
            updates.push(update(row.clone(), time, diff_of(index as i64, time)));
        }
    }
    assert_eq!(updates.len(), 1_000_000);
    append_ok(&backend, shard, updates, at(0), at(TIMES)).await;
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(at(0), at(TIMES))
    );

    for as_of in [TIMES - 1, TIMES / 2] {
        let snapshot = snapshot_of(&backend, shard, as_of).await;
        assert_consolidated_rows(&snapshot, "snapshot of a million updates");
        // Rows sort by their encoding, not by the integer they hold.
        let mut expected = expected_at(&rows, as_of);
        expected.sort();
        assert_eq!(
            snapshot.len(),
            expected.len(),
            "snapshot at {as_of}: row count"
        );
        assert!(
            snapshot == expected,
            "snapshot at {as_of} differs from the sums"
        );
    }
}
