//! Exports: prepare, create, cancel, drop.

use std::collections::BTreeSet;
use std::path::PathBuf;

use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_types::{
    ExportDescription, ReadPolicy, SinkConnection, StorageError, StorageInstanceId,
};
use timely::progress::Antichain;

use super::*;
use tidemark_storage_controller::{ClusterReplicaLocation, StorageCommand, StorageResponse};

/// An export of `from` on instance 1 at `as_of`.
#[must_use]
pub fn sink(from: GlobalId, as_of: u64) -> ExportDescription<u64> {
    ExportDescription {
        from,
        from_desc: relation(),
        connection: SinkConnection::File {
            path: PathBuf::from("/tmp/tidemark-sink.jsonl"),
        },
        as_of: frontier(as_of),
        with_snapshot: true,
        instance_id: StorageInstanceId(1),
    }
}

/// A controller with table u1 (since moved to 4 by a policy) and instance 1.
async fn with_table<F: BackendFactory>(factory: &F) -> TestController<F> {
    let mut c = controller(factory).await;
    c.create_instance(StorageInstanceId(1));
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(&mut c, user(1), vec![update(1, "a", 0, 1)], 10).await;
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(4)))]);
    c
}

/// The token holds `from` at its implied capability.
pub async fn prepare_export_holds_the_since<F: BackendFactory>(factory: &F) {
    let mut c = with_table(factory).await;
    let token = c.prepare_export(user(5), user(1)).unwrap();
    assert_eq!(token.id(), user(5));
    assert_eq!(token.from_id(), user(1));
    assert_eq!(token.acquired_since(), &frontier(4));
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .read_capabilities
            .count_for(&4),
        2
    );
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(9)))]);
    assert_eq!(since_of(&c, user(1)), frontier(4));
    c.cancel_prepare_export(token);
}

/// Preparing an id that is already an export is refused.
pub async fn prepare_export_for_existing_export_is_sink_id_reused<F: BackendFactory>(factory: &F) {
    let mut c = with_table(factory).await;
    let token = c.prepare_export(user(5), user(1)).unwrap();
    c.create_exports(vec![(token, sink(user(1), 4))])
        .await
        .unwrap();
    assert_eq!(
        c.prepare_export(user(5), user(1)).unwrap_err(),
        StorageError::SinkIdReused(user(5))
    );
}

/// Preparing an export of an unknown collection is refused.
pub async fn prepare_export_of_unknown_collection_is_identifier_missing<F: BackendFactory>(
    factory: &F,
) {
    let mut c = with_table(factory).await;
    assert_eq!(
        c.prepare_export(user(5), user(3)).unwrap_err(),
        StorageError::IdentifierMissing(user(3))
    );
}

/// Preparing an export of a dropped (but still held) collection is refused.
pub async fn prepare_export_of_dropped_collection_is_collection_dropped<F: BackendFactory>(
    factory: &F,
) {
    let mut c = with_table(factory).await;
    let token = c.prepare_export(user(5), user(1)).unwrap();
    c.drop_sources(vec![user(1)]).unwrap();
    assert_eq!(
        c.prepare_export(user(6), user(1)).unwrap_err(),
        StorageError::CollectionDropped(user(1))
    );
    c.cancel_prepare_export(token);
}

/// Cancelling releases the hold.
pub async fn cancel_prepare_export_releases_the_hold<F: BackendFactory>(factory: &F) {
    let mut c = with_table(factory).await;
    let token = c.prepare_export(user(5), user(1)).unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(9)))]);
    c.cancel_prepare_export(token);
    assert_eq!(since_of(&c, user(1)), frontier(9));
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .read_capabilities
            .count_for(&4),
        0
    );
}

/// The export takes over the token's hold and follows its write frontier
/// one step behind.
pub async fn create_exports_takes_over_the_hold_with_step_back<F: BackendFactory>(factory: &F) {
    let mut c = with_table(factory).await;
    let token = c.prepare_export(user(5), user(1)).unwrap();
    c.create_exports(vec![(token, sink(user(1), 4))])
        .await
        .unwrap();
    let export = c.export(user(5)).unwrap();
    assert_eq!(export.read_capability, frontier(4));
    assert_eq!(export.write_frontier, frontier(0));
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .read_capabilities
            .count_for(&4),
        2
    );
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(9)))]);
    assert_eq!(since_of(&c, user(1)), frontier(4));
    c.update_write_frontiers(&[(user(5), frontier(7))]);
    assert_eq!(c.export(user(5)).unwrap().read_capability, frontier(6));
    assert_eq!(since_of(&c, user(1)), frontier(6));
    c.update_write_frontiers(&[(user(5), frontier(20))]);
    assert_eq!(since_of(&c, user(1)), frontier(9));
}

