//! Appends and snapshots.

use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_conformance::faults::{FaultRates, FaultyBackend, Operation};
use tidemark_storage_types::WriteFence;
use tidemark_storage_types::{
    BackendError, IdempotencyToken, PersistBackend, StorageError, StorageInstanceId,
};

use super::*;

/// What an append receiver resolved with.
async fn outcome(
    receiver: tokio::sync::oneshot::Receiver<Result<(), StorageError>>,
) -> Result<(), StorageError> {
    within_a_minute(receiver, "append never resolved")
        .await
        .expect("append channel open")
}

/// Appended updates are read back at and after their times.
pub async fn append_then_snapshot_reads_back<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(
        &mut c,
        user(1),
        vec![
            update(1, "a", 0, 1),
            update(2, "b", 1, 2),
            update(1, "a", 2, -1),
        ],
        3,
    )
    .await;
    assert_eq!(
        c.snapshot(user(1), 0).await.unwrap(),
        vec![(row(1, "a"), 1)]
    );
    assert_eq!(
        c.snapshot(user(1), 1).await.unwrap(),
        vec![(row(1, "a"), 1), (row(2, "b"), 2)]
    );
    assert_eq!(
        c.snapshot(user(1), 2).await.unwrap(),
        vec![(row(2, "b"), 2)]
    );
}

/// No commands: resolved at once.
pub async fn empty_append_resolves_at_once<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    let receiver = c.append(vec![]).unwrap();
    assert_eq!(outcome(receiver).await, Ok(()));
}

/// An unknown id is refused and nothing is written.
pub async fn append_to_unknown_id_is_identifier_missing<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let err = c
        .append(vec![
            (user(1), vec![update(1, "a", 0, 1)], 1),
            (user(5), vec![], 1),
        ])
        .unwrap_err();
    assert_eq!(err, StorageError::IdentifierMissing(user(5)));
    c.flush().await;
    let shard = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    assert_eq!(
        c.backend().frontiers(shard).await.unwrap().upper,
        frontier(0)
    );
}

/// Only the controller's own tables accept appends.
pub async fn append_to_ingestion_is_invalid_usage<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_instance(StorageInstanceId(1));
    c.create_collections(vec![(user(2), ingestion(StorageInstanceId(1), None))])
        .await
        .unwrap();
    match c.append(vec![(user(2), vec![update(1, "a", 0, 1)], 1)]) {
        Err(err @ StorageError::NotControllerWritten(id)) => {
            assert_eq!(id, user(2));
            assert!(err.to_string().contains("only tables"), "{err}");
        }
        other => panic!("expected NotControllerWritten, got {other:?}"),
    }
}

/// One call naming a collection twice is refused.
pub async fn append_naming_a_collection_twice_is_invalid_usage<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    match c.append(vec![(user(1), vec![], 1), (user(1), vec![], 2)]) {
        Err(StorageError::DuplicateAppend(id)) => assert_eq!(id, user(1)),
        other => panic!("expected DuplicateAppend, got {other:?}"),
    }
}

/// An update at the new upper is refused before anything is written.
pub async fn update_at_upper_is_update_beyond_upper<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table()), (user(2), table())])
        .await
        .unwrap();
    let err = c
        .append(vec![
            (user(2), vec![update(1, "a", 0, 1)], 1),
            (user(1), vec![update(1, "a", 0, 1), update(2, "b", 4, 1)], 4),
        ])
        .unwrap_err();
    assert_eq!(err, StorageError::UpdateBeyondUpper(user(1)));
    c.flush().await;
    for id in [user(1), user(2)] {
        let shard = c.collection(id).unwrap().collection_metadata.data_shard;
        assert_eq!(
            c.backend().frontiers(shard).await.unwrap().upper,
            frontier(0)
        );
    }
}

/// A row that does not match the relation is refused, naming the column.
pub async fn row_not_matching_relation_is_invalid_row<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let bad = Update::new(Row::pack([Datum::Null, Datum::Null]), 0, 1);
    let err = c.append(vec![(user(1), vec![bad], 1)]).unwrap_err();
    match &err {
        StorageError::InvalidRow { id, .. } => assert_eq!(*id, user(1)),
        other => panic!("expected InvalidRow, got {other:?}"),
    }
    assert!(err.to_string().contains("\"id\""), "{err}");
}

