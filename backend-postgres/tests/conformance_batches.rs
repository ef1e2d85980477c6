//! The shared conformance suite again, with every append stored in the
//! batch layout (batch and copy thresholds 0), so reads, compaction and
//! streams keep the contract over `update_batches` as over `updates`.

mod support;

use support::{PostgresFactory, test_url};
use tidemark_backend_conformance::conformance_tests;

async fn make() -> Option<PostgresFactory> {
    let url = test_url("postgres conformance (batch appends)")?;
    let mut factory = PostgresFactory::new(&url, "tmbatch");
    factory.config = factory
        .config
        .clone()
        .with_copy_threshold(0)
        .with_batch_threshold(0);
    Some(factory)
}

conformance_tests!(make);
