//! `finalize`: seals the shard forever, frees its data, unlists it; and is
//! idempotent.

use std::sync::Arc;
use tidemark_storage_types::{EarlierAttempts, WriteFence};

use tidemark_storage_types::{PersistBackend, ShardUsage, UpperMismatch};

use crate::BackendFactory;
use crate::support::{
    append_ok, at, expect_not_readable, frontiers, frontiers_of, int_row, open_new_shard, sealed,
    try_append, update, within_guard,
};

/// Finalizing seals the shard (`since = upper = []`), frees its data (usage
/// 0), unlists it, and opening it again reports `[]`/`[]`.
pub async fn finalize_seals_and_frees<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let other = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let kept = open_new_shard(&backend).await;
    let rows = (0..50).map(|value| update(int_row(value), 1, 1)).collect();
    append_ok(&backend, shard, rows, at(0), at(3)).await;

    backend.finalize(shard).await.expect("finalize");
    assert_eq!(
        frontiers_of(&other, shard).await,
        frontiers(sealed(), sealed())
    );
    assert_eq!(
        backend
            .usage(shard)
            .await
            .expect("usage of a finalized shard"),
        ShardUsage::default(),
        "a finalized shard stores nothing"
    );
    let reopened = other.open(shard).await.expect("reopen a finalized shard");
    assert_eq!(reopened, frontiers(sealed(), sealed()));
    let listed = other.list_shards().await.expect("list_shards");
    assert!(
        !listed.contains(&shard),
        "a finalized shard is listed: {shard}"
    );
    assert!(
        listed.contains(&kept),
        "finalize unlisted another shard: {kept}"
    );
}

/// Finalizing twice, through any handle, succeeds and changes nothing more.
pub async fn finalize_is_idempotent<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let other = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 0, 1)],
        at(0),
        at(1),
    )
    .await;
    backend.finalize(shard).await.expect("first finalize");
    backend.finalize(shard).await.expect("second finalize");
    other
        .finalize(shard)
        .await
        .expect("finalize through another handle");
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(sealed(), sealed())
    );
}

/// A finalized shard accepts no append: every append mismatches with
/// `current = []`, and its since cannot be moved back.
pub async fn finalized_shard_rejects_appends<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(&backend, shard, Vec::new(), at(0), at(4)).await;
    backend.finalize(shard).await.expect("finalize");
    let outcome = try_append(
        &backend,
        shard,
        vec![update(int_row(1), 4, 1)],
        at(4),
        at(5),
    )
    .await;
    assert_eq!(
        outcome,
        Err(UpperMismatch {
            expected: at(4),
            current: sealed(),
            earlier_attempts: EarlierAttempts::NotApplied,
        })
    );
    let since = backend
        .downgrade_since(shard, &at(2), WriteFence::Unfenced)
        .await
        .expect("downgrade_since of a finalized shard");
    assert_eq!(since, sealed(), "the since of a finalized shard stays []");
}

/// A finalized shard is not readable at any time.
pub async fn finalized_shard_is_not_readable<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 0, 1)],
        at(0),
        at(4),
    )
    .await;
    backend.finalize(shard).await.expect("finalize");
    for as_of in [0, 3, 4, u64::MAX] {
        expect_not_readable(
            backend.snapshot(shard, &as_of).await,
            "snapshot of a finalized shard",
        );
    }
}

/// Finalizing wakes a waiter on another handle with the upper `[]`.
pub async fn finalize_wakes_upper_waiters<F: BackendFactory>(factory: &F) {
    let waiter = Arc::new(factory.open_handle().await);
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(&backend, shard, Vec::new(), at(0), at(3)).await;
    let waiting = {
        let waiter = Arc::clone(&waiter);
        tokio::spawn(async move { waiter.wait_for_upper_past(shard, &at(3)).await })
    };
    backend.finalize(shard).await.expect("finalize");
    let upper = within_guard("wait woken by finalize", waiting)
        .await
        .expect("wait task panicked")
        .expect("wait_for_upper_past");
    assert_eq!(upper, sealed());
}