/// An append whose upper is behind the collection's is `InvalidUppers`,
/// and writes nothing.
pub async fn stale_upper_resolves_invalid_uppers<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(&mut c, user(1), vec![update(1, "a", 3, 1)], 5).await;
    let receiver = c
        .append(vec![(user(1), vec![update(2, "b", 1, 1)], 4)])
        .unwrap();
    assert_eq!(
        outcome(receiver).await,
        Err(StorageError::InvalidUppers(vec![user(1)]))
    );
    assert_eq!(
        c.snapshot(user(1), 4).await.unwrap(),
        vec![(row(1, "a"), 1)]
    );
    // Writing before the upper with a later new upper is stale too.
    let receiver = c
        .append(vec![(user(1), vec![update(2, "b", 4, 1)], 9)])
        .unwrap();
    assert_eq!(
        outcome(receiver).await,
        Err(StorageError::InvalidUppers(vec![user(1)]))
    );
}

/// Another writer moved the shard's upper: the controller's append fails
/// with `InvalidUppers`, and the next one starts from the real upper.
pub async fn racing_writer_resolves_invalid_uppers_then_recovers<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let shard = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    let other = factory.open_handle().await;
    other
        .compare_and_append(
            shard,
            vec![update(9, "other", 0, 1)],
            frontier(0),
            frontier(2),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    let receiver = c
        .append(vec![(user(1), vec![update(1, "a", 1, 1)], 3)])
        .unwrap();
    assert_eq!(
        outcome(receiver).await,
        Err(StorageError::InvalidUppers(vec![user(1)]))
    );
    let receiver = c
        .append(vec![(user(1), vec![update(1, "a", 2, 1)], 3)])
        .unwrap();
    assert_eq!(outcome(receiver).await, Ok(()));
    process_until(&mut c, |c| {
        c.collection(user(1)).unwrap().write_frontier == frontier(3)
    })
    .await;
    assert_eq!(
        c.snapshot(user(1), 2).await.unwrap(),
        vec![(row(1, "a"), 1), (row(9, "other"), 1)]
    );
}

/// Appends submitted back to back apply in submission order.
pub async fn appends_pipeline_in_submission_order<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let mut receivers = Vec::new();
    for time in 0..20u64 {
        let diff = if time % 2 == 0 { 1 } else { -1 };
        receivers.push(
            c.append(vec![(user(1), vec![update(1, "x", time, diff)], time + 1)])
                .unwrap(),
        );
    }
    for receiver in receivers {
        assert_eq!(outcome(receiver).await, Ok(()));
    }
    process_until(&mut c, |c| {
        c.collection(user(1)).unwrap().write_frontier == frontier(20)
    })
    .await;
    for time in 0..20u64 {
        let expected = if time % 2 == 0 {
            vec![(row(1, "x"), 1)]
        } else {
            vec![]
        };
        assert_eq!(
            c.snapshot(user(1), time).await.unwrap(),
            expected,
            "at {time}"
        );
    }
}

/// One call appends to several tables, each to its own upper.
pub async fn appends_to_several_tables_in_one_call<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table()), (user(2), table())])
        .await
        .unwrap();
    let receiver = c
        .append(vec![
            (user(1), vec![update(1, "a", 0, 1)], 2),
            (user(2), vec![update(2, "b", 1, 1)], 5),
        ])
        .unwrap();
    assert_eq!(outcome(receiver).await, Ok(()));
    process_until(&mut c, |c| {
        c.collection(user(1)).unwrap().write_frontier == frontier(2)
            && c.collection(user(2)).unwrap().write_frontier == frontier(5)
    })
    .await;
    assert_eq!(
        c.snapshot(user(2), 4).await.unwrap(),
        vec![(row(2, "b"), 1)]
    );
}

/// Appends through a backend that often fails indeterminately, after
/// applying or by a timeout before applying, are retried with their token:
/// every append lands exactly once.
pub async fn indeterminate_failures_are_retried_without_duplicates<F: BackendFactory>(factory: &F) {
    let faulty = FaultyBackend::new(factory.open_handle().await, 7).with_rates(
        Operation::CompareAndAppendAll,
        FaultRates::new(0.0, 0.3)
            .and_then(|rates| rates.with_timeout(0.3))
            .expect("valid rates"),
    );
    let mut c = Controller::new(faulty, test_config()).await.unwrap();
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    for time in 0..10u64 {
        let receiver = c
            .append(vec![(user(1), vec![update(1, "x", time, 1)], time + 1)])
            .unwrap();
        assert_eq!(outcome(receiver).await, Ok(()), "append at {time}");
    }
    let counts = c.backend().counts(Operation::CompareAndAppendAll);
    assert!(
        counts.failed_after > 0 && counts.timed_out > 0,
        "the backend injected both kinds of indeterminate faults: {counts:?}"
    );
    assert_eq!(
        c.snapshot(user(1), 9).await.unwrap(),
        vec![(row(1, "x"), 10)]
    );
}

