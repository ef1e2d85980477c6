//! Physical compaction: invisible to reads, reduces what is stored, and
//! idempotent.

use tidemark_storage_types::WriteFence;
use tidemark_storage_types::{PersistBackend, Update};

use crate::BackendFactory;
use crate::support::{
    append_ok, at, expect_not_readable, fetch_of, int_row, keyed_row, model_fetch, model_snapshot,
    open_new_shard, snapshot_of, update,
};

/// A few appends of overlapping rows at spread times, with cancellations:
/// material that compaction can shrink. Returns the updates and the upper.
async fn write_history<B: PersistBackend<u64>>(
    backend: &B,
    shard: tidemark_storage_types::ShardId,
) -> (Vec<Update<u64>>, u64) {
    let batches: [(u64, u64, Vec<Update<u64>>); 3] = [
        (
            0,
            4,
            vec![
                update(keyed_row(1, "one"), 0, 1),
                update(keyed_row(2, "two"), 1, 1),
                update(keyed_row(1, "one"), 2, 1),
                update(keyed_row(3, "gone"), 3, 1),
            ],
        ),
        (
            4,
            9,
            vec![
                update(keyed_row(3, "gone"), 4, -1),
                update(keyed_row(2, "two"), 5, 2),
                update(keyed_row(4, "four"), 8, 1),
            ],
        ),
        (
            9,
            12,
            vec![
                update(keyed_row(1, "one"), 9, -1),
                update(keyed_row(5, "late"), 11, 3),
            ],
        ),
    ];
    let mut all = Vec::new();
    for (lower, upper, updates) in batches {
        append_ok(backend, shard, updates.clone(), at(lower), at(upper)).await;
        all.extend(updates);
    }
    (all, 12)
}

/// After a since downgrade and compaction, the snapshot at every valid
/// `as_of` equals the model (logical compaction of every update appended),
/// and every earlier `as_of` is not readable.
pub async fn snapshot_after_compaction_equals_model_at_every_as_of<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let (written, upper) = write_history(&backend, shard).await;
    backend
        .downgrade_since(shard, &at(6), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    backend.compact(shard).await.expect("compact");

    for as_of in 0..6 {
        expect_not_readable(
            backend.snapshot(shard, &as_of).await,
            "snapshot before the since after compaction",
        );
    }
    for as_of in 6..upper {
        assert_eq!(
            snapshot_of(&backend, shard, as_of).await,
            model_snapshot(&written, as_of),
            "snapshot at {as_of} after compaction"
        );
    }
}

/// Compaction reduces the stored updates: `CompactionStats` reports the
/// reduction and `usage` agrees with it before and after.
pub async fn compaction_reduces_stored_updates<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    // One row changed at 20 distinct times, and one row added and retracted:
    // 22 stored updates, 1 once compacted to since [19].
    let mut written: Vec<_> = (0..20u64).map(|time| update(int_row(1), time, 1)).collect();
    written.push(update(int_row(2), 3, 1));
    written.push(update(int_row(2), 7, -1));
    append_ok(&backend, shard, written.clone(), at(0), at(20)).await;

    let before = backend.usage(shard).await.expect("usage before compaction");
    assert_eq!(before.updates, 22, "usage counts every stored update");
    assert!(before.bytes > 0, "usage of a shard with data reports bytes");
    backend
        .downgrade_since(shard, &at(19), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    let stats = backend.compact(shard).await.expect("compact");
    let after = backend.usage(shard).await.expect("usage after compaction");

    assert_eq!(stats.updates_before, before.updates, "stats: {stats:?}");
    assert_eq!(stats.updates_after, 1, "stats: {stats:?}");
    assert!(stats.bytes_after < stats.bytes_before, "stats: {stats:?}");
    assert_eq!(after.updates, stats.updates_after, "usage after: {after:?}");
    assert_eq!(after.bytes, stats.bytes_after, "usage after: {after:?}");
    assert_eq!(
        snapshot_of(&backend, shard, 19).await,
        vec![(int_row(1), 20)]
    );
}

/// Compacting twice is the same as compacting once: the second pass finds
/// nothing to do and reads are unchanged.
pub async fn compaction_is_idempotent<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let (written, upper) = write_history(&backend, shard).await;
    backend
        .downgrade_since(shard, &at(10), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    let first = backend.compact(shard).await.expect("first compact");
    let second = backend.compact(shard).await.expect("second compact");
    assert_eq!(
        second.updates_before, first.updates_after,
        "{first:?} {second:?}"
    );
    assert_eq!(
        second.updates_after, first.updates_after,
        "{first:?} {second:?}"
    );
    assert_eq!(second.bytes_after, second.bytes_before, "{second:?}");
    for as_of in 10..upper {
        assert_eq!(
            snapshot_of(&backend, shard, as_of).await,
            model_snapshot(&written, as_of)
        );
    }
}

/// Fetches return the same updates before and after compaction: times
/// advanced by the since, whether or not compaction rewrote them already.
pub async fn fetch_after_compaction_is_unchanged<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let (written, upper) = write_history(&backend, shard).await;
    backend
        .downgrade_since(shard, &at(5), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    let ranges = [(0, upper), (5, upper), (5, 6), (6, 10), (0, 3), (9, upper)];
    let mut before = Vec::new();
    for (lower, range_upper) in ranges {
        let fetched = fetch_of(&backend, shard, &at(lower), &at(range_upper)).await;
        assert_eq!(
            fetched,
            model_fetch(&written, &at(5), &at(lower), &at(range_upper)),
            "fetch [{lower}, {range_upper}) before compaction"
        );
        before.push(fetched);
    }
    backend.compact(shard).await.expect("compact");
    for ((lower, range_upper), expected) in ranges.into_iter().zip(before) {
        assert_eq!(
            fetch_of(&backend, shard, &at(lower), &at(range_upper)).await,
            expected,
            "fetch [{lower}, {range_upper}) after compaction"
        );
    }
}

/// Appends after compaction land on top of the compacted data.
pub async fn appends_after_compaction_accumulate<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let (mut written, upper) = write_history(&backend, shard).await;
    backend
        .downgrade_since(shard, &at(upper - 1), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    backend.compact(shard).await.expect("compact");
    let more = vec![
        update(keyed_row(5, "late"), upper, -3),
        update(keyed_row(6, "new"), upper + 1, 1),
    ];
    append_ok(&backend, shard, more.clone(), at(upper), at(upper + 2)).await;
    written.extend(more);
    for as_of in [upper - 1, upper, upper + 1] {
        assert_eq!(
            snapshot_of(&backend, shard, as_of).await,
            model_snapshot(&written, as_of),
            "snapshot at {as_of}"
        );
    }
}

/// A new shard stores no updates, and usage counts what appends store.
pub async fn usage_counts_stored_updates<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let empty = backend.usage(shard).await.expect("usage of a new shard");
    assert_eq!(empty.updates, 0, "a new shard stores no updates: {empty:?}");
    let updates = (0..5).map(|value| update(int_row(value), 0, 1)).collect();
    append_ok(&backend, shard, updates, at(0), at(1)).await;
    let written = backend.usage(shard).await.expect("usage after an append");
    assert_eq!(written.updates, 5, "{written:?}");
    assert!(written.bytes > empty.bytes, "{empty:?} then {written:?}");
}
