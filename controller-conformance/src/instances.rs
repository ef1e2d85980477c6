//! Instances and replicas: command history, epochs, response filtering.

use std::time::Duration;

use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_types::{StorageInstanceId, StorageParameters};

use super::*;
use tidemark_storage_controller::{
    ClusterReplicaLocation, StatisticsUpdate, StorageCommand, StorageResponse, TimelyConfig,
};

const INSTANCE: StorageInstanceId = StorageInstanceId(1);

fn location(address: &str) -> ClusterReplicaLocation {
    ClusterReplicaLocation::single(address)
}

/// Every (re)connect replays the compacted history under a new epoch.
pub async fn connect_replays_the_command_history_with_a_new_epoch<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "history");
    c.create_instance(INSTANCE);
    c.create_collections(vec![(user(2), ingestion(INSTANCE, None))])
        .await
        .unwrap();
    c.initialization_complete();
    c.connect_replica(INSTANCE, location("history"));
    replica.accept().await;
    let first = replica.received();
    assert_eq!(
        first[0],
        StorageCommand::CreateTimely {
            config: TimelyConfig {
                process: 0,
                addresses: vec!["history".to_string()],
            },
            epoch: 1,
        }
    );
    assert!(matches!(first[1], StorageCommand::UpdateConfiguration(_)));
    assert!(
        matches!(&first[2], StorageCommand::CreateSources(s) if s.len() == 1 && s[0].id == user(2))
    );
    assert_eq!(first.last(), Some(&StorageCommand::InitializationComplete));
    assert_eq!(first.len(), 4, "{first:?}");

    c.connect_replica(INSTANCE, location("history"));
    let previous = replica.accept().await.expect("a previous session");
    assert!(previous.commands.is_closed(), "the old replica is severed");
    let second = replica.received();
    assert!(matches!(
        second[0],
        StorageCommand::CreateTimely { epoch: 2, .. }
    ));
    assert_eq!(second.len(), first.len());
    assert_eq!(second[1..], first[1..]);
}

/// `InitializationComplete` is forwarded once, however often it is called.
pub async fn initialization_complete_is_sent_once<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "init");
    c.create_instance(INSTANCE);
    c.connect_replica(INSTANCE, location("init"));
    replica.accept().await;
    replica.received();
    c.initialization_complete();
    c.initialization_complete();
    assert_eq!(
        replica.received(),
        vec![StorageCommand::InitializationComplete]
    );
}

/// Configuration updates merge and reach every instance in full.
pub async fn configuration_is_merged_and_forwarded<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "config");
    c.create_instance(INSTANCE);
    c.connect_replica(INSTANCE, location("config"));
    replica.accept().await;
    replica.received();
    c.update_configuration(StorageParameters {
        compaction_min_updates: Some(5),
        ..Default::default()
    });
    c.update_configuration(StorageParameters {
        statistics_interval: Some(Duration::from_secs(9)),
        ..Default::default()
    });
    let expected = StorageParameters {
        compaction_min_updates: Some(5),
        statistics_interval: Some(Duration::from_secs(9)),
        ..Default::default()
    };
    assert_eq!(c.parameters(), &expected);
    let commands = replica.received();
    assert_eq!(
        commands.last(),
        Some(&StorageCommand::UpdateConfiguration(expected))
    );
}

/// A replica's upper reaches the write frontier only when it advances.
pub async fn uppers_are_forwarded_only_when_they_advance<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "uppers");
    c.create_instance(INSTANCE);
    c.create_collections(vec![(user(2), ingestion(INSTANCE, None))])
        .await
        .unwrap();
    c.connect_replica(INSTANCE, location("uppers"));
    replica.accept().await;
    replica.respond(StorageResponse::FrontierUppers(vec![(
        user(2),
        frontier(8),
    )]));
    process_until(&mut c, |c| {
        c.collection(user(2)).unwrap().write_frontier == frontier(8)
    })
    .await;
    // A regression and a repeat are filtered; the later advance lands.
    replica.respond(StorageResponse::FrontierUppers(vec![(
        user(2),
        frontier(3),
    )]));
    replica.respond(StorageResponse::FrontierUppers(vec![(
        user(2),
        frontier(8),
    )]));
    replica.respond(StorageResponse::FrontierUppers(vec![(
        user(2),
        frontier(12),
    )]));
    process_until(&mut c, |c| {
        c.collection(user(2)).unwrap().write_frontier == frontier(12)
    })
    .await;
    // Uppers of unknown ids are ignored, not a panic.
    replica.respond(StorageResponse::FrontierUppers(vec![(
        user(77),
        frontier(3),
    )]));
    c.ready().await;
    c.process().await.unwrap();
}

