//! Idempotency tokens: a retry of an applied append answers success and
//! applies nothing again; a different token gets no such pass.

use tidemark_storage_types::{EarlierAttempts, WriteFence};
use tidemark_storage_types::{IdempotencyToken, PersistBackend, UpperMismatch};

use crate::BackendFactory;
use crate::support::{
    append_ok, at, frontiers, frontiers_of, int_row, keyed_row, model_snapshot, open_new_shard,
    sealed, snapshot_of, update,
};

/// Retrying an append that succeeded, with the same token and bounds,
/// answers `Ok(Ok(()))` and applies it only once.
pub async fn retry_with_same_token_after_success_applies_once<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let other = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let token = IdempotencyToken::new();
    let updates = vec![update(int_row(1), 0, 1), update(int_row(2), 2, 5)];
    for (attempt, handle) in [&backend, &backend, &other].into_iter().enumerate() {
        let outcome = handle
            .compare_and_append(
                shard,
                updates.clone(),
                at(0),
                at(3),
                token,
                WriteFence::Unfenced,
            )
            .await
            .expect("compare_and_append");
        assert_eq!(outcome, Ok(()), "attempt {attempt} with the same token");
    }
    assert_eq!(frontiers_of(&backend, shard).await, frontiers(at(0), at(3)));
    assert_eq!(
        snapshot_of(&backend, shard, 2).await,
        model_snapshot(&updates, 2),
        "a retried append is applied once"
    );
}

/// A different token with the stale expected upper of an applied append is
/// an ordinary mismatch: nothing written.
pub async fn different_token_with_stale_upper_mismatches<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let updates = vec![update(int_row(1), 0, 1)];
    backend
        .compare_and_append(
            shard,
            updates.clone(),
            at(0),
            at(3),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .expect("compare_and_append")
        .expect("first append succeeds");
    let outcome = backend
        .compare_and_append(
            shard,
            updates.clone(),
            at(0),
            at(3),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .expect("compare_and_append with a new token");
    assert_eq!(
        outcome,
        Err(UpperMismatch {
            expected: at(0),
            current: at(3),
            earlier_attempts: EarlierAttempts::NotApplied,
        })
    );
    assert_eq!(snapshot_of(&backend, shard, 2).await, vec![(int_row(1), 1)]);
}

/// A token is still recognised after 127 later appends (the contract keeps
/// at least the most recent 128 per shard), including appends by another
/// handle.
pub async fn token_is_remembered_across_127_later_appends<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let other = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let token = IdempotencyToken::new();
    let first = vec![update(keyed_row(0, "first"), 0, 1)];
    backend
        .compare_and_append(
            shard,
            first.clone(),
            at(0),
            at(1),
            token,
            WriteFence::Unfenced,
        )
        .await
        .expect("compare_and_append")
        .expect("first append succeeds");
    let mut written = first.clone();
    for step in 1..128u64 {
        let updates = vec![update(keyed_row(step as i64, "later"), step, 1)];
        append_ok(&other, shard, updates.clone(), at(step), at(step + 1)).await;
        written.extend(updates);
    }

    let retry = backend
        .compare_and_append(shard, first, at(0), at(1), token, WriteFence::Unfenced)
        .await
        .expect("retry of the first append");
    assert_eq!(
        retry,
        Ok(()),
        "the token of the 128th most recent append is remembered"
    );
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(at(0), at(128))
    );
    assert_eq!(
        snapshot_of(&backend, shard, 127).await,
        model_snapshot(&written, 127)
    );
}

/// Tokens are per append, not per shard: a new token on the current upper
/// appends as usual after a retried one.
pub async fn fresh_token_after_retry_appends_normally<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let token = IdempotencyToken::new();
    let first = vec![update(int_row(1), 0, 1)];
    for _ in 0..2 {
        backend
            .compare_and_append(
                shard,
                first.clone(),
                at(0),
                at(2),
                token,
                WriteFence::Unfenced,
            )
            .await
            .expect("compare_and_append")
            .expect("append and its retry succeed");
    }
    let second = vec![update(int_row(1), 2, 1)];
    append_ok(&backend, shard, second, at(2), at(4)).await;
    assert_eq!(snapshot_of(&backend, shard, 3).await, vec![(int_row(1), 2)]);
}

/// A retried sealing append (new upper `[]`) is recognised by its token like
/// any other: success, applied once, the shard stays sealed.
pub async fn retry_of_a_sealing_append_answers_success<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let token = IdempotencyToken::new();
    let updates = vec![update(int_row(1), 5, 1)];
    for attempt in 0..2 {
        let outcome = backend
            .compare_and_append(
                shard,
                updates.clone(),
                at(0),
                sealed(),
                token,
                WriteFence::Unfenced,
            )
            .await
            .expect("compare_and_append");
        assert_eq!(
            outcome,
            Ok(()),
            "sealing attempt {attempt} with the same token"
        );
    }
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(at(0), sealed())
    );
    assert_eq!(snapshot_of(&backend, shard, 9).await, vec![(int_row(1), 1)]);
}
