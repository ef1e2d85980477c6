//! Dropping collections: finalization and forgetting.

use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_types::{PersistBackend, ReadPolicy, StorageError, StorageInstanceId};

use super::*;
use tidemark_storage_controller::{ClusterReplicaLocation, StorageCommand};

/// `drop_sources` with one unknown id drops nothing.
pub async fn drop_sources_with_unknown_id_drops_nothing<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    assert_eq!(
        c.drop_sources(vec![user(1), user(8)]).unwrap_err(),
        StorageError::IdentifierMissing(user(8))
    );
    assert_eq!(since_of(&c, user(1)), frontier(0));
}

/// A dropped collection with no other hold is removed, its shard
/// finalized, its durable mapping gone.
pub async fn dropped_collection_is_finalized_and_forgotten<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table()), (user(2), table())])
        .await
        .unwrap();
    append_and_settle(&mut c, user(1), vec![update(1, "a", 0, 1)], 4).await;
    let shard = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    c.drop_sources(vec![user(1)]).unwrap();
    assert_eq!(
        c.collection(user(1)).unwrap_err(),
        StorageError::IdentifierMissing(user(1))
    );
    c.flush().await;
    assert!(!c.backend().list_shards().await.unwrap().contains(&shard));
    let frontiers = c.backend().frontiers(shard).await.unwrap();
    assert!(frontiers.since.is_empty() && frontiers.upper.is_empty());
    let metadata = durable_state(factory).await.1;
    assert!(!metadata.collections.contains_key(&user(1)));
    assert!(metadata.collections.contains_key(&user(2)));
    assert!(metadata.finalizing.is_empty());
}

/// A dropped collection that something still reads stays until released.
pub async fn dropped_collection_waits_for_other_holds<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let token = c.prepare_export(user(5), user(1)).unwrap();
    c.drop_sources(vec![user(1)]).unwrap();
    let state = c.collection(user(1)).unwrap();
    assert!(state.implied_capability.is_empty());
    assert!(matches!(&state.read_policy, ReadPolicy::ValidFrom(f) if f.is_empty()));
    assert_eq!(state.since(), frontier(0));
    let shard = state.collection_metadata.data_shard;
    c.flush().await;
    assert!(c.backend().list_shards().await.unwrap().contains(&shard));
    c.cancel_prepare_export(token);
    assert!(c.collection(user(1)).is_err());
    c.flush().await;
    assert!(!c.backend().list_shards().await.unwrap().contains(&shard));
}

/// Unknown ids are skipped by the unvalidated drop.
pub async fn drop_sources_unvalidated_skips_unknown_ids<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table()), (user(2), table())])
        .await
        .unwrap();
    c.drop_sources_unvalidated(vec![user(9), user(2)]);
    assert!(c.collection(user(2)).is_err());
    assert!(c.collection(user(1)).is_ok());
}

/// A dropped ingestion's instance is told `AllowCompaction(id, [])`, and a
/// new replica does not hear of it.
pub async fn dropped_ingestion_is_told_to_stop<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "replica-a");
    c.create_instance(StorageInstanceId(1));
    c.connect_replica(
        StorageInstanceId(1),
        ClusterReplicaLocation::single("replica-a"),
    );
    replica.accept().await;
    c.create_collections(vec![(user(2), ingestion(StorageInstanceId(1), None))])
        .await
        .unwrap();
    c.drop_sources(vec![user(2)]).unwrap();
    c.ready().await;
    c.process().await.unwrap();
    let commands = replica.received();
    assert!(
        commands.contains(&StorageCommand::AllowCompaction(vec![(
            user(2),
            timely::progress::Antichain::new()
        )])),
        "{commands:?}"
    );
    c.connect_replica(
        StorageInstanceId(1),
        ClusterReplicaLocation::single("replica-a"),
    );
    replica.accept().await;
    let replayed = replica.received();
    assert!(
        !replayed
            .iter()
            .any(|command| matches!(command, StorageCommand::CreateSources(_))),
        "{replayed:?}"
    );
}

/// Re-creating a dropped id gives a new, empty shard.
pub async fn recreated_id_gets_a_fresh_shard<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(&mut c, user(1), vec![update(1, "a", 0, 1)], 2).await;
    let old = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    c.drop_sources(vec![user(1)]).unwrap();
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let state = c.collection(user(1)).unwrap();
    assert_ne!(state.collection_metadata.data_shard, old);
    assert_eq!(state.write_frontier, frontier(0));
    append_and_settle(&mut c, user(1), vec![], 2).await;
    assert_eq!(c.snapshot(user(1), 1).await.unwrap(), vec![]);
}
