//! Creating collections.

use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_types::{PersistBackend, ReadPolicy, StorageError, StorageInstanceId};

use super::*;

/// A new table: since = upper = `[0]`, one capability at 0, `NoPolicy`.
pub async fn create_table_starts_at_minimum_frontiers<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let state = c.collection(user(1)).unwrap();
    assert_eq!(state.since(), frontier(0));
    assert_eq!(state.write_frontier, frontier(0));
    assert_eq!(state.implied_capability, frontier(0));
    assert_eq!(state.read_capabilities.count_for(&0), 1);
    assert!(matches!(
        &state.read_policy,
        ReadPolicy::NoPolicy { initial_since } if *initial_since == frontier(0)
    ));
    assert!(state.storage_dependencies.is_empty());
    let shard = state.collection_metadata.data_shard;
    assert_eq!(
        durable_state(factory).await.1.collections.get(&user(1)),
        Some(&shard)
    );
    let frontiers = c.backend().frontiers(shard).await.unwrap();
    assert_eq!(frontiers.upper, frontier(0));
}

/// Re-creating with an identical description changes nothing.
pub async fn create_collections_is_idempotent_for_identical_descriptions<F: BackendFactory>(
    factory: &F,
) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(&mut c, user(1), vec![update(1, "a", 0, 1)], 3).await;
    let shard = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let state = c.collection(user(1)).unwrap();
    assert_eq!(state.collection_metadata.data_shard, shard);
    assert_eq!(state.write_frontier, frontier(3));
    assert_eq!(state.read_capabilities.count_for(&0), 1);
}

/// Exact duplicates in one batch collapse into one collection.
pub async fn create_collections_collapses_exact_duplicates<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table()), (user(1), table())])
        .await
        .unwrap();
    assert_eq!(c.collections().count(), 1);
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .read_capabilities
            .count_for(&0),
        1
    );
}

/// The same id twice with different descriptions is refused.
pub async fn conflicting_duplicates_in_a_batch_are_source_id_reused<F: BackendFactory>(
    factory: &F,
) {
    let mut c = controller(factory).await;
    let other = table().with_since(frontier(4));
    let err = c
        .create_collections(vec![(user(1), table()), (user(1), other)])
        .await
        .unwrap_err();
    assert_eq!(err, StorageError::SourceIdReused(user(1)));
    assert_eq!(c.collections().count(), 0);
}

/// An existing id with another description is refused.
pub async fn existing_id_with_another_description_is_source_id_reused<F: BackendFactory>(
    factory: &F,
) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let err = c
        .create_collections(vec![(user(1), progress_collection())])
        .await
        .unwrap_err();
    assert_eq!(err, StorageError::SourceIdReused(user(1)));
    assert_eq!(c.collection(user(1)).unwrap().description, table());
}

/// A batch with one bad entry creates nothing, in memory or durably.
pub async fn a_rejected_batch_changes_nothing<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let shards_before = c.backend().list_shards().await.unwrap();
    let durable_before = durable_state(factory).await.1.collections;
    let err = c
        .create_collections(vec![
            (user(2), table()),
            (user(3), ingestion(StorageInstanceId(1), Some(user(2)))),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StorageError::IngestionInstanceMissing {
            storage_instance_id: StorageInstanceId(1),
            ingestion_id: user(3),
        }
    );
    assert!(c.collection(user(2)).is_err());
    assert_eq!(c.collections().count(), 1);
    assert_eq!(c.backend().list_shards().await.unwrap(), shards_before);
    assert_eq!(durable_state(factory).await.1.collections, durable_before);
}

/// `description.since` becomes the initial since, on the backend too.
pub async fn description_since_is_honoured<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table().with_since(frontier(5)))])
        .await
        .unwrap();
    assert_eq!(since_of(&c, user(1)), frontier(5));
    let shard = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    assert_eq!(
        c.backend().frontiers(shard).await.unwrap().since,
        frontier(5)
    );
    append_and_settle(&mut c, user(1), vec![update(1, "a", 2, 1)], 8).await;
    assert_eq!(
        c.snapshot(user(1), 4).await.unwrap_err(),
        StorageError::ReadBeforeSince(user(1))
    );
    assert_eq!(
        c.snapshot(user(1), 5).await.unwrap(),
        vec![(row(1, "a"), 1)]
    );
}