/// A backend that refuses every append: starting the controller (which
/// writes its metadata) reports the backend's error.
pub async fn failing_backend_is_reported<F: BackendFactory>(factory: &F) {
    let faulty = FaultyBackend::new(factory.open_handle().await, 3).with_rates(
        Operation::CompareAndAppend,
        FaultRates::new(1.0, 0.0).expect("valid rates"),
    );
    let err = Controller::<u64, _>::new(faulty, test_config())
        .await
        .unwrap_err();
    match err {
        StorageError::Backend(backend) => assert!(
            matches!(backend, BackendError::Determinate(_)),
            "{backend:?}"
        ),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

/// Snapshots of unknown ids are refused.
pub async fn snapshot_of_unknown_id_is_identifier_missing<F: BackendFactory>(factory: &F) {
    let c = controller(factory).await;
    assert_eq!(
        c.snapshot(user(4), 0).await.unwrap_err(),
        StorageError::IdentifierMissing(user(4))
    );
}

/// A snapshot before the since is refused.
pub async fn snapshot_before_since_is_read_before_since<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(&mut c, user(1), vec![update(1, "a", 0, 1)], 10).await;
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(6)))]);
    assert_eq!(
        c.snapshot(user(1), 5).await.unwrap_err(),
        StorageError::ReadBeforeSince(user(1))
    );
    assert_eq!(
        c.snapshot(user(1), 6).await.unwrap(),
        vec![(row(1, "a"), 1)]
    );
}

/// A snapshot at or beyond the upper waits for a write to pass it.
pub async fn snapshot_waits_for_the_upper<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let shard = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    let writer = factory.open_handle().await;
    let write = async {
        writer
            .compare_and_append(
                shard,
                vec![update(1, "late", 4, 1)],
                frontier(0),
                frontier(6),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
    };
    let (rows, ()) = within_a_minute(
        async { tokio::join!(c.snapshot(user(1), 5), write) },
        "snapshot never returned",
    )
    .await;
    assert_eq!(rows.unwrap(), vec![(row(1, "late"), 1)]);
}

use tidemark_storage_types::ReadPolicy;

/// Calls submitted back to back on two tables, one of them stale: each
/// table's calls apply in order, the stale one alone fails, and a failure
/// on one table does not hold up the other.
pub async fn interleaved_appends_keep_per_table_order<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table()), (user(2), table())])
        .await
        .unwrap();
    let mut receivers = Vec::new();
    for step in 0..10u64 {
        let id = if step % 2 == 0 { user(1) } else { user(2) };
        let time = step / 2;
        receivers.push((
            step,
            c.append(vec![(id, vec![update(7, "x", time, 1)], time + 1)])
                .unwrap(),
        ));
        if step == 4 {
            // u1 is at [3] once the calls before this one apply: stale.
            receivers.push((
                100,
                c.append(vec![(user(1), vec![update(8, "stale", 1, 1)], 2)])
                    .unwrap(),
            ));
        }
    }
    for (step, receiver) in receivers {
        let expected = if step == 100 {
            Err(StorageError::InvalidUppers(vec![user(1)]))
        } else {
            Ok(())
        };
        assert_eq!(outcome(receiver).await, expected, "call {step}");
    }
    process_until(&mut c, |c| {
        c.collection(user(1)).unwrap().write_frontier == frontier(5)
            && c.collection(user(2)).unwrap().write_frontier == frontier(5)
    })
    .await;
    for id in [user(1), user(2)] {
        assert_eq!(
            c.snapshot(id, 4).await.unwrap(),
            vec![(row(7, "x"), 5)],
            "{id}"
        );
    }
}

/// The data shard of collection `id`.
fn data_shard<B: PersistBackend<u64>>(
    c: &Controller<u64, B>,
    id: GlobalId,
) -> tidemark_storage_types::ShardId {
    c.collection(id).unwrap().collection_metadata.data_shard
}

