//! Core types of tidemark: identifiers, rows, timestamps and frontiers, read
//! policies, collection and export descriptions, errors, the
//! [`PersistBackend`] contract and the batch codec.
//!
//! Every other tidemark crate builds on these. Frontier semantics (since,
//! upper, what is readable) are stated in [`time`].

#![warn(missing_docs)]

pub mod backend;
pub mod batch_codec;
pub mod contract;
pub mod description;
pub mod errors;
pub mod frontier_serde;
pub mod ids;
pub mod read_policy;
pub mod row;
pub mod share;
pub mod stream;
pub mod sync;
pub mod time;

pub use backend::{
    CompactionStats, EarlierAttempts, PersistBackend, ShardAppend, ShardFrontiers, ShardUsage,
    UpperMismatch, UpperMismatches, WriteFence,
};
pub use batch_codec::{
    Batch, BatchDecodeError, BatchEncodeError, decode_batch, decode_batch_shared, encode_batch,
};
pub use description::{
    CollectionDescription, DataSource, ExportDescription, IngestionDescription, LoadGenerator,
    SinkConnection, SourceConnection, StorageParameters,
};
pub use errors::{
    BackendError, DeterminateError, DeterminateKind, ErasedFrontier, ErasedTime, ErrorSource,
    IdParseError, IndeterminateError, InvalidUsage, RowDecodeError, RowTooLarge,
    RowValidationError, StorageError,
};
pub use ids::{GlobalId, IdempotencyToken, ShardId, StorageInstanceId};
pub use read_policy::{LagFn, ReadPolicy};
pub use row::{ColumnType, Datum, DatumIter, RelationDesc, Row, ScalarType};
pub use share::ReadShare;
pub use stream::{
    ChunkBuilder, ChunkEntry, ChunkLimit, FetchStream, ReadStream, RestartPolicy, ResumePoint,
    ResumingRead, SnapshotStream, collect_stream, stream_from_vec,
};
pub use time::{
    Codec64, Diff, EncodedFrontier, StorageTimestamp, Update, decode_frontier, display_frontier,
    encode_frontier, frontier_time, readable_at, step_back_frontier,
};

/// Re-exports of the timely and differential types that appear in this
/// crate's API, so users need not match versions themselves.
pub mod reexports {
    pub use differential_dataflow;
    pub use timely;
}
