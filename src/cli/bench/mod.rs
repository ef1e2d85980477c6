//! `tidemark bench URL`: an open-loop workload of appends and snapshots
//! through tidemark, then the store's raw operations on the same bytes,
//! in the same run, reported as p50 / p99 latency, throughput and ratios.
//!
//! Open loop: each writer issues an append every `1 / rate` seconds on a
//! fixed schedule, whether or not the last one finished, and latency is
//! measured from the scheduled start (so a slow store cannot hide its
//! queueing). Writer `i` appends to shard `i % shards`; writers sharing a
//! shard race and retry on an upper mismatch (counted as `conflicts`).
//! Readers snapshot shard `i % shards` at its latest readable time.
//!
//! Bounded: each phase lasts `duration` (so a run takes about twice that),
//! and issues at most `duration * rate` operations per worker. The shards
//! it writes are fresh and finalized at the end; the raw baseline's
//! objects or table are deleted. It writes data, so a URL whose host is not
//! loopback is refused unless `i_know` is set.

pub mod raw;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tidemark_storage_types::WriteFence;

use serde::Serialize;
use timely::progress::Antichain;

use super::ToolError;
use super::stats::{LatencySummary, summarize};
use crate::DynBackend;
use crate::types::{Datum, IdempotencyToken, Row, ShardId, Update};
use raw::{RawBatch, RawStore};

/// What `bench` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchOptions {
    /// Shards written.
    pub shards: usize,
    /// Concurrent writers.
    pub writers: usize,
    /// Updates per append.
    pub batch: usize,
    /// Concurrent readers.
    pub readers: usize,
    /// How long each phase runs.
    pub duration: Duration,
    /// Appends per second per writer (and snapshots per second per reader).
    pub rate: f64,
    /// Write to a store that is not on loopback.
    pub i_know: bool,
    /// Serve Prometheus metrics on this loopback address while running.
    pub metrics: Option<SocketAddr>,
    /// Show a progress bar (only on a terminal).
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            shards: 4,
            writers: 4,
            batch: 100,
            readers: 1,
            duration: Duration::from_secs(10),
            rate: 20.0,
            i_know: false,
            metrics: None,
            progress: true,
        }
    }
}

/// The figures of one operation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OperationFigures {
    /// Latency from the scheduled start.
    pub latency: LatencySummary,
    /// Completed operations per second.
    pub throughput_per_s: f64,
    /// Operations that failed.
    pub errors: u64,
    /// Appends that lost a race for the upper and were retried.
    pub conflicts: u64,
}

/// Tidemark's figure divided by the raw store's.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Ratio {
    /// The tidemark operation.
    pub tidemark: String,
    /// The raw operation it is compared with.
    pub raw: String,
    /// p50 latency ratio (above 1: tidemark is slower).
    pub p50: f64,
    /// p99 latency ratio.
    pub p99: f64,
    /// Throughput ratio (below 1: tidemark completes fewer).
    pub throughput: f64,
}

/// What `bench` measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BenchReport {
    /// `memory`, `postgres` or `s3`.
    pub backend: String,
    /// Shards written.
    pub shards: usize,
    /// Writers.
    pub writers: usize,
    /// Updates per append.
    pub batch: usize,
    /// Readers.
    pub readers: usize,
    /// Seconds each phase ran.
    pub duration_s: f64,
    /// Through tidemark: `append` (compare_and_append) and `snapshot`.
    pub tidemark: BTreeMap<String, OperationFigures>,
    /// The raw store's operations (see [`raw`]).
    pub raw: BTreeMap<String, OperationFigures>,
    /// Tidemark against raw, one entry per pair.
    pub ratios: Vec<Ratio>,
}

/// Refuses a URL whose store is not on loopback (unless `i_know`).
///
/// # Errors
///
/// [`ToolError::NotLoopback`] naming the host.
pub fn check_loopback(url: &str, i_know: bool) -> Result<(), ToolError> {
    if i_know {
        return Ok(());
    }
    let parsed = url::Url::parse(url)
        .map_err(|err| ToolError::InvalidArgument(format!("invalid backend url: {err}")))?;
    let host = match parsed.scheme() {
        "memory" => return Ok(()),
        "s3" => parsed
            .query_pairs()
            .find(|(name, _)| name == "endpoint")
            .and_then(|(_, endpoint)| url::Url::parse(&endpoint).ok())
            .and_then(|endpoint| endpoint.host_str().map(str::to_string))
            .unwrap_or_else(|| "(AWS S3: no endpoint)".to_string()),
        _ => parsed.host_str().unwrap_or_default().to_string(),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(ToolError::NotLoopback { host })
    }
}

