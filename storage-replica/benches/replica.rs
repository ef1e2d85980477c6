//! The key-value ingestion's durable throughput through a replica (1 and 2
//! workers, in this process, through a real controller), against direct
//! `compare_and_append` of the same batches (one per tick) on the same
//! backend, measured in the same run.
//!
//! A sample through the replica is the time from connecting the replica
//! until the controller has heard that `TICKS` ticks are durable (start-up
//! of the dataflow included); the baseline is the time of the same
//! `TICKS` appends, generated beforehand, one after another.
//!
//! Backends: memory always; PostgreSQL when `TIDEMARK_TEST_POSTGRES_URL` is
//! set; S3 when `TIDEMARK_BENCH_S3_URL` names a bucket URL (credentials from
//! the environment). `cargo bench -p tidemark-storage-replica --bench replica`.
//!
//! Every run writes where no earlier run wrote: a memory store named after
//! the process, a new PostgreSQL schema (dropped at the end), a new key
//! prefix under the S3 URL's. SUBTLE: the controller keeps its collections'
//! shards in durable metadata, so on a store an earlier run used, ingestion
//! `u1` would find its old shard already past the goal and a sample would
//! measure nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_storage_types::WriteFence;

use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_controller::protocol::ClusterReplicaLocation;
use tidemark_storage_controller::{
    Controller, ControllerConfig, InProcessTransport, StorageController,
};
use tidemark_storage_replica::generator::{Generator, tick_time};
use tidemark_storage_replica::{Replica, ReplicaConfig};
use tidemark_storage_types::{
    CollectionDescription, DataSource, GlobalId, IdempotencyToken, IngestionDescription,
    LoadGenerator, PersistBackend, ShardId, SourceConnection, StorageInstanceId, Update,
};
use timely::progress::Antichain;
use tokio::runtime::Runtime;

const TICKS: u64 = 100;
const BATCH: u32 = 1_000;
const SAMPLES: usize = 3;
const INSTANCE: StorageInstanceId = StorageInstanceId(1);

fn generator() -> LoadGenerator {
    LoadGenerator::KeyValue {
        keys: 10_000,
        value_size: 64,
        batch_size: BATCH,
        seed: 7,
    }
}