/// A call to two tables, one of whose expectations is wrong (another
/// writer moved its upper), lands nothing: `InvalidUppers` names that
/// table only, and the other table's shard is untouched.
pub async fn atomic_append_with_one_bad_expectation_lands_nothing<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table()), (user(2), table())])
        .await
        .unwrap();
    let (shard_a, shard_b) = (data_shard(&c, user(1)), data_shard(&c, user(2)));
    let other = factory.open_handle().await;
    other
        .compare_and_append(
            shard_b,
            vec![update(9, "other", 0, 1)],
            frontier(0),
            frontier(2),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    let receiver = c
        .append(vec![
            (user(1), vec![update(1, "a", 0, 1)], 1),
            (user(2), vec![update(2, "b", 0, 1)], 1),
        ])
        .unwrap();
    assert_eq!(
        outcome(receiver).await,
        Err(StorageError::InvalidUppers(vec![user(2)]))
    );
    assert_eq!(other.frontiers(shard_a).await.unwrap().upper, frontier(0));
    assert_eq!(other.usage(shard_a).await.unwrap().updates, 0);
    assert_eq!(other.frontiers(shard_b).await.unwrap().upper, frontier(2));
    // A stale command (an update before its table's upper) also refuses
    // the whole call, without a backend write.
    let receiver = c
        .append(vec![
            (user(1), vec![update(1, "a", 0, 1)], 1),
            (user(2), vec![update(2, "b", 1, 1)], 3),
        ])
        .unwrap();
    assert_eq!(
        outcome(receiver).await,
        Err(StorageError::InvalidUppers(vec![user(2)]))
    );
    assert_eq!(other.frontiers(shard_a).await.unwrap().upper, frontier(0));
    // With both expectations right, both land.
    let receiver = c
        .append(vec![
            (user(1), vec![update(1, "a", 0, 1)], 3),
            (user(2), vec![update(2, "b", 2, 1)], 3),
        ])
        .unwrap();
    assert_eq!(outcome(receiver).await, Ok(()));
    assert_eq!(other.frontiers(shard_a).await.unwrap().upper, frontier(3));
    assert_eq!(other.frontiers(shard_b).await.unwrap().upper, frontier(3));
}

/// While the controller appends a stream of calls to two tables, a
/// concurrent reader on another handle reading the tables in both orders
/// always finds them reflecting the same calls: having seen call `k` in
/// one, the other's snapshot at `k` holds every call up to `k`.
pub async fn snapshots_of_tables_in_one_call_reflect_the_same_calls<F: BackendFactory>(
    factory: &F,
) {
    const CALLS: u64 = 30;
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table()), (user(2), table())])
        .await
        .unwrap();
    let shards = [data_shard(&c, user(1)), data_shard(&c, user(2))];
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let handle = factory.open_handle().await;
        let done = std::sync::Arc::clone(&done);
        tokio::spawn(async move {
            let mut round = 0usize;
            while round == 0 || !done.load(std::sync::atomic::Ordering::SeqCst) {
                // Reads that never wait (memory) would otherwise keep this
                // task on its worker and starve the controller's.
                tokio::task::yield_now().await;
                let (first, second) = (shards[round % 2], shards[(round + 1) % 2]);
                round += 1;
                let seen = handle.frontiers(first).await.unwrap().upper;
                let Some(&seen) = seen.as_option() else {
                    panic!("no call seals");
                };
                if seen == 0 {
                    continue;
                }
                let rows = handle
                    .snapshot(second, &(seen - 1))
                    .await
                    .unwrap_or_else(|err| {
                        panic!(
                            "{second} does not reflect call {} that {first} does: {err}",
                            seen - 1
                        )
                    });
                let mut expected: Vec<_> =
                    (0..seen as i64).map(|call| (row(call, "x"), 1)).collect();
                expected.sort();
                assert_eq!(rows, expected, "round {round}");
            }
        })
    };
    for call in 0..CALLS {
        let updates = vec![update(call as i64, "x", call, 1)];
        let receiver = c
            .append(vec![
                (user(1), updates.clone(), call + 1),
                (user(2), updates, call + 1),
            ])
            .unwrap();
        assert_eq!(outcome(receiver).await, Ok(()), "call {call}");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    within_a_minute(reader, "reader never finished")
        .await
        .expect("the reader saw one table without the other");
}
