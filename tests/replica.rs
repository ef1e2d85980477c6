//! `tidemark replica` processes serving a controller over TCP on a shared
//! PostgreSQL or S3 store: a counter ingestion and a file sink; the replica
//! killed with SIGKILL mid-ingestion ten times in a row and started again,
//! after which the counter still holds every value once and the sink's
//! output still equals the exported collection, and the status collection
//! records every restart; dropping the ingestion reclaims its shard only
//! after the replica's `DroppedIds`; and a replica of two processes forming
//! one timely cluster.
//!
//! Every process is killed by pid when its guard drops (also when a test
//! fails); every wait is bounded.

mod support;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use support::{Running, Store};
use tidemark::DynBackend;
use tidemark::controller::protocol::ClusterReplicaLocation;
use tidemark::controller::tcp::{TcpConfig, TcpTransport};
use tidemark::controller::{Controller, ControllerConfig, ReconnectPolicy, StorageController};
use tidemark::replica::file_sink::read_committed;
use tidemark::replica::generator::Generator;
use tidemark::types::description::status_history_relation;
use tidemark::types::{
    CollectionDescription, DataSource, Datum, Diff, ExportDescription, GlobalId,
    IngestionDescription, LoadGenerator, PersistBackend, Row, SinkConnection, SourceConnection,
    StorageInstanceId, Update,
};
use timely::progress::Antichain;

const INSTANCE: StorageInstanceId = StorageInstanceId(1);
const COUNTER: GlobalId = GlobalId::User(1);
const SINK: GlobalId = GlobalId::User(2);
const STATUS: GlobalId = GlobalId::User(3);
const RESTARTS: usize = 10;

type TestController = Controller<u64, DynBackend>;

/// Fails the test instead of hanging (a bound, not a timing assertion).
async fn within<R>(future: impl Future<Output = R>, what: &str) -> R {
    tokio::time::timeout(Duration::from_secs(180), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A free loopback port (probed; the process binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|probe| probe.local_addr())
        .expect("loopback binds")
        .port()
}

/// A `tidemark replica` process, killed with SIGKILL when dropped.
struct ReplicaProcess {
    /// Held for its drop, which kills the process by pid.
    _running: Running,
    address: String,
}

impl ReplicaProcess {
    /// Starts a replica listening on `listen` and waits for its
    /// `listening on` line.
    fn start(store: &Store, listen: &str, extra: &[&str]) -> ReplicaProcess {
        let mut args = vec!["replica", "--listen", listen, "--backend", &store.url];
        args.extend_from_slice(extra);
        let running = Running::start(&args);
        let lines = running.read_until(Duration::from_secs(60), |line| {
            line.starts_with("listening on ")
        });
        let line = lines.last().expect("the listening line");
        let address = line
            .trim_start_matches("listening on ")
            .split_whitespace()
            .next()
            .expect("an address")
            .to_string();
        ReplicaProcess {
            _running: running,
            address,
        }
    }
}

async fn controller(store: &Store) -> TestController {
    let config = ControllerConfig {
        replica_reconnect: ReconnectPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
        },
        ..ControllerConfig::default()
    };
    let transport = TcpTransport::<u64>::new(TcpConfig::default());
    Controller::with_transport(store.backend.clone(), config, transport as Arc<_>)
        .await
        .expect("a controller starts")
}

fn counter() -> CollectionDescription<u64> {
    let generator = LoadGenerator::Counter {
        max_cardinality: None,
    };
    let relation = Generator::relations(&generator)[0].1.clone();
    let mut description = CollectionDescription::new(
        relation,
        DataSource::Ingestion(IngestionDescription {
            instance_id: INSTANCE,
            connection: SourceConnection::LoadGenerator {
                generator,
                tick: Duration::from_millis(20),
            },
            remap_collection_id: None,
            source_exports: Default::default(),
        }),
    );
    description.status_collection_id = Some(STATUS);
    description
}

fn upper_of(controller: &TestController, id: GlobalId) -> u64 {
    let frontier = match controller.collection(id) {
        Ok(state) => state.write_frontier.clone(),
        Err(_) => controller
            .export(id)
            .expect("a collection or an export")
            .write_frontier
            .clone(),
    };
    frontier.elements().first().copied().unwrap_or(u64::MAX)
}

