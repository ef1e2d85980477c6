//! `snapshot_stream` and `fetch_stream`: chunks that concatenate to the
//! `Vec` reads, each non-empty and within the limit, in the read's order,
//! of the shard as it was at the call; dropping a stream part-way is
//! harmless; invalid arguments are rejected at the call.

use std::num::NonZeroUsize;

use futures::StreamExt;
use tidemark_storage_types::{
    BackendError, ChunkEntry, ChunkLimit, Datum, Diff, InvalidUsage, PersistBackend, ReadShare,
    ReadStream, Row, ShardId, Update, WriteFence,
};
use timely::progress::Antichain;

use crate::BackendFactory;
use crate::support::{
    append_ok, at, expect_fetch_range_invalid, expect_not_readable, fetch_of, frontiers_of,
    int_row, keyed_row, open_new_shard, sealed, snapshot_of, update,
};

/// A limit of `entries` entries and no byte bound to speak of.
fn entries(entries: usize) -> ChunkLimit {
    ChunkLimit::entries(NonZeroUsize::new(entries).expect("a positive entry limit"))
}

/// A limit of `entries` entries and `bytes` bytes.
fn entries_and_bytes(entries: usize, bytes: usize) -> ChunkLimit {
    ChunkLimit::new(
        NonZeroUsize::new(entries).expect("a positive entry limit"),
        NonZeroUsize::new(bytes).expect("a positive byte limit"),
    )
}

/// The limits every concatenation property reads with: one entry, a few,
/// a byte bound that cuts before the entry bound, and the default.
fn limits() -> [ChunkLimit; 4] {
    [
        entries(1),
        entries(7),
        entries_and_bytes(1000, 200),
        ChunkLimit::DEFAULT,
    ]
}

/// Appends five batches of overlapping rows (with retractions) at times
/// `0..10`, so that backends storing batches separately hold several.
async fn fill<B: PersistBackend<u64>>(backend: &B, shard: ShardId) {
    for batch in 0..5u64 {
        let updates = (0..40i64)
            .map(|value| {
                let diff = if (value + batch as i64) % 7 == 0 {
                    -1
                } else {
                    1
                };
                update(
                    keyed_row(value % 23, "stream"),
                    batch * 2 + (value as u64 % 2),
                    diff,
                )
            })
            .chain([update(int_row(batch as i64), batch * 2, 1)])
            .collect();
        append_ok(backend, shard, updates, at(batch * 2), at(batch * 2 + 2)).await;
    }
}

/// Every item of a stream, in order, errors included.
async fn items<C>(stream: ReadStream<C>) -> Vec<Result<Vec<C>, BackendError>> {
    stream.collect().await
}

/// The chunks of a stream, panicking on an error item.
async fn chunks_of<C>(stream: ReadStream<C>, call: &str) -> Vec<Vec<C>> {
    items(stream)
        .await
        .into_iter()
        .enumerate()
        .map(|(index, item)| item.unwrap_or_else(|err| panic!("{call}: item {index}: {err}")))
        .collect()
}

/// The chunks of a streamed snapshot, panicking on any error.
async fn snapshot_chunks<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    as_of: u64,
    share: ReadShare,
    limit: ChunkLimit,
) -> Vec<Vec<(Row, Diff)>> {
    let call = format!("snapshot_stream at {as_of} share {share} limit {limit:?}");
    let stream = backend
        .snapshot_stream(shard, &as_of, share, limit)
        .await
        .unwrap_or_else(|err| panic!("{call}: {err}"));
    chunks_of(stream, &call).await
}

/// The chunks of a streamed fetch, panicking on any error.
async fn fetch_chunks<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    lower: &Antichain<u64>,
    upper: &Antichain<u64>,
    share: ReadShare,
    limit: ChunkLimit,
) -> Vec<Vec<Update<u64>>> {
    let call = format!("fetch_stream [{lower:?}, {upper:?}) share {share} limit {limit:?}");
    let stream = backend
        .fetch_stream(shard, lower, upper, share, limit)
        .await
        .unwrap_or_else(|err| panic!("{call}: {err}"));
    chunks_of(stream, &call).await
}

