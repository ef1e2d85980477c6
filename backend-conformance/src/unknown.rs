//! Every method but `open` and `list_shards` rejects a shard that was never
//! opened with `InvalidUsage::UnknownShard`, and creates nothing.

use tidemark_storage_types::WriteFence;
use tidemark_storage_types::{IdempotencyToken, PersistBackend, ShardId};

use crate::BackendFactory;
use crate::support::{at, expect_unknown_shard, int_row, update, within_guard};

/// Checks the rejected call created nothing: the shard is still unknown and
/// not listed.
async fn assert_still_unknown<B: PersistBackend<u64>>(backend: &B, shard: ShardId) {
    expect_unknown_shard(
        backend.frontiers(shard).await,
        shard,
        "frontiers after a rejected call",
    );
    let listed = backend.list_shards().await.expect("list_shards");
    assert!(
        !listed.contains(&shard),
        "a rejected call on an unknown shard created it: {shard}"
    );
}

/// `frontiers` of an unknown shard is `UnknownShard`.
pub async fn frontiers_of_unknown_shard_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    expect_unknown_shard(backend.frontiers(shard).await, shard, "frontiers");
    assert_still_unknown(&backend, shard).await;
}

/// `compare_and_append` to an unknown shard is `UnknownShard`.
pub async fn append_to_unknown_shard_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    let result = backend
        .compare_and_append(
            shard,
            vec![update(int_row(1), 0, 1)],
            at(0),
            at(1),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await;
    expect_unknown_shard(result, shard, "compare_and_append");
    assert_still_unknown(&backend, shard).await;
}

/// `snapshot` of an unknown shard is `UnknownShard`.
pub async fn snapshot_of_unknown_shard_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    expect_unknown_shard(backend.snapshot(shard, &0).await, shard, "snapshot");
    assert_still_unknown(&backend, shard).await;
}

/// `fetch` of an unknown shard is `UnknownShard`.
pub async fn fetch_of_unknown_shard_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    expect_unknown_shard(backend.fetch(shard, &at(0), &at(0)).await, shard, "fetch");
    assert_still_unknown(&backend, shard).await;
}

/// `wait_for_upper_past` on an unknown shard is `UnknownShard`, at once
/// rather than waiting for the shard to appear.
pub async fn wait_on_unknown_shard_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    let result = within_guard(
        "wait_for_upper_past on an unknown shard",
        backend.wait_for_upper_past(shard, &at(0)),
    )
    .await;
    expect_unknown_shard(result, shard, "wait_for_upper_past");
    assert_still_unknown(&backend, shard).await;
}

/// `downgrade_since` of an unknown shard is `UnknownShard`.
pub async fn downgrade_since_of_unknown_shard_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    expect_unknown_shard(
        backend
            .downgrade_since(shard, &at(3), WriteFence::Unfenced)
            .await,
        shard,
        "downgrade_since",
    );
    assert_still_unknown(&backend, shard).await;
}

/// `compact` of an unknown shard is `UnknownShard`.
pub async fn compact_of_unknown_shard_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    expect_unknown_shard(backend.compact(shard).await, shard, "compact");
    assert_still_unknown(&backend, shard).await;
}

/// `usage` of an unknown shard is `UnknownShard`.
pub async fn usage_of_unknown_shard_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    expect_unknown_shard(backend.usage(shard).await, shard, "usage");
    assert_still_unknown(&backend, shard).await;
}

/// `finalize` of an unknown shard is `UnknownShard`.
pub async fn finalize_of_unknown_shard_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    expect_unknown_shard(backend.finalize(shard).await, shard, "finalize");
    assert_still_unknown(&backend, shard).await;
}
