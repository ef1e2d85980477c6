//! Reliability test tools for tidemark.
//!
//! - [`proxy`]: a seeded TCP fault proxy between a backend and its server
//!   (resets before a request, after it, mid-response; stalls; delays).
//! - [`retrying`]: a backend wrapper that retries failed calls the way the
//!   contract tells a caller to (appends with their idempotency token), and
//!   counts the failures by kind.
//! - [`services`]: PostgreSQL and S3 behind a proxy, as conformance
//!   factories.
//! - [`ledger`]: the acknowledged-append log the crash-loop writer prints,
//!   and the check a fresh controller runs against it.
//!
//! The binary `crash-writer` appends through the controller in a loop; the
//! crash-loop test kills it with SIGKILL and checks the ledger.
//!
//! Everything binds loopback only.

#![warn(missing_docs)]

pub mod ledger;
pub mod proxy;
pub mod retrying;
pub mod services;
pub mod writer;

pub use proxy::{Fault, FaultPlan, FaultProxy};
pub use retrying::{CallerRetries, FailureCounts};
