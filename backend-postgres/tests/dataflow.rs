//! The dataflow operators' test list, on PostgreSQL: every test on a fresh
//! schema.

mod support;

use support::{PostgresFactory, test_url};

async fn make() -> Option<PostgresFactory> {
    let url = test_url("postgres dataflow tests")?;
    Some(PostgresFactory::new(&url, "tmdf"))
}

tidemark_dataflow_conformance::dataflow_tests!(make);
