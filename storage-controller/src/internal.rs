//! The controller's internal event type: what arrives asynchronously on the
//! controller's one internal channel (see decision 013).
//!
//! It sits below `controller`, `instance`, `worker` and `subscribe`: each of
//! them sends or receives these events and imports the type from here, so
//! none of them depends on another for it.

use tidemark_storage_types::{GlobalId, StorageError, StorageInstanceId};
use timely::progress::{Antichain, ChangeBatch};

use crate::protocol::StorageResponse;

/// A message on the controller's internal channel.
#[derive(Debug)]
pub(crate) enum Internal<T> {
    /// A response from process `process` of the replica connected to
    /// `instance` at `epoch`.
    Replica {
        instance: StorageInstanceId,
        epoch: u64,
        process: usize,
        response: StorageResponse<T>,
    },
    /// The response channel of process `process` of the replica connected
    /// to `instance` at `epoch` closed: the connection is lost.
    ReplicaDisconnected {
        instance: StorageInstanceId,
        epoch: u64,
        process: usize,
    },
    /// The backoff after losing `instance`'s replica connected at `epoch`
    /// has passed: reconnect, unless it was connected again meanwhile.
    ReconnectDue {
        instance: StorageInstanceId,
        epoch: u64,
    },
    /// Appends that became durable, with their new uppers.
    WriteCompleted(Vec<(GlobalId, Antichain<T>)>),
    /// A subscription moved or released its read hold.
    HoldChanges(GlobalId, ChangeBatch<T>),
    /// Background work failed.
    BackgroundError(StorageError),
}
