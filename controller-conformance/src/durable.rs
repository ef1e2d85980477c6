//! Durable metadata: restart, fencing, migration, reconciliation.

use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_types::{
    BackendError, DeterminateKind, PersistBackend, ReadPolicy, ShardId, StorageError,
    StorageInstanceId,
};

use super::*;
use tidemark_storage_controller::CURRENT_FORMAT_VERSION;

use crate::metadata::{DurableMetadata, StoredRecord, overwrite_record};

/// Controller A creates and appends; controller B on the same storage
/// reattaches to A's data, reclaims what nobody re-created, and fences A.
pub async fn restart_reattaches_reclaims_and_fences<F: BackendFactory>(factory: &F) {
    let mut a = controller(factory).await;
    a.create_collections(vec![(user(1), table()), (user(2), table())])
        .await
        .unwrap();
    append_and_settle(&mut a, user(1), vec![update(1, "kept", 0, 1)], 5).await;
    append_and_settle(&mut a, user(2), vec![update(2, "orphan", 0, 1)], 5).await;
    let kept_shard = a
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    let orphan_shard = a
        .collection(user(2))
        .unwrap()
        .collection_metadata
        .data_shard;

    let mut b = controller(factory).await;
    assert!(b.epoch() > a.epoch());
    b.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let state = b.collection(user(1)).unwrap();
    assert_eq!(state.collection_metadata.data_shard, kept_shard);
    assert_eq!(state.write_frontier, frontier(5));
    assert_eq!(
        b.snapshot(user(1), 4).await.unwrap(),
        vec![(row(1, "kept"), 1)]
    );
    b.try_reconcile_state().await.unwrap();
    let shards = b.backend().list_shards().await.unwrap();
    assert!(shards.contains(&kept_shard));
    assert!(!shards.contains(&orphan_shard));
    let (_, metadata) = durable_state(factory).await;
    assert_eq!(
        metadata.collections.keys().copied().collect::<Vec<_>>(),
        vec![user(1)]
    );

    // A notices on its next write at the latest, and refuses from then on.
    match a.append(vec![(user(1), vec![update(1, "late", 5, 1)], 6)]) {
        Err(err) => assert_eq!(err, StorageError::Fenced),
        Ok(receiver) => assert_eq!(
            within_a_minute(receiver, "append never resolved")
                .await
                .unwrap(),
            Err(StorageError::Fenced)
        ),
    }
    assert!(a.is_fenced());
    assert_eq!(
        a.append(vec![(user(1), vec![], 7)]).unwrap_err(),
        StorageError::Fenced
    );
    // B keeps working; A wrote nothing.
    append_and_settle(&mut b, user(1), vec![update(3, "b", 5, 1)], 6).await;
    assert_eq!(
        b.snapshot(user(1), 5).await.unwrap(),
        vec![(row(1, "kept"), 1), (row(3, "b"), 1)]
    );
}

/// Once fenced, metadata-changing calls and reads refuse with `Fenced`.
pub async fn fenced_controller_refuses_work<F: BackendFactory>(factory: &F) {
    let mut a = controller(factory).await;
    a.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let _b = controller(factory).await;
    // A new collection needs a metadata write: the fence is found.
    assert_eq!(
        a.create_collections(vec![(user(2), table())])
            .await
            .unwrap_err(),
        StorageError::Fenced
    );
    assert!(a.is_fenced());
    assert_eq!(
        a.snapshot(user(1), 0).await.unwrap_err(),
        StorageError::Fenced
    );
    assert_eq!(
        a.try_reconcile_state().await.unwrap_err(),
        StorageError::Fenced
    );
    assert_eq!(
        a.migrate_collections(vec![]).await.unwrap_err(),
        StorageError::Fenced
    );
    assert!(a.subscribe(user(1), 0).is_err());
    a.create_instance(StorageInstanceId(1));
    let token = a.prepare_export(user(5), user(1)).unwrap();
    assert_eq!(
        a.create_exports(vec![(token, super::exports::sink(user(1), 0))])
            .await
            .unwrap_err(),
        StorageError::Fenced
    );
}