/// Checks every chunk is non-empty and within `limit`: at most
/// `max_entries` entries, and at most `max_bytes` bytes unless it holds a
/// single entry.
fn assert_within<C: ChunkEntry>(chunks: &[Vec<C>], limit: ChunkLimit, call: &str) {
    for (index, chunk) in chunks.iter().enumerate() {
        assert!(!chunk.is_empty(), "{call}: chunk {index} is empty");
        assert!(
            chunk.len() <= limit.max_entries.get(),
            "{call}: chunk {index} holds {} entries, over the limit {}",
            chunk.len(),
            limit.max_entries
        );
        let bytes: usize = chunk.iter().map(ChunkEntry::chunk_bytes).sum();
        assert!(
            chunk.len() == 1 || bytes <= limit.max_bytes.get(),
            "{call}: chunk {index} of {} entries holds {bytes} bytes, over the limit {}",
            chunk.len(),
            limit.max_bytes
        );
    }
}

/// The [`InvalidUsage`] a stream call was rejected with at the call.
fn rejected_at_the_call<C>(
    result: Result<ReadStream<C>, BackendError>,
    call: &str,
) -> InvalidUsage {
    match result {
        Err(BackendError::InvalidUsage(usage)) => usage,
        Err(other) => panic!("{call}: expected an InvalidUsage error, got {other:?}"),
        Ok(_) => panic!("{call}: returned a stream; invalid arguments are rejected at the call"),
    }
}

/// A streamed snapshot, cut with each of several limits, whole or in
/// shares, concatenates to `snapshot_share` at every readable as-of.
pub async fn snapshot_stream_concatenates_to_the_snapshot<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    for as_of in [0, 3, 9] {
        for share in [ReadShare::WHOLE, ReadShare::new(0, 3), ReadShare::new(2, 3)] {
            let whole = backend
                .snapshot_share(shard, &as_of, share)
                .await
                .unwrap_or_else(|err| panic!("snapshot_share {share} at {as_of}: {err}"));
            for limit in limits() {
                let chunks = snapshot_chunks(&backend, shard, as_of, share, limit).await;
                assert_eq!(
                    chunks.concat(),
                    whole,
                    "the snapshot stream at {as_of} share {share} limit {limit:?} does not \
                     concatenate to the snapshot"
                );
            }
        }
    }
}

/// A streamed fetch, cut with each of several limits, whole or in shares,
/// concatenates to `fetch_share`, times advanced by the since.
pub async fn fetch_stream_concatenates_to_the_fetch<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    backend
        .downgrade_since(shard, &at(3), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    for (lower, upper) in [(0, 10), (3, 7), (4, 5), (6, 6)] {
        let (lower, upper) = (at(lower), at(upper));
        for share in [ReadShare::WHOLE, ReadShare::new(1, 3)] {
            let whole = backend
                .fetch_share(shard, &lower, &upper, share)
                .await
                .unwrap_or_else(|err| panic!("fetch_share {share}: {err}"));
            for limit in limits() {
                let chunks = fetch_chunks(&backend, shard, &lower, &upper, share, limit).await;
                assert_eq!(
                    chunks.concat(),
                    whole,
                    "the fetch stream [{lower:?}, {upper:?}) share {share} limit {limit:?} \
                     does not concatenate to the fetch"
                );
            }
        }
    }
}

/// Every chunk of a streamed snapshot or fetch holds at least one entry and
/// at most the limit's entries, and an empty read is an empty stream.
pub async fn stream_chunks_are_non_empty_and_within_the_entry_limit<F: BackendFactory>(
    factory: &F,
) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    let total = snapshot_of(&backend, shard, 9).await.len();
    for max in [1, 2, 5, total - 1] {
        let limit = entries(max);
        let chunks = snapshot_chunks(&backend, shard, 9, ReadShare::WHOLE, limit).await;
        assert_within(&chunks, limit, &format!("snapshot stream limit {max}"));
        assert!(
            chunks.len() >= total.div_ceil(max),
            "{} chunks cannot hold {total} entries at {max} each",
            chunks.len()
        );
        let chunks = fetch_chunks(&backend, shard, &at(0), &at(10), ReadShare::WHOLE, limit).await;
        assert_within(&chunks, limit, &format!("fetch stream limit {max}"));
    }
    let empty = fetch_chunks(
        &backend,
        shard,
        &at(4),
        &at(4),
        ReadShare::WHOLE,
        entries(3),
    )
    .await;
    assert!(
        empty.is_empty(),
        "an empty fetch is a stream of no chunks: {empty:?}"
    );
}

