//! Shared by the read tests: frontiers, chunk limits, a backend on a fresh
//! schema with a chosen batch threshold, pool and stream slots, and one-call
//! appends.

use std::num::NonZeroUsize;
use std::time::Duration;

use tidemark_backend_postgres::PostgresBackend;
use tidemark_storage_types::{
    ChunkLimit, IdempotencyToken, PersistBackend, ShardId, Update, WriteFence,
};
use timely::progress::Antichain;

use super::PostgresFactory;

pub fn at(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

pub fn limit(entries: usize, bytes: usize) -> ChunkLimit {
    ChunkLimit::new(
        NonZeroUsize::new(entries).unwrap(),
        NonZeroUsize::new(bytes).unwrap(),
    )
}

/// A backend on a fresh schema whose appends of at least `batch_threshold`
/// updates are stored as batch rows.
pub async fn backend_with(
    url: &str,
    prefix: &str,
    batch_threshold: usize,
    pool_size: u32,
    max_open_streams: u32,
) -> (PostgresFactory, PostgresBackend) {
    let mut factory = PostgresFactory::new(url, prefix);
    factory.config = factory
        .config
        .clone()
        .with_batch_threshold(batch_threshold)
        .with_pool_size(pool_size)
        .with_max_open_streams(max_open_streams)
        .with_connect_timeout(Duration::from_secs(2));
    let backend = factory.handle().await;
    (factory, backend)
}

/// Appends `updates` from `time` to `time + 1`, expecting the upper at `time`.
pub async fn append(backend: &PostgresBackend, shard: ShardId, time: u64, updates: &[Update<u64>]) {
    backend
        .compare_and_append(
            shard,
            updates.to_vec(),
            at(time),
            at(time + 1),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .expect("append")
        .expect("the expected upper");
}
