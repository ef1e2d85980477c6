//! S3 backend benchmarks against the server named by
//! `TIDEMARK_TEST_S3_ENDPOINT`, each as a ratio against raw aws-sdk-s3
//! calls to the same server in the same run (absolute times are noise).
//!
//! - small append (10 updates) latency / one raw PUT of the same bytes
//!   (goal <= 1.2: the batch is stored inline in the state, so the append
//!   is one conditional PUT; decision 064);
//! - raw parallel GETs of the same bytes / snapshot of a 1,000,000-update
//!   shard (goal >= 0.8), for the `Vec` snapshot and for the same snapshot
//!   read as a stream of chunks;
//! - appends per second on one shard from 8 concurrent writers, next to
//!   raw conditional PUTs per second on one key from 8 writers.
//!
//! The small append also prints its own work before the request (timed
//! without one), this process's CPU per request, a raw PUT from a client
//! set up like the backend's, and the same append through the commit log
//! (one new-key PUT of a log entry, decision 118) against the raw PUT.
//!
//! Run with `cargo bench -p tidemark-backend-s3 --bench s3`; names after
//! `--` (`small-append`, `small-snapshot`, `snapshot`, `writers`) run only
//! those sections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tidemark_storage_types::WriteFence;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use tidemark_backend_conformance::service_env;
use tidemark_backend_s3::{S3Backend, S3Config};
use tidemark_storage_types::{
    Batch, ChunkLimit, Datum, IdempotencyToken, PersistBackend, ReadShare, Row, ShardId, Update,
    decode_batch, encode_batch,
};
use timely::progress::Antichain;

const BUCKET: &str = "tidemark-bench";
const ACCESS_KEY_ID: &str = "tidemark-bench";
const SECRET_ACCESS_KEY: &str = "tidemark-bench-secret";

/// The bench's credentials: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
/// when set (a server with its own identities), else the bench's own.
fn credentials() -> (String, String) {
    let var =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    (
        var("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        var("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
    )
}
const SMALL_APPENDS: usize = 200;
/// Small appends between two compactions (not timed), as a controller's
/// background compaction would interleave them: compaction moves inline
/// batches out of the state.
const SMALL_APPENDS_PER_COMPACTION: usize = 16;
const SNAPSHOT_UPDATES: usize = 1_000_000;
const SNAPSHOT_ROUNDS: usize = 5;
const SMALL_SNAPSHOT_ROUNDS: usize = 50;
const WRITERS: usize = 8;
const WRITE_SECONDS: u64 = 5;

fn row(value: usize) -> Row {
    Row::pack([Datum::Int64(value as i64), Datum::String("bench-payload")])
}

fn frontier(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

fn raw_client(endpoint: &str) -> Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            credentials().0,
            credentials().1,
            None,
            None,
            "tidemark-bench",
        ))
        .build();
    Client::from_conf(config)
}

/// Busy and total CPU time of the whole machine so far, in clock ticks
/// (`/proc/stat`), and this process's CPU time (`/proc/self/stat`): how
/// much of the cores an interval used, and how much of it was this
/// process rather than the server.
fn cpu_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the parenthesized name start at field 3 (the
    // state); utime and stime are fields 14 and 15.
    let after_name: Vec<&str> = own
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |number: usize| -> u64 {
        after_name
            .get(number - 3)
            .and_then(|field| field.parse().ok())
            .unwrap_or(0)
    };
    let own_ticks = field(14) + field(15);
    (total - idle, total, own_ticks)
}

/// The cores busy over an interval (busy ticks / total ticks x cores) and
/// the share of that busy time that was this process.
fn cpu_use(before: (u64, u64, u64), after: (u64, u64, u64)) -> (f64, f64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1).max(1) as f64;
    let own = after.2.saturating_sub(before.2) as f64;
    (busy / total * cores, own / busy.max(1.0))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn backend(endpoint: &str, prefix: &str) -> S3Backend {
    S3Config::new(BUCKET)
        .with_prefix(prefix)
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_path_style(true)
        .with_credentials(credentials().0, credentials().1)
        .with_poll_interval(Duration::from_millis(1), Duration::from_millis(20))
        .build()
        .await
        .expect("backend on the bench bucket")
}

