//! The controller and fake replicas over TCP on loopback: the handshake and
//! first command, the replayed history, frontier reports, the meet over a
//! two-process replica, and reconnecting on its own when a connection is
//! lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_controller::protocol::{
    ClusterReplicaLocation, StorageCommand, StorageResponse, TimelyConfig,
};
use tidemark_storage_controller::tcp::{TcpConfig, TcpReplicaListener, TcpTransport};
use tidemark_storage_controller::wire::{self, WireError};
use tidemark_storage_controller::{
    Controller, ControllerConfig, ReconnectPolicy, ReplicaSession, StorageController,
};
use tidemark_storage_types::{
    CollectionDescription, DataSource, GlobalId, IngestionDescription, LoadGenerator, RelationDesc,
    ScalarType, SourceConnection, StorageInstanceId,
};
use timely::progress::Antichain;

const INSTANCE: StorageInstanceId = StorageInstanceId(1);

type TestController = Controller<u64, MemoryBackend>;

/// Fails the test instead of hanging (a guard, not a timing assertion).
async fn within_a_minute<R>(future: impl Future<Output = R>, what: &str) -> R {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
}

/// A controller on a memory store of its own, reaching replicas over TCP,
/// reconnecting quickly.
async fn controller(name: &str) -> TestController {
    let config = ControllerConfig {
        replica_reconnect: ReconnectPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
        },
        ..ControllerConfig::default()
    };
    let transport = TcpTransport::<u64>::new(TcpConfig::default());
    Controller::with_transport(
        MemoryBackend::open(&format!("tcp-test-{name}")),
        config,
        transport as Arc<_>,
    )
    .await
    .expect("controller starts")
}

async fn listener() -> TcpReplicaListener<u64> {
    TcpReplicaListener::bind("127.0.0.1:0")
        .await
        .expect("loopback binds")
}

fn address(listener: &TcpReplicaListener<u64>) -> String {
    listener.local_addr().to_string()
}

fn user(n: u64) -> GlobalId {
    GlobalId::User(n)
}

