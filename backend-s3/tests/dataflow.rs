//! The dataflow operators' test list, on an S3 server
//! (`TIDEMARK_TEST_S3_ENDPOINT`): every test under a fresh prefix.

mod support;

use support::{S3Factory, make_factory};

async fn make() -> Option<S3Factory> {
    make_factory("s3 dataflow tests").await
}

tidemark_dataflow_conformance::dataflow_tests!(make);
