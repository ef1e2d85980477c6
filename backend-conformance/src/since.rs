//! `downgrade_since`: the since only advances (it joins), and it may pass
//! the upper.

use tidemark_storage_types::PersistBackend;
use tidemark_storage_types::WriteFence;

use crate::BackendFactory;
use crate::support::{
    append_ok, at, expect_not_readable, frontiers, frontiers_of, int_row, open_new_shard,
    snapshot_of, update,
};

/// `downgrade_since` advances the since and returns it; every handle sees it.
pub async fn downgrade_since_advances_since<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let other = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 0, 1)],
        at(0),
        at(10),
    )
    .await;
    for since in [1, 4, 9] {
        let returned = backend
            .downgrade_since(shard, &at(since), WriteFence::Unfenced)
            .await
            .expect("downgrade_since");
        assert_eq!(returned, at(since));
        assert_eq!(
            frontiers_of(&other, shard).await,
            frontiers(at(since), at(10))
        );
    }
}

/// A downgrade to an earlier since changes nothing and returns the current
/// since: the since never regresses.
pub async fn downgrade_to_earlier_since_returns_current<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 3, 1)],
        at(0),
        at(10),
    )
    .await;
    backend
        .downgrade_since(shard, &at(6), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    for earlier in [0, 5, 6] {
        let returned = backend
            .downgrade_since(shard, &at(earlier), WriteFence::Unfenced)
            .await
            .expect("downgrade_since to an earlier time");
        assert_eq!(returned, at(6), "downgrade to [{earlier}] moved the since");
    }
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(at(6), at(10))
    );
    expect_not_readable(backend.snapshot(shard, &5).await, "snapshot before since");
}

/// The since may pass the upper: reads then wait for writes, and appends
/// continue from the upper as before.
pub async fn since_may_pass_upper<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 1, 1)],
        at(0),
        at(3),
    )
    .await;
    let returned = backend
        .downgrade_since(shard, &at(20), WriteFence::Unfenced)
        .await
        .expect("downgrade_since past the upper");
    assert_eq!(returned, at(20));
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(at(20), at(3))
    );
    for as_of in [2, 20] {
        expect_not_readable(
            backend.snapshot(shard, &as_of).await,
            "snapshot with since past upper",
        );
    }

    append_ok(
        &backend,
        shard,
        vec![update(int_row(2), 10, 1)],
        at(3),
        at(25),
    )
    .await;
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(at(20), at(25))
    );
    assert_eq!(
        snapshot_of(&backend, shard, 20).await,
        vec![(int_row(1), 1), (int_row(2), 1)]
    );
}

/// Concurrent downgrades through separate handles end at the join (the
/// greatest) of the requested sinces, whatever their order.
pub async fn concurrent_downgrades_join<F: BackendFactory>(factory: &F) {
    let setup = factory.open_handle().await;
    let shard = open_new_shard(&setup).await;
    let mut tasks = Vec::new();
    for since in [7u64, 3, 12, 5, 9, 1] {
        let backend = factory.open_handle().await;
        tasks.push(tokio::spawn(async move {
            let returned = backend
                .downgrade_since(shard, &at(since), WriteFence::Unfenced)
                .await
                .expect("downgrade_since");
            let returned_time = *returned.as_option().expect("a since that is not empty");
            assert!(
                returned_time >= since,
                "downgrade to [{since}] returned the earlier since {returned:?}"
            );
        }));
    }
    for task in tasks {
        task.await.expect("downgrade task panicked");
    }
    assert_eq!(frontiers_of(&setup, shard).await, frontiers(at(12), at(0)));
}
