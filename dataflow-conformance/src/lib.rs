//! The dataflow operators' test list, generic over a backend factory.
//!
//! Each property is one `pub async fn name<F: BackendFactory>(factory: &F)`
//! ([`BackendFactory`](tidemark_backend_conformance::BackendFactory) from
//! the backend conformance suite, so every backend's existing test factory
//! serves). [`dataflow_tests!`] expands the list into named tests, run on
//! memory (`tests/memory.rs` here), PostgreSQL and S3 (`tests/dataflow.rs`
//! of those backends).
//!
//! Groups: [`source`] (snapshot and changes, frontier against the upper,
//! as_of and until, worker counts), [`sink`] (restarts, racing writers),
//! [`model`] (a proptest against a model of a join and reduce), [`faults`]
//! (the seeded fault wrapper on every call), [`errors`] (what the source
//! reports) and [`hold`] (read holds through the controller).
//!
//! Properties run timely workers on blocking threads of the test's tokio
//! runtime, which must be multi-threaded (the macro provides one).

#![warn(missing_docs)]

pub mod errors;
pub mod faults;
pub mod hold;
pub mod model;
pub mod sink;
pub mod source;

mod harness;
mod support;
mod workload;

/// Expands to one `#[tokio::test]` per dataflow property, named after the
/// property. `$make` is a path to an `async fn() -> Option<F>` with
/// `F: BackendFactory`; `None` means the backend's service is missing (the
/// function printed `SKIPPED`) and the test returns.
///
/// ```ignore
/// async fn make() -> Option<PostgresFactory> { /* as for the conformance suite */ }
/// tidemark_dataflow_conformance::dataflow_tests!(make);
/// ```
#[macro_export]
macro_rules! dataflow_tests {
    ($make:path) => {
        $crate::dataflow_tests!(@properties $make;
            source::source_reads_the_snapshot_then_follows_the_upper,
            source::source_honours_as_of_and_until,
            source::source_emits_the_same_collection_on_1_2_and_4_workers,
            source::source_resumes_failed_reads_without_reemitting,
            sink::sink_restarted_at_random_points_writes_nothing_twice,
            sink::sink_reports_a_racing_writer,
            sink::sink_reports_a_finalized_shard,
            model::dataflow_output_matches_the_model,
            faults::faults_on_every_backend_call_leave_the_output_exact,
            faults::backend_failures_beyond_the_retries_are_reported,
            errors::source_reports_a_finalized_shard,
            errors::source_reports_an_as_of_before_the_since,
            hold::read_hold_keeps_the_since_at_the_source_progress,
            hold::read_hold_never_lets_the_source_reemit_what_the_since_advances,
            hold::acquire_read_hold_rejects_bad_requests,
        );
    };
    (@properties $make:path; $($module:ident :: $property:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $property() {
                let Some(factory) = $make().await else {
                    return;
                };
                $crate::$module::$property(&factory).await;
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every module of properties, with its source.
    const PROPERTY_MODULES: [(&str, &str); 6] = [
        ("source", include_str!("source.rs")),
        ("sink", include_str!("sink.rs")),
        ("model", include_str!("model.rs")),
        ("faults", include_str!("faults.rs")),
        ("errors", include_str!("errors.rs")),
        ("hold", include_str!("hold.rs")),
    ];

    #[test]
    fn every_property_is_in_the_macro_exactly_once() {
        let declared: BTreeSet<String> = PROPERTY_MODULES
            .iter()
            .flat_map(|(module, source)| {
                source.lines().filter_map(move |line| {
                    let rest = line.strip_prefix("pub async fn ")?;
                    let (name, _) = rest.split_once("<F: BackendFactory>")?;
                    Some(format!("{module}::{name}"))
                })
            })
            .collect();
        let listed: Vec<String> = include_str!("lib.rs")
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
            .collect();
        let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(listed.len(), listed_set.len(), "a property is listed twice");
        assert_eq!(
            declared, listed_set,
            "the macro's list and the declared properties differ"
        );
    }
}
