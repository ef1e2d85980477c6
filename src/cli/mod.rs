//! The operator commands of the `tidemark` binary, as library functions so
//! that they can be run in-process (the memory backend lives per process)
//! and tested on their reports.
//!
//! Every command takes a backend URL, as [`open`](crate::open) parses it.
//! None of them constructs a [`Controller`](crate::controller::Controller):
//! that would fence a controller running on the same store.

pub mod bench;
pub mod cat;
pub mod doctor;
pub mod inspect;
pub mod replica;
pub mod stats;

use serde_json::Value;
use thiserror::Error;
use timely::progress::Antichain;

use crate::OpenError;
use crate::types::{BackendError, Datum, GlobalId, Row, StorageError};

/// Why a command could not do its work.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The backend URL does not open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The controller metadata could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The collection is not recorded in the controller metadata.
    #[error("unknown collection: the controller metadata records no collection {id}")]
    UnknownCollection {
        /// The id asked for.
        id: GlobalId,
    },
    /// A collection id that does not parse.
    #[error("invalid collection id: {reason}: {text:?}")]
    InvalidId {
        /// The text given.
        text: String,
        /// What was wrong.
        reason: String,
    },
    /// The collection has no readable time yet (and `--follow` was not
    /// given to wait for one).
    #[error("collection has no readable time: since={since} upper={upper}")]
    NothingReadable {
        /// The shard's since.
        since: String,
        /// The shard's upper.
        upper: String,
    },
    /// A workload aimed at a store that is not on this machine.
    #[error(
        "refusing to write benchmark data to a store that is not on loopback (pass --i-know to override): host={host}"
    )]
    NotLoopback {
        /// The host of the URL.
        host: String,
    },
    /// A command-line value out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    /// The replica could not start.
    #[error(transparent)]
    Replica(#[from] tidemark_storage_replica::ReplicaError),
    /// The metrics exporter could not start.
    #[error("cannot start the metrics exporter: {0}")]
    Metrics(String),
}

/// A frontier of `u64` times as a JSON-friendly list.
#[must_use]
pub fn frontier_elements(frontier: &Antichain<u64>) -> Vec<u64> {
    frontier.elements().to_vec()
}

/// A frontier as `[1, 2]` text (`[]` when empty).
#[must_use]
pub fn frontier_text(frontier: &Antichain<u64>) -> String {
    crate::types::display_frontier(frontier).to_string()
}

/// A row as a JSON array of its datums: null, booleans, numbers and
/// strings as themselves, bytes as an array of numbers, timestamps as
/// microseconds.
#[must_use]
pub fn row_json(row: &Row) -> Value {
    Value::Array(
        row.iter()
            .map(|datum| match datum {
                Datum::Null => Value::Null,
                Datum::Bool(value) => Value::Bool(value),
                Datum::Int64(value) | Datum::Timestamp(value) => Value::from(value),
                Datum::Float64(value) => Value::from(value),
                Datum::String(value) => Value::from(value),
                Datum::Bytes(value) => Value::from(value.to_vec()),
            })
            .collect(),
    )
}

/// Parses a collection id (`u1`, `s2`, ...).
///
/// # Errors
///
/// [`ToolError::InvalidId`] naming the text.
pub fn parse_collection_id(text: &str) -> Result<GlobalId, ToolError> {
    text.parse()
        .map_err(|err: crate::types::IdParseError| ToolError::InvalidId {
            text: text.to_string(),
            reason: err.to_string(),
        })
}