/// A raw client set up as the backend sets up its own (shared config
/// loader, timeouts, retries), to tell the SDK setup's cost from the
/// backend's work.
async fn raw_client_like_backend(endpoint: &str, backend: &S3Backend) -> Client {
    use aws_sdk_s3::config::retry::RetryConfig;
    use aws_sdk_s3::config::timeout::TimeoutConfig;
    let config = backend.config();
    let shared = aws_config::defaults(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            credentials().0,
            credentials().1,
            None,
            None,
            "tidemark-bench",
        ))
        .load()
        .await;
    let s3_config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .endpoint_url(endpoint)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(config.connect_timeout())
                .operation_timeout(config.operation_timeout())
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts()))
        .build();
    Client::from_conf(s3_config)
}

/// CPU time this process has used so far, in nanoseconds: the sum over its
/// threads of `/proc/self/task/*/schedstat` (0 where that is missing).
fn process_cpu_nanos() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Latencies and this process's CPU time of one kind of request.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    cpu_nanos: u64,
}

impl Samples {
    /// Runs and times `request`, with the CPU time this process spent.
    async fn time<O>(&mut self, request: impl Future<Output = O>) -> O {
        let cpu = process_cpu_nanos();
        let start = Instant::now();
        let output = request.await;
        self.latencies.push(start.elapsed());
        self.cpu_nanos += process_cpu_nanos().saturating_sub(cpu);
        output
    }

    fn median(&self) -> Duration {
        median(self.latencies.clone())
    }

    /// Mean CPU time of this process per request, in microseconds.
    fn cpu_micros(&self) -> f64 {
        self.cpu_nanos as f64 / 1e3 / self.latencies.len().max(1) as f64
    }
}

fn ten_updates(round: usize) -> Vec<Update<u64>> {
    (0..10)
        .map(|i| Update::new(row(round * 10 + i), round as u64, 1))
        .collect()
}

/// A raw PUT of `body` to a new key.
async fn raw_put(raw: &Client, prefix: &str, body: Vec<u8>) {
    let key = format!("{prefix}/raw/{}", uuid::Uuid::new_v4());
    raw.put_object()
        .bucket(BUCKET)
        .key(&key)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap();
}

/// Creates `key` with a short body; its ETag.
async fn raw_create(raw: &Client, key: &str) -> String {
    raw.put_object()
        .bucket(BUCKET)
        .key(key)
        .body(ByteStream::from(b"state".to_vec()))
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap_or_default()
        .to_string()
}

/// A raw PUT of `body` over `key` iff its ETag is `etag`; the new ETag.
async fn raw_overwrite(raw: &Client, key: &str, etag: &str, body: Vec<u8>) -> String {
    raw.put_object()
        .bucket(BUCKET)
        .key(key)
        .if_match(etag)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap_or_default()
        .to_string()
}

/// The bytes of a batch of `updates` as the codec encodes it.
fn batch_bytes(updates: &[Update<u64>], time: u64) -> Vec<u8> {
    encode_batch(&Batch {
        lower: frontier(time),
        upper: frontier(time + 1),
        since: frontier(time),
        updates: updates.to_vec(),
    })
    .expect("small rows encode")
}