fn validate(options: &BenchOptions) -> Result<(), ToolError> {
    let problem = if options.shards == 0 {
        Some(format!(
            "--shards must be at least 1: shards={}",
            options.shards
        ))
    } else if options.writers == 0 {
        Some(format!(
            "--writers must be at least 1: writers={}",
            options.writers
        ))
    } else if options.batch == 0 || options.batch > 100_000 {
        Some(format!(
            "--batch must be in 1..=100000: batch={}",
            options.batch
        ))
    } else if options.writers > 256 || options.readers > 256 || options.shards > 4096 {
        Some(format!(
            "at most 256 writers, 256 readers and 4096 shards: writers={} readers={} shards={}",
            options.writers, options.readers, options.shards
        ))
    } else if options.duration.is_zero() || options.duration > Duration::from_secs(3600) {
        Some(format!(
            "--duration must be in (0, 3600] seconds: duration={:?}",
            options.duration
        ))
    } else if !(options.rate > 0.0 && options.rate <= 10_000.0) {
        Some(format!(
            "--rate must be in (0, 10000] per second: rate={}",
            options.rate
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ToolError::InvalidArgument(problem)),
        None => Ok(()),
    }
}

/// Starts the Prometheus exporter on `address` (loopback only).
///
/// # Errors
///
/// A non-loopback address, or the exporter cannot start (the port is
/// taken, or a recorder is already installed).
pub fn start_metrics(address: SocketAddr) -> Result<(), ToolError> {
    if !address.ip().is_loopback() {
        return Err(ToolError::InvalidArgument(format!(
            "--metrics must be a loopback address: address={address}"
        )));
    }
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .install()
        .map_err(|err| ToolError::Metrics(err.to_string()))
}

/// The schedule of one worker: the start of operation `n` is
/// `start + n / rate`, until `deadline`.
struct Schedule {
    start: Instant,
    interval: Duration,
    deadline: Instant,
    next: u64,
}

impl Schedule {
    fn new(start: Instant, rate: f64, duration: Duration) -> Self {
        Schedule {
            start,
            interval: Duration::from_secs_f64(1.0 / rate),
            deadline: start + duration,
            next: 0,
        }
    }

    /// Waits for the next scheduled start and returns it, or `None` when
    /// the phase is over.
    async fn tick(&mut self) -> Option<Instant> {
        let scheduled = self.start + self.interval.mul_f64(self.next as f64);
        if scheduled >= self.deadline {
            return None;
        }
        self.next += 1;
        tokio::time::sleep_until(scheduled.into()).await;
        Some(scheduled)
    }
}

#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    errors: u64,
    conflicts: u64,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.conflicts += other.conflicts;
    }

    fn figures(&self, duration: Duration) -> OperationFigures {
        OperationFigures {
            latency: summarize(&self.latencies),
            throughput_per_s: self.latencies.len() as f64 / duration.as_secs_f64(),
            errors: self.errors,
            conflicts: self.conflicts,
        }
    }
}

fn batch_rows(writer: usize, sequence: u64, batch: usize) -> Vec<Row> {
    (0..batch)
        .map(|index| {
            let key = (sequence as i64) * (batch as i64) + index as i64;
            Row::pack([
                Datum::Int64(writer as i64),
                Datum::Int64(key),
                Datum::String("tidemark bench payload: sixty-four bytes of row data ......"),
            ])
        })
        .collect()
}

