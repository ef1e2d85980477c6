//! The controller's durable metadata as a second reader sees it: the
//! record format documented in `tidemark-storage-controller`'s `durable`
//! module, read and written here independently of the controller's own
//! code, so the tests pin the stored format (an older controller's record
//! must stay readable).
//!
//! The metadata shard holds one live row `(format_version: int64, epoch:
//! int64, body: string)` at the time just before its upper; the body is
//! JSON: version 1 `{"shards": [["u1", "s<uuid>"], ...]}`, version 2
//! `{"collections": {..}, "sink_as_ofs": {..}, "finalizing": [..]}`.

use std::collections::{BTreeMap, BTreeSet};
use tidemark_storage_types::WriteFence;

use serde_json::{Value, json};
use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_controller::METADATA_SHARD;
use tidemark_storage_types::{
    Datum, GlobalId, IdempotencyToken, PersistBackend, Row, ShardId, Update, frontier_time,
};
use timely::progress::Antichain;

/// One stored record of the metadata shard.
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
    fn row(&self) -> Row {
        Row::pack([
            Datum::Int64(self.format_version),
            Datum::Int64(self.epoch),
            Datum::String(&self.body),
        ])
    }
}

/// What a record says: the shard of each collection, each sink's initial
/// as_of (`Codec64` values) and the shards awaiting finalization.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableMetadata {
    /// The data shard of each collection.
    pub collections: BTreeMap<GlobalId, ShardId>,
    /// The initial as_of of each sink.
    pub sink_as_ofs: BTreeMap<GlobalId, Vec<i64>>,
    /// Shards whose collection was dropped and that are not yet finalized.
    pub finalizing: BTreeSet<ShardId>,
}

fn parsed<T: std::str::FromStr>(value: &Value) -> T
where
    T::Err: std::fmt::Debug,
{
    value
        .as_str()
        .expect("ids are strings")
        .parse()
        .expect("a valid id")
}

impl DurableMetadata {
    /// Reads a record's body in its format (1, 2 or 3; the ingestions
    /// awaiting their drop that format 3 adds are read by
    /// [`awaiting_drop`]).
    ///
    /// # Panics
    ///
    /// If the body is not of that format.
    #[must_use]
    pub fn decode(record: &StoredRecord) -> Self {
        let body: Value = serde_json::from_str(&record.body).expect("the body is json");
        let mut metadata = DurableMetadata::default();
        match record.format_version {
            1 => {
                for pair in body["shards"].as_array().expect("a list of shards") {
                    metadata
                        .collections
                        .insert(parsed(&pair[0]), parsed(&pair[1]));
                }
            }
            2 | 3 => {
                let collections = body["collections"].as_object().expect("collections");
                for (id, shard) in collections {
                    metadata
                        .collections
                        .insert(id.parse().expect("a global id"), parsed(shard));
                }
                let sinks = body["sink_as_ofs"].as_object().expect("sink as_ofs");
                for (id, as_of) in sinks {
                    let times = as_of.as_array().expect("a frontier");
                    let times = times.iter().map(|time| time.as_i64().expect("a time"));
                    metadata
                        .sink_as_ofs
                        .insert(id.parse().expect("a global id"), times.collect());
                }
                let finalizing = body["finalizing"].as_array().expect("finalizing");
                metadata.finalizing = finalizing.iter().map(parsed).collect();
            }
            other => panic!("no test reader for metadata format {other}"),
        }
        metadata
    }

    /// The body in format 2.
    #[must_use]
    pub fn encode(&self) -> String {
        let collections: serde_json::Map<String, Value> = self
            .collections
            .iter()
            .map(|(id, shard)| (id.to_string(), json!(shard.to_string())))
            .collect();
        let sinks: serde_json::Map<String, Value> = self
            .sink_as_ofs
            .iter()
            .map(|(id, as_of)| (id.to_string(), json!(as_of)))
            .collect();
        let finalizing: Vec<String> = self.finalizing.iter().map(ToString::to_string).collect();
        json!({"collections": collections, "sink_as_ofs": sinks, "finalizing": finalizing})
            .to_string()
    }

    /// The body in format 1 (collections only), as an older controller
    /// wrote it.
    #[must_use]
    pub fn encode_v1(&self) -> String {
        let shards: Vec<[String; 2]> = self
            .collections
            .iter()
            .map(|(id, shard)| [id.to_string(), shard.to_string()])
            .collect();
        json!({ "shards": shards }).to_string()
    }
}

/// The metadata shard's upper and its live record, if any.
///
/// # Panics
///
/// If the backend fails or the shard holds anything but one live row.
pub async fn read_record<B: PersistBackend<u64>>(
    backend: &B,
) -> (Antichain<u64>, Option<StoredRecord>) {
    let frontiers = backend.open(METADATA_SHARD).await.expect("metadata opens");
    let upper = frontier_time(&frontiers.upper).expect("the metadata shard is not sealed");
    if upper == 0 {
        return (frontiers.upper, None);
    }
    let rows = backend
        .snapshot(METADATA_SHARD, &(upper - 1))
        .await
        .expect("metadata reads");
    let record = match rows.as_slice() {
        [] => None,
        [(row, 1)] => match row.unpack().as_slice() {
            [
                Datum::Int64(format_version),
                Datum::Int64(epoch),
                Datum::String(body),
            ] => Some(StoredRecord {
                format_version: *format_version,
                epoch: *epoch,
                body: (*body).to_string(),
            }),
            other => panic!("unexpected metadata row {other:?}"),
        },
        other => panic!("the metadata shard holds {} rows", other.len()),
    };
    (frontiers.upper, record)
}

/// Replaces the metadata record as some other writer would: retracts the
/// live row and adds `record` at the shard's upper.
///
/// # Panics
///
/// If the backend fails or another writer moved the upper meanwhile.
pub async fn overwrite_record<F: BackendFactory>(factory: &F, record: StoredRecord) {
    let backend = factory.open_handle().await;
    let (upper, previous) = read_record(&backend).await;
    let time = frontier_time(&upper).expect("the metadata shard is not sealed");
    let mut updates = vec![Update::new(record.row(), time, 1)];
    if let Some(previous) = previous {
        updates.push(Update::new(previous.row(), time, -1));
    }
    backend
        .compare_and_append(
            METADATA_SHARD,
            updates,
            upper,
            Antichain::from_elem(time + 1),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .expect("the record is written")
        .expect("no concurrent writer");
}

/// The ingestions of a format 3 record awaiting their `DroppedIds`, each
/// with the ids of its outputs whose shards wait (none for older formats).
///
/// # Panics
///
/// If the body is not json.
#[must_use]
pub fn awaiting_drop(record: &StoredRecord) -> BTreeMap<GlobalId, BTreeSet<GlobalId>> {
    let body: Value = serde_json::from_str(&record.body).expect("the body is json");
    let mut awaiting = BTreeMap::new();
    if let Some(entries) = body.get("awaiting_drop").and_then(Value::as_object) {
        for (ingestion, entry) in entries {
            let outputs = entry["shards"]
                .as_object()
                .expect("awaiting shards")
                .keys()
                .map(|id| id.parse().expect("a global id"))
                .collect();
            awaiting.insert(ingestion.parse().expect("a global id"), outputs);
        }
    }
    awaiting
}