/// Small append latency against one raw PUT of the same bytes, interleaved;
/// the same for an append through the commit log.
async fn small_appends(endpoint: &str, prefix: &str, raw: &Client) {
    let backend = backend(endpoint, prefix).await;
    let like_backend = raw_client_like_backend(endpoint, &backend).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let mut appends = Samples::default();
    let mut puts = Samples::default();
    let mut puts_like_backend = Samples::default();
    let mut overwrites = Samples::default();
    let mut small_overwrites = Samples::default();
    let mut encodes = Samples::default();
    let cas_key = format!("{prefix}/raw-state");
    let small_cas_key = format!("{prefix}/raw-small-state");
    let mut etag = raw_create(raw, &cas_key).await;
    let mut small_etag = raw_create(raw, &small_cas_key).await;
    let state_key = format!(
        "{}state",
        backend.parts_prefix(shard).trim_end_matches("batches/")
    );
    let mut state_sizes = Vec::new();
    let mut batch_sizes = Vec::new();
    let puts_before = backend.object_puts();
    for round in 0..SMALL_APPENDS {
        let time = round as u64;
        let updates = ten_updates(round);
        let bytes = batch_bytes(&updates, time);
        batch_sizes.push(bytes.len());
        puts.time(raw_put(raw, prefix, bytes.clone())).await;
        puts_like_backend
            .time(raw_put(&like_backend, prefix, bytes.clone()))
            .await;
        // An overwrite of a body as small as the batch: what replacing a key
        // costs on this server, apart from the body's size.
        small_etag = small_overwrites
            .time(raw_overwrite(raw, &small_cas_key, &small_etag, bytes))
            .await;
        // The raw overwrite writes as many bytes as the shard's state object
        // holds now (its tokens and inline batches), measured untimed.
        let state_bytes = raw
            .head_object()
            .bucket(BUCKET)
            .key(&state_key)
            .send()
            .await
            .unwrap()
            .content_length()
            .unwrap_or_default();
        state_sizes.push(state_bytes);
        let mut state_body = format!("state {round} ").into_bytes();
        state_body.resize(usize::try_from(state_bytes).unwrap_or_default(), b'x');
        etag = overwrites
            .time(raw_overwrite(raw, &cas_key, &etag, state_body))
            .await;
        // The append's own work before its request, on the state it will
        // commit on, writing nothing.
        let encoded = encodes
            .time(async {
                backend.encode_small_append(
                    shard,
                    updates.clone(),
                    &frontier(time),
                    &frontier(time + 1),
                )
            })
            .await
            .unwrap();
        assert!(
            round == 0 || encoded.is_some(),
            "a small append on a cached state encodes inline"
        );
        let append = backend.compare_and_append(
            shard,
            updates,
            frontier(time),
            frontier(time + 1),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        );
        appends.time(append).await.unwrap().unwrap();
        if (round + 1) % SMALL_APPENDS_PER_COMPACTION == 0 {
            PersistBackend::<u64>::compact(&backend, shard)
                .await
                .unwrap();
        }
    }
    let (append, put, overwrite) = (appends.median(), puts.median(), overwrites.median());
    let written = backend.object_puts();
    println!(
        "small append (10 updates): median append {append:?} / median raw PUT {put:?} = ratio {:.2} (goal <= 1.2)",
        append.as_secs_f64() / put.as_secs_f64()
    );
    println!(
        "  ({} conditional and {} unconditional PUTs for {SMALL_APPENDS} appends and their compactions)",
        written.conditional - puts_before.conditional,
        written.unconditional - puts_before.unconditional
    );
    println!(
        "  (raw If-Match overwrite PUT of a body the size of the state ({} to {} bytes) {overwrite:?}, ratio {:.2} to one new-key PUT; append / overwrite = {:.2})",
        state_sizes.iter().min().unwrap_or(&0),
        state_sizes.iter().max().unwrap_or(&0),
        overwrite.as_secs_f64() / put.as_secs_f64(),
        append.as_secs_f64() / overwrite.as_secs_f64()
    );
    println!(
        "  (raw If-Match overwrite of a body the size of the batch {:?}, ratio {:.2} to one new-key PUT)",
        small_overwrites.median(),
        small_overwrites.median().as_secs_f64() / put.as_secs_f64()
    );
    let encode = encodes.median();
    println!(
        "  (the append's own work before its request, no request: median {encode:?} = {:.1}% of the raw PUT; batch {} to {} bytes)",
        encode.as_secs_f64() / put.as_secs_f64() * 100.0,
        batch_sizes.iter().min().unwrap_or(&0),
        batch_sizes.iter().max().unwrap_or(&0),
    );
    println!(
        "  (raw new-key PUT from a client set up like the backend's: median {:?}, ratio {:.2} to the bench's raw PUT)",
        puts_like_backend.median(),
        puts_like_backend.median().as_secs_f64() / put.as_secs_f64()
    );
    println!(
        "  (this process's CPU per request: append {:.0} us, raw PUT {:.0} us, same from the backend-like client {:.0} us, raw overwrite {:.0} us, encoding alone {:.0} us)",
        appends.cpu_micros(),
        puts.cpu_micros(),
        puts_like_backend.cpu_micros(),
        overwrites.cpu_micros(),
        encodes.cpu_micros()
    );
    small_log_appends(endpoint, &format!("{prefix}/log"), raw).await;
}

