//! The lifecycle of what replicas run: a dropped ingestion's shards are
//! finalized only once its replica confirms with `DroppedIds` (also across
//! a controller restart), compaction reaches every output and export, and
//! a collection has one writer.

use std::collections::BTreeSet;

use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_types::{
    CollectionDescription, DataSource, PersistBackend, ReadPolicy, ShardId, StorageError,
    StorageInstanceId,
};
use timely::progress::Antichain;

use super::*;
use crate::exports::sink;
use tidemark_storage_controller::{
    ClusterReplicaLocation, StatisticsUpdate, StorageCommand, StorageResponse,
};

const INSTANCE: StorageInstanceId = StorageInstanceId(1);
const INGESTION: GlobalId = GlobalId::User(10);
const PROGRESS: GlobalId = GlobalId::User(11);
const EXPORT: GlobalId = GlobalId::User(12);

/// A collection written by an ingestion besides its own.
fn source_export() -> CollectionDescription<u64> {
    CollectionDescription::new(relation(), DataSource::Other)
}

/// Ingestion `INGESTION` on `INSTANCE` with progress collection `PROGRESS`
/// and source export `export`.
fn ingestion_with_export(export: GlobalId) -> CollectionDescription<u64> {
    let mut description = ingestion(INSTANCE, Some(PROGRESS));
    if let DataSource::Ingestion(ingestion) = &mut description.data_source {
        ingestion.source_exports.insert(export, "primary".into());
    }
    description
}

/// A controller with `INSTANCE` connected to a scripted replica at
/// `address`, and the ingestion with its progress collection and source
/// export created.
async fn with_ingestion<F: BackendFactory>(
    factory: &F,
    address: &str,
) -> (TestController<F>, ScriptedReplica) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, address);
    c.create_instance(INSTANCE);
    c.connect_replica(INSTANCE, ClusterReplicaLocation::single(address));
    replica.accept().await;
    c.create_collections(vec![
        (PROGRESS, progress_collection()),
        (EXPORT, source_export()),
        (INGESTION, ingestion_with_export(EXPORT)),
    ])
    .await
    .unwrap();
    (c, replica)
}

/// The data shards of `ids`.
fn shards_of<B: PersistBackend<u64>>(c: &Controller<u64, B>, ids: &[GlobalId]) -> Vec<ShardId> {
    ids.iter()
        .map(|id| c.collection(*id).unwrap().collection_metadata.data_shard)
        .collect()
}

/// Whether every one of `shards` is still on the backend.
async fn all_exist<B: PersistBackend<u64>>(c: &Controller<u64, B>, shards: &[ShardId]) -> bool {
    let listed = c.backend().list_shards().await.unwrap();
    shards.iter().all(|shard| listed.contains(shard))
}

/// Whether none of `shards` is on the backend any more.
async fn none_exist<B: PersistBackend<u64>>(c: &Controller<u64, B>, shards: &[ShardId]) -> bool {
    let listed = c.backend().list_shards().await.unwrap();
    shards.iter().all(|shard| !listed.contains(shard))
}

/// Whether one of `commands` tells the replica that `id` is dropped.
fn told_dropped(commands: &[StorageCommand<u64>], id: GlobalId) -> bool {
    commands.iter().any(|command| {
        matches!(command, StorageCommand::AllowCompaction(frontiers)
            if frontiers.contains(&(id, Antichain::new())))
    })
}

