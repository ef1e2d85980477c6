//! The tidemark storage controller: the component that owns every durable
//! collection (tables, ingestions, exports), tracks the times each can be
//! read at (since) and has been written up to (upper), holds reads,
//! appends, snapshots, compacts, and directs the storage instances that run
//! ingestions and sinks.
//!
//! [`StorageController`] is the interface; [`Controller`] implements it over
//! any [`PersistBackend`](tidemark_storage_types::PersistBackend).
//!
//! # Frontiers
//!
//! For a collection with write frontier (upper) `U` and since `S`:
//!
//! - every update at a time `t` with *not* `U <= t` is final; an empty `U`
//!   means sealed forever;
//! - a read `as_of` is valid iff `S <= as_of` and *not* `U <= as_of`
//!   ([`snapshot`](StorageController::snapshot) waits in the second case);
//! - `S` is the frontier of the collection's read capabilities: the
//!   controller's implied capability (from the [`ReadPolicy`]), read holds of
//!   dependents and exports, and holds of live subscriptions. An empty `S`
//!   means the collection can never be read again: its shard is finalized
//!   and its state forgotten.
//!
//! ```
//! use timely::progress::Antichain;
//! use tidemark_storage_types::ReadPolicy;
//! // A read policy turns the write frontier into the controller's own hold.
//! let policy = ReadPolicy::lag_writes_by(10u64, 5);
//! assert_eq!(policy.frontier(Antichain::from_elem(27).borrow()), Antichain::from_elem(15));
//! ```

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;
use tidemark_storage_types::{
    CollectionDescription, Diff, ExportDescription, GlobalId, ReadPolicy, Row, StorageError,
    StorageInstanceId, StorageParameters, StorageTimestamp, Update,
};
use timely::progress::{Antichain, ChangeBatch};
use tokio::sync::oneshot;

mod controller;
mod durable;
mod instance;
mod internal;
mod metadata_view;
pub mod protocol;
mod read_hold;
mod reconnect;
mod retry;
pub mod state;
mod subscribe;
pub mod tcp;
pub mod transport;
pub mod wire;
mod worker;

pub use controller::{Controller, ControllerConfig, GroupCommitConfig};
pub use durable::{CURRENT_FORMAT_VERSION, METADATA_SHARD};
pub use metadata_view::{MetadataView, read_metadata};
pub use protocol::{
    ClusterReplicaLocation, ExportCommand, IngestionCommand, StatisticsUpdate, StorageCommand,
    StorageResponse, TimelyConfig,
};
pub use read_hold::ReadHold;
pub use reconnect::ReconnectPolicy;
pub use retry::RETRIES_METRIC;
pub use state::{CollectionMetadata, CollectionState, CreateExportToken, ExportState};
pub use subscribe::{Subscription, SubscriptionEvent};
pub use transport::{
    AcceptSessions, InProcessTransport, ReplicaConnection, ReplicaSession, ReplicaTransport,
};

/// One command of [`StorageController::append`]: the table, its updates,
/// and its new upper.
pub type AppendCommand<T> = (GlobalId, Vec<Update<T>>, T);

/// The storage controller interface.
///
/// The methods keep the shape of the reference interface this crate
/// implements; the behaviour is specified per method below. Methods taking
/// `&mut self` change only in-memory state and queue backend work, unless
/// they are `async`.
///
/// # Panics
///
/// A few methods panic on programming errors, as documented per method
/// (an unknown instance, an unknown id given to a frontier method, a read
/// hold count going negative). Bad *data* never panics: it is an `Err`.
#[async_trait]
pub trait StorageController: Debug + Send {
    /// The time of the collections' updates and frontiers.
    type Timestamp: StorageTimestamp;

    /// Marks the end of the initial commands. Forwards
    /// [`StorageCommand::InitializationComplete`] to every instance (and to
    /// instances created later). Idempotent.
    fn initialization_complete(&mut self);

    /// Merges `config_params` into the current [`StorageParameters`] (fields
    /// it sets win), applies what the controller uses (physical compaction),
    /// and forwards the merged configuration to every instance. Cannot fail.
    fn update_configuration(&mut self, config_params: StorageParameters);

    /// The state of collection `id`.
    ///
    /// # Errors
    ///
    /// [`StorageError::IdentifierMissing`] if there is no such collection.
    fn collection(&self, id: GlobalId) -> Result<&CollectionState<Self::Timestamp>, StorageError>;

    /// Creates storage instance `id` with no replica. It will be sent
    /// `InitializationComplete` (if initialization is complete) and the
    /// current configuration when a replica connects.
    ///
    /// # Panics
    ///
    /// If an instance with this id exists.
    fn create_instance(&mut self, id: StorageInstanceId);