/// `reconcile_state` keeps the seed's shape (it returns nothing), so its
/// failure is not swallowed: the next `process` reports it.
pub async fn reconcile_failure_is_reported_by_process<F: BackendFactory>(factory: &F) {
    let mut a = controller(factory).await;
    a.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let _b = controller(factory).await;
    // The fence is found by the next metadata write.
    assert_eq!(
        a.create_collections(vec![(user(2), table())])
            .await
            .unwrap_err(),
        StorageError::Fenced
    );
    StorageController::reconcile_state(&mut a).await;
    let reported = next_process_failure(
        &mut a,
        "the reconcile failure was never reported by process",
    )
    .await;
    assert_eq!(reported, StorageError::Fenced);
}

/// Background work of a fenced controller (a since downgrade) fails and
/// `process` reports it.
pub async fn fenced_background_work_is_reported_by_process<F: BackendFactory>(factory: &F) {
    let mut a = controller(factory).await;
    a.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let b = controller(factory).await;
    a.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(3)))]);
    let failure = next_process_failure(&mut a, "the background failure never surfaced").await;
    assert_eq!(failure, StorageError::Fenced);
    // The downgrade did not reach the shard.
    let shard = a
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    assert_eq!(
        b.backend().frontiers(shard).await.unwrap().since,
        frontier(0)
    );
}

/// Version 1 metadata is read, upgraded by `migrate_collections`, and a
/// second migration is a no-op.
pub async fn migrate_upgrades_version_1_and_can_run_again<F: BackendFactory>(factory: &F) {
    let shard = ShardId::new();
    let mut legacy = DurableMetadata::default();
    legacy.collections.insert(user(1), shard);
    overwrite_record(
        factory,
        StoredRecord {
            format_version: 1,
            epoch: 4,
            body: legacy.encode_v1(),
        },
    )
    .await;
    let mut c = controller(factory).await;
    assert_eq!(c.epoch(), 5);
    // Starting up (fencing) keeps the old format.
    assert_eq!(durable_state(factory).await.0.format_version, 1);
    c.migrate_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let (record, metadata) = durable_state(factory).await;
    assert_eq!(record.format_version, CURRENT_FORMAT_VERSION);
    assert_eq!(metadata, legacy);
    c.migrate_collections(vec![(user(1), table())])
        .await
        .unwrap();
    assert_eq!(durable_state(factory).await.0, record);
    // The migrated mapping is used.
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .collection_metadata
            .data_shard,
        shard
    );
}

/// Metadata of a newer format is refused with a clear error.
pub async fn newer_metadata_format_is_refused<F: BackendFactory>(factory: &F) {
    overwrite_record(
        factory,
        StoredRecord {
            format_version: CURRENT_FORMAT_VERSION + 1,
            epoch: 1,
            body: "{}".to_string(),
        },
    )
    .await;
    let err = Controller::<u64, _>::new(factory.open_handle().await, test_config())
        .await
        .unwrap_err();
    match err {
        StorageError::MetadataFormatTooNew { found, supported } => {
            assert_eq!(found, CURRENT_FORMAT_VERSION + 1);
            assert_eq!(supported, CURRENT_FORMAT_VERSION);
        }
        other => panic!("expected MetadataFormatTooNew, got {other:?}"),
    }
}

