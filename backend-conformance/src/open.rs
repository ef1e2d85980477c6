//! Opening shards: initial frontiers, idempotence, sharing across handles,
//! listing and isolation.

use tidemark_storage_types::WriteFence;
use tidemark_storage_types::{PersistBackend, ShardId};

use crate::BackendFactory;
use crate::support::{
    append_ok, at, frontiers, frontiers_of, int_row, open_new_shard, sealed, snapshot_of, update,
};

/// A new shard starts at `since = upper = [0]`, and `frontiers` agrees with
/// what `open` returned.
pub async fn open_creates_shard_at_minimum_frontiers<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    assert_eq!(frontiers_of(&backend, shard).await, frontiers(at(0), at(0)));
}

/// Opening an existing shard again changes nothing and reports its current
/// frontiers.
pub async fn open_is_idempotent<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let written = vec![update(int_row(1), 0, 1), update(int_row(2), 3, 2)];
    append_ok(&backend, shard, written.clone(), at(0), at(5)).await;
    backend
        .downgrade_since(shard, &at(2), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");

    for attempt in 0..3 {
        let reopened = backend.open(shard).await.expect("reopen");
        assert_eq!(
            reopened,
            frontiers(at(2), at(5)),
            "open #{attempt} of an existing shard reports its current frontiers"
        );
    }
    assert_eq!(
        snapshot_of(&backend, shard, 4).await,
        vec![(int_row(1), 1), (int_row(2), 2)],
        "reopening keeps the data"
    );
}

/// A shard opened through one handle is the same shard through another:
/// opening it there reports the frontiers the first handle wrote.
pub async fn open_through_another_handle_sees_the_same_shard<F: BackendFactory>(factory: &F) {
    let first = factory.open_handle().await;
    let second = factory.open_handle().await;
    let shard = open_new_shard(&first).await;
    append_ok(&first, shard, vec![update(int_row(7), 1, 1)], at(0), at(4)).await;

    let opened = second
        .open(shard)
        .await
        .expect("open through second handle");
    assert_eq!(opened, frontiers(at(0), at(4)));
    assert_eq!(snapshot_of(&second, shard, 3).await, vec![(int_row(7), 1)]);
}

/// `list_shards` lists every opened shard, sorted. (Other shards may exist on
/// shared storage; only membership and order are checked.)
pub async fn list_shards_lists_opened_shards_sorted<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let mut opened: Vec<ShardId> = Vec::new();
    for _ in 0..3 {
        opened.push(open_new_shard(&backend).await);
    }
    let never_opened = ShardId::new();

    let listed = backend.list_shards().await.expect("list_shards");
    for pair in listed.windows(2) {
        assert!(
            pair[0] < pair[1],
            "list_shards must be strictly sorted: {} then {}",
            pair[0],
            pair[1]
        );
    }
    for shard in &opened {
        assert!(
            listed.binary_search(shard).is_ok(),
            "opened shard {shard} is not listed"
        );
    }
    assert!(
        listed.binary_search(&never_opened).is_err(),
        "a shard never opened is listed: {never_opened}"
    );
}

/// Writes, since downgrades and compaction of one shard change nothing of
/// another.
pub async fn shards_are_isolated<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let left = open_new_shard(&backend).await;
    let right = open_new_shard(&backend).await;

    append_ok(&backend, left, vec![update(int_row(1), 0, 1)], at(0), at(3)).await;
    assert_eq!(
        frontiers_of(&backend, right).await,
        frontiers(at(0), at(0)),
        "an append to another shard moved this shard's upper"
    );
    append_ok(
        &backend,
        right,
        vec![update(int_row(2), 0, 5)],
        at(0),
        at(1),
    )
    .await;
    backend
        .downgrade_since(left, &at(2), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    backend.compact(left).await.expect("compact");

    assert_eq!(frontiers_of(&backend, left).await, frontiers(at(2), at(3)));
    assert_eq!(frontiers_of(&backend, right).await, frontiers(at(0), at(1)));
    assert_eq!(snapshot_of(&backend, left, 2).await, vec![(int_row(1), 1)]);
    assert_eq!(snapshot_of(&backend, right, 0).await, vec![(int_row(2), 5)]);
}

/// Opening a sealed shard again does not unseal it: the upper stays `[]`
/// and the data stays.
pub async fn open_does_not_unseal_a_sealed_shard<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let other = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 2, 1)],
        at(0),
        sealed(),
    )
    .await;
    let reopened = other.open(shard).await.expect("reopen a sealed shard");
    assert_eq!(reopened, frontiers(at(0), sealed()));
    assert_eq!(snapshot_of(&other, shard, 7).await, vec![(int_row(1), 1)]);
}