/// A dropped ingestion, its source export and its progress collection
/// keep their shards (durably recorded as awaiting) while the replica
/// withholds `DroppedIds`; the confirmation finalizes all three.
pub async fn dropped_ingestion_is_finalized_only_after_dropped_ids<F: BackendFactory>(factory: &F) {
    let (mut c, mut replica) = with_ingestion(factory, "withholding").await;
    let shards = shards_of(&c, &[INGESTION, EXPORT, PROGRESS]);
    c.drop_sources(vec![INGESTION, EXPORT, PROGRESS]).unwrap();
    c.ready().await;
    c.process().await.unwrap();
    c.flush().await;
    assert!(told_dropped(&replica.received(), INGESTION));
    assert!(c.collection(INGESTION).is_err());
    assert!(c.is_awaiting_drop(INGESTION));
    assert!(
        all_exist(&c, &shards).await,
        "no shard goes before DroppedIds"
    );
    let (record, metadata) = durable_state(factory).await;
    assert!(!metadata.collections.contains_key(&INGESTION));
    assert_eq!(
        crate::metadata::awaiting_drop(&record)[&INGESTION],
        BTreeSet::from([INGESTION, EXPORT, PROGRESS])
    );

    replica.respond(StorageResponse::DroppedIds(BTreeSet::from([INGESTION])));
    process_until(&mut c, |c| !c.is_awaiting_drop(INGESTION)).await;
    c.flush().await;
    assert!(none_exist(&c, &shards).await);
    let (record, metadata) = durable_state(factory).await;
    assert!(crate::metadata::awaiting_drop(&record).is_empty());
    assert!(metadata.finalizing.is_empty());
}

/// A `DroppedIds` for another id does not release the ingestion's shards.
pub async fn dropped_ids_of_another_id_finalizes_nothing<F: BackendFactory>(factory: &F) {
    let (mut c, replica) = with_ingestion(factory, "other-id").await;
    let shards = shards_of(&c, &[INGESTION]);
    c.drop_sources(vec![INGESTION]).unwrap();
    replica.respond(StorageResponse::DroppedIds(BTreeSet::from([user(99)])));
    // Responses are handled in order: once the marker is in, so is the
    // `DroppedIds` before it.
    replica.respond(StorageResponse::StatusUpdates(vec![(
        user(99),
        "marker".into(),
    )]));
    process_until(&mut c, |c| c.status(user(99)) == Some("marker")).await;
    c.flush().await;
    assert!(c.is_awaiting_drop(INGESTION));
    assert!(all_exist(&c, &shards).await);
}

/// A controller restarted between the drop and `DroppedIds` asks the
/// replica again (`AllowCompaction(id, [])` at connect), keeps the shards
/// through `reconcile_state`, and finalizes them when the replica answers.
pub async fn restart_between_drop_and_dropped_ids_asks_again<F: BackendFactory>(factory: &F) {
    let (mut a, _replica) = with_ingestion(factory, "before-restart").await;
    let shards = shards_of(&a, &[INGESTION, PROGRESS]);
    a.drop_sources(vec![INGESTION, PROGRESS]).unwrap();
    a.flush().await;
    drop(a);

    let (mut b, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "after-restart");
    b.create_instance(INSTANCE);
    b.create_collections(vec![(EXPORT, source_export())])
        .await
        .unwrap();
    b.try_reconcile_state().await.unwrap();
    assert!(b.is_awaiting_drop(INGESTION));
    assert!(
        all_exist(&b, &shards).await,
        "reconcile keeps awaiting shards"
    );
    b.connect_replica(INSTANCE, ClusterReplicaLocation::single("after-restart"));
    replica.accept().await;
    let commands = replica.received();
    assert!(told_dropped(&commands, INGESTION), "{commands:?}");
    assert!(
        !commands
            .iter()
            .any(|command| matches!(command, StorageCommand::CreateSources(_))),
        "{commands:?}"
    );
    replica.respond(StorageResponse::DroppedIds(BTreeSet::from([INGESTION])));
    process_until(&mut b, |c| !c.is_awaiting_drop(INGESTION)).await;
    b.flush().await;
    assert!(none_exist(&b, &shards).await);
}

/// A replica that reconnects before confirming is asked again.
pub async fn reconnected_replica_is_asked_to_confirm_a_drop<F: BackendFactory>(factory: &F) {
    let (mut c, mut replica) = with_ingestion(factory, "reconnecting").await;
    c.drop_sources(vec![INGESTION]).unwrap();
    c.ready().await;
    c.process().await.unwrap();
    c.connect_replica(INSTANCE, ClusterReplicaLocation::single("reconnecting"));
    replica.accept().await;
    let replayed = replica.received();
    assert!(told_dropped(&replayed, INGESTION), "{replayed:?}");
}

