//! The sink: exactly once across restarts at random points, and a racing
//! writer or a finalized shard reported.

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_dataflow::{DataflowError, RetryPolicy, ShardSink, resume_as_of};
use tidemark_storage_types::{PersistBackend, Update};
use timely::progress::Antichain;
use tokio::runtime::Handle;

use crate::harness::RunningDataflow;
use crate::support::{append, at, kv_row, new_shard, snapshot_of, test_retry, upper_of};
use crate::workload::{JoinShards, Workload, build_join_dataflow};

/// Runs the join dataflow over `workload` on `backend`, appending the
/// batches one by one and stopping and restarting the dataflow after the
/// batches `restart_after` (each restart resumes at the output's upper),
/// until the output's upper is the inputs' final upper. Then checks the
/// output at every time against the model, read through `check` (the
/// backend without faults, when `backend` injects them).
pub(crate) async fn run_with_restarts<B, C>(
    backend: &Arc<B>,
    check: &C,
    workload: &Workload,
    restart_after: &[usize],
    workers: usize,
    retry: RetryPolicy,
) where
    B: PersistBackend<u64>,
    C: PersistBackend<u64>,
{
    let shards = JoinShards {
        left: new_shard(check).await,
        right: new_shard(check).await,
        output: new_shard(check).await,
    };
    let start = |as_of: u64| {
        let (runtime, backend) = (Handle::current(), Arc::clone(backend));
        RunningDataflow::start(workers, move |scope| {
            build_join_dataflow(scope, &runtime, &backend, shards, as_of, retry)
        })
    };
    let mut running = start(0);
    for index in 0..workload.batches.len() {
        workload.append_batch(check, shards, index).await;
        if restart_after.contains(&index) {
            let reached = at(Workload::upper_after(index));
            running
                .wait_until("the sink writes the batch before a restart", || {
                    let reached = reached.clone();
                    async move {
                        timely::PartialOrder::less_equal(
                            &reached,
                            &upper_of(check, shards.output).await,
                        )
                    }
                })
                .await;
            running.stop().await;
            let output_upper = upper_of(check, shards.output).await;
            let as_of = resume_as_of(&output_upper).expect("the output is not sealed");
            running = start(as_of);
        }
    }
    let final_upper = at(workload.final_upper());
    running
        .wait_until("the sink writes every batch", || {
            let final_upper = final_upper.clone();
            async move { upper_of(check, shards.output).await == final_upper }
        })
        .await;
    running.stop().await;
    for time in 0..workload.final_upper() {
        assert_eq!(
            snapshot_of(check, shards.output, time).await,
            workload.model_output(time),
            "the output at {time} differs from the join computed directly (restarts after batches {restart_after:?})"
        );
    }
}

/// A dataflow stopped and restarted at random points (each restart resuming
/// at the output's upper, its sources at the time before it) leaves the
/// output equal to the model at every time: nothing written twice, nothing
/// lost.
pub async fn sink_restarted_at_random_points_writes_nothing_twice<F: BackendFactory>(factory: &F) {
    let backend = Arc::new(factory.open_handle().await);
    let mut rng = SmallRng::seed_from_u64(0x5eed_0008);
    for round in 0..2u64 {
        let workload = Workload::generate(rng.random(), 6, 6);
        let restart_after: Vec<usize> = (0..5).filter(|_| rng.random_bool(0.4)).collect();
        let workers = 1 + (round as usize % 2);
        run_with_restarts(
            &backend,
            &*backend,
            &workload,
            &restart_after,
            workers,
            test_retry(),
        )
        .await;
    }
}

/// Another writer appending to the sink's shard is reported as
/// `UpperRaced`; the other writer's data stays as it wrote it.
pub async fn sink_reports_a_racing_writer<F: BackendFactory>(factory: &F) {
    let backend = Arc::new(factory.open_handle().await);
    let input = new_shard(&*backend).await;
    let output = new_shard(&*backend).await;
    append(
        &*backend,
        input,
        vec![Update::new(kv_row(1, 1), 0, 1)],
        0,
        at(2),
    )
    .await;
    let (runtime, shared) = (Handle::current(), Arc::clone(&backend));
    let running = RunningDataflow::start(1, move |scope| {
        let (collection, source_status) = tidemark_storage_dataflow::ShardSource::new(
            runtime.clone(),
            Arc::clone(&shared),
            input,
            0,
        )
        .with_retry(test_retry())
        .build(scope);
        let sink_status = ShardSink::new(runtime.clone(), Arc::clone(&shared), output)
            .with_retry(test_retry())
            .build(collection);
        vec![source_status, sink_status]
    });
    running
        .wait_until("the sink writes the first batch", || async {
            upper_of(&*backend, output).await == at(2)
        })
        .await;
    // The racer writes [2, 5) itself; the sink's next append expects [2].
    append(
        &*backend,
        output,
        vec![Update::new(kv_row(9, 9), 3, 1)],
        2,
        at(5),
    )
    .await;
    append(
        &*backend,
        input,
        vec![Update::new(kv_row(2, 2), 2, 1)],
        2,
        at(4),
    )
    .await;
    let error = running.wait_for_error("a racing writer").await;
    running.stop().await;
    match error {
        DataflowError::UpperRaced {
            shard,
            expected,
            current,
        } => {
            assert_eq!(shard, output);
            assert_eq!((expected.as_str(), current.as_str()), ("[2]", "[5]"));
        }
        other => panic!("expected UpperRaced, got {other:?}"),
    }
    assert_eq!(
        snapshot_of(&*backend, output, 4).await,
        vec![(kv_row(1, 1), 1), (kv_row(9, 9), 1)],
        "the racer's data must stay as it wrote it, and the sink's append must not apply"
    );
}

/// A sink into a finalized shard reports `ShardFinalized`.
pub async fn sink_reports_a_finalized_shard<F: BackendFactory>(factory: &F) {
    let backend = Arc::new(factory.open_handle().await);
    let input = new_shard(&*backend).await;
    let output = new_shard(&*backend).await;
    backend.finalize(output).await.expect("finalize");
    append(
        &*backend,
        input,
        vec![Update::new(kv_row(1, 1), 0, 1)],
        0,
        at(2),
    )
    .await;
    let (runtime, shared) = (Handle::current(), Arc::clone(&backend));
    let running = RunningDataflow::start(1, move |scope| {
        let (collection, _) = tidemark_storage_dataflow::ShardSource::new(
            runtime.clone(),
            Arc::clone(&shared),
            input,
            0,
        )
        .build(scope);
        vec![
            ShardSink::new(runtime.clone(), Arc::clone(&shared), output)
                .with_retry(test_retry())
                .build(collection),
        ]
    });
    let error = running.wait_for_error("a finalized output").await;
    running.stop().await;
    assert_eq!(error, DataflowError::ShardFinalized { shard: output });
    assert_eq!(upper_of(&*backend, output).await, Antichain::new());
}
