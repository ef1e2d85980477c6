//! Timely and differential dataflow operators over tidemark shards: a
//! [`ShardSource`] reads a shard into a differential collection, a
//! [`ShardSink`] writes a collection into a shard, exactly once.
//!
//! Both are generic over any [`PersistBackend`](tidemark_storage_types::PersistBackend)
//! and run their backend calls as tasks on a tokio runtime the caller
//! gives (a [`Handle`](tokio::runtime::Handle)): a task wakes its operator
//! with a timely `SyncActivator` when it has something, and the operator
//! never blocks a worker thread. Dropping the dataflow aborts the tasks.
//!
//! # Frontiers
//!
//! A source's output frontier is the shard's upper as it has read it: every
//! update at a time not beyond it has been emitted; it is never beyond the
//! shard's upper, and it reaches it. A sink's shard upper follows its input
//! frontier: once the input frontier passes a time, the updates at times
//! before it are appended in one `compare_and_append`.
//!
//! # Failures
//!
//! Neither operator panics a worker on a backend failure, a finalized
//! shard, an unreadable `as_of` or a racing writer: each reports a
//! [`DataflowError`] through its [`DataflowStatus`] and stops making
//! progress. Failures a retry can fix are retried by a bounded
//! [`RetryPolicy`]; appends are retried with the same idempotency token.
//!
//! Work sharing, read holds and the sink's commit protocol are described on
//! [`ShardSource`], [`SharedReadHold`] and [`ShardSink`] (and in the
//! project's decision records 060 to 062).

#![warn(missing_docs)]

mod errors;
mod hold;
mod retry;
mod sink;
mod source;
mod status;
mod task;

pub use errors::DataflowError;
pub use hold::{ReadHoldHandle, SharedReadHold};
pub use retry::RetryPolicy;
pub use sink::{ShardSink, resume_as_of};
pub use source::ShardSource;
pub use status::DataflowStatus;
