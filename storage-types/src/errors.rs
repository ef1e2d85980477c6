//! Errors: what the controller reports ([`StorageError`]), what a backend
//! reports ([`BackendError`]), and the detail types behind them.
//!
//! Messages are lowercase, say what was wrong, and put values at the end.

use thiserror::Error;

use crate::ids::{GlobalId, ShardId, StorageInstanceId};
use crate::row::ScalarType;

/// A string that is not a valid id.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid {kind}: expected {expected}, got {input:?}")]
pub struct IdParseError {
    /// Which kind of id was being parsed.
    pub kind: &'static str,
    /// The text that did not parse.
    pub input: String,
    /// The form that was expected.
    pub expected: &'static str,
}

/// Bytes that are not a valid [`Row`](crate::Row) encoding.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid row encoding: {problem} at byte {offset}")]
pub struct RowDecodeError {
    /// Where in the bytes the problem was found.
    pub offset: usize,
    /// What was wrong.
    pub problem: &'static str,
}

/// A row that does not match a [`RelationDesc`](crate::RelationDesc).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RowValidationError {
    /// The row has a different number of datums than the relation has columns.
    #[error("row has {found} columns but the relation has {expected}")]
    Arity {
        /// The relation's number of columns.
        expected: usize,
        /// The row's number of datums.
        found: usize,
    },
    /// A null in a column that does not accept nulls.
    #[error("column {column:?} is not nullable but the row has null at position {position}")]
    NullInNonNullable {
        /// The column's name.
        column: String,
        /// The column's position (from 0).
        position: usize,
    },
    /// A datum of the wrong type.
    #[error("column {column:?} expects {expected} but the row has {found} at position {position}")]
    TypeMismatch {
        /// The column's name.
        column: String,
        /// The column's position (from 0).
        position: usize,
        /// The column's type.
        expected: ScalarType,
        /// The datum's type.
        found: ScalarType,
    },
}

/// What a [`PersistBackend`](crate::PersistBackend) operation reports when it
/// fails.
///
/// Every failure says whether the operation **definitely did not happen**
/// ([`Determinate`](BackendError::Determinate)), **may have happened**
/// ([`Indeterminate`](BackendError::Indeterminate): a timeout, a lost
/// response, a connection dropped mid-commit), or was **not a valid call**
/// ([`InvalidUsage`](BackendError::InvalidUsage): nothing happened, and
/// retrying the same call fails the same way).
///
/// Backends default to `Indeterminate`; only failures they know did not
/// apply are `Determinate`. A caller that retries an indeterminate
/// `compare_and_append` must reuse its idempotency token.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The operation definitely did not happen.
    #[error("backend operation failed and did not happen: {0}")]
    Determinate(#[from] DeterminateError),
    /// The operation may or may not have happened.
    #[error("backend operation outcome unknown, it may have happened: {0}")]
    Indeterminate(#[from] IndeterminateError),
    /// The call broke the contract; nothing happened.
    #[error("invalid use of the backend: {0}")]
    InvalidUsage(#[from] InvalidUsage),
}

impl BackendError {
    /// A determinate failure of the given kind.
    pub fn determinate(kind: DeterminateKind, message: impl Into<String>) -> Self {
        BackendError::Determinate(DeterminateError {
            kind,
            message: message.into(),
        })
    }

    /// An indeterminate failure.
    pub fn indeterminate(message: impl Into<String>) -> Self {
        BackendError::Indeterminate(IndeterminateError {
            message: message.into(),
        })
    }

    /// Whether the operation definitely did not happen (determinate or
    /// invalid usage).
    #[must_use]
    pub fn is_determinate(&self) -> bool {
        !matches!(self, BackendError::Indeterminate(_))
    }

    /// The determinate kind, if this is a determinate failure.
    #[must_use]
    pub fn determinate_kind(&self) -> Option<DeterminateKind> {
        match self {
            BackendError::Determinate(err) => Some(err.kind),
            _ => None,
        }
    }
}

/// Why a determinate failure happened; tells the caller what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeterminateKind {
    /// The service could not be reached or refused the connection; retry later.
    Unavailable,
    /// Credentials were rejected; fix the configuration.
    Unauthorized,
    /// The database, schema or bucket does not exist; fix the configuration.
    NotFound,
    /// Lost a race with a concurrent writer inside the service (a
    /// serialization failure); retry.
    Conflict,
    /// Stored data failed its integrity check; the message names the object.
    Corrupted,
    /// The service lacks a feature the backend needs to be safe.
    Unsupported,
    /// The backend's configuration is invalid (an unknown URL parameter, a
    /// malformed setting); fix the configuration.
    InvalidConfig,
    /// Any other failure known not to have applied.
    Other,
}

impl std::fmt::Display for DeterminateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            DeterminateKind::Unavailable => "unavailable",
            DeterminateKind::Unauthorized => "unauthorized",
            DeterminateKind::NotFound => "not found",
            DeterminateKind::Conflict => "conflict",
            DeterminateKind::Corrupted => "corrupted",
            DeterminateKind::Unsupported => "unsupported",
            DeterminateKind::InvalidConfig => "invalid configuration",
            DeterminateKind::Other => "other",
        };
        f.write_str(name)
    }
}

