//! The operators against the backend's own calls, on the memory backend
//! and, when `TIDEMARK_TEST_S3_ENDPOINT` names a server, on S3:
//!
//! - source: a `ShardSource` reading a 1,000,000-update shard's snapshot
//!   to a probe (1 and 2 workers), against `snapshot` of the same shard;
//! - sink: a `ShardSink` writing 1,000,000 updates (10 times of 100,000)
//!   from a differential input, against direct `compare_and_append` of the
//!   same 10 batches.
//!
//! On S3 the shard is compacted before it is read (its 10 appends merged
//! into one batch written by bucket group), as the controller's compaction
//! leaves a shard that has stopped changing.
//!
//! Prints the medians and the ratios (operator / baseline), measured in
//! the same run. `cargo bench -p tidemark-storage-dataflow --bench dataflow`.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_storage_types::WriteFence;

use differential_dataflow::input::Input;
use tidemark_backend_memory::MemoryBackend;
use tidemark_backend_s3::{S3Backend, S3Config};
use tidemark_storage_dataflow::{ShardSink, ShardSource};
use tidemark_storage_types::{Datum, IdempotencyToken, PersistBackend, Row, ShardId, Update};
use timely::progress::Antichain;
use tokio::runtime::Runtime;

const UPDATES: usize = 1_000_000;
const TIMES: u64 = 10;
const SAMPLES: usize = 3;
const S3_BUCKET: &str = "tidemark-dataflow-bench";

fn row(value: usize) -> Row {
    Row::pack([Datum::Int64(value as i64), Datum::String("bench")])
}

fn batch(time: u64) -> Vec<Update<u64>> {
    let per_time = UPDATES / TIMES as usize;
    (0..per_time)
        .map(|index| Update::new(row(time as usize * per_time + index), time, 1))
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn write_batches<B: PersistBackend<u64>>(backend: &B, shard: ShardId) {
    backend.open(shard).await.expect("open");
    for time in 0..TIMES {
        backend
            .compare_and_append(
                shard,
                batch(time),
                Antichain::from_elem(time),
                Antichain::from_elem(time + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .expect("append")
            .expect("upper matches");
    }
}

fn source_time<B: PersistBackend<u64>>(
    runtime: &Runtime,
    backend: &Arc<B>,
    shard: ShardId,
    workers: usize,
) -> Duration {
    let (handle, backend) = (runtime.handle().clone(), Arc::clone(backend));
    let as_of = TIMES - 1;
    let started = Instant::now();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let (collection, _status) =
                ShardSource::new(handle.clone(), Arc::clone(&backend), shard, as_of).build(scope);
            collection.probe().0
        });
        while probe.less_equal(&as_of) {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        for dataflow in worker.installed_dataflows() {
            worker.drop_dataflow(dataflow);
        }
    })
    .expect("timely starts");
    for result in guards.join() {
        result.expect("worker");
    }
    started.elapsed()
}

fn sink_time<B: PersistBackend<u64>>(
    runtime: &Runtime,
    backend: &Arc<B>,
    shard: ShardId,
) -> Duration {
    let (handle, backend) = (runtime.handle().clone(), Arc::clone(backend));
    let batches: Vec<Vec<Update<u64>>> = (0..TIMES).map(batch).collect();
    let started = Instant::now();
    timely::execute_directly(move |worker| {
        let (mut input, status) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, collection) = scope.new_collection::<Row, i64>();
            (
                input,
                ShardSink::new(handle, backend, shard).build(collection),
            )
        });
        for (time, updates) in batches.into_iter().enumerate() {
            input.advance_to(time as u64);
            for update in updates {
                input.update(update.row, update.diff);
            }
        }
        input.advance_to(TIMES);
        input.flush();
        while status.frontier() != Antichain::from_elem(TIMES) {
            assert!(
                status.error().is_none(),
                "sink failed: {:?}",
                status.error()
            );
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        for dataflow in worker.installed_dataflows() {
            worker.drop_dataflow(dataflow);
        }
    });
    started.elapsed()
}

