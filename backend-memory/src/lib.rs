//! The in-memory [`PersistBackend`] of tidemark: the embedded default.
//!
//! A [`MemoryBackend`] is a handle on a named store in a process-wide
//! registry. Every handle opened on the same name (by
//! [`MemoryBackend::open`] or a `memory://NAME` URL) shares the store's
//! shards, so two controllers in one process can race on a shard and the
//! contract's linearizability means something. A store lives as long as the
//! process; nothing is written to disk.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use timely::progress::Antichain;
//! use tidemark_backend_memory::MemoryBackend;
//! use tidemark_storage_types::{
//!     Datum, IdempotencyToken, PersistBackend, Row, ShardId, Update, WriteFence,
//! };
//!
//! let writer = MemoryBackend::from_url("memory://doc-example").unwrap();
//! let reader = MemoryBackend::open("doc-example");
//! let shard = ShardId::new();
//! PersistBackend::<u64>::open(&writer, shard).await.unwrap();
//! let row = Row::pack([Datum::String("hello")]);
//! writer
//!     .compare_and_append(
//!         shard,
//!         vec![Update::new(row.clone(), 0u64, 1)],
//!         Antichain::from_elem(0),
//!         Antichain::from_elem(1),
//!         IdempotencyToken::new(),
//!         WriteFence::Unfenced,
//!     )
//!     .await
//!     .unwrap()
//!     .unwrap();
//! assert_eq!(reader.snapshot(shard, &0).await.unwrap(), vec![(row, 1)]);
//! # });
//! ```
//!
//! # Storage
//!
//! Each shard keeps its since, upper, the most recent applied idempotency
//! tokens (with the bounds they applied with), and its updates as sorted,
//! consolidated batches merged by size class (eight batches of one class
//! into one, so at most `7 * (floor(log8(n)) + 1)` batches for `n`
//! updates). [`compact`](PersistBackend::compact) advances times to
//! the since and leaves one batch. Usage counts each update as its row's
//! encoded bytes plus 16 (8 for the time, 8 for the diff).
//!
//! # Concurrency
//!
//! One lock per shard is held across every check-and-write, so operations on
//! a shard are linearizable. An append over several shards
//! (`compare_and_append_all`) holds all their locks, taken in shard-id
//! order, across its checks and writes, so no reader sees part of it.
//! Snapshots and fetches take the frontiers and shared batches under the
//! lock and compute without it; the streamed forms merge the batches
//! lazily, a chunk at a time, and the `Vec` forms are the same merge read
//! as one chunk. Upper waits use a
//! `tokio::sync::watch` channel per shard, published under the lock.

#![warn(missing_docs)]

mod atomic;
mod config;
mod read;
mod registry;
mod shard;
mod spine;
mod stream;
mod tokens;

use std::fmt;
use std::sync::Arc;
use tidemark_storage_types::{ChunkLimit, FetchStream, SnapshotStream};

use async_trait::async_trait;
use tidemark_storage_types::{
    BackendError, CompactionStats, Diff, IdempotencyToken, PersistBackend, ReadShare, Row,
    ShardAppend, ShardFrontiers, ShardId, ShardUsage, StorageTimestamp, Update, UpperMismatch,
    UpperMismatches, WriteFence, contract,
};
use timely::PartialOrder;
use timely::progress::Antichain;

pub use config::SCHEME;
pub use spine::BYTES_PER_UPDATE;
pub use tokens::REMEMBERED_APPENDS;

use registry::Store;
use shard::Shard;

/// A handle on a named in-memory store. Cheap to clone; clones and every
/// other handle on the same name share the store.
#[derive(Clone)]
pub struct MemoryBackend {
    name: Arc<str>,
    store: Arc<Store>,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("name", &self.name)
            .field("store", &self.store)
            .finish()
    }
}

impl MemoryBackend {
    /// A handle on the store named `name`, created empty on first use. The
    /// store lives until the process exits.
    #[must_use]
    pub fn open(name: &str) -> MemoryBackend {
        MemoryBackend {
            name: name.into(),
            store: registry::named_store(name),
        }
    }

