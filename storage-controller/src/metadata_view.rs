//! A read-only view of the durable controller metadata, for tooling that
//! must not disturb a running controller.
//!
//! Constructing a [`Controller`](crate::Controller) fences every older
//! controller on the same backend (it rewrites the metadata record with the
//! next epoch). [`read_metadata`] only reads: it never writes the metadata
//! shard and never creates it.

use std::collections::{BTreeMap, BTreeSet};

use tidemark_storage_types::{GlobalId, PersistBackend, ShardId, StorageError, StorageTimestamp};

use crate::durable::{DurableMetadata, METADATA_SHARD, read_record_with_retries};
use crate::retry::RetryPolicy;

/// What the durable controller metadata of a backend records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataView {
    /// The reserved shard holding the metadata.
    pub metadata_shard: ShardId,
    /// The epoch of the controller that last wrote the record, `None` if
    /// no controller ever wrote one.
    pub epoch: Option<i64>,
    /// The format version of the stored record, `None` if there is none.
    pub format_version: Option<i64>,
    /// The data shard of each collection (tables, ingestions, their
    /// outputs and remap collections alike: the metadata does not record
    /// which kind a collection is).
    pub collections: BTreeMap<GlobalId, ShardId>,
    /// The exports (sinks) with a recorded initial as_of. Sinks own no
    /// shard.
    pub sinks: BTreeSet<GlobalId>,
    /// Shards of dropped collections not yet finalized.
    pub finalizing: BTreeSet<ShardId>,
}

/// Reads the durable controller metadata of `backend` without writing
/// anything: a running controller is not fenced, and a backend without a
/// metadata shard is left without one (the view is then empty).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tidemark_backend_memory::MemoryBackend;
/// use tidemark_storage_controller::read_metadata;
/// let backend = MemoryBackend::open("metadata-view-doc");
/// let view = read_metadata::<u64, _>(&backend).await.unwrap();
/// assert!(view.collections.is_empty() && view.epoch.is_none());
/// # });
/// ```
///
/// # Errors
///
/// A backend failure, or a `Corrupted` error if the record does not decode
/// (an `InvalidUsage` error if it has a newer format than this crate).
pub async fn read_metadata<T, B>(backend: &B) -> Result<MetadataView, StorageError>
where
    T: StorageTimestamp,
    B: PersistBackend<T> + ?Sized,
{
    let mut view = MetadataView {
        metadata_shard: METADATA_SHARD,
        epoch: None,
        format_version: None,
        collections: BTreeMap::new(),
        sinks: BTreeSet::new(),
        finalizing: BTreeSet::new(),
    };
    // SUBTLE: `read_record` opens the shard, which would create it on a
    // fresh store; look first so that inspecting writes nothing.
    if !backend.list_shards().await?.contains(&METADATA_SHARD) {
        return Ok(view);
    }
    let (_upper, record) = read_record_with_retries::<T, B>(backend, RetryPolicy::NONE).await?;
    let Some(record) = record else {
        return Ok(view);
    };
    let metadata = DurableMetadata::decode(record.format_version, &record.body)?;
    view.epoch = Some(record.epoch);
    view.format_version = Some(record.format_version);
    view.collections = metadata.collections;
    view.sinks = metadata.sink_as_ofs.into_keys().collect();
    view.finalizing = metadata.finalizing;
    Ok(view)
}
