//! Fenced writes: a write carrying a writer epoch lower than the shard's is
//! refused with `Determinate(Fenced)` and writes nothing; a higher epoch
//! raises the shard's; unfenced writes are never refused.

use std::sync::atomic::{AtomicBool, Ordering};

use tidemark_storage_types::{
    BackendError, DeterminateKind, IdempotencyToken, PersistBackend, ShardId, Update,
    UpperMismatch, WriteFence,
};
use timely::progress::Antichain;

use crate::BackendFactory;
use crate::support::{at, frontiers, frontiers_of, int_row, open_new_shard, snapshot_of, update};

/// One append with `fence` and a fresh token.
async fn fenced_append<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    updates: Vec<Update<u64>>,
    expected_upper: Antichain<u64>,
    new_upper: Antichain<u64>,
    fence: WriteFence,
) -> Result<Result<(), UpperMismatch<u64>>, BackendError> {
    backend
        .compare_and_append(
            shard,
            updates,
            expected_upper,
            new_upper,
            IdempotencyToken::new(),
            fence,
        )
        .await
}

/// Panics unless `result` is the `Fenced` refusal.
fn assert_fenced<R: std::fmt::Debug>(result: Result<R, BackendError>, what: &str) {
    match result {
        Err(err) if err.determinate_kind() == Some(DeterminateKind::Fenced) => {}
        other => panic!("{what} must be refused as fenced, got {other:?}"),
    }
}

/// An append with an epoch lower than the shard's is refused as `Fenced`
/// and writes nothing: neither its updates nor its upper.
pub async fn stale_epoch_append_is_refused_and_writes_nothing<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let raised = fenced_append(
        &backend,
        shard,
        vec![update(int_row(1), 0, 1)],
        at(0),
        at(2),
        WriteFence::Epoch(5),
    )
    .await;
    assert_eq!(raised.expect("append with epoch 5"), Ok(()));
    let stale = fenced_append(
        &backend,
        shard,
        vec![update(int_row(2), 2, 1)],
        at(2),
        at(4),
        WriteFence::Epoch(4),
    )
    .await;
    assert_fenced(stale, "an append with epoch 4 after epoch 5");
    assert_eq!(frontiers_of(&backend, shard).await, frontiers(at(0), at(2)));
    assert_eq!(snapshot_of(&backend, shard, 1).await, vec![(int_row(1), 1)]);
}

/// A since downgrade with an epoch lower than the shard's is refused as
/// `Fenced` and leaves the since where it was.
pub async fn stale_epoch_since_downgrade_is_refused<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let raised = fenced_append(&backend, shard, vec![], at(0), at(10), WriteFence::Epoch(3)).await;
    assert_eq!(raised.expect("append with epoch 3"), Ok(()));
    let stale = backend
        .downgrade_since(shard, &at(6), WriteFence::Epoch(2))
        .await;
    assert_fenced(stale, "a since downgrade with epoch 2 after epoch 3");
    assert_eq!(
        frontiers_of(&backend, shard).await,
        frontiers(at(0), at(10))
    );
}

/// A write with a higher epoch (here a downgrade that leaves the since
/// unchanged) raises the shard's epoch, fencing the lower one, which other
/// handles see too; the higher epoch, and higher ones still, keep writing.
pub async fn higher_epoch_fences_the_lower<F: BackendFactory>(factory: &F) {
    let old = factory.open_handle().await;
    let new = factory.open_handle().await;
    let shard = open_new_shard(&old).await;
    let first = fenced_append(&old, shard, vec![], at(0), at(1), WriteFence::Epoch(1)).await;
    assert_eq!(first.expect("append with epoch 1"), Ok(()));
    let since = new
        .downgrade_since(shard, &at(0), WriteFence::Epoch(2))
        .await
        .expect("a no-op downgrade with epoch 2");
    assert_eq!(since, at(0));
    let stale = fenced_append(&old, shard, vec![], at(1), at(2), WriteFence::Epoch(1)).await;
    assert_fenced(stale, "an append with epoch 1 after epoch 2");
    let current = fenced_append(&new, shard, vec![], at(1), at(2), WriteFence::Epoch(2)).await;
    assert_eq!(current.expect("append with epoch 2"), Ok(()));
    let newer = fenced_append(&old, shard, vec![], at(2), at(3), WriteFence::Epoch(3)).await;
    assert_eq!(newer.expect("append with epoch 3"), Ok(()));
    assert_eq!(frontiers_of(&new, shard).await.upper, at(3));
}

