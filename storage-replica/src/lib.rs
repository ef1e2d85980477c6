//! A tidemark storage replica: the process that runs ingestions and sinks
//! for a storage instance.
//!
//! - [`generator`]: the load generators an ingestion runs (counter, auction,
//!   key-value) and the tick/time mapping they share; each is a pure
//!   function of its description and the tick, so a restarted ingestion
//!   resumes without gaps or duplicates.
//! - [`file_sink`]: the file sink's storage: JSON lines under a directory,
//!   committed exactly once across crashes through a progress record.

#![warn(missing_docs)]

pub mod file_sink;
pub mod generator;
mod json;
