//! [`FaultyBackend`]: a seeded fault-injection wrapper around any
//! [`PersistBackend<u64>`].
//!
//! Every call may fail in one of three ways, each with a configured
//! probability per [`Operation`]:
//!
//! - **before** the call: the wrapped backend is never called and the caller
//!   gets a [`BackendError::Determinate`] (kind
//!   [`DeterminateKind::Unavailable`]): nothing happened, as when a
//!   connection is refused.
//! - **timed out** before the call: the wrapped backend is never called, but
//!   the caller gets a [`BackendError::Indeterminate`], as when a request
//!   times out before the server received it. The caller cannot tell this
//!   from a lost response; it must resolve the outcome (an append by retrying
//!   with its token) and find that nothing happened.
//! - **after** the call: the wrapped backend did the operation, but the
//!   caller gets a [`BackendError::Indeterminate`], as when the response of a
//!   committed write is lost.
//!
//! Streams ([`PersistBackend::snapshot_stream`],
//! [`PersistBackend::fetch_stream`]) may also fail **part-way**
//! ([`FaultyBackend::with_mid_stream_rate`]): after at least one chunk, each
//! further chunk is replaced, with the configured probability, by a
//! [`BackendError::Indeterminate`] that ends the stream, as when a
//! connection drops during a long read. The chunks before it are correct.
//!
//! The faults are drawn from the seed given by the caller, never from
//! ambient randomness, and independently per call site: the draws of a call
//! depend only on the seed, the operation and how many calls of that
//! operation on that shard came before it (not on the shard's id, so runs
//! with fresh random shards repeat). Concurrent callers on
//! different shards therefore see the same faults on every run whatever
//! order their calls interleave in; calls of one operation on one shard see
//! them in the order they reach the wrapper.
//!
//! ```
//! use tidemark_backend_conformance::faults::{FaultRates, FaultyBackend, Operation};
//! # fn wrap<B: tidemark_storage_types::PersistBackend<u64>>(inner: B) -> Result<(), Box<dyn std::error::Error>> {
//! let faulty = FaultyBackend::new(inner, 42)
//!     .with_rates_for_all(FaultRates::new(0.1, 0.1)?.with_timeout(0.1)?)
//!     .with_rates(Operation::ListShards, FaultRates::NONE);
//! # let _ = faulty; Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use tidemark_storage_types::WriteFence;
use tidemark_storage_types::{ChunkLimit, FetchStream, ReadStream, SnapshotStream};

use futures::StreamExt;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;
use tidemark_storage_types::sync::lock;
use tidemark_storage_types::{
    BackendError, CompactionStats, DeterminateKind, Diff, IdempotencyToken, PersistBackend,
    ReadShare, Row, ShardAppend, ShardFrontiers, ShardId, ShardUsage, Update, UpperMismatch,
    UpperMismatches,
};
use timely::progress::Antichain;