/// Appends of writer `writer` to `shard` on its schedule.
async fn tidemark_writer(
    backend: DynBackend,
    shard: ShardId,
    writer: usize,
    options: BenchOptions,
    start: Instant,
    done: Arc<AtomicU64>,
) -> Samples {
    let mut samples = Samples::default();
    let mut schedule = Schedule::new(start, options.rate, options.duration);
    let mut upper = match backend.frontiers(shard).await {
        Ok(frontiers) => frontiers.upper,
        Err(_) => Antichain::from_elem(0),
    };
    let mut sequence = 0;
    while let Some(scheduled) = schedule.tick().await {
        let rows = batch_rows(writer, sequence, options.batch);
        sequence += 1;
        let token = IdempotencyToken::new();
        loop {
            let Some(time) = upper.elements().first().copied() else {
                samples.errors += 1;
                break;
            };
            let updates = rows
                .iter()
                .map(|row| Update::new(row.clone(), time, 1))
                .collect();
            let new_upper = Antichain::from_elem(time + 1);
            match backend
                .compare_and_append(
                    shard,
                    updates,
                    upper.clone(),
                    new_upper.clone(),
                    token,
                    WriteFence::Unfenced,
                )
                .await
            {
                Ok(Ok(())) => {
                    upper = new_upper;
                    samples.latencies.push(scheduled.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Err(mismatch)) => {
                    samples.conflicts += 1;
                    upper = mismatch.current;
                }
                Err(_) => {
                    samples.errors += 1;
                    if let Ok(frontiers) = backend.frontiers(shard).await {
                        upper = frontiers.upper;
                    }
                    break;
                }
            }
        }
    }
    samples
}

/// Snapshots of `shard` at its latest readable time, on a schedule.
async fn tidemark_reader(
    backend: DynBackend,
    shard: ShardId,
    options: BenchOptions,
    start: Instant,
    done: Arc<AtomicU64>,
) -> Samples {
    let mut samples = Samples::default();
    let mut schedule = Schedule::new(start, options.rate, options.duration);
    while let Some(scheduled) = schedule.tick().await {
        let upper = match backend.frontiers(shard).await {
            Ok(frontiers) => frontiers.upper,
            Err(_) => {
                samples.errors += 1;
                continue;
            }
        };
        let Some(as_of) = upper
            .elements()
            .first()
            .and_then(|upper| upper.checked_sub(1))
        else {
            continue;
        };
        match backend.snapshot(shard, &as_of).await {
            Ok(_) => {
                samples.latencies.push(scheduled.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => samples.errors += 1,
        }
    }
    samples
}

async fn raw_writer(
    raw: RawStore,
    operation: &'static str,
    writer: usize,
    options: BenchOptions,
    start: Instant,
    written: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
) -> Samples {
    let mut samples = Samples::default();
    let mut schedule = Schedule::new(start, options.rate, options.duration);
    let mut sequence = 0;
    while let Some(scheduled) = schedule.tick().await {
        let batch: RawBatch = batch_rows(writer, sequence, options.batch)
            .into_iter()
            .map(|row| (sequence as i64, row.as_bytes().to_vec(), 1))
            .collect();
        match raw.write(operation, writer, sequence, &batch).await {
            Ok(()) => {
                samples.latencies.push(scheduled.elapsed());
                written.store(sequence + 1, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => samples.errors += 1,
        }
        sequence += 1;
    }
    samples
}

async fn raw_reader(
    raw: RawStore,
    writer: usize,
    options: BenchOptions,
    start: Instant,
    written: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
) -> Samples {
    let mut samples = Samples::default();
    let mut schedule = Schedule::new(start, options.rate, options.duration);
    while let Some(scheduled) = schedule.tick().await {
        let Some(latest) = written.load(Ordering::Relaxed).checked_sub(1) else {
            continue;
        };
        match raw.read(writer, latest).await {
            Ok(_) => {
                samples.latencies.push(scheduled.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => samples.errors += 1,
        }
    }
    samples
}

/// Runs a phase's workers with a progress bar; returns (writes, reads).
async fn phase(
    label: String,
    options: &BenchOptions,
    done: Arc<AtomicU64>,
    writers: Vec<tokio::task::JoinHandle<Samples>>,
    readers: Vec<tokio::task::JoinHandle<Samples>>,
) -> (Samples, Samples) {
    let bar = if options.progress && std::io::stdout().is_terminal() {
        indicatif::ProgressBar::new(options.duration.as_millis() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>24} [{bar:40}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(label);
    let ticker = {
        let bar = bar.clone();
        let done = done.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bar.set_position(started.elapsed().as_millis() as u64);
                bar.set_message(format!("{} operations", done.load(Ordering::Relaxed)));
            }
        })
    };
    let mut writes = Samples::default();
    for handle in writers {
        if let Ok(samples) = handle.await {
            writes.merge(samples);
        }
    }
    let mut reads = Samples::default();
    for handle in readers {
        if let Ok(samples) = handle.await {
            reads.merge(samples);
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    (writes, reads)
}

fn ratio(tidemark: (&str, &OperationFigures), raw: (&str, &OperationFigures)) -> Ratio {
    let divide = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ratio {
        tidemark: tidemark.0.to_string(),
        raw: raw.0.to_string(),
        p50: divide(tidemark.1.latency.p50_ms, raw.1.latency.p50_ms),
        p99: divide(tidemark.1.latency.p99_ms, raw.1.latency.p99_ms),
        throughput: divide(tidemark.1.throughput_per_s, raw.1.throughput_per_s),
    }
}

/// Runs the benchmark on the store `url` names.
///
/// # Errors
///
/// Bad options, a store not on loopback without `i_know`, a store that
/// cannot be opened, or a metrics exporter that cannot start.
pub async fn run(url: &str, options: &BenchOptions) -> Result<BenchReport, ToolError> {
    validate(options)?;
    check_loopback(url, options.i_know)?;
    let backend_name = match url.split("://").next().unwrap_or_default() {
        "s3" => "s3",
        "postgres" | "postgresql" => "postgres",
        _ => "memory",
    };
    if let Some(address) = options.metrics {
        start_metrics(address)?;
        crate::observe::register_metrics(backend_name);
    }
    let backend = crate::open(url).await?;
    let shards: Vec<ShardId> = (0..options.shards).map(|_| ShardId::new()).collect();
    for shard in &shards {
        backend.open(*shard).await?;
    }
    // Phase 1: through tidemark.
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let writers = (0..options.writers)
        .map(|writer| {
            tokio::spawn(tidemark_writer(
                backend.clone(),
                shards[writer % shards.len()],
                writer,
                options.clone(),
                start,
                done.clone(),
            ))
        })
        .collect();
    let readers = (0..options.readers)
        .map(|reader| {
            tokio::spawn(tidemark_reader(
                backend.clone(),
                shards[reader % shards.len()],
                options.clone(),
                start,
                done.clone(),
            ))
        })
        .collect();
    let (appends, snapshots) = phase(
        format!("tidemark {backend_name}"),
        options,
        done,
        writers,
        readers,
    )
    .await;
    for shard in &shards {
        let _ = backend.finalize(*shard).await;
    }
    let mut report = BenchReport {
        backend: backend_name.to_string(),
        shards: options.shards,
        writers: options.writers,
        batch: options.batch,
        readers: options.readers,
        duration_s: options.duration.as_secs_f64(),
        ..BenchReport::default()
    };
    report
        .tidemark
        .insert("append".to_string(), appends.figures(options.duration));
    report
        .tidemark
        .insert("snapshot".to_string(), snapshots.figures(options.duration));
    // Phase 2: the raw store, once per raw write operation.
    let raw = RawStore::open(url, options.writers).await?;
    for operation in raw.write_operations() {
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let written: Vec<Arc<AtomicU64>> = (0..options.writers)
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect();
        let writers = (0..options.writers)
            .map(|writer| {
                tokio::spawn(raw_writer(
                    raw.clone(),
                    operation,
                    writer,
                    options.clone(),
                    start,
                    written[writer].clone(),
                    done.clone(),
                ))
            })
            .collect();
        let readers = (0..options.readers)
            .map(|reader| {
                let writer = reader % options.writers;
                tokio::spawn(raw_reader(
                    raw.clone(),
                    writer,
                    options.clone(),
                    start,
                    written[writer].clone(),
                    done.clone(),
                ))
            })
            .collect();
        let (writes, reads) =
            phase(format!("raw {operation}"), options, done, writers, readers).await;
        report
            .raw
            .insert((*operation).to_string(), writes.figures(options.duration));
        let read_name = format!("{} (during {operation})", raw.read_operation());
        report
            .raw
            .insert(read_name, reads.figures(options.duration));
    }
    raw.clean_up().await;
    let append = &report.tidemark["append"];
    let snapshot = &report.tidemark["snapshot"];
    let mut ratios = Vec::new();
    for operation in raw.write_operations() {
        ratios.push(ratio(
            ("append", append),
            (operation, &report.raw[*operation]),
        ));
        let read_name = format!("{} (during {operation})", raw.read_operation());
        ratios.push(ratio(
            ("snapshot", snapshot),
            (&read_name, &report.raw[&read_name]),
        ));
    }
    report.ratios = ratios;
    Ok(report)
}

/// Writes the report for people.
///
/// # Errors
///
/// Writing fails.
pub fn write_text(report: &BenchReport, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "tidemark bench on {}: {} shards, {} writers x {} updates, {} readers, {:.1} s per phase",
        report.backend,
        report.shards,
        report.writers,
        report.batch,
        report.readers,
        report.duration_s
    )?;
    let line = |out: &mut dyn std::io::Write, name: &str, figures: &OperationFigures| {
        writeln!(
            out,
            "  {name:<28} p50 {:>9.3} ms  p99 {:>9.3} ms  {:>9.1} ops/s  errors {}  conflicts {}",
            figures.latency.p50_ms,
            figures.latency.p99_ms,
            figures.throughput_per_s,
            figures.errors,
            figures.conflicts
        )
    };
    writeln!(out, "tidemark:")?;
    for (name, figures) in &report.tidemark {
        line(out, name, figures)?;
    }
    writeln!(out, "raw store:")?;
    for (name, figures) in &report.raw {
        line(out, name, figures)?;
    }
    writeln!(
        out,
        "ratios (tidemark / raw; latency above 1 is slower, throughput below 1 is fewer):"
    )?;
    for ratio in &report.ratios {
        writeln!(
            out,
            "  {:<10} vs {:<24} p50 x{:.2}  p99 x{:.2}  throughput x{:.2}",
            ratio.tidemark, ratio.raw, ratio.p50, ratio.p99, ratio.throughput
        )?;
    }
    Ok(())
}