fn frontier(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

fn ingestion() -> CollectionDescription<u64> {
    CollectionDescription::new(
        RelationDesc::empty().with_column("n", ScalarType::Int64.nullable(false)),
        DataSource::Ingestion(IngestionDescription {
            instance_id: INSTANCE,
            connection: SourceConnection::LoadGenerator {
                generator: LoadGenerator::Counter {
                    max_cardinality: None,
                },
                tick: Duration::from_millis(100),
            },
            remap_collection_id: None,
            source_exports: Default::default(),
        }),
    )
}

/// Runs the controller's `ready`/`process` until `future` completes.
async fn drive_until<F: Future>(controller: &mut TestController, future: F) -> F::Output {
    let drive = async {
        tokio::pin!(future);
        loop {
            tokio::select! {
                output = &mut future => return output,
                () = controller.ready() => controller.process().await.expect("process succeeds"),
            }
        }
    };
    within_a_minute(drive, "the controller never got there").await
}

/// Runs `ready`/`process` until `done` holds.
async fn process_until(controller: &mut TestController, done: impl Fn(&TestController) -> bool) {
    let drive = async {
        while !done(controller) {
            controller.ready().await;
            controller.process().await.expect("process succeeds");
        }
    };
    within_a_minute(drive, "the controller never reached the expected state").await;
}

/// Accepts the next session while driving the controller (which may have
/// to reconnect first).
async fn accept(
    controller: &mut TestController,
    listener: &mut TcpReplicaListener<u64>,
) -> ReplicaSession<u64> {
    drive_until(controller, listener.accept())
        .await
        .expect("listener alive")
}

/// The commands a session receives up to and including
/// `InitializationComplete`.
async fn initial_commands(session: &mut ReplicaSession<u64>) -> Vec<StorageCommand<u64>> {
    let receive = async {
        let mut commands = Vec::new();
        while let Some(command) = session.commands.recv().await {
            let last = command == StorageCommand::InitializationComplete;
            commands.push(command);
            if last {
                return commands;
            }
        }
        panic!("the connection closed after {commands:?}");
    };
    within_a_minute(receive, "initialization never completed").await
}

fn epoch_of(command: &StorageCommand<u64>) -> u64 {
    match command {
        StorageCommand::CreateTimely { epoch, .. } => *epoch,
        other => panic!("the first command is not CreateTimely: {other:?}"),
    }
}

fn source_ids(commands: &[StorageCommand<u64>]) -> Vec<GlobalId> {
    commands
        .iter()
        .filter_map(|command| match command {
            StorageCommand::CreateSources(sources) => Some(sources.iter().map(|s| s.id)),
            _ => None,
        })
        .flatten()
        .collect()
}

fn upper(id: GlobalId, time: u64) -> StorageResponse<u64> {
    StorageResponse::FrontierUppers(vec![(id, frontier(time))])
}

/// Sends `marker` as a status after whatever the session sent before, and
/// processes until the controller has it: everything sent before on the
/// same connection has been processed too.
async fn sync(controller: &mut TestController, session: &ReplicaSession<u64>, marker: &str) {
    let status = StorageResponse::StatusUpdates(vec![(user(99), marker.to_string())]);
    session.responses.send(status).expect("connection open");
    process_until(controller, |c| c.status(user(99)) == Some(marker)).await;
}

fn write_frontier(controller: &TestController, id: GlobalId) -> Antichain<u64> {
    controller.collection(id).unwrap().write_frontier.clone()
}

#[tokio::test]
async fn a_replica_over_tcp_gets_the_history_reports_uppers_and_is_reconnected_when_lost() {
    let mut c = controller("history").await;
    let mut replica = listener().await;
    let location = ClusterReplicaLocation::single(address(&replica));
    c.create_instance(INSTANCE);
    c.create_collections(vec![(user(2), ingestion())])
        .await
        .unwrap();
    c.initialization_complete();
    c.connect_replica(INSTANCE, location.clone());

    let mut first = accept(&mut c, &mut replica).await;
    let commands = initial_commands(&mut first).await;
    assert_eq!(
        commands[0],
        StorageCommand::CreateTimely {
            config: TimelyConfig {
                process: 0,
                addresses: location.addresses.clone(),
            },
            epoch: 1,
        }
    );
    assert!(matches!(
        commands[1],
        StorageCommand::UpdateConfiguration(_)
    ));
    assert_eq!(source_ids(&commands), vec![user(2)]);
    assert_eq!(commands.len(), 4, "{commands:?}");

    // Commands after the replay travel on the same connection.
    c.create_collections(vec![(user(3), ingestion())])
        .await
        .unwrap();
    let created = within_a_minute(first.commands.recv(), "no command").await;
    assert!(
        matches!(&created, Some(StorageCommand::CreateSources(s)) if s[0].id == user(3)),
        "{created:?}"
    );

    first.responses.send(upper(user(2), 8)).unwrap();
    process_until(&mut c, |c| write_frontier(c, user(2)) == frontier(8)).await;

    // The replica goes away: the controller reconnects on its own, with a
    // new epoch and the whole current history.
    drop(first);
    let mut second = accept(&mut c, &mut replica).await;
    let replayed = initial_commands(&mut second).await;
    assert!(epoch_of(&replayed[0]) > 1, "{:?}", replayed[0]);
    assert_eq!(source_ids(&replayed), vec![user(2), user(3)]);
    assert_eq!(replayed.len(), 4, "{replayed:?}");

    // The new connection's uppers count.
    second.responses.send(upper(user(3), 5)).unwrap();
    second.responses.send(upper(user(2), 12)).unwrap();
    process_until(&mut c, |c| {
        write_frontier(c, user(2)) == frontier(12) && write_frontier(c, user(3)) == frontier(5)
    })
    .await;
}

#[tokio::test]
async fn a_replica_not_listening_yet_is_connected_once_it_is() {
    let mut c = controller("not-yet").await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    c.create_instance(INSTANCE);
    c.initialization_complete();
    c.connect_replica(INSTANCE, ClusterReplicaLocation::single(address.clone()));
    // With no collections, the only messages are the replica's: the refused
    // connection's loss, then its reconnect coming due.
    for _ in 0..2 {
        within_a_minute(c.ready(), "the loss was not noticed").await;
        c.process().await.unwrap();
    }
    let mut replica = TcpReplicaListener::<u64>::bind(address.as_str())
        .await
        .expect("the probed port is free again");
    let mut session = accept(&mut c, &mut replica).await;
    let commands = initial_commands(&mut session).await;
    assert!(epoch_of(&commands[0]) >= 2, "{:?}", commands[0]);
    assert_eq!(commands.len(), 3, "{commands:?}");
}

#[tokio::test]
async fn a_two_process_replica_reports_the_meet_and_reconnects_as_one() {
    let mut c = controller("two-processes").await;
    let mut replicas = [listener().await, listener().await];
    let location = ClusterReplicaLocation {
        addresses: replicas.iter().map(address).collect(),
    };
    c.create_instance(INSTANCE);
    c.create_collections(vec![(user(2), ingestion())])
        .await
        .unwrap();
    c.initialization_complete();
    c.connect_replica(INSTANCE, location.clone());

    let mut p0 = accept(&mut c, &mut replicas[0]).await;
    let mut p1 = accept(&mut c, &mut replicas[1]).await;
    let commands_0 = initial_commands(&mut p0).await;
    let commands_1 = initial_commands(&mut p1).await;
    for (process, commands) in [commands_0.clone(), commands_1.clone()].iter().enumerate() {
        assert_eq!(
            commands[0],
            StorageCommand::CreateTimely {
                config: TimelyConfig {
                    process,
                    addresses: location.addresses.clone(),
                },
                epoch: 1,
            }
        );
    }
    assert_eq!(commands_0[1..], commands_1[1..]);

    // One process alone moves nothing; both together move it to the meet.
    p0.responses.send(upper(user(2), 10)).unwrap();
    sync(&mut c, &p0, "p0 at 10").await;
    assert_eq!(write_frontier(&c, user(2)), frontier(0));
    p1.responses.send(upper(user(2), 6)).unwrap();
    process_until(&mut c, |c| write_frontier(c, user(2)) != frontier(0)).await;
    assert_eq!(write_frontier(&c, user(2)), frontier(6));

    // Process 1 reports more (the meet is now process 0's 10), then
    // process 0 is lost: the whole replica is reconnected under a new epoch
    // and the old reports do not count.
    p1.responses.send(upper(user(2), 30)).unwrap();
    process_until(&mut c, |c| write_frontier(c, user(2)) != frontier(6)).await;
    assert_eq!(write_frontier(&c, user(2)), frontier(10));
    drop(p0);
    let mut new_p0 = accept(&mut c, &mut replicas[0]).await;
    let mut new_p1 = accept(&mut c, &mut replicas[1]).await;
    let replay_0 = initial_commands(&mut new_p0).await;
    let replay_1 = initial_commands(&mut new_p1).await;
    let epoch = epoch_of(&replay_0[0]);
    assert!(epoch > 1, "{:?}", replay_0[0]);
    assert_eq!(epoch_of(&replay_1[0]), epoch);
    assert_eq!(replay_0[1..], commands_0[1..]);
    assert_eq!(replay_1[1..], commands_1[1..]);
    assert_eq!(
        within_a_minute(p1.commands.recv(), "old process 1 not severed").await,
        None,
        "the old process 1 is severed"
    );

    // New process 0 alone moves nothing: the old process 1's report of 30
    // is forgotten (counting it would make the meet 20).
    new_p0.responses.send(upper(user(2), 20)).unwrap();
    sync(&mut c, &new_p0, "new p0 at 20").await;
    assert_eq!(write_frontier(&c, user(2)), frontier(10));
    new_p1.responses.send(upper(user(2), 15)).unwrap();
    process_until(&mut c, |c| write_frontier(c, user(2)) != frontier(10)).await;
    assert_eq!(write_frontier(&c, user(2)), frontier(15));
}

#[tokio::test]
async fn an_in_process_replica_that_drops_its_session_is_reconnected_too() {
    use tidemark_storage_controller::InProcessTransport;

    let transport = InProcessTransport::<u64>::new();
    let config = ControllerConfig {
        replica_reconnect: ReconnectPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
        },
        ..ControllerConfig::default()
    };
    let mut c = Controller::with_transport(
        MemoryBackend::open("tcp-test-in-process"),
        config,
        Arc::clone(&transport) as Arc<_>,
    )
    .await
    .expect("controller starts");
    let mut replica = transport.listen("in-process");
    c.create_instance(INSTANCE);
    c.create_collections(vec![(user(2), ingestion())])
        .await
        .unwrap();
    c.initialization_complete();
    c.connect_replica(INSTANCE, ClusterReplicaLocation::single("in-process"));
    let mut first = replica.try_accept().expect("connect hands over a session");
    let commands = initial_commands(&mut first).await;
    assert_eq!(epoch_of(&commands[0]), 1);
    drop(first);
    let mut second = drive_until(&mut c, replica.accept())
        .await
        .expect("transport alive");
    let replayed = initial_commands(&mut second).await;
    assert_eq!(epoch_of(&replayed[0]), 2);
    assert_eq!(replayed[1..], commands[1..]);
}

