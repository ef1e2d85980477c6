//! Errors: what the controller reports ([`StorageError`]), what a backend
//! reports ([`BackendError`]), and the detail types behind them.
//!
//! Messages are lowercase, say what was wrong, and put values at the end.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;
use timely::progress::{Antichain, Timestamp};

use crate::ids::{GlobalId, ShardId, StorageInstanceId};
use crate::row::ScalarType;
use crate::time::{Codec64, EncodedFrontier, display_frontier, encode_frontier};

/// The error underneath a backend failure (a driver's or an SDK's), shared
/// so that errors stay [`Clone`].
pub type ErrorSource = Arc<dyn StdError + Send + Sync + 'static>;

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

/// A row whose encoding would reach [`Row::MAX_BYTES`](crate::Row::MAX_BYTES)
/// (4 GiB): its length could not be stored in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error(
    "row too large: its encoding needs at least {bytes} bytes, the limit is {limit} (Row::MAX_BYTES)"
)]
pub struct RowTooLarge {
    /// How many bytes the encoding needed when the limit was crossed.
    pub bytes: usize,
    /// The limit, [`Row::MAX_BYTES`](crate::Row::MAX_BYTES).
    pub limit: usize,
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
            source: None,
        })
    }

    /// A determinate failure of the given kind caused by `source` (a
    /// driver's or an SDK's error), which
    /// [`Error::source`](std::error::Error::source) then returns.
    ///
    /// ```
    /// use std::error::Error;
    /// use tidemark_storage_types::{BackendError, DeterminateKind};
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    /// let err = BackendError::determinate_caused_by(DeterminateKind::Unavailable, "cannot connect", io);
    /// let cause = err.source().and_then(Error::source).unwrap();
    /// assert_eq!(cause.to_string(), "refused");
    /// ```
    pub fn determinate_caused_by(
        kind: DeterminateKind,
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        BackendError::Determinate(DeterminateError {
            kind,
            message: message.into(),
            source: Some(Arc::new(source)),
        })
    }

    /// An indeterminate failure.
    pub fn indeterminate(message: impl Into<String>) -> Self {
        BackendError::Indeterminate(IndeterminateError {
            message: message.into(),
            source: None,
        })
    }

    /// An indeterminate failure caused by `source`, which
    /// [`Error::source`](std::error::Error::source) then returns.
    pub fn indeterminate_caused_by(
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        BackendError::Indeterminate(IndeterminateError {
            message: message.into(),
            source: Some(Arc::new(source)),
        })
    }

    /// This failure with `source` (a driver's or an SDK's error) as its
    /// cause. An [`InvalidUsage`](BackendError::InvalidUsage) has no cause
    /// beneath it and is returned as it is.
    #[must_use]
    pub fn caused_by(self, source: impl StdError + Send + Sync + 'static) -> Self {
        match self {
            BackendError::Determinate(mut err) => {
                err.source = Some(Arc::new(source));
                BackendError::Determinate(err)
            }
            BackendError::Indeterminate(mut err) => {
                err.source = Some(Arc::new(source));
                BackendError::Indeterminate(err)
            }
            invalid @ BackendError::InvalidUsage(_) => invalid,
        }
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
    /// A fenced write carried a writer epoch lower than the shard's: a newer
    /// writer has taken over, and this one must stop writing.
    Fenced,
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
            DeterminateKind::Fenced => "fenced",
            DeterminateKind::Other => "other",
        };
        f.write_str(name)
    }
}

/// A failure that definitely did not apply.
///
/// Equality compares the kind and the message, not the source.
#[derive(Clone, Debug)]
pub struct DeterminateError {
    /// What kind of failure.
    pub kind: DeterminateKind,
    /// What happened, with values at the end.
    pub message: String,
    /// The driver's or SDK's error underneath, if there is one.
    pub source: Option<ErrorSource>,
}