    /// Drops storage instance `id`. A replica still connected is leaked
    /// (its connection is closed, the replica is not told to stop).
    ///
    /// # Panics
    ///
    /// If there is no instance with this id.
    fn drop_instance(&mut self, id: StorageInstanceId);

    /// Connects instance `id` to the replica at `location`, severing any
    /// previous replica (responses from it are ignored from now on). The
    /// instance bumps its epoch and replays its compacted command history:
    /// `CreateTimely` (one per process), the configuration, every live
    /// source, every live sink, every compaction frontier, and
    /// `InitializationComplete` if initialization is complete.
    ///
    /// When a process's connection is later lost (its response channel
    /// closes), the controller connects the whole replica again the same
    /// way, after a backoff ([`ReconnectPolicy`]), as
    /// [`process`](Self::process) runs.
    ///
    /// # Panics
    ///
    /// If there is no instance with this id.
    fn connect_replica(&mut self, id: StorageInstanceId, location: ClusterReplicaLocation);

    /// The mutable state of collection `id`.
    ///
    /// Changing frontiers or capabilities through this reference bypasses
    /// the controller's bookkeeping; prefer the frontier methods.
    ///
    /// # Errors
    ///
    /// [`StorageError::IdentifierMissing`] if there is no such collection.
    fn collection_mut(
        &mut self,
        id: GlobalId,
    ) -> Result<&mut CollectionState<Self::Timestamp>, StorageError>;

    /// Every collection with its state, in id order.
    fn collections(
        &self,
    ) -> Box<dyn Iterator<Item = (&GlobalId, &CollectionState<Self::Timestamp>)> + '_>;

    /// Brings durable controller metadata written by an older version of
    /// this crate up to the current format. Must be given every collection
    /// the caller will create. A no-op when the metadata is current; safe to
    /// re-run after a crash (the upgrade is one atomic write).
    ///
    /// # Errors
    ///
    /// [`StorageError::Fenced`] if a newer controller owns the metadata;
    /// [`StorageError::Backend`] if the backend fails.
    async fn migrate_collections(
        &mut self,
        collections: Vec<(GlobalId, CollectionDescription<Self::Timestamp>)>,
    ) -> Result<(), StorageError>;

    /// Installs state for the described collections.
    ///
    /// - Exact duplicates in the batch collapse; re-creating an existing
    ///   collection with an identical description is a no-op.
    /// - A new id gets a fresh data shard, recorded durably before use; an
    ///   id recorded by an earlier controller on the same backend reattaches
    ///   to its shard and data.
    /// - Initial state: since = the shard's since (raised to
    ///   `description.since` when given), write frontier = the shard's upper,
    ///   one read capability at the since, policy `NoPolicy`.
    /// - An ingestion's remap collection becomes a storage dependency held
    ///   at the ingestion's since; the ingestion is sent as `CreateSources`
    ///   to its instance with a resume upper = the meet of its outputs'
    ///   uppers.
    ///
    /// The whole batch is validated before anything changes: on a
    /// validation `Err` the controller and its durable metadata are as
    /// before. (A backend failure after validation may leave a durable
    /// shard mapping behind, which a retry reattaches to and
    /// [`reconcile_state`](Self::reconcile_state) reclaims otherwise.)
    ///
    /// # Errors
    ///
    /// - [`StorageError::SourceIdReused`]: an id appears with two different
    ///   descriptions, or exists with a different description.
    /// - [`StorageError::IdentifierMissing`]: a dependency (remap, source
    ///   export or status collection) exists neither in the controller nor
    ///   in the batch.
    /// - [`StorageError::IngestionInstanceMissing`]: an ingestion names an
    ///   unknown instance.
    /// - [`StorageError::Fenced`], [`StorageError::Backend`].
    async fn create_collections(
        &mut self,
        collections: Vec<(GlobalId, CollectionDescription<Self::Timestamp>)>,
    ) -> Result<(), StorageError>;

    /// The state of export `id`.
    ///
    /// # Errors
    ///
    /// [`StorageError::IdentifierMissing`] if there is no such export.
    fn export(&self, id: GlobalId) -> Result<&ExportState<Self::Timestamp>, StorageError>;

    /// The mutable state of export `id`.
    ///
    /// # Errors
    ///
    /// [`StorageError::IdentifierMissing`] if there is no such export.
    fn export_mut(
        &mut self,
        id: GlobalId,
    ) -> Result<&mut ExportState<Self::Timestamp>, StorageError>;