/// An old and a new writer race on one shard through separate handles.
/// Once the new writer's fencing write has returned, every append the old
/// writer starts is refused as `Fenced`; the new writer's appends land.
pub async fn racing_writers_only_the_new_one_lands_after_the_fence<F: BackendFactory>(factory: &F) {
    const OLD_ATTEMPTS: u64 = 40;
    const NEW_APPENDS: u64 = 10;
    let old = factory.open_handle().await;
    let new = factory.open_handle().await;
    let shard = open_new_shard(&old).await;
    let fenced = AtomicBool::new(false);
    let old_writer = async {
        let mut landed_after_fence = Vec::new();
        let mut refused = 0u64;
        for attempt in 0..OLD_ATTEMPTS {
            let started_after_fence = fenced.load(Ordering::SeqCst);
            let upper = frontiers_of(&old, shard).await.upper;
            let Some(&time) = upper.as_option() else {
                break;
            };
            let outcome = fenced_append(
                &old,
                shard,
                vec![update(int_row(1_000 + attempt as i64), time, 1)],
                upper,
                at(time + 1),
                WriteFence::Epoch(1),
            )
            .await;
            match outcome {
                Ok(Ok(())) if started_after_fence => landed_after_fence.push(time),
                Ok(_) => {}
                Err(err) if err.determinate_kind() == Some(DeterminateKind::Fenced) => {
                    refused += 1;
                }
                Err(err) => panic!("old writer's append failed: {err}"),
            }
            tokio::task::yield_now().await;
        }
        (landed_after_fence, refused)
    };
    let new_writer = async {
        // Let the old writer land a few appends first.
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        new.downgrade_since(shard, &at(0), WriteFence::Epoch(2))
            .await
            .expect("the fencing downgrade");
        fenced.store(true, Ordering::SeqCst);
        let mut landed = 0u64;
        while landed < NEW_APPENDS {
            let upper = frontiers_of(&new, shard).await.upper;
            let time = *upper.as_option().expect("not sealed");
            let outcome = fenced_append(
                &new,
                shard,
                vec![update(int_row(landed as i64), time, 1)],
                upper,
                at(time + 1),
                WriteFence::Epoch(2),
            )
            .await
            .expect("new writer's append");
            if outcome.is_ok() {
                landed += 1;
            }
            tokio::task::yield_now().await;
        }
    };
    let ((landed_after_fence, refused), ()) = tokio::join!(old_writer, new_writer);
    assert!(
        landed_after_fence.is_empty(),
        "old writer's appends started after the fence landed at times {landed_after_fence:?}"
    );
    assert!(refused > 0, "the old writer was never refused");
    let upper = *frontiers_of(&new, shard)
        .await
        .upper
        .as_option()
        .expect("not sealed");
    let snapshot = snapshot_of(&new, shard, upper - 1).await;
    let new_rows = snapshot
        .iter()
        .filter(|(row, _)| (0..NEW_APPENDS as i64).any(|value| *row == int_row(value)))
        .count();
    assert_eq!(new_rows, NEW_APPENDS as usize, "every new append landed");
}

/// Unfenced writes are admitted whatever the shard's epoch, and leave it
/// unchanged: a stale epoch is still refused after them.
pub async fn unfenced_writes_still_work<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let raised = fenced_append(&backend, shard, vec![], at(0), at(1), WriteFence::Epoch(7)).await;
    assert_eq!(raised.expect("append with epoch 7"), Ok(()));
    let unfenced = fenced_append(
        &backend,
        shard,
        vec![update(int_row(1), 1, 1)],
        at(1),
        at(3),
        WriteFence::Unfenced,
    )
    .await;
    assert_eq!(unfenced.expect("unfenced append"), Ok(()));
    let since = backend
        .downgrade_since(shard, &at(1), WriteFence::Unfenced)
        .await
        .expect("unfenced downgrade");
    assert_eq!(since, at(1));
    let stale = fenced_append(&backend, shard, vec![], at(3), at(4), WriteFence::Epoch(6)).await;
    assert_fenced(
        stale,
        "an append with epoch 6 after epoch 7 and unfenced writes",
    );
    assert_eq!(frontiers_of(&backend, shard).await, frontiers(at(1), at(3)));
}
