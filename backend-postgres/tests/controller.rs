//! The storage controller's generic test list, on PostgreSQL: every test on
//! a fresh schema.

mod support;

use support::{PostgresFactory, test_url};

async fn make() -> Option<PostgresFactory> {
    let url = test_url("postgres controller tests")?;
    Some(PostgresFactory::new(&url, "tmctl"))
}

tidemark_controller_conformance::controller_tests!(make);
