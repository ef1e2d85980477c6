//! The shared conformance suite again, with every append written by the
//! `COPY` path (copy threshold 0), so both write paths keep the contract.

mod support;

use support::{PostgresFactory, test_url};
use tidemark_backend_conformance::conformance_tests;

async fn make() -> Option<PostgresFactory> {
    let url = test_url("postgres conformance (copy appends)")?;
    let mut factory = PostgresFactory::new(&url, "tmcopy");
    factory.config = factory.config.clone().with_copy_threshold(0);
    Some(factory)
}

conformance_tests!(make);
