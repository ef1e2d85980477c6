//! Memory backend benchmarks, each against a raw baseline measured in the
//! same run (absolute times on shared machines are noise; the ratio is the
//! figure that counts).
//!
//! - Append throughput at 1k, 10k and 100k-update batches, against building
//!   and consolidating the same updates in a plain `Vec` (the least work any
//!   backend that keeps consolidated batches must do).
//! - Snapshot of a compacted 1,000,000-update shard, against consolidating
//!   the same 1,000,000 updates from scratch with differential's
//!   `consolidate_updates`.
//!
//! Run with `cargo bench -p tidemark-backend-memory`; arguments (after
//! `--`) that do not start with `-` pick the benchmarks they name
//! (`append-1000`, `append-10000`, `append-100000`, `append` for all three,
//! `snapshot`), for instance `-- append-1000 snapshot`.

use std::time::{Duration, Instant};
use tidemark_storage_types::WriteFence;

use differential_dataflow::consolidation::consolidate_updates;
use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_types::{Datum, Diff, IdempotencyToken, PersistBackend, Row, ShardId, Update};
use timely::progress::Antichain;

/// Updates appended per batch size: enough batches that merging shows.
const UPDATES_PER_APPEND_RUN: usize = 1_000_000;
/// Append rounds per batch size; the median ratio is reported.
const APPEND_ROUNDS: usize = 3;
/// The size of the shard the snapshot benchmark reads.
const SNAPSHOT_UPDATES: usize = 1_000_000;
/// Snapshot repetitions; the median is reported.
const SNAPSHOT_ROUNDS: usize = 5;

/// A deterministic generator, so every run measures the same data.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 17
    }
}

fn row(key: u64) -> Row {
    let name = format!("item-{key}");
    Row::pack([Datum::Int64(key as i64), Datum::String(&name)])
}