impl fmt::Display for DeterminateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl StdError for DeterminateError {
    /// The error underneath itself (not the shared handle around it), so
    /// that `downcast_ref` finds the driver's or SDK's type.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

impl PartialEq for DeterminateError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for DeterminateError {}

/// A failure whose effect is unknown.
///
/// Equality compares the message, not the source.
#[derive(Clone, Debug)]
pub struct IndeterminateError {
    /// What happened, with values at the end.
    pub message: String,
    /// The driver's or SDK's error underneath, if there is one.
    pub source: Option<ErrorSource>,
}

impl fmt::Display for IndeterminateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for IndeterminateError {
    /// The error underneath itself, as for [`DeterminateError`].
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

impl PartialEq for IndeterminateError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for IndeterminateError {}

/// A frontier as an error carries it, independent of the timestamp type:
/// its stored form ([`EncodedFrontier`], which compares as the times do)
/// and its text.
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_types::{ErasedFrontier, ErasedTime};
/// let since = ErasedFrontier::new(&Antichain::from_elem(5u64));
/// assert!(since.less_equal(&ErasedTime::new(&5u64)));
/// assert!(!since.less_equal(&ErasedTime::new(&4u64)));
/// assert_eq!(since.decode::<u64>(), Antichain::from_elem(5));
/// assert_eq!(since.to_string(), "[5]");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasedFrontier {
    encoded: EncodedFrontier,
    text: Box<str>,
}

impl ErasedFrontier {
    /// Erases the timestamp type of `frontier`.
    #[must_use]
    pub fn new<T: Codec64 + fmt::Display>(frontier: &Antichain<T>) -> Self {
        ErasedFrontier {
            encoded: encode_frontier(frontier),
            text: display_frontier(frontier).to_string().into(),
        }
    }

    /// The stored form: `None` for the empty frontier.
    #[must_use]
    pub fn encoded(&self) -> EncodedFrontier {
        self.encoded
    }

    /// The frontier, for a caller that knows the timestamp type.
    #[must_use]
    pub fn decode<T: Codec64 + Timestamp>(&self) -> Antichain<T> {
        crate::time::decode_frontier(self.encoded)
    }

    /// Whether the frontier is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.encoded.is_none()
    }

    /// Whether `self <= time`: some element of the frontier is at or
    /// before `time`.
    #[must_use]
    pub fn less_equal(&self, time: &ErasedTime) -> bool {
        self.encoded.is_some_and(|element| element <= time.encoded)
    }
}

impl fmt::Display for ErasedFrontier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A time as an error carries it, independent of the timestamp type: its
/// [`Codec64`] encoding and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasedTime {
    encoded: i64,
    text: Box<str>,
}

impl ErasedTime {
    /// Erases the type of `time`.
    #[must_use]
    pub fn new<T: Codec64 + fmt::Display>(time: &T) -> Self {
        ErasedTime {
            encoded: time.encode(),
            text: time.to_string().into(),
        }
    }

    /// The [`Codec64`] encoding.
    #[must_use]
    pub fn encoded(&self) -> i64 {
        self.encoded
    }

    /// The time, for a caller that knows its type.
    #[must_use]
    pub fn decode<T: Codec64>(&self) -> T {
        T::decode(self.encoded)
    }
}

