//! Streamed snapshots and fetches against a real server: chunks against
//! the `Vec` reads and a model, the state fixed at the call, dropped
//! streams, and parts deleted under an open stream.

mod support;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use support::{S3Factory, make_factory_with_clock};
use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_s3::{ManualClock, S3Backend};
use tidemark_storage_types::{
    BackendError, ChunkEntry, ChunkLimit, Datum, DeterminateKind, Diff, IdempotencyToken,
    PersistBackend, ReadShare, ReadStream, Row, ShardId, Update, WriteFence, collect_stream,
};
use timely::progress::Antichain;

const GRACE: Duration = Duration::from_secs(600);

fn row(value: i64) -> Row {
    Row::pack([Datum::Int64(value), Datum::String("streamed payload")])
}

fn frontier(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

fn limit(entries: usize, bytes: usize) -> ChunkLimit {
    ChunkLimit::new(
        NonZeroUsize::new(entries).unwrap(),
        NonZeroUsize::new(bytes).unwrap(),
    )
}

async fn factory(test_name: &str) -> Option<(Arc<ManualClock>, S3Factory)> {
    let clock = Arc::new(ManualClock::starting_now());
    let mut factory = make_factory_with_clock(test_name, clock.clone(), GRACE).await?;
    // Parts of the smallest size: every run of the large batches has
    // several, so a stream has parts it has not fetched yet.
    factory.config = factory
        .config
        .with_part_size_bytes(tidemark_backend_s3::MIN_PART_SIZE_BYTES);
    Some((clock, factory))
}

async fn append(backend: &S3Backend, shard: ShardId, updates: Vec<Update<u64>>, time: u64) {
    backend
        .compare_and_append(
            shard,
            updates,
            frontier(time),
            frontier(time + 1),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .expect("append request")
        .expect("append upper matches");
}

/// The updates of a shard built by [`build_shard`], at each time.
fn updates_at(time: u64) -> Vec<Update<u64>> {
    match time {
        // Large batches: many bucket groups, several parts each.
        0 => (0..6000).map(|i| Update::new(row(i), 0, 1)).collect(),
        1 => (3000..9000).map(|i| Update::new(row(i), 1, 1)).collect(),
        // Retractions of some of the first rows, and one row twice.
        2 => (0..3000)
            .step_by(3)
            .map(|i| Update::new(row(i), 2, -1))
            .chain([Update::new(row(5), 2, 4)])
            .collect(),
        // Small batches, stored inline in the state.
        _ => (0..5)
            .map(|i| Update::new(row(i * 7 + time as i64), time, 1))
            .collect(),
    }
}

/// A shard with large multi-part batches (times 0..3) and small inline ones
/// (times 3..upper); returns it.
async fn build_shard(backend: &S3Backend, upper: u64) -> ShardId {
    let shard = ShardId::new();
    PersistBackend::<u64>::open(backend, shard).await.unwrap();
    for time in 0..upper {
        append(backend, shard, updates_at(time), time).await;
    }
    shard
}

/// The snapshot at `as_of` of the shard [`build_shard`] makes, by
/// definition.
fn model_snapshot(upper: u64, as_of: u64) -> Vec<(Row, Diff)> {
    let mut all: Vec<(Row, Diff)> = (0..upper.min(as_of + 1))
        .flat_map(updates_at)
        .map(|update| (update.row, update.diff))
        .collect();
    differential_dataflow::consolidation::consolidate(&mut all);
    all
}

/// The fetch of `[lower, upper)` of the shard [`build_shard`] makes with
/// its since at `since`, by definition, in `(time, row)` order.
fn model_fetch(shard_upper: u64, since: u64, lower: u64, upper: u64) -> Vec<Update<u64>> {
    let mut all: Vec<(u64, Row, Diff)> = (0..shard_upper)
        .flat_map(updates_at)
        .map(|update| (update.timestamp.max(since), update.row, update.diff))
        .filter(|(time, _, _)| (lower..upper).contains(time))
        .collect();
    differential_dataflow::consolidation::consolidate_updates(&mut all);
    all.into_iter()
        .map(|(time, row, diff)| Update::new(row, time, diff))
        .collect()
}

/// Every chunk of `stream`, checking each is non-empty and within `limit`;
/// the error, if the stream ends with one.
async fn chunks_within<C: ChunkEntry>(
    mut stream: ReadStream<C>,
    limit: ChunkLimit,
) -> (Vec<Vec<C>>, Option<BackendError>) {
    let mut chunks = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                assert!(!chunk.is_empty(), "chunks are never empty");
                assert!(chunk.len() <= limit.max_entries.get(), "{}", chunk.len());
                let bytes: usize = chunk.iter().map(ChunkEntry::chunk_bytes).sum();
                assert!(
                    chunk.len() == 1 || bytes <= limit.max_bytes.get(),
                    "{bytes} bytes in {} entries",
                    chunk.len()
                );
                chunks.push(chunk);
            }
            Err(err) => {
                assert!(stream.next().await.is_none(), "an error is the last item");
                return (chunks, Some(err));
            }
        }
    }
    (chunks, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_snapshots_and_fetches_concatenate_to_the_vec_reads_and_the_model() {
    let Some((_clock, factory)) = factory("s3 streams concatenation").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let upper = 8;
    let shard = build_shard(&backend, upper).await;
    let parts = backend.stored_parts(shard).await.unwrap();
    assert!(parts > 20, "several parts per run: {parts}");

    for as_of in [0, 2, upper - 1] {
        let expected = model_snapshot(upper, as_of);
        assert_eq!(backend.snapshot(shard, &as_of).await.unwrap(), expected);
        for chunk_limit in [limit(1000, 1 << 20), limit(1 << 20, 3000), limit(1, 1)] {
            let stream = backend
                .snapshot_stream(shard, &as_of, ReadShare::WHOLE, chunk_limit)
                .await
                .unwrap();
            let (chunks, err) = chunks_within(stream, chunk_limit).await;
            assert!(err.is_none(), "{err:?}");
            assert_eq!(chunks.concat(), expected, "as_of {as_of} {chunk_limit:?}");
        }
    }
    let chunk_limit = limit(777, 1 << 20);
    for (lower, fetch_upper) in [(0, upper), (1, 2), (2, 6)] {
        let expected = model_fetch(upper, 0, lower, fetch_upper);
        let (lower, fetch_upper) = (frontier(lower), frontier(fetch_upper));
        assert_eq!(
            backend.fetch(shard, &lower, &fetch_upper).await.unwrap(),
            expected
        );
        let stream = backend
            .fetch_stream(shard, &lower, &fetch_upper, ReadShare::WHOLE, chunk_limit)
            .await
            .unwrap();
        let (chunks, err) = chunks_within(stream, chunk_limit).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(chunks.concat(), expected);
    }

    // Shares together are the whole, each in row order.
    let mut shares: Vec<(Row, Diff)> = Vec::new();
    for index in 0..3 {
        let stream = backend
            .snapshot_stream(shard, &(upper - 1), ReadShare::new(index, 3), chunk_limit)
            .await
            .unwrap();
        let share = collect_stream(stream).await.unwrap();
        assert!(share.is_sorted(), "a share is in row order");
        shares.extend(share);
    }
    shares.sort();
    assert_eq!(shares, model_snapshot(upper, upper - 1));
    assert_eq!(
        backend.part_downloads().peak_window_bytes,
        0,
        "within the default read memory, snapshots merge whole parts"
    );

    // Times advanced by the since: one segment at the since, merged by row,
    // and the batches after it.
    backend
        .downgrade_since(shard, &frontier(4), WriteFence::Unfenced)
        .await
        .unwrap();
    for compacted in [false, true] {
        if compacted {
            PersistBackend::<u64>::compact(&backend, shard)
                .await
                .unwrap();
        }
        let stream = backend
            .fetch_stream(
                shard,
                &frontier(4),
                &frontier(upper),
                ReadShare::WHOLE,
                chunk_limit,
            )
            .await
            .unwrap();
        let (chunks, err) = chunks_within(stream, chunk_limit).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(
            chunks.concat(),
            model_fetch(upper, 4, 4, upper),
            "compacted: {compacted}"
        );
        assert_eq!(
            backend.snapshot(shard, &(upper - 1)).await.unwrap(),
            model_snapshot(upper, upper - 1)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn argument_errors_are_the_calls_error_not_an_item() {
    let Some((_clock, factory)) = factory("s3 streams arguments").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = build_shard(&backend, 4).await;
    let unreadable = backend
        .snapshot_stream(shard, &9, ReadShare::WHOLE, ChunkLimit::DEFAULT)
        .await;
    assert!(matches!(unreadable, Err(BackendError::InvalidUsage(_))));
    let bad_share = backend
        .snapshot_stream(shard, &1, ReadShare::new(3, 2), ChunkLimit::DEFAULT)
        .await;
    assert!(matches!(bad_share, Err(BackendError::InvalidUsage(_))));
    let beyond_upper = backend
        .fetch_stream(
            shard,
            &frontier(0),
            &frontier(9),
            ReadShare::WHOLE,
            ChunkLimit::DEFAULT,
        )
        .await;
    assert!(matches!(beyond_upper, Err(BackendError::InvalidUsage(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_reads_the_state_of_its_call() {
    let Some((_clock, factory)) = factory("s3 streams fixed state").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = build_shard(&backend, 4).await;
    let chunk_limit = limit(500, 1 << 20);
    let snapshot = backend
        .snapshot_stream(shard, &3, ReadShare::WHOLE, chunk_limit)
        .await
        .unwrap();
    let fetch = backend
        .fetch_stream(
            shard,
            &frontier(0),
            &frontier(4),
            ReadShare::WHOLE,
            chunk_limit,
        )
        .await
        .unwrap();
    // Appends and a compaction after the call change nothing either yields.
    for time in 4..8 {
        append(&backend, shard, updates_at(time), time).await;
    }
    PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    assert_eq!(
        collect_stream(snapshot).await.unwrap(),
        model_snapshot(4, 3)
    );
    assert_eq!(
        collect_stream(fetch).await.unwrap(),
        model_fetch(4, 0, 0, 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_dropped_mid_way_leaves_compaction_and_gc_to_finish() {
    let Some((clock, factory)) = factory("s3 streams dropped").await else {
        return;
    };
    let backend = factory.open_handle().await;
    // Two large batches, which compaction merges.
    let upper = 2;
    let shard = build_shard(&backend, upper).await;
    let mut stream = backend
        .snapshot_stream(shard, &(upper - 1), ReadShare::WHOLE, limit(100, 1 << 20))
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.len(), 100);
    drop(stream);

    let stats = PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    assert!(
        stats.bytes_after != stats.bytes_before,
        "compaction rewrote batches: {stats:?}"
    );
    clock.advance(GRACE * 2);
    let gc = backend.gc().await.unwrap();
    assert!(gc.parts_deleted > 0, "the replaced parts are deleted");
    let referenced = backend.part_keys(shard).await.unwrap();
    assert_eq!(
        backend.stored_parts(shard).await.unwrap(),
        referenced.len() as u64,
        "nothing but the referenced parts is left"
    );
    assert_eq!(
        backend.snapshot(shard, &(upper - 1)).await.unwrap(),
        model_snapshot(upper, upper - 1)
    );
}

/// Compacts the shard and deletes the parts it replaced, as gc does once
/// the grace period has passed.
async fn compact_and_collect(backend: &S3Backend, clock: &ManualClock, shard: ShardId) {
    PersistBackend::<u64>::compact(backend, shard)
        .await
        .unwrap();
    clock.advance(GRACE * 2);
    let gc = backend.gc().await.unwrap();
    assert!(gc.parts_deleted > 0, "gc deleted the replaced parts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_whose_parts_gc_deleted_resumes_from_the_new_state_when_the_answer_is_unchanged() {
    let Some((clock, factory)) = factory("s3 streams gc resume").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let upper = 2;
    let shard = build_shard(&backend, upper).await;
    let chunk_limit = limit(50, 1 << 20);
    let mut snapshot = backend
        .snapshot_stream(shard, &1, ReadShare::WHOLE, chunk_limit)
        .await
        .unwrap();
    let mut fetch = backend
        .fetch_stream(
            shard,
            &frontier(0),
            &frontier(2),
            ReadShare::WHOLE,
            chunk_limit,
        )
        .await
        .unwrap();
    let mut snapshot_chunks = vec![snapshot.next().await.unwrap().unwrap()];
    let mut fetch_chunks = vec![fetch.next().await.unwrap().unwrap()];
    let downloads_before = backend.part_downloads().parts;

    compact_and_collect(&backend, &clock, shard).await;

    let (rest, err) = chunks_within(snapshot, chunk_limit).await;
    assert!(err.is_none(), "{err:?}");
    snapshot_chunks.extend(rest);
    assert_eq!(snapshot_chunks.concat(), model_snapshot(upper, 1));
    let (rest, err) = chunks_within(fetch, chunk_limit).await;
    assert!(err.is_none(), "{err:?}");
    fetch_chunks.extend(rest);
    assert_eq!(fetch_chunks.concat(), model_fetch(upper, 0, 0, 2));
    assert!(
        backend.part_downloads().parts > downloads_before,
        "the streams read the new parts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_whose_parts_gc_deleted_ends_with_a_conflict_when_the_answer_changed() {
    let Some((clock, factory)) = factory("s3 streams gc changed").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let upper = 2;
    let shard = build_shard(&backend, upper).await;
    let chunk_limit = limit(50, 1 << 20);
    let mut snapshot = backend
        .snapshot_stream(shard, &0, ReadShare::WHOLE, chunk_limit)
        .await
        .unwrap();
    let mut fetch = backend
        .fetch_stream(
            shard,
            &frontier(0),
            &frontier(2),
            ReadShare::WHOLE,
            chunk_limit,
        )
        .await
        .unwrap();
    let first_snapshot = snapshot.next().await.unwrap().unwrap();
    let first_fetch = fetch.next().await.unwrap().unwrap();

    // The since passes the snapshot's as-of and moves the fetch's times.
    backend
        .downgrade_since(shard, &frontier(1), WriteFence::Unfenced)
        .await
        .unwrap();
    compact_and_collect(&backend, &clock, shard).await;

    let (rest, err) = chunks_within(snapshot, chunk_limit).await;
    let err = err.expect("the snapshot cannot continue");
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Conflict),
        "{err}"
    );
    assert!(err.to_string().contains("since"), "{err}");
    let yielded: Vec<(Row, Diff)> = std::iter::once(first_snapshot)
        .chain(rest)
        .flatten()
        .collect();
    let expected = model_snapshot(upper, 0);
    assert_eq!(
        yielded,
        expected[..yielded.len()],
        "what was yielded is right"
    );

    let (rest, err) = chunks_within(fetch, chunk_limit).await;
    let err = err.expect("the fetch cannot continue");
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Conflict),
        "{err}"
    );
    let yielded: Vec<Update<u64>> = std::iter::once(first_fetch).chain(rest).flatten().collect();
    let expected = model_fetch(upper, 0, 0, 2);
    assert_eq!(
        yielded,
        expected[..yielded.len()],
        "what was yielded is right"
    );
}

/// A snapshot whose runs' whole parts would pass the read memory is read in
/// row windows: the entries one window holds stay within a quarter of the
/// read memory (plus the entries of the part being added), each window
/// downloads the parts again, and the answer is the model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_of_many_runs_holds_one_bounded_row_window() {
    let Some((_clock, mut factory)) = factory("s3 streams row windows").await else {
        return;
    };
    let memory = 512 << 10;
    factory.config = factory.config.with_read_memory_bytes(memory);
    let backend = factory.open_handle().await;
    let upper = 8;
    let shard = build_shard(&backend, upper).await;
    let objects = backend.part_keys(shard).await.unwrap().len() as u64;
    assert!(objects > 100, "many runs of several parts: {objects}");
    // No part's entries count more than its encoded bytes (each entry's
    // row, time and diff are in the codec), and no part is over this.
    let largest_part = 2 * tidemark_backend_s3::MIN_PART_SIZE_BYTES as u64
        + tidemark_backend_s3::DEFAULT_INLINE_BATCH_BYTES as u64;
    let chunk_limit = limit(500, 1 << 20);
    for as_of in [2, upper - 1] {
        let before = backend.part_downloads();
        let stream = backend
            .snapshot_stream(shard, &as_of, ReadShare::WHOLE, chunk_limit)
            .await
            .unwrap();
        let (chunks, err) = chunks_within(stream, chunk_limit).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(
            chunks.concat(),
            model_snapshot(upper, as_of),
            "as_of {as_of}"
        );
        let after = backend.part_downloads();
        assert!(after.peak_window_bytes > 0, "read in windows: {after:?}");
        assert!(
            after.peak_window_bytes <= (memory / 4) as u64 + largest_part,
            "a window holds at most a quarter of the read memory and one part: {after:?}"
        );
        assert!(
            after.parts - before.parts >= 2 * objects,
            "several windows, each downloading the parts: {} downloads of {objects} parts",
            after.parts - before.parts
        );
    }
    // Shares are read in windows too, and together are the whole.
    let mut shares: Vec<(Row, Diff)> = Vec::new();
    for index in 0..2 {
        let stream = backend
            .snapshot_stream(shard, &(upper - 1), ReadShare::new(index, 2), chunk_limit)
            .await
            .unwrap();
        let share = collect_stream(stream).await.unwrap();
        assert!(share.is_sorted(), "a share is in row order");
        shares.extend(share);
    }
    shares.sort();
    assert_eq!(shares, model_snapshot(upper, upper - 1));
}
