//! Observability: a backend wrapper that gives every backend operation a
//! `tracing` span and `metrics` figures, and the metric names.
//!
//! [`open`](crate::open) wraps every backend it returns in
//! [`InstrumentedBackend`]. Each operation runs in a `backend` span
//! (`DEBUG` level) with fields `backend`, `operation`, `shard` and, when it
//! ends, `outcome`: `ok`, `upper_mismatch` (an append whose expectation
//! failed: a value, not an error), `invalid_usage`, `determinate` or
//! `indeterminate`. The metrics go to whatever recorder is installed
//! (none: they cost a few atomic loads); `tidemark bench --metrics ADDR`
//! installs a Prometheus exporter.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | [`OPERATIONS`] | counter | `backend`, `operation`, `outcome` |
//! | [`OPERATION_SECONDS`] | histogram | `backend`, `operation` |
//! | [`BYTES`] | counter (row bytes appended or returned) | `backend`, `operation`, `direction` (`written`/`read`) |
//! | [`INDETERMINATE_ERRORS`] | counter | `backend`, `operation` |
//! | [`RETRIES`](tidemark_storage_controller::RETRIES_METRIC) | counter (the controller's retries of indeterminate failures) | none |

use std::future::Future;
use std::time::Instant;
use tidemark_storage_types::WriteFence;
use tidemark_storage_types::{ChunkLimit, FetchStream, SnapshotStream};

use async_trait::async_trait;
use timely::progress::Antichain;
use tracing::Instrument;

use crate::types::{
    BackendError, CompactionStats, Diff, IdempotencyToken, PersistBackend, ReadShare, Row,
    ShardAppend, ShardFrontiers, ShardId, ShardUsage, Update, UpperMismatch, UpperMismatches,
};

/// Backend operations, by `backend`, `operation` and `outcome`.
pub const OPERATIONS: &str = "tidemark_backend_operations_total";
/// Latency of backend operations in seconds, by `backend` and `operation`.
pub const OPERATION_SECONDS: &str = "tidemark_backend_operation_duration_seconds";
/// Row bytes appended (`direction="written"`) or returned by reads
/// (`direction="read"`), by `backend` and `operation`.
pub const BYTES: &str = "tidemark_backend_bytes_total";
/// Indeterminate backend failures (the operation may have happened), by
/// `backend` and `operation`.
pub const INDETERMINATE_ERRORS: &str = "tidemark_backend_indeterminate_errors_total";
/// The controller's retries of indeterminate backend failures.
pub const RETRIES: &str = tidemark_storage_controller::RETRIES_METRIC;

/// Every metric name this crate and the controller emit.
pub const METRIC_NAMES: [&str; 5] = [
    OPERATIONS,
    OPERATION_SECONDS,
    BYTES,
    INDETERMINATE_ERRORS,
    RETRIES,
];

/// Describes every metric to the installed recorder and registers the
/// counters that may stay at zero (retries, indeterminate errors) for
/// `backend`, so that a scrape lists every name from the start.
pub fn register_metrics(backend: &'static str) {
    metrics::describe_counter!(
        OPERATIONS,
        "backend operations by backend, operation and outcome"
    );
    metrics::describe_histogram!(
        OPERATION_SECONDS,
        metrics::Unit::Seconds,
        "latency of backend operations"
    );
    metrics::describe_counter!(
        BYTES,
        metrics::Unit::Bytes,
        "row bytes appended (written) or returned by reads (read)"
    );
    metrics::describe_counter!(
        INDETERMINATE_ERRORS,
        "backend failures whose operation may have happened"
    );
    metrics::describe_counter!(
        RETRIES,
        "the controller's retries of indeterminate backend failures"
    );
    metrics::counter!(RETRIES).increment(0);
    for operation in ["compare_and_append", "snapshot", "fetch"] {
        metrics::counter!(INDETERMINATE_ERRORS, "backend" => backend, "operation" => operation)
            .increment(0);
    }
}

