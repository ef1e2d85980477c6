//! What callers see when the controller's write task stops: here, because
//! the backend panics inside an append (a bug in a backend must not hang
//! the controller's callers).

use async_trait::async_trait;
use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_controller::{
    Controller, ControllerConfig, METADATA_SHARD, StorageController,
};
use tidemark_storage_types::WriteFence;
use tidemark_storage_types::{
    BackendError, CollectionDescription, CompactionStats, Datum, Diff, GlobalId, IdempotencyToken,
    PersistBackend, ReadShare, RelationDesc, Row, ScalarType, ShardAppend, ShardFrontiers, ShardId,
    ShardUsage, StorageError, Update, UpperMismatch, UpperMismatches,
};
use tidemark_storage_types::{ChunkLimit, FetchStream, SnapshotStream};
use timely::progress::Antichain;

/// The memory backend, except that appending to a data shard panics.
#[derive(Debug)]
struct PanicsOnDataAppends(MemoryBackend);

#[async_trait]
impl PersistBackend<u64> for PanicsOnDataAppends {
    async fn open(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        self.0.open(shard).await
    }

    async fn frontiers(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        self.0.frontiers(shard).await
    }

    async fn compare_and_append(
        &self,
        shard: ShardId,
        updates: Vec<Update<u64>>,
        expected_upper: Antichain<u64>,
        new_upper: Antichain<u64>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatch<u64>>, BackendError> {
        assert_eq!(
            shard, METADATA_SHARD,
            "injected panic: append to a data shard"
        );
        self.0
            .compare_and_append(shard, updates, expected_upper, new_upper, token, fence)
            .await
    }

    async fn compare_and_append_all(
        &self,
        appends: Vec<ShardAppend<u64>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<u64>>, BackendError> {
        assert!(
            appends.iter().all(|part| part.shard == METADATA_SHARD),
            "injected panic: append to a data shard"
        );
        self.0.compare_and_append_all(appends, token, fence).await
    }

    async fn snapshot(
        &self,
        shard: ShardId,
        as_of: &u64,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.0.snapshot(shard, as_of).await
    }

    async fn fetch(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        self.0.fetch(shard, lower, upper).await
    }

    async fn snapshot_share(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.0.snapshot_share(shard, as_of, share).await
    }

    async fn fetch_share(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
        share: ReadShare,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        self.0.fetch_share(shard, lower, upper, share).await
    }

    async fn snapshot_stream(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<SnapshotStream, BackendError> {
        self.0.snapshot_stream(shard, as_of, share, limit).await
    }

    async fn fetch_stream(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<FetchStream<u64>, BackendError> {
        self.0.fetch_stream(shard, lower, upper, share, limit).await
    }

    async fn wait_for_upper_past(
        &self,
        shard: ShardId,
        frontier: &Antichain<u64>,
    ) -> Result<Antichain<u64>, BackendError> {
        self.0.wait_for_upper_past(shard, frontier).await
    }

    async fn downgrade_since(
        &self,
        shard: ShardId,
        new_since: &Antichain<u64>,
        fence: WriteFence,
    ) -> Result<Antichain<u64>, BackendError> {
        self.0.downgrade_since(shard, new_since, fence).await
    }

    async fn compact(&self, shard: ShardId) -> Result<CompactionStats, BackendError> {
        PersistBackend::<u64>::compact(&self.0, shard).await
    }

    async fn usage(&self, shard: ShardId) -> Result<ShardUsage, BackendError> {
        PersistBackend::<u64>::usage(&self.0, shard).await
    }

    async fn finalize(&self, shard: ShardId) -> Result<(), BackendError> {
        PersistBackend::<u64>::finalize(&self.0, shard).await
    }

    async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError> {
        PersistBackend::<u64>::list_shards(&self.0).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_write_task_is_reported_as_such() {
    let backend = PanicsOnDataAppends(MemoryBackend::open(&format!(
        "write-task-stops-{}",
        ShardId::new()
    )));
    let mut controller = Controller::<u64, _>::new(backend, ControllerConfig::default())
        .await
        .unwrap();
    let table = GlobalId::User(1);
    let desc = RelationDesc::empty().with_column("n", ScalarType::Int64.nullable(false));
    controller
        .create_collections(vec![(table, CollectionDescription::table(desc.clone()))])
        .await
        .unwrap();
    let row = Row::pack([Datum::Int64(1)]);
    let appended = controller
        .append_durable(vec![(table, vec![Update::new(row, 0, 1)], 1)])
        .await;
    assert_eq!(appended, Err(StorageError::WriteTaskStopped));
    // Later work that needs the write task says the same, at once.
    let created = controller
        .create_collections(vec![(
            GlobalId::User(2),
            CollectionDescription::table(desc),
        )])
        .await;
    assert_eq!(created, Err(StorageError::WriteTaskStopped));
    assert_eq!(
        StorageError::WriteTaskStopped.to_string(),
        "the controller's write task has stopped"
    );
}
