//! The source: snapshot then changes, its frontier against the shard's
//! upper, as_of and until, and the same collection on any worker count.

use std::sync::{Arc, Mutex};

use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_conformance::faults::{FaultyBackend, Operation};
use tidemark_storage_dataflow::{DataflowStatus, ShardSource};
use tidemark_storage_types::{ChunkLimit, PersistBackend, ShardId, Update};
use timely::PartialOrder;
use timely::progress::Antichain;
use tokio::runtime::Handle;

use crate::harness::RunningDataflow;
use crate::support::{
    Captured, accumulated, append, at, consolidated_with_times, kv_row, new_shard, snapshot_of,
    test_retry, upper_of,
};

/// Batch `index` of a single shard: a few inserts and one retraction of an
/// earlier insert, at times `[2 index, 2 index + 2)`.
fn batch(index: u64) -> Vec<Update<u64>> {
    let mut updates = vec![
        Update::new(kv_row(index as i64, 1), 2 * index, 1),
        Update::new(kv_row(index as i64 % 3, 2), 2 * index + 1, 1),
    ];
    if index > 0 {
        updates.push(Update::new(kv_row(index as i64 - 1, 1), 2 * index + 1, -1));
    }
    updates
}

async fn append_batch<B: PersistBackend<u64>>(backend: &B, shard: ShardId, index: u64) {
    append(backend, shard, batch(index), 2 * index, at(2 * index + 2)).await;
}

/// Starts a source of `shard` from `as_of` (until `until`) on `workers`
/// workers, capturing what it emits.
fn start_source<B: PersistBackend<u64>>(
    backend: &Arc<B>,
    shard: ShardId,
    as_of: u64,
    until: Option<u64>,
    workers: usize,
) -> (RunningDataflow, Captured) {
    let captured: Captured = Arc::new(Mutex::new(Vec::new()));
    let (runtime, backend, sink) = (
        Handle::current(),
        Arc::clone(backend),
        Arc::clone(&captured),
    );
    let running = RunningDataflow::start(workers, move |scope| {
        let mut source = ShardSource::new(runtime.clone(), Arc::clone(&backend), shard, as_of)
            .with_retry(test_retry());
        if let Some(until) = until {
            source = source.with_until(until);
        }
        let (collection, status) = source.build(scope);
        let sink = Arc::clone(&sink);
        collection.inspect(move |update| sink.lock().expect("captured lock").push(update.clone()));
        vec![status]
    });
    (running, captured)
}

/// Checks every worker's source frontier is not beyond the shard's upper
/// (a source with an `until` closes once the upper reaches it).
async fn assert_not_beyond_upper<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    until: Option<u64>,
    statuses: &[DataflowStatus<u64>],
) {
    // The frontiers are read before the upper: the upper only grows, so a
    // frontier beyond the later upper was beyond the upper when read.
    let frontiers: Vec<Antichain<u64>> = statuses.iter().map(DataflowStatus::frontier).collect();
    let upper = upper_of(backend, shard).await;
    let closed_at_until = until.is_some_and(|until| PartialOrder::less_equal(&at(until), &upper));
    for frontier in frontiers {
        if frontier.is_empty() && closed_at_until {
            continue;
        }
        assert!(
            PartialOrder::less_equal(&frontier, &upper),
            "the source's frontier {frontier:?} passed the shard's upper {upper:?}"
        );
    }
}

/// Waits until every worker's source frontier is `frontier`, checking on
/// the way that none passes the shard's upper.
async fn wait_for_frontier<B: PersistBackend<u64>>(
    running: &RunningDataflow,
    backend: &B,
    shard: ShardId,
    until: Option<u64>,
    workers: usize,
    frontier: Antichain<u64>,
) {
    let frontier = &frontier;
    running
        .wait_until("source frontier reaches the shard's upper", || async move {
            let statuses = running.statuses();
            assert_not_beyond_upper(backend, shard, until, &statuses).await;
            statuses.len() == workers
                && statuses.iter().all(|status| status.frontier() == *frontier)
        })
        .await;
}

/// The source emits the snapshot at the as_of and then every later batch;
/// its frontier never passes the shard's upper and reaches it after each
/// append; what it emitted accumulates to the shard's contents at every time
/// it has passed.
pub async fn source_reads_the_snapshot_then_follows_the_upper<F: BackendFactory>(factory: &F) {
    let backend = Arc::new(factory.open_handle().await);
    let shard = new_shard(&*backend).await;
    for index in 0..3 {
        append_batch(&*backend, shard, index).await;
    }
    let as_of = 3;
    let (running, captured) = start_source(&backend, shard, as_of, None, 1);
    wait_for_frontier(&running, &*backend, shard, None, 1, at(6)).await;
    for index in 3..6 {
        append_batch(&*backend, shard, index).await;
        wait_for_frontier(&running, &*backend, shard, None, 1, at(2 * index + 2)).await;
    }
    running.stop().await;
    let emitted = consolidated_with_times(&captured);
    assert!(
        emitted.iter().all(|((time, _), _)| *time >= as_of),
        "the source emitted updates before its as_of {as_of}: {emitted:?}"
    );
    for time in as_of..12 {
        assert_eq!(
            accumulated(&captured, time),
            snapshot_of(&*backend, shard, time).await,
            "the source's output at {time} differs from the shard's contents"
        );
    }
}

