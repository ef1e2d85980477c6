//! Descriptions of collections and exports, and storage configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::progress::Antichain;

use crate::ids::{GlobalId, StorageInstanceId};
use crate::row::{RelationDesc, ScalarType};

/// What writes a collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataSource {
    /// A table: written by the controller through
    /// [`append`](https://docs.rs/tidemark-storage-controller).
    Table,
    /// An ingestion running on a storage instance.
    Ingestion(IngestionDescription),
    /// The progress (remap) collection of an ingestion; written by that
    /// ingestion.
    Progress,
    /// Written by some other writer that reports its frontiers through
    /// `update_write_frontiers` (for example a materialized view).
    Other,
    /// A status history: the controller appends a row of
    /// [`status_history_relation`] to it for every status change of each
    /// collection that names it as its `status_collection_id`. Its relation
    /// must be exactly that one.
    StatusHistory,
}

/// The relation of every status history collection
/// ([`DataSource::StatusHistory`]), one row per status change:
///
/// - `occurred_at` (timestamp, microseconds since the Unix epoch): when the
///   controller learned of the change;
/// - `id` (string): the collection whose status changed, as `u1`;
/// - `status` (string): `starting`, `running`, `stalled` or `dropped`, or
///   what the replica reported;
/// - `error` (nullable string): why it is stalled;
/// - `replica` (nullable string): the instance and replica process that
///   reported it, as `si1/0`; null when the controller itself decided it.
#[must_use]
pub fn status_history_relation() -> RelationDesc {
    RelationDesc::empty()
        .with_column("occurred_at", ScalarType::Timestamp.nullable(false))
        .with_column("id", ScalarType::String.nullable(false))
        .with_column("status", ScalarType::String.nullable(false))
        .with_column("error", ScalarType::String.nullable(true))
        .with_column("replica", ScalarType::String.nullable(true))
}

impl DataSource {
    /// Whether the controller itself writes the collection (only those
    /// accept `append`).
    #[must_use]
    pub fn is_controller_written(&self) -> bool {
        matches!(self, DataSource::Table)
    }
}

/// An ingestion: a source running on a storage instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestionDescription {
    /// The instance that runs it.
    pub instance_id: StorageInstanceId,
    /// What it reads from.
    pub connection: SourceConnection,
    /// Its progress collection, which must exist before the ingestion is
    /// created; the ingestion holds reads on it.
    pub remap_collection_id: Option<GlobalId>,
    /// Further collections the ingestion writes (besides itself), each with
    /// the name of the source output it receives (for a load generator, one
    /// of its outputs such as `"bids"`). The ingestion's own collection
    /// receives the source's primary output.
    pub source_exports: BTreeMap<GlobalId, String>,
}

/// Where an ingestion reads from.
///
/// Not `#[non_exhaustive]`: a replica must run every kind of source, so a
/// new kind is a compile error in the replica rather than a runtime refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceConnection {
    /// A generator of synthetic data.
    LoadGenerator {
        /// What to generate.
        generator: LoadGenerator,
        /// How often to emit a new time.
        tick: Duration,
    },
}

/// A synthetic data generator. Its output is a pure function of the
/// description and the tick number, so a restarted ingestion writes exactly
/// what the first run would have (the replica's `generator` module defines
/// the outputs and their relations).
///
/// Not `#[non_exhaustive]`, for the reason given on [`SourceConnection`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadGenerator {
    /// Emits one increasing integer per tick, up to `max_cardinality` live
    /// values (older ones are retracted) if given.
    Counter {
        /// Bounds how many values are live at once (at least 1).
        max_cardinality: Option<u64>,
    },
    /// An auction house: organizations, users and accounts created at the
    /// first tick and updated rarely, auctions opened and bids placed every
    /// tick, each in an output of its own (`"organizations"`, `"users"`,
    /// `"accounts"`, `"auctions"`, `"bids"`).
    Auction,
    /// Upserts over a fixed key space, `batch_size` writes per tick: the
    /// throughput workload. The `n`-th write overall sets key `n % keys` to
    /// a value of `value_size` bytes derived from `seed` and `n`, retracting
    /// the key's previous value.
    KeyValue {
        /// How many distinct keys there are (at least 1).
        keys: u64,
        /// The length of each value in bytes.
        value_size: u32,
        /// How many writes each tick makes (at least 1).
        batch_size: u32,
        /// Seeds the values.
        seed: u64,
    },
}

