//! [`DataflowError`]: what a source or sink reports instead of panicking a
//! worker.

use thiserror::Error;
use tidemark_storage_types::{BackendError, ShardId};

/// Why a [`ShardSource`](crate::ShardSource) or
/// [`ShardSink`](crate::ShardSink) stopped. Reported through its
/// [`DataflowStatus`](crate::DataflowStatus); the operator then makes no
/// more progress (a source keeps its frontier where it was, so nothing
/// downstream mistakes the failure for a sealed shard), and the caller
/// drops the dataflow.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DataflowError {
    /// The shard was finalized: its data is gone and it can never be read or
    /// written again.
    #[error("shard is finalized, its data is gone: shard={shard}")]
    ShardFinalized {
        /// The shard.
        shard: ShardId,
    },
    /// The source's `as_of` is before the shard's since: those times may
    /// have been compacted away. Read at or after the since (or hold the
    /// collection's reads before its since passes the `as_of`).
    #[error(
        "as_of is before the shard's since, it may be compacted: shard={shard} as_of={as_of} since={since}"
    )]
    AsOfNotReadable {
        /// The shard.
        shard: ShardId,
        /// The requested time.
        as_of: String,
        /// The shard's since.
        since: String,
    },
    /// Another writer advanced the sink's shard: the sink expected the upper
    /// it last wrote (or read at startup) and found a different one. Nothing
    /// of this append was written; the sink never overwrites the other
    /// writer's data.
    #[error(
        "another writer moved the shard's upper, the sink stopped: shard={shard} expected={expected} current={current}"
    )]
    UpperRaced {
        /// The shard.
        shard: ShardId,
        /// The upper the sink expected.
        expected: String,
        /// The upper it found.
        current: String,
    },
    /// A backend call failed and retrying (the bounded
    /// [`RetryPolicy`](crate::RetryPolicy)) did not help, or it was not
    /// retryable.
    #[error("backend {operation} failed: shard={shard}: {error}")]
    Backend {
        /// The shard.
        shard: ShardId,
        /// The backend method.
        operation: &'static str,
        /// The last failure (boxed: it is large, and rare).
        error: Box<BackendError>,
    },
}
