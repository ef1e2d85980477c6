//! `tidemark doctor URL`: checks that a store is safe to keep tidemark
//! data in, and says why not.
//!
//! - **S3** ([`s3`]): conditional writes (`If-None-Match: *` and
//!   `If-Match`) are enforced, and atomic under a race: of 8 writers
//!   racing on one key, exactly one wins, every round; ETags come back;
//!   the latency of PUT, GET and conditional PUT. Several S3-compatible
//!   servers accept conditional headers without enforcing them, or check
//!   them without atomicity; either loses acknowledged appends.
//! - **PostgreSQL** ([`postgres`]): the server version, `fsync`,
//!   `synchronous_commit`, `default_transaction_isolation`, and the schema
//!   version against the backend's migrations.
//! - **memory**: fails: the store lives in one process only.
//!
//! The store is safe only when every check passes. The S3 checks write
//! objects under `PREFIX/doctor/RUN/` and delete them afterwards; the
//! PostgreSQL checks only read.

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "s3")]
pub mod s3;

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use super::ToolError;
use super::stats::LatencySummary;

/// One check and its outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `if-none-match atomic under a race`.
    pub name: String,
    /// Whether the store passed.
    pub ok: bool,
    /// What was seen, and on failure why it is unsafe.
    pub detail: String,
}

impl Check {
    /// A passed check.
    #[must_use]
    pub fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            ok: true,
            detail: detail.into(),
        }
    }

    /// A failed check.
    #[must_use]
    pub fn fail(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What `doctor` found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DoctorReport {
    /// `s3`, `postgres` or `memory`.
    pub backend: &'static str,
    /// True iff every check passed.
    pub safe: bool,
    /// Every check, in the order run.
    pub checks: Vec<Check>,
    /// Measured latencies by operation (S3: `put`, `get`,
    /// `conditional_put`).
    pub latency: BTreeMap<String, LatencySummary>,
}

impl DoctorReport {
    /// A report of `checks`, safe iff all passed.
    #[must_use]
    pub fn new(
        backend: &'static str,
        checks: Vec<Check>,
        latency: BTreeMap<String, LatencySummary>,
    ) -> Self {
        DoctorReport {
            backend,
            safe: checks.iter().all(|check| check.ok),
            checks,
            latency,
        }
    }
}

/// How hard `doctor` looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoctorOptions {
    /// Rounds of each race (8 writers each).
    pub rounds: usize,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        DoctorOptions { rounds: 10 }
    }
}

/// Checks the store `url` names.
///
/// # Errors
///
/// Only for a URL that names no store this build can check; a store that
/// cannot be reached is a failed check in the report.
pub async fn run(url: &str, options: DoctorOptions) -> Result<DoctorReport, ToolError> {
    if options.rounds == 0 {
        return Err(ToolError::InvalidArgument(
            "doctor needs at least one race round: rounds=0".to_string(),
        ));
    }
    let scheme = url.split("://").next().unwrap_or_default();
    match scheme {
        "memory" => Ok(DoctorReport::new(
            "memory",
            vec![Check::fail(
                "durable",
                "the memory backend keeps data in this process only: everything is lost when it exits",
            )],
            BTreeMap::new(),
        )),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => postgres::check(url).await,
        #[cfg(feature = "s3")]
        "s3" => s3::check(url, options).await,
        // Unknown schemes and backends not compiled in: `open` says which.
        _ => match crate::open(url).await {
            Err(err) => Err(err.into()),
            Ok(_) => Err(ToolError::InvalidArgument(format!(
                "doctor has no checks for this backend: url scheme={scheme}"
            ))),
        },
    }
}

/// Writes the report for people: one line per check, then latencies.
///
/// # Errors
///
/// Writing fails.
pub fn write_text(report: &DoctorReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "tidemark doctor: {} store", report.backend)?;
    for check in &report.checks {
        let mark = if check.ok { "ok  " } else { "FAIL" };
        writeln!(out, "  {mark} {}: {}", check.name, check.detail)?;
    }
    for (operation, summary) in report.latency.iter().filter(|(_, s)| s.count > 0) {
        writeln!(
            out,
            "  latency {operation}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} operations)",
            summary.p50_ms, summary.p99_ms, summary.max_ms, summary.count
        )?;
    }
    if report.safe {
        writeln!(out, "safe: every check passed")
    } else {
        let failed = report.checks.iter().filter(|check| !check.ok).count();
        writeln!(out, "NOT SAFE: {failed} check(s) failed")
    }
}