/// How a collection comes to be and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + timely::PartialOrder"))]
pub struct CollectionDescription<T> {
    /// The shape of its rows.
    pub desc: RelationDesc,
    /// What writes it.
    pub data_source: DataSource,
    /// If given, the collection starts readable only from this frontier.
    #[serde(deserialize_with = "crate::frontier_serde::deserialize_option")]
    pub since: Option<Antichain<T>>,
    /// A collection that receives its status updates, if any.
    pub status_collection_id: Option<GlobalId>,
}

impl<T> CollectionDescription<T> {
    /// A table with the given relation.
    #[must_use]
    pub fn table(desc: RelationDesc) -> Self {
        CollectionDescription {
            desc,
            data_source: DataSource::Table,
            since: None,
            status_collection_id: None,
        }
    }

    /// A collection of the given relation and source.
    #[must_use]
    pub fn new(desc: RelationDesc, data_source: DataSource) -> Self {
        CollectionDescription {
            desc,
            data_source,
            since: None,
            status_collection_id: None,
        }
    }

    /// The same description, readable from `since` on.
    #[must_use]
    pub fn with_since(mut self, since: Antichain<T>) -> Self {
        self.since = Some(since);
        self
    }
}

/// An export: a sink that writes a collection out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + timely::PartialOrder"))]
pub struct ExportDescription<T> {
    /// The collection it reads.
    pub from: GlobalId,
    /// The shape of that collection.
    pub from_desc: RelationDesc,
    /// Where it writes.
    pub connection: SinkConnection,
    /// The frontier it starts reading at.
    #[serde(deserialize_with = "crate::frontier_serde::deserialize")]
    pub as_of: Antichain<T>,
    /// Whether it first writes the snapshot at `as_of`, or only later changes.
    pub with_snapshot: bool,
    /// The instance that runs it.
    pub instance_id: StorageInstanceId,
}

/// Where a sink writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SinkConnection {
    /// JSON lines `{"row": [...], "time": T, "diff": D}`, written exactly
    /// once across restarts through a committed-progress record beside the
    /// data.
    File {
        /// A directory the sink owns: it holds the data file and the
        /// progress record (and, while a commit is under way, a temporary
        /// record). It is created if missing; nothing else may write there.
        path: PathBuf,
    },
}

/// Storage configuration. Each field left `None` keeps its current value when
/// merged with [`StorageParameters::update`]; the accessors give the
/// defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageParameters {
    /// Whether the controller asks the backend to compact physically after
    /// a collection's since advances (default true).
    pub physical_compaction: Option<bool>,
    /// The least number of stored updates a shard must hold before physical
    /// compaction is worth running (default 1,024).
    pub compaction_min_updates: Option<u64>,
    /// How often replicas report statistics (default 1 s).
    pub statistics_interval: Option<Duration>,
}

impl StorageParameters {
    /// Merges `other` into `self`: fields `other` sets win.
    pub fn update(&mut self, other: StorageParameters) {
        let StorageParameters {
            physical_compaction,
            compaction_min_updates,
            statistics_interval,
        } = other;
        self.physical_compaction = physical_compaction.or(self.physical_compaction);
        self.compaction_min_updates = compaction_min_updates.or(self.compaction_min_updates);
        self.statistics_interval = statistics_interval.or(self.statistics_interval);
    }

    /// Whether physical compaction runs after since advances.
    #[must_use]
    pub fn physical_compaction(&self) -> bool {
        self.physical_compaction.unwrap_or(true)
    }

    /// The least number of stored updates before compaction runs.
    #[must_use]
    pub fn compaction_min_updates(&self) -> u64 {
        self.compaction_min_updates.unwrap_or(1_024)
    }

    /// How often replicas report statistics.
    #[must_use]
    pub fn statistics_interval(&self) -> Duration {
        self.statistics_interval.unwrap_or(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_merge_field_by_field() {
        let mut params = StorageParameters {
            physical_compaction: Some(false),
            ..Default::default()
        };
        params.update(StorageParameters {
            compaction_min_updates: Some(5),
            ..Default::default()
        });
        assert!(!params.physical_compaction());
        assert_eq!(params.compaction_min_updates(), 5);
        assert_eq!(params.statistics_interval(), Duration::from_secs(1));
        let err = serde_json::from_str::<StorageParameters>(r#"{"bogus": 1}"#).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
