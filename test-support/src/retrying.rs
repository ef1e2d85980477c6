//! A backend wrapper that retries as a careful caller does, and counts the
//! failures it met by kind.
//!
//! Behind the [fault proxy](crate::proxy) a backend call fails whenever its
//! connection is reset. The conformance properties expect every call to
//! give its contract's answer, so [`CallerRetries`] plays the caller the
//! contract describes: it retries a failed call (determinate or
//! indeterminate alike; `InvalidUsage` is an answer, not a failure), and a
//! `compare_and_append` always with the *same* idempotency token, so an
//! append whose response was lost is found applied rather than written
//! twice. What the properties then check (the model's contents, exactly one
//! winner per race) is what "0 lost, 0 duplicated" means.
//!
//! SUBTLE: a determinate failure promises the call did not happen. For an
//! append that is checked here: after a determinate failure the wrapper
//! reads the frontiers, and if the upper already is the append's new upper
//! while it was not before, and no other writer shares the shard
//! ([`CallerRetries::single_writer`]), the promise was broken; that is
//! counted in [`FailureCounts::determinate_but_applied`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tidemark_storage_types::WriteFence;
use tidemark_storage_types::{ChunkLimit, FetchStream, SnapshotStream};

use async_trait::async_trait;
use tidemark_storage_types::{
    BackendError, CompactionStats, Diff, IdempotencyToken, PersistBackend, ReadShare, Row,
    ShardAppend, ShardFrontiers, ShardId, ShardUsage, Update, UpperMismatch, UpperMismatches,
};
use timely::progress::Antichain;

/// How many times one call is retried before the wrapper gives up.
const RETRIES: u32 = 40;
/// The wait before the first retry; it doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(5);
/// The longest wait between two retries.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Failures met by every handle sharing one counter set.
#[derive(Debug, Default)]
pub struct FailureCounts {
    determinate: AtomicU64,
    indeterminate: AtomicU64,
    determinate_but_applied: AtomicU64,
}

impl FailureCounts {
    /// Determinate failures retried.
    #[must_use]
    pub fn determinate(&self) -> u64 {
        self.determinate.load(Ordering::SeqCst)
    }

    /// Indeterminate failures retried.
    #[must_use]
    pub fn indeterminate(&self) -> u64 {
        self.indeterminate.load(Ordering::SeqCst)
    }

    /// Appends reported as determinately failed that had applied.
    #[must_use]
    pub fn determinate_but_applied(&self) -> u64 {
        self.determinate_but_applied.load(Ordering::SeqCst)
    }
}

impl fmt::Display for FailureCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "failures retried: determinate={} indeterminate={} determinate_but_applied={}",
            self.determinate(),
            self.indeterminate(),
            self.determinate_but_applied()
        )
    }
}

/// A backend whose failed calls are retried (appends with their token).
#[derive(Debug)]
pub struct CallerRetries<B> {
    inner: B,
    counts: Arc<FailureCounts>,
    single_writer: bool,
}

impl<B: PersistBackend<u64>> CallerRetries<B> {
    /// Wraps `inner`, counting failures into `counts`.
    pub fn new(inner: B, counts: Arc<FailureCounts>) -> Self {
        CallerRetries {
            inner,
            counts,
            single_writer: false,
        }
    }

    /// Declares that no other writer appends to the shards this handle
    /// appends to, so a determinate append failure can be checked.
    #[must_use]
    pub fn single_writer(mut self) -> Self {
        self.single_writer = true;
        self
    }

    fn note(&self, err: &BackendError) {
        let counter = if err.is_determinate() {
            &self.counts.determinate
        } else {
            &self.counts.indeterminate
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    /// Runs `call` until it answers (success or `InvalidUsage`) or has
    /// failed `RETRIES + 1` times.
    async fn retried<R, Fut>(&self, mut call: impl FnMut() -> Fut) -> Result<R, BackendError>
    where
        Fut: Future<Output = Result<R, BackendError>>,
    {
        let mut backoff = INITIAL_BACKOFF;
        let mut attempt = 0;
        loop {
            match call().await {
                Err(err) if !matches!(err, BackendError::InvalidUsage(_)) && attempt < RETRIES => {
                    self.note(&err);
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                result => return result,
            }
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<B: PersistBackend<u64>> PersistBackend<u64> for CallerRetries<B> {
    async fn open(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        self.retried(|| self.inner.open(shard)).await
    }

    async fn frontiers(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        self.retried(|| self.inner.frontiers(shard)).await
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
        let mut backoff = INITIAL_BACKOFF;
        let mut attempt = 0;
        loop {
            let outcome = self
                .inner
                .compare_and_append(
                    shard,
                    updates.clone(),
                    expected_upper.clone(),
                    new_upper.clone(),
                    token,
                    fence,
                )
                .await;
            match outcome {
                Err(err) if !matches!(err, BackendError::InvalidUsage(_)) && attempt < RETRIES => {
                    self.note(&err);
                    if err.is_determinate()
                        && self.single_writer
                        && expected_upper != new_upper
                        && let Ok(frontiers) = self.frontiers(shard).await
                        && frontiers.upper == new_upper
                    {
                        self.counts
                            .determinate_but_applied
                            .fetch_add(1, Ordering::SeqCst);
                    }
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                result => return result,
            }
        }
    }

    async fn compare_and_append_all(
        &self,
        appends: Vec<ShardAppend<u64>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<u64>>, BackendError> {
        // Retried with the call's one token, so a retry of a call that
        // applied answers success and applies nothing again.
        self.retried(|| {
            self.inner
                .compare_and_append_all(appends.clone(), token, fence)
        })
        .await
    }

    async fn snapshot(
        &self,
        shard: ShardId,
        as_of: &u64,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.retried(|| self.inner.snapshot(shard, as_of)).await
    }

    async fn fetch(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        self.retried(|| self.inner.fetch(shard, lower, upper)).await
    }

    async fn snapshot_share(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.retried(|| self.inner.snapshot_share(shard, as_of, share))
            .await
    }

    async fn fetch_share(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
        share: ReadShare,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        self.retried(|| self.inner.fetch_share(shard, lower, upper, share))
            .await
    }

    async fn snapshot_stream(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<SnapshotStream, BackendError> {
        self.retried(|| self.inner.snapshot_stream(shard, as_of, share, limit))
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
        self.retried(|| self.inner.fetch_stream(shard, lower, upper, share, limit))
            .await
    }

    async fn wait_for_upper_past(
        &self,
        shard: ShardId,
        frontier: &Antichain<u64>,
    ) -> Result<Antichain<u64>, BackendError> {
        self.retried(|| self.inner.wait_for_upper_past(shard, frontier))
            .await
    }

    async fn downgrade_since(
        &self,
        shard: ShardId,
        new_since: &Antichain<u64>,
        fence: WriteFence,
    ) -> Result<Antichain<u64>, BackendError> {
        self.retried(|| self.inner.downgrade_since(shard, new_since, fence))
            .await
    }

    async fn compact(&self, shard: ShardId) -> Result<CompactionStats, BackendError> {
        self.retried(|| self.inner.compact(shard)).await
    }

    async fn usage(&self, shard: ShardId) -> Result<ShardUsage, BackendError> {
        self.retried(|| self.inner.usage(shard)).await
    }

    async fn finalize(&self, shard: ShardId) -> Result<(), BackendError> {
        self.retried(|| self.inner.finalize(shard)).await
    }

    async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError> {
        self.retried(|| self.inner.list_shards()).await
    }
}