impl fmt::Display for ErasedTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A call that breaks the [`PersistBackend`](crate::PersistBackend) contract.
/// Frontiers and times are carried without their type ([`ErasedFrontier`],
/// [`ErasedTime`], or text), so the type does not depend on the timestamp.
///
/// The checks that produce these live in [`contract`](crate::contract).
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
    /// A snapshot `as_of` that is not readable: before the since (compacted
    /// away: `!since.less_equal(&as_of)`), or not before the upper (not yet
    /// written: `upper.less_equal(&as_of)`).
    ///
    /// ```
    /// use timely::progress::Antichain;
    /// use tidemark_storage_types::{InvalidUsage, ShardId, contract};
    /// let (since, upper) = (Antichain::from_elem(3u64), Antichain::from_elem(6u64));
    /// let err = contract::check_readable(ShardId::new(), &since, &upper, &8).unwrap_err();
    /// let InvalidUsage::AsOfNotReadable { as_of, since, upper, .. } = err else { panic!() };
    /// assert!(since.less_equal(&as_of) && upper.less_equal(&as_of)); // not yet written
    /// ```
    #[error("as_of {as_of} is not readable: shard={shard} since={since} upper={upper}")]
    AsOfNotReadable {
        /// The shard.
        shard: ShardId,
        /// The requested time.
        as_of: ErasedTime,
        /// The shard's since.
        since: ErasedFrontier,
        /// The shard's upper.
        upper: ErasedFrontier,
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
    /// The same shard appears twice in one
    /// [`compare_and_append_all`](crate::PersistBackend::compare_and_append_all).
    #[error("shard {shard} appears more than once in one atomic append")]
    DuplicateShardInAppend {
        /// The shard.
        shard: ShardId,
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
    /// Collections created together depend on each other in a cycle; none
    /// was created.
    #[error("storage dependencies form a cycle: {}", display_ids(.0))]
    DependencyCycle(Vec<GlobalId>),
    /// An append names a collection the controller does not write (its
    /// source writes it); only tables accept appends.
    #[error("only tables accept appends, this collection is written by its source: {0}")]
    NotControllerWritten(GlobalId),
    /// An append names the same collection twice.
    #[error("append names the same collection twice: {0}")]
    DuplicateAppend(GlobalId),
    /// An export reads a different collection than its read token was
    /// prepared for.
    #[error(
        "export reads a different collection than its token was prepared for: export={export_id} from={from} token_from={token_from}"
    )]
    ExportTokenMismatch {
        /// The export.
        export_id: GlobalId,
        /// The collection the export's description reads.
        from: GlobalId,
        /// The collection the token holds.
        token_from: GlobalId,
    },
    /// The durable metadata was written by a newer controller, in a format
    /// this one cannot read.
    #[error(
        "durable controller metadata has a newer format than this controller supports: found={found} supported={supported}"
    )]
    MetadataFormatTooNew {
        /// The format version found.
        found: i64,
        /// The newest format version this controller reads.
        supported: i64,
    },
    /// An ingestion names a table as one of its outputs (a source export
    /// or its progress collection): a table is written by the controller,
    /// and a collection has one writer.
    #[error(
        "table {table} cannot be written by ingestion {ingestion}: tables are written by the controller only"
    )]
    TableWrittenByIngestion {
        /// The table.
        table: GlobalId,
        /// The ingestion that names it as an output.
        ingestion: GlobalId,
    },
    /// A collection names as its `status_collection_id` a collection that
    /// is not a status history (`DataSource::StatusHistory`).
    #[error(
        "collection {id} names {status_collection} as its status collection, but that is not a status history collection"
    )]
    NotAStatusCollection {
        /// The collection naming it.
        id: GlobalId,
        /// The collection named.
        status_collection: GlobalId,
    },
    /// A status history collection is described with another relation
    /// than `status_history_relation()`.
    #[error(
        "status history collection {0} must have the status history relation (occurred_at, id, status, error, replica)"
    )]
    StatusRelationMismatch(GlobalId),
    /// The controller's write task has stopped (it panicked, or the
    /// controller is shutting down), so the operation was not done.
    #[error("the controller's write task has stopped")]
    WriteTaskStopped,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

fn display_ids(ids: &[GlobalId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn sources_are_kept_and_ignored_by_equality() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let with_source = BackendError::indeterminate_caused_by("lost", refused);
        let without = BackendError::indeterminate("lost");
        assert_eq!(with_source, without);
        let cause = with_source.source().and_then(Error::source).unwrap();
        assert_eq!(cause.to_string(), "refused");
        assert!(
            cause.downcast_ref::<std::io::Error>().is_some(),
            "{cause:?}"
        );
        assert!(without.source().and_then(Error::source).is_none());
        let cloned = with_source.clone();
        assert!(cloned.source().and_then(Error::source).is_some());
        let late =
            BackendError::determinate(DeterminateKind::Other, "refused").caused_by(std::fmt::Error);
        assert!(late.source().and_then(Error::source).is_some());
        let invalid = BackendError::InvalidUsage(InvalidUsage::UnknownShard {
            shard: ShardId::from_bytes([1; 16]),
        })
        .caused_by(std::fmt::Error);
        assert!(invalid.source().and_then(Error::source).is_none());
    }

    #[test]
    fn storage_errors_name_what_was_wrong() {
        let cycle = StorageError::DependencyCycle(vec![GlobalId::User(1), GlobalId::User(2)]);
        assert_eq!(
            cycle.to_string(),
            "storage dependencies form a cycle: u1, u2"
        );
        let too_new = StorageError::MetadataFormatTooNew {
            found: 9,
            supported: 2,
        };
        assert!(
            too_new.to_string().ends_with("found=9 supported=2"),
            "{too_new}"
        );
    }
}
