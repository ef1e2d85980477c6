//! The storage controller's generic test list, on an S3 server
//! (`TIDEMARK_TEST_S3_ENDPOINT`) with the commit log on: every collection's
//! shard in log mode.

mod support;

use support::{S3Factory, make_factory};

async fn make() -> Option<S3Factory> {
    let mut factory = make_factory("s3 controller tests, commit log").await?;
    factory.config = factory.config.with_commit_log(true);
    Some(factory)
}

tidemark_controller_conformance::controller_tests!(make);