/// A body that does not parse is reported as corrupted, naming the problem.
pub async fn corrupted_metadata_is_reported<F: BackendFactory>(factory: &F) {
    overwrite_record(
        factory,
        StoredRecord {
            format_version: CURRENT_FORMAT_VERSION,
            epoch: 1,
            body: r#"{"collections": {"u1": "not-a-shard"}, "sink_as_ofs": {}, "finalizing": []}"#
                .to_string(),
        },
    )
    .await;
    let err = Controller::<u64, _>::new(factory.open_handle().await, test_config())
        .await
        .unwrap_err();
    match err {
        StorageError::Backend(BackendError::Determinate(detail)) => {
            assert_eq!(detail.kind, DeterminateKind::Corrupted);
            assert!(detail.message.contains("not-a-shard"), "{}", detail.message);
        }
        other => panic!("expected a corrupted-metadata error, got {other:?}"),
    }
}

/// A finalization interrupted by a crash (recorded, shard not yet
/// finalized) is finished by `reconcile_state`.
pub async fn reconcile_finishes_interrupted_finalizations<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    backend.open(shard).await.unwrap();
    let mut metadata = DurableMetadata::default();
    metadata.finalizing.insert(shard);
    overwrite_record(
        factory,
        StoredRecord {
            format_version: CURRENT_FORMAT_VERSION,
            epoch: 1,
            body: metadata.encode(),
        },
    )
    .await;
    let mut c = controller(factory).await;
    assert!(backend.list_shards().await.unwrap().contains(&shard));
    c.try_reconcile_state().await.unwrap();
    assert!(!backend.list_shards().await.unwrap().contains(&shard));
    assert!(durable_state(factory).await.1.finalizing.is_empty());
}

/// A sink's initial as_of is recorded once: re-creating it after a restart
/// sends the first as_of; dropping it forgets the record.
pub async fn sink_as_of_is_recorded_once<F: BackendFactory>(factory: &F) {
    let mut a = controller(factory).await;
    a.create_instance(StorageInstanceId(1));
    a.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let token = a.prepare_export(user(5), user(1)).unwrap();
    a.create_exports(vec![(token, super::exports::sink(user(1), 2))])
        .await
        .unwrap();
    let (_, metadata) = durable_state(factory).await;
    assert_eq!(
        metadata.sink_as_ofs.get(&user(5)),
        Some(&vec![2u64.encode_for_test()])
    );
    drop(a);

    let (mut b, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "sinks");
    b.create_instance(StorageInstanceId(1));
    b.connect_replica(
        StorageInstanceId(1),
        tidemark_storage_controller::ClusterReplicaLocation::single("sinks"),
    );
    replica.accept().await;
    b.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    b.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(3)))]);
    let token = b.prepare_export(user(5), user(1)).unwrap();
    b.create_exports(vec![(token, super::exports::sink(user(1), 3))])
        .await
        .unwrap();
    let sent: Vec<_> = replica
        .received()
        .into_iter()
        .filter_map(|command| match command {
            tidemark_storage_controller::StorageCommand::CreateSinks(sinks) => Some(sinks),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].initial_as_of, frontier(2));
    b.drop_sinks(vec![user(5)]).unwrap();
    b.flush().await;
    assert!(durable_state(factory).await.1.sink_as_ofs.is_empty());
}

/// A snapshot waiting for the upper fails with `CollectionDropped` when a
/// newer controller reclaims the shard meanwhile.
pub async fn snapshot_of_a_shard_finalized_meanwhile_is_collection_dropped<F: BackendFactory>(
    factory: &F,
) {
    let mut a = controller(factory).await;
    a.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let reclaim = async {
        let mut b = controller(factory).await;
        b.try_reconcile_state().await.unwrap();
    };
    let (read, ()) = within_a_minute(
        async { tokio::join!(a.snapshot(user(1), 3), reclaim) },
        "snapshot never returned",
    )
    .await;
    assert_eq!(read.unwrap_err(), StorageError::CollectionDropped(user(1)));
}

/// `Codec64` for the test's expectations.
trait EncodeForTest {
    fn encode_for_test(self) -> i64;
}

impl EncodeForTest for u64 {
    fn encode_for_test(self) -> i64 {
        tidemark_storage_types::Codec64::encode(&self)
    }
}

