//! The source reports a finalized shard and an as_of before the since.

use std::sync::Arc;
use tidemark_storage_types::WriteFence;

use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_dataflow::{DataflowError, ShardSource};
use tidemark_storage_types::{PersistBackend, ShardId, Update};
use tokio::runtime::Handle;

use crate::harness::RunningDataflow;
use crate::support::{append, at, kv_row, new_shard, test_retry};

async fn source_error<B: PersistBackend<u64>>(
    backend: &Arc<B>,
    shard: ShardId,
    as_of: u64,
) -> DataflowError {
    let (runtime, backend) = (Handle::current(), Arc::clone(backend));
    let running = RunningDataflow::start(1, move |scope| {
        let (_, status) = ShardSource::new(runtime.clone(), Arc::clone(&backend), shard, as_of)
            .with_retry(test_retry())
            .build(scope);
        vec![status]
    });
    let error = running.wait_for_error("an unreadable source").await;
    running.stop().await;
    error
}

/// A source of a finalized shard reports `ShardFinalized`.
pub async fn source_reports_a_finalized_shard<F: BackendFactory>(factory: &F) {
    let backend = Arc::new(factory.open_handle().await);
    let shard = new_shard(&*backend).await;
    append(
        &*backend,
        shard,
        vec![Update::new(kv_row(1, 1), 0, 1)],
        0,
        at(2),
    )
    .await;
    backend.finalize(shard).await.expect("finalize");
    assert_eq!(
        source_error(&backend, shard, 1).await,
        DataflowError::ShardFinalized { shard }
    );
}

/// A source whose as_of is before the shard's since reports
/// `AsOfNotReadable` with the since.
pub async fn source_reports_an_as_of_before_the_since<F: BackendFactory>(factory: &F) {
    let backend = Arc::new(factory.open_handle().await);
    let shard = new_shard(&*backend).await;
    append(
        &*backend,
        shard,
        vec![Update::new(kv_row(1, 1), 0, 1)],
        0,
        at(10),
    )
    .await;
    backend
        .downgrade_since(shard, &at(5), WriteFence::Unfenced)
        .await
        .expect("downgrade_since");
    assert_eq!(
        source_error(&backend, shard, 2).await,
        DataflowError::AsOfNotReadable {
            shard,
            as_of: "2".into(),
            since: "[5]".into()
        }
    );
}
