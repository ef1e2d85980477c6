//! `compare_and_append`: the upper check, the bounds check, sealing, and that
//! a rejected append writes nothing.

use tidemark_storage_types::{EarlierAttempts, WriteFence};
use tidemark_storage_types::{
    IdempotencyToken, InvalidUsage, PersistBackend, ShardId, Update, UpperMismatch,
};
use timely::progress::Antichain;

use crate::BackendFactory;
use crate::support::{
    append_ok, at, expect_invalid_usage, expect_not_readable, fetch_of, frontiers, frontiers_of,
    int_row, keyed_row, model_snapshot, open_new_shard, sealed, snapshot_of, try_append, update,
};

/// Checks that the shard is exactly as `written` (with upper `upper`) left
/// it: nothing of a rejected append is visible.
async fn assert_unchanged<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    written: &[Update<u64>],
    upper: u64,
) {
    assert_eq!(
        frontiers_of(backend, shard).await,
        frontiers(at(0), at(upper)),
        "a rejected append moved the upper"
    );
    if upper > 0 {
        assert_eq!(
            snapshot_of(backend, shard, upper - 1).await,
            model_snapshot(written, upper - 1),
            "a rejected append wrote data"
        );
    }
}

/// A successful append writes its updates and moves the upper to
/// `new_upper`.
pub async fn append_advances_upper_and_writes<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let first = vec![
        update(keyed_row(1, "a"), 0, 1),
        update(keyed_row(2, "b"), 2, 3),
    ];
    append_ok(&backend, shard, first.clone(), at(0), at(3)).await;
    assert_eq!(frontiers_of(&backend, shard).await, frontiers(at(0), at(3)));

    let second = vec![
        update(keyed_row(3, "c"), 3, -1),
        update(keyed_row(1, "a"), 9, 1),
    ];
    append_ok(&backend, shard, second.clone(), at(3), at(10)).await;
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(at(0), at(10))
    );

    let all: Vec<_> = first.into_iter().chain(second).collect();
    assert_eq!(
        snapshot_of(&backend, shard, 9).await,
        model_snapshot(&all, 9)
    );
}

/// An append whose expected upper is behind the current upper writes nothing
/// and reports the current upper as the value `Ok(Err(mismatch))`.
pub async fn stale_expected_upper_mismatches_and_writes_nothing<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let written = vec![update(int_row(1), 1, 1)];
    append_ok(&backend, shard, written.clone(), at(0), at(5)).await;

    let outcome = try_append(
        &backend,
        shard,
        vec![update(int_row(2), 3, 1)],
        at(2),
        at(8),
    )
    .await;
    assert_eq!(
        outcome,
        Err(UpperMismatch {
            expected: at(2),
            current: at(5),
            earlier_attempts: EarlierAttempts::NotApplied,
        })
    );
    assert_unchanged(&backend, shard, &written, 5).await;
}

/// An append whose expected upper is ahead of the current upper (or the
/// empty frontier) mismatches too, and writes nothing.
pub async fn expected_upper_ahead_of_current_mismatches<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let written = vec![update(int_row(1), 0, 2)];
    append_ok(&backend, shard, written.clone(), at(0), at(2)).await;

    let ahead = try_append(
        &backend,
        shard,
        vec![update(int_row(2), 6, 1)],
        at(6),
        at(9),
    )
    .await;
    assert_eq!(
        ahead,
        Err(UpperMismatch {
            expected: at(6),
            current: at(2),
            earlier_attempts: EarlierAttempts::NotApplied,
        })
    );
    let expecting_sealed = try_append(&backend, shard, Vec::new(), sealed(), sealed()).await;
    assert_eq!(
        expecting_sealed,
        Err(UpperMismatch {
            expected: sealed(),
            current: at(2),
            earlier_attempts: EarlierAttempts::NotApplied,
        })
    );
    assert_unchanged(&backend, shard, &written, 2).await;
}

/// Checks that an append with `updates` at matching bounds `[lower, upper)`
/// is rejected as `UpdateOutsideBounds` and writes nothing.
async fn assert_outside_bounds_rejected<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    updates: Vec<Update<u64>>,
    lower: u64,
    new_upper: Antichain<u64>,
) {
    let result = backend
        .compare_and_append(
            shard,
            updates,
            at(lower),
            new_upper,
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await;
    match expect_invalid_usage(result, "append with an update outside its bounds") {
        InvalidUsage::UpdateOutsideBounds { shard: named, .. } => assert_eq!(named, shard),
        other => panic!("expected UpdateOutsideBounds, got {other:?}"),
    }
}

/// An update before `expected_upper` is `UpdateOutsideBounds`; nothing of the
/// append (not even its valid updates) is written.
pub async fn update_before_expected_upper_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let written = vec![update(int_row(1), 0, 1)];
    append_ok(&backend, shard, written.clone(), at(0), at(4)).await;

    let mixed = vec![update(int_row(2), 5, 1), update(int_row(3), 3, 1)];
    assert_outside_bounds_rejected(&backend, shard, mixed, 4, at(8)).await;
    assert_unchanged(&backend, shard, &written, 4).await;
}

