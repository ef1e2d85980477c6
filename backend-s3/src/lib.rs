//! An S3 [`PersistBackend`]: shards as write-once batch objects plus one
//! state object per shard, committed by compare-and-swap with S3 conditional
//! writes. No second database is needed.
//!
//! # Layout
//!
//! ```text
//! PREFIX/shards/SHARD/state           since, upper, batch list (small batches inline), recent tokens, retired parts
//! PREFIX/shards/SHARD/batches/UUID    write-once, checksummed batch parts
//! PREFIX/live/SHARD                   marks a shard as listed
//! PREFIX/txns/UUID                    decides one attempt of a multi-shard append
//! PREFIX/log/SEQ                      one commit log entry (log mode, decision 118)
//! PREFIX/conditional-write-probe      checked at build
//! ```
//!
//! # Protocol
//!
//! Every change to a shard reads its state object (or uses the one this
//! handle last wrote), computes the next state, and writes it with
//! `If-Match: ETAG`; a new shard's state is written with `If-None-Match: *`.
//! S3 applies a conditional write atomically, so of several writers that
//! read the same state at most one commits: 412 means the race was lost
//! (re-read, decide again), 409 means a concurrent conditional write was in
//! progress (nothing applied; re-read and retry). Every state carries a
//! sequence number one above the state it replaced, so no two versions have
//! the same ETag. Reads (frontiers, snapshots, fetches) GET the state
//! object, which S3 serves strongly consistent. Why this is linearizable is
//! written down in `docs/decisions/030-s3-state-protocol.md`.
//!
//! A small append (at most [`DEFAULT_INLINE_BATCH_BYTES`] encoded, by
//! default) stores its batch inline in the state, so it is one conditional
//! PUT; a larger one writes its parts first. Compaction moves inline batches
//! out into part objects (`docs/decisions/064-s3-inline-batches.md`).
//!
//! A multi-shard append ([`PersistBackend::compare_and_append_all`]) writes
//! an intent into each shard's state, then creates one record object that
//! commits them all; readers and writers of a shard decide a pending intent
//! by its record (`docs/decisions/110-atomic-multi-collection-appends.md`).
//!
//! With [`S3Config::with_commit_log`], appends (single- and multi-shard)
//! instead go through a shared commit log: one task per handle packs the
//! calls queued to it into one log entry, created by one conditional PUT,
//! and shards in log mode are their state plus the later log entries that
//! name them (`docs/decisions/118-s3-commit-log.md`).
//!
//! # Frontiers
//!
//! A shard's `upper` says which times are final (every update at a time `t`
//! with not `upper <= t` has been written), its `since` which times are
//! readable (`since <= as_of`, not `upper <= as_of`); empty upper = sealed,
//! empty since = unreadable. See [`tidemark_storage_types::time`].
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), tidemark_storage_types::BackendError> {
//! use tidemark_backend_s3::S3Backend;
//! use tidemark_storage_types::{PersistBackend, ShardId};
//! let backend = S3Backend::from_url("s3://my-bucket/tidemark?region=eu-west-1").await?;
//! let frontiers = PersistBackend::<u64>::open(&backend, ShardId::new()).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod append;
mod atomic;
mod buckets;
mod clock;
mod codec;
mod compaction;
mod config;
mod downloads;
mod errors;
mod gc;
mod keys;
mod log;
mod names;
mod read;
mod shards;
mod share;
mod state;
mod store;
mod stream;
mod txn;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use tidemark_storage_types::{ChunkLimit, FetchStream, SnapshotStream};

use tidemark_storage_types::sync::lock;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use tidemark_storage_types::{
    BackendError, CompactionStats, DeterminateKind, Diff, IdempotencyToken, InvalidUsage,
    PersistBackend, ReadShare, Row, ShardAppend, ShardFrontiers, ShardId, ShardUsage,
    StorageTimestamp, Update, UpperMismatch, UpperMismatches, WriteFence,
};
use timely::progress::Antichain;

#[doc(hidden)]
pub use crate::append::SmallAppendEncoding;
pub use crate::atomic::AtomicAppendStop;
pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::config::{
    DEFAULT_INLINE_BATCH_BYTES, DEFAULT_INLINE_STATE_BYTES, DEFAULT_INTENT_TIMEOUT,
    DEFAULT_READ_MEMORY_BYTES, MIN_PART_SIZE_BYTES, MIN_READ_MEMORY_BYTES, S3Config, S3Credentials,
    URL_PARAMETERS,
};
use crate::downloads::DownloadCounters;
pub use crate::downloads::{ObjectPuts, PartDownloads};
pub use crate::gc::{GcStats, LogGcStats};
use crate::keys::Keys;
pub use crate::names::{MAX_BUCKET_BYTES, MAX_ENDPOINT_BYTES, MAX_PREFIX_BYTES, MAX_REGION_BYTES};
use crate::state::ShardState;
#[doc(hidden)]
pub use crate::state::stored_state_as_json;
use crate::store::{Condition, ConditionalPut, Store};
use crate::txn::Outcomes;

/// Conditional writes refused in a row before a state change gives up with
/// `Determinate(Conflict)` (each refusal means another writer made progress,
/// or a concurrent write was in flight).
const MAX_STATE_ATTEMPTS: usize = 64;

/// Times the build probe tries a PUT `If-Match` the probe's current ETag
/// before it decides the store does not honour its own ETags.
const PROBE_ATTEMPTS: usize = 8;

/// A handle on the shards under one bucket prefix. Cheap to clone; clones
/// share a cache of the states this handle last wrote.
#[derive(Clone)]
pub struct S3Backend {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: S3Config,
    clock: Arc<dyn Clock>,
    /// The state (and ETag) this handle last read or committed, per shard.
    /// Only a starting guess for writes: a conditional write on a stale ETag
    /// is refused, and every read that answers a caller is a fresh GET.
    cache: Mutex<HashMap<ShardId, CachedState>>,
    /// Part objects downloaded so far.
    downloads: Arc<DownloadCounters>,
    /// Decided multi-shard append attempts this handle knows of.
    outcomes: Mutex<Outcomes>,
    /// Writes running in the background (rolling committed multi-shard
    /// appends forward).
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Where the next multi-shard appends stop, for crash tests.
    stop: Mutex<Option<AtomicAppendStop>>,
    /// Commit log entries this handle knows ([`crate::log`]).
    log: Mutex<log::LogCache>,
    /// The queue of this handle's committer, once started.
    committer: Mutex<Option<tokio::sync::mpsc::UnboundedSender<log::Request>>>,
    /// Per shard, entries this handle wrote that are not folded into the
    /// shard's state yet (the applier's work list).
    unapplied: Mutex<HashMap<ShardId, u32>>,
    /// Set by tests to keep the applier from folding entries.
    applier_held: AtomicBool,
    /// When this handle last ran commit log gc in the background.
    log_gc: Mutex<gc::LogGcSchedule>,
}

#[derive(Clone)]
struct CachedState {
    state: Arc<ShardState>,
    etag: String,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend")
            .field("bucket", &self.inner.store.bucket)
            .field("prefix", &self.inner.store.keys.prefix())
            .field("endpoint", &self.inner.config.endpoint)
            .finish()
    }
}