    /// Creates exports from prepared tokens. Each export takes over its
    /// token's read hold on `from` (at `acquired_since`) and gets the read
    /// policy `step_back()`. Its initial as_of is recorded durably (an id
    /// recorded earlier keeps its first as_of), then `CreateSinks` goes to
    /// its instance. Re-creating an existing export with an identical
    /// description is a no-op that releases the token's hold.
    ///
    /// Validated as a whole first; on any `Err` every token's hold is
    /// released and no export is created.
    ///
    /// # Errors
    ///
    /// - [`StorageError::SinkIdReused`]: an id twice in the batch, or an
    ///   existing export with a different description.
    /// - [`StorageError::ExportTokenMismatch`]: `description.from` is not
    ///   the token's `from_id`.
    /// - [`StorageError::ReadBeforeSince`]: `description.as_of` is before
    ///   the token's `acquired_since`.
    /// - [`StorageError::ExportInstanceMissing`]: an unknown instance.
    /// - [`StorageError::Fenced`], [`StorageError::Backend`].
    async fn create_exports(
        &mut self,
        exports: Vec<(
            CreateExportToken<Self::Timestamp>,
            ExportDescription<Self::Timestamp>,
        )>,
    ) -> Result<(), StorageError>;

    /// Takes a read hold (+1) on `from_id` at its implied capability for a
    /// future export `id`.
    ///
    /// # Errors
    ///
    /// - [`StorageError::SinkIdReused`]: `id` is already an export.
    /// - [`StorageError::IdentifierMissing`]: `from_id` is not a collection.
    /// - [`StorageError::CollectionDropped`]: `from_id` is dropped (its
    ///   implied capability is empty).
    fn prepare_export(
        &mut self,
        id: GlobalId,
        from_id: GlobalId,
    ) -> Result<CreateExportToken<Self::Timestamp>, StorageError>;

    /// Releases the token's read hold (-1).
    ///
    /// # Panics
    ///
    /// If the token's collection is unknown or the hold count would go
    /// negative (a token from another controller).
    fn cancel_prepare_export(&mut self, token: CreateExportToken<Self::Timestamp>);

    /// As [`drop_sources_unvalidated`](Self::drop_sources_unvalidated),
    /// after checking every id.
    ///
    /// # Errors
    ///
    /// [`StorageError::IdentifierMissing`] for the first unknown id; nothing
    /// is dropped.
    fn drop_sources(&mut self, identifiers: Vec<GlobalId>) -> Result<(), StorageError>;

    /// As [`drop_sinks_unvalidated`](Self::drop_sinks_unvalidated), after
    /// checking every id.
    ///
    /// # Errors
    ///
    /// [`StorageError::IdentifierMissing`] for the first unknown id; nothing
    /// is dropped.
    fn drop_sinks(&mut self, identifiers: Vec<GlobalId>) -> Result<(), StorageError>;

    /// Drops exports: releases each export's hold on the collection it
    /// reads, sets its write frontier to empty, tells its instance
    /// (`AllowCompaction(id, [])`) and forgets its durable as_of. The state
    /// stays visible until the replica reports the id in `DroppedIds`.
    /// Unknown ids are skipped.
    fn drop_sinks_unvalidated(&mut self, identifiers: Vec<GlobalId>);

    /// Drops collections: the read policy becomes `ValidFrom([])`, so the
    /// implied capability becomes empty. Once no other hold remains the
    /// since becomes empty: the instance running it is sent
    /// `AllowCompaction(id, [])`, the shard is finalized (storage
    /// reclaimed) and the state and durable metadata are removed. Unknown
    /// ids are skipped.
    fn drop_sources_unvalidated(&mut self, identifiers: Vec<GlobalId>);

    /// Appends `updates` to each table `id` and advances its upper to
    /// `upper`.
    ///
    /// Checked at once, nothing written on error. Otherwise the returned
    /// receiver resolves when every command is durable. The whole call is
    /// one atomic `compare_and_append_all` from each collection's current
    /// upper on the controller's write task: all of its commands land or
    /// none does, and no reader (a snapshot, a subscription, a dataflow
    /// source, another controller) ever sees some of them without the
    /// others. Calls touching one collection apply in submission order.
    /// Indeterminate backend failures are retried with the same idempotency
    /// token. On success the new uppers reach the write frontiers at a later
    /// [`process`](Self::process).
    ///
    /// The receiver resolves with [`StorageError::InvalidUppers`] naming
    /// every command whose collection's upper was not where it had to be
    /// (an update before the current upper, an upper behind it, or a
    /// concurrent writer): nothing of the call was written. It
    /// resolves with [`StorageError::Fenced`] or [`StorageError::Backend`]
    /// if the write failed.
    ///
    /// Empty input resolves at once with `Ok`.
    ///
    /// [`Controller::append_durable`](crate::Controller::append_durable)
    /// gives the same with one `Result`.
    ///
    /// # Errors
    ///
    /// - [`StorageError::IdentifierMissing`]: an unknown id.
    /// - [`StorageError::NotControllerWritten`]: a collection the
    ///   controller does not write (an ingestion).
    /// - [`StorageError::DuplicateAppend`]: an id twice in one call.
    /// - [`StorageError::InvalidRow`]: a row that does not match the
    ///   collection's relation.
    /// - [`StorageError::UpdateBeyondUpper`]: an update at a time not
    ///   before `upper`.
    /// - [`StorageError::Fenced`]: a newer controller owns the storage.
    fn append(
        &mut self,
        commands: Vec<AppendCommand<Self::Timestamp>>,
    ) -> Result<oneshot::Receiver<Result<(), StorageError>>, StorageError>;