/// A fake replica on a raw socket: accepts one connection, exchanges
/// handshakes (sending `version`), and returns the stream with the
/// controller's handshake verdict.
async fn raw_accept(
    server: &tokio::net::TcpListener,
    version: u32,
) -> (tokio::net::TcpStream, Result<(), WireError>) {
    use tokio::io::AsyncWriteExt;

    let (mut stream, _) = within_a_minute(server.accept(), "no connection")
        .await
        .expect("accept");
    let mut ours = wire::MAGIC.to_vec();
    ours.extend_from_slice(&version.to_be_bytes());
    stream.write_all(&ours).await.unwrap();
    let verdict = wire::read_handshake(&mut stream).await;
    (stream, verdict)
}

#[tokio::test]
async fn a_response_cut_mid_frame_ends_the_connection_and_the_controller_reconnects() {
    use tokio::io::AsyncWriteExt;

    let mut c = controller("cut-mid-frame").await;
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = server.local_addr().unwrap().to_string();
    c.create_instance(INSTANCE);
    c.create_collections(vec![(user(2), ingestion())])
        .await
        .unwrap();
    c.connect_replica(INSTANCE, ClusterReplicaLocation::single(address));

    let (mut stream, verdict) = raw_accept(&server, wire::PROTOCOL_VERSION).await;
    verdict.expect("the controller speaks this version");
    let first: StorageCommand<u64> = wire::read_frame(&mut stream, wire::DEFAULT_MAX_FRAME_BYTES)
        .await
        .unwrap()
        .expect("a first command");
    assert_eq!(epoch_of(&first), 1);
    // Half of an upper report, then the connection is cut.
    let frame = wire::encode_frame(&upper(user(2), 9), wire::DEFAULT_MAX_FRAME_BYTES).unwrap();
    stream.write_all(&frame[..frame.len() / 2]).await.unwrap();
    drop(stream);

    let (mut stream, verdict) =
        drive_until(&mut c, raw_accept(&server, wire::PROTOCOL_VERSION)).await;
    verdict.unwrap();
    let first: StorageCommand<u64> = wire::read_frame(&mut stream, wire::DEFAULT_MAX_FRAME_BYTES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(epoch_of(&first), 2);
    assert_eq!(
        write_frontier(&c, user(2)),
        frontier(0),
        "the half frame was never applied"
    );
    // The new connection's whole frame is.
    stream.write_all(&frame).await.unwrap();
    process_until(&mut c, |c| write_frontier(c, user(2)) == frontier(9)).await;
}

#[tokio::test]
async fn a_replica_of_another_version_is_refused_and_retried_until_it_speaks_this_one() {
    let mut c = controller("other-version").await;
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = server.local_addr().unwrap().to_string();
    c.create_instance(INSTANCE);
    c.connect_replica(INSTANCE, ClusterReplicaLocation::single(address));

    // The replica speaks version 7: the controller's handshake is fine, but
    // it closes without sending a command.
    let (mut stream, verdict) = raw_accept(&server, 7).await;
    verdict.unwrap();
    let ended: Result<Option<StorageCommand<u64>>, _> =
        wire::read_frame(&mut stream, wire::DEFAULT_MAX_FRAME_BYTES).await;
    assert!(matches!(ended, Ok(None)), "{ended:?}");

    // Retried, and once the replica speaks this version, served.
    let (mut stream, verdict) =
        drive_until(&mut c, raw_accept(&server, wire::PROTOCOL_VERSION)).await;
    verdict.unwrap();
    let first: StorageCommand<u64> = wire::read_frame(&mut stream, wire::DEFAULT_MAX_FRAME_BYTES)
        .await
        .unwrap()
        .unwrap();
    assert!(epoch_of(&first) >= 2, "{first:?}");
}