/// With an as_of and an until, the source emits the contents at the as_of
/// (at the as_of), the changes before the until, nothing at or after the
/// until, and closes its stream once the upper reaches the until.
pub async fn source_honours_as_of_and_until<F: BackendFactory>(factory: &F) {
    let backend = Arc::new(factory.open_handle().await);
    let shard = new_shard(&*backend).await;
    for index in 0..3 {
        append_batch(&*backend, shard, index).await;
    }
    let (as_of, until) = (3, 9);
    let (running, captured) = start_source(&backend, shard, as_of, Some(until), 1);
    wait_for_frontier(&running, &*backend, shard, Some(until), 1, at(6)).await;
    for index in 3..6 {
        append_batch(&*backend, shard, index).await;
    }
    wait_for_frontier(&running, &*backend, shard, Some(until), 1, Antichain::new()).await;
    running.stop().await;
    let emitted = consolidated_with_times(&captured);
    assert!(
        emitted
            .iter()
            .all(|((time, _), _)| (as_of..until).contains(time)),
        "the source emitted updates outside [{as_of}, {until}): {emitted:?}"
    );
    assert!(
        emitted.iter().any(|((time, _), _)| *time == as_of),
        "the snapshot at the as_of is missing: {emitted:?}"
    );
    for time in as_of..until {
        assert_eq!(
            accumulated(&captured, time),
            snapshot_of(&*backend, shard, time).await,
            "the source's output at {time} differs from the shard's contents"
        );
    }
}

/// 1, 2 and 4 workers, each reading its share, together emit the same
/// collection, and every worker's frontier reaches the shard's upper.
pub async fn source_emits_the_same_collection_on_1_2_and_4_workers<F: BackendFactory>(factory: &F) {
    let backend = Arc::new(factory.open_handle().await);
    let shard = new_shard(&*backend).await;
    for index in 0..4 {
        append_batch(&*backend, shard, index).await;
    }
    let mut results = Vec::new();
    for workers in [1, 2, 4] {
        let (running, captured) = start_source(&backend, shard, 2, None, workers);
        wait_for_frontier(&running, &*backend, shard, None, workers, at(8)).await;
        running.stop().await;
        results.push((workers, consolidated_with_times(&captured)));
    }
    let (_, expected) = &results[0];
    assert!(!expected.is_empty(), "the source emitted nothing");
    for (workers, emitted) in &results {
        assert_eq!(
            emitted, expected,
            "{workers} workers emitted a different collection than 1 worker"
        );
    }
}

/// Reads that fail part-way (an indeterminate error after some chunks) are
/// read again without emitting anything twice: a snapshot and a fetch of
/// several chunks each, through mid-stream faults, come out exact.
pub async fn source_resumes_failed_reads_without_reemitting<F: BackendFactory>(factory: &F) {
    let backend = Arc::new(
        FaultyBackend::new(factory.open_handle().await, 9)
            .with_mid_stream_rate(0.3)
            .expect("valid rate"),
    );
    let shard = new_shard(&*backend).await;
    let count = 3 * ChunkLimit::DEFAULT.max_entries.get() as i64;
    let inserts = (0..count)
        .map(|key| Update::new(kv_row(key, 0), 0, 1))
        .collect();
    append(&*backend, shard, inserts, 0, at(2)).await;
    let (running, captured) = start_source(&backend, shard, 1, None, 1);
    wait_for_frontier(&running, &*backend, shard, None, 1, at(2)).await;
    let retractions = (0..count)
        .map(|key| Update::new(kv_row(key, 0), 2, -1))
        .collect();
    append(&*backend, shard, retractions, 2, at(3)).await;
    wait_for_frontier(&running, &*backend, shard, None, 1, at(3)).await;
    running.stop().await;
    let emitted = captured.lock().expect("captured lock").len();
    assert_eq!(
        emitted,
        2 * count as usize,
        "the source emitted {emitted} updates for {count} inserts and {count} retractions"
    );
    assert_eq!(accumulated(&captured, 1).len(), count as usize);
    assert!(accumulated(&captured, 2).is_empty());
    let failed = backend.counts(Operation::SnapshotStream).failed_mid_stream
        + backend.counts(Operation::FetchStream).failed_mid_stream;
    assert!(
        failed > 0,
        "no read failed part-way: the test proves nothing"
    );
}