/// Dropping the instance finalizes what awaited its replica.
pub async fn dropping_the_instance_finalizes_awaiting_shards<F: BackendFactory>(factory: &F) {
    let (mut c, _replica) = with_ingestion(factory, "instance-goes").await;
    let shards = shards_of(&c, &[INGESTION, EXPORT]);
    c.drop_sources(vec![INGESTION, EXPORT]).unwrap();
    c.flush().await;
    assert!(all_exist(&c, &shards).await);
    c.drop_instance(INSTANCE);
    assert!(!c.is_awaiting_drop(INGESTION));
    c.flush().await;
    assert!(none_exist(&c, &shards).await);
}

/// A dropped sink's hold on its source goes when its instance is dropped.
pub async fn dropping_the_instance_releases_dropped_exports<F: BackendFactory>(factory: &F) {
    let (mut c, _replica) = with_ingestion(factory, "sink-instance").await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(4)))]);
    let token = c.prepare_export(user(5), user(1)).unwrap();
    c.create_exports(vec![(token, sink(user(1), 4))])
        .await
        .unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(9)))]);
    c.drop_sinks(vec![user(5)]).unwrap();
    assert!(c.is_export_dropping(user(5)));
    assert_eq!(since_of(&c, user(1)), frontier(4));
    c.drop_instance(INSTANCE);
    assert!(!c.is_export_dropping(user(5)));
    assert_eq!(since_of(&c, user(1)), frontier(9));
}

/// A since change of a source export or of the progress collection is
/// sent to the ingestion's instance, as is the ingestion's own.
pub async fn allow_compaction_reaches_source_exports_and_progress<F: BackendFactory>(factory: &F) {
    let (mut c, mut replica) = with_ingestion(factory, "compaction").await;
    c.update_write_frontiers(&[
        (INGESTION, frontier(6)),
        (EXPORT, frontier(6)),
        (PROGRESS, frontier(6)),
    ]);
    c.set_read_policy(vec![
        (INGESTION, ReadPolicy::ValidFrom(frontier(3))),
        (EXPORT, ReadPolicy::ValidFrom(frontier(3))),
        (PROGRESS, ReadPolicy::ValidFrom(frontier(3))),
    ]);
    c.ready().await;
    c.process().await.unwrap();
    let allowed: Vec<(GlobalId, Antichain<u64>)> = replica
        .received()
        .into_iter()
        .filter_map(|command| match command {
            StorageCommand::AllowCompaction(frontiers) => Some(frontiers),
            _ => None,
        })
        .flatten()
        .collect();
    for id in [INGESTION, EXPORT, PROGRESS] {
        assert!(allowed.contains(&(id, frontier(3))), "{id}: {allowed:?}");
    }
}

/// An export's advancing hold is sent to its instance as `AllowCompaction`.
pub async fn allow_compaction_reaches_exports<F: BackendFactory>(factory: &F) {
    let (mut c, mut replica) = with_ingestion(factory, "export-compaction").await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let token = c.prepare_export(user(5), user(1)).unwrap();
    c.create_exports(vec![(token, sink(user(1), 0))])
        .await
        .unwrap();
    c.update_write_frontiers(&[(user(5), frontier(7))]);
    c.ready().await;
    c.process().await.unwrap();
    let commands = replica.received();
    assert!(
        commands.contains(&StorageCommand::AllowCompaction(vec![(
            user(5),
            frontier(6)
        )])),
        "{commands:?}"
    );
}