/// Every chunk stays within the byte limit unless it holds a single entry,
/// and an entry larger than the limit comes alone in its chunk.
pub async fn stream_chunks_are_within_the_byte_limit<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let large = "x".repeat(3000);
    let rows: Vec<Row> = (0..30i64)
        .map(|key| {
            let label = if key == 11 {
                large.clone()
            } else {
                "y".repeat(usize::try_from(key).unwrap_or(0) * 10)
            };
            Row::pack([Datum::Int64(key), Datum::String(&label)])
        })
        .collect();
    let updates = rows
        .iter()
        .enumerate()
        .map(|(index, row)| update(row.clone(), index as u64 % 3, 1))
        .collect();
    append_ok(&backend, shard, updates, at(0), at(3)).await;
    let limit = entries_and_bytes(100, 1000);
    let snapshot = snapshot_chunks(&backend, shard, 2, ReadShare::WHOLE, limit).await;
    let fetch = fetch_chunks(&backend, shard, &at(0), &at(3), ReadShare::WHOLE, limit).await;
    assert_within(&snapshot, limit, "snapshot stream");
    assert_within(&fetch, limit, "fetch stream");
    assert!(
        snapshot.len() > 1 && fetch.len() > 1,
        "the byte limit must cut reads the entry limit would not: {} and {} chunks",
        snapshot.len(),
        fetch.len()
    );
    let large_row = &rows[11];
    let alone = snapshot
        .iter()
        .any(|chunk| chunk.len() == 1 && &chunk[0].0 == large_row);
    assert!(
        alone,
        "the entry over the byte limit comes alone in a chunk"
    );
    let alone = fetch
        .iter()
        .any(|chunk| chunk.len() == 1 && &chunk[0].row == large_row);
    assert!(
        alone,
        "the update over the byte limit comes alone in a chunk"
    );
}

/// The chunks of a streamed snapshot come in row order: strictly sorted
/// across chunk boundaries, no zero diff.
pub async fn snapshot_stream_chunks_come_in_row_order<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    for limit in [entries(1), entries(4)] {
        let rows = snapshot_chunks(&backend, shard, 9, ReadShare::WHOLE, limit)
            .await
            .concat();
        assert!(!rows.is_empty(), "the filled shard reads as empty");
        for pair in rows.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "snapshot stream limit {limit:?}: rows out of order: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
        assert!(
            rows.iter().all(|(_, diff)| *diff != 0),
            "a zero diff was streamed"
        );
    }
}

