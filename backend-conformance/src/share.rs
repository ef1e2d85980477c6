//! `snapshot_share` and `fetch_share`: the shares of one read consolidate to
//! the whole read, each share is consolidated itself, and an invalid share is
//! rejected.

use differential_dataflow::consolidation::consolidate;
use tidemark_storage_types::WriteFence;
use tidemark_storage_types::{Diff, InvalidUsage, PersistBackend, ReadShare, Row, Update};

use crate::BackendFactory;
use crate::support::{
    append_ok, assert_consolidated_rows, at, expect_invalid_usage, expect_not_readable, fetch_of,
    int_row, keyed_row, open_new_shard, snapshot_of, update,
};

/// Appends five batches of overlapping rows (with retractions), so that
/// backends storing batches separately hold several of them.
async fn fill<B: PersistBackend<u64>>(backend: &B, shard: tidemark_storage_types::ShardId) {
    for batch in 0..5u64 {
        let updates = (0..40i64)
            .map(|value| {
                let diff = if (value + batch as i64) % 7 == 0 {
                    -1
                } else {
                    1
                };
                update(
                    keyed_row(value % 23, "share"),
                    batch * 2 + (value as u64 % 2),
                    diff,
                )
            })
            .chain([update(int_row(batch as i64), batch * 2, 1)])
            .collect();
        append_ok(backend, shard, updates, at(batch * 2), at(batch * 2 + 2)).await;
    }
}

/// The shares `0..count` (counts 1 to 4) of a snapshot are each consolidated
/// and sorted, and together consolidate to the snapshot, at every as_of.
pub async fn snapshot_shares_consolidate_to_the_snapshot<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    for as_of in [0, 3, 9] {
        let whole = snapshot_of(&backend, shard, as_of).await;
        for count in 1..=4 {
            let mut union: Vec<(Row, Diff)> = Vec::new();
            for index in 0..count {
                let share = ReadShare::new(index, count);
                let rows = backend
                    .snapshot_share(shard, &as_of, share)
                    .await
                    .unwrap_or_else(|err| panic!("snapshot_share {share} at {as_of}: {err}"));
                assert_consolidated_rows(&rows, &format!("snapshot share {share} at {as_of}"));
                union.extend(rows);
            }
            consolidate(&mut union);
            assert_eq!(
                union, whole,
                "the {count} shares of the snapshot at {as_of} do not consolidate to it"
            );
        }
    }
    expect_not_readable(
        backend
            .snapshot_share(shard, &10, ReadShare::new(0, 2))
            .await,
        "snapshot share at the upper",
    );
}

/// The shares of a fetch are each consolidated and sorted by `(time, row)`,
/// and together consolidate to the fetch (times advanced by the since).
pub async fn fetch_shares_consolidate_to_the_fetch<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    backend
        .downgrade_since(shard, &at(3), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    for (lower, upper) in [(0, 10), (3, 7), (4, 5)] {
        let (lower, upper) = (at(lower), at(upper));
        let whole = fetch_of(&backend, shard, &lower, &upper).await;
        for count in 1..=4 {
            let mut union: Vec<((u64, Row), Diff)> = Vec::new();
            for index in 0..count {
                let share = ReadShare::new(index, count);
                let updates = backend
                    .fetch_share(shard, &lower, &upper, share)
                    .await
                    .unwrap_or_else(|err| panic!("fetch_share {share}: {err}"));
                assert_consolidated_updates(&updates, &format!("fetch share {share}"));
                union.extend(
                    updates
                        .into_iter()
                        .map(|update| ((update.timestamp, update.row), update.diff)),
                );
            }
            consolidate(&mut union);
            let union: Vec<Update<u64>> = union
                .into_iter()
                .map(|((time, row), diff)| Update::new(row, time, diff))
                .collect();
            assert_eq!(
                union, whole,
                "the {count} shares of the fetch [{lower:?}, {upper:?}) do not consolidate to it"
            );
        }
    }
}

/// A share holds the same updates in every read: share 0 read as one
/// fetch, and share 1 read as several fetches of smaller ranges with
/// appends and a compaction in between, together are the whole fetch. (A
/// division by stored layout, not by update, fails this: dataflow workers
/// each follow a shard on their own.)
pub async fn shares_hold_the_same_updates_in_every_read<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    let (first, second) = (ReadShare::new(0, 2), ReadShare::new(1, 2));
    let mut union: Vec<((u64, Row), Diff)> = Vec::new();
    let mut take = |updates: Vec<Update<u64>>| {
        union.extend(
            updates
                .into_iter()
                .map(|update| ((update.timestamp, update.row), update.diff)),
        );
    };
    take(
        backend
            .fetch_share(shard, &at(0), &at(4), second)
            .await
            .expect("fetch_share"),
    );
    backend.compact(shard).await.expect("compact");
    take(
        backend
            .fetch_share(shard, &at(0), &at(10), first)
            .await
            .expect("fetch_share"),
    );
    append_ok(
        &backend,
        shard,
        vec![update(int_row(99), 10, 1)],
        at(10),
        at(11),
    )
    .await;
    backend.compact(shard).await.expect("compact");
    take(
        backend
            .fetch_share(shard, &at(4), &at(10), second)
            .await
            .expect("fetch_share"),
    );
    consolidate(&mut union);
    let union: Vec<Update<u64>> = union
        .into_iter()
        .map(|((time, row), diff)| Update::new(row, time, diff))
        .collect();
    assert_eq!(
        union,
        fetch_of(&backend, shard, &at(0), &at(10)).await,
        "shares read over different ranges and states do not add up to the whole fetch"
    );
}

/// A share with count 0 or an index not below its count is
/// `InvalidUsage::InvalidShare`, for snapshots and fetches alike.
pub async fn invalid_share_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 0, 1)],
        at(0),
        at(2),
    )
    .await;
    for share in [
        ReadShare::new(0, 0),
        ReadShare::new(1, 1),
        ReadShare::new(4, 3),
    ] {
        let snapshot = backend.snapshot_share(shard, &1, share).await;
        let fetch = backend.fetch_share(shard, &at(0), &at(2), share).await;
        for usage in [
            expect_invalid_usage(snapshot, "snapshot_share with an invalid share"),
            expect_invalid_usage(fetch, "fetch_share with an invalid share"),
        ] {
            match usage {
                InvalidUsage::InvalidShare {
                    shard: named,
                    index,
                    count,
                } => assert_eq!(
                    (named, index, count),
                    (shard, share.index, share.count),
                    "InvalidShare names the call's shard and share"
                ),
                other => panic!("expected InvalidShare for {share}, got {other:?}"),
            }
        }
    }
}

fn assert_consolidated_updates(updates: &[Update<u64>], call: &str) {
    for pair in updates.windows(2) {
        assert!(
            (pair[0].timestamp, &pair[0].row) < (pair[1].timestamp, &pair[1].row),
            "{call}: updates are not strictly sorted by (time, row): {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    if let Some(zero) = updates.iter().find(|update| update.diff == 0) {
        panic!("{call}: update {zero:?} has a zero diff and must be omitted");
    }
}
