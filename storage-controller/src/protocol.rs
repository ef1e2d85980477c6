//! The command/response protocol between the controller and a storage
//! instance's replica.
//!
//! Commands flow controller -> replica, responses replica -> controller.
//! On every (re)connect the controller replays the instance's compacted
//! command history, starting with [`StorageCommand::CreateTimely`] carrying
//! a fresh epoch; see
//! [`connect_replica`](crate::StorageController::connect_replica).
//!
//! Every type here is serde, and [`wire`](crate::wire) gives the format
//! they travel in over TCP. Nothing in the protocol carries a backend URL or
//! a credential: a replica is given where its backend is by whoever starts
//! it, never by the controller. Keep it that way when adding fields.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tidemark_storage_types::{
    CollectionDescription, ExportDescription, GlobalId, ShardId, StorageParameters,
};
use timely::progress::Antichain;

/// The network addresses of a replica's processes (one per process).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterReplicaLocation {
    /// One address per timely process of the replica.
    pub addresses: Vec<String>,
}

impl ClusterReplicaLocation {
    /// A replica of one process at `address`.
    #[must_use]
    pub fn single(address: impl Into<String>) -> Self {
        ClusterReplicaLocation {
            addresses: vec![address.into()],
        }
    }
}

/// How a replica process joins its timely cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelyConfig {
    /// This process's index among `addresses`.
    pub process: usize,
    /// Every process of the replica.
    pub addresses: Vec<String>,
}

/// An ingestion as a replica runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + timely::PartialOrder"))]
pub struct IngestionCommand<T> {
    /// The ingestion (its collection id).
    pub id: GlobalId,
    /// Its description.
    pub description: CollectionDescription<T>,
    /// Where its output collections' data lives.
    pub data_shards: Vec<(GlobalId, ShardId)>,
    /// Where to resume: the meet of the uppers of its output collections.
    #[serde(deserialize_with = "tidemark_storage_types::frontier_serde::deserialize")]
    pub resume_upper: Antichain<T>,
}

/// An export as a replica runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + timely::PartialOrder"))]
pub struct ExportCommand<T> {
    /// The export id.
    pub id: GlobalId,
    /// Its description.
    pub description: ExportDescription<T>,
    /// The shard it reads.
    pub from_shard: ShardId,
    /// The as_of recorded durably when the export was first created.
    #[serde(deserialize_with = "tidemark_storage_types::frontier_serde::deserialize")]
    pub initial_as_of: Antichain<T>,
}

/// Controller -> replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + timely::PartialOrder"))]
pub enum StorageCommand<T> {
    /// First command of every connection: join the cluster; `epoch` grows
    /// with every (re)connect of the instance.
    CreateTimely {
        /// This process's part of the cluster.
        config: TimelyConfig,
        /// The connection epoch.
        epoch: u64,
    },
    /// The controller has sent every initial command.
    InitializationComplete,
    /// The full current configuration.
    UpdateConfiguration(StorageParameters),
    /// Run these ingestions.
    CreateSources(Vec<IngestionCommand<T>>),
    /// Run these exports.
    CreateSinks(Vec<ExportCommand<T>>),
    /// Reads before these frontiers are no longer needed; an empty frontier
    /// means the ingestion or export is dropped.
    AllowCompaction(
        #[serde(deserialize_with = "tidemark_storage_types::frontier_serde::deserialize_pairs")]
        Vec<(GlobalId, Antichain<T>)>,
    ),
}

/// Counters a replica reports per ingestion or export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatisticsUpdate {
    /// Messages read or written.
    pub messages: u64,
    /// Updates read or written.
    pub updates: u64,
    /// Bytes read or written.
    pub bytes: u64,
    /// How far the id's committed upper is behind where it should be, in
    /// steps of the timestamp's [`Codec64`](tidemark_storage_types::Codec64)
    /// encoding (`reference.encode() - upper.encode()`, never below zero),
    /// measured when the statistics are sent:
    ///
    /// - for an **ingestion**, the reference is the upper its generator
    ///   would have written by now: the time of the tick after the last one
    ///   due by its tick interval since the dataflow started (with a zero
    ///   interval, every tick is due as soon as it can be emitted, so the
    ///   reference is the upper after the ticks emitted so far). A load
    ///   generator writes tick `k` at the `k`-th time after the minimum, so
    ///   one step is one tick: the lag counts ticks generated but not yet
    ///   durable, or due but not generated;
    /// - for an **export**, the reference is its source collection's upper
    ///   as the sink's reader last saw it: the lag counts source times the
    ///   sink has not committed yet.
    ///
    /// An empty upper (sealed) is never behind. Zero means caught up.
    pub frontier_lag: u64,
}

/// Replica -> controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + timely::PartialOrder"))]
pub enum StorageResponse<T> {
    /// The uppers of the collections and exports the replica writes.
    FrontierUppers(
        #[serde(deserialize_with = "tidemark_storage_types::frontier_serde::deserialize_pairs")]
        Vec<(GlobalId, Antichain<T>)>,
    ),
    /// The replica has stopped these ingestions and exports.
    DroppedIds(BTreeSet<GlobalId>),
    /// Statistics per id (the latest replaces the previous).
    StatisticsUpdates(Vec<(GlobalId, StatisticsUpdate)>),
    /// A human-readable status per id (`running`, `stalled: ...`).
    StatusUpdates(Vec<(GlobalId, String)>),
}