/// A response of a replica that was replaced before the response was
/// processed is ignored (its epoch is stale).
pub async fn responses_of_a_severed_replica_are_ignored<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "stale");
    c.create_instance(INSTANCE);
    c.create_collections(vec![(user(2), ingestion(INSTANCE, None))])
        .await
        .unwrap();
    c.connect_replica(INSTANCE, location("stale"));
    replica.accept().await;
    replica.respond(StorageResponse::FrontierUppers(vec![(
        user(2),
        frontier(50),
    )]));
    // The response is received (stored by ready) under epoch 1 ...
    c.ready().await;
    // ... and the replica replaced before it is processed.
    c.connect_replica(INSTANCE, location("stale"));
    let _old = replica.accept().await.expect("the old session");
    c.process().await.unwrap();
    assert_eq!(c.collection(user(2)).unwrap().write_frontier, frontier(0));
    replica.respond(StorageResponse::FrontierUppers(vec![(
        user(2),
        frontier(6),
    )]));
    process_until(&mut c, |c| {
        c.collection(user(2)).unwrap().write_frontier == frontier(6)
    })
    .await;
}

/// A two-process replica: an upper counts once both processes report it,
/// at the least of the two.
pub async fn multi_process_replica_reports_the_meet<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut first = ScriptedReplica::serve(&transport, "p0");
    let mut second = ScriptedReplica::serve(&transport, "p1");
    c.create_instance(INSTANCE);
    c.create_collections(vec![(user(2), ingestion(INSTANCE, None))])
        .await
        .unwrap();
    c.connect_replica(
        INSTANCE,
        ClusterReplicaLocation {
            addresses: vec!["p0".into(), "p1".into()],
        },
    );
    first.accept().await;
    second.accept().await;
    let commands_0 = first.received();
    let commands_1 = second.received();
    assert!(
        matches!(&commands_0[0], StorageCommand::CreateTimely { config, .. } if config.process == 0)
    );
    assert!(
        matches!(&commands_1[0], StorageCommand::CreateTimely { config, .. } if config.process == 1)
    );
    assert_eq!(commands_0[1..], commands_1[1..]);
    first.respond(StorageResponse::FrontierUppers(vec![(
        user(2),
        frontier(9),
    )]));
    c.ready().await;
    c.process().await.unwrap();
    assert_eq!(c.collection(user(2)).unwrap().write_frontier, frontier(0));
    second.respond(StorageResponse::FrontierUppers(vec![(
        user(2),
        frontier(5),
    )]));
    process_until(&mut c, |c| {
        c.collection(user(2)).unwrap().write_frontier == frontier(5)
    })
    .await;
    second.respond(StorageResponse::FrontierUppers(vec![(
        user(2),
        frontier(11),
    )]));
    process_until(&mut c, |c| {
        c.collection(user(2)).unwrap().write_frontier == frontier(9)
    })
    .await;
}

/// Statistics and statuses are stored per id, latest wins.
pub async fn statistics_and_statuses_are_stored<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "stats");
    c.create_instance(INSTANCE);
    c.connect_replica(INSTANCE, location("stats"));
    replica.accept().await;
    c.create_collections(vec![(user(2), ingestion(INSTANCE, None))])
        .await
        .unwrap();
    let stats = StatisticsUpdate {
        messages: 3,
        updates: 30,
        bytes: 300,
        frontier_lag: 4,
    };
    replica.respond(StorageResponse::StatisticsUpdates(vec![(user(2), stats)]));
    replica.respond(StorageResponse::StatusUpdates(vec![(
        user(2),
        "stalled: disk".into(),
    )]));
    process_until(&mut c, |c| {
        c.status(user(2)).is_some() && c.statistics(user(2)).is_some()
    })
    .await;
    assert_eq!(c.statistics(user(2)), Some(&stats));
    assert_eq!(c.status(user(2)), Some("stalled: disk"));
}

