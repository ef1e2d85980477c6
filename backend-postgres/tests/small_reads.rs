//! Reads of the PostgreSQL backend answered by their first statement (a
//! small shard) and reads that go on to the cursor (a large one): the same
//! answers on both sides of the bound, in both layouts, whole, streamed and
//! in shares; the same argument errors at the call; a small stream holds
//! its slot but no connection; a row that does not decode ends a small
//! stream after the chunks before it.

mod support;

use std::collections::BTreeMap;

use futures::StreamExt;
use support::reads::{append, at, backend_with, limit};
use support::test_url;
use tidemark_backend_postgres::PostgresBackend;
use tidemark_storage_types::{
    BackendError, ChunkEntry, ChunkLimit, Codec64, Datum, DeterminateKind, Diff, InvalidUsage,
    PersistBackend, ReadShare, Row, ShardId, Update, WriteFence, collect_stream,
};

/// More stored updates than a `Vec` read answers from its first statement
/// (8,192), so the large shard goes on to the cursor.
const LARGE_BATCH_UPDATES: i64 = 9_000;

/// Appends of at least this many updates are stored as batch rows.
const SMALL_READ_BATCH_THRESHOLD: usize = 10;

fn row(value: i64) -> Row {
    Row::pack([Datum::Int64(value), Datum::String("small read payload")])
}

/// A shard with a batch row of `batch_updates` updates at time 0 (with
/// retractions), small appends stored as rows at times 1 to 3, and its since
/// at 1; returns everything appended.
async fn fill(backend: &PostgresBackend, shard: ShardId, batch_updates: i64) -> Vec<Update<u64>> {
    PersistBackend::<u64>::open(backend, shard).await.unwrap();
    let mut all: Vec<Update<u64>> = (0..batch_updates)
        .map(|value| Update::new(row(value), 0, if value % 5 == 0 { -1 } else { 1 }))
        .collect();
    append(backend, shard, 0, &all).await;
    for time in 1..4u64 {
        let time_code = i64::try_from(time).unwrap();
        let updates: Vec<Update<u64>> = (0..4)
            .map(|value| Update::new(row(value * 5), time, time_code))
            .collect();
        append(backend, shard, time, &updates).await;
        all.extend(updates);
    }
    PersistBackend::<u64>::downgrade_since(backend, shard, &at(1), WriteFence::Unfenced)
        .await
        .unwrap();
    all
}

fn expected_snapshot(all: &[Update<u64>], as_of: u64) -> Vec<(Row, Diff)> {
    let mut sums: BTreeMap<Row, Diff> = BTreeMap::new();
    for update in all.iter().filter(|update| update.timestamp <= as_of) {
        *sums.entry(update.row.clone()).or_default() += update.diff;
    }
    sums.into_iter().filter(|(_, diff)| *diff != 0).collect()
}

/// The fetch of `[lower, upper)` with times advanced by `since`, in
/// `(time, row)` order.
fn expected_fetch(all: &[Update<u64>], since: u64, lower: u64, upper: u64) -> Vec<Update<u64>> {
    let mut sums: BTreeMap<(u64, Row), Diff> = BTreeMap::new();
    for update in all {
        let time = update.timestamp.max(since);
        if (lower..upper).contains(&time) {
            *sums.entry((time, update.row.clone())).or_default() += update.diff;
        }
    }
    sums.into_iter()
        .filter(|(_, diff)| *diff != 0)
        .map(|((time, row), diff)| Update::new(row, time, diff))
        .collect()
}

/// The limits each read is streamed with: the default (a small shard is
/// answered by the first statement), one entry (the first statement
/// answers at most one update: the cursor), and a few entries.
fn stream_limits() -> [ChunkLimit; 3] {
    [ChunkLimit::DEFAULT, limit(1, 1 << 20), limit(7, 1 << 20)]
}

fn check_chunks<C: ChunkEntry>(chunks: &[Vec<C>], limit: ChunkLimit, what: &str) {
    for chunk in chunks {
        assert!(!chunk.is_empty(), "{what}: an empty chunk");
        assert!(
            chunk.len() <= limit.max_entries.get(),
            "{what}: {} entries over {limit:?}",
            chunk.len()
        );
    }
}