    /// The contents of collection `id` at `as_of`: `(row, diff)` pairs with
    /// non-zero diffs, sorted by row. If `as_of` is not before the upper,
    /// waits until a write moves the upper past it.
    ///
    /// # Errors
    ///
    /// - [`StorageError::IdentifierMissing`]: an unknown id.
    /// - [`StorageError::ReadBeforeSince`]: `as_of` is before the since.
    /// - [`StorageError::CollectionDropped`]: the shard was finalized while
    ///   the read waited.
    /// - [`StorageError::Fenced`], [`StorageError::Backend`].
    async fn snapshot(
        &self,
        id: GlobalId,
        as_of: Self::Timestamp,
    ) -> Result<Vec<(Row, Diff)>, StorageError>;

    /// Assigns read policies, in order (a later entry for the same id
    /// wins). Each collection's (or export's) implied capability becomes
    /// `policy.frontier(write_frontier)` if that is not behind the current
    /// one; the policy is stored either way. Resulting since changes flow
    /// through [`update_read_capabilities`](Self::update_read_capabilities).
    ///
    /// # Panics
    ///
    /// If an id is neither a collection nor an export.
    fn set_read_policy(&mut self, policies: Vec<(GlobalId, ReadPolicy<Self::Timestamp>)>);

    /// Raises write frontiers (never lowers them) of collections and
    /// exports, recomputes their implied capabilities from their read
    /// policies and feeds the changes to
    /// [`update_read_capabilities`](Self::update_read_capabilities).
    ///
    /// # Panics
    ///
    /// If an id is neither a collection nor an export.
    fn update_write_frontiers(&mut self, updates: &[(GlobalId, Antichain<Self::Timestamp>)]);

    /// Applies read capability changes. Each change batch is applied to the
    /// collection's `read_capabilities` (an export's changes to the
    /// collection it reads); a since change propagates to the collection's
    /// storage dependencies, downgrades the shard's since on the backend
    /// (asynchronously, followed by physical compaction when enabled and the
    /// shard holds at least `compaction_min_updates` updates), and queues
    /// `AllowCompaction` for the instance running the collection. A since
    /// that becomes empty finalizes the shard and removes the collection.
    /// The map is drained.
    ///
    /// # Panics
    ///
    /// If an id is unknown, or a hold count would become negative (the
    /// message names the id).
    fn update_read_capabilities(
        &mut self,
        updates: &mut BTreeMap<GlobalId, ChangeBatch<Self::Timestamp>>,
    );

    /// Waits until a response is available: from an instance, from the
    /// controller's own write task, or a subscription's hold change; or
    /// returns at once when compaction commands are queued. Cancellation
    /// safe. May wait forever.
    async fn ready(&mut self);

    /// Handles the one response [`ready`](Self::ready) stored: new uppers
    /// advance write frontiers, `DroppedIds` forgets ids, statistics and
    /// statuses are stored, hold changes are applied. Then sends queued
    /// `AllowCompaction` commands. Returns quickly.
    ///
    /// # Errors
    ///
    /// A failure of background work (a since downgrade, a compaction, a
    /// finalization): [`StorageError::Fenced`] or
    /// [`StorageError::Backend`].
    async fn process(&mut self) -> Result<(), StorageError>;

    /// After a restart, once the caller has re-created every collection it
    /// still wants: finalizes every shard recorded in durable metadata that
    /// no live collection claims, forgets durable sink records of sinks that
    /// do not exist, and finishes interrupted finalizations.
    ///
    /// # Errors
    ///
    /// The seed's shape returns nothing, so a failure
    /// ([`StorageError::Fenced`], [`StorageError::Backend`]) is not swallowed
    /// but reported by the next [`process`](Self::process); what was not
    /// reclaimed stays recorded and a later call reclaims it.
    /// [`Controller::try_reconcile_state`](crate::Controller::try_reconcile_state)
    /// returns the failure directly.
    async fn reconcile_state(&mut self);
}
