//! An older controller cannot append after a newer one has started, even
//! where its write task no longer reads the metadata before appending: the
//! newer controller raises the writer epoch of every shard the metadata
//! names, including one the older controller named but has not opened yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_controller::{
    Controller, ControllerConfig, METADATA_SHARD, StorageController,
};
use tidemark_storage_types::{
    BackendError, ChunkLimit, CollectionDescription, CompactionStats, Datum, Diff, FetchStream,
    GlobalId, IdempotencyToken, PersistBackend, ReadShare, RelationDesc, Row, ScalarType,
    ShardAppend, ShardFrontiers, ShardId, ShardUsage, SnapshotStream, StorageError, Update,
    UpperMismatch, UpperMismatches, WriteFence,
};
use timely::progress::Antichain;
use tokio::sync::Notify;

/// The memory backend, except that the first `open` of a data shard
/// waits, once armed, until the test releases it (after saying it has
/// started).
#[derive(Debug)]
struct HeldOpen {
    backend: MemoryBackend,
    gate: Arc<Gate>,
}

/// When a held `open` starts and ends.
#[derive(Debug, Default)]
struct Gate {
    armed: AtomicBool,
    entered: Notify,
    release: Notify,
}

#[async_trait]
impl PersistBackend<u64> for HeldOpen {
    async fn open(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        if shard != METADATA_SHARD && self.gate.armed.swap(false, Ordering::SeqCst) {
            self.gate.entered.notify_one();
            self.gate.release.notified().await;
        }
        self.backend.open(shard).await
    }

    async fn frontiers(&self, shard: ShardId) -> Result<ShardFrontiers<u64>, BackendError> {
        self.backend.frontiers(shard).await
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
        self.backend
            .compare_and_append(shard, updates, expected_upper, new_upper, token, fence)
            .await
    }

