//! The proptest: random appends to the inputs, the output of a join and
//! reduce maintained by the dataflow equals the model at every time up to
//! the upper.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tidemark_backend_conformance::BackendFactory;

use crate::sink::run_with_restarts;
use crate::support::test_retry;
use crate::workload::Workload;

/// Random workloads (seed, batch count, batch size, worker count, restart
/// points) through the join-and-reduce dataflow: the output shard equals
/// the model at every time before its upper. A few cases, so the whole
/// list stays quick on every backend.
pub async fn dataflow_output_matches_the_model<F: BackendFactory>(factory: &F) {
    let backend = Arc::new(factory.open_handle().await);
    let strategy = (
        any::<u64>(),
        3usize..6,
        1usize..8,
        1usize..=2,
        proptest::collection::vec(0usize..2, 0..=2),
    );
    let mut runner = TestRunner::new(Config {
        cases: 4,
        failure_persistence: None,
        ..Config::default()
    });
    let runtime = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        runner.run(
            &strategy,
            |(seed, batches, per_batch, workers, restart_after)| {
                let workload = Workload::generate(seed, batches, per_batch);
                runtime.block_on(run_with_restarts(
                    &backend,
                    &*backend,
                    &workload,
                    &restart_after,
                    workers,
                    test_retry(),
                ));
                Ok(())
            },
        )
    });
    if let Err(failure) = result {
        panic!("the dataflow's output differs from the model: {failure}");
    }
}
