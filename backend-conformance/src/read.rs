//! `snapshot` and `fetch`: which times are readable, consolidation and
//! order, and which fetch ranges are valid.

use tidemark_storage_types::PersistBackend;
use tidemark_storage_types::WriteFence;

use crate::BackendFactory;
use crate::support::{
    append_ok, assert_consolidated_rows, at, expect_fetch_range_invalid, expect_not_readable,
    fetch_of, int_row, keyed_row, model_fetch, model_snapshot, open_new_shard, sealed, snapshot_of,
    update,
};

/// A snapshot before the since is `AsOfNotReadable`.
pub async fn snapshot_before_since_is_not_readable<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 1, 1)],
        at(0),
        at(10),
    )
    .await;
    backend
        .downgrade_since(shard, &at(4), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    for as_of in [0, 3] {
        expect_not_readable(
            backend.snapshot(shard, &as_of).await,
            "snapshot before since",
        );
    }
    assert_eq!(snapshot_of(&backend, shard, 4).await, vec![(int_row(1), 1)]);
}

/// A snapshot at or after the upper is `AsOfNotReadable` (those times are
/// not final yet), including on a new shard.
pub async fn snapshot_at_or_after_upper_is_not_readable<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    expect_not_readable(backend.snapshot(shard, &0).await, "snapshot of a new shard");
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 1, 1)],
        at(0),
        at(5),
    )
    .await;
    for as_of in [5, 6, u64::MAX] {
        expect_not_readable(
            backend.snapshot(shard, &as_of).await,
            "snapshot at or after upper",
        );
    }
    assert_eq!(snapshot_of(&backend, shard, 4).await, vec![(int_row(1), 1)]);
}

/// A snapshot is consolidated (diffs summed per row, zero sums omitted,
/// negative sums kept) and sorted by row, however the updates were split,
/// ordered and duplicated across appends.
pub async fn snapshot_is_consolidated_and_sorted<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let first = vec![
        update(keyed_row(9, "z"), 2, 1),
        update(keyed_row(1, "a"), 0, 2),
        update(keyed_row(5, "cancelled"), 1, 1),
        update(keyed_row(1, "a"), 2, 3),
        update(keyed_row(9, "z"), 2, 1),
        update(keyed_row(3, "negative"), 0, -2),
        update(keyed_row(7, "zero in one batch"), 1, 4),
        update(keyed_row(7, "zero in one batch"), 2, -4),
    ];
    let second = vec![
        update(keyed_row(5, "cancelled"), 3, -1),
        update(keyed_row(1, "a"), 4, -1),
        update(keyed_row(2, "b"), 3, 1),
    ];
    append_ok(&backend, shard, first.clone(), at(0), at(3)).await;
    append_ok(&backend, shard, second.clone(), at(3), at(5)).await;

    let all: Vec<_> = first.into_iter().chain(second).collect();
    let snapshot = snapshot_of(&backend, shard, 4).await;
    assert_consolidated_rows(&snapshot, "snapshot");
    assert_eq!(snapshot, model_snapshot(&all, 4));
    assert_eq!(
        snapshot,
        vec![
            (keyed_row(1, "a"), 4),
            (keyed_row(2, "b"), 1),
            (keyed_row(3, "negative"), -2),
            (keyed_row(9, "z"), 2),
        ]
    );
}

/// A snapshot at `as_of` sees exactly the updates at times `<= as_of`.
pub async fn snapshot_sees_only_updates_at_or_before_as_of<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let updates: Vec<_> = (0..6u64)
        .map(|time| update(int_row(time as i64 % 3), time, 1 + time as i64))
        .collect();
    append_ok(&backend, shard, updates.clone(), at(0), at(6)).await;
    for as_of in 0..6 {
        assert_eq!(
            snapshot_of(&backend, shard, as_of).await,
            model_snapshot(&updates, as_of),
            "snapshot at {as_of}"
        );
    }
}

/// `fetch` returns the updates in `[lower, upper)` with times advanced by the
/// since, consolidated and sorted by `(time, row)`.
pub async fn fetch_returns_range_advanced_by_since<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let updates = vec![
        update(int_row(2), 1, 1),
        update(int_row(1), 2, 1),
        update(int_row(1), 1, 1),
        update(int_row(3), 3, 1),
        update(int_row(3), 3, -1),
        update(int_row(4), 5, 2),
        update(int_row(0), 5, 1),
        update(int_row(5), 7, 1),
    ];
    append_ok(&backend, shard, updates.clone(), at(0), at(8)).await;
    let before_since = fetch_of(&backend, shard, &at(2), &at(6)).await;
    assert_eq!(before_since, model_fetch(&updates, &at(0), &at(2), &at(6)));
    assert_eq!(
        before_since,
        vec![
            update(int_row(1), 2, 1),
            update(int_row(0), 5, 1),
            update(int_row(4), 5, 2),
        ]
    );

    backend
        .downgrade_since(shard, &at(3), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    let from_since = fetch_of(&backend, shard, &at(3), &at(8)).await;
    assert_eq!(from_since, model_fetch(&updates, &at(3), &at(3), &at(8)));
    assert_eq!(
        from_since,
        vec![
            update(int_row(1), 3, 2),
            update(int_row(2), 3, 1),
            update(int_row(0), 5, 1),
            update(int_row(4), 5, 2),
            update(int_row(5), 7, 1),
        ]
    );
}

