//! The shared conformance suite against an S3 server
//! (`TIDEMARK_TEST_S3_ENDPOINT`): every test under a fresh prefix of the
//! test bucket, every handle with its own client.

mod support;

use support::{S3Factory, make_factory};
use tidemark_backend_conformance::conformance_tests;

async fn make() -> Option<S3Factory> {
    make_factory("s3 conformance").await
}

conformance_tests!(make);
