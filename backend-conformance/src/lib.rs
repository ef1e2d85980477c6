//! The conformance suite every tidemark [`PersistBackend`] runs.
//!
//! Each property is one `pub async fn name<F: BackendFactory>(factory: &F)`
//! that checks ONE promise of the [`PersistBackend`] contract, on a fresh
//! [`ShardId`](tidemark_storage_types::ShardId) so properties never collide
//! even on shared storage. [`conformance_tests!`] expands the whole list into
//! named `#[tokio::test]`s, so a backend's `tests/conformance.rs` is a few
//! lines and a failure names the property.
//!
//! The properties are grouped by theme: [`open`], [`unknown`], [`datums`],
//! [`append`], [`read`], [`wait`], [`since`], [`compaction`], [`finalize`],
//! [`concurrency`], [`idempotency`], [`share`], [`streamed`], [`size`], [`model`],
//! [`fault_tolerance`], and for appends over several shards at once,
//! [`atomic_append`] and [`atomic_model`]. [`faults`] holds [`FaultyBackend`], a seeded
//! fault-injection wrapper any backend can be put behind.
//!
//! Properties need a multi-threaded tokio runtime (the macro provides one):
//! racing writers run on separate tasks, and the model property drives
//! proptest from inside the runtime.

#![warn(missing_docs)]

pub mod append;
pub mod atomic_append;
pub mod atomic_model;
pub mod compaction;
pub mod concurrency;
pub mod datums;
pub mod fault_tolerance;
pub mod faults;
pub mod fencing;
pub mod finalize;
pub mod idempotency;
pub mod model;
pub mod open;
pub mod read;
pub mod share;
pub mod since;
pub mod size;
pub mod streamed;
pub mod token_window;
pub mod unknown;
pub mod wait;

mod macros;
mod support;

use async_trait::async_trait;
use tidemark_storage_types::PersistBackend;

pub use faults::FaultyBackend;

/// Opens handles on one storage location (a memory registry name, a Postgres
/// schema, an S3 prefix). Every handle sees the same shards, so properties
/// can race writers through separate handles.
#[async_trait]
pub trait BackendFactory: Send + Sync + 'static {
    /// The backend type.
    type Backend: PersistBackend<u64>;

    /// A new handle on this factory's storage location.
    async fn open_handle(&self) -> Self::Backend;
}

/// Reads the environment variable naming an external test service.
///
/// - Set: returns its value.
/// - Unset outside CI: prints a loud `SKIPPED` line naming the test and the
///   variable, and returns `None` (the caller returns early).
/// - Unset with `CI=true`: panics, so CI never passes without the service.
pub fn service_env(variable: &str, test_name: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            let in_ci = std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1");
            if in_ci {
                panic!(
                    "{variable} is not set but CI=true: the service {test_name} needs is missing"
                );
            }
            eprintln!(
                "SKIPPED {test_name}: {variable} is not set (run the README test command to start the service)"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every module of properties, with its source.
    const PROPERTY_MODULES: [(&str, &str); 18] = [
        ("open", include_str!("open.rs")),
        ("unknown", include_str!("unknown.rs")),
        ("datums", include_str!("datums.rs")),
        ("append", include_str!("append.rs")),
        ("read", include_str!("read.rs")),
        ("wait", include_str!("wait.rs")),
        ("since", include_str!("since.rs")),
        ("compaction", include_str!("compaction.rs")),
        ("finalize", include_str!("finalize.rs")),
        ("concurrency", include_str!("concurrency.rs")),
        ("idempotency", include_str!("idempotency.rs")),
        ("share", include_str!("share.rs")),
        ("streamed", include_str!("streamed.rs")),
        ("size", include_str!("size.rs")),
        ("model", include_str!("model.rs")),
        ("fault_tolerance", include_str!("fault_tolerance.rs")),
        ("atomic_append", include_str!("atomic_append.rs")),
        ("atomic_model", include_str!("atomic_model.rs")),
    ];

    /// `module::property` for every `pub async fn property<F: BackendFactory>`.
    fn declared_properties() -> Vec<String> {
        let mut properties = Vec::new();
        for (module, source) in PROPERTY_MODULES {
            for line in source.lines() {
                let Some(rest) = line.strip_prefix("pub async fn ") else {
                    continue;
                };
                if let Some((name, _)) = rest.split_once("<F: BackendFactory>") {
                    properties.push(format!("{module}::{name}"));
                }
            }
        }
        properties
    }

    /// `module::property` for every entry of the macro's list.
    fn listed_properties() -> Vec<String> {
        include_str!("macros.rs")
            .lines()
            .map(str::trim)
            .filter_map(|line| line.strip_suffix(','))
            .filter(|entry| {
                entry.split_once("::").is_some_and(|(module, name)| {
                    PROPERTY_MODULES.iter().any(|(known, _)| *known == module)
                        && name
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                })
            })
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_property_is_in_the_macro_exactly_once() {
        let declared = declared_properties();
        let listed = listed_properties();
        let listed_set: BTreeSet<_> = listed.iter().collect();
        assert_eq!(listed.len(), listed_set.len(), "a property is listed twice");
        let declared_set: BTreeSet<_> = declared.iter().collect();
        assert_eq!(
            declared.len(),
            declared_set.len(),
            "a property is declared twice"
        );
        assert_eq!(
            declared_set, listed_set,
            "the macro's list and the declared properties differ"
        );
        assert!(declared.len() >= 40, "only {} properties", declared.len());
    }
}
