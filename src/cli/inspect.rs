//! `tidemark inspect URL`: what a store holds, read without disturbing a
//! running controller.
//!
//! Lists the collections the controller metadata records (id, shard, kind,
//! since, upper), every shard with its frontiers and usage, and the shards
//! no collection claims (leaked by a crash between creating a shard and
//! recording it, or created by another program).

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use super::{ToolError, frontier_elements, frontier_text};
use crate::controller::read_metadata;
use crate::types::{PersistBackend, ShardId};

/// What one collection (or sink) of the controller metadata is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CollectionEntry {
    /// The collection's id (`u1`, ...).
    pub id: String,
    /// `collection` (a table, ingestion or other collection with a data
    /// shard) or `sink` (an export: it owns no shard).
    pub kind: &'static str,
    /// Its data shard; `None` for a sink.
    pub shard: Option<String>,
    /// The shard's since; `None` for a sink or a shard that is gone.
    pub since: Option<Vec<u64>>,
    /// The shard's upper; `None` for a sink or a shard that is gone.
    pub upper: Option<Vec<u64>>,
}

/// One shard of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardEntry {
    /// The shard id.
    pub shard: String,
    /// Who claims it: a collection id, `metadata` (the controller's own
    /// shard), `finalizing` (a dropped collection's shard awaiting
    /// finalization), or `None` when nothing does.
    pub claimed_by: Option<String>,
    /// Its since.
    pub since: Vec<u64>,
    /// Its upper.
    pub upper: Vec<u64>,
    /// Stored updates ([`PersistBackend::usage`]).
    pub updates: u64,
    /// Stored bytes, as the backend accounts them.
    pub bytes: u64,
    /// Stored batch parts, where the backend has them (S3); `None`
    /// elsewhere.
    pub parts: Option<u64>,
}

/// What `inspect` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InspectReport {
    /// The epoch of the controller that last wrote the metadata, if any.
    pub controller_epoch: Option<i64>,
    /// The metadata's format version, if there is a record.
    pub metadata_format_version: Option<i64>,
    /// Every collection and sink the metadata records, in id order.
    pub collections: Vec<CollectionEntry>,
    /// Every listed shard, in shard order.
    pub shards: Vec<ShardEntry>,
    /// The shards that no collection claims (a subset of `shards`).
    pub unclaimed_shards: Vec<String>,
}

/// Inspects `backend`: reads the controller metadata and every shard's
/// frontiers and usage. Writes nothing.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tidemark::types::{PersistBackend, ShardId};
/// let backend = tidemark::open("memory://inspect-doc").await.unwrap();
/// let shard = ShardId::new();
/// backend.open(shard).await.unwrap();
/// let report = tidemark::cli::inspect::inspect_backend(&*backend).await.unwrap();
/// // No controller ever ran here: the shard is claimed by no collection.
/// assert!(report.collections.is_empty());
/// assert_eq!(report.unclaimed_shards, vec![shard.to_string()]);
/// # });
/// ```
///
/// # Errors
///
/// A backend failure, or metadata that does not decode.
pub async fn inspect_backend(
    backend: &dyn PersistBackend<u64>,
) -> Result<InspectReport, ToolError> {
    let view = read_metadata::<u64, _>(backend).await?;
    let mut claims: BTreeMap<ShardId, String> = BTreeMap::new();
    claims.insert(view.metadata_shard, "metadata".to_string());
    for shard in &view.finalizing {
        claims.insert(*shard, "finalizing".to_string());
    }
    for (id, shard) in &view.collections {
        claims.insert(*shard, id.to_string());
    }
    let mut shards = Vec::new();
    let mut frontiers_of = BTreeMap::new();
    for shard in backend.list_shards().await? {
        let frontiers = backend.frontiers(shard).await?;
        let usage = backend.usage(shard).await?;
        shards.push(ShardEntry {
            shard: shard.to_string(),
            claimed_by: claims.get(&shard).cloned(),
            since: frontier_elements(&frontiers.since),
            upper: frontier_elements(&frontiers.upper),
            updates: usage.updates,
            bytes: usage.bytes,
            parts: None,
        });
        frontiers_of.insert(shard, frontiers);
    }
    let mut collections: Vec<CollectionEntry> = view
        .collections
        .iter()
        .map(|(id, shard)| {
            let frontiers = frontiers_of.get(shard);
            CollectionEntry {
                id: id.to_string(),
                kind: "collection",
                shard: Some(shard.to_string()),
                since: frontiers.map(|f| frontier_elements(&f.since)),
                upper: frontiers.map(|f| frontier_elements(&f.upper)),
            }
        })
        .collect();
    collections.extend(view.sinks.iter().map(|id| CollectionEntry {
        id: id.to_string(),
        kind: "sink",
        shard: None,
        since: None,
        upper: None,
    }));
    collections.sort_by(|a, b| a.id.cmp(&b.id));
    let unclaimed_shards = shards
        .iter()
        .filter(|entry| entry.claimed_by.is_none())
        .map(|entry| entry.shard.clone())
        .collect();
    Ok(InspectReport {
        controller_epoch: view.epoch,
        metadata_format_version: view.format_version,
        collections,
        shards,
        unclaimed_shards,
    })
}

