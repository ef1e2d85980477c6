//! A replica's `FrontierUppers` reach the controller: a key-value
//! ingestion at full speed (tick interval zero) through a replica, in this
//! process and through a real controller, must be reported durable up to
//! a goal, round after round, the way the replica benchmark runs it (each
//! round a new controller and a new replica on the same store, the replica
//! stopped by aborting its serving task and awaiting it).
//!
//! Every step of a round is bounded: a step that stalls fails the test
//! instead of hanging (a round that does not reach its goal says where each
//! side stands: the shard's upper in the store and the controller's write
//! frontier). The bound is far above what a step needs; it is a stall
//! detector, not a timing assertion.
//!
//! On PostgreSQL these rounds stalled, in three of eight runs before
//! pooled connections were guarded against a `BEGIN` dropped in flight (a
//! replica stopped with an append part way): the connection went back to
//! the pool inside a transaction nobody committed, and the next round's
//! `open` of a new shard waited forever on the uncommitted row another
//! `open` of it had left there (decision 117).
//!
//! On memory always; on PostgreSQL when `TIDEMARK_TEST_POSTGRES_URL` is set
//! (a fresh schema per test, dropped afterwards); without it the
//! PostgreSQL tests print SKIPPED, and fail when `CI=true`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tidemark_backend_memory::MemoryBackend;
use tidemark_backend_postgres::{PostgresBackend, PostgresConfig};
use tidemark_storage_controller::protocol::ClusterReplicaLocation;
use tidemark_storage_controller::{
    Controller, ControllerConfig, InProcessTransport, StorageController,
};
use tidemark_storage_replica::generator::{Generator, tick_time};
use tidemark_storage_replica::{Replica, ReplicaConfig};
use tidemark_storage_types::{
    CollectionDescription, DataSource, GlobalId, IngestionDescription, LoadGenerator,
    PersistBackend, SourceConnection, StorageInstanceId,
};

const INSTANCE: StorageInstanceId = StorageInstanceId(1);
const ADDRESS: &str = "frontier-reports";

/// The ticks each round must see reported durable.
const GOAL_TICKS: u64 = 60;

/// Rounds per test: enough for the replica of every round to be stopped
/// while its appends may be in flight, on both worker counts.
const ROUNDS: u64 = 6;

/// How long one step of a round (starting a controller, creating the
/// ingestion, reaching the goal, stopping the replica) may take before it
/// counts as stalled.
const PHASE_BOUND: Duration = Duration::from_secs(60);

fn key_value() -> LoadGenerator {
    LoadGenerator::KeyValue {
        keys: 1_000,
        value_size: 32,
        batch_size: 200,
        seed: 11,
    }
}

fn description() -> CollectionDescription<u64> {
    let generator = key_value();
    let relation = Generator::relations(&generator)[0].1.clone();
    CollectionDescription::new(
        relation,
        DataSource::Ingestion(IngestionDescription {
            instance_id: INSTANCE,
            connection: SourceConnection::LoadGenerator {
                generator,
                tick: Duration::ZERO,
            },
            remap_collection_id: None,
            source_exports: BTreeMap::new(),
        }),
    )
}

fn first_time(frontier: &timely::progress::Antichain<u64>) -> String {
    frontier
        .elements()
        .first()
        .map_or_else(|| "[]".to_string(), u64::to_string)
}

/// Awaits `future`, failing the test with `what` if it takes longer than
/// [`PHASE_BOUND`] (a stall detector, not a timing assertion).
async fn bounded<R>(what: &str, future: impl std::future::Future<Output = R>) -> R {
    tokio::time::timeout(PHASE_BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("stalled: {what} did not finish within {PHASE_BOUND:?}"))
}