/// A failure that definitely did not apply.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{kind}: {message}")]
pub struct DeterminateError {
    /// What kind of failure.
    pub kind: DeterminateKind,
    /// What happened, with values at the end.
    pub message: String,
}

/// A failure whose effect is unknown.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct IndeterminateError {
    /// What happened, with values at the end.
    pub message: String,
}

/// A call that breaks the [`PersistBackend`](crate::PersistBackend) contract.
/// Frontiers and times are rendered as text so the type does not depend on
/// the timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidUsage {
    /// The shard was never opened on this storage.
    #[error("unknown shard {shard}: open it first")]
    UnknownShard {
        /// The shard.
        shard: ShardId,
    },
    /// An update's time is outside `[expected_upper, new_upper)`.
    #[error(
        "update at time {time} is outside the append bounds: shard={shard} expected_upper={expected_upper} new_upper={new_upper}"
    )]
    UpdateOutsideBounds {
        /// The shard.
        shard: ShardId,
        /// The offending time.
        time: String,
        /// The append's lower bound.
        expected_upper: String,
        /// The append's upper bound.
        new_upper: String,
    },
    /// `new_upper` is behind `expected_upper`.
    #[error(
        "new upper is behind the expected upper: shard={shard} expected_upper={expected_upper} new_upper={new_upper}"
    )]
    UpperRegression {
        /// The shard.
        shard: ShardId,
        /// The append's lower bound.
        expected_upper: String,
        /// The append's upper bound.
        new_upper: String,
    },
    /// A snapshot `as_of` that is not readable (before since, or not before
    /// upper).
    #[error("as_of {as_of} is not readable: shard={shard} since={since} upper={upper}")]
    AsOfNotReadable {
        /// The shard.
        shard: ShardId,
        /// The requested time.
        as_of: String,
        /// The shard's since.
        since: String,
        /// The shard's upper.
        upper: String,
    },
    /// A fetch range that is not `lower <= upper <= shard upper`.
    #[error(
        "fetch range is not within the written data: shard={shard} lower={lower} upper={upper} shard_upper={shard_upper}"
    )]
    FetchRangeInvalid {
        /// The shard.
        shard: ShardId,
        /// The requested lower bound.
        lower: String,
        /// The requested upper bound.
        upper: String,
        /// The shard's upper.
        shard_upper: String,
    },
    /// A [`ReadShare`](crate::ReadShare) with `count == 0` or
    /// `index >= count`.
    #[error(
        "invalid read share: index must be below a count above zero: shard={shard} index={index} count={count}"
    )]
    InvalidShare {
        /// The shard.
        shard: ShardId,
        /// The share's index.
        index: u32,
        /// The share's count.
        count: u32,
    },
    /// Waiting for the upper to pass the empty frontier can never finish.
    #[error("cannot wait for the upper to pass the empty frontier: shard={shard}")]
    WaitPastEmptyFrontier {
        /// The shard.
        shard: ShardId,
    },
}

/// An error returned by the storage controller.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A collection id was reused with a different description.
    #[error("source identifier was re-created with a different description: {0}")]
    SourceIdReused(GlobalId),
    /// A sink id was reused.
    #[error("sink identifier was re-created or reused: {0}")]
    SinkIdReused(GlobalId),
    /// The id is not known to the controller.
    #[error("collection identifier is not present: {0}")]
    IdentifierMissing(GlobalId),
    /// An appended update is at or beyond the append's new upper.
    #[error("append update at or beyond the new upper: {0}")]
    UpdateBeyondUpper(GlobalId),
    /// A read at a time before the collection's since.
    #[error("read before the since of the collection: {0}")]
    ReadBeforeSince(GlobalId),
    /// Appends whose expected upper did not match the collection's upper;
    /// nothing of them was written.
    #[error("append expected upper did not match the current upper: {0:?}")]
    InvalidUppers(Vec<GlobalId>),
    /// An ingestion names a storage instance that does not exist.
    #[error("ingestion {ingestion_id} names a missing storage instance {storage_instance_id}")]
    IngestionInstanceMissing {
        /// The missing instance.
        storage_instance_id: StorageInstanceId,
        /// The ingestion.
        ingestion_id: GlobalId,
    },
    /// An export names a storage instance that does not exist.
    #[error("export {export_id} names a missing storage instance {storage_instance_id}")]
    ExportInstanceMissing {
        /// The missing instance.
        storage_instance_id: StorageInstanceId,
        /// The export.
        export_id: GlobalId,
    },
    /// A row does not match the collection's relation.
    #[error("row rejected by collection {id}: {error}")]
    InvalidRow {
        /// The collection.
        id: GlobalId,
        /// What did not match.
        error: RowValidationError,
    },
    /// The collection was dropped while the operation waited on it.
    #[error("collection was dropped while the operation was in progress: {0}")]
    CollectionDropped(GlobalId),
    /// A newer controller wrote the durable metadata; this one must stop.
    #[error("controller fenced: a newer controller owns the storage metadata, stop this one")]
    Fenced,
    /// The call is not valid in the controller's state.
    #[error("invalid usage: {0}")]
    InvalidUsage(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}
