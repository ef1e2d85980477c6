//! What the controller adds on top of its backend, as ratios against the
//! backend's own calls measured in the same run, on the same backend:
//!
//! - **append**: `append_durable` of one batch to a table, against
//!   `compare_and_append` of the same batch to a shard of its own; beside
//!   the one-update figure, its floor against the same baseline: the
//!   backend's `compare_and_append_all` of one part (the call the
//!   controller makes) and a bare task hop with its reply;
//! - **snapshot**: `snapshot` of a table, against `snapshot` of the same
//!   shard;
//! - **1,000 collections**: one batch to each of 1,000 tables at once
//!   through one controller (one `append_durable` naming all of them, and
//!   1,000 separate `append` calls awaited together), against 1,000
//!   concurrent `compare_and_append`s to 1,000 shards.
//!
//! Controller and direct samples alternate, so that both see the same load
//! on the machine; each figure is a median.
//!
//! Backends: memory always; PostgreSQL when `TIDEMARK_TEST_POSTGRES_URL` is
//! set (schema `tidemark_controller_bench`; what an earlier run left there
//! is reclaimed at the start and this run's collections are dropped at the
//! end); S3 when `TIDEMARK_TEST_S3_ENDPOINT` is set (credentials from
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, bucket `tidemark-bench`, a
//! prefix of this run's own).
//!
//! `cargo bench -p tidemark-storage-controller --bench overhead`

use std::time::{Duration, Instant};

use futures::future::join_all;
use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_controller::{Controller, ControllerConfig, StorageController};
use tidemark_storage_types::{
    CollectionDescription, Datum, GlobalId, IdempotencyToken, PersistBackend, RelationDesc, Row,
    ScalarType, ShardId, StorageParameters, Update, WriteFence,
};
use timely::progress::Antichain;

/// How much each figure runs on one backend.
struct Sizes {
    /// Appends of each batch size (per side).
    append_rounds: u64,
    /// Snapshots of each shard size (per side).
    snapshot_rounds: usize,
    /// Rounds of the 1,000-collection append (per side and form).
    wide_rounds: u64,
}

const APPEND_BATCHES: [usize; 2] = [1, 1_000];
const SNAPSHOT_ROWS: [usize; 2] = [100, 10_000];
const WIDE_COLLECTIONS: u64 = 1_000;
const WIDE_BATCH: usize = 10;

fn relation() -> RelationDesc {
    RelationDesc::empty()
        .with_column("key", ScalarType::Int64.nullable(false))
        .with_column("value", ScalarType::String.nullable(false))
}

