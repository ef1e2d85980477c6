//! A replica in this process, served through a real controller on the
//! memory backend: ingestions write what their generators say at the times
//! they say, exports of several outputs advance together, a dropped
//! ingestion stops and is reported dropped, and the file sink writes the
//! exported collection exactly, moving the export's read hold as it
//! commits.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_controller::protocol::{
    ClusterReplicaLocation, ExportCommand, IngestionCommand, StorageCommand, StorageResponse,
    TimelyConfig,
};
use tidemark_storage_controller::transport::{ReplicaConnection, ReplicaTransport};
use tidemark_storage_controller::{
    Controller, ControllerConfig, InProcessTransport, StorageController,
};
use tidemark_storage_replica::file_sink::read_committed;
use tidemark_storage_replica::generator::Generator;
use tidemark_storage_replica::{Replica, ReplicaConfig};
use tidemark_storage_types::{
    CollectionDescription, DataSource, Datum, Diff, ExportDescription, GlobalId,
    IngestionDescription, LoadGenerator, PersistBackend, ReadPolicy, RelationDesc, Row, ShardId,
    SinkConnection, SourceConnection, StorageInstanceId, StorageParameters, Update,
};
use timely::progress::Antichain;

const INSTANCE: StorageInstanceId = StorageInstanceId(1);
const ADDRESS: &str = "replica";

type TestController = Controller<u64, MemoryBackend>;

fn user(n: u64) -> GlobalId {
    GlobalId::User(n)
}

fn unique(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::new_v4().simple())
}