/// One round: a new controller and a new replica of `workers` workers on
/// `backend`, ingestion `id`; returns once the controller has heard that
/// `GOAL_TICKS` ticks are durable, then stops the replica by aborting its
/// serving task and awaiting it. Every step is bounded: a step that stalls
/// fails the test, and waiting for the goal names both sides' frontiers.
async fn one_round<B>(backend: B, workers: usize, id: GlobalId)
where
    B: PersistBackend<u64> + Clone,
{
    let transport = InProcessTransport::<u64>::new();
    let listener = transport.listen(ADDRESS);
    let mut controller = bounded(
        "starting a controller",
        Controller::with_transport(backend, ControllerConfig::default(), transport),
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
    bounded(
        "creating the ingestion",
        controller.create_collections(vec![(id, description())]),
    )
    .await
    .expect("the ingestion is created");
    controller.initialization_complete();
    controller.connect_replica(INSTANCE, ClusterReplicaLocation::single(ADDRESS));
    let goal = tick_time::<u64>(GOAL_TICKS).expect("a time");
    let reached = tokio::time::timeout(PHASE_BOUND, async {
        while controller
            .collection(id)
            .expect("the ingestion")
            .write_frontier
            .less_than(&goal)
        {
            tokio::select! {
                () = controller.ready() => controller.process().await.expect("process succeeds"),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
    .await;
    if reached.is_err() {
        let reported = first_time(
            &controller
                .collection(id)
                .expect("the ingestion")
                .write_frontier,
        );
        let shard = controller
            .collection(id)
            .expect("the ingestion")
            .collection_metadata
            .data_shard;
        let durable = match tokio::time::timeout(
            Duration::from_secs(10),
            controller.backend().frontiers(shard),
        )
        .await
        {
            Ok(Ok(frontiers)) => first_time(&frontiers.upper),
            Ok(Err(error)) => format!("unreadable: {error}"),
            Err(_) => "unreadable: the read did not finish".to_string(),
        };
        panic!(
            "stalled: ingestion {id} on {workers} worker(s) did not reach {goal} within {PHASE_BOUND:?}: \
             the controller's write frontier is {reported}, the shard's upper in the store is {durable}, \
             status {:?}",
            controller.status(id)
        );
    }
    serving.abort();
    let _ = bounded("stopping the replica", serving).await;
}

/// `ROUNDS` rounds on `open()`'s store, alternating one and two workers,
/// each with a new ingestion id.
async fn rounds<B, F>(open: F)
where
    B: PersistBackend<u64> + Clone,
    F: Fn() -> B,
{
    for round in 0..ROUNDS {
        let workers = if round % 2 == 0 { 1 } else { 2 };
        one_round(open(), workers, GlobalId::User(round + 1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_round_on_memory_is_reported_durable_up_to_the_goal() {
    let name = format!("frontier-reports-{}", uuid::Uuid::new_v4().simple());
    rounds(|| MemoryBackend::open(&name)).await;
}

/// A fresh schema on the test server, dropped when this is dropped.
struct Schema {
    config: PostgresConfig,
}

impl Schema {
    /// `None` (after a SKIPPED line) without a server outside CI.
    fn fresh(test_name: &str) -> Option<Schema> {
        let url = match std::env::var("TIDEMARK_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                let in_ci = std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1");
                assert!(
                    !in_ci,
                    "TIDEMARK_TEST_POSTGRES_URL is not set but CI=true: {test_name} needs PostgreSQL"
                );
                eprintln!("SKIPPED {test_name}: TIDEMARK_TEST_POSTGRES_URL is not set");
                return None;
            }
        };
        let schema = format!(
            "replica_reports_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let config = PostgresConfig::from_url(&url)
            .expect("TIDEMARK_TEST_POSTGRES_URL is a valid postgres URL")
            .with_schema(schema);
        Some(Schema { config })
    }

    async fn open(&self) -> PostgresBackend {
        self.config
            .clone()
            .build()
            .await
            .unwrap_or_else(|error| panic!("cannot open the test schema: {error}"))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, schema) = (
            self.config.url().to_string(),
            self.config.schema().to_string(),
        );
        // A runtime of its own, on a thread of its own: this may run on a
        // runtime thread, which must not block on async work.
        let dropped = std::thread::spawn(move || {
            use sqlx::Connection;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the schema's cleanup");
            runtime.block_on(async {
                let mut connection = sqlx::PgConnection::connect(&url).await?;
                sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .execute(&mut connection)
                    .await
                    .map(|_| ())
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!(
                "could not drop test schema {}: {error}",
                self.config.schema()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_round_on_postgres_is_reported_durable_up_to_the_goal() {
    let Some(schema) = Schema::fresh("every_round_on_postgres_is_reported_durable_up_to_the_goal")
    else {
        return;
    };
    // One pool for every round, as the benchmark shares one.
    let backend = schema.open().await;
    rounds(|| backend.clone()).await;
}
