//! The shared conformance suite against an S3 server with the commit log on
//! (`S3Config::with_commit_log`): every shard is in log mode, every append,
//! since downgrade and finalize goes through the log.

mod support;

use support::{S3Factory, make_factory};
use tidemark_backend_conformance::conformance_tests;

async fn make() -> Option<S3Factory> {
    let mut factory = make_factory("s3 conformance, commit log").await?;
    factory.config = factory.config.with_commit_log(true);
    Some(factory)
}

conformance_tests!(make);
