//! The memory backend serves any `StorageTimestamp`, and a shard answers
//! only in the timestamp type it was opened with.

use std::fmt;
use tidemark_storage_types::WriteFence;

use differential_dataflow::lattice::Lattice;
use serde::{Deserialize, Serialize};
use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_types::{
    Codec64, Datum, DeterminateKind, IdempotencyToken, PersistBackend, Row, ShardId,
    StorageTimestamp, Update,
};
use timely::PartialOrder;
use timely::order::TotalOrder;
use timely::progress::timestamp::PathSummary;
use timely::progress::{Antichain, Timestamp};

/// A timestamp type of this test's own: a numbered epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
struct Epoch(u64);

/// How far a path moves an epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct EpochStep(u64);

impl PartialOrder for Epoch {
    fn less_equal(&self, other: &Self) -> bool {
        self.0 <= other.0
    }
}

impl TotalOrder for Epoch {}

impl PartialOrder for EpochStep {
    fn less_equal(&self, other: &Self) -> bool {
        self.0 <= other.0
    }
}

impl PathSummary<Epoch> for EpochStep {
    fn results_in(&self, src: &Epoch) -> Option<Epoch> {
        src.0.checked_add(self.0).map(Epoch)
    }

    fn followed_by(&self, other: &Self) -> Option<Self> {
        self.0.checked_add(other.0).map(EpochStep)
    }
}

impl Timestamp for Epoch {
    type Summary = EpochStep;

    fn minimum() -> Self {
        Epoch(0)
    }
}

impl Lattice for Epoch {
    fn join(&self, other: &Self) -> Self {
        Epoch(self.0.max(other.0))
    }

    fn meet(&self, other: &Self) -> Self {
        Epoch(self.0.min(other.0))
    }
}

impl Codec64 for Epoch {
    fn encode(&self) -> i64 {
        self.0.encode()
    }

    fn decode(encoded: i64) -> Self {
        Epoch(u64::decode(encoded))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch{}", self.0)
    }
}

impl StorageTimestamp for Epoch {
    fn step_back(&self) -> Self {
        Epoch(self.0.step_back())
    }

    fn saturating_sub(&self, lag: Self) -> Self {
        Epoch(self.0.saturating_sub(lag.0))
    }

    fn round_down_to(&self, granularity: Self) -> Self {
        Epoch(self.0.round_down_to(granularity.0))
    }

    fn checked_step_forward(&self) -> Option<Self> {
        self.0.checked_step_forward().map(Epoch)
    }
}

#[tokio::test]
async fn a_store_holds_shards_of_several_timestamp_types() {
    let backend = MemoryBackend::open(&format!("timestamp-types-{}", ShardId::new()));
    let by_epoch = ShardId::new();
    let by_number = ShardId::new();
    PersistBackend::<Epoch>::open(&backend, by_epoch)
        .await
        .unwrap();
    PersistBackend::<u64>::open(&backend, by_number)
        .await
        .unwrap();

    let row = Row::pack([Datum::Bool(true)]);
    backend
        .compare_and_append(
            by_epoch,
            vec![Update::new(row.clone(), Epoch(1), 2)],
            Antichain::from_elem(Epoch(0)),
            Antichain::from_elem(Epoch(3)),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        backend.snapshot(by_epoch, &Epoch(2)).await.unwrap(),
        vec![(row, 2)]
    );
    let err = backend.snapshot(by_epoch, &Epoch(3)).await.unwrap_err();
    assert!(err.to_string().contains("as_of epoch3"), "{err}");

    let listed = PersistBackend::<Epoch>::list_shards(&backend)
        .await
        .unwrap();
    let mut both = vec![by_epoch, by_number];
    both.sort();
    assert_eq!(
        listed, both,
        "listing does not depend on the timestamp type"
    );
}

#[tokio::test]
async fn a_shard_answers_only_in_its_own_timestamp_type() {
    let backend = MemoryBackend::open(&format!("timestamp-types-{}", ShardId::new()));
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();

    let err = PersistBackend::<Epoch>::frontiers(&backend, shard)
        .await
        .unwrap_err();
    assert_eq!(err.determinate_kind(), Some(DeterminateKind::Other));
    let message = err.to_string();
    assert!(
        message.contains("shard holds another timestamp type")
            && message.contains(&format!("shard={shard}"))
            && message.contains("stored=u64")
            && message.contains("Epoch"),
        "{message}"
    );
    let err = PersistBackend::<Epoch>::open(&backend, shard)
        .await
        .unwrap_err();
    assert_eq!(err.determinate_kind(), Some(DeterminateKind::Other));
    assert_eq!(
        PersistBackend::<u64>::frontiers(&backend, shard)
            .await
            .unwrap()
            .upper,
        Antichain::from_elem(0),
        "the shard is untouched"
    );
}
