//! Building blocks of the multi-shard call tests: rows, frontiers, shards
//! and the parts of a call.

use tidemark_backend_s3::S3Backend;
use tidemark_storage_types::{Datum, PersistBackend, Row, ShardAppend, ShardId, Update};
use timely::progress::Antichain;

/// A row naming its writer and that writer's sequence number.
pub fn row(writer: i64, seq: i64) -> Row {
    Row::pack([Datum::Int64(writer), Datum::Int64(seq)])
}

/// The frontier `{time}`.
pub fn frontier(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

/// `count` fresh shards, opened.
pub async fn open_shards(backend: &S3Backend, count: usize) -> Vec<ShardId> {
    let mut shards = Vec::new();
    for _ in 0..count {
        let shard = ShardId::new();
        PersistBackend::<u64>::open(backend, shard)
            .await
            .expect("open");
        shards.push(shard);
    }
    shards
}

/// One shard's part: `rows` at time `lower`, upper `lower -> upper`.
pub fn part(shard: ShardId, lower: u64, upper: u64, rows: &[Row]) -> ShardAppend<u64> {
    ShardAppend {
        shard,
        updates: rows
            .iter()
            .map(|row| Update::new(row.clone(), lower, 1))
            .collect(),
        expected_upper: frontier(lower),
        new_upper: frontier(upper),
    }
}

/// The shard's upper.
pub async fn upper(backend: &S3Backend, shard: ShardId) -> Antichain<u64> {
    PersistBackend::<u64>::frontiers(backend, shard)
        .await
        .expect("frontiers")
        .upper
}
