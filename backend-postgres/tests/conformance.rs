//! The shared conformance suite, against PostgreSQL: every test on a fresh
//! schema, every handle with its own connection pool.

mod support;

use support::{PostgresFactory, test_url};
use tidemark_backend_conformance::conformance_tests;

async fn make() -> Option<PostgresFactory> {
    let url = test_url("postgres conformance")?;
    Some(PostgresFactory::new(&url, "tmconf"))
}

conformance_tests!(make);