/// A backend that forwards every method to `inner`, in a `tracing` span and
/// with metrics labelled `backend` (see the [module docs](self)).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tidemark::memory::MemoryBackend;
/// use tidemark::observe::InstrumentedBackend;
/// use tidemark::types::{PersistBackend, ShardId};
/// let backend = InstrumentedBackend::new("memory", MemoryBackend::open("observe-doc"));
/// let shard = ShardId::new();
/// let opened = PersistBackend::<u64>::open(&backend, shard).await.unwrap();
/// // It answers exactly as the wrapped backend does.
/// assert_eq!(PersistBackend::<u64>::frontiers(backend.inner(), shard).await.unwrap(), opened);
/// # });
/// ```
#[derive(Debug)]
pub struct InstrumentedBackend<B> {
    inner: B,
    backend: &'static str,
}

impl<B> InstrumentedBackend<B> {
    /// Wraps `inner`; `backend` labels its spans and metrics (`memory`,
    /// `postgres`, `s3`).
    pub fn new(backend: &'static str, inner: B) -> Self {
        InstrumentedBackend { inner, backend }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    async fn observe<R>(
        &self,
        operation: &'static str,
        shard: Option<ShardId>,
        written: u64,
        call: impl Future<Output = Result<R, BackendError>>,
        outcome_of: impl Fn(&R) -> (&'static str, u64),
    ) -> Result<R, BackendError> {
        let span = tracing::debug_span!(
            "backend",
            backend = self.backend,
            operation,
            shard = shard.map(tracing::field::display),
            outcome = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = call.instrument(span.clone()).await;
        let elapsed = started.elapsed();
        let (outcome, read) = match &result {
            Ok(value) => outcome_of(value),
            Err(BackendError::InvalidUsage(_)) => ("invalid_usage", 0),
            Err(BackendError::Determinate(_)) => ("determinate", 0),
            Err(BackendError::Indeterminate(_)) => ("indeterminate", 0),
            // A variant added later: unknown outcome, counted as one.
            Err(_) => ("indeterminate", 0),
        };
        span.record("outcome", outcome);
        let backend = self.backend;
        metrics::counter!(OPERATIONS, "backend" => backend, "operation" => operation, "outcome" => outcome)
            .increment(1);
        metrics::histogram!(OPERATION_SECONDS, "backend" => backend, "operation" => operation)
            .record(elapsed.as_secs_f64());
        if written > 0 && result.is_ok() {
            metrics::counter!(BYTES, "backend" => backend, "operation" => operation, "direction" => "written")
                .increment(written);
        }
        if read > 0 {
            metrics::counter!(BYTES, "backend" => backend, "operation" => operation, "direction" => "read")
                .increment(read);
        }
        if outcome == "indeterminate" {
            metrics::counter!(INDETERMINATE_ERRORS, "backend" => backend, "operation" => operation)
                .increment(1);
        }
        result
    }
}

fn ok<R>(_: &R) -> (&'static str, u64) {
    ("ok", 0)
}

fn row_bytes<'a>(rows: impl Iterator<Item = &'a Row>) -> u64 {
    rows.map(|row| row.byte_len() as u64).sum()
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<B: PersistBackend<u64>> PersistBackend<u64> for InstrumentedBackend<B> {
    async fn open(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        self.observe("open", Some(shard), 0, self.inner.open(shard), ok)
            .await
    }

    async fn frontiers(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        self.observe("frontiers", Some(shard), 0, self.inner.frontiers(shard), ok)
            .await
    }

    async fn compare_and_append(
        &self,
        shard: ShardId,
        updates: Vec<Update<u64>>,
        expected_upper: Antichain<u64>,
        new_upper: Antichain<u64>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatch<u64>>, BackendError> {
        let written = row_bytes(updates.iter().map(|update| &update.row));
        let call =
            self.inner
                .compare_and_append(shard, updates, expected_upper, new_upper, token, fence);
        self.observe(
            "compare_and_append",
            Some(shard),
            written,
            call,
            |outcome| match outcome {
                Ok(()) => ("ok", 0),
                Err(_) => ("upper_mismatch", 0),
            },
        )
        .await
    }

    async fn compare_and_append_all(
        &self,
        appends: Vec<ShardAppend<u64>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<u64>>, BackendError> {
        let written = row_bytes(
            appends
                .iter()
                .flat_map(|part| part.updates.iter().map(|update| &update.row)),
        );
        let first_shard = appends.first().map(|part| part.shard);
        let shards = appends.len();
        let span = tracing::debug_span!("append_all", shards);
        let call = self.inner.compare_and_append_all(appends, token, fence);
        self.observe(
            "compare_and_append_all",
            first_shard,
            written,
            call,
            |outcome| match outcome {
                Ok(()) => ("ok", 0),
                Err(_) => ("upper_mismatch", 0),
            },
        )
        .instrument(span)
        .await
    }

    async fn snapshot(
        &self,
        shard: ShardId,
        as_of: &u64,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.observe(
            "snapshot",
            Some(shard),
            0,
            self.inner.snapshot(shard, as_of),
            |rows| ("ok", row_bytes(rows.iter().map(|(row, _)| row))),
        )
        .await
    }

    async fn fetch(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        self.observe(
            "fetch",
            Some(shard),
            0,
            self.inner.fetch(shard, lower, upper),
            |updates| ("ok", row_bytes(updates.iter().map(|update| &update.row))),
        )
        .await
    }

    async fn snapshot_share(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.observe(
            "snapshot_share",
            Some(shard),
            0,
            self.inner.snapshot_share(shard, as_of, share),
            |rows| ("ok", row_bytes(rows.iter().map(|(row, _)| row))),
        )
        .await
    }

    async fn fetch_share(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
        share: ReadShare,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        self.observe(
            "fetch_share",
            Some(shard),
            0,
            self.inner.fetch_share(shard, lower, upper, share),
            |updates| ("ok", row_bytes(updates.iter().map(|update| &update.row))),
        )
        .await
    }

    async fn snapshot_stream(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<SnapshotStream, BackendError> {
        self.observe(
            "snapshot_stream",
            Some(shard),
            0,
            self.inner.snapshot_stream(shard, as_of, share, limit),
            ok,
        )
        .await
    }

    async fn fetch_stream(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<FetchStream<u64>, BackendError> {
        self.observe(
            "fetch_stream",
            Some(shard),
            0,
            self.inner.fetch_stream(shard, lower, upper, share, limit),
            ok,
        )
        .await
    }

    async fn wait_for_upper_past(
        &self,
        shard: ShardId,
        frontier: &Antichain<u64>,
    ) -> Result<Antichain<u64>, BackendError> {
        let call = self.inner.wait_for_upper_past(shard, frontier);
        self.observe("wait_for_upper_past", Some(shard), 0, call, ok)
            .await
    }

    async fn downgrade_since(
        &self,
        shard: ShardId,
        new_since: &Antichain<u64>,
        fence: WriteFence,
    ) -> Result<Antichain<u64>, BackendError> {
        let call = self.inner.downgrade_since(shard, new_since, fence);
        self.observe("downgrade_since", Some(shard), 0, call, ok)
            .await
    }

    async fn compact(&self, shard: ShardId) -> Result<CompactionStats, BackendError> {
        self.observe("compact", Some(shard), 0, self.inner.compact(shard), ok)
            .await
    }

    async fn usage(&self, shard: ShardId) -> Result<ShardUsage, BackendError> {
        self.observe("usage", Some(shard), 0, self.inner.usage(shard), ok)
            .await
    }

    async fn finalize(&self, shard: ShardId) -> Result<(), BackendError> {
        self.observe("finalize", Some(shard), 0, self.inner.finalize(shard), ok)
            .await
    }

    async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError> {
        self.observe("list_shards", None, 0, self.inner.list_shards(), ok)
            .await
    }
}