/// Opens `url` and inspects it; on S3 also counts each shard's parts.
///
/// # Errors
///
/// As [`open`](crate::open) and [`inspect_backend`].
pub async fn run(url: &str) -> Result<InspectReport, ToolError> {
    let backend = crate::open(url).await?;
    #[allow(unused_mut)]
    let mut report = inspect_backend(&*backend).await?;
    #[cfg(feature = "s3")]
    if url.starts_with("s3://") {
        let s3 = crate::s3::S3Backend::from_url(url).await?;
        for entry in &mut report.shards {
            if let Ok(shard) = entry.shard.parse::<ShardId>() {
                entry.parts = Some(s3.stored_parts(shard).await?);
            }
        }
    }
    Ok(report)
}

/// Writes the report as human-readable tables.
///
/// # Errors
///
/// Writing fails.
pub fn write_table(report: &InspectReport, out: &mut dyn Write) -> std::io::Result<()> {
    let optional = |value: &Option<Vec<u64>>| match value {
        Some(elements) => frontier_text(&elements.iter().copied().collect()),
        None => "-".to_string(),
    };
    match report.controller_epoch {
        Some(epoch) => writeln!(
            out,
            "controller metadata: epoch {epoch}, format version {}",
            report.metadata_format_version.unwrap_or_default()
        )?,
        None => writeln!(
            out,
            "controller metadata: none (no controller has run here)"
        )?,
    }
    writeln!(out, "\ncollections ({}):", report.collections.len())?;
    writeln!(
        out,
        "  {:<8} {:<10} {:<38} {:<12} {:<12}",
        "id", "kind", "shard", "since", "upper"
    )?;
    for entry in &report.collections {
        writeln!(
            out,
            "  {:<8} {:<10} {:<38} {:<12} {:<12}",
            entry.id,
            entry.kind,
            entry.shard.as_deref().unwrap_or("-"),
            optional(&entry.since),
            optional(&entry.upper),
        )?;
    }
    writeln!(out, "\nshards ({}):", report.shards.len())?;
    writeln!(
        out,
        "  {:<38} {:<12} {:<12} {:<12} {:>10} {:>12} {:>6}",
        "shard", "claimed by", "since", "upper", "updates", "bytes", "parts"
    )?;
    for entry in &report.shards {
        writeln!(
            out,
            "  {:<38} {:<12} {:<12} {:<12} {:>10} {:>12} {:>6}",
            entry.shard,
            entry.claimed_by.as_deref().unwrap_or("(none)"),
            frontier_text(&entry.since.iter().copied().collect()),
            frontier_text(&entry.upper.iter().copied().collect()),
            entry.updates,
            entry.bytes,
            entry
                .parts
                .map_or("-".to_string(), |parts| parts.to_string()),
        )?;
    }
    writeln!(
        out,
        "\nunclaimed shards ({}):",
        report.unclaimed_shards.len()
    )?;
    for shard in &report.unclaimed_shards {
        writeln!(out, "  {shard}")?;
    }
    Ok(())
}
