//! Retries a caller can resolve: a retried append whose token the backend
//! still remembers answers success; one whose token may have left the
//! remembered window answers a mismatch saying so, never "not applied".

use tidemark_storage_types::{
    EarlierAttempts, IdempotencyToken, PersistBackend, UpperMismatch, WriteFence,
};

use crate::BackendFactory;
use crate::support::{append_ok, at, int_row, open_new_shard, update};

/// More appends than the 128 the contract asks every backend to remember.
const BEYOND_THE_MINIMUM_WINDOW: u64 = 300;

/// A retry after fewer appends than the contract's window resolves to
/// success, and a different token with the same bounds (which never
/// applied) answers a mismatch that says it did not apply.
pub async fn retry_inside_the_window_resolves<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let token = IdempotencyToken::new();
    let updates = vec![update(int_row(1), 0, 1)];
    let append = |token| {
        backend.compare_and_append(
            shard,
            updates.clone(),
            at(0),
            at(1),
            token,
            WriteFence::Unfenced,
        )
    };
    assert_eq!(append(token).await.expect("first attempt"), Ok(()));
    for time in 1..=20 {
        append_ok(&backend, shard, vec![], at(time), at(time + 1)).await;
    }
    assert_eq!(append(token).await.expect("retry"), Ok(()));
    let other = append(IdempotencyToken::new()).await.expect("other token");
    assert_eq!(
        other,
        Err(UpperMismatch {
            expected: at(0),
            current: at(21),
            earlier_attempts: EarlierAttempts::NotApplied,
        })
    );
}

/// A retry after more appends than the contract's window either still
/// resolves to success (the backend remembers more) or answers a mismatch
/// saying whether it applied cannot be determined: never "not applied".
pub async fn retry_outside_the_window_is_undetermined<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let token = IdempotencyToken::new();
    let updates = vec![update(int_row(1), 0, 1)];
    let append = || {
        backend.compare_and_append(
            shard,
            updates.clone(),
            at(0),
            at(1),
            token,
            WriteFence::Unfenced,
        )
    };
    assert_eq!(append().await.expect("first attempt"), Ok(()));
    for time in 1..=BEYOND_THE_MINIMUM_WINDOW {
        append_ok(&backend, shard, vec![], at(time), at(time + 1)).await;
    }
    match append().await.expect("retry") {
        Ok(()) => {}
        Err(mismatch) => assert_eq!(
            mismatch,
            UpperMismatch {
                expected: at(0),
                current: at(BEYOND_THE_MINIMUM_WINDOW + 1),
                earlier_attempts: EarlierAttempts::Undetermined,
            },
            "an applied append retried outside the window"
        ),
    }
}