/// The chunks of a streamed fetch come in `(time, row)` order: strictly
/// sorted across chunk boundaries, no zero diff.
pub async fn fetch_stream_chunks_come_in_time_then_row_order<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    for limit in [entries(1), entries(4)] {
        let updates = fetch_chunks(&backend, shard, &at(0), &at(10), ReadShare::WHOLE, limit)
            .await
            .concat();
        assert!(!updates.is_empty(), "the filled shard fetches as empty");
        for pair in updates.windows(2) {
            assert!(
                (pair[0].timestamp, &pair[0].row) < (pair[1].timestamp, &pair[1].row),
                "fetch stream limit {limit:?}: updates out of order: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
        assert!(
            updates.iter().all(|update| update.diff != 0),
            "a zero diff was streamed"
        );
    }
}

/// A streamed snapshot reads the shard as it was at the call: an append, a
/// since downgrade past the as-of and a compaction after the call (before
/// the first chunk is taken, or after it) change nothing it yields.
pub async fn snapshot_stream_is_fixed_at_the_call<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    let as_of = 5;
    let expected = snapshot_of(&backend, shard, as_of).await;
    let limit = entries(3);
    let untouched = backend
        .snapshot_stream(shard, &as_of, ReadShare::WHOLE, limit)
        .await
        .expect("snapshot_stream");
    let mut started = backend
        .snapshot_stream(shard, &as_of, ReadShare::WHOLE, limit)
        .await
        .expect("snapshot_stream");
    let first = started
        .next()
        .await
        .expect("the snapshot has entries")
        .expect("first chunk");

    append_ok(
        &backend,
        shard,
        vec![
            update(int_row(77), 10, 1),
            update(keyed_row(3, "stream"), 11, 5),
        ],
        at(10),
        at(12),
    )
    .await;
    backend
        .downgrade_since(shard, &at(11), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    backend.compact(shard).await.expect("compact");

    let mut resumed = vec![first];
    resumed.extend(chunks_of(started, "the snapshot stream taken before the changes").await);
    assert_eq!(
        resumed.concat(),
        expected,
        "a snapshot stream started before an append, a downgrade and a compaction"
    );
    assert_eq!(
        chunks_of(untouched, "the snapshot stream polled after the changes")
            .await
            .concat(),
        expected,
        "a snapshot stream first polled after an append, a downgrade and a compaction"
    );
}

/// A streamed fetch reads the shard as it was at the call: times advanced
/// by the since of the call, whatever downgrade, compaction or append comes
/// after it.
pub async fn fetch_stream_is_fixed_at_the_call<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    let (lower, upper) = (at(0), at(10));
    let expected = fetch_of(&backend, shard, &lower, &upper).await;
    let limit = entries(3);
    let untouched = backend
        .fetch_stream(shard, &lower, &upper, ReadShare::WHOLE, limit)
        .await
        .expect("fetch_stream");
    let mut started = backend
        .fetch_stream(shard, &lower, &upper, ReadShare::WHOLE, limit)
        .await
        .expect("fetch_stream");
    let first = started
        .next()
        .await
        .expect("the fetch has updates")
        .expect("first chunk");

    backend
        .downgrade_since(shard, &at(7), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    backend.compact(shard).await.expect("compact");
    append_ok(
        &backend,
        shard,
        vec![update(int_row(77), 10, 1)],
        at(10),
        at(11),
    )
    .await;

    let mut resumed = vec![first];
    resumed.extend(chunks_of(started, "the fetch stream taken before the changes").await);
    assert_eq!(
        resumed.concat(),
        expected,
        "a fetch stream started before a downgrade, a compaction and an append"
    );
    assert_eq!(
        chunks_of(untouched, "the fetch stream polled after the changes")
            .await
            .concat(),
        expected,
        "a fetch stream first polled after a downgrade, a compaction and an append"
    );
}

/// Streams dropped part-way (or never polled) leave the shard fully
/// usable: later reads see what they would have, and appends, downgrades,
/// compaction and finalize all work.
pub async fn dropping_a_stream_part_way_leaves_the_shard_usable<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    let expected = snapshot_of(&backend, shard, 9).await;
    for _ in 0..3 {
        let mut snapshot = backend
            .snapshot_stream(shard, &9, ReadShare::WHOLE, entries(2))
            .await
            .expect("snapshot_stream");
        snapshot
            .next()
            .await
            .expect("a first chunk")
            .expect("first chunk");
        drop(snapshot);
        let mut fetch = backend
            .fetch_stream(shard, &at(0), &at(10), ReadShare::WHOLE, entries(2))
            .await
            .expect("fetch_stream");
        fetch
            .next()
            .await
            .expect("a first chunk")
            .expect("first chunk");
        drop(fetch);
        drop(
            backend
                .snapshot_stream(shard, &9, ReadShare::new(0, 2), entries(2))
                .await
                .expect("snapshot_stream"),
        );
    }
    assert_eq!(snapshot_of(&backend, shard, 9).await, expected);
    append_ok(
        &backend,
        shard,
        vec![update(int_row(50), 10, 1)],
        at(10),
        at(11),
    )
    .await;
    backend
        .downgrade_since(shard, &at(10), WriteFence::Unfenced)
        .await
        .expect("downgrade_since after dropped streams");
    backend
        .compact(shard)
        .await
        .expect("compact after dropped streams");
    let mut after = expected.clone();
    after.push((int_row(50), 1));
    differential_dataflow::consolidation::consolidate(&mut after);
    assert_eq!(snapshot_of(&backend, shard, 10).await, after);
    backend
        .finalize(shard)
        .await
        .expect("finalize after dropped streams");
    assert_eq!(frontiers_of(&backend, shard).await.upper, sealed());
}