/// A since downgrade the backend refuses surfaces through `process`;
/// metadata writes are not affected (their since downgrade is best effort).
pub async fn failed_since_downgrade_is_reported_by_process<F: BackendFactory>(factory: &F) {
    use tidemark_backend_conformance::faults::{FaultRates, FaultyBackend, Operation};
    let faulty = FaultyBackend::new(factory.open_handle().await, 11).with_rates(
        Operation::DowngradeSince,
        FaultRates::new(1.0, 0.0).expect("valid rates"),
    );
    let mut c = Controller::new(faulty, test_config()).await.unwrap();
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    c.create_collections(vec![(user(2), table())])
        .await
        .unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(3)))]);
    let failure = next_process_failure(&mut c, "the background failure never surfaced").await;
    assert!(
        matches!(failure, StorageError::Backend(BackendError::Determinate(_))),
        "{failure:?}"
    );
    assert!(!c.is_fenced());
    let shard = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    assert_eq!(
        c.backend().frontiers(shard).await.unwrap().since,
        frontier(0)
    );
}

/// Every backend operation sometimes applies and then reports an
/// indeterminate failure, or times out before applying and reports the
/// same: the controller retries (appends with their token) and nothing is
/// lost or duplicated, across a restart too.
pub async fn indeterminate_faults_everywhere_lose_and_duplicate_nothing<F: BackendFactory>(
    factory: &F,
) {
    use tidemark_backend_conformance::faults::{FaultRates, FaultyBackend};
    let rates = FaultRates::new(0.0, 0.2)
        .and_then(|rates| rates.with_timeout(0.1))
        .expect("valid rates");
    let faulty = FaultyBackend::new(factory.open_handle().await, 21).with_rates_for_all(rates);
    let mut a = Controller::new(faulty, test_config()).await.unwrap();
    a.create_collections(vec![(user(1), table()), (user(2), table())])
        .await
        .unwrap();
    for time in 0..15u64 {
        let id = i64::try_from(time).unwrap();
        let receiver = a
            .append(vec![
                (user(1), vec![update(id, "kept", time, 1)], time + 1),
                (user(2), vec![update(id, "dropped", time, 1)], time + 1),
            ])
            .unwrap();
        within_a_minute(receiver, "append never resolved")
            .await
            .unwrap()
            .unwrap();
    }
    process_until(&mut a, |c| {
        c.collection(user(1)).unwrap().write_frontier == frontier(15)
    })
    .await;
    a.set_read_policy(vec![(user(1), ReadPolicy::lag_writes_by(4, 1))]);
    let dropped_shard = a
        .collection(user(2))
        .unwrap()
        .collection_metadata
        .data_shard;
    a.drop_sources(vec![user(2)]).unwrap();
    a.flush().await;
    let expected: Vec<_> = (0..15).map(|id| (row(id, "kept"), 1)).collect();
    let mut read = a.snapshot(user(1), 14).await.unwrap();
    read.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(read, sorted_expected);
    let counts = a.backend().total_counts();
    assert!(
        counts.failed_after > 0 && counts.timed_out > 0,
        "the backend injected both kinds of indeterminate faults: {counts:?}"
    );

    let faulty = FaultyBackend::new(factory.open_handle().await, 22).with_rates_for_all(rates);
    let mut b = Controller::new(faulty, test_config()).await.unwrap();
    b.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    b.try_reconcile_state().await.unwrap();
    let mut read = b.snapshot(user(1), 14).await.unwrap();
    read.sort();
    assert_eq!(read, sorted_expected);
    let raw = factory.open_handle().await;
    assert!(!raw.list_shards().await.unwrap().contains(&dropped_shard));
    let (_, metadata) = durable_state(factory).await;
    assert_eq!(
        metadata.collections.keys().copied().collect::<Vec<_>>(),
        vec![user(1)]
    );
    assert!(metadata.finalizing.is_empty());
}