/// One method of [`PersistBackend`], to configure and count faults by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// [`PersistBackend::open`].
    Open,
    /// [`PersistBackend::frontiers`].
    Frontiers,
    /// [`PersistBackend::compare_and_append`].
    CompareAndAppend,
    /// [`PersistBackend::compare_and_append_all`].
    CompareAndAppendAll,
    /// [`PersistBackend::snapshot`].
    Snapshot,
    /// [`PersistBackend::fetch`].
    Fetch,
    /// [`PersistBackend::snapshot_share`].
    SnapshotShare,
    /// [`PersistBackend::fetch_share`].
    FetchShare,
    /// [`PersistBackend::snapshot_stream`].
    SnapshotStream,
    /// [`PersistBackend::fetch_stream`].
    FetchStream,
    /// [`PersistBackend::wait_for_upper_past`].
    WaitForUpperPast,
    /// [`PersistBackend::downgrade_since`].
    DowngradeSince,
    /// [`PersistBackend::compact`].
    Compact,
    /// [`PersistBackend::usage`].
    Usage,
    /// [`PersistBackend::finalize`].
    Finalize,
    /// [`PersistBackend::list_shards`].
    ListShards,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 16] = [
        Operation::Open,
        Operation::Frontiers,
        Operation::CompareAndAppend,
        Operation::CompareAndAppendAll,
        Operation::Snapshot,
        Operation::Fetch,
        Operation::SnapshotShare,
        Operation::FetchShare,
        Operation::SnapshotStream,
        Operation::FetchStream,
        Operation::WaitForUpperPast,
        Operation::DowngradeSince,
        Operation::Compact,
        Operation::Usage,
        Operation::Finalize,
        Operation::ListShards,
    ];

    /// The method's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Operation::Open => "open",
            Operation::Frontiers => "frontiers",
            Operation::CompareAndAppend => "compare_and_append",
            Operation::CompareAndAppendAll => "compare_and_append_all",
            Operation::Snapshot => "snapshot",
            Operation::Fetch => "fetch",
            Operation::SnapshotShare => "snapshot_share",
            Operation::FetchShare => "fetch_share",
            Operation::SnapshotStream => "snapshot_stream",
            Operation::FetchStream => "fetch_stream",
            Operation::WaitForUpperPast => "wait_for_upper_past",
            Operation::DowngradeSince => "downgrade_since",
            Operation::Compact => "compact",
            Operation::Usage => "usage",
            Operation::Finalize => "finalize",
            Operation::ListShards => "list_shards",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault probability that is not in `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Error)]
#[error("fault rate must be a probability between 0 and 1: rate={rate}")]
pub struct InvalidFaultRate {
    /// The rejected value.
    pub rate: f64,
}

/// How often one operation fails before, by a timeout before, and after the
/// call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultRates {
    before: f64,
    timeout: f64,
    after: f64,
}

impl FaultRates {
    /// No faults.
    pub const NONE: FaultRates = FaultRates {
        before: 0.0,
        timeout: 0.0,
        after: 0.0,
    };

    /// Fails with probability `before` before the call (determinate, nothing
    /// happened) and, when the call was made, with probability `after` after
    /// it (indeterminate, it happened). No timeouts: see
    /// [`FaultRates::with_timeout`].
    ///
    /// # Errors
    ///
    /// [`InvalidFaultRate`] if either is not a probability in `[0, 1]`.
    pub fn new(before: f64, after: f64) -> Result<FaultRates, InvalidFaultRate> {
        for rate in [before, after] {
            check_rate(rate)?;
        }
        Ok(FaultRates {
            before,
            timeout: 0.0,
            after,
        })
    }

    /// These rates, and also, for calls not failed before, probability
    /// `timeout` of an indeterminate failure without making the call (a
    /// timeout before the call applied).
    ///
    /// # Errors
    ///
    /// [`InvalidFaultRate`] if `timeout` is not a probability in `[0, 1]`.
    pub fn with_timeout(self, timeout: f64) -> Result<FaultRates, InvalidFaultRate> {
        check_rate(timeout)?;
        Ok(FaultRates { timeout, ..self })
    }

    /// The probability of a fault before the call.
    #[must_use]
    pub fn before(&self) -> f64 {
        self.before
    }

    /// The probability of a timeout before the call (among calls not failed
    /// before).
    #[must_use]
    pub fn timeout(&self) -> f64 {
        self.timeout
    }

    /// The probability of a fault after the call.
    #[must_use]
    pub fn after(&self) -> f64 {
        self.after
    }
}

fn check_rate(rate: f64) -> Result<(), InvalidFaultRate> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(InvalidFaultRate { rate })
    }
}

/// How many calls of one operation a [`FaultyBackend`] saw and faulted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Calls received.
    pub calls: u64,
    /// Calls failed before reaching the wrapped backend (determinate).
    pub failed_before: u64,
    /// Calls that never reached the wrapped backend and were reported as
    /// indeterminate failures (timeouts before the call applied).
    pub timed_out: u64,
    /// Calls that reached the wrapped backend, succeeded there, and were
    /// reported as indeterminate failures.
    pub failed_after: u64,
    /// Streams that ended part-way with an injected indeterminate failure
    /// (counted when the failure is yielded).
    pub failed_mid_stream: u64,
}

impl FaultCounts {
    fn add(&mut self, other: FaultCounts) {
        self.calls += other.calls;
        self.failed_before += other.failed_before;
        self.timed_out += other.timed_out;
        self.failed_after += other.failed_after;
        self.failed_mid_stream += other.failed_mid_stream;
    }
}

/// A [`PersistBackend<u64>`] that forwards every call to `inner`, failing
/// some of them with seeded probabilities (see [the module](self)).
pub struct FaultyBackend<B> {
    inner: B,
    seed: u64,
    rates: BTreeMap<Operation, FaultRates>,
    /// The probability that a stream fails before each chunk after its
    /// first.
    mid_stream_rate: f64,
    /// How many calls each call site (shard and operation) has seen: the
    /// sequence number that, with the seed, decides a call's faults.
    sequence: Mutex<BTreeMap<CallSite, u64>>,
    /// Shared with the streams handed out, which count their own faults.
    counts: Arc<Mutex<BTreeMap<Operation, FaultCounts>>>,
}

/// Where a call lands: the shard it names (none for
/// [`PersistBackend::list_shards`]; the first part's for
/// [`PersistBackend::compare_and_append_all`], none for an empty one) and
/// its operation.
type CallSite = (Option<ShardId>, Operation);

/// The three fault decisions of one call, drawn together so that whether a
/// call fails after it does not depend on how long the call took.
#[derive(Clone, Copy, Debug)]
struct Draws {
    before: bool,
    timeout: bool,
    after: bool,
    /// Seeds the mid-stream faults of a stream the call returns.
    stream_seed: u64,
}

/// One step of SplitMix64: a well-mixed 64-bit value from `state`.
fn mix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The RNG seed of one call: a function of the wrapper's seed, the call
/// site's operation and the call's sequence number at its site, and of
/// nothing else. The shard's id is left out on purpose: shards are usually
/// fresh random ids, and the faults must repeat across runs.
fn call_seed(seed: u64, (_, operation): CallSite, sequence: u64) -> u64 {
    let operation_index = Operation::ALL
        .iter()
        .position(|candidate| *candidate == operation)
        .unwrap_or(Operation::ALL.len());
    [operation_index as u64, sequence]
        .into_iter()
        .fold(mix(seed), |state, word| mix(state ^ word))
}

impl<B> FaultyBackend<B> {
    /// Wraps `inner` with no faults configured; faults will be drawn from
    /// `seed` (see [the module](self)).
    pub fn new(inner: B, seed: u64) -> FaultyBackend<B> {
        FaultyBackend {
            inner,
            seed,
            rates: BTreeMap::new(),
            mid_stream_rate: 0.0,
            sequence: Mutex::new(BTreeMap::new()),
            counts: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Makes every stream this wrapper returns fail part-way with
    /// probability `rate` before each chunk after its first: the stream
    /// yields a [`BackendError::Indeterminate`] instead of that chunk and
    /// ends. Drawn from the seed, per stream, like the call faults.
    ///
    /// # Errors
    ///
    /// [`InvalidFaultRate`] if `rate` is not a probability in `[0, 1]`.
    pub fn with_mid_stream_rate(self, rate: f64) -> Result<FaultyBackend<B>, InvalidFaultRate> {
        check_rate(rate)?;
        Ok(FaultyBackend {
            mid_stream_rate: rate,
            ..self
        })
    }

    /// Sets the fault rates of one operation.
    #[must_use]
    pub fn with_rates(mut self, operation: Operation, rates: FaultRates) -> FaultyBackend<B> {
        self.rates.insert(operation, rates);
        self
    }

    /// Sets the fault rates of every operation.
    #[must_use]
    pub fn with_rates_for_all(mut self, rates: FaultRates) -> FaultyBackend<B> {
        for operation in Operation::ALL {
            self.rates.insert(operation, rates);
        }
        self
    }

    /// The wrapped backend, to observe what really happened.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// What happened to the calls of one operation so far.
    #[must_use]
    pub fn counts(&self, operation: Operation) -> FaultCounts {
        let counts = lock(&self.counts);
        counts.get(&operation).copied().unwrap_or_default()
    }

    /// What happened to all calls so far.
    #[must_use]
    pub fn total_counts(&self) -> FaultCounts {
        let counts = lock(&self.counts);
        let mut total = FaultCounts::default();
        for operation_counts in counts.values() {
            total.add(*operation_counts);
        }
        total
    }

    fn rates(&self, operation: Operation) -> FaultRates {
        self.rates
            .get(&operation)
            .copied()
            .unwrap_or(FaultRates::NONE)
    }

    /// The fault decisions of the next call at `site`.
    fn draw(&self, site: CallSite) -> Draws {
        let rates = self.rates(site.1);
        let sequence = {
            let mut sequence = lock(&self.sequence);
            let next = sequence.entry(site).or_insert(0);
            let current = *next;
            *next += 1;
            current
        };
        let mut rng = StdRng::seed_from_u64(call_seed(self.seed, site, sequence));
        Draws {
            before: rng.random_bool(rates.before),
            timeout: rng.random_bool(rates.timeout),
            after: rng.random_bool(rates.after),
            stream_seed: rng.random(),
        }
    }

    fn count(&self, operation: Operation, update: impl FnOnce(&mut FaultCounts)) {
        update(lock(&self.counts).entry(operation).or_default());
    }

    /// Runs `call` (which makes the real call when awaited) at the call site
    /// of `shard` and `operation`, between the fault decisions.
    async fn run<V, Fut>(
        &self,
        operation: Operation,
        shard: Option<ShardId>,
        call: impl FnOnce() -> Fut,
    ) -> Result<V, BackendError>
    where
        Fut: Future<Output = Result<V, BackendError>>,
    {
        let draws = self.draw((shard, operation));
        self.run_drawn(operation, draws, call).await
    }

    /// [`run`](Self::run) for a call returning a stream, which may then
    /// fail part-way (see [`with_mid_stream_rate`](Self::with_mid_stream_rate)).
    async fn run_stream<C, Fut>(
        &self,
        operation: Operation,
        shard: ShardId,
        call: impl FnOnce() -> Fut,
    ) -> Result<ReadStream<C>, BackendError>
    where
        C: Send + 'static,
        Fut: Future<Output = Result<ReadStream<C>, BackendError>>,
    {
        let draws = self.draw((Some(shard), operation));
        let stream = self.run_drawn(operation, draws, call).await?;
        if self.mid_stream_rate == 0.0 {
            return Ok(stream);
        }
        Ok(fail_mid_stream(
            stream,
            self.mid_stream_rate,
            draws.stream_seed,
            operation,
            Arc::clone(&self.counts),
        ))
    }

    /// Runs `call` between the fault decisions `draws`.
    async fn run_drawn<V, Fut>(
        &self,
        operation: Operation,
        draws: Draws,
        call: impl FnOnce() -> Fut,
    ) -> Result<V, BackendError>
    where
        Fut: Future<Output = Result<V, BackendError>>,
    {
        self.count(operation, |counts| counts.calls += 1);
        if draws.before {
            self.count(operation, |counts| counts.failed_before += 1);
            return Err(BackendError::determinate(
                DeterminateKind::Unavailable,
                format!("injected fault before the call, it was not made: operation={operation}"),
            ));
        }
        if draws.timeout {
            self.count(operation, |counts| counts.timed_out += 1);
            return Err(BackendError::indeterminate(format!(
                "injected timeout before the call, it was not made but the caller cannot know: operation={operation}"
            )));
        }
        // SUBTLE: the real call is made (and awaited) before an after-fault
        // is reported, so an after-fault always reports a call that did
        // happen.
        let result = call().await;
        match result {
            Ok(_) if draws.after => {
                self.count(operation, |counts| counts.failed_after += 1);
                Err(BackendError::indeterminate(format!(
                    "injected fault after the call, it was made but its response lost: operation={operation}"
                )))
            }
            other => other,
        }
    }
}

/// `stream`, failing before each chunk after the first with probability
/// `rate` (drawn from `seed`): the failure replaces the chunk and ends the
/// stream.
fn fail_mid_stream<C: Send + 'static>(
    stream: ReadStream<C>,
    rate: f64,
    seed: u64,
    operation: Operation,
    counts: Arc<Mutex<BTreeMap<Operation, FaultCounts>>>,
) -> ReadStream<C> {
    let rng = StdRng::seed_from_u64(seed);
    futures::stream::unfold(Some((stream, rng, 0u64)), move |state| {
        let counts = Arc::clone(&counts);
        async move {
            let (mut stream, mut rng, delivered) = state?;
            match stream.next().await? {
                Ok(_) if delivered > 0 && rng.random_bool(rate) => {
                    lock(&counts).entry(operation).or_default().failed_mid_stream += 1;
                    let err = BackendError::indeterminate(format!(
                        "injected fault part-way through a stream, after {delivered} chunks: operation={operation}"
                    ));
                    Some((Err(err), None))
                }
                Ok(chunk) => Some((Ok(chunk), Some((stream, rng, delivered + 1)))),
                Err(err) => Some((Err(err), None)),
            }
        }
    })
    .boxed()
}

impl<B: fmt::Debug> fmt::Debug for FaultyBackend<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("inner", &self.inner)
            .field("seed", &self.seed)
            .field("rates", &self.rates)
            .finish_non_exhaustive()
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<B: PersistBackend<u64>> PersistBackend<u64> for FaultyBackend<B> {
    async fn open(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        self.run(Operation::Open, Some(shard), || self.inner.open(shard))
            .await
    }

    async fn frontiers(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        self.run(Operation::Frontiers, Some(shard), || {
            self.inner.frontiers(shard)
        })
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
        self.run(Operation::CompareAndAppend, Some(shard), || {
            self.inner
                .compare_and_append(shard, updates, expected_upper, new_upper, token, fence)
        })
        .await
    }

    async fn compare_and_append_all(
        &self,
        appends: Vec<ShardAppend<u64>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<u64>>, BackendError> {
        let site = appends.first().map(|part| part.shard);
        self.run(Operation::CompareAndAppendAll, site, || {
            self.inner.compare_and_append_all(appends, token, fence)
        })
        .await
    }

    async fn snapshot(
        &self,
        shard: ShardId,
        as_of: &u64,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.run(Operation::Snapshot, Some(shard), || {
            self.inner.snapshot(shard, as_of)
        })
        .await
    }

    async fn fetch(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        self.run(Operation::Fetch, Some(shard), || {
            self.inner.fetch(shard, lower, upper)
        })
        .await
    }

    async fn snapshot_share(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.run(Operation::SnapshotShare, Some(shard), || {
            self.inner.snapshot_share(shard, as_of, share)
        })
        .await
    }

    async fn fetch_share(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
        share: ReadShare,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        self.run(Operation::FetchShare, Some(shard), || {
            self.inner.fetch_share(shard, lower, upper, share)
        })
        .await
    }

    async fn snapshot_stream(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<SnapshotStream, BackendError> {
        self.run_stream(Operation::SnapshotStream, shard, || {
            self.inner.snapshot_stream(shard, as_of, share, limit)
        })
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
        self.run_stream(Operation::FetchStream, shard, || {
            self.inner.fetch_stream(shard, lower, upper, share, limit)
        })
        .await
    }

    async fn wait_for_upper_past(
        &self,
        shard: ShardId,
        frontier: &Antichain<u64>,
    ) -> Result<Antichain<u64>, BackendError> {
        self.run(Operation::WaitForUpperPast, Some(shard), || {
            self.inner.wait_for_upper_past(shard, frontier)
        })
        .await
    }

    async fn downgrade_since(
        &self,
        shard: ShardId,
        new_since: &Antichain<u64>,
        fence: WriteFence,
    ) -> Result<Antichain<u64>, BackendError> {
        self.run(Operation::DowngradeSince, Some(shard), || {
            self.inner.downgrade_since(shard, new_since, fence)
        })
        .await
    }

    async fn compact(&self, shard: ShardId) -> Result<CompactionStats, BackendError> {
        self.run(Operation::Compact, Some(shard), || {
            self.inner.compact(shard)
        })
        .await
    }

    async fn usage(&self, shard: ShardId) -> Result<ShardUsage, BackendError> {
        self.run(Operation::Usage, Some(shard), || self.inner.usage(shard))
            .await
    }

    async fn finalize(&self, shard: ShardId) -> Result<(), BackendError> {
        self.run(Operation::Finalize, Some(shard), || {
            self.inner.finalize(shard)
        })
        .await
    }

    async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError> {
        self.run(Operation::ListShards, None, || self.inner.list_shards())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_backend_memory::MemoryBackend;
    use tidemark_storage_types::Datum;

    fn frontier(time: u64) -> Antichain<u64> {
        Antichain::from_elem(time)
    }

    #[tokio::test]
    async fn a_timeout_is_indeterminate_and_never_applies() {
        let inner = MemoryBackend::open("faults-timeout-never-applies");
        let timeouts = FaultRates::NONE.with_timeout(1.0).expect("valid rates");
        let faulty = FaultyBackend::new(inner, 5).with_rates_for_all(timeouts);
        let shard = ShardId::new();
        let open = faulty.open(shard).await.unwrap_err();
        assert!(matches!(open, BackendError::Indeterminate(_)), "{open:?}");
        PersistBackend::<u64>::open(faulty.inner(), shard)
            .await
            .unwrap();
        let append = faulty
            .compare_and_append(
                shard,
                vec![Update::new(Row::pack([Datum::Int64(1)]), 0, 1)],
                frontier(0),
                frontier(1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(append, BackendError::Indeterminate(_)),
            "{append:?}"
        );
        let frontiers = PersistBackend::<u64>::frontiers(faulty.inner(), shard)
            .await
            .unwrap();
        assert_eq!(
            frontiers.upper,
            frontier(0),
            "the timed-out append did not apply"
        );
        let counts = faulty.total_counts();
        assert_eq!((counts.calls, counts.timed_out), (2, 2), "{counts:?}");
        assert_eq!((counts.failed_before, counts.failed_after), (0, 0));
    }

    /// The faults each shard sees do not depend on how calls on different
    /// shards interleave.
    #[tokio::test]
    async fn fault_placement_per_shard_does_not_depend_on_interleaving() {
        let rates = FaultRates::new(0.3, 0.0)
            .and_then(|rates| rates.with_timeout(0.3))
            .expect("valid rates");
        let shards = [ShardId::new(), ShardId::new()];
        let mut outcomes = Vec::new();
        for order in [[0, 1], [1, 0]] {
            let inner = MemoryBackend::open("faults-interleaving");
            let faulty = FaultyBackend::new(inner, 99).with_rates_for_all(rates);
            let mut per_shard: BTreeMap<ShardId, Vec<&'static str>> = BTreeMap::new();
            for _ in 0..20 {
                for index in order {
                    let shard = shards[index];
                    let outcome = match faulty.open(shard).await {
                        Ok(_) => "ok",
                        Err(BackendError::Determinate(_)) => "before",
                        Err(BackendError::Indeterminate(_)) => "timeout",
                        Err(other) => panic!("unexpected error: {other:?}"),
                    };
                    per_shard.entry(shard).or_default().push(outcome);
                }
            }
            outcomes.push(per_shard);
        }
        assert_eq!(outcomes[0], outcomes[1]);
        let all: Vec<_> = outcomes[0].values().flatten().collect();
        for kind in ["ok", "before", "timeout"] {
            assert!(
                all.iter().any(|outcome| **outcome == kind),
                "{kind}: {all:?}"
            );
        }
    }

    /// A shard of `rows` one-column rows at time 0, upper 1.
    async fn shard_of(inner: &MemoryBackend, rows: i64) -> ShardId {
        let shard = ShardId::new();
        PersistBackend::<u64>::open(inner, shard).await.unwrap();
        let updates = (0..rows)
            .map(|value| Update::new(Row::pack([Datum::Int64(value)]), 0, 1))
            .collect();
        inner
            .compare_and_append(
                shard,
                updates,
                frontier(0),
                frontier(1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
        shard
    }

    fn two_entries() -> ChunkLimit {
        ChunkLimit::entries(std::num::NonZeroUsize::new(2).unwrap())
    }

    /// The items of a stream, each as its entry count or "indeterminate".
    async fn outline<C>(stream: ReadStream<C>) -> Vec<Result<usize, &'static str>> {
        stream
            .map(|item| match item {
                Ok(chunk) => Ok(chunk.len()),
                Err(BackendError::Indeterminate(_)) => Err("indeterminate"),
                Err(_) => Err("other"),
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_certain_mid_stream_fault_ends_every_stream_after_its_first_chunk() {
        let inner = MemoryBackend::open("faults-mid-stream-certain");
        let shard = shard_of(&inner, 7).await;
        let faulty = FaultyBackend::new(inner, 3)
            .with_mid_stream_rate(1.0)
            .expect("valid rate");
        let snapshot = faulty
            .snapshot_stream(shard, &0, ReadShare::WHOLE, two_entries())
            .await
            .expect("the call itself does not fail");
        assert_eq!(outline(snapshot).await, vec![Ok(2), Err("indeterminate")]);
        let fetch = faulty
            .fetch_stream(
                shard,
                &frontier(0),
                &frontier(1),
                ReadShare::WHOLE,
                two_entries(),
            )
            .await
            .expect("the call itself does not fail");
        assert_eq!(outline(fetch).await, vec![Ok(2), Err("indeterminate")]);
        let one_chunk = faulty
            .snapshot_stream(shard, &0, ReadShare::WHOLE, ChunkLimit::DEFAULT)
            .await
            .unwrap();
        assert_eq!(
            outline(one_chunk).await,
            vec![Ok(7)],
            "a stream's first chunk is never replaced by a fault"
        );
        assert_eq!(
            faulty.counts(Operation::SnapshotStream).failed_mid_stream,
            1
        );
        assert_eq!(faulty.total_counts().failed_mid_stream, 2);
    }

    #[tokio::test]
    async fn mid_stream_faults_repeat_from_the_seed_and_keep_a_correct_prefix() {
        let mut outlines = Vec::new();
        for run in 0..2 {
            let inner = MemoryBackend::open(&format!("faults-mid-stream-seeded-{run}"));
            let shard = shard_of(&inner, 40).await;
            let whole = PersistBackend::<u64>::snapshot(&inner, shard, &0)
                .await
                .unwrap();
            let faulty = FaultyBackend::new(inner, 17)
                .with_mid_stream_rate(0.05)
                .expect("valid rate");
            let mut per_run = Vec::new();
            for _ in 0..10 {
                let items: Vec<_> = faulty
                    .snapshot_stream(shard, &0, ReadShare::WHOLE, two_entries())
                    .await
                    .unwrap()
                    .collect()
                    .await;
                let mut delivered = Vec::new();
                let mut shape = Vec::new();
                for item in items {
                    match item {
                        Ok(chunk) => {
                            shape.push(Ok(chunk.len()));
                            delivered.extend(chunk);
                        }
                        Err(err) => {
                            assert!(matches!(err, BackendError::Indeterminate(_)), "{err:?}");
                            shape.push(Err("indeterminate"));
                        }
                    }
                }
                assert_eq!(
                    delivered,
                    whole[..delivered.len()].to_vec(),
                    "what a failed stream delivered is a prefix of the read"
                );
                per_run.push(shape);
            }
            outlines.push(per_run);
        }
        assert_eq!(
            outlines[0], outlines[1],
            "the same seed places the same faults"
        );
        let failed = outlines[0]
            .iter()
            .filter(|shape| shape.last() == Some(&Err("indeterminate")))
            .count();
        assert!(
            (1..10).contains(&failed),
            "at a rate of 0.05 over 19 chances some of 10 streams fail and some finish: {failed}"
        );
    }

    #[test]
    fn mid_stream_rates_outside_zero_to_one_are_rejected() {
        let inner = MemoryBackend::open("faults-mid-stream-rate");
        assert!(matches!(
            FaultyBackend::new(inner, 1).with_mid_stream_rate(1.5),
            Err(InvalidFaultRate { rate: 1.5 })
        ));
    }

    #[test]
    fn rates_outside_zero_to_one_are_rejected() {
        assert_eq!(
            FaultRates::new(-0.1, 0.0),
            Err(InvalidFaultRate { rate: -0.1 })
        );
        assert_eq!(
            FaultRates::new(0.0, 1.5),
            Err(InvalidFaultRate { rate: 1.5 })
        );
        assert!(FaultRates::new(f64::NAN, 0.0).is_err());
        let rates = FaultRates::new(0.0, 1.0).expect("valid rates");
        assert_eq!((rates.before(), rates.after()), (0.0, 1.0));
        assert!(
            InvalidFaultRate { rate: 2.0 }
                .to_string()
                .ends_with("rate=2")
        );
    }

    #[test]
    fn timeout_rates_outside_zero_to_one_are_rejected() {
        assert_eq!(
            FaultRates::NONE.with_timeout(1.01),
            Err(InvalidFaultRate { rate: 1.01 })
        );
        let rates = FaultRates::new(0.1, 0.2)
            .and_then(|rates| rates.with_timeout(0.3))
            .expect("valid rates");
        assert_eq!(
            (rates.before(), rates.timeout(), rates.after()),
            (0.1, 0.3, 0.2)
        );
    }

    #[test]
    fn a_call_seed_depends_on_seed_operation_and_sequence_only() {
        let shard = ShardId::new();
        let other = ShardId::new();
        let base = call_seed(1, (Some(shard), Operation::Fetch), 0);
        assert_eq!(base, call_seed(1, (Some(shard), Operation::Fetch), 0));
        assert_ne!(base, call_seed(2, (Some(shard), Operation::Fetch), 0));
        assert_eq!(base, call_seed(1, (Some(other), Operation::Fetch), 0));
        assert_ne!(base, call_seed(1, (Some(shard), Operation::Snapshot), 0));
        assert_ne!(base, call_seed(1, (Some(shard), Operation::Fetch), 1));
    }

    #[test]
    fn operation_names_are_the_method_names() {
        let names: Vec<_> = Operation::ALL.iter().map(|op| op.to_string()).collect();
        assert_eq!(names.len(), 16);
        assert!(names.contains(&"compare_and_append_all".to_string()));
        assert!(names.contains(&"compare_and_append".to_string()));
        assert!(names.contains(&"wait_for_upper_past".to_string()));
    }
}