/// Small appends through the commit log (decision 118): each is one new-key
/// conditional PUT of a log entry, against one raw new-key PUT of the
/// batch's bytes, interleaved.
async fn small_log_appends(endpoint: &str, prefix: &str, raw: &Client) {
    let backend = S3Backend::builder(
        S3Config::new(BUCKET)
            .with_prefix(prefix)
            .with_endpoint(endpoint)
            .with_region("us-east-1")
            .with_path_style(true)
            .with_credentials(credentials().0, credentials().1)
            .with_poll_interval(Duration::from_millis(1), Duration::from_millis(20))
            .with_commit_log(true),
    )
    .build()
    .await
    .expect("log-mode backend on the bench bucket");
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let mut appends = Samples::default();
    let mut puts = Samples::default();
    let puts_before = backend.object_puts();
    for round in 0..SMALL_APPENDS {
        let time = round as u64;
        let updates = ten_updates(round);
        puts.time(raw_put(raw, prefix, batch_bytes(&updates, time)))
            .await;
        let append = backend.compare_and_append(
            shard,
            updates,
            frontier(time),
            frontier(time + 1),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        );
        appends.time(append).await.unwrap().unwrap();
        if (round + 1) % SMALL_APPENDS_PER_COMPACTION == 0 {
            // Untimed, as background work: fold the log into the state.
            backend.wait_for_background_writes().await;
            PersistBackend::<u64>::compact(&backend, shard)
                .await
                .unwrap();
        }
    }
    let written = backend.object_puts();
    let (append, put) = (appends.median(), puts.median());
    println!(
        "small append through the commit log (10 updates): median append {append:?} / median raw PUT {put:?} = ratio {:.2} (goal <= 1.2; {} conditional and {} unconditional PUTs for {SMALL_APPENDS} appends, the log's folding and compactions; CPU per append {:.0} us, per raw PUT {:.0} us)",
        append.as_secs_f64() / put.as_secs_f64(),
        written.conditional - puts_before.conditional,
        written.unconditional - puts_before.unconditional,
        appends.cpu_micros(),
        puts.cpu_micros()
    );
}