/// Fails the test instead of hanging (a bound, not a timing assertion).
async fn within<R>(future: impl Future<Output = R>, what: &str) -> R {
    tokio::time::timeout(Duration::from_secs(120), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A controller on a fresh memory store, with a replica of `workers`
/// workers serving it in this process.
struct Setup {
    controller: TestController,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

async fn setup(workers: usize) -> Setup {
    let transport = InProcessTransport::<u64>::new();
    let listener = transport.listen(ADDRESS);
    let mut controller = Controller::with_transport(
        MemoryBackend::open(&unique("replica-test")),
        ControllerConfig::default(),
        transport,
    )
    .await
    .expect("a controller starts");
    let replica = Replica::start(
        Arc::clone(controller.backend()),
        ReplicaConfig::single(workers),
        tokio::runtime::Handle::current(),
    )
    .expect("the replica starts");
    let serving = tokio::spawn(replica.serve(listener));
    controller.create_instance(INSTANCE);
    controller.initialization_complete();
    controller.connect_replica(INSTANCE, ClusterReplicaLocation::single(ADDRESS));
    Setup {
        controller,
        serving,
    }
}

fn ingestion(
    generator: LoadGenerator,
    exports: BTreeMap<GlobalId, String>,
) -> IngestionDescription {
    IngestionDescription {
        instance_id: INSTANCE,
        connection: SourceConnection::LoadGenerator {
            generator,
            tick: Duration::from_millis(5),
        },
        remap_collection_id: None,
        source_exports: exports,
    }
}

fn counter() -> CollectionDescription<u64> {
    let generator = LoadGenerator::Counter {
        max_cardinality: None,
    };
    let relation = Generator::relations(&generator)[0].1.clone();
    CollectionDescription::new(
        relation,
        DataSource::Ingestion(ingestion(generator, BTreeMap::new())),
    )
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

async fn updates_of(controller: &TestController, id: GlobalId, upper: u64) -> Vec<Update<u64>> {
    let shard = controller
        .collection(id)
        .expect("a collection")
        .collection_metadata
        .data_shard;
    let mut updates = controller
        .backend()
        .fetch(
            shard,
            &Antichain::from_elem(0),
            &Antichain::from_elem(upper),
        )
        .await
        .expect("the shard reads");
    updates.sort_by(|a, b| (a.timestamp, &a.row).cmp(&(b.timestamp, &b.row)));
    updates
}

fn int(n: i64) -> Row {
    Row::pack([Datum::Int64(n)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_reaches_upper_n_with_exactly_the_values_1_to_n_at_their_times() {
    let mut setup = setup(2).await;
    let c = &mut setup.controller;
    c.create_collections(vec![(user(1), counter())])
        .await
        .unwrap();
    const N: u64 = 40;
    process_until(c, "the counter's upper reaches N", |c| {
        upper_of(c, user(1)) >= N
    })
    .await;
    let updates = updates_of(c, user(1), N).await;
    let expected: Vec<Update<u64>> = (0..N)
        .map(|tick| Update::new(int(i64::try_from(tick).unwrap() + 1), tick, 1))
        .collect();
    assert_eq!(updates, expected);
    let snapshot = c.snapshot(user(1), N - 1).await.unwrap();
    assert_eq!(snapshot.len(), usize::try_from(N).unwrap());
    assert!(snapshot.iter().all(|(_, diff)| *diff == 1));
    process_until(c, "the status says running", |c| {
        c.status(user(1)) == Some("running")
    })
    .await;
    process_until(c, "statistics count the updates", |c| {
        c.statistics(user(1)).is_some_and(|s| s.updates >= N)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auction_ingestions_exports_advance_together() {
    let mut setup = setup(2).await;
    let c = &mut setup.controller;
    let outputs = ["auctions", "bids", "users", "organizations", "accounts"];
    let relations: BTreeMap<&str, RelationDesc> = Generator::relations(&LoadGenerator::Auction)
        .into_iter()
        .collect();
    let mut exports = BTreeMap::new();
    let mut collections = Vec::new();
    for (n, output) in outputs.iter().enumerate() {
        let id = user(10 + n as u64);
        exports.insert(id, (*output).to_string());
        collections.push((
            id,
            CollectionDescription::new(relations[output].clone(), DataSource::Other),
        ));
    }
    let primary = Generator::relations(&LoadGenerator::Auction)[0].1.clone();
    collections.push((
        user(1),
        CollectionDescription::new(
            primary,
            DataSource::Ingestion(ingestion(LoadGenerator::Auction, exports.clone())),
        ),
    ));
    c.create_collections(collections).await.unwrap();
    const N: u64 = 20;
    process_until(c, "every export reaches N", |c| {
        exports.keys().all(|id| upper_of(c, *id) >= N)
    })
    .await;
    // Each export holds exactly what the generator wrote for its output.
    let generator = Generator::new(&ingestion(LoadGenerator::Auction, exports.clone())).unwrap();
    for (id, output) in &exports {
        let written = updates_of(c, *id, N).await;
        let mut expected = Vec::new();
        for tick in 0..N {
            for (name, rows) in generator.tick(tick) {
                if name == output {
                    expected.extend(
                        rows.into_iter()
                            .map(|(row, diff)| Update::new(row, tick, diff)),
                    );
                }
            }
        }
        let consolidate = |updates: Vec<Update<u64>>| {
            let mut triples: Vec<(Row, u64, Diff)> = updates
                .into_iter()
                .map(|u| (u.row, u.timestamp, u.diff))
                .collect();
            differential_dataflow::consolidation::consolidate_updates(&mut triples);
            triples
        };
        assert_eq!(
            consolidate(written),
            consolidate(expected),
            "output {output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_ingestion_stops_and_is_reported_dropped() {
    let mut setup = setup(1).await;
    let c = &mut setup.controller;
    c.create_collections(vec![(user(1), counter())])
        .await
        .unwrap();
    process_until(c, "the counter runs", |c| upper_of(c, user(1)) >= 5).await;
    let shard = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    c.drop_sources(vec![user(1)]).unwrap();
    process_until(c, "the collection is gone after DroppedIds", |c| {
        c.collection(user(1)).is_err() && c.status(user(1)).is_none()
    })
    .await;
    // Stopped: the shard's upper no longer moves (it is finalized, once
    // the finalization queued at `DroppedIds` is done).
    c.flush().await;
    let first = PersistBackend::<u64>::frontiers(&**c.backend(), shard)
        .await
        .unwrap()
        .upper;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = PersistBackend::<u64>::frontiers(&**c.backend(), shard)
        .await
        .unwrap()
        .upper;
    assert_eq!(first, later, "nothing writes the dropped ingestion's shard");
}

fn sink_dir(label: &str) -> PathBuf {
    std::env::temp_dir().join(unique(label))
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        // A directory, or a plain file put where one was.
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn export_counter(
    c: &mut TestController,
    export: GlobalId,
    dir: &std::path::Path,
    as_of: u64,
    with_snapshot: bool,
) {
    let token = c.prepare_export(export, user(1)).unwrap();
    let description = ExportDescription {
        from: user(1),
        from_desc: c.collection(user(1)).unwrap().description.desc.clone(),
        connection: SinkConnection::File {
            path: dir.to_path_buf(),
        },
        as_of: Antichain::from_elem(as_of),
        with_snapshot,
        instance_id: INSTANCE,
    };
    c.create_exports(vec![(token, description)]).await.unwrap();
}

/// The collection's updates from `as_of` on, as an export of it writes
/// them: the snapshot at `as_of` (if asked for) at time `as_of`, then every
/// later update at its time, up to `upper`.
async fn expected_export(
    c: &TestController,
    as_of: u64,
    with_snapshot: bool,
    upper: u64,
) -> Vec<(Row, u64, Diff)> {
    let mut expected: Vec<(Row, u64, Diff)> = updates_of(c, user(1), upper)
        .await
        .into_iter()
        .filter(|u| {
            if with_snapshot {
                true
            } else {
                u.timestamp > as_of
            }
        })
        .map(|u| (u.row, u.timestamp.max(as_of), u.diff))
        .collect();
    differential_dataflow::consolidation::consolidate_updates(&mut expected);
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sink_writes_the_exported_collection_and_moves_its_read_hold() {
    let mut setup = setup(2).await;
    let c = &mut setup.controller;
    c.create_collections(vec![(user(1), counter())])
        .await
        .unwrap();
    process_until(c, "the counter has data", |c| upper_of(c, user(1)) >= 10).await;
    let (with, without) = (sink_dir("with-snapshot"), sink_dir("without-snapshot"));
    let _cleanup = (RemoveDir(with.clone()), RemoveDir(without.clone()));
    export_counter(c, user(2), &with, 5, true).await;
    export_counter(c, user(3), &without, 5, false).await;
    let since_at_start = c.collection(user(1)).unwrap().implied_capability.clone();
    const UPPER: u64 = 30;
    process_until(c, "both exports commit past UPPER", |c| {
        upper_of(c, user(2)) >= UPPER && upper_of(c, user(3)) >= UPPER
    })
    .await;
    for (dir, with_snapshot) in [(&with, true), (&without, false)] {
        let mut written: Vec<(Row, u64, Diff)> = read_committed(dir).unwrap();
        let upper = written.iter().map(|(_, t, _)| *t + 1).max().unwrap_or(5);
        differential_dataflow::consolidation::consolidate_updates(&mut written);
        let expected = expected_export(c, 5, with_snapshot, upper).await;
        assert_eq!(written, expected, "with_snapshot={with_snapshot}");
        assert!(!written.is_empty());
    }
    // The exports' holds followed their commits, and with the collection's
    // own policy following its upper, its since moves past the as_of.
    for export in [user(2), user(3)] {
        let hold = c.export(export).unwrap().read_capability.clone();
        assert!(
            hold.elements().iter().all(|time| *time >= UPPER - 1),
            "export {export} holds at {hold:?}"
        );
    }
    assert!(since_at_start.less_equal(&5));
    c.set_read_policy(vec![(user(1), ReadPolicy::step_back())]);
    process_until(c, "the source's since advances", |c| {
        c.collection(user(1))
            .unwrap()
            .since()
            .elements()
            .iter()
            .all(|time| *time >= UPPER - 1)
    })
    .await;
}

/// A free loopback port (probed; timely binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|probe| probe.local_addr())
        .expect("loopback binds")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_two_processes_runs_an_ingestion_and_a_sink() {
    let transport = InProcessTransport::<u64>::new();
    let mut c = Controller::with_transport(
        MemoryBackend::open(&unique("two-processes")),
        ControllerConfig::default(),
        transport.clone(),
    )
    .await
    .expect("a controller starts");
    let peers = vec![
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    // Each process blocks in `start` until the other has connected.
    let starting: Vec<_> = (0..2)
        .map(|process| {
            let backend = Arc::clone(c.backend());
            let config = ReplicaConfig {
                workers: 1,
                process,
                peers: peers.clone(),
            };
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || Replica::start(backend, config, runtime))
        })
        .collect();
    let mut serving = Vec::new();
    for (process, start) in starting.into_iter().enumerate() {
        let replica = within(start, "the cluster connects")
            .await
            .unwrap()
            .unwrap();
        let listener = transport.listen(&format!("p{process}"));
        serving.push(AbortOnDrop(tokio::spawn(replica.serve(listener))));
    }
    c.create_instance(INSTANCE);
    c.create_collections(vec![(user(1), counter())])
        .await
        .unwrap();
    let dir = sink_dir("two-processes");
    let _cleanup = RemoveDir(dir.clone());
    // u1 runs on worker 1 (process 1), u2 on worker 0 (process 0).
    export_counter(&mut c, user(2), &dir, 0, true).await;
    c.initialization_complete();
    c.connect_replica(
        INSTANCE,
        ClusterReplicaLocation {
            addresses: vec!["p0".into(), "p1".into()],
        },
    );
    process_until(&mut c, "both dataflows make progress", |c| {
        upper_of(c, user(1)) >= 20 && upper_of(c, user(2)) >= 15
    })
    .await;
    let mut written: Vec<(Row, u64, Diff)> = read_committed(&dir).unwrap();
    let upper = written.iter().map(|(_, t, _)| *t + 1).max().unwrap();
    differential_dataflow::consolidation::consolidate_updates(&mut written);
    assert_eq!(written, expected_export(&c, 0, true, upper).await);
    drop(serving);
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A controller whose replica reports statistics every 10 ms.
async fn setup_with_fast_statistics(workers: usize) -> Setup {
    let mut setup = setup(workers).await;
    setup.controller.update_configuration(StorageParameters {
        statistics_interval: Some(Duration::from_millis(10)),
        ..StorageParameters::default()
    });
    setup
}

fn file_export(
    c: &TestController,
    from: GlobalId,
    dir: &std::path::Path,
    as_of: u64,
) -> ExportDescription<u64> {
    ExportDescription {
        from,
        from_desc: c.collection(from).unwrap().description.desc.clone(),
        connection: SinkConnection::File {
            path: dir.to_path_buf(),
        },
        as_of: Antichain::from_elem(as_of),
        with_snapshot: true,
        instance_id: INSTANCE,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_stops_committing_reports_a_positive_frontier_lag() {
    let mut setup = setup_with_fast_statistics(1).await;
    let c = &mut setup.controller;
    c.create_collections(vec![(user(1), counter())])
        .await
        .unwrap();
    let dir = sink_dir("lagging");
    let _cleanup = RemoveDir(dir.clone());
    export_counter(c, user(2), &dir, 0, true).await;
    process_until(c, "the sink commits", |c| upper_of(c, user(2)) >= 5).await;
    // The sink's directory becomes a plain file: its next commit fails, it
    // stalls, and the counter it exports moves on without it.
    let moved = dir.with_extension("moved");
    let _moved = RemoveDir(moved.clone());
    std::fs::rename(&dir, &moved).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    process_until(c, "the sink stalls", |c| {
        c.status(user(2))
            .is_some_and(|status| status.starts_with("stalled: "))
    })
    .await;
    let committed = upper_of(c, user(2));
    // The lag grows with the source: at least the ticks the counter has
    // made durable since the sink stalled.
    process_until(c, "the stalled sink's lag grows with its source", |c| {
        let source = upper_of(c, user(1));
        source >= committed + 10
            && c.statistics(user(2))
                .is_some_and(|s| s.frontier_lag >= source - committed)
    })
    .await;
    assert_eq!(
        upper_of(c, user(2)),
        committed,
        "a stalled sink commits nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_caught_up_with_its_source_reports_zero_frontier_lag() {
    let mut setup = setup_with_fast_statistics(1).await;
    let c = &mut setup.controller;
    let relation = Generator::relations(&LoadGenerator::Counter {
        max_cardinality: None,
    })[0]
        .1
        .clone();
    c.create_collections(vec![(user(5), CollectionDescription::table(relation))])
        .await
        .unwrap();
    let rows: Vec<Update<u64>> = (0..3)
        .map(|t| Update::new(int(10 + t), t as u64, 1))
        .collect();
    let appended = c.append(vec![(user(5), rows, 4)]).unwrap();
    within(appended, "the table append").await.unwrap().unwrap();
    let dir = sink_dir("caught-up");
    let _cleanup = RemoveDir(dir.clone());
    let token = c.prepare_export(user(6), user(5)).unwrap();
    let description = file_export(c, user(5), &dir, 0);
    c.create_exports(vec![(token, description)]).await.unwrap();
    process_until(c, "the sink commits the table's upper", |c| {
        upper_of(c, user(6)) >= 4
    })
    .await;
    // Reports sent before the last commit may lag; once caught up, every
    // report says zero (a lag computed against anything but the source's
    // upper would keep this waiting until the bound fails the test).
    process_until(c, "the caught-up sink reports zero lag", |c| {
        c.statistics(user(6))
            .is_some_and(|s| s.updates >= 3 && s.frontier_lag == 0)
    })
    .await;
    assert_eq!(upper_of(c, user(5)), 4, "nothing else wrote the table");
    assert_eq!(upper_of(c, user(6)), 4);
}

/// A replica served directly, without a controller: the test sends the
/// commands and reads every response.
struct Direct {
    backend: Arc<MemoryBackend>,
    connection: ReplicaConnection<u64>,
    _serving: AbortOnDrop,
    /// Kept: the replica serves until its transport goes away.
    _transport: Arc<InProcessTransport<u64>>,
}

impl Direct {
    async fn start() -> Direct {
        let transport = InProcessTransport::<u64>::new();
        let listener = transport.listen("direct");
        let backend = Arc::new(MemoryBackend::open(&unique("direct")));
        let replica = Replica::start(
            Arc::clone(&backend),
            ReplicaConfig::single(1),
            tokio::runtime::Handle::current(),
        )
        .expect("the replica starts");
        let serving = AbortOnDrop(tokio::spawn(replica.serve(listener)));
        let connection = transport.connect("direct");
        let direct = Direct {
            backend,
            connection,
            _serving: serving,
            _transport: transport,
        };
        direct.send(StorageCommand::CreateTimely {
            config: TimelyConfig {
                process: 0,
                addresses: vec!["direct".into()],
            },
            epoch: 1,
        });
        direct.send(StorageCommand::InitializationComplete);
        direct
    }

    fn send(&self, command: StorageCommand<u64>) {
        self.connection
            .commands
            .send(command)
            .expect("the replica takes commands");
    }

    async fn next(&mut self, what: &str) -> StorageResponse<u64> {
        within(self.connection.responses.recv(), what)
            .await
            .unwrap_or_else(|| panic!("the replica closed the session: {what}"))
    }

    /// The statuses of `id`, in order, until one satisfies `last`.
    async fn statuses_until(&mut self, id: GlobalId, last: impl Fn(&str) -> bool) -> Vec<String> {
        let mut statuses = Vec::new();
        loop {
            if let StorageResponse::StatusUpdates(updates) = self.next("a status").await {
                for (of, status) in updates {
                    if of == id {
                        let done = last(&status);
                        statuses.push(status);
                        if done {
                            return statuses;
                        }
                    }
                }
            }
        }
    }

    /// The next `DroppedIds`.
    async fn dropped(&mut self) -> std::collections::BTreeSet<GlobalId> {
        loop {
            if let StorageResponse::DroppedIds(ids) = self.next("DroppedIds").await {
                return ids;
            }
        }
    }

    async fn new_shard(&self) -> ShardId {
        let shard = ShardId::new();
        PersistBackend::<u64>::open(&*self.backend, shard)
            .await
            .expect("a shard opens");
        shard
    }

    async fn run_counter(&self, id: GlobalId) -> ShardId {
        let shard = self.new_shard().await;
        self.send(StorageCommand::CreateSources(vec![IngestionCommand {
            id,
            description: counter(),
            data_shards: vec![(id, shard)],
            resume_upper: Antichain::from_elem(0),
        }]));
        shard
    }

    fn run_file_sink(&self, id: GlobalId, from: GlobalId, from_shard: ShardId, dir: PathBuf) {
        let description = ExportDescription {
            from,
            from_desc: counter().desc,
            connection: SinkConnection::File { path: dir },
            as_of: Antichain::from_elem(0),
            with_snapshot: true,
            instance_id: INSTANCE,
        };
        self.send(StorageCommand::CreateSinks(vec![ExportCommand {
            id,
            description,
            from_shard,
            initial_as_of: Antichain::from_elem(0),
        }]));
    }

    fn drop_ids(&self, ids: &[GlobalId]) {
        self.send(StorageCommand::AllowCompaction(
            ids.iter().map(|id| (*id, Antichain::new())).collect(),
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_id_the_replica_never_ran_is_confirmed_at_once() {
    let mut direct = Direct::start().await;
    direct.drop_ids(&[user(99)]);
    assert_eq!(direct.dropped().await, [user(99)].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_id_already_dropped_is_confirmed_again() {
    let mut direct = Direct::start().await;
    direct.run_counter(user(1)).await;
    direct.statuses_until(user(1), |s| s == "running").await;
    direct.drop_ids(&[user(1)]);
    assert_eq!(direct.dropped().await, [user(1)].into());
    // A restarted controller re-sends a drop it has not seen confirmed.
    direct.drop_ids(&[user(1)]);
    assert_eq!(direct.dropped().await, [user(1)].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingestion_reports_starting_then_running_then_dropped() {
    let mut direct = Direct::start().await;
    direct.run_counter(user(1)).await;
    let statuses = direct.statuses_until(user(1), |s| s == "running").await;
    assert_eq!(statuses, ["starting", "running"]);
    direct.drop_ids(&[user(1)]);
    let statuses = direct.statuses_until(user(1), |s| s == "dropped").await;
    assert_eq!(statuses, ["dropped"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_reports_starting_then_running_then_dropped() {
    let mut direct = Direct::start().await;
    let shard = direct.run_counter(user(1)).await;
    let dir = sink_dir("export-statuses");
    let _cleanup = RemoveDir(dir.clone());
    direct.run_file_sink(user(2), user(1), shard, dir);
    let statuses = direct.statuses_until(user(2), |s| s == "running").await;
    assert_eq!(statuses, ["starting", "running"]);
    direct.drop_ids(&[user(2)]);
    let statuses = direct.statuses_until(user(2), |s| s == "dropped").await;
    assert_eq!(statuses, ["dropped"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingestion_that_cannot_run_reports_stalled_with_its_error() {
    let mut direct = Direct::start().await;
    let shard = direct.new_shard().await;
    let not_an_ingestion = CollectionDescription::new(counter().desc, DataSource::Other);
    direct.send(StorageCommand::CreateSources(vec![IngestionCommand {
        id: user(1),
        description: not_an_ingestion,
        data_shards: vec![(user(1), shard)],
        resume_upper: Antichain::from_elem(0),
    }]));
    let statuses = direct
        .statuses_until(user(1), |s| s.starts_with("stalled: "))
        .await;
    assert_eq!(statuses[0], "starting");
    assert!(
        statuses[1].starts_with("stalled: not an ingestion: id=u1"),
        "{statuses:?}"
    );
    direct.drop_ids(&[user(1)]);
    assert_eq!(
        direct.statuses_until(user(1), |s| s == "dropped").await,
        ["dropped"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_cannot_open_its_sink_reports_stalled_with_its_error() {
    let mut direct = Direct::start().await;
    let shard = direct.run_counter(user(1)).await;
    let file = sink_dir("a-plain-file");
    let _cleanup = RemoveDir(file.clone());
    std::fs::write(&file, b"not a directory").unwrap();
    direct.run_file_sink(user(2), user(1), shard, file.join("sink"));
    let statuses = direct
        .statuses_until(user(2), |s| s.starts_with("stalled: "))
        .await;
    assert_eq!(statuses[0], "starting");
    assert!(
        statuses[1].starts_with("stalled: opening the file sink failed"),
        "{statuses:?}"
    );
    direct.drop_ids(&[user(2)]);
    assert_eq!(
        direct.statuses_until(user(2), |s| s == "dropped").await,
        ["dropped"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingestion_writes_its_progress_collection_beside_its_data() {
    let mut setup = setup(2).await;
    let c = &mut setup.controller;
    const PROGRESS: u64 = 2;
    let mut source = counter();
    if let DataSource::Ingestion(description) = &mut source.data_source {
        description.remap_collection_id = Some(user(PROGRESS));
    }
    let progress = CollectionDescription::new(Generator::progress_relation(), DataSource::Progress);
    c.create_collections(vec![(user(PROGRESS), progress), (user(1), source)])
        .await
        .unwrap();
    const N: u64 = 30;
    process_until(c, "the counter and its progress reach N", |c| {
        upper_of(c, user(1)) >= N && upper_of(c, user(PROGRESS)) >= N
    })
    .await;
    // At every time the progress collection holds one row: the ticks
    // applied so far, i.e. the source offset the data is written up to.
    for time in [0, N / 2, N - 1] {
        let offset = i64::try_from(time + 1).unwrap();
        assert_eq!(
            c.snapshot(user(PROGRESS), time).await.unwrap(),
            vec![(int(offset), 1)],
            "progress at time {time}"
        );
        assert_eq!(
            c.snapshot(user(1), time).await.unwrap().len(),
            usize::try_from(offset).unwrap(),
            "counter values at time {time}"
        );
    }
}