/// The same export id twice in a batch is refused; both holds released.
pub async fn duplicate_export_in_a_batch_is_sink_id_reused<F: BackendFactory>(factory: &F) {
    let mut c = with_table(factory).await;
    let first = c.prepare_export(user(5), user(1)).unwrap();
    let second = c.prepare_export(user(5), user(1)).unwrap();
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .read_capabilities
            .count_for(&4),
        3
    );
    let err = c
        .create_exports(vec![(first, sink(user(1), 4)), (second, sink(user(1), 4))])
        .await
        .unwrap_err();
    assert_eq!(err, StorageError::SinkIdReused(user(5)));
    assert!(c.export(user(5)).is_err());
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .read_capabilities
            .count_for(&4),
        1
    );
}

/// A description reading another collection than the token is refused.
pub async fn export_reading_another_collection_is_invalid_usage<F: BackendFactory>(factory: &F) {
    let mut c = with_table(factory).await;
    c.create_collections(vec![(user(2), table())])
        .await
        .unwrap();
    let token = c.prepare_export(user(5), user(1)).unwrap();
    match c.create_exports(vec![(token, sink(user(2), 4))]).await {
        Err(err @ StorageError::ExportTokenMismatch { .. }) => {
            assert_eq!(
                err,
                StorageError::ExportTokenMismatch {
                    export_id: user(5),
                    from: user(2),
                    token_from: user(1),
                }
            );
            assert!(err.to_string().contains("from=u2 token_from=u1"), "{err}");
        }
        other => panic!("expected ExportTokenMismatch, got {other:?}"),
    }
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .read_capabilities
            .count_for(&4),
        1
    );
}

/// An export on an unknown instance is refused.
pub async fn export_on_missing_instance_is_export_instance_missing<F: BackendFactory>(factory: &F) {
    let mut c = with_table(factory).await;
    let token = c.prepare_export(user(5), user(1)).unwrap();
    let mut description = sink(user(1), 4);
    description.instance_id = StorageInstanceId(8);
    assert_eq!(
        c.create_exports(vec![(token, description)])
            .await
            .unwrap_err(),
        StorageError::ExportInstanceMissing {
            storage_instance_id: StorageInstanceId(8),
            export_id: user(5),
        }
    );
}

/// An as_of before the token's hold is refused.
pub async fn export_as_of_before_the_hold_is_read_before_since<F: BackendFactory>(factory: &F) {
    let mut c = with_table(factory).await;
    let token = c.prepare_export(user(5), user(1)).unwrap();
    assert_eq!(
        c.create_exports(vec![(token, sink(user(1), 3))])
            .await
            .unwrap_err(),
        StorageError::ReadBeforeSince(user(1))
    );
}

/// Re-creating an export with another description is refused.
pub async fn existing_export_with_another_description_is_sink_id_reused<F: BackendFactory>(
    factory: &F,
) {
    let mut c = with_table(factory).await;
    // Two tokens prepared before the export exists; the second is used
    // after the first created it.
    let token = c.prepare_export(user(5), user(1)).unwrap();
    let second = c.prepare_export(user(5), user(1)).unwrap();
    c.create_exports(vec![(token, sink(user(1), 4))])
        .await
        .unwrap();
    assert_eq!(
        c.create_exports(vec![(second, sink(user(1), 5))])
            .await
            .unwrap_err(),
        StorageError::SinkIdReused(user(5))
    );
}

/// Re-creating an identical export changes nothing and releases the token.
pub async fn identical_export_recreate_is_a_no_op<F: BackendFactory>(factory: &F) {
    let mut c = with_table(factory).await;
    let token = c.prepare_export(user(5), user(1)).unwrap();
    let again = c.prepare_export(user(5), user(1)).unwrap();
    c.create_exports(vec![(token, sink(user(1), 4))])
        .await
        .unwrap();
    c.create_exports(vec![(again, sink(user(1), 4))])
        .await
        .unwrap();
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .read_capabilities
            .count_for(&4),
        2
    );
}