/// `batches` batches of `batch_size` updates, batch `i` at time `i`, keys
/// drawn from a domain of `distinct_keys`.
fn make_batches(
    rng: &mut Lcg,
    batches: usize,
    batch_size: usize,
    distinct_keys: u64,
) -> Vec<Vec<Update<u64>>> {
    (0..batches)
        .map(|batch| {
            (0..batch_size)
                .map(|_| Update::new(row(rng.next() % distinct_keys), batch as u64, 1))
                .collect()
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn append_all(backend: &MemoryBackend, batches: Vec<Vec<Update<u64>>>) -> ShardId {
    let shard = ShardId::new();
    PersistBackend::<u64>::open(backend, shard).await.unwrap();
    for (time, updates) in batches.into_iter().enumerate() {
        let time = time as u64;
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
            .unwrap()
            .unwrap();
    }
    shard
}

/// The raw baseline of an append: turn the updates into tuples and
/// consolidate them.
fn consolidate_all(batches: Vec<Vec<Update<u64>>>) -> usize {
    let mut kept = 0;
    for updates in batches {
        let mut tuples: Vec<(Row, u64, Diff)> = updates
            .into_iter()
            .map(|update| (update.row, update.timestamp, update.diff))
            .collect();
        consolidate_updates(&mut tuples);
        kept += tuples.len();
    }
    kept
}

async fn bench_append(batch_size: usize) {
    let batches = UPDATES_PER_APPEND_RUN / batch_size;
    let mut rng = Lcg(batch_size as u64);
    let data = make_batches(
        &mut rng,
        batches,
        batch_size,
        4 * UPDATES_PER_APPEND_RUN as u64,
    );
    let total = (batches * batch_size) as f64;
    let backend = MemoryBackend::open(&format!("bench-append-{batch_size}"));

    // Backend and baseline run back to back in each round, so load from
    // elsewhere on the machine hits both; the median round is reported.
    let mut rounds = Vec::new();
    for _ in 0..APPEND_ROUNDS {
        let input = data.clone();
        let started = Instant::now();
        let shard = append_all(&backend, input).await;
        let backend_rate = total / started.elapsed().as_secs_f64();
        PersistBackend::<u64>::finalize(&backend, shard)
            .await
            .unwrap();

        let input = data.clone();
        let started = Instant::now();
        let kept = consolidate_all(input);
        let baseline_rate = total / started.elapsed().as_secs_f64();
        std::hint::black_box(kept);
        rounds.push((backend_rate / baseline_rate, backend_rate, baseline_rate));
    }
    rounds.sort_by(|left, right| left.0.total_cmp(&right.0));
    let (ratio, backend_rate, baseline_rate) = rounds[rounds.len() / 2];
    println!(
        "append {batch_size:>6}-update batches x{batches:<5}: backend {backend_rate:>12.0} updates/s, \
         baseline (tuples + consolidate_updates) {baseline_rate:>12.0} updates/s, \
         ratio backend/baseline {ratio:.2} (median of {APPEND_ROUNDS} rounds)"
    );
}

async fn bench_snapshot() {
    let mut rng = Lcg(7);
    // Distinct rows, spread over 100 appends, so the compacted shard keeps
    // every one of the 1,000,000 updates.
    let batches = 100;
    let batch_size = SNAPSHOT_UPDATES / batches;
    let mut keys: Vec<u64> = (0..SNAPSHOT_UPDATES as u64).collect();
    for index in (1..keys.len()).rev() {
        let other = (rng.next() % (index as u64 + 1)) as usize;
        keys.swap(index, other);
    }
    let data: Vec<Vec<Update<u64>>> = keys
        .chunks(batch_size)
        .enumerate()
        .map(|(time, chunk)| {
            chunk
                .iter()
                .map(|key| Update::new(row(*key), time as u64, 1))
                .collect()
        })
        .collect();
    let raw: Vec<(Row, u64, Diff)> = data
        .iter()
        .flatten()
        .map(|update| (update.row.clone(), update.timestamp, update.diff))
        .collect();

    let backend = MemoryBackend::open("bench-snapshot");
    let shard = append_all(&backend, data).await;
    let as_of = batches as u64 - 1;
    backend
        .downgrade_since(shard, &Antichain::from_elem(as_of), WriteFence::Unfenced)
        .await
        .unwrap();
    let stats = PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    assert_eq!(stats.updates_after, SNAPSHOT_UPDATES as u64);

    let mut backend_samples = Vec::new();
    let mut baseline_samples = Vec::new();
    for _ in 0..SNAPSHOT_ROUNDS {
        let started = Instant::now();
        let snapshot = backend.snapshot(shard, &as_of).await.unwrap();
        backend_samples.push(started.elapsed());
        assert_eq!(snapshot.len(), SNAPSHOT_UPDATES);
        drop(snapshot);

        let mut from_scratch = raw.clone();
        let started = Instant::now();
        consolidate_updates(&mut from_scratch);
        baseline_samples.push(started.elapsed());
        assert_eq!(from_scratch.len(), SNAPSHOT_UPDATES);
    }
    let backend_time = median(backend_samples);
    let baseline_time = median(baseline_samples);
    println!(
        "snapshot of a compacted {SNAPSHOT_UPDATES}-update shard: backend {:.1} ms, \
         consolidate_updates from scratch {:.1} ms, ratio backend/baseline {:.3} (median of {SNAPSHOT_ROUNDS})",
        backend_time.as_secs_f64() * 1e3,
        baseline_time.as_secs_f64() * 1e3,
        backend_time.as_secs_f64() / baseline_time.as_secs_f64()
    );
    PersistBackend::<u64>::finalize(&backend, shard)
        .await
        .unwrap();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // `cargo bench` passes `--bench`; other arguments select benchmarks.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .collect();
    let selected = |name: &str| {
        filters.is_empty()
            || filters
                .iter()
                .any(|filter| name == filter || name.split('-').next() == Some(filter.as_str()))
    };
    runtime.block_on(async {
        for batch_size in [1_000, 10_000, 100_000] {
            if selected(&format!("append-{batch_size}")) {
                bench_append(batch_size).await;
            }
        }
        if selected("snapshot") {
            bench_snapshot().await;
        }
    });
}
