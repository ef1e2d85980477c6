//! Durable controller metadata: which shard holds each collection, each
//! sink's initial as_of, and shards awaiting finalization.
//!
//! # Where it lives
//!
//! In the reserved shard [`METADATA_SHARD`] of the same backend as the data,
//! written with `compare_and_append` like any collection. The shard holds
//! exactly one live row `(format_version: int64, epoch: int64, body:
//! string)`; each write retracts the previous row and adds the new one at
//! the shard's upper `t`, moving the upper to `t + 1`, then downgrades the
//! shard's since to `t`. The body is JSON (see [`DurableMetadata`]).
//!
//! # Fencing
//!
//! A controller starting up rewrites the record with `epoch + 1`. An older
//! controller's next write then fails its upper expectation: it marks
//! itself fenced and refuses further work with [`StorageError::Fenced`].
//! The new controller then raises every data shard's writer epoch to its
//! own, and its table appends and since downgrades carry that epoch, so an
//! older controller that passed its fence check just before cannot land a
//! data write afterwards: the backend refuses it (decision 082).
//!
//! # Format versions
//!
//! - 1: `{"shards": [["u1", "s<uuid>"], ...]}`.
//! - 2: `{"collections": {"u1": "s<uuid>"}, "sink_as_ofs":
//!   {"u2": [<time as Codec64>]}, "finalizing": ["s<uuid>"]}`.
//! - 3 (current): version 2 plus `"awaiting_drop": {"u3": {"instance": 1,
//!   "stopping": true, "shards": {"u3": "s<uuid>", "u4": "s<uuid>"}}}`:
//!   the shards of ingestion `u3`'s dropped outputs, kept until its
//!   replica confirms it stopped (decision 104). A version 2 body is read
//!   with no ingestion awaiting.
//!
//! An older format is read as is; any write stores the current one
//! ([`migrate_collections`](crate::StorageController::migrate_collections)
//! forces that write). A newer format than this crate knows is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tidemark_storage_types::WriteFence;

use serde::{Deserialize, Serialize};
use tidemark_storage_types::{
    BackendError, Codec64, Datum, DeterminateKind, GlobalId, IdempotencyToken, InvalidUsage,
    PersistBackend, Row, ShardId, StorageError, StorageInstanceId, StorageTimestamp, Update,
    display_frontier, frontier_time,
};
use timely::progress::{Antichain, Timestamp};

use crate::retry::{RetryPolicy, retry_indeterminate};

/// The fence of the controller that wrote `record`.
fn record_fence(record: &StoredRecord) -> WriteFence {
    WriteFence::Epoch(u64::try_from(record.epoch).unwrap_or(0))
}