/// `CreateSources` names the progress collection's shard among the
/// ingestion's data shards.
pub async fn ingestion_is_sent_with_its_progress_shard<F: BackendFactory>(factory: &F) {
    let (c, mut replica) = with_ingestion(factory, "progress-shard").await;
    let progress_shard = shards_of(&c, &[PROGRESS])[0];
    let sources: Vec<_> = replica
        .received()
        .into_iter()
        .filter_map(|command| match command {
            StorageCommand::CreateSources(sources) => Some(sources),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(sources.len(), 1);
    let shards = &sources[0].data_shards;
    assert!(shards.contains(&(PROGRESS, progress_shard)), "{shards:?}");
    assert_eq!(
        shards.len(),
        3,
        "itself, its export, its progress: {shards:?}"
    );
}

/// A table named as an ingestion's source export is refused, naming both.
pub async fn table_as_source_export_is_refused<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_instance(INSTANCE);
    let err = c
        .create_collections(vec![
            (PROGRESS, progress_collection()),
            (user(1), table()),
            (INGESTION, ingestion_with_export(user(1))),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StorageError::TableWrittenByIngestion {
            table: user(1),
            ingestion: INGESTION,
        }
    );
    assert!(err.to_string().contains("u1") && err.to_string().contains("u10"));
    assert!(c.collection(INGESTION).is_err() && c.collection(user(1)).is_err());
}

/// A collection that is already another ingestion's source export is
/// refused as a new ingestion's export.
pub async fn source_export_of_another_ingestion_is_source_id_reused<F: BackendFactory>(
    factory: &F,
) {
    let (mut c, _replica) = with_ingestion(factory, "two-writers").await;
    c.create_collections(vec![(user(20), progress_collection())])
        .await
        .unwrap();
    let mut second = ingestion(INSTANCE, Some(user(20)));
    if let DataSource::Ingestion(ingestion) = &mut second.data_source {
        ingestion.source_exports.insert(EXPORT, "primary".into());
    }
    assert_eq!(
        c.create_collections(vec![(user(21), second)])
            .await
            .unwrap_err(),
        StorageError::SourceIdReused(EXPORT)
    );
    assert!(c.collection(user(21)).is_err());
}

/// Statistics of one process of a replica.
fn statistics(messages: u64) -> StatisticsUpdate {
    StatisticsUpdate {
        messages,
        updates: messages * 10,
        bytes: messages * 100,
        frontier_lag: messages,
    }
}

/// Statistics are kept per id and replica process, the latest replacing
/// the previous, listed by `all_statistics`, and cleared when the id is
/// dropped; reports for unknown ids are ignored.
pub async fn statistics_are_queryable_per_process_until_dropped<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut first = ScriptedReplica::serve(&transport, "stats-p0");
    let mut second = ScriptedReplica::serve(&transport, "stats-p1");
    c.create_instance(INSTANCE);
    c.connect_replica(
        INSTANCE,
        ClusterReplicaLocation {
            addresses: vec!["stats-p0".into(), "stats-p1".into()],
        },
    );
    first.accept().await;
    second.accept().await;
    c.create_collections(vec![(INGESTION, ingestion(INSTANCE, None))])
        .await
        .unwrap();
    first.respond(StorageResponse::StatisticsUpdates(vec![
        (INGESTION, statistics(1)),
        (user(99), statistics(9)),
    ]));
    first.respond(StorageResponse::StatisticsUpdates(vec![(
        INGESTION,
        statistics(2),
    )]));
    process_until(&mut c, |c| c.statistics(INGESTION) == Some(&statistics(2))).await;
    second.respond(StorageResponse::StatisticsUpdates(vec![(
        INGESTION,
        statistics(5),
    )]));
    process_until(&mut c, |c| c.statistics(INGESTION) == Some(&statistics(5))).await;
    let per_process: Vec<_> = c
        .statistics_per_process(INGESTION)
        .map(|(process, update)| (process, *update))
        .collect();
    assert_eq!(per_process, vec![(0, statistics(2)), (1, statistics(5))]);
    let all: Vec<_> = c
        .all_statistics()
        .map(|(id, process, update)| (id, process, *update))
        .collect();
    assert_eq!(
        all,
        vec![(INGESTION, 0, statistics(2)), (INGESTION, 1, statistics(5))]
    );
    assert!(c.statistics(user(99)).is_none());
    c.drop_sources(vec![INGESTION]).unwrap();
    assert!(c.statistics(INGESTION).is_none());
    assert_eq!(c.all_statistics().count(), 0);
}