    async fn compare_and_append_all(
        &self,
        appends: Vec<ShardAppend<u64>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<u64>>, BackendError> {
        self.backend
            .compare_and_append_all(appends, token, fence)
            .await
    }

    async fn snapshot(
        &self,
        shard: ShardId,
        as_of: &u64,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.backend.snapshot(shard, as_of).await
    }

    async fn fetch(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        self.backend.fetch(shard, lower, upper).await
    }

    async fn snapshot_share(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        self.backend.snapshot_share(shard, as_of, share).await
    }

    async fn fetch_share(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
        share: ReadShare,
    ) -> Result<Vec<Update<u64>>, BackendError> {
        self.backend.fetch_share(shard, lower, upper, share).await
    }

    async fn snapshot_stream(
        &self,
        shard: ShardId,
        as_of: &u64,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<SnapshotStream, BackendError> {
        self.backend
            .snapshot_stream(shard, as_of, share, limit)
            .await
    }

    async fn fetch_stream(
        &self,
        shard: ShardId,
        lower: &Antichain<u64>,
        upper: &Antichain<u64>,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<FetchStream<u64>, BackendError> {
        self.backend
            .fetch_stream(shard, lower, upper, share, limit)
            .await
    }

    async fn wait_for_upper_past(
        &self,
        shard: ShardId,
        frontier: &Antichain<u64>,
    ) -> Result<Antichain<u64>, BackendError> {
        self.backend.wait_for_upper_past(shard, frontier).await
    }

    async fn downgrade_since(
        &self,
        shard: ShardId,
        new_since: &Antichain<u64>,
        fence: WriteFence,
    ) -> Result<Antichain<u64>, BackendError> {
        self.backend.downgrade_since(shard, new_since, fence).await
    }

    async fn compact(&self, shard: ShardId) -> Result<CompactionStats, BackendError> {
        PersistBackend::<u64>::compact(&self.backend, shard).await
    }

    async fn usage(&self, shard: ShardId) -> Result<ShardUsage, BackendError> {
        PersistBackend::<u64>::usage(&self.backend, shard).await
    }

    async fn finalize(&self, shard: ShardId) -> Result<(), BackendError> {
        PersistBackend::<u64>::finalize(&self.backend, shard).await
    }

    async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError> {
        PersistBackend::<u64>::list_shards(&self.backend).await
    }
}

fn table() -> CollectionDescription<u64> {
    CollectionDescription::table(
        RelationDesc::empty().with_column("n", ScalarType::Int64.nullable(false)),
    )
}

fn one_row(n: i64, time: u64) -> Vec<Update<u64>> {
    vec![Update::new(Row::pack([Datum::Int64(n)]), time, 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_controller_cannot_append_to_a_shard_it_opened_while_a_newer_one_started() {
    let name = format!("fenced-while-registering-{}", ShardId::new());
    let gate = Arc::new(Gate::default());
    let held = HeldOpen {
        backend: MemoryBackend::open(&name),
        gate: Arc::clone(&gate),
    };
    let mut older = Controller::<u64, _>::new(held, ControllerConfig::default())
        .await
        .unwrap();
    gate.armed.store(true, Ordering::SeqCst);
    // The older controller names the table's shard durably, then stops
    // just before opening it.
    let creating = tokio::spawn(async move {
        let created = older
            .create_collections(vec![(GlobalId::User(1), table())])
            .await;
        (older, created)
    });
    gate.entered.notified().await;
    let newer = Controller::<u64, _>::new(MemoryBackend::open(&name), ControllerConfig::default())
        .await
        .unwrap();
    gate.release.notify_one();
    let (mut older, created) = creating.await.unwrap();
    // Its registration raced the newer controller's start-up; whatever it
    // answered, no append of it lands from now on.
    let shard = match created {
        Ok(()) => {
            older
                .collection(GlobalId::User(1))
                .unwrap()
                .collection_metadata
                .data_shard
        }
        Err(err) => panic!("registration failed: {err}"),
    };
    let upper_after_start: Antichain<u64> = newer.backend().frontiers(shard).await.unwrap().upper;
    let appended = match older.append(vec![(GlobalId::User(1), one_row(1, 0), 1)]) {
        Ok(receiver) => receiver.await.unwrap(),
        Err(err) => Err(err),
    };
    assert_eq!(appended, Err(StorageError::Fenced));
    assert!(older.is_fenced());
    assert_eq!(
        older
            .append(vec![(GlobalId::User(1), one_row(2, 1), 2)])
            .unwrap_err(),
        StorageError::Fenced
    );
    assert_eq!(
        newer.backend().frontiers(shard).await.unwrap().upper,
        upper_after_start,
        "an older controller's append landed after a newer one started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_controller_s_append_is_refused_by_the_shard_and_reported_fenced() {
    let name = format!("fenced-by-the-shard-{}", ShardId::new());
    let mut older =
        Controller::<u64, _>::new(MemoryBackend::open(&name), ControllerConfig::default())
            .await
            .unwrap();
    older
        .create_collections(vec![(GlobalId::User(1), table())])
        .await
        .unwrap();
    older
        .append_durable(vec![(GlobalId::User(1), one_row(1, 0), 1)])
        .await
        .unwrap();
    let shard = older
        .collection(GlobalId::User(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    let mut newer =
        Controller::<u64, _>::new(MemoryBackend::open(&name), ControllerConfig::default())
            .await
            .unwrap();
    assert!(!older.is_fenced(), "nothing told the older controller yet");
    // An append alone: answered by the data shard's refusal of the older
    // epoch, as the controller's own `Fenced`.
    assert_eq!(
        older
            .append_durable(vec![(GlobalId::User(1), one_row(2, 1), 2)])
            .await,
        Err(StorageError::Fenced)
    );
    assert!(older.is_fenced());
    assert_eq!(
        newer.backend().frontiers(shard).await.unwrap().upper,
        Antichain::from_elem(1)
    );
    // The newer controller carries on from where the older one left off.
    newer
        .create_collections(vec![(GlobalId::User(1), table())])
        .await
        .unwrap();
    newer
        .append_durable(vec![(GlobalId::User(1), one_row(3, 1), 2)])
        .await
        .unwrap();
    assert_eq!(
        newer.snapshot(GlobalId::User(1), 1).await.unwrap(),
        vec![
            (Row::pack([Datum::Int64(1)]), 1),
            (Row::pack([Datum::Int64(3)]), 1)
        ]
    );
}
