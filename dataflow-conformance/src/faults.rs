//! Faults on every backend call: the output is still exact; failures beyond
//! the retries are reported.

use std::sync::Arc;

use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_conformance::faults::{FaultRates, FaultyBackend, Operation};
use tidemark_storage_dataflow::{DataflowError, RetryPolicy, ShardSource};
use tokio::runtime::Handle;

use crate::harness::RunningDataflow;
use crate::sink::run_with_restarts;
use crate::support::{new_shard, test_retry};
use crate::workload::Workload;

/// With seeded faults before and after every backend call (determinate
/// refusals, and lost responses of calls that did happen) and part-way
/// through streamed reads, the sources and
/// the sink retry (appends with their token) and the output equals the
/// model at every time, across a restart.
pub async fn faults_on_every_backend_call_leave_the_output_exact<F: BackendFactory>(factory: &F) {
    let rates = FaultRates::new(0.1, 0.1).expect("valid rates");
    let faulty = Arc::new(
        FaultyBackend::new(factory.open_handle().await, 0xfa17)
            .with_rates_for_all(rates)
            .with_mid_stream_rate(0.1)
            .expect("valid rate"),
    );
    let check = factory.open_handle().await;
    let workload = Workload::generate(8, 5, 5);
    run_with_restarts(&faulty, &check, &workload, &[2], 2, test_retry()).await;
    for operation in [
        Operation::CompareAndAppend,
        Operation::WaitForUpperPast,
        Operation::FetchStream,
    ] {
        let counts = faulty.counts(operation);
        assert!(counts.calls > 0, "the dataflow never called {operation}");
    }
    let total = faulty.total_counts();
    assert!(
        total.failed_before > 0 && total.failed_after > 0,
        "no faults were injected: {total:?}"
    );
}

/// A failure that outlasts the retry policy is reported as
/// `DataflowError::Backend` naming the call, not a worker panic.
pub async fn backend_failures_beyond_the_retries_are_reported<F: BackendFactory>(factory: &F) {
    let always = FaultRates::new(1.0, 0.0).expect("valid rates");
    let faulty = Arc::new(
        FaultyBackend::new(factory.open_handle().await, 7).with_rates(Operation::Frontiers, always),
    );
    let shard = new_shard(&*faulty).await;
    let (runtime, backend) = (Handle::current(), Arc::clone(&faulty));
    let running = RunningDataflow::start(1, move |scope| {
        let (_, status) = ShardSource::new(runtime.clone(), Arc::clone(&backend), shard, 0)
            .with_retry(
                RetryPolicy::default()
                    .with_retries(2)
                    .with_initial_backoff(std::time::Duration::from_millis(1)),
            )
            .build(scope);
        vec![status]
    });
    let error = running.wait_for_error("a backend that always fails").await;
    running.stop().await;
    match error {
        DataflowError::Backend {
            shard: named,
            operation,
            error,
        } => {
            assert_eq!((named, operation), (shard, "frontiers"));
            assert!(error.is_determinate(), "{error}");
        }
        other => panic!("expected a Backend error, got {other:?}"),
    }
    assert_eq!(
        faulty.counts(Operation::Frontiers).calls,
        3,
        "one call and two retries"
    );
}