/// `len` distinct updates at `time`.
fn batch(len: usize, time: u64, seed: u64) -> Vec<Update<u64>> {
    (0..len)
        .map(|n| {
            let key = i64::try_from(seed * 1_000_003 + n as u64).expect("key fits");
            let value = format!("value-{key:016}-{time}");
            Update::new(
                Row::pack([Datum::Int64(key), Datum::String(&value)]),
                time,
                1,
            )
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn print_ratio(name: &str, controller: Duration, direct: Duration, goal: &str) {
    println!(
        "  {name:<46} controller {:>10.1} us  direct {:>10.1} us  ratio {:.3}  (goal {goal})",
        controller.as_secs_f64() * 1e6,
        direct.as_secs_f64() * 1e6,
        controller.as_secs_f64() / direct.as_secs_f64()
    );
}

/// Applies what the controller has heard (new uppers), without waiting.
async fn drain<B: PersistBackend<u64>>(controller: &mut Controller<u64, B>) {
    while tokio::time::timeout(Duration::ZERO, controller.ready())
        .await
        .is_ok()
    {
        controller.process().await.expect("process succeeds");
    }
}

async fn create_tables<B: PersistBackend<u64>>(
    controller: &mut Controller<u64, B>,
    ids: &[GlobalId],
) {
    controller
        .create_collections(
            ids.iter()
                .map(|id| (*id, CollectionDescription::table(relation())))
                .collect(),
        )
        .await
        .expect("tables are created");
}

async fn open_shard<B: PersistBackend<u64>>(backend: &B) -> ShardId {
    let shard = ShardId::new();
    backend.open(shard).await.expect("the shard opens");
    shard
}

async fn direct_append<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    updates: Vec<Update<u64>>,
    time: u64,
) {
    backend
        .compare_and_append(
            shard,
            updates,
            Antichain::from_elem(time),
            Antichain::from_elem(time + 1),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .expect("the append succeeds")
        .expect("the upper matches");
}

/// `append_durable` of one batch against `compare_and_append` of it.
async fn append_figure<B: PersistBackend<u64>>(
    controller: &mut Controller<u64, B>,
    next_id: &mut u64,
    sizes: &Sizes,
) {
    for len in APPEND_BATCHES {
        let table = GlobalId::User(*next_id);
        *next_id += 1;
        create_tables(controller, &[table]).await;
        let shard = open_shard(&**controller.backend()).await;
        let mut through_controller = Vec::new();
        let mut direct = Vec::new();
        for time in 0..sizes.append_rounds {
            let updates = batch(len, time, time);
            let copy = updates.clone();

            let started = Instant::now();
            controller
                .append_durable(vec![(table, updates, time + 1)])
                .await
                .expect("the controller's append succeeds");
            through_controller.push(started.elapsed());

            let started = Instant::now();
            direct_append(&**controller.backend(), shard, copy, time).await;
            direct.push(started.elapsed());
            drain(controller).await;
        }
        let direct = median(direct);
        print_ratio(
            &format!("append of {len} update(s)"),
            median(through_controller),
            direct,
            "<= 1.1",
        );
        if len == 1 {
            print_ratio(
                "direct compare_and_append_all of one part",
                append_all_of_one_part(&**controller.backend(), sizes.append_rounds).await,
                direct,
                "none: what the controller's backend call costs",
            );
            print_ratio(
                "floor: a task hop and reply, no backend call",
                task_hop(sizes.append_rounds).await,
                direct,
                "none: the floor of the append ratio",
            );
        }
    }
}

/// The median `compare_and_append_all` of one update to one shard of its
/// own: the call the controller makes for a one-table append.
async fn append_all_of_one_part<B: PersistBackend<u64>>(backend: &B, rounds: u64) -> Duration {
    let shard = open_shard(backend).await;
    let mut samples = Vec::new();
    for time in 0..rounds {
        let part = tidemark_storage_types::ShardAppend {
            shard,
            updates: batch(1, time, time),
            expected_upper: Antichain::from_elem(time),
            new_upper: Antichain::from_elem(time + 1),
        };
        let started = Instant::now();
        backend
            .compare_and_append_all(vec![part], IdempotencyToken::new(), WriteFence::Unfenced)
            .await
            .expect("the append succeeds")
            .expect("the upper matches");
        samples.push(started.elapsed());
    }
    median(samples)
}

/// The median round trip of a request to a task of its own and its
/// reply, with no work in between: what handing an append to the write
/// task costs before the task does anything.
async fn task_hop(rounds: u64) -> Duration {
    let (requests, mut received) =
        tokio::sync::mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<()>>();
    let task = tokio::spawn(async move {
        while let Some(reply) = received.recv().await {
            let _ = reply.send(());
        }
    });
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let (reply, answered) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        requests.send(reply).expect("the task receives");
        answered.await.expect("the task replies");
        samples.push(started.elapsed());
    }
    drop(requests);
    task.await.expect("the task ends");
    median(samples)
}

/// `snapshot` through the controller against the backend's `snapshot` of
/// the same shard.
async fn snapshot_figure<B: PersistBackend<u64>>(
    controller: &mut Controller<u64, B>,
    next_id: &mut u64,
    sizes: &Sizes,
) {
    for rows in SNAPSHOT_ROWS {
        let table = GlobalId::User(*next_id);
        *next_id += 1;
        create_tables(controller, &[table]).await;
        // Ten appends, read at the last time.
        for time in 0..10 {
            controller
                .append_durable(vec![(table, batch(rows / 10, time, time), time + 1)])
                .await
                .expect("the table is written");
        }
        drain(controller).await;
        let as_of = 9;
        let shard = controller
            .collection(table)
            .expect("the table exists")
            .collection_metadata
            .data_shard;
        let mut through_controller = Vec::new();
        let mut direct = Vec::new();
        for _ in 0..sizes.snapshot_rounds {
            let started = Instant::now();
            let read = controller
                .snapshot(table, as_of)
                .await
                .expect("the controller's snapshot succeeds");
            through_controller.push(started.elapsed());
            assert_eq!(read.len(), rows / 10 * 10);

            let started = Instant::now();
            let read = controller
                .backend()
                .snapshot(shard, &as_of)
                .await
                .expect("the backend's snapshot succeeds");
            direct.push(started.elapsed());
            assert_eq!(read.len(), rows / 10 * 10);
        }
        print_ratio(
            &format!("snapshot of {rows} rows"),
            median(through_controller),
            median(direct),
            "<= 1.05",
        );
    }
}

/// One batch to each of 1,000 tables at once, through the controller (one
/// call, and one call per table) and directly.
async fn wide_figure<B: PersistBackend<u64>>(
    controller: &mut Controller<u64, B>,
    next_id: &mut u64,
    sizes: &Sizes,
) {
    let tables: Vec<GlobalId> = (0..WIDE_COLLECTIONS)
        .map(|n| GlobalId::User(*next_id + n))
        .collect();
    *next_id += WIDE_COLLECTIONS;
    create_tables(controller, &tables).await;
    let backend = std::sync::Arc::clone(controller.backend());
    let shards = join_all((0..WIDE_COLLECTIONS).map(|_| open_shard(&*backend))).await;
    let mut one_call = Vec::new();
    let mut many_calls = Vec::new();
    let mut direct = Vec::new();
    let batches = |time: u64| -> Vec<Vec<Update<u64>>> {
        (0..WIDE_COLLECTIONS)
            .map(|n| batch(WIDE_BATCH, time, n))
            .collect()
    };
    // The tables' next time (two appends a round); the shards' is the
    // round's.
    let mut table_time = 0;
    for shard_time in 0..sizes.wide_rounds {
        let commands = tables
            .iter()
            .zip(batches(table_time))
            .map(|(id, updates)| (*id, updates, table_time + 1))
            .collect();
        let started = Instant::now();
        controller
            .append_durable(commands)
            .await
            .expect("the controller's append succeeds");
        one_call.push(started.elapsed());
        drain(controller).await;
        table_time += 1;

        let commands: Vec<_> = tables.iter().zip(batches(table_time)).collect();
        let started = Instant::now();
        let receivers: Vec<_> = commands
            .into_iter()
            .map(|(id, updates)| {
                controller
                    .append(vec![(*id, updates, table_time + 1)])
                    .expect("the append is accepted")
            })
            .collect();
        for result in join_all(receivers).await {
            result
                .expect("the write task answers")
                .expect("the controller's append succeeds");
        }
        many_calls.push(started.elapsed());
        drain(controller).await;
        table_time += 1;

        let batches = batches(shard_time);
        let started = Instant::now();
        join_all(
            shards
                .iter()
                .zip(batches)
                .map(|(shard, updates)| direct_append(&*backend, *shard, updates, shard_time)),
        )
        .await;
        direct.push(started.elapsed());
    }
    let direct = median(direct);
    print_ratio(
        &format!("{WIDE_COLLECTIONS} tables x {WIDE_BATCH} updates, one call"),
        median(one_call),
        direct,
        "none set",
    );
    print_ratio(
        &format!("{WIDE_COLLECTIONS} tables x {WIDE_BATCH} updates, one call each"),
        median(many_calls),
        direct,
        "none set",
    );
}

async fn run<B: PersistBackend<u64>>(name: &str, backend: B, sizes: &Sizes) {
    let config = ControllerConfig {
        parameters: StorageParameters {
            physical_compaction: Some(false),
            ..StorageParameters::default()
        },
        ..ControllerConfig::default()
    };
    let mut controller = Controller::<u64, _>::new(backend, config)
        .await
        .expect("the controller starts");
    // Nothing is created yet: this reclaims whatever an earlier run left.
    controller
        .try_reconcile_state()
        .await
        .expect("reconciliation succeeds");
    println!("{name}:");
    let mut next_id = 1;
    append_figure(&mut controller, &mut next_id, sizes).await;
    snapshot_figure(&mut controller, &mut next_id, sizes).await;
    wide_figure(&mut controller, &mut next_id, sizes).await;
    let ids: Vec<GlobalId> = controller.collections().map(|(id, _)| *id).collect();
    controller
        .drop_sources(ids)
        .expect("the benchmark's tables drop");
    controller.flush().await;
    drain(&mut controller).await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let memory = Sizes {
        append_rounds: 400,
        snapshot_rounds: 41,
        wide_rounds: 11,
    };
    let memory_name = format!("controller-overhead-bench-{}", std::process::id());
    runtime.block_on(run("memory", MemoryBackend::open(&memory_name), &memory));
    if let Ok(base) = std::env::var("TIDEMARK_TEST_POSTGRES_URL") {
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}schema=tidemark_controller_bench");
        let backend = runtime
            .block_on(tidemark_backend_postgres::PostgresBackend::from_url(&url))
            .expect("the benchmark schema opens");
        let postgres = Sizes {
            append_rounds: 101,
            snapshot_rounds: 21,
            wide_rounds: 5,
        };
        runtime.block_on(run("postgres", backend, &postgres));
    } else {
        println!("postgres: skipped (TIDEMARK_TEST_POSTGRES_URL is not set)");
    }
    if let Ok(endpoint) = std::env::var("TIDEMARK_TEST_S3_ENDPOINT") {
        let backend = runtime.block_on(s3_backend(&endpoint));
        let s3 = Sizes {
            append_rounds: 41,
            snapshot_rounds: 11,
            wide_rounds: 3,
        };
        runtime.block_on(run("s3", backend, &s3));
    } else {
        println!("s3: skipped (TIDEMARK_TEST_S3_ENDPOINT is not set)");
    }
}

/// The bucket the S3 figures use (created if missing).
const BUCKET: &str = "tidemark-bench";

/// An S3 store under a prefix of this run's own in [`BUCKET`].
async fn s3_backend(endpoint: &str) -> tidemark_backend_s3::S3Backend {
    let access = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "tidemark-test".into());
    let secret =
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "tidemark-test-secret".into());
    let credentials = aws_sdk_s3::config::Credentials::new(&access, &secret, None, None, "bench");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(credentials)
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    if client.head_bucket().bucket(BUCKET).send().await.is_err() {
        client
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("the bench bucket exists");
    }
    let prefix = format!(
        "controller-overhead-{}-{}",
        std::process::id(),
        ShardId::new()
    );
    tidemark_backend_s3::S3Config::new(BUCKET)
        .with_prefix(&prefix)
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_path_style(true)
        .with_credentials(&access, &secret)
        .with_poll_interval(Duration::from_millis(1), Duration::from_millis(20))
        .build()
        .await
        .expect("the S3 benchmark store opens")
}