/// Snapshot of a 1,000,000-update shard against raw parallel GETs of its
/// parts.
async fn big_snapshot(endpoint: &str, prefix: &str, raw: &Client) {
    let backend = backend(endpoint, prefix).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let chunks = 4;
    let per_chunk = SNAPSHOT_UPDATES / chunks;
    for chunk in 0..chunks {
        let time = chunk as u64;
        let updates = (chunk * per_chunk..(chunk + 1) * per_chunk)
            .map(|i| Update::new(row(i), time, 1))
            .collect();
        backend
            .compare_and_append(
                shard,
                updates,
                frontier(time),
                frontier(time + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
    }
    PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    let keys = backend.part_keys(shard).await.unwrap();
    let concurrency = backend.config().concurrency();
    let as_of = chunks as u64 - 1;
    let mut snapshots = Vec::new();
    let mut gets = Vec::new();
    let mut decodes = Vec::new();
    let mut streams = Vec::new();
    let mut total_bytes = 0;
    let mut get_cpu = Vec::new();
    let mut stream_cpu = Vec::new();
    for _ in 0..SNAPSHOT_ROUNDS {
        let cpu_before = cpu_ticks();
        let start = Instant::now();
        let fetched: Vec<bytes::Bytes> = futures::stream::iter(keys.iter().cloned())
            .map(|key| {
                let raw = raw.clone();
                async move {
                    let object = raw
                        .get_object()
                        .bucket(BUCKET)
                        .key(key)
                        .send()
                        .await
                        .unwrap();
                    object.body.collect().await.unwrap().into_bytes()
                }
            })
            .buffered(concurrency)
            .collect()
            .await;
        gets.push(start.elapsed());
        get_cpu.push(cpu_use(cpu_before, cpu_ticks()));
        total_bytes = fetched.iter().map(bytes::Bytes::len).sum::<usize>();
        let start = Instant::now();
        let decoded: usize = fetched
            .iter()
            .map(|bytes| decode_batch::<u64>("bench", bytes).unwrap().updates.len())
            .sum();
        decodes.push(start.elapsed());
        assert_eq!(decoded, SNAPSHOT_UPDATES);
        let start = Instant::now();
        let snapshot = backend.snapshot(shard, &as_of).await.unwrap();
        snapshots.push(start.elapsed());
        assert_eq!(snapshot.len(), SNAPSHOT_UPDATES);
        drop(snapshot);
        let cpu_before = cpu_ticks();
        let start = Instant::now();
        let mut stream = backend
            .snapshot_stream(shard, &as_of, ReadShare::WHOLE, ChunkLimit::DEFAULT)
            .await
            .unwrap();
        let mut streamed = 0;
        while let Some(chunk) = stream.next().await {
            streamed += chunk.unwrap().len();
        }
        streams.push(start.elapsed());
        stream_cpu.push(cpu_use(cpu_before, cpu_ticks()));
        assert_eq!(streamed, SNAPSHOT_UPDATES);
    }
    let snapshot = median(snapshots);
    let get = median(gets);
    println!(
        "snapshot of {SNAPSHOT_UPDATES} updates ({} parts, {:.1} MB): median snapshot {snapshot:?}, median raw parallel GETs {get:?}: ratio raw/snapshot {:.2} (goal >= 0.8)",
        keys.len(),
        total_bytes as f64 / 1e6,
        get.as_secs_f64() / snapshot.as_secs_f64()
    );
    let stream = median(streams);
    println!(
        "  streamed snapshot ({} chunks of at most {} entries, each dropped once counted): median {stream:?}: ratio raw/stream {:.2} (goal >= 0.8)",
        SNAPSHOT_UPDATES.div_ceil(ChunkLimit::DEFAULT.max_entries.get()),
        ChunkLimit::DEFAULT.max_entries,
        get.as_secs_f64() / stream.as_secs_f64()
    );
    println!(
        "  (decoding the same parts on one thread, no fetch: median {:?})",
        median(decodes)
    );
    let show = |samples: &[(f64, f64)]| {
        samples
            .iter()
            .map(|(cores, own)| format!("{cores:.2} cores ({:.0}% this process)", own * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  cores busy during the raw GETs: {}", show(&get_cpu));
    println!(
        "  cores busy during the streamed snapshot: {}",
        show(&stream_cpu)
    );
}

/// Snapshots of a small shard (2,000 updates in two appends, one part
/// each): the `Vec` read against the stream collected, interleaved.
async fn small_snapshot(endpoint: &str, prefix: &str) {
    let backend = backend(endpoint, prefix).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    for time in 0..2u64 {
        let updates = (0..1000)
            .map(|i| Update::new(row(time as usize * 1000 + i), time, 1))
            .collect();
        backend
            .compare_and_append(
                shard,
                updates,
                frontier(time),
                frontier(time + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
    }
    let (mut vecs, mut streams) = (Vec::new(), Vec::new());
    for _ in 0..SMALL_SNAPSHOT_ROUNDS {
        let start = Instant::now();
        let rows = backend.snapshot(shard, &1).await.unwrap();
        vecs.push(start.elapsed());
        assert_eq!(rows.len(), 2000);
        let start = Instant::now();
        let stream = backend
            .snapshot_stream(shard, &1, ReadShare::WHOLE, ChunkLimit::DEFAULT)
            .await
            .unwrap();
        let rows = tidemark_storage_types::collect_stream(stream)
            .await
            .unwrap();
        streams.push(start.elapsed());
        assert_eq!(rows.len(), 2000);
    }
    let (vec, stream) = (median(vecs), median(streams));
    println!(
        "small snapshot (2,000 updates, 2 parts): median Vec read {vec:?}, median collected stream {stream:?}: stream / Vec {:.2}",
        stream.as_secs_f64() / vec.as_secs_f64()
    );
}

/// Appends per second on one shard from several writers, next to raw
/// conditional PUTs per second on one key from as many writers.
async fn concurrent_writers(endpoint: &str, prefix: &str, raw: &Client) {
    let shard = ShardId::new();
    let first = backend(endpoint, prefix).await;
    PersistBackend::<u64>::open(&first, shard).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let backend = backend(endpoint, prefix).await;
        let (stop, committed, lost, errors) = (
            stop.clone(),
            committed.clone(),
            lost.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut upper = 0u64;
            let mut sequence = 0;
            let mut token = IdempotencyToken::new();
            while !stop.load(Ordering::Relaxed) {
                let updates = (0..10)
                    .map(|i| Update::new(row(writer * 1_000_000 + sequence * 10 + i), upper, 1))
                    .collect();
                match backend
                    .compare_and_append(
                        shard,
                        updates,
                        frontier(upper),
                        frontier(upper + 1),
                        token,
                        WriteFence::Unfenced,
                    )
                    .await
                {
                    Ok(Ok(())) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                        upper += 1;
                        sequence += 1;
                        token = IdempotencyToken::new();
                    }
                    Ok(Err(mismatch)) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                        upper = mismatch.current.elements()[0];
                        token = IdempotencyToken::new();
                    }
                    // A server error: retry the same append with the same
                    // token, as a caller must after an indeterminate outcome.
                    Err(err) if !err.is_determinate() => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => panic!("append failed: {err}"),
                }
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(WRITE_SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let appends_per_second = committed.load(Ordering::Relaxed) as f64 / elapsed;
    let upper = PersistBackend::<u64>::frontiers(&first, shard)
        .await
        .unwrap()
        .upper;
    assert_eq!(upper, frontier(committed.load(Ordering::Relaxed)));

    // Raw baseline: 8 writers racing conditional PUTs (If-Match) on one key.
    let key = format!("{prefix}/raw-cas");
    raw.put_object()
        .bucket(BUCKET)
        .key(&key)
        .body(ByteStream::from(b"0".to_vec()))
        .send()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let raw_committed = Arc::new(AtomicU64::new(0));
    let raw_errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (raw, key, stop, raw_committed, raw_errors) = (
            raw.clone(),
            key.clone(),
            stop.clone(),
            raw_committed.clone(),
            raw_errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(current) = raw.get_object().bucket(BUCKET).key(&key).send().await else {
                    raw_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let etag = current.e_tag().unwrap_or_default().to_string();
                let body = current.body.collect().await.unwrap().into_bytes();
                let next: u64 = std::str::from_utf8(&body).unwrap().parse::<u64>().unwrap() + 1;
                let put = raw
                    .put_object()
                    .bucket(BUCKET)
                    .key(&key)
                    .if_match(etag)
                    .body(ByteStream::from(next.to_string().into_bytes()))
                    .send()
                    .await;
                if put.is_ok() {
                    raw_committed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(WRITE_SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let raw_per_second =
        raw_committed.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{WRITERS} concurrent writers on one shard: {appends_per_second:.1} appends/s ({} lost races, {} server errors retried); raw GET+If-Match PUT cycles on one key from {WRITERS} writers: {raw_per_second:.1}/s ({} server errors); ratio {:.2}",
        lost.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        raw_errors.load(Ordering::Relaxed),
        appends_per_second / raw_per_second
    );
}

/// Whether the section `name` runs: every section when no names are given
/// (`cargo bench -p tidemark-backend-s3 --bench s3 -- small-append writers`
/// runs two).
fn selected(name: &str) -> bool {
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    names.is_empty() || names.iter().any(|selected| selected == name)
}

fn main() {
    let Some(endpoint) = service_env("TIDEMARK_TEST_S3_ENDPOINT", "s3 benchmark") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let raw = raw_client(&endpoint);
        if raw.head_bucket().bucket(BUCKET).send().await.is_err() {
            raw.create_bucket()
                .bucket(BUCKET)
                .send()
                .await
                .expect("create the bench bucket");
        }
        let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
        if selected("small-append") {
            small_appends(&endpoint, &format!("{prefix}/small"), &raw).await;
        }
        if selected("small-snapshot") {
            small_snapshot(&endpoint, &format!("{prefix}/small-snapshot")).await;
        }
        if selected("snapshot") {
            big_snapshot(&endpoint, &format!("{prefix}/snapshot"), &raw).await;
        }
        if selected("writers") {
            concurrent_writers(&endpoint, &format!("{prefix}/writers"), &raw).await;
        }
    });
}
