//! What the controller knows about each collection and export.

use std::fmt;

use tidemark_storage_types::{
    CollectionDescription, ExportDescription, GlobalId, ReadPolicy, ShardId, display_frontier,
};
use timely::progress::frontier::MutableAntichain;
use timely::progress::{Antichain, Timestamp};

/// Where a collection's data lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectionMetadata {
    /// The backend shard holding the collection's updates.
    pub data_shard: ShardId,
}

/// The controller's state of one collection.
///
/// # Frontiers
///
/// - `write_frontier` is the upper the controller last learned of (from its
///   own appends or from the collection's writer); it only advances.
/// - The collection's **since** is `read_capabilities.frontier()`: the
///   frontier of every read hold, including the controller's own
///   `implied_capability`. Reads at `as_of` are valid iff `since <= as_of`.
/// - `implied_capability` is `read_policy.frontier(write_frontier)`, applied
///   only when it does not move backward.
pub struct CollectionState<T: Timestamp> {
    /// How the collection was described when created.
    pub description: CollectionDescription<T>,
    /// Every read hold on the collection, counted per time.
    pub read_capabilities: MutableAntichain<T>,
    /// The controller's own hold, derived from the read policy.
    pub implied_capability: Antichain<T>,
    /// How `implied_capability` follows `write_frontier`.
    pub read_policy: ReadPolicy<T>,
    /// The upper the controller last learned of.
    pub write_frontier: Antichain<T>,
    /// Collections this one holds reads on (at its own since).
    pub storage_dependencies: Vec<GlobalId>,
    /// Where its data lives.
    pub collection_metadata: CollectionMetadata,
}

impl<T: Timestamp> CollectionState<T> {
    /// The collection's since: the frontier of its read capabilities.
    #[must_use]
    pub fn since(&self) -> Antichain<T> {
        self.read_capabilities.frontier().to_owned()
    }
}

impl<T: Timestamp + fmt::Display> fmt::Debug for CollectionState<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectionState")
            .field("description", &self.description)
            .field(
                "since",
                &display_frontier(&self.read_capabilities.frontier().to_owned()).to_string(),
            )
            .field(
                "implied_capability",
                &display_frontier(&self.implied_capability).to_string(),
            )
            .field("read_policy", &self.read_policy)
            .field(
                "write_frontier",
                &display_frontier(&self.write_frontier).to_string(),
            )
            .field("storage_dependencies", &self.storage_dependencies)
            .field("collection_metadata", &self.collection_metadata)
            .finish()
    }
}

/// The controller's state of one export (sink).
pub struct ExportState<T: Timestamp> {
    /// How the export was described when created.
    pub description: ExportDescription<T>,
    /// The export's read hold on `description.from`.
    pub read_capability: Antichain<T>,
    /// How `read_capability` follows `write_frontier` (`step_back()` by
    /// default).
    pub read_policy: ReadPolicy<T>,
    /// How far the sink has written; empty once dropped.
    pub write_frontier: Antichain<T>,
}

impl<T: Timestamp + fmt::Display> fmt::Debug for ExportState<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportState")
            .field("description", &self.description)
            .field(
                "read_capability",
                &display_frontier(&self.read_capability).to_string(),
            )
            .field("read_policy", &self.read_policy)
            .field(
                "write_frontier",
                &display_frontier(&self.write_frontier).to_string(),
            )
            .finish()
    }
}

/// A read hold on `from_id`, taken by
/// [`prepare_export`](crate::StorageController::prepare_export) and handed
/// to [`create_exports`](crate::StorageController::create_exports) (which
/// takes it over) or
/// [`cancel_prepare_export`](crate::StorageController::cancel_prepare_export)
/// (which releases it).
///
/// Only `prepare_export` makes one. Dropping a token without passing it to
/// either method leaks its hold: the collection's since stays at
/// `acquired_since`.
#[derive(Debug)]
#[must_use = "a dropped token leaks its read hold: create the export or cancel the token"]
pub struct CreateExportToken<T> {
    pub(crate) id: GlobalId,
    pub(crate) from_id: GlobalId,
    pub(crate) acquired_since: Antichain<T>,
}

impl<T> CreateExportToken<T> {
    /// The export the token was prepared for.
    #[must_use]
    pub fn id(&self) -> GlobalId {
        self.id
    }

    /// The collection the export will read.
    #[must_use]
    pub fn from_id(&self) -> GlobalId {
        self.from_id
    }

    /// Where the hold on `from_id` was taken.
    #[must_use]
    pub fn acquired_since(&self) -> &Antichain<T> {
        &self.acquired_since
    }
}