/// An update at `new_upper` (or beyond it) is `UpdateOutsideBounds`; nothing
/// is written.
pub async fn update_at_or_beyond_new_upper_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let written = vec![update(int_row(1), 0, 1)];
    append_ok(&backend, shard, written.clone(), at(0), at(4)).await;

    let at_new_upper = vec![update(int_row(2), 4, 1), update(int_row(3), 7, 1)];
    assert_outside_bounds_rejected(&backend, shard, at_new_upper, 4, at(7)).await;
    let beyond = vec![update(int_row(4), 100, 1)];
    assert_outside_bounds_rejected(&backend, shard, beyond, 4, at(7)).await;
    assert_unchanged(&backend, shard, &written, 4).await;
}

/// A `new_upper` behind `expected_upper` is `UpperRegression`; nothing is
/// written and the upper stays.
pub async fn new_upper_behind_expected_is_upper_regression<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let written = vec![update(int_row(1), 2, 1)];
    append_ok(&backend, shard, written.clone(), at(0), at(5)).await;

    let result = backend
        .compare_and_append(
            shard,
            Vec::new(),
            at(5),
            at(3),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await;
    match expect_invalid_usage(result, "append with new_upper behind expected_upper") {
        InvalidUsage::UpperRegression { shard: named, .. } => assert_eq!(named, shard),
        other => panic!("expected UpperRegression, got {other:?}"),
    }
    assert_unchanged(&backend, shard, &written, 5).await;
}

/// An append with no updates and a greater `new_upper` just advances the
/// upper.
pub async fn empty_append_advances_upper<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(&backend, shard, Vec::new(), at(0), at(6)).await;
    assert_eq!(frontiers_of(&backend, shard).await, frontiers(at(0), at(6)));
    assert_eq!(snapshot_of(&backend, shard, 5).await, Vec::new());
    append_ok(&backend, shard, Vec::new(), at(6), at(7)).await;
    assert_eq!(frontiers_of(&backend, shard).await, frontiers(at(0), at(7)));
}

/// An append whose `new_upper` equals its `expected_upper` (an empty range,
/// so no updates) is valid and changes nothing.
pub async fn append_with_equal_uppers_changes_nothing<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let written = vec![update(int_row(1), 0, 1)];
    append_ok(&backend, shard, written.clone(), at(0), at(3)).await;
    append_ok(&backend, shard, Vec::new(), at(3), at(3)).await;
    assert_unchanged(&backend, shard, &written, 3).await;
}

/// An empty `new_upper` seals the shard: its upper is `[]` and every later
/// append mismatches with `current = []`.
pub async fn empty_new_upper_seals_the_shard<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 2, 1)],
        at(0),
        at(4),
    )
    .await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(2), 4, 1)],
        at(4),
        sealed(),
    )
    .await;
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(at(0), sealed())
    );

    // Each attempt is valid on its own terms (its update is within its
    // bounds), so the only thing wrong with it is the upper.
    for (lower, new_upper) in [(4, at(9)), (0, at(1)), (9, sealed())] {
        let expected = at(lower);
        let outcome = try_append(
            &backend,
            shard,
            vec![update(int_row(3), lower, 1)],
            expected.clone(),
            new_upper,
        )
        .await;
        assert_eq!(
            outcome,
            Err(UpperMismatch {
                expected,
                current: sealed(),
                earlier_attempts: EarlierAttempts::NotApplied,
            })
        );
    }
    assert_eq!(
        snapshot_of(&backend, shard, 50).await,
        vec![(int_row(1), 1), (int_row(2), 1)]
    );
}

/// A sealing append accepts updates at any time at or after its expected
/// upper, and the sealed shard is readable at every time from its since.
pub async fn sealing_append_accepts_any_later_time<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let written = vec![
        update(int_row(1), 3, 1),
        update(int_row(2), 1_000_000, 1),
        update(int_row(3), u64::MAX, 1),
    ];
    append_ok(&backend, shard, Vec::new(), at(0), at(3)).await;
    append_ok(&backend, shard, written.clone(), at(3), sealed()).await;
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(at(0), sealed())
    );
    for as_of in [3, 999_999, 1_000_000, u64::MAX] {
        assert_eq!(
            snapshot_of(&backend, shard, as_of).await,
            model_snapshot(&written, as_of),
            "snapshot of a sealed shard at {as_of}"
        );
    }
}

/// Times anywhere in the `u64` range, including either side of `2^63` (where
/// an order-preserving 8-byte encoding flips its sign bit) and the maximum,
/// are stored, ordered and read back exactly.
pub async fn times_across_the_whole_u64_range_round_trip<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let below_flip = (1u64 << 63) - 1;
    let times = [0, 1, below_flip, 1 << 63, (1 << 63) + 1, u64::MAX - 1];
    let written: Vec<_> = times
        .iter()
        .enumerate()
        .map(|(index, time)| update(int_row(index as i64), *time, 1))
        .collect();
    append_ok(&backend, shard, written.clone(), at(0), at(u64::MAX)).await;
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(at(0), at(u64::MAX))
    );
    for as_of in [0, below_flip - 1, below_flip, 1 << 63, u64::MAX - 1] {
        assert_eq!(
            snapshot_of(&backend, shard, as_of).await,
            model_snapshot(&written, as_of),
            "snapshot at {as_of}"
        );
    }
    let across_the_flip = fetch_of(&backend, shard, &at(below_flip), &at((1 << 63) + 1)).await;
    assert_eq!(
        across_the_flip,
        vec![
            update(int_row(2), below_flip, 1),
            update(int_row(3), 1 << 63, 1)
        ]
    );
    backend
        .downgrade_since(shard, &at(1 << 63), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    expect_not_readable(
        backend.snapshot(shard, &below_flip).await,
        "snapshot before a since past 2^63",
    );
}