/// A remap collection that exists nowhere is refused.
pub async fn missing_dependency_is_identifier_missing<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_instance(StorageInstanceId(1));
    let err = c
        .create_collections(vec![(
            user(2),
            ingestion(StorageInstanceId(1), Some(user(7))),
        )])
        .await
        .unwrap_err();
    assert_eq!(err, StorageError::IdentifierMissing(user(7)));
    assert_eq!(c.collections().count(), 0);
}

/// An ingestion on an unknown instance is refused.
pub async fn ingestion_on_missing_instance_is_rejected<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    let err = c
        .create_collections(vec![(user(2), ingestion(StorageInstanceId(4), None))])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StorageError::IngestionInstanceMissing {
            storage_instance_id: StorageInstanceId(4),
            ingestion_id: user(2),
        }
    );
}

/// Two ingestions that hold each other are refused.
pub async fn dependency_cycle_is_invalid_usage<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_instance(StorageInstanceId(1));
    let err = c
        .create_collections(vec![
            (user(1), ingestion(StorageInstanceId(1), Some(user(2)))),
            (user(2), ingestion(StorageInstanceId(1), Some(user(1)))),
        ])
        .await
        .unwrap_err();
    match err {
        StorageError::DependencyCycle(ids) => assert_eq!(ids, vec![user(1), user(2)]),
        other => panic!("expected DependencyCycle, got {other:?}"),
    }
    assert_eq!(c.collections().count(), 0);
}

/// An ingestion holds its remap collection at its own since, and the hold
/// follows the ingestion's since.
pub async fn ingestion_holds_its_remap_collection<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_instance(StorageInstanceId(1));
    c.create_collections(vec![
        (user(1), progress_collection().with_since(frontier(3))),
        (user(2), ingestion(StorageInstanceId(1), Some(user(1)))),
    ])
    .await
    .unwrap();
    let ingestion_state = c.collection(user(2)).unwrap();
    assert_eq!(ingestion_state.storage_dependencies, vec![user(1)]);
    // The ingestion starts no earlier than its dependency.
    assert_eq!(ingestion_state.since(), frontier(3));
    let remap = c.collection(user(1)).unwrap();
    assert_eq!(remap.read_capabilities.count_for(&3), 2);
    // Releasing the remap's own capability leaves the ingestion's hold.
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(50)))]);
    assert_eq!(since_of(&c, user(1)), frontier(3));
    c.set_read_policy(vec![(user(2), ReadPolicy::ValidFrom(frontier(10)))]);
    assert_eq!(since_of(&c, user(2)), frontier(10));
    assert_eq!(since_of(&c, user(1)), frontier(10));
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .read_capabilities
            .count_for(&3),
        0
    );
    c.drop_sources(vec![user(2)]).unwrap();
    assert_eq!(since_of(&c, user(1)), frontier(50));
}

/// Unknown ids are `IdentifierMissing` for `collection` and
/// `collection_mut`.
pub async fn collection_lookups_of_unknown_ids_fail<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    assert_eq!(
        c.collection(user(3)).unwrap_err(),
        StorageError::IdentifierMissing(user(3))
    );
    assert_eq!(
        c.collection_mut(user(3)).unwrap_err(),
        StorageError::IdentifierMissing(user(3))
    );
    c.create_collections(vec![(user(3), table())])
        .await
        .unwrap();
    c.collection_mut(user(3))
        .unwrap()
        .storage_dependencies
        .clear();
}

/// `collections()` yields every collection in id order.
pub async fn collections_iterate_in_id_order<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![
        (user(3), table()),
        (GlobalId::System(9), table()),
        (user(1), table()),
    ])
    .await
    .unwrap();
    let ids: Vec<GlobalId> = c.collections().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![GlobalId::System(9), user(1), user(3)]);
}
