//! A tidemark storage replica: the process that runs ingestions and sinks
//! for a storage instance, as timely dataflows.
//!
//! - [`Replica`]: starts the timely workers (one process, or several as
//!   one timely cluster) and serves the controller's sessions from any
//!   [`AcceptSessions`](tidemark_storage_controller::transport::AcceptSessions),
//!   in process or over TCP. The replica opens its backend itself: whoever
//!   starts it says where (the `tidemark replica --backend URL` binary);
//!   no command carries a location or a credential.
//! - Every ingestion ([`ingestion`]) and export ([`export`]) is a dataflow
//!   built on every worker; one worker, chosen by [`placement`], writes.
//! - [`generator`]: the load generators an ingestion runs (counter,
//!   auction, key-value) and the tick/time mapping they share; each is a
//!   pure function of its description and the tick, so a restarted
//!   ingestion resumes without gaps or duplicates.
//! - [`file_sink`]: the file sink's storage: JSON lines under a directory,
//!   committed exactly once across crashes through a progress record.

#![warn(missing_docs)]

pub mod config;
pub mod export;
pub mod file_sink;
pub mod generator;
pub mod ingestion;
mod json;
mod lag;
mod monitor;
pub mod placement;
mod report;
mod server;
pub mod worker;

pub use config::{ConfigError, ReplicaConfig};

/// The times a replica runs dataflows in: a storage timestamp that timely
/// can use as the time of a top-level dataflow.
pub trait ReplicaTimestamp:
    tidemark_storage_types::StorageTimestamp + timely::progress::timestamp::Refines<()>
{
}

impl<T> ReplicaTimestamp for T where
    T: tidemark_storage_types::StorageTimestamp + timely::progress::timestamp::Refines<()>
{
}

pub use server::{Replica, ReplicaError};