fn description() -> IngestionDescription {
    IngestionDescription {
        instance_id: INSTANCE,
        connection: SourceConnection::LoadGenerator {
            generator: generator(),
            tick: Duration::ZERO,
        },
        remap_collection_id: None,
        source_exports: BTreeMap::new(),
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// One run through a replica of `workers` workers: the time until `TICKS`
/// ticks of a fresh ingestion `id` are durable and reported.
async fn through_replica<B>(backend: B, workers: usize, id: GlobalId) -> Duration
where
    B: PersistBackend<u64> + Clone,
{
    let transport = InProcessTransport::<u64>::new();
    let listener = transport.listen("bench");
    let mut controller =
        Controller::with_transport(backend, ControllerConfig::default(), transport)
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
    let relation = Generator::relations(&generator())[0].1.clone();
    controller
        .create_collections(vec![(
            id,
            CollectionDescription::new(relation, DataSource::Ingestion(description())),
        )])
        .await
        .expect("the ingestion is created");
    controller.initialization_complete();
    let started = Instant::now();
    controller.connect_replica(INSTANCE, ClusterReplicaLocation::single("bench"));
    let goal = tick_time::<u64>(TICKS).expect("a time");
    let wait = async {
        while controller
            .collection(id)
            .expect("the ingestion")
            .write_frontier
            .less_than(&goal)
        {
            controller.ready().await;
            controller.process().await.expect("process succeeds");
        }
    };
    tokio::time::timeout(Duration::from_secs(600), wait)
        .await
        .expect("the replica reaches the goal within ten minutes");
    let elapsed = started.elapsed();
    serving.abort();
    let _ = serving.await;
    elapsed
}

/// The same ticks' batches, appended directly to a fresh shard.
async fn direct<B: PersistBackend<u64>>(backend: &B, batches: &[Vec<Update<u64>>]) -> Duration {
    let shard = ShardId::new();
    backend.open(shard).await.expect("open");
    let started = Instant::now();
    for (tick, batch) in (0u64..).zip(batches) {
        backend
            .compare_and_append(
                shard,
                batch.clone(),
                Antichain::from_elem(tick),
                Antichain::from_elem(tick + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .expect("append")
            .expect("the upper matches");
    }
    started.elapsed()
}

fn batches() -> Vec<Vec<Update<u64>>> {
    let generator = Generator::new(&description()).expect("a valid generator");
    (0..TICKS)
        .map(|tick| {
            generator
                .tick(tick)
                .into_iter()
                .flat_map(|(_, rows)| rows)
                .map(|(row, diff)| Update::new(row, tick, diff))
                .collect()
        })
        .collect()
}

fn run<B, F>(runtime: &Runtime, name: &str, open: F)
where
    B: PersistBackend<u64> + Clone,
    F: Fn() -> B,
{
    let batches = batches();
    let updates: usize = batches.iter().map(Vec::len).sum();
    let per_second = |elapsed: Duration| updates as f64 / elapsed.as_secs_f64();
    let mut raw = Vec::new();
    let mut replica: BTreeMap<usize, Vec<Duration>> = BTreeMap::new();
    let mut next_id = 1;
    for _ in 0..SAMPLES {
        raw.push(runtime.block_on(direct(&open(), &batches)));
        for workers in [1, 2] {
            let id = GlobalId::User(next_id);
            next_id += 1;
            let elapsed = runtime.block_on(through_replica(open(), workers, id));
            replica.entry(workers).or_default().push(elapsed);
        }
    }
    let raw = median(raw);
    println!(
        "{name}: {TICKS} ticks of {BATCH} key-value updates ({updates} updates), median of {SAMPLES}"
    );
    println!(
        "  direct compare_and_append: {:>10.0} updates/s ({raw:?})",
        per_second(raw)
    );
    for (workers, samples) in replica {
        let elapsed = median(samples);
        println!(
            "  replica, {workers} worker(s):    {:>10.0} updates/s ({elapsed:?}); replica/direct throughput {:.2}",
            per_second(elapsed),
            raw.as_secs_f64() / elapsed.as_secs_f64()
        );
    }
}

/// A name no earlier run used: the process id and a random suffix.
fn run_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{}_{}", std::process::id(), &random[..8])
    })
    .clone()
}

/// Drops the benchmark's PostgreSQL schema and everything in it.
async fn drop_schema(url: &str, schema: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut connection)
        .await?;
    connection.close().await
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let memory_name = format!("replica-bench-{}", run_name());
    run(&runtime, "memory", || MemoryBackend::open(&memory_name));
    if let Ok(base) = std::env::var("TIDEMARK_TEST_POSTGRES_URL") {
        let schema = format!("tidemark_replica_bench_{}", run_name());
        let config = tidemark_backend_postgres::PostgresConfig::from_url(&base)
            .expect("TIDEMARK_TEST_POSTGRES_URL is a valid postgres URL")
            .with_schema(schema.clone());
        let url = config.url().to_string();
        let backend = runtime
            .block_on(config.build())
            .expect("the benchmark schema opens");
        run(&runtime, "postgres", || backend.clone());
        drop(backend);
        if let Err(error) = runtime.block_on(drop_schema(&url, &schema)) {
            println!("postgres: could not drop the benchmark schema {schema}: {error}");
        }
    } else {
        println!("postgres: skipped (TIDEMARK_TEST_POSTGRES_URL is not set)");
    }
    if let Ok(url) = std::env::var("TIDEMARK_BENCH_S3_URL") {
        let config = tidemark_backend_s3::S3Config::from_url(&url)
            .expect("TIDEMARK_BENCH_S3_URL is a valid s3 URL");
        let prefix = match config.prefix() {
            "" => format!("replica-bench-{}", run_name()),
            base => format!("{base}/replica-bench-{}", run_name()),
        };
        let backend = runtime
            .block_on(config.with_prefix(prefix).build())
            .expect("the benchmark bucket opens");
        run(&runtime, "s3", || backend.clone());
    } else {
        println!("s3: skipped (TIDEMARK_BENCH_S3_URL is not set)");
    }
}
