//! Peak memory of streamed reads and compaction on a large shard, against
//! the S3 server at `TIDEMARK_TEST_S3_ENDPOINT`.
//!
//! The benchmark builds a shard of `TIDEMARK_BENCH_RSS_UPDATES` updates
//! (default 1,000,000; the goal is stated for 10,000,000) with large
//! appends, then runs each operation in a process of its own (this binary,
//! started again) and reports the growth of its peak resident set (`VmHWM`
//! at the end less `VmRSS` before the operation, from `/proc/self/status`):
//!
//! - a snapshot read as a stream, each chunk dropped once counted;
//! - a fetch from the since to the upper (what a subscription reads), the
//!   same way;
//! - a compaction (all the appended batches merged into one);
//! - the snapshot and the fetch again, on the compacted shard.
//!
//! Each figure is also given as a ratio to the shard's stored bytes,
//! measured in the same run: the memory a read holding the whole shard
//! would need is at least that.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tidemark_backend_conformance::service_env;
use tidemark_backend_s3::{S3Backend, S3Config};
use tidemark_storage_types::{
    ChunkLimit, Datum, IdempotencyToken, PersistBackend, ReadShare, Row, ShardId, Update,
    WriteFence,
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
/// Updates per append while building the shard.
const APPEND_UPDATES: usize = 1_000_000;
const DEFAULT_UPDATES: usize = 1_000_000;
const GOAL_MIB: f64 = 512.0;
/// Set in a child process: the operation to measure.
const CHILD_OPERATION: &str = "TIDEMARK_BENCH_RSS_OPERATION";
const CHILD_PREFIX: &str = "TIDEMARK_BENCH_RSS_PREFIX";
const CHILD_SHARD: &str = "TIDEMARK_BENCH_RSS_SHARD";

fn row(value: usize) -> Row {
    Row::pack([Datum::Int64(value as i64), Datum::String("bench-payload")])
}

fn frontier(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

async fn backend(endpoint: &str, prefix: &str) -> S3Backend {
    let config = S3Config::new(BUCKET)
        .with_prefix(prefix)
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_path_style(true)
        .with_credentials(credentials().0, credentials().1)
        .with_operation_timeout(Duration::from_secs(600))
        .with_poll_interval(Duration::from_millis(1), Duration::from_millis(20));
    let backend = S3Backend::builder(config)
        .build()
        .await
        .expect("backend on the bench bucket");
    if backend
        .client()
        .head_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .is_err()
    {
        backend
            .client()
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("create the bench bucket");
    }
    backend
}

/// A field of `/proc/self/status` in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Runs one operation and prints `growth_kib entries`.
async fn child(endpoint: &str, operation: &str) {
    let prefix = std::env::var(CHILD_PREFIX).expect("prefix");
    let shard: ShardId = std::env::var(CHILD_SHARD)
        .expect("shard")
        .parse()
        .expect("shard id");
    let backend = backend(endpoint, &prefix).await;
    let frontiers = PersistBackend::<u64>::frontiers(&backend, shard)
        .await
        .unwrap();
    let upper = *frontiers.upper.as_option().expect("open shard");
    let since = *frontiers.since.as_option().expect("readable shard");
    let before = status_kib("VmRSS:");
    let entries = match operation {
        "snapshot" => {
            let mut stream = backend
                .snapshot_stream(shard, &(upper - 1), ReadShare::WHOLE, ChunkLimit::DEFAULT)
                .await
                .unwrap();
            let mut entries = 0;
            while let Some(chunk) = stream.next().await {
                entries += chunk.unwrap().len();
            }
            entries
        }
        "fetch" => {
            let mut stream = backend
                .fetch_stream(
                    shard,
                    &frontier(since),
                    &frontier(upper),
                    ReadShare::WHOLE,
                    ChunkLimit::DEFAULT,
                )
                .await
                .unwrap();
            let mut entries = 0;
            while let Some(chunk) = stream.next().await {
                entries += chunk.unwrap().len();
            }
            entries
        }
        "compact" => {
            let stats = PersistBackend::<u64>::compact(&backend, shard)
                .await
                .unwrap();
            usize::try_from(stats.updates_after).unwrap_or(usize::MAX)
        }
        other => panic!("unknown operation {other}"),
    };
    let peak = status_kib("VmHWM:");
    println!("{} {entries}", peak.saturating_sub(before));
}

/// Runs `operation` in a child process; its peak RSS growth in MiB and the
/// entries it read, and how long it took.
fn measure(prefix: &str, shard: ShardId, operation: &str) -> (f64, usize, Duration) {
    let start = Instant::now();
    let output = Command::new(std::env::current_exe().expect("this benchmark"))
        .env(CHILD_OPERATION, operation)
        .env(CHILD_PREFIX, prefix)
        .env(CHILD_SHARD, shard.to_string())
        .output()
        .expect("run the measured operation");
    let elapsed = start.elapsed();
    assert!(
        output.status.success(),
        "{operation} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output from {operation}"));
    let mut fields = line.split_whitespace();
    let kib: f64 = fields.next().and_then(|f| f.parse().ok()).expect("kib");
    let entries: usize = fields.next().and_then(|f| f.parse().ok()).expect("count");
    (kib / 1024.0, entries, elapsed)
}

async fn build(endpoint: &str, prefix: &str, updates: usize) -> (ShardId, u64) {
    let backend = backend(endpoint, prefix).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let appends = updates.div_ceil(APPEND_UPDATES);
    for append in 0..appends {
        let time = append as u64;
        let batch = (append * APPEND_UPDATES..((append + 1) * APPEND_UPDATES).min(updates))
            .map(|i| Update::new(row(i), time, 1))
            .collect();
        backend
            .compare_and_append(
                shard,
                batch,
                frontier(time),
                frontier(time + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
    }
    let usage = PersistBackend::<u64>::usage(&backend, shard).await.unwrap();
    (shard, usage.bytes)
}

fn main() {
    let Some(endpoint) = service_env("TIDEMARK_TEST_S3_ENDPOINT", "s3 rss benchmark") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Ok(operation) = std::env::var(CHILD_OPERATION) {
        runtime.block_on(child(&endpoint, &operation));
        return;
    }
    let updates = std::env::var("TIDEMARK_BENCH_RSS_UPDATES")
        .ok()
        .and_then(|value| value.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_UPDATES);
    let prefix = format!("bench-rss-{}", uuid::Uuid::new_v4().simple());
    let (shard, stored_bytes) = runtime.block_on(build(&endpoint, &prefix, updates));
    let stored_mib = stored_bytes as f64 / (1 << 20) as f64;
    println!(
        "rss: shard of {updates} updates in {} appends, {stored_mib:.1} MiB stored",
        updates.div_ceil(APPEND_UPDATES)
    );
    for operation in ["snapshot", "fetch", "compact", "snapshot", "fetch"] {
        let (mib, entries, elapsed) = measure(&prefix, shard, operation);
        println!(
            "rss: {operation:<8} peak RSS growth {mib:.1} MiB (goal < {GOAL_MIB} MiB), {:.2} x the shard's stored bytes; {entries} entries in {elapsed:.1?}",
            mib / stored_mib
        );
    }
}