/// An instance created after initialization replays
/// `InitializationComplete` and the current configuration.
pub async fn instance_created_late_is_initialized_on_connect<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "late");
    c.update_configuration(StorageParameters {
        physical_compaction: Some(false),
        ..Default::default()
    });
    c.initialization_complete();
    c.create_instance(StorageInstanceId(3));
    c.connect_replica(StorageInstanceId(3), location("late"));
    replica.accept().await;
    let commands = replica.received();
    assert_eq!(
        commands[1],
        StorageCommand::UpdateConfiguration(StorageParameters {
            physical_compaction: Some(false),
            ..Default::default()
        })
    );
    assert_eq!(
        commands.last(),
        Some(&StorageCommand::InitializationComplete)
    );
    c.drop_instance(StorageInstanceId(3));
    assert!(replica.is_severed());
}

/// `CreateSources` carries the meet of the outputs' uppers.
pub async fn ingestion_is_sent_with_its_resume_upper<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "resume");
    c.create_instance(INSTANCE);
    c.connect_replica(INSTANCE, location("resume"));
    replica.accept().await;
    let written_elsewhere = CollectionDescription::new(relation(), DataSource::Other);
    c.create_collections(vec![(user(1), written_elsewhere)])
        .await
        .unwrap();
    c.update_write_frontiers(&[(user(1), frontier(7))]);
    let mut description = ingestion(INSTANCE, None);
    if let DataSource::Ingestion(ingestion) = &mut description.data_source {
        ingestion
            .source_exports
            .insert(user(1), "counter".to_owned());
    }
    c.create_collections(vec![(user(2), description)])
        .await
        .unwrap();
    let commands = replica.received();
    let sources: Vec<_> = commands
        .iter()
        .filter_map(|command| match command {
            StorageCommand::CreateSources(sources) => Some(sources.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(sources.len(), 1, "{commands:?}");
    // u2 is at [0], u1 at [7]: resume at the meet.
    assert_eq!(sources[0].resume_upper, frontier(0));
    assert_eq!(sources[0].data_shards.len(), 2);
}

/// Connecting to an address nobody serves is not fatal: commands go
/// nowhere until a later connect reaches a replica, which gets the full
/// history.
pub async fn connect_to_unreachable_replica_is_not_fatal<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    c.create_instance(INSTANCE);
    c.connect_replica(INSTANCE, location("nobody-here"));
    c.create_collections(vec![(user(2), ingestion(INSTANCE, None))])
        .await
        .unwrap();
    c.initialization_complete();
    let mut replica = ScriptedReplica::serve(&transport, "nobody-here");
    c.connect_replica(INSTANCE, location("nobody-here"));
    replica.accept().await;
    let commands = replica.received();
    assert!(matches!(
        commands[0],
        StorageCommand::CreateTimely { epoch: 2, .. }
    ));
    assert!(
        commands
            .iter()
            .any(|command| matches!(command, StorageCommand::CreateSources(_)))
    );
    assert_eq!(
        commands.last(),
        Some(&StorageCommand::InitializationComplete)
    );
}

/// `ready` can be cancelled at any point without losing a response.
pub async fn ready_is_cancellation_safe<F: BackendFactory>(factory: &F) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, "cancel");
    c.create_instance(INSTANCE);
    c.create_collections(vec![(user(2), ingestion(INSTANCE, None))])
        .await
        .unwrap();
    c.connect_replica(INSTANCE, location("cancel"));
    replica.accept().await;
    for upper in 1..=20u64 {
        replica.respond(StorageResponse::FrontierUppers(vec![(
            user(2),
            frontier(upper),
        )]));
        // Poll ready once and drop it, whether or not it finished.
        let _ = tokio::time::timeout(Duration::ZERO, c.ready()).await;
        tokio::task::yield_now().await;
        let _ = tokio::time::timeout(Duration::ZERO, c.ready()).await;
    }
    process_until(&mut c, |c| {
        c.collection(user(2)).unwrap().write_frontier == frontier(20)
    })
    .await;
}