/// What a state change decided, given the state it saw.
pub(crate) enum Step<R> {
    /// Nothing to write; answer `R`. Only trusted on a freshly read state.
    Done(R),
    /// Write this state; answer `R` if it commits.
    Write(ShardState, R),
}

impl S3Backend {
    /// Opens the backend a `s3://BUCKET/PREFIX?endpoint=...&region=...&path_style=true`
    /// URL names, with credentials from the standard chain.
    ///
    /// # Errors
    ///
    /// As [`S3Config::from_url`] and [`S3Config::build`]; unknown URL
    /// parameters are `Determinate(InvalidConfig)` naming them.
    pub async fn from_url(url: &str) -> Result<Self, BackendError> {
        S3Config::from_url(url)?.build().await
    }

    /// The configuration this backend was built with.
    #[must_use]
    pub fn config(&self) -> &S3Config {
        &self.inner.config
    }

    /// The underlying client (for tooling and tests that look at the bucket).
    #[must_use]
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.inner.store.client
    }

    /// The keys of the part objects a shard's current state references, in
    /// state order (for tooling and tests that inspect the bucket). Parts
    /// stored inline in the state have no key.
    ///
    /// # Errors
    ///
    /// `InvalidUsage(UnknownShard)` if the shard has no state; S3 failures.
    pub async fn part_keys(&self, shard: ShardId) -> Result<Vec<String>, BackendError> {
        let state = self.read_state(shard).await?;
        let keys = &self.inner.store.keys;
        Ok(state
            .referenced_parts()
            .map(|part| keys.part(shard, part.id))
            .collect())
    }

    /// How many batch parts a shard's current state references, inline in
    /// the state or in objects of their own (for tooling; the objects alone
    /// are [`part_keys`](Self::part_keys)).
    ///
    /// # Errors
    ///
    /// `InvalidUsage(UnknownShard)` if the shard has no state; S3 failures.
    pub async fn stored_parts(&self, shard: ShardId) -> Result<u64, BackendError> {
        let state = self.read_state(shard).await?;
        Ok(state
            .batches
            .iter()
            .map(|batch| batch.parts.len() as u64)
            .sum())
    }

    /// The part objects this handle and its clones have downloaded so far
    /// (for tests and tooling that check what a read fetched).
    #[must_use]
    pub fn part_downloads(&self) -> PartDownloads {
        self.inner.downloads.totals()
    }

    /// The PUT requests this handle and its clones have made so far (for
    /// tests and tooling that check what a write cost).
    #[must_use]
    pub fn object_puts(&self) -> ObjectPuts {
        self.inner.store.puts.totals()
    }

    /// Waits until the writes this handle (or a clone) started in the
    /// background have finished: rolling committed multi-shard appends
    /// forward into their shards' states, and folding the commit log
    /// entries it wrote into their shards' states (unless the applier is
    /// held). Never needed for correctness (a committed append is applied
    /// whether or not its intents were rolled forward or its log entry
    /// folded in); for tests that count requests, and for a clean shutdown.
    pub async fn wait_for_background_writes(&self) {
        self.apply_in_background(1);
        loop {
            let tasks = std::mem::take(&mut *lock(&self.inner.background));
            if tasks.is_empty() {
                return;
            }
            for task in tasks {
                // A task that failed only left an intent for the next writer
                // or reader to decide.
                let _ = task.await;
            }
        }
    }

    /// Makes the next multi-shard appends of this handle (and its clones)
    /// stop part way through, as if the process died there: no cleanup, an
    /// indeterminate error. For crash tests; `None` turns it off.
    #[doc(hidden)]
    pub fn stop_atomic_appends_at(&self, stop: Option<AtomicAppendStop>) {
        *lock(&self.inner.stop) = stop;
    }

    pub(crate) fn stop_point(&self) -> Option<AtomicAppendStop> {
        *lock(&self.inner.stop)
    }

    /// Runs `task` in the background, tracked by
    /// [`wait_for_background_writes`](Self::wait_for_background_writes).
    pub(crate) fn spawn_background(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut background = lock(&self.inner.background);
        background.retain(|task| !task.is_finished());
        background.push(tokio::spawn(task));
    }

    /// The prefix under which a shard's part objects live.
    #[must_use]
    pub fn parts_prefix(&self, shard: ShardId) -> String {
        self.inner.store.keys.batches_dir(shard)
    }

    /// A builder of a backend with these settings, which also takes the
    /// components that are not settings (the clock).
    pub fn builder(config: S3Config) -> S3BackendBuilder {
        S3BackendBuilder {
            config,
            clock: None,
        }
    }

    async fn connect(config: S3Config, clock: Arc<dyn Clock>) -> Result<Self, BackendError> {
        config.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(credentials) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                credentials.access_key_id.clone(),
                credentials.secret_access_key.clone(),
                credentials.session_token.clone(),
                None,
                "tidemark-config",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.path_style)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_timeout(config.operation_timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts));
        if shared.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let store = Store {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            keys: Keys::new(&config.prefix),
            puts: Arc::default(),
        };
        verify_conditional_writes(&store).await?;
        Ok(S3Backend {
            inner: Arc::new(Inner {
                store,
                config,
                clock,
                cache: Mutex::new(HashMap::new()),
                downloads: Arc::new(DownloadCounters::default()),
                outcomes: Mutex::default(),
                background: Mutex::default(),
                stop: Mutex::default(),
                log: Mutex::default(),
                committer: Mutex::default(),
                unapplied: Mutex::default(),
                applier_held: AtomicBool::new(false),
                log_gc: Mutex::default(),
            }),
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn downloads(&self) -> &Arc<DownloadCounters> {
        &self.inner.downloads
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }

    fn cached(&self, shard: ShardId) -> Option<CachedState> {
        lock(&self.inner.cache).get(&shard).cloned()
    }

    /// The cached state as readers see it, if this handle knows how its
    /// pending intent (if any) was decided. Only a starting guess, as
    /// [`cached`](Self::cached); `None` for a log-mode shard (whose writes
    /// go through the log).
    pub(crate) fn cached_view(&self, shard: ShardId) -> Option<Arc<ShardState>> {
        let cached = self.cached(shard)?;
        if cached.state.log.is_some() {
            return None;
        }
        match &cached.state.pending {
            None => Some(cached.state),
            Some(intent) => {
                let outcome = self.known_outcome(intent.txn)?;
                Some(Arc::new(cached.state.decided(outcome)))
            }
        }
    }

    fn remember(&self, shard: ShardId, state: Arc<ShardState>, etag: String) {
        let mut cache = lock(&self.inner.cache);
        // Keep the newest state if another task of this handle committed a
        // later one meanwhile.
        let newer_cached = cache
            .get(&shard)
            .is_some_and(|cached| cached.state.seqno > state.seqno);
        if !newer_cached {
            cache.insert(shard, CachedState { state, etag });
        }
    }

    fn forget(&self, shard: ShardId) {
        lock(&self.inner.cache).remove(&shard);
    }

    /// Reads a shard's state from S3 (and caches it) as readers see it:
    /// with its pending intent, if any, decided ([`read_view`](Self::read_view)).
    ///
    /// # Errors
    ///
    /// `InvalidUsage(UnknownShard)` if the shard has no state.
    pub(crate) async fn read_state(&self, shard: ShardId) -> Result<Arc<ShardState>, BackendError> {
        let state = self.read_state_and_etag(shard).await?.0;
        self.read_view(shard, state).await
    }

    /// A state as of the instant it was read: a pending intent applied if
    /// its record says committed, left out if aborted or undecided.
    ///
    /// `SUBTLE:` an undecided intent reads as absent. The record is read
    /// after the state; if it did not exist then, it did not exist when the
    /// state was read either, and until it exists the shard cannot change
    /// (every writer decides the intent first). So the state without the
    /// intent is the shard as it was at the state's read: the read is
    /// linearized there, before the append's commit point. A committed
    /// record may be newer than the state: then the append committed
    /// between the two requests (or before the state was read) and nothing
    /// else changed the shard in between, so the state with the intent
    /// applied is the shard at the later of the two instants.
    ///
    /// A log-mode state (which never holds an intent) is read with every
    /// later log entry naming the shard folded in, as of the request that
    /// found no newer entry ([`S3Backend::log_tail`]).
    ///
    /// `SUBTLE:` that request comes after the state's GET, and the read is
    /// linearized at it: only log entries change a log-mode shard, and the
    /// state's own fields are the log folded up to its applied seq, so any
    /// version of the state (the one read, or a newer one written since by
    /// an applier or a compaction) plus the entries after its applied seq
    /// up to the newest one is the same shard: the shard as of the newest
    /// entry, which was still the newest at that request.
    pub(crate) async fn read_view(
        &self,
        shard: ShardId,
        state: Arc<ShardState>,
    ) -> Result<Arc<ShardState>, BackendError> {
        if state.log.is_some() {
            return Ok(self.with_log_tail(shard, state).await?.view);
        }
        let Some(intent) = &state.pending else {
            return Ok(state);
        };
        let outcome = self
            .txn_outcome(intent.txn)
            .await?
            .unwrap_or(txn_outcome_undecided());
        Ok(Arc::new(state.decided(outcome)))
    }

    async fn read_state_and_etag(
        &self,
        shard: ShardId,
    ) -> Result<(Arc<ShardState>, String), BackendError> {
        match self.inner.store.get_state(shard).await? {
            Some((state, etag)) => {
                let state = Arc::new(state);
                self.remember(shard, Arc::clone(&state), etag.clone());
                Ok((state, etag))
            }
            None => {
                self.forget(shard);
                Err(InvalidUsage::UnknownShard { shard }.into())
            }
        }
    }

    /// Changes a shard's state by compare-and-swap.
    ///
    /// `decide` sees a state and whether it was just read from S3, never
    /// with a pending intent, and a log-mode state with its log tail folded
    /// in (so writing it applies the tail): an intent is decided first (waiting for its
    /// record, or aborting it after the intent timeout), and `decide` sees
    /// the decided state. Whatever `decide` answers, the write that follows
    /// then also clears the intent (even a [`Step::Done`] writes the decided
    /// state). It may
    /// start from this handle's cached state (`use_cache`): a write decided
    /// on a stale state is refused by its `If-Match` and decided again on a
    /// fresh one, and a [`Step::Done`] on a cached state is re-decided on a
    /// fresh one, so every answer is linearizable.
    ///
    /// Returns the answer and the state it was decided on (the committed
    /// state after a write).
    ///
    /// # Errors
    ///
    /// What `decide` returns; `Determinate(Conflict)` after
    /// [`MAX_STATE_ATTEMPTS`] refused writes; S3 failures (an indeterminate
    /// one leaves the outcome of the last write unknown).
    pub(crate) async fn update_state<R>(
        &self,
        shard: ShardId,
        use_cache: bool,
        mut decide: impl FnMut(&ShardState, bool) -> Result<Step<R>, BackendError>,
    ) -> Result<(R, Arc<ShardState>), BackendError> {
        let mut current = if use_cache { self.cached(shard) } else { None };
        let mut refused = 0;
        loop {
            let (mut state, mut etag, mut fresh) = match current.take() {
                Some(cached) => (cached.state, cached.etag, false),
                None => {
                    let (state, etag) = self.read_state_and_etag(shard).await?;
                    (state, etag, true)
                }
            };
            // SUBTLE: a pending intent is decided before anything is decided
            // on the state, so no change lands while an intent's record may
            // still be created (txn.rs).
            let (view, had_intent) = match &state.pending {
                None => (Arc::clone(&state), false),
                Some(intent) => {
                    let outcome = match self.known_outcome(intent.txn) {
                        Some(outcome) => outcome,
                        // Only wait for (or abort) an intent that is current.
                        None if !fresh => continue,
                        None => self.resolve_for_write(shard, intent).await?,
                    };
                    (Arc::new(state.decided(outcome)), true)
                }
            };
            // A log-mode state is decided on with its log tail folded in,
            // and any write then also applies that tail. A tail with gaps
            // (entries gc deleted) is folded into the state read again
            // after it, which the write then replaces.
            let log_view = self.with_log_tail(shard, view).await?;
            if let Some((again, again_etag)) = log_view.reread {
                (state, etag, fresh) = (again, again_etag, true);
            }
            let (view, folded) = (log_view.view, log_view.folded);
            let step = match decide(&view, fresh)? {
                Step::Done(answer) if had_intent || folded => Step::Write(view.successor(), answer),
                step => step,
            };
            match step {
                Step::Done(answer) if fresh => return Ok((answer, view)),
                Step::Done(_) => continue,
                Step::Write(mut next, answer) => {
                    next.seqno = state.seqno + 1;
                    next.format = next.format_to_write();
                    match self.inner.store.replace_state(shard, &next, &etag).await {
                        Ok(ConditionalPut::Written(new_etag)) => {
                            let next = Arc::new(next);
                            self.remember(shard, Arc::clone(&next), new_etag);
                            return Ok((answer, next));
                        }
                        Ok(ConditionalPut::Refused) => {
                            refused += 1;
                            if refused >= MAX_STATE_ATTEMPTS {
                                return Err(BackendError::determinate(
                                    DeterminateKind::Conflict,
                                    format!(
                                        "shard state changed under every attempt, giving up: shard={shard} attempts={refused}"
                                    ),
                                ));
                            }
                        }
                        Err(err) => {
                            // SUBTLE: the write may have applied; the next
                            // operation must start from a fresh read.
                            self.forget(shard);
                            return Err(err);
                        }
                    }
                }
            }
        }
    }
}

/// How a reader takes an intent whose record does not exist yet (see
/// [`S3Backend::read_view`]).
const fn txn_outcome_undecided() -> crate::state::Outcome {
    crate::state::Outcome::Aborted
}

/// Refuses a store that does not enforce conditional writes: a put-if-absent
/// of an existing object, and a put-if-match with a wrong ETag, must both be
/// refused with 412. Without that, two writers could both "win" an append.
///
/// Also refuses a store that sends no ETag: every state change is a PUT
/// `If-Match` the ETag of the state it replaces, so without ETags every
/// conditional write after the first would be refused. The probe needs an
/// ETag from a conditional PUT and from a GET, and a PUT `If-Match` that
/// ETag must be accepted.
async fn verify_conditional_writes(store: &Store) -> Result<(), BackendError> {
    const OPERATION: &str = "probe_conditional_writes";
    let key = store.keys.probe();
    let body = || b"tidemark conditional write probe".to_vec();
    let unsupported = |problem: &str| {
        BackendError::determinate(
            DeterminateKind::Unsupported,
            format!(
                "the s3 store {problem}, so appends would not be safe: bucket={} key={key}",
                store.bucket
            ),
        )
    };
    let no_etag = |request: &str| {
        unsupported(&format!(
            "sent no ETag for a {request} (conditional writes compare ETags)"
        ))
    };
    // The first put may find the marker already there (412): either way it
    // exists afterwards.
    if let ConditionalPut::Written(etag) = store
        .put_conditional(OPERATION, &key, body(), Condition::Absent)
        .await?
        && etag.is_empty()
    {
        return Err(no_etag("PUT"));
    }
    match store
        .put_conditional(OPERATION, &key, body(), Condition::Absent)
        .await?
    {
        ConditionalPut::Refused => {}
        ConditionalPut::Written(_) => {
            return Err(unsupported(
                "ignores conditional writes (If-None-Match: * overwrote an existing object)",
            ));
        }
    }
    match store
        .put_conditional(
            OPERATION,
            &key,
            body(),
            Condition::Matches("\"tidemark-no-such-etag\""),
        )
        .await?
    {
        ConditionalPut::Refused => {}
        ConditionalPut::Written(_) => {
            return Err(unsupported(
                "ignores conditional writes (If-Match with a wrong etag was accepted)",
            ));
        }
    }
    // SUBTLE: other handles' builds on the same prefix race for the probe
    // (a concurrent conditional write may be refused with 409), so a
    // refusal is tried again on a fresh read a few times before it counts
    // as a store that does not honour its own ETags.
    for _ in 0..PROBE_ATTEMPTS {
        let etag = match store.get_object_with_etag(OPERATION, &key).await? {
            Some((_, etag)) if etag.is_empty() => return Err(no_etag("GET")),
            Some((_, etag)) => etag,
            None => return Err(unsupported("lost the probe object it had just accepted")),
        };
        match store
            .put_conditional(OPERATION, &key, body(), Condition::Matches(&etag))
            .await?
        {
            ConditionalPut::Written(etag) if etag.is_empty() => return Err(no_etag("PUT")),
            ConditionalPut::Written(_) => return Ok(()),
            ConditionalPut::Refused => {}
        }
    }
    Err(unsupported(&format!(
        "refused If-Match with the object's current ETag {PROBE_ATTEMPTS} times"
    )))
}

/// Builds an [`S3Backend`] from its settings ([`S3Config`], plain data) and
/// its components: what a test or an embedding program injects rather than
/// configures.
///
/// ```
/// use std::sync::Arc;
/// use tidemark_backend_s3::{ManualClock, S3Backend, S3Config};
/// let clock = Arc::new(ManualClock::starting_now());
/// let builder = S3Backend::builder(S3Config::new("my-bucket")).with_clock(clock);
/// // `builder.build().await` connects.
/// # drop(builder);
/// ```
#[derive(Debug)]
#[must_use]
pub struct S3BackendBuilder {
    config: S3Config,
    clock: Option<Arc<dyn Clock>>,
}

impl S3BackendBuilder {
    /// Uses `clock` for grace periods instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Connects, checks that the bucket is reachable and that it enforces
    /// conditional writes, and returns the backend.
    ///
    /// # Errors
    ///
    /// As [`S3Config::build`].
    pub async fn build(self) -> Result<S3Backend, BackendError> {
        let clock = self
            .clock
            .unwrap_or_else(|| Arc::new(SystemClock) as Arc<dyn Clock>);
        S3Backend::connect(self.config, clock).await
    }
}

#[async_trait]
impl<T: StorageTimestamp> PersistBackend<T> for S3Backend {
    async fn open(&self, shard: ShardId) -> Result<ShardFrontiers<T>, BackendError> {
        self.open_shard::<T>(shard).await
    }

    async fn frontiers(&self, shard: ShardId) -> Result<ShardFrontiers<T>, BackendError> {
        let state = self.read_state(shard).await?;
        Ok(shards::frontiers_of(&state))
    }

    async fn compare_and_append(
        &self,
        shard: ShardId,
        updates: Vec<Update<T>>,
        expected_upper: Antichain<T>,
        new_upper: Antichain<T>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatch<T>>, BackendError> {
        self.compare_and_append(shard, updates, expected_upper, new_upper, token, fence)
            .await
    }

    async fn compare_and_append_all(
        &self,
        appends: Vec<ShardAppend<T>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<T>>, BackendError> {
        self.compare_and_append_all(appends, token, fence).await
    }

    // SUBTLE: the `Vec` reads are not the streams collected: the pairwise
    // merge of whole parts is faster when the whole read is wanted anyway
    // (decision 114).
    async fn snapshot(&self, shard: ShardId, as_of: &T) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.snapshot(shard, as_of).await
    }

    async fn fetch(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
    ) -> Result<Vec<Update<T>>, BackendError> {
        self.fetch(shard, lower, upper).await
    }

    async fn snapshot_share(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.snapshot_share(shard, as_of, share).await
    }

    async fn fetch_share(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
    ) -> Result<Vec<Update<T>>, BackendError> {
        self.fetch_share(shard, lower, upper, share).await
    }

    async fn snapshot_stream(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<SnapshotStream, BackendError> {
        self.snapshot_stream(shard, as_of, share, limit).await
    }

    async fn fetch_stream(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<FetchStream<T>, BackendError> {
        self.fetch_stream(shard, lower, upper, share, limit).await
    }

    async fn wait_for_upper_past(
        &self,
        shard: ShardId,
        frontier: &Antichain<T>,
    ) -> Result<Antichain<T>, BackendError> {
        self.wait_for_upper_past(shard, frontier).await
    }

    async fn downgrade_since(
        &self,
        shard: ShardId,
        new_since: &Antichain<T>,
        fence: WriteFence,
    ) -> Result<Antichain<T>, BackendError> {
        self.downgrade_since(shard, new_since, fence).await
    }

    async fn compact(&self, shard: ShardId) -> Result<CompactionStats, BackendError> {
        let stats = self.compact_shard::<T>(shard).await?;
        // Maintenance of the shared commit log rides along, rate-limited.
        self.gc_log_in_background();
        Ok(stats)
    }

    async fn usage(&self, shard: ShardId) -> Result<ShardUsage, BackendError> {
        let state = self.read_state(shard).await?;
        Ok(ShardUsage {
            updates: state.stored_updates(),
            bytes: state.stored_bytes(),
        })
    }

    async fn finalize(&self, shard: ShardId) -> Result<(), BackendError> {
        self.finalize_shard(shard).await
    }

    async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError> {
        self.list_shards().await
    }
}