/// A fetch with `lower` after `upper` is `FetchRangeInvalid`.
pub async fn fetch_with_lower_after_upper_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 1, 1)],
        at(0),
        at(6),
    )
    .await;
    expect_fetch_range_invalid(backend.fetch(shard, &at(4), &at(2)).await, "fetch [4, 2)");
    expect_fetch_range_invalid(
        backend.fetch(shard, &sealed(), &at(2)).await,
        "fetch [[], 2)",
    );
}

/// A fetch whose `upper` is beyond the shard's upper is `FetchRangeInvalid`:
/// only final data can be fetched.
pub async fn fetch_beyond_shard_upper_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 1, 1)],
        at(0),
        at(6),
    )
    .await;
    expect_fetch_range_invalid(
        backend.fetch(shard, &at(0), &at(7)).await,
        "fetch [0, 7) with shard upper [6]",
    );
    expect_fetch_range_invalid(
        backend.fetch(shard, &at(0), &sealed()).await,
        "fetch [0, []) of an unsealed shard",
    );
    assert_eq!(
        fetch_of(&backend, shard, &at(0), &at(6)).await,
        vec![update(int_row(1), 1, 1)]
    );
}

/// Following a shard by fetching each new `[previous upper, new upper)`
/// sees every update exactly once; an empty range fetches nothing.
pub async fn consecutive_fetches_partition_the_updates<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let mut written = Vec::new();
    let mut followed = Vec::new();
    let mut lower = 0u64;
    for (round, new_upper) in [2u64, 3, 7, 8].into_iter().enumerate() {
        let updates: Vec<_> = (lower..new_upper)
            .map(|time| update(int_row(round as i64), time, 1))
            .collect();
        append_ok(&backend, shard, updates.clone(), at(lower), at(new_upper)).await;
        written.extend(updates);
        followed.extend(fetch_of(&backend, shard, &at(lower), &at(new_upper)).await);
        assert_eq!(
            fetch_of(&backend, shard, &at(new_upper), &at(new_upper)).await,
            Vec::new(),
            "an empty range fetches nothing"
        );
        lower = new_upper;
    }
    assert_eq!(followed, model_fetch(&written, &at(0), &at(0), &at(8)));
    assert_eq!(
        fetch_of(&backend, shard, &at(0), &at(8)).await,
        followed,
        "one fetch of the whole range equals the pieces"
    );
}

/// A sealed shard can be fetched up to the empty frontier.
pub async fn sealed_shard_fetches_to_the_empty_frontier<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let updates = vec![update(int_row(1), 0, 1), update(int_row(2), 90, 1)];
    append_ok(&backend, shard, updates.clone(), at(0), sealed()).await;
    assert_eq!(
        fetch_of(&backend, shard, &at(0), &sealed()).await,
        model_fetch(&updates, &at(0), &at(0), &sealed())
    );
    assert_eq!(
        fetch_of(&backend, shard, &at(50), &sealed()).await,
        vec![update(int_row(2), 90, 1)]
    );
}

/// Updates with a zero diff are accepted and change nothing a read returns.
pub async fn zero_diff_updates_are_invisible<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let updates = vec![
        update(int_row(1), 0, 0),
        update(int_row(2), 1, 1),
        update(int_row(2), 1, 0),
    ];
    append_ok(&backend, shard, updates, at(0), at(2)).await;
    assert_eq!(snapshot_of(&backend, shard, 1).await, vec![(int_row(2), 1)]);
    assert_eq!(
        fetch_of(&backend, shard, &at(0), &at(2)).await,
        vec![update(int_row(2), 1, 1)]
    );
}

/// Diffs far beyond 32 bits sum exactly, across appends and compaction.
pub async fn large_diffs_sum_exactly<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let big = 1i64 << 40;
    let first = vec![
        update(int_row(1), 0, big),
        update(int_row(1), 1, big),
        update(int_row(2), 0, -3 * big),
    ];
    let second = vec![
        update(int_row(1), 2, big + 7),
        update(int_row(2), 3, 3 * big),
        update(int_row(3), 3, i64::MAX / 2),
    ];
    append_ok(&backend, shard, first.clone(), at(0), at(2)).await;
    append_ok(&backend, shard, second.clone(), at(2), at(4)).await;
    let all: Vec<_> = first.into_iter().chain(second).collect();
    assert_eq!(
        snapshot_of(&backend, shard, 3).await,
        vec![(int_row(1), 3 * big + 7), (int_row(3), i64::MAX / 2)]
    );
    backend
        .downgrade_since(shard, &at(3), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    backend.compact(shard).await.expect("compact");
    assert_eq!(
        snapshot_of(&backend, shard, 3).await,
        model_snapshot(&all, 3)
    );
}