/// A streamed snapshot at an as-of before the since or at the upper is
/// `AsOfNotReadable`, at the call.
pub async fn snapshot_stream_at_an_unreadable_as_of_is_rejected_at_the_call<F: BackendFactory>(
    factory: &F,
) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    backend
        .downgrade_since(shard, &at(3), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    for as_of in [2, 10, 11] {
        let call = format!("snapshot_stream at {as_of} (since 3, upper 10)");
        let usage = rejected_at_the_call(
            backend
                .snapshot_stream(shard, &as_of, ReadShare::WHOLE, entries(2))
                .await,
            &call,
        );
        expect_not_readable::<()>(Err(BackendError::InvalidUsage(usage)), &call);
    }
}

/// A streamed fetch of an inverted range or one beyond the upper is
/// `FetchRangeInvalid`, at the call.
pub async fn fetch_stream_with_an_invalid_range_is_rejected_at_the_call<F: BackendFactory>(
    factory: &F,
) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    for (lower, upper) in [(at(5), at(4)), (at(0), at(11)), (at(0), sealed())] {
        let call = format!("fetch_stream [{lower:?}, {upper:?}) (upper 10)");
        let usage = rejected_at_the_call(
            backend
                .fetch_stream(shard, &lower, &upper, ReadShare::WHOLE, entries(2))
                .await,
            &call,
        );
        expect_fetch_range_invalid::<()>(Err(BackendError::InvalidUsage(usage)), &call);
    }
}

/// A stream of an invalid share is `InvalidShare` naming the call's shard
/// and share, and a stream of an unknown shard `UnknownShard`, at the call.
pub async fn stream_with_an_invalid_share_or_shard_is_rejected_at_the_call<F: BackendFactory>(
    factory: &F,
) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    fill(&backend, shard).await;
    for share in [
        ReadShare::new(0, 0),
        ReadShare::new(1, 1),
        ReadShare::new(4, 3),
    ] {
        let snapshot = backend.snapshot_stream(shard, &5, share, entries(2)).await;
        let fetch = backend
            .fetch_stream(shard, &at(0), &at(10), share, entries(2))
            .await;
        for usage in [
            rejected_at_the_call(snapshot, "snapshot_stream with an invalid share"),
            rejected_at_the_call(fetch, "fetch_stream with an invalid share"),
        ] {
            match usage {
                InvalidUsage::InvalidShare {
                    shard: named,
                    index,
                    count,
                } => assert_eq!(
                    (named, index, count),
                    (shard, share.index, share.count),
                    "InvalidShare names the call's shard and share"
                ),
                other => panic!("expected InvalidShare for {share}, got {other:?}"),
            }
        }
    }
    let unknown = ShardId::new();
    let snapshot = backend
        .snapshot_stream(unknown, &0, ReadShare::WHOLE, entries(2))
        .await;
    let fetch = backend
        .fetch_stream(unknown, &at(0), &at(0), ReadShare::WHOLE, entries(2))
        .await;
    for usage in [
        rejected_at_the_call(snapshot, "snapshot_stream of an unknown shard"),
        rejected_at_the_call(fetch, "fetch_stream of an unknown shard"),
    ] {
        assert_eq!(
            usage,
            InvalidUsage::UnknownShard { shard: unknown },
            "a stream of an unknown shard"
        );
    }
}
