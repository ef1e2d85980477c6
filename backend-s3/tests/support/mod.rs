//! Test support: a fresh bucket and prefix per factory on the S3 server
//! named by `TIDEMARK_TEST_S3_ENDPOINT`, explicit dummy credentials.
//!
//! A bucket per factory keeps tests from listing each other's keys (the
//! local server's listing is not safe against concurrent writes to the same
//! bucket and then answers 500).

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tidemark_backend_conformance::{BackendFactory, service_env};
use tidemark_backend_s3::{Clock, S3Backend, S3Config};

/// Dummy credentials the local server accepts.
pub const ACCESS_KEY_ID: &str = "tidemark-test";
/// Dummy credentials the local server accepts.
pub const SECRET_ACCESS_KEY: &str = "tidemark-test-secret";

/// The endpoint, or `None` (after a loud skip line) outside CI.
pub fn test_endpoint(test_name: &str) -> Option<String> {
    service_env("TIDEMARK_TEST_S3_ENDPOINT", test_name)
}

/// A prefix no other test in any run uses.
pub fn fresh_prefix(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{label}-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        uuid::Uuid::new_v4().simple()
    )
}

/// A configuration for `endpoint`, `bucket` and `prefix` with dummy
/// credentials and small parts (so tests exercise multi-part batches).
pub fn config_for(endpoint: &str, bucket: &str, prefix: &str) -> S3Config {
    S3Config::new(bucket)
        .with_prefix(prefix)
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_path_style(true)
        .with_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
        .with_part_size_bytes(64 * 1024)
        .with_poll_interval(Duration::from_millis(2), Duration::from_millis(50))
        .with_operation_timeout(Duration::from_secs(60))
}

/// A plain SDK client on the test server, for looking at (and tampering
/// with) the bucket directly.
pub fn raw_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "tidemark-tests",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Creates `bucket` if it does not exist.
pub async fn ensure_bucket(endpoint: &str, bucket: &str) {
    let client = raw_client(endpoint);
    if client.head_bucket().bucket(bucket).send().await.is_ok() {
        return;
    }
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => {}
        Err(err) => {
            let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&err).map(str::to_string);
            assert!(
                matches!(
                    code.as_deref(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ),
                "could not create the test bucket {bucket}: {err:?}"
            );
        }
    }
}

/// Opens handles on one fresh prefix, each with its own client (and the
/// factory's clock, if it has one).
pub struct S3Factory {
    pub config: S3Config,
    pub clock: Option<Arc<dyn Clock>>,
}

#[async_trait]
impl BackendFactory for S3Factory {
    type Backend = S3Backend;

    async fn open_handle(&self) -> S3Backend {
        let mut builder = S3Backend::builder(self.config.clone());
        if let Some(clock) = &self.clock {
            builder = builder.with_clock(Arc::clone(clock));
        }
        builder
            .build()
            .await
            .expect("opening a handle on the test bucket")
    }
}

/// A factory on a fresh prefix, or `None` outside CI without a server.
pub async fn make_factory(test_name: &str) -> Option<S3Factory> {
    let endpoint = test_endpoint(test_name)?;
    let bucket = format!("tm-{}", uuid::Uuid::new_v4().simple());
    ensure_bucket(&endpoint, &bucket).await;
    Some(S3Factory {
        config: config_for(&endpoint, &bucket, &fresh_prefix("t")),
        clock: None,
    })
}

/// A factory whose handles use `clock` and `grace`.
pub async fn make_factory_with_clock(
    test_name: &str,
    clock: Arc<dyn Clock>,
    grace: Duration,
) -> Option<S3Factory> {
    let mut factory = make_factory(test_name).await?;
    factory.config = factory.config.with_grace_period(grace);
    factory.clock = Some(clock);
    Some(factory)
}

pub mod calls;
pub mod stub;
