//! `wait_for_upper_past`: returns at once when the upper is already past,
//! wakes when another handle moves the upper, refuses the empty frontier.

use std::sync::Arc;

use tidemark_storage_types::{InvalidUsage, PersistBackend};

use crate::BackendFactory;
use crate::support::{
    append_ok, at, expect_invalid_usage, int_row, open_new_shard, sealed, update, within_guard,
};

/// Waiting for the upper to pass a frontier it is already past returns the
/// current upper at once.
pub async fn wait_returns_at_once_when_upper_already_past<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(
        &backend,
        shard,
        vec![update(int_row(1), 0, 1)],
        at(0),
        at(5),
    )
    .await;
    for frontier in [at(0), at(4)] {
        let upper = within_guard(
            "wait for an upper that is already past",
            backend.wait_for_upper_past(shard, &frontier),
        )
        .await
        .expect("wait_for_upper_past");
        assert_eq!(upper, at(5), "waiting past {frontier:?}");
    }
}

/// A wait through one handle wakes when another handle appends, and returns
/// the new upper. Before the append it must not have returned.
pub async fn wait_wakes_when_another_handle_appends<F: BackendFactory>(factory: &F) {
    let waiter = Arc::new(factory.open_handle().await);
    let writer = factory.open_handle().await;
    let shard = open_new_shard(&writer).await;
    append_ok(&writer, shard, Vec::new(), at(0), at(2)).await;

    let waiting = {
        let waiter = Arc::clone(&waiter);
        tokio::spawn(async move { waiter.wait_for_upper_past(shard, &at(2)).await })
    };
    // Let the waiter start waiting; the property holds however long this is.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(
        !waiting.is_finished(),
        "wait_for_upper_past returned while the upper was still [2]: {:?}",
        waiting.await
    );

    append_ok(&writer, shard, vec![update(int_row(1), 2, 1)], at(2), at(6)).await;
    let upper = within_guard("wait woken by another handle's append", waiting)
        .await
        .expect("wait task panicked")
        .expect("wait_for_upper_past");
    assert_eq!(upper, at(6));
}

/// Waiting past the empty frontier can never finish: `WaitPastEmptyFrontier`.
pub async fn wait_past_empty_frontier_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let result = within_guard(
        "wait past the empty frontier",
        backend.wait_for_upper_past(shard, &sealed()),
    )
    .await;
    match expect_invalid_usage(result, "wait past the empty frontier") {
        InvalidUsage::WaitPastEmptyFrontier { shard: named } => assert_eq!(named, shard),
        other => panic!("expected WaitPastEmptyFrontier, got {other:?}"),
    }
}

/// Sealing the shard (an append to the empty frontier) wakes a waiter with
/// the upper `[]`.
pub async fn wait_wakes_when_the_shard_is_sealed<F: BackendFactory>(factory: &F) {
    let waiter = Arc::new(factory.open_handle().await);
    let writer = factory.open_handle().await;
    let shard = open_new_shard(&writer).await;

    let waiting = {
        let waiter = Arc::clone(&waiter);
        tokio::spawn(async move { waiter.wait_for_upper_past(shard, &at(40)).await })
    };
    append_ok(&writer, shard, Vec::new(), at(0), at(40)).await;
    append_ok(
        &writer,
        shard,
        vec![update(int_row(1), 41, 1)],
        at(40),
        sealed(),
    )
    .await;
    let upper = within_guard("wait woken by sealing", waiting)
        .await
        .expect("wait task panicked")
        .expect("wait_for_upper_past");
    assert_eq!(upper, sealed());
}

/// Waiting is cancellation safe: waits dropped before they finish leave the
/// shard usable, and a later wait and append behave as usual.
pub async fn cancelled_waits_leave_the_shard_usable<F: BackendFactory>(factory: &F) {
    let waiter = Arc::new(factory.open_handle().await);
    let writer = factory.open_handle().await;
    let shard = open_new_shard(&writer).await;
    for _ in 0..5 {
        let cancelled = {
            let waiter = Arc::clone(&waiter);
            tokio::spawn(async move { waiter.wait_for_upper_past(shard, &at(0)).await })
        };
        tokio::task::yield_now().await;
        cancelled.abort();
        let outcome = cancelled.await;
        assert!(
            outcome.as_ref().is_err_and(|err| err.is_cancelled()),
            "a wait returned while the upper was still [0]: {outcome:?}"
        );
    }
    let waiting = {
        let waiter = Arc::clone(&waiter);
        tokio::spawn(async move { waiter.wait_for_upper_past(shard, &at(0)).await })
    };
    append_ok(&writer, shard, vec![update(int_row(1), 0, 1)], at(0), at(1)).await;
    let upper = within_guard("wait after cancelled waits", waiting)
        .await
        .expect("wait task panicked")
        .expect("wait_for_upper_past");
    assert_eq!(upper, at(1));
}

/// A wait on a sealed shard returns `[]` at once, whatever the frontier.
pub async fn wait_on_a_sealed_shard_returns_at_once<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    append_ok(&backend, shard, Vec::new(), at(0), sealed()).await;
    for frontier in [at(0), at(u64::MAX)] {
        let upper = within_guard(
            "wait on a sealed shard",
            backend.wait_for_upper_past(shard, &frontier),
        )
        .await
        .expect("wait_for_upper_past");
        assert_eq!(upper, sealed(), "waiting past {frontier:?}");
    }
}