/// The instance gets `CreateSinks` with the recorded as_of.
pub async fn create_exports_sends_create_sinks_and_records_as_of<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "sink-replica");
    c.create_instance(StorageInstanceId(1));
    c.connect_replica(
        StorageInstanceId(1),
        ClusterReplicaLocation::single("sink-replica"),
    );
    replica.accept().await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let token = c.prepare_export(user(5), user(1)).unwrap();
    c.create_exports(vec![(token, sink(user(1), 2))])
        .await
        .unwrap();
    let commands = replica.received();
    let sinks: Vec<_> = commands
        .iter()
        .filter_map(|command| match command {
            StorageCommand::CreateSinks(sinks) => Some(sinks.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(sinks.len(), 1, "{commands:?}");
    assert_eq!(sinks[0].id, user(5));
    assert_eq!(sinks[0].initial_as_of, frontier(2));
    assert_eq!(
        sinks[0].from_shard,
        c.collection(user(1))
            .unwrap()
            .collection_metadata
            .data_shard
    );
}

/// `drop_sinks` with an unknown id drops nothing.
pub async fn drop_sinks_of_unknown_id_is_identifier_missing<F: BackendFactory>(factory: &F) {
    let mut c = with_table(factory).await;
    let token = c.prepare_export(user(5), user(1)).unwrap();
    c.create_exports(vec![(token, sink(user(1), 4))])
        .await
        .unwrap();
    assert_eq!(
        c.drop_sinks(vec![user(5), user(9)]).unwrap_err(),
        StorageError::IdentifierMissing(user(9))
    );
    assert_eq!(c.export(user(5)).unwrap().read_capability, frontier(4));
}

/// A dropped sink tells the instance and keeps its hold on its source
/// (the sink may still be reading) until the replica reports it dropped;
/// then the hold goes and the export is forgotten.
pub async fn dropped_sink_keeps_its_hold_until_the_replica_confirms<F: BackendFactory>(
    factory: &F,
) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "drop-replica");
    c.create_instance(StorageInstanceId(1));
    c.connect_replica(
        StorageInstanceId(1),
        ClusterReplicaLocation::single("drop-replica"),
    );
    replica.accept().await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(4)))]);
    let token = c.prepare_export(user(5), user(1)).unwrap();
    c.create_exports(vec![(token, sink(user(1), 4))])
        .await
        .unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(9)))]);
    assert_eq!(since_of(&c, user(1)), frontier(4));
    c.drop_sinks(vec![user(5)]).unwrap();
    // The sink may still read until its replica confirms it stopped.
    assert_eq!(since_of(&c, user(1)), frontier(4));
    let export = c.export(user(5)).unwrap();
    assert!(export.write_frontier.is_empty());
    assert_eq!(export.read_capability, frontier(4));
    c.update_write_frontiers(&[(user(5), frontier(8))]);
    assert_eq!(
        since_of(&c, user(1)),
        frontier(4),
        "a dropped export's hold stays put"
    );
    c.ready().await;
    c.process().await.unwrap();
    let commands = replica.received();
    assert!(
        commands.contains(&StorageCommand::AllowCompaction(vec![(
            user(5),
            Antichain::new()
        )])),
        "{commands:?}"
    );
    replica.respond(StorageResponse::DroppedIds(BTreeSet::from([user(5)])));
    process_until(&mut c, |c| c.export(user(5)).is_err()).await;
    assert_eq!(since_of(&c, user(1)), frontier(9));
    assert_eq!(
        c.export(user(5)).unwrap_err(),
        StorageError::IdentifierMissing(user(5))
    );
}

/// Unknown ids are `IdentifierMissing` for `export` and `export_mut`.
pub async fn export_lookups_of_unknown_ids_fail<F: BackendFactory>(factory: &F) {
    let mut c = with_table(factory).await;
    assert_eq!(
        c.export(user(5)).unwrap_err(),
        StorageError::IdentifierMissing(user(5))
    );
    assert_eq!(
        c.export_mut(user(5)).unwrap_err(),
        StorageError::IdentifierMissing(user(5))
    );
    let token = c.prepare_export(user(5), user(1)).unwrap();
    c.create_exports(vec![(token, sink(user(1), 4))])
        .await
        .unwrap();
    assert_eq!(c.export_mut(user(5)).unwrap().description.from, user(1));
}