    /// A handle on the store a `memory://NAME` URL names.
    ///
    /// ```
    /// use tidemark_backend_memory::MemoryBackend;
    /// assert_eq!(MemoryBackend::from_url("memory://example").unwrap().name(), "example");
    /// let err = MemoryBackend::from_url("memory://example?foo=1").unwrap_err();
    /// assert!(err.to_string().contains(r#"unknown parameter for memory backend: "foo""#));
    /// ```
    ///
    /// # Errors
    ///
    /// [`BackendError::Determinate`] of kind
    /// [`InvalidConfig`](tidemark_storage_types::DeterminateKind::InvalidConfig)
    /// naming what was wrong: a scheme other than `memory`, an empty name, any
    /// query parameter, a fragment.
    pub fn from_url(url: &str) -> Result<MemoryBackend, BackendError> {
        config::parse_url(url).map(MemoryBackend::open)
    }

    /// The store's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    fn shard<T: StorageTimestamp>(&self, shard: ShardId) -> Result<Arc<Shard<T>>, BackendError> {
        self.store.shard(shard)
    }
}

#[async_trait]
impl<T: StorageTimestamp> PersistBackend<T> for MemoryBackend {
    async fn open(&self, shard: ShardId) -> Result<ShardFrontiers<T>, BackendError> {
        self.store.open_shard::<T>(shard)?.frontiers()
    }

    async fn frontiers(&self, shard: ShardId) -> Result<ShardFrontiers<T>, BackendError> {
        self.shard::<T>(shard)?.frontiers()
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
        self.shard::<T>(shard)?
            .compare_and_append(updates, expected_upper, new_upper, token, fence)
    }

    async fn compare_and_append_all(
        &self,
        appends: Vec<ShardAppend<T>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<T>>, BackendError> {
        atomic::compare_and_append_all(&self.store, appends, token, fence)
    }

    async fn snapshot(&self, shard: ShardId, as_of: &T) -> Result<Vec<(Row, Diff)>, BackendError> {
        let view = self.shard::<T>(shard)?.read_view()?;
        Ok(read::snapshot(shard, &view, as_of, ReadShare::WHOLE)?)
    }

    async fn fetch(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
    ) -> Result<Vec<Update<T>>, BackendError> {
        let view = self.shard::<T>(shard)?.read_view()?;
        Ok(read::fetch(shard, &view, lower, upper, ReadShare::WHOLE)?)
    }

    async fn snapshot_share(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        let view = self.shard::<T>(shard)?.read_view()?;
        Ok(read::snapshot(shard, &view, as_of, share)?)
    }

    async fn fetch_share(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
    ) -> Result<Vec<Update<T>>, BackendError> {
        let view = self.shard::<T>(shard)?.read_view()?;
        Ok(read::fetch(shard, &view, lower, upper, share)?)
    }

    async fn snapshot_stream(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<SnapshotStream, BackendError> {
        let view = self.shard::<T>(shard)?.read_view()?;
        Ok(stream::snapshot_stream(shard, view, as_of, share, limit)?)
    }

    async fn fetch_stream(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<FetchStream<T>, BackendError> {
        let view = self.shard::<T>(shard)?.read_view()?;
        Ok(stream::fetch_stream(
            shard, view, lower, upper, share, limit,
        )?)
    }

    async fn wait_for_upper_past(
        &self,
        shard: ShardId,
        frontier: &Antichain<T>,
    ) -> Result<Antichain<T>, BackendError> {
        contract::check_wait_frontier(shard, frontier)?;
        // Holding the shard keeps its sender, so the channel stays open.
        let watched = self.shard::<T>(shard)?;
        let mut upper = watched.subscribe_upper();
        // `wait_for` checks the current value first and is cancellation
        // safe: dropping the future just drops the receiver.
        let result = upper
            .wait_for(|upper| !PartialOrder::less_equal(upper, frontier))
            .await
            .map(|upper| upper.clone());
        result.map_err(|_| {
            BackendError::indeterminate(format!(
                "memory shard stopped publishing its upper: shard={shard}"
            ))
        })
    }

    async fn downgrade_since(
        &self,
        shard: ShardId,
        new_since: &Antichain<T>,
        fence: WriteFence,
    ) -> Result<Antichain<T>, BackendError> {
        self.shard::<T>(shard)?.downgrade_since(new_since, fence)
    }

    async fn compact(&self, shard: ShardId) -> Result<CompactionStats, BackendError> {
        self.shard::<T>(shard)?.compact()
    }

    async fn usage(&self, shard: ShardId) -> Result<ShardUsage, BackendError> {
        self.shard::<T>(shard)?.usage()
    }

    async fn finalize(&self, shard: ShardId) -> Result<(), BackendError> {
        self.shard::<T>(shard)?.finalize()
    }

    async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError> {
        Ok(self.store.live_shards())
    }
}