/// Raises every data shard's writer epoch to this controller's (a since
/// downgrade to the minimum changes nothing else), so an older controller's
/// next data write is refused by the backend itself.
///
/// # Errors
///
/// `Fenced` if a newer controller already raised a shard's epoch; a backend
/// failure. A shard the metadata names but that was never opened (a crash
/// between the two, or an older controller registering it right now) is
/// opened and raised like the others, so every shard an older controller
/// can append to refuses it once this returns.
async fn fence_data_shards<T: StorageTimestamp, B: PersistBackend<T> + ?Sized>(
    backend: &B,
    retry: RetryPolicy,
    metadata: &DurableMetadata,
    record: &StoredRecord,
) -> Result<(), StorageError> {
    let minimum = Antichain::from_elem(T::minimum());
    let fence = record_fence(record);
    for shard in metadata.collections.values() {
        let mut raised =
            retry_indeterminate(retry, || backend.downgrade_since(*shard, &minimum, fence)).await;
        if let Err(BackendError::InvalidUsage(InvalidUsage::UnknownShard { .. })) = raised {
            // SUBTLE: a shard named but not yet opened is opened here and
            // raised too. An older controller may be registering it right
            // now (its metadata write names the shard before it opens it);
            // skipping the shard would let that controller's appends to it
            // land after this one started, which the worker's append path
            // relies on never happening (decision 111).
            retry_indeterminate(retry, || backend.open(*shard)).await?;
            raised =
                retry_indeterminate(retry, || backend.downgrade_since(*shard, &minimum, fence))
                    .await;
        }
        match raised {
            Ok(_) => {}
            Err(err) if err.determinate_kind() == Some(DeterminateKind::Fenced) => {
                return Err(StorageError::Fenced);
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// The reserved shard holding the controller's durable metadata.
pub const METADATA_SHARD: ShardId = ShardId::from_bytes(*b"tidemark-meta-v1");

/// The format version this crate writes.
pub const CURRENT_FORMAT_VERSION: i64 = 3;

/// Physically compact the metadata shard after this many writes.
const COMPACT_METADATA_EVERY: u64 = 64;

/// The decoded durable metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableMetadata {
    /// The data shard of each collection.
    pub collections: BTreeMap<GlobalId, ShardId>,
    /// The initial as_of of each sink, as `Codec64` values.
    pub sink_as_ofs: BTreeMap<GlobalId, Vec<i64>>,
    /// Shards whose collection was dropped and that are not yet finalized.
    pub finalizing: BTreeSet<ShardId>,
    /// Per ingestion, the shards of its dropped outputs that wait for the
    /// replica's `DroppedIds` before they are finalized.
    pub awaiting_drop: BTreeMap<GlobalId, AwaitingDrop>,
}

/// Dropped outputs of one ingestion whose shards wait for its replica to
/// confirm (with `DroppedIds`) that the ingestion stopped writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwaitingDrop {
    /// The instance running the ingestion.
    pub instance: StorageInstanceId,
    /// Whether the ingestion itself is dropped (its replica was told
    /// `AllowCompaction(id, [])`); if not, only some of its outputs are.
    pub stopping: bool,
    /// The shard of each dropped output (the ingestion's own collection,
    /// its source exports, its progress collection).
    pub shards: BTreeMap<GlobalId, ShardId>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AwaitingDropBody {
    instance: u64,
    stopping: bool,
    shards: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyV1 {
    shards: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BodyV2 {
    collections: BTreeMap<String, String>,
    sink_as_ofs: BTreeMap<String, Vec<i64>>,
    finalizing: Vec<String>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BodyV3 {
    collections: BTreeMap<String, String>,
    sink_as_ofs: BTreeMap<String, Vec<i64>>,
    finalizing: Vec<String>,
    #[serde(default)]
    awaiting_drop: BTreeMap<String, AwaitingDropBody>,
}

fn corrupted(message: String) -> StorageError {
    StorageError::Backend(BackendError::determinate(
        DeterminateKind::Corrupted,
        message,
    ))
}

fn parse_id(text: &str) -> Result<GlobalId, StorageError> {
    text.parse()
        .map_err(|err| corrupted(format!("durable controller metadata: {err}")))
}

fn parse_shard(text: &str) -> Result<ShardId, StorageError> {
    text.parse()
        .map_err(|err| corrupted(format!("durable controller metadata: {err}")))
}

impl DurableMetadata {
    /// Decodes a body of the given format version.
    ///
    /// # Errors
    ///
    /// [`StorageError::MetadataFormatTooNew`] for a version newer than
    /// [`CURRENT_FORMAT_VERSION`]; a `Corrupted` backend error for a body
    /// that does not parse.
    pub fn decode(version: i64, body: &str) -> Result<Self, StorageError> {
        let bad_json = |err: serde_json::Error| {
            corrupted(format!(
                "durable controller metadata version {version} does not parse: {err}"
            ))
        };
        match version {
            1 => {
                let v1: BodyV1 = serde_json::from_str(body).map_err(bad_json)?;
                let mut metadata = DurableMetadata::default();
                for (id, shard) in v1.shards {
                    metadata
                        .collections
                        .insert(parse_id(&id)?, parse_shard(&shard)?);
                }
                Ok(metadata)
            }
            2 => {
                let v2: BodyV2 = serde_json::from_str(body).map_err(bad_json)?;
                Self::decode_v3(BodyV3 {
                    collections: v2.collections,
                    sink_as_ofs: v2.sink_as_ofs,
                    finalizing: v2.finalizing,
                    awaiting_drop: BTreeMap::new(),
                })
            }
            3 => Self::decode_v3(serde_json::from_str(body).map_err(bad_json)?),
            newer if newer > CURRENT_FORMAT_VERSION => Err(StorageError::MetadataFormatTooNew {
                found: newer,
                supported: CURRENT_FORMAT_VERSION,
            }),
            other => Err(corrupted(format!(
                "durable controller metadata has an unknown format version: {other}"
            ))),
        }
    }

    fn decode_v3(v3: BodyV3) -> Result<Self, StorageError> {
        let mut metadata = DurableMetadata::default();
        for (id, shard) in v3.collections {
            metadata
                .collections
                .insert(parse_id(&id)?, parse_shard(&shard)?);
        }
        for (id, as_of) in v3.sink_as_ofs {
            metadata.sink_as_ofs.insert(parse_id(&id)?, as_of);
        }
        for shard in v3.finalizing {
            metadata.finalizing.insert(parse_shard(&shard)?);
        }
        for (id, awaiting) in v3.awaiting_drop {
            let mut shards = BTreeMap::new();
            for (output, shard) in awaiting.shards {
                shards.insert(parse_id(&output)?, parse_shard(&shard)?);
            }
            metadata.awaiting_drop.insert(
                parse_id(&id)?,
                AwaitingDrop {
                    instance: StorageInstanceId(awaiting.instance),
                    stopping: awaiting.stopping,
                    shards,
                },
            );
        }
        Ok(metadata)
    }

    /// Encodes in the current format.
    #[must_use]
    pub fn encode(&self) -> String {
        let body = BodyV3 {
            collections: self
                .collections
                .iter()
                .map(|(id, shard)| (id.to_string(), shard.to_string()))
                .collect(),
            sink_as_ofs: self
                .sink_as_ofs
                .iter()
                .map(|(id, as_of)| (id.to_string(), as_of.clone()))
                .collect(),
            finalizing: self.finalizing.iter().map(ToString::to_string).collect(),
            awaiting_drop: self
                .awaiting_drop
                .iter()
                .map(|(id, awaiting)| {
                    let body = AwaitingDropBody {
                        instance: awaiting.instance.0,
                        stopping: awaiting.stopping,
                        shards: awaiting
                            .shards
                            .iter()
                            .map(|(output, shard)| (output.to_string(), shard.to_string()))
                            .collect(),
                    };
                    (id.to_string(), body)
                })
                .collect(),
        };
        serde_json::to_string(&body).expect("metadata body serializes")
    }

    /// Encodes in format version 1 (collections only), as an older version
    /// of this crate wrote it. For migration tests.
    #[cfg(test)]
    #[must_use]
    pub fn encode_v1(&self) -> String {
        let body = BodyV1 {
            shards: self
                .collections
                .iter()
                .map(|(id, shard)| (id.to_string(), shard.to_string()))
                .collect(),
        };
        serde_json::to_string(&body).expect("metadata body serializes")
    }
}

/// Encodes a frontier for the metadata body.
pub(crate) fn encode_frontier<T: Codec64>(frontier: &Antichain<T>) -> Vec<i64> {
    frontier.elements().iter().map(Codec64::encode).collect()
}

/// Decodes a frontier from the metadata body.
pub(crate) fn decode_frontier<T: Codec64 + Timestamp>(encoded: &[i64]) -> Antichain<T> {
    encoded.iter().map(|time| T::decode(*time)).collect()
}

/// One stored record: its format, the epoch of the controller that wrote
/// it, and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// The body's format version.
    pub format_version: i64,
    /// The epoch of the controller that last wrote the record.
    pub epoch: i64,
    /// The JSON body.
    pub body: String,
}

impl StoredRecord {
    /// The record as the metadata shard stores it.
    #[must_use]
    pub fn to_row(&self) -> Row {
        Row::pack([
            Datum::Int64(self.format_version),
            Datum::Int64(self.epoch),
            Datum::String(&self.body),
        ])
    }

    fn from_row(row: &Row) -> Result<Self, StorageError> {
        match row.unpack().as_slice() {
            [
                Datum::Int64(format_version),
                Datum::Int64(epoch),
                Datum::String(body),
            ] => Ok(StoredRecord {
                format_version: *format_version,
                epoch: *epoch,
                body: (*body).to_string(),
            }),
            _ => Err(corrupted(format!(
                "durable controller metadata row has an unexpected shape: {row}"
            ))),
        }
    }
}

/// Reads the current record of the metadata shard (opening it if needed):
/// the shard's upper and the live record, if any. Reads are idempotent, so
/// indeterminate failures are retried.
///
/// # Errors
///
/// A `Corrupted` backend error if the shard is sealed or holds anything
/// but one live row.
pub(crate) async fn read_record_with_retries<T, B>(
    backend: &B,
    retry: RetryPolicy,
) -> Result<(Antichain<T>, Option<StoredRecord>), StorageError>
where
    T: StorageTimestamp,
    B: PersistBackend<T> + ?Sized,
{
    let frontiers = retry_indeterminate(retry, || backend.open(METADATA_SHARD)).await?;
    let Some(upper) = frontier_time(&frontiers.upper) else {
        return Err(corrupted(
            "durable controller metadata shard is sealed".to_string(),
        ));
    };
    if upper == T::minimum() {
        return Ok((frontiers.upper, None));
    }
    let as_of = upper.step_back();
    let rows = retry_indeterminate(retry, || backend.snapshot(METADATA_SHARD, &as_of)).await?;
    match rows.as_slice() {
        [] => Ok((frontiers.upper, None)),
        [(row, 1)] => Ok((frontiers.upper, Some(StoredRecord::from_row(row)?))),
        _ => Err(corrupted(format!(
            "durable controller metadata shard holds {} rows, expected one: upper={}",
            rows.len(),
            display_frontier(&frontiers.upper)
        ))),
    }
}

/// Replaces the live record at the metadata shard's `expected_upper`.
/// Returns the new upper, or `None` if the upper was not `expected_upper`
/// (another controller wrote; nothing written).
///
/// # Errors
///
/// A backend failure (indeterminate ones were retried with one token).
pub(crate) async fn write_record<T, B>(
    backend: &B,
    retry: RetryPolicy,
    expected_upper: &Antichain<T>,
    previous: Option<&StoredRecord>,
    record: &StoredRecord,
) -> Result<Option<Antichain<T>>, StorageError>
where
    T: StorageTimestamp,
    B: PersistBackend<T> + ?Sized,
{
    let Some(time) = frontier_time(expected_upper) else {
        return Err(corrupted(
            "durable controller metadata shard is sealed".to_string(),
        ));
    };
    let Some(next) = time.checked_step_forward() else {
        return Err(corrupted(
            "durable controller metadata shard reached the last time".to_string(),
        ));
    };
    let mut updates = vec![Update::new(record.to_row(), time, 1)];
    if let Some(previous) = previous {
        updates.push(Update::new(previous.to_row(), time, -1));
    }
    let new_upper = Antichain::from_elem(next);
    let token = IdempotencyToken::new();
    let outcome = retry_indeterminate(retry, || {
        backend.compare_and_append(
            METADATA_SHARD,
            updates.clone(),
            expected_upper.clone(),
            new_upper.clone(),
            token,
            WriteFence::Unfenced,
        )
    })
    .await?;
    match outcome {
        Ok(()) => {
            // SUBTLE: the record is written; failing to let older versions
            // be compacted must not report the write as failed (the caller
            // would think its upper unchanged and then itself fenced).
            if let Err(err) = backend
                .downgrade_since(
                    METADATA_SHARD,
                    &Antichain::from_elem(time),
                    WriteFence::Unfenced,
                )
                .await
            {
                tracing::warn!(error = %err, "could not downgrade the metadata shard's since");
            }
            Ok(Some(new_upper))
        }
        Err(_mismatch) => Ok(None),
    }
}

/// The metadata as one controller owns it: the live record, the upper it
/// was written at, and the fence flag shared with the controller.
#[derive(Debug)]
pub(crate) struct MetadataStore<T> {
    upper: Antichain<T>,
    record: StoredRecord,
    metadata: DurableMetadata,
    fenced: Arc<AtomicBool>,
    retry: RetryPolicy,
    writes: u64,
}

impl<T: StorageTimestamp> MetadataStore<T> {
    /// Reads the metadata and fences every older controller by rewriting
    /// the record with the next epoch. Retries when another controller
    /// writes in between (the last to start wins).
    pub(crate) async fn open_and_fence<B: PersistBackend<T> + ?Sized>(
        backend: &B,
        retry: RetryPolicy,
        fenced: Arc<AtomicBool>,
    ) -> Result<Self, StorageError> {
        loop {
            let (upper, previous) = read_record_with_retries(backend, retry).await?;
            let (record, metadata) = match &previous {
                Some(previous) => {
                    let metadata =
                        DurableMetadata::decode(previous.format_version, &previous.body)?;
                    // SUBTLE: the body is kept byte for byte, in its stored
                    // format: fencing must not migrate (that is
                    // migrate_collections' job, and must be re-runnable).
                    let record = StoredRecord {
                        epoch: previous.epoch + 1,
                        ..previous.clone()
                    };
                    (record, metadata)
                }
                None => {
                    let metadata = DurableMetadata::default();
                    let record = StoredRecord {
                        format_version: CURRENT_FORMAT_VERSION,
                        epoch: 1,
                        body: metadata.encode(),
                    };
                    (record, metadata)
                }
            };
            let written = write_record(backend, retry, &upper, previous.as_ref(), &record).await?;
            if let Some(new_upper) = written {
                fence_data_shards(backend, retry, &metadata, &record).await?;
                return Ok(MetadataStore {
                    upper: new_upper,
                    record,
                    metadata,
                    fenced,
                    retry,
                    writes: 0,
                });
            }
            tracing::info!("durable metadata changed while starting; reading it again");
        }
    }

    /// The metadata as last written.
    pub(crate) fn metadata(&self) -> &DurableMetadata {
        &self.metadata
    }

    /// The epoch this controller wrote.
    pub(crate) fn epoch(&self) -> i64 {
        self.record.epoch
    }

    /// The fence this controller's data writes carry: its epoch, which the
    /// backend checks atomically with each write.
    pub(crate) fn write_fence(&self) -> WriteFence {
        record_fence(&self.record)
    }

    /// The stored format version.
    pub(crate) fn format_version(&self) -> i64 {
        self.record.format_version
    }

    /// Whether this controller already knows it is fenced.
    pub(crate) fn known_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Records that a newer controller owns the storage: a data shard
    /// refused this controller's epoch.
    pub(crate) fn mark_fenced(&self) {
        self.fenced.store(true, Ordering::SeqCst);
    }

    /// Fails with `Fenced` if another controller wrote since our last write.
    pub(crate) async fn check_fence<B: PersistBackend<T> + ?Sized>(
        &self,
        backend: &B,
    ) -> Result<(), StorageError> {
        if self.fenced.load(Ordering::SeqCst) {
            return Err(StorageError::Fenced);
        }
        let frontiers =
            retry_indeterminate(self.retry, || backend.frontiers(METADATA_SHARD)).await?;
        if frontiers.upper != self.upper {
            self.fenced.store(true, Ordering::SeqCst);
            return Err(StorageError::Fenced);
        }
        Ok(())
    }

    /// Writes `metadata` in the current format.
    ///
    /// # Errors
    ///
    /// `Fenced` if another controller wrote since our last write (this
    /// controller is then fenced for good); a backend failure.
    pub(crate) async fn write<B: PersistBackend<T> + ?Sized>(
        &mut self,
        backend: &B,
        metadata: DurableMetadata,
    ) -> Result<(), StorageError> {
        if self.fenced.load(Ordering::SeqCst) {
            return Err(StorageError::Fenced);
        }
        let record = StoredRecord {
            format_version: CURRENT_FORMAT_VERSION,
            epoch: self.record.epoch,
            body: metadata.encode(),
        };
        let written = write_record(
            backend,
            self.retry,
            &self.upper,
            Some(&self.record),
            &record,
        )
        .await?;
        let Some(new_upper) = written else {
            self.fenced.store(true, Ordering::SeqCst);
            return Err(StorageError::Fenced);
        };
        self.upper = new_upper;
        self.record = record;
        self.metadata = metadata;
        self.writes += 1;
        if self.writes.is_multiple_of(COMPACT_METADATA_EVERY)
            && let Err(err) = backend.compact(METADATA_SHARD).await
        {
            tracing::warn!(error = %err, "could not compact the metadata shard");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_format_round_trips() {
        let mut metadata = DurableMetadata::default();
        metadata
            .collections
            .insert(GlobalId::User(1), ShardId::new());
        metadata.sink_as_ofs.insert(
            GlobalId::User(2),
            encode_frontier(&Antichain::from_elem(5u64)),
        );
        metadata.finalizing.insert(ShardId::new());
        let decoded = DurableMetadata::decode(CURRENT_FORMAT_VERSION, &metadata.encode()).unwrap();
        assert_eq!(decoded, metadata);
        let as_of: Antichain<u64> = decode_frontier(&decoded.sink_as_ofs[&GlobalId::User(2)]);
        assert_eq!(as_of, Antichain::from_elem(5));
    }

    #[test]
    fn awaiting_drops_round_trip_and_version_2_has_none() {
        let mut metadata = DurableMetadata::default();
        let shard = ShardId::new();
        metadata.collections.insert(GlobalId::User(1), shard);
        metadata.awaiting_drop.insert(
            GlobalId::User(3),
            AwaitingDrop {
                instance: StorageInstanceId(4),
                stopping: true,
                shards: BTreeMap::from([(GlobalId::User(3), ShardId::new())]),
            },
        );
        let decoded = DurableMetadata::decode(3, &metadata.encode()).unwrap();
        assert_eq!(decoded, metadata);
        let v2 = format!(
            r#"{{"collections": {{"u1": "{shard}"}}, "sink_as_ofs": {{}}, "finalizing": []}}"#
        );
        let decoded = DurableMetadata::decode(2, &v2).unwrap();
        assert!(decoded.awaiting_drop.is_empty());
        assert_eq!(decoded.collections[&GlobalId::User(1)], shard);
        let err = DurableMetadata::decode(2, &metadata.encode()).unwrap_err();
        assert!(err.to_string().contains("awaiting_drop"), "{err}");
    }

    #[test]
    fn version_1_keeps_its_collections() {
        let mut metadata = DurableMetadata::default();
        metadata
            .collections
            .insert(GlobalId::System(3), ShardId::new());
        let decoded = DurableMetadata::decode(1, &metadata.encode_v1()).unwrap();
        assert_eq!(decoded, metadata);
    }

    #[test]
    fn bad_bodies_are_clear_errors() {
        let message = |version: i64, body: &str| {
            DurableMetadata::decode(version, body)
                .unwrap_err()
                .to_string()
        };
        let err = message(2, "{");
        assert!(err.contains("version 2 does not parse"), "{err}");
        let err = message(
            2,
            r#"{"collections": {"x1": "s00000000-0000-0000-0000-000000000000"}, "sink_as_ofs": {}, "finalizing": []}"#,
        );
        assert!(err.contains("\"x1\""), "{err}");
        let err = message(1, r#"{"shards": [], "extra": 1}"#);
        assert!(err.contains("extra"), "{err}");
        let err = message(0, "{}");
        assert!(err.contains("unknown format version: 0"), "{err}");
        let err = message(CURRENT_FORMAT_VERSION + 5, "{}");
        assert!(err.contains("newer format"), "{err}");
    }

    #[test]
    fn records_are_one_row_of_three_datums() {
        let record = StoredRecord {
            format_version: 2,
            epoch: 9,
            body: "{}".to_string(),
        };
        assert_eq!(StoredRecord::from_row(&record.to_row()).unwrap(), record);
        let err = StoredRecord::from_row(&Row::pack([Datum::Int64(2)])).unwrap_err();
        assert!(err.to_string().contains("unexpected shape"), "{err}");
    }
}