/// Every figure on one backend; `compact` runs physical compaction on the
/// written shard before it is read; `downloaded` reads the backend's count
/// of downloaded bytes, where it keeps one.
fn figures<B: PersistBackend<u64>>(
    name: &str,
    runtime: &Runtime,
    backend: Arc<B>,
    compact: bool,
    downloaded: Option<&dyn Fn(&B) -> u64>,
) {
    let shard = ShardId::new();
    runtime.block_on(async {
        write_batches(&*backend, shard).await;
        if compact {
            backend.compact(shard).await.expect("compact");
        }
    });

    let snapshot = median(
        (0..SAMPLES)
            .map(|_| {
                let started = Instant::now();
                let rows = runtime
                    .block_on(backend.snapshot(shard, &(TIMES - 1)))
                    .expect("snapshot");
                assert_eq!(rows.len(), UPDATES);
                started.elapsed()
            })
            .collect(),
    );
    println!("{name} snapshot of {UPDATES} updates: {snapshot:?}");
    let downloads = |backend: &B| downloaded.map(|read| read(backend));
    let before = downloads(&backend);
    runtime
        .block_on(backend.snapshot(shard, &(TIMES - 1)))
        .expect("snapshot");
    let snapshot_bytes = downloads(&backend)
        .zip(before)
        .map(|(after, before)| after - before);
    for workers in [1, 2] {
        let before = downloads(&backend);
        let source = median(
            (0..SAMPLES)
                .map(|_| source_time(runtime, &backend, shard, workers))
                .collect(),
        );
        println!(
            "{name} source, {workers} worker(s), to a probe: {source:?}  ratio source/snapshot = {:.2}",
            source.as_secs_f64() / snapshot.as_secs_f64()
        );
        if let (Some(after), Some(before), Some(whole)) =
            (downloads(&backend), before, snapshot_bytes)
        {
            let per_worker = (after - before) as f64 / (SAMPLES * workers) as f64;
            println!(
                "{name} source, {workers} worker(s): each worker downloaded {per_worker:.0} bytes of parts, \
                 the snapshot {whole}  ratio {:.2}",
                per_worker / whole as f64
            );
        }
    }

    let mut written = vec![shard];
    let direct = median(
        (0..SAMPLES)
            .map(|_| {
                let target = ShardId::new();
                written.push(target);
                let started = Instant::now();
                runtime.block_on(write_batches(&*backend, target));
                started.elapsed()
            })
            .collect(),
    );
    println!("{name} compare_and_append of {TIMES} batches ({UPDATES} updates): {direct:?}");
    let sink = median(
        (0..SAMPLES)
            .map(|_| {
                let target = ShardId::new();
                written.push(target);
                sink_time(runtime, &backend, target)
            })
            .collect(),
    );
    println!(
        "{name} sink of the same updates: {sink:?}  ratio sink/compare_and_append = {:.2}",
        sink.as_secs_f64() / direct.as_secs_f64()
    );
    // What the run wrote is removed (on S3, its part objects).
    runtime.block_on(async {
        for shard in written {
            backend.finalize(shard).await.expect("finalize");
        }
    });
}

/// A backend on a fresh prefix of the S3 server at `endpoint`, with the
/// credentials of `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (the test
/// servers' by default).
async fn s3_backend(endpoint: &str) -> S3Backend {
    let access_key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "tidemark-test".into());
    let secret_key =
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "tidemark-test-secret".into());
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &access_key,
                &secret_key,
                None,
                None,
                "tidemark-dataflow-bench",
            ))
            .build(),
    );
    if client.head_bucket().bucket(S3_BUCKET).send().await.is_err() {
        client
            .create_bucket()
            .bucket(S3_BUCKET)
            .send()
            .await
            .expect("create the bench bucket");
    }
    let prefix = format!("dataflow-bench-{}", std::process::id());
    S3Config::new(S3_BUCKET)
        .with_prefix(&prefix)
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_path_style(true)
        .with_credentials(&access_key, &secret_key)
        .with_poll_interval(Duration::from_millis(1), Duration::from_millis(20))
        .build()
        .await
        .expect("backend on the bench bucket")
}

fn main() {
    let runtime = Runtime::new().expect("tokio runtime");
    figures(
        "memory",
        &runtime,
        Arc::new(MemoryBackend::open("dataflow-bench")),
        false,
        None,
    );
    match std::env::var("TIDEMARK_TEST_S3_ENDPOINT") {
        Ok(endpoint) => {
            let backend = runtime.block_on(s3_backend(&endpoint));
            figures(
                "s3",
                &runtime,
                Arc::new(backend),
                true,
                Some(&|backend: &S3Backend| backend.part_downloads().bytes),
            );
        }
        Err(_) => println!("s3 figures skipped: TIDEMARK_TEST_S3_ENDPOINT is not set"),
    }
}
