//! Shared vocabulary of the properties: rows, appends, the retry policy
//! tests use, and consolidation of captured output.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidemark_storage_types::WriteFence;

use differential_dataflow::consolidation::consolidate;
use tidemark_storage_dataflow::RetryPolicy;
use tidemark_storage_types::{Datum, Diff, IdempotencyToken, PersistBackend, Row, ShardId, Update};
use timely::progress::Antichain;

/// Updates a dataflow emitted, as `(row, time, diff)`.
pub(crate) type Captured = Arc<Mutex<Vec<(Row, u64, Diff)>>>;

/// A row `(key, value)`.
pub(crate) fn kv_row(key: i64, value: i64) -> Row {
    Row::pack([Datum::Int64(key), Datum::Int64(value)])
}

/// The `(key, value)` of a row made by [`kv_row`]; `(0, 0)` for any other
/// row (tests only store `kv_row`s).
pub(crate) fn key_value(row: &Row) -> (i64, i64) {
    let mut datums = row.iter();
    match (datums.next(), datums.next()) {
        (Some(Datum::Int64(key)), Some(Datum::Int64(value))) => (key, value),
        _ => (0, 0),
    }
}

/// The frontier `[time]`.
pub(crate) fn at(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

/// Patient retries with short waits: faulty backends fail often.
pub(crate) fn test_retry() -> RetryPolicy {
    RetryPolicy {
        retries: 40,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
    }
}

/// Opens a fresh shard.
pub(crate) async fn new_shard<B: PersistBackend<u64>>(backend: &B) -> ShardId {
    let shard = ShardId::new();
    backend
        .open(shard)
        .await
        .unwrap_or_else(|err| panic!("open of {shard} failed: {err}"));
    shard
}

/// Appends `updates` in `[lower, upper)`, panicking unless it succeeds.
pub(crate) async fn append<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    updates: Vec<Update<u64>>,
    lower: u64,
    upper: Antichain<u64>,
) {
    backend
        .compare_and_append(
            shard,
            updates,
            at(lower),
            upper.clone(),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap_or_else(|err| panic!("append to {shard} [{lower}, {upper:?}) failed: {err}"))
        .unwrap_or_else(|mismatch| panic!("append to {shard} must succeed: {mismatch}"));
}

/// The shard's upper.
pub(crate) async fn upper_of<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
) -> Antichain<u64> {
    backend
        .frontiers(shard)
        .await
        .unwrap_or_else(|err| panic!("frontiers of {shard} failed: {err}"))
        .upper
}

/// The snapshot at `as_of`, panicking on an error.
pub(crate) async fn snapshot_of<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    as_of: u64,
) -> Vec<(Row, Diff)> {
    backend
        .snapshot(shard, &as_of)
        .await
        .unwrap_or_else(|err| panic!("snapshot of {shard} at {as_of} failed: {err}"))
}

/// The captured updates at times `<= time`, consolidated by row.
pub(crate) fn accumulated(captured: &Captured, time: u64) -> Vec<(Row, Diff)> {
    let mut rows: Vec<(Row, Diff)> = captured
        .lock()
        .expect("captured lock")
        .iter()
        .filter(|(_, at, _)| *at <= time)
        .map(|(row, _, diff)| (row.clone(), *diff))
        .collect();
    consolidate(&mut rows);
    rows
}

/// The captured updates consolidated by `(time, row)`.
pub(crate) fn consolidated_with_times(captured: &Captured) -> Vec<((u64, Row), Diff)> {
    let mut updates: Vec<((u64, Row), Diff)> = captured
        .lock()
        .expect("captured lock")
        .iter()
        .map(|(row, time, diff)| ((*time, row.clone()), *diff))
        .collect();
    consolidate(&mut updates);
    updates
}