async fn check_reads(backend: &PostgresBackend, shard: ShardId, all: &[Update<u64>], what: &str) {
    for as_of in [1u64, 3] {
        let expected = expected_snapshot(all, as_of);
        assert_eq!(
            backend.snapshot(shard, &as_of).await.unwrap(),
            expected,
            "{what}: snapshot at {as_of}"
        );
        for stream_limit in stream_limits() {
            let chunks: Vec<Vec<(Row, Diff)>> = backend
                .snapshot_stream(shard, &as_of, ReadShare::WHOLE, stream_limit)
                .await
                .unwrap()
                .map(Result::unwrap)
                .collect()
                .await;
            check_chunks(&chunks, stream_limit, what);
            assert_eq!(
                chunks.concat(),
                expected,
                "{what}: snapshot stream at {as_of}, {stream_limit:?}"
            );
            assert_eq!(backend.open_streams(), 0, "{what}");
        }
        let mut shared = Vec::new();
        for index in 0..3 {
            let share = ReadShare::new(index, 3);
            shared.extend(backend.snapshot_share(shard, &as_of, share).await.unwrap());
        }
        shared.sort();
        assert_eq!(
            shared, expected,
            "{what}: shares of the snapshot at {as_of}"
        );
    }
    for (lower, upper) in [(0u64, 4u64), (2, 4), (3, 4), (1, 1)] {
        let expected = expected_fetch(all, 1, lower, upper);
        assert_eq!(
            backend.fetch(shard, &at(lower), &at(upper)).await.unwrap(),
            expected,
            "{what}: fetch [{lower}, {upper})"
        );
        for stream_limit in stream_limits() {
            let chunks: Vec<Vec<Update<u64>>> = backend
                .fetch_stream(
                    shard,
                    &at(lower),
                    &at(upper),
                    ReadShare::WHOLE,
                    stream_limit,
                )
                .await
                .unwrap()
                .map(Result::unwrap)
                .collect()
                .await;
            check_chunks(&chunks, stream_limit, what);
            assert_eq!(
                chunks.concat(),
                expected,
                "{what}: fetch stream [{lower}, {upper}), {stream_limit:?}"
            );
        }
        let mut shared = Vec::new();
        for index in 0..3 {
            let share = ReadShare::new(index, 3);
            shared.extend(
                backend
                    .fetch_share(shard, &at(lower), &at(upper), share)
                    .await
                    .unwrap(),
            );
        }
        shared.sort_by(|a, b| (a.timestamp, &a.row).cmp(&(b.timestamp, &b.row)));
        assert_eq!(
            shared, expected,
            "{what}: shares of fetch [{lower}, {upper})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_agree_on_both_sides_of_the_first_statements_bound() {
    let Some(url) = test_url("small and large reads") else {
        return;
    };
    let (_factory, backend) = backend_with(&url, "tmsmall", SMALL_READ_BATCH_THRESHOLD, 4, 2).await;
    let small = ShardId::new();
    let small_updates = fill(&backend, small, 40).await;
    check_reads(&backend, small, &small_updates, "small shard").await;
    let large = ShardId::new();
    let large_updates = fill(&backend, large, LARGE_BATCH_UPDATES).await;
    check_reads(&backend, large, &large_updates, "large shard").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_stream_holds_its_slot_but_no_connection() {
    let Some(url) = test_url("small stream slots") else {
        return;
    };
    // As many slots as connections: streams holding connections would
    // leave none for the reads below, which would fail to acquire one.
    let (_factory, backend) = backend_with(&url, "tmslot", SMALL_READ_BATCH_THRESHOLD, 2, 2).await;
    let shard = ShardId::new();
    let all = fill(&backend, shard, 40).await;
    let expected = expected_snapshot(&all, 3);
    let first = backend
        .snapshot_stream(shard, &3, ReadShare::WHOLE, ChunkLimit::DEFAULT)
        .await
        .unwrap();
    let second = backend
        .fetch_stream(shard, &at(0), &at(4), ReadShare::WHOLE, ChunkLimit::DEFAULT)
        .await
        .unwrap();
    assert_eq!(backend.open_streams(), 2);
    assert_eq!(backend.snapshot(shard, &3).await.unwrap(), expected);
    PersistBackend::<u64>::frontiers(&backend, shard)
        .await
        .unwrap();
    let Err(err) = backend
        .snapshot_stream(shard, &3, ReadShare::WHOLE, ChunkLimit::DEFAULT)
        .await
    else {
        panic!("a third stream over a limit of two opened");
    };
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Unavailable),
        "{err}"
    );
    // An append after the call is not in the stream.
    append(&backend, shard, 4, &[Update::new(row(1), 4, 1)]).await;
    assert_eq!(collect_stream(first).await.unwrap(), expected);
    assert_eq!(
        backend.open_streams(),
        1,
        "a stream read to its end frees its slot"
    );
    drop(second);
    assert_eq!(backend.open_streams(), 0, "a dropped stream frees its slot");
}

fn is_invalid_usage<C>(result: &Result<C, BackendError>) -> bool {
    matches!(result, Err(BackendError::InvalidUsage(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_read_checks_its_arguments_and_ends_at_a_corrupt_row() {
    let Some(url) = test_url("small read errors") else {
        return;
    };
    let (_factory, backend) =
        backend_with(&url, "tmsmallerr", SMALL_READ_BATCH_THRESHOLD, 4, 2).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let rows: Vec<Update<u64>> = (0..6)
        .map(|value| Update::new(row(value), u64::from(value >= 3), 1))
        .collect();
    append(&backend, shard, 0, &rows[..3]).await;
    append(&backend, shard, 1, &rows[3..]).await;
    PersistBackend::<u64>::downgrade_since(&backend, shard, &at(1), WriteFence::Unfenced)
        .await
        .unwrap();
    // Before the since, at the upper, beyond the upper, a lower past the
    // upper, an unknown shard: the same errors from the call as the cursor
    // read gives.
    assert!(is_invalid_usage(&backend.snapshot(shard, &0).await));
    assert!(is_invalid_usage(&backend.snapshot(shard, &2).await));
    for stream_limit in stream_limits() {
        assert!(is_invalid_usage(
            &backend
                .snapshot_stream(shard, &0, ReadShare::WHOLE, stream_limit)
                .await
        ));
        assert!(is_invalid_usage(
            &backend
                .fetch_stream(shard, &at(0), &at(3), ReadShare::WHOLE, stream_limit)
                .await
        ));
    }
    assert!(is_invalid_usage(
        &backend.fetch(shard, &at(0), &at(3)).await
    ));
    assert!(is_invalid_usage(
        &backend.fetch(shard, &at(2), &at(1)).await
    ));
    let unknown = ShardId::new();
    assert!(matches!(
        PersistBackend::<u64>::snapshot(&backend, unknown, &0).await,
        Err(BackendError::InvalidUsage(
            InvalidUsage::UnknownShard { .. }
        ))
    ));
    assert!(matches!(
        backend.fetch(unknown, &at(0), &at(0)).await,
        Err(BackendError::InvalidUsage(
            InvalidUsage::UnknownShard { .. }
        ))
    ));
    assert_eq!(backend.open_streams(), 0, "refused calls hold no slot");
    // Nothing can be in a range the since has advanced past.
    assert_eq!(backend.fetch(shard, &at(0), &at(1)).await.unwrap(), vec![]);
    assert_eq!(
        backend.fetch(shard, &at(0), &at(2)).await.unwrap(),
        expected_fetch(&rows, 1, 0, 2)
    );

    // A stored row that is not a row encoding, sorting after every valid
    // one: the `Vec` form fails with it; a stream delivers the valid chunks
    // (two entries each here), then the error, then ends.
    sqlx::query("INSERT INTO updates (shard_id, ts, row_bytes, diff) VALUES ($1, $2, $3, 1)")
        .bind(shard.0)
        .bind(1u64.encode())
        .bind(vec![0xFFu8, 0xFF, 0xFF])
        .execute(backend.pool())
        .await
        .unwrap();
    let err = backend.snapshot(shard, &1).await.unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Corrupted),
        "{err}"
    );
    let two_rows = 2 * (rows[0].row.clone(), 1i64).chunk_bytes();
    let items: Vec<_> = backend
        .snapshot_stream(shard, &1, ReadShare::WHOLE, limit(8, two_rows))
        .await
        .unwrap()
        .collect()
        .await;
    let (last, valid) = items.split_last().unwrap();
    let valid: Vec<Vec<(Row, Diff)>> = valid.iter().map(|item| item.clone().unwrap()).collect();
    assert_eq!(valid.len(), 3, "{valid:?}");
    assert_eq!(valid.concat(), expected_snapshot(&rows, 1));
    let err = last.as_ref().unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Corrupted),
        "{err}"
    );
    assert_eq!(backend.open_streams(), 0);
    // The connection that read the corrupt row serves the next read.
    assert_eq!(
        PersistBackend::<u64>::frontiers(&backend, shard)
            .await
            .unwrap()
            .since,
        at(1)
    );
}