/// Runs the controller until `done` holds.
async fn process_until(
    controller: &mut TestController,
    what: &str,
    mut done: impl FnMut(&TestController) -> bool,
) {
    within(
        async {
            while !done(controller) {
                tokio::select! {
                    () = controller.ready() => controller.process().await.expect("process succeeds"),
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        },
        what,
    )
    .await;
}

async fn create_counter_and_sink(c: &mut TestController, dir: &Path) {
    c.create_instance(INSTANCE);
    let status_history =
        CollectionDescription::new(status_history_relation(), DataSource::StatusHistory);
    c.create_collections(vec![(STATUS, status_history), (COUNTER, counter())])
        .await
        .expect("the counter is created");
    let token = c.prepare_export(SINK, COUNTER).expect("an export token");
    let description = ExportDescription {
        from: COUNTER,
        from_desc: c.collection(COUNTER).unwrap().description.desc.clone(),
        connection: SinkConnection::File {
            path: dir.to_path_buf(),
        },
        as_of: Antichain::from_elem(0),
        with_snapshot: true,
        instance_id: INSTANCE,
    };
    c.create_exports(vec![(token, description)])
        .await
        .expect("the export is created");
    c.initialization_complete();
}

/// The counter's shard, read directly, holds exactly the values
/// `1..=upper` once each, value `k + 1` at time `k`; and the sink's
/// committed output is the same collection up to what it committed.
async fn check_counter_and_sink(c: &TestController, dir: &Path) {
    // The sink first: whatever it committed was in the shard before, so
    // the shard read after it covers it.
    let mut written: Vec<(Row, u64, Diff)> = read_committed(dir).expect("the sink reads back");
    let shard = c
        .collection(COUNTER)
        .unwrap()
        .collection_metadata
        .data_shard;
    // Read the shard's own upper (the controller hears of it later).
    let frontiers = PersistBackend::<u64>::frontiers(&**c.backend(), shard)
        .await
        .expect("the counter's shard has frontiers");
    let upper = frontiers
        .upper
        .elements()
        .first()
        .copied()
        .expect("not sealed");
    let mut updates: Vec<Update<u64>> = PersistBackend::<u64>::fetch(
        &**c.backend(),
        shard,
        &Antichain::from_elem(0),
        &Antichain::from_elem(upper),
    )
    .await
    .expect("the counter's shard reads");
    updates.sort_by(|a, b| (a.timestamp, &a.row).cmp(&(b.timestamp, &b.row)));
    let expected: Vec<Update<u64>> = (0..upper)
        .map(|tick| Update::new(int(i64::try_from(tick).unwrap() + 1), tick, 1))
        .collect();
    assert_eq!(updates, expected, "the counter holds each value once");

    written.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let committed = written.last().map_or(0, |update| update.1 + 1);
    assert!(committed <= upper, "the sink is never ahead of its source");
    let expected: Vec<(Row, u64, Diff)> = expected
        .into_iter()
        .filter(|update| update.timestamp < committed)
        .map(|update| (update.row, update.timestamp, update.diff))
        .collect();
    assert_eq!(written, expected, "the sink wrote each update once");
}

fn int(n: i64) -> Row {
    Row::pack([Datum::Int64(n)])
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        TempDir(std::env::temp_dir().join(format!(
            "tidemark-replica-{label}-{}",
            uuid::Uuid::new_v4().simple()
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The counter and the sink through one replica process, which is killed
/// with SIGKILL mid-ingestion and restarted `RESTARTS` times.
async fn survives_kill_9(store: Store) {
    let dir = TempDir::new("kill");
    let mut c = controller(&store).await;
    let mut replica = ReplicaProcess::start(&store, "127.0.0.1:0", &["--workers", "2"]);
    let address = replica.address.clone();
    create_counter_and_sink(&mut c, &dir.0).await;
    c.connect_replica(INSTANCE, ClusterReplicaLocation::single(address.clone()));
    let mut reached = 0;
    for restart in 0..RESTARTS {
        let (counter_goal, sink_goal) = (reached + 5, reached + 3);
        process_until(&mut c, "the counter and the sink make progress", |c| {
            upper_of(c, COUNTER) >= counter_goal && upper_of(c, SINK) >= sink_goal
        })
        .await;
        check_counter_and_sink(&c, &dir.0).await;
        reached = upper_of(&c, COUNTER);
        // SIGKILL, by pid (the guard's drop), mid-ingestion.
        drop(replica);
        replica = ReplicaProcess::start(&store, &address, &["--workers", "2"]);
        eprintln!("restart {restart}: counter upper {reached}");
    }
    let goal = reached + 5;
    process_until(&mut c, "progress after the last restart", |c| {
        upper_of(c, COUNTER) >= goal && upper_of(c, SINK) >= goal - 2
    })
    .await;
    check_counter_and_sink(&c, &dir.0).await;
    let lost = status_rows(&c)
        .await
        .iter()
        .filter(|(status, error)| {
            status == "stalled" && error.as_deref() == Some("replica disconnected")
        })
        .count();
    assert!(
        lost >= RESTARTS,
        "one stalled row per restart at least: {lost}"
    );
    drop(replica);
}

/// `(status, error)` of every row of the status collection.
async fn status_rows(c: &TestController) -> Vec<(String, Option<String>)> {
    let upper = upper_of(c, STATUS);
    assert!(upper > 0, "some status was recorded");
    let text = |datum: &Datum<'_>| match datum {
        Datum::String(text) => Some((*text).to_owned()),
        _ => None,
    };
    c.snapshot(STATUS, upper - 1)
        .await
        .expect("the status collection reads")
        .iter()
        .map(|(row, diff)| {
            assert_eq!(*diff, 1);
            let datums = row.unpack();
            assert_eq!(text(&datums[1]).as_deref(), Some("u1"));
            (text(&datums[2]).expect("a status"), text(&datums[3]))
        })
        .collect()
}

/// Dropping the counter: its shard outlives the drop until the replica
/// confirms it stopped with `DroppedIds`, then it is reclaimed.
async fn drop_waits_for_dropped_ids(store: Store) {
    let dir = TempDir::new("drop");
    let mut c = controller(&store).await;
    let replica = ReplicaProcess::start(&store, "127.0.0.1:0", &[]);
    create_counter_and_sink(&mut c, &dir.0).await;
    c.connect_replica(
        INSTANCE,
        ClusterReplicaLocation::single(replica.address.clone()),
    );
    process_until(&mut c, "the counter makes progress", |c| {
        upper_of(c, COUNTER) >= 3
    })
    .await;
    let shard = c
        .collection(COUNTER)
        .unwrap()
        .collection_metadata
        .data_shard;
    // The sink holds the counter until its own `DroppedIds`.
    c.drop_sinks(vec![SINK]).expect("the sink drops");
    assert!(c.is_export_dropping(SINK));
    process_until(&mut c, "the replica confirms the sink's drop", |c| {
        !c.is_export_dropping(SINK)
    })
    .await;
    c.drop_sources(vec![COUNTER]).expect("the counter drops");
    assert!(c.collection(COUNTER).is_err(), "forgotten at once");
    // No response is handled before the next `process`: the shard stays.
    c.flush().await;
    assert!(c.is_awaiting_drop(COUNTER));
    let shards = PersistBackend::<u64>::list_shards(&**c.backend())
        .await
        .expect("shards list");
    assert!(shards.contains(&shard), "reclaimed before DroppedIds");
    process_until(&mut c, "the replica confirms the drop", |c| {
        !c.is_awaiting_drop(COUNTER)
    })
    .await;
    c.flush().await;
    let shards = PersistBackend::<u64>::list_shards(&**c.backend())
        .await
        .expect("shards list");
    assert!(!shards.contains(&shard), "reclaimed after DroppedIds");
    // The `dropped` row is durable once its append completes; the
    // controller learns the status collection's new upper at a `process`.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let statuses = status_rows(&c).await;
        if statuses.iter().any(|(status, _)| status == "dropped") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dropped status was recorded: {statuses:?}"
        );
        tokio::select! {
            () = c.ready() => c.process().await.expect("process succeeds"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    drop(replica);
}

/// A replica of two processes, one timely cluster: the counter is written
/// by one process's worker and the sink by the other's, and the controller
/// advances an upper only once both processes have reported it.
async fn runs_as_two_processes(store: Store) {
    let dir = TempDir::new("two-processes");
    let mut c = controller(&store).await;
    let peers = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port());
    let processes: Vec<ReplicaProcess> = (0..2)
        .map(|process| {
            let index = process.to_string();
            ReplicaProcess::start(
                &store,
                "127.0.0.1:0",
                &["--process", &index, "--peers", &peers],
            )
        })
        .collect();
    let location = ClusterReplicaLocation {
        addresses: processes.iter().map(|p| p.address.clone()).collect(),
    };
    create_counter_and_sink(&mut c, &dir.0).await;
    c.connect_replica(INSTANCE, location);
    process_until(&mut c, "both dataflows make progress", |c| {
        upper_of(c, COUNTER) >= 20 && upper_of(c, SINK) >= 15
    })
    .await;
    check_counter_and_sink(&c, &dir.0).await;
    drop(processes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replica_process_survives_kill_9_ten_times() {
    if let Some(store) = support::postgres_store("postgres_replica_process_survives_kill_9").await {
        survives_kill_9(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_replica_process_survives_kill_9_ten_times() {
    if let Some(store) = support::s3_store("s3_replica_process_survives_kill_9").await {
        survives_kill_9(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropped_ingestion_is_reclaimed_after_dropped_ids() {
    if let Some(store) = support::postgres_store("postgres_dropped_ingestion").await {
        drop_waits_for_dropped_ids(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_dropped_ingestion_is_reclaimed_after_dropped_ids() {
    if let Some(store) = support::s3_store("s3_dropped_ingestion").await {
        drop_waits_for_dropped_ids(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_process_replica_runs_an_ingestion_and_a_sink() {
    if let Some(store) = support::postgres_store("postgres_two_process_replica").await {
        runs_as_two_processes(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_two_process_replica_runs_an_ingestion_and_a_sink() {
    if let Some(store) = support::s3_store("s3_two_process_replica").await {
        runs_as_two_processes(store).await;
    }
}
