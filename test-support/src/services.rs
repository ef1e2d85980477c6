//! The test services (PostgreSQL, an S3 server) reached through a
//! [`FaultProxy`], as [`BackendFactory`]s and backend configurations.
//!
//! Each factory owns one fresh storage location (a Postgres schema, an S3
//! bucket and prefix) and one proxy in front of the service; every handle
//! it opens connects through that proxy. The Postgres schema is dropped
//! when the factory is dropped (directly, not through the proxy).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tidemark_backend_conformance::{BackendFactory, service_env};
use tidemark_backend_postgres::{PostgresBackend, PostgresConfig};
use tidemark_backend_s3::{S3Backend, S3Config};
use tidemark_storage_types::BackendError;

use crate::proxy::{FaultPlan, FaultProxy};
use crate::retrying::{CallerRetries, FailureCounts};

/// The environment variable naming the test PostgreSQL.
pub const POSTGRES_URL_VARIABLE: &str = "TIDEMARK_TEST_POSTGRES_URL";
/// The environment variable naming the test S3 endpoint.
pub const S3_ENDPOINT_VARIABLE: &str = "TIDEMARK_TEST_S3_ENDPOINT";
/// The access key the test S3 servers are configured with.
pub const S3_ACCESS_KEY_ID: &str = "tidemark-test";
/// The secret key the test S3 servers are configured with.
pub const S3_SECRET_ACCESS_KEY: &str = "tidemark-test-secret";

/// How many times opening a handle through a faulty proxy is attempted.
const BUILD_ATTEMPTS: usize = 20;

/// A fresh name for a schema, bucket or prefix.
#[must_use]
pub fn fresh_name(label: &str) -> String {
    format!(
        "{label}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    )
}

/// The loopback address of `url`'s host and port (`default_port` if none).
///
/// # Panics
///
/// If the URL cannot be parsed or names no host: a broken test setup.
pub async fn upstream_of(url: &str, default_port: u16) -> SocketAddr {
    let parsed = url::Url::parse(url).unwrap_or_else(|err| panic!("bad service url {url}: {err}"));
    let host = parsed
        .host_str()
        .unwrap_or_else(|| panic!("service url {url} names no host"));
    let port = parsed.port().unwrap_or(default_port);
    tokio::net::lookup_host((host, port))
        .await
        .unwrap_or_else(|err| panic!("cannot resolve {host}:{port}: {err}"))
        .find(SocketAddr::is_ipv4)
        .unwrap_or_else(|| panic!("{host}:{port} has no IPv4 address"))
}

/// `url` with its host and port replaced by `address`.
///
/// # Panics
///
/// If the URL cannot be parsed: a broken test setup.
#[must_use]
pub fn url_via(url: &str, address: SocketAddr) -> String {
    let mut parsed =
        url::Url::parse(url).unwrap_or_else(|err| panic!("bad service url {url}: {err}"));
    parsed
        .set_host(Some(&address.ip().to_string()))
        .expect("the url takes a host");
    parsed
        .set_port(Some(address.port()))
        .expect("the url takes a port");
    parsed.to_string()
}

/// Builds a backend, retrying while the proxy breaks the attempts.
async fn build_with_retries<B, Fut>(mut build: impl FnMut() -> Fut) -> B
where
    Fut: Future<Output = Result<B, BackendError>>,
{
    let mut last = None;
    for _ in 0..BUILD_ATTEMPTS {
        match build().await {
            Ok(backend) => return backend,
            Err(err) => {
                last = Some(err);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    panic!("could not open a backend through the proxy {BUILD_ATTEMPTS} times: {last:?}")
}

/// PostgreSQL behind a fault proxy, on a fresh schema.
#[derive(Debug)]
pub struct ProxiedPostgres {
    /// The proxy every handle connects through.
    pub proxy: Arc<FaultProxy>,
    /// The configuration of handles (its URL points at the proxy).
    pub config: PostgresConfig,
    /// The server's own URL (for cleanup).
    pub direct_url: String,
    /// Failures the retrying handles met.
    pub counts: Arc<FailureCounts>,
    /// Whether handles may assume no other writer shares their shards
    /// (see [`CallerRetries::single_writer`]).
    pub single_writer: bool,
}

impl ProxiedPostgres {
    /// A proxy with `plan` in front of the test PostgreSQL, or `None` after
    /// a loud SKIPPED line when the service is not configured outside CI.
    pub async fn start(test_name: &str, plan: FaultPlan) -> Option<ProxiedPostgres> {
        let direct_url = service_env(POSTGRES_URL_VARIABLE, test_name)?;
        let upstream = upstream_of(&direct_url, 5432).await;
        let proxy = FaultProxy::start(upstream, plan)
            .await
            .expect("a loopback port for the proxy");
        // Plain text on the wire, so the proxy's triggers can see requests.
        let mut proxied_url =
            url::Url::parse(&url_via(&direct_url, proxy.address())).expect("a valid postgres url");
        if !proxied_url.query_pairs().any(|(name, _)| name == "sslmode") {
            proxied_url
                .query_pairs_mut()
                .append_pair("sslmode", "disable");
        }
        let config = PostgresConfig::from_url(proxied_url.as_str())
            .expect("a valid postgres url")
            .with_schema(fresh_name("proxy"))
            .with_pool_size(4)
            .with_connect_timeout(Duration::from_secs(5));
        Some(ProxiedPostgres {
            proxy: Arc::new(proxy),
            config,
            direct_url,
            counts: Arc::new(FailureCounts::default()),
            single_writer: false,
        })
    }

    /// A plain handle through the proxy (no caller retries).
    pub async fn raw_handle(&self) -> PostgresBackend {
        build_with_retries(|| self.config.clone().build()).await
    }
}

#[async_trait]
impl BackendFactory for ProxiedPostgres {
    type Backend = CallerRetries<PostgresBackend>;

    async fn open_handle(&self) -> Self::Backend {
        let handle = CallerRetries::new(self.raw_handle().await, Arc::clone(&self.counts));
        if self.single_writer {
            handle.single_writer()
        } else {
            handle
        }
    }
}

impl Drop for ProxiedPostgres {
    fn drop(&mut self) {
        let url = self.direct_url.clone();
        let schema = self.config.schema().to_string();
        // Cleanup needs a runtime of its own: this may run on a runtime
        // thread, which must not block on async work.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for schema cleanup");
            runtime.block_on(drop_schema(&url, &schema))
        })
        .join();
        if let Ok(Err(err)) = dropped {
            eprintln!("could not drop test schema {}: {err}", self.config.schema());
        }
    }
}

/// Drops a test schema and everything in it.
///
/// # Errors
///
/// The server could not be reached or refused.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    tidemark_backend_postgres::validate_schema_name(schema)
        .map_err(|err| sqlx::Error::Configuration(err.to_string().into()))?;
    let mut connection = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut connection)
        .await?;
    connection.close().await
}

/// An S3 server behind a fault proxy, on a fresh bucket and prefix.
#[derive(Debug)]
pub struct ProxiedS3 {
    /// The proxy every handle connects through.
    pub proxy: Arc<FaultProxy>,
    /// The configuration of handles (its endpoint is the proxy).
    pub config: S3Config,
    /// The server's own endpoint.
    pub direct_endpoint: String,
    /// Failures the retrying handles met.
    pub counts: Arc<FailureCounts>,
    /// Whether handles may assume no other writer shares their shards
    /// (see [`CallerRetries::single_writer`]).
    pub single_writer: bool,
}

impl ProxiedS3 {
    /// A proxy with `plan` in front of the test S3 server, or `None` after
    /// a loud SKIPPED line when the service is not configured outside CI.
    pub async fn start(test_name: &str, plan: FaultPlan) -> Option<ProxiedS3> {
        let direct_endpoint = service_env(S3_ENDPOINT_VARIABLE, test_name)?;
        let upstream = upstream_of(&direct_endpoint, 80).await;
        let bucket = fresh_name("tm").replace('_', "-");
        create_bucket(&direct_endpoint, &bucket).await;
        let proxy = FaultProxy::start(upstream, plan)
            .await
            .expect("a loopback port for the proxy");
        let config = s3_config(
            &format!("http://{}", proxy.address()),
            &bucket,
            &fresh_name("p"),
        );
        Some(ProxiedS3 {
            proxy: Arc::new(proxy),
            config,
            direct_endpoint,
            counts: Arc::new(FailureCounts::default()),
            single_writer: false,
        })
    }

    /// A plain handle through the proxy (no caller retries).
    pub async fn raw_handle(&self) -> S3Backend {
        build_with_retries(|| self.config.clone().build()).await
    }
}

#[async_trait]
impl BackendFactory for ProxiedS3 {
    type Backend = CallerRetries<S3Backend>;

    async fn open_handle(&self) -> Self::Backend {
        let handle = CallerRetries::new(self.raw_handle().await, Arc::clone(&self.counts));
        if self.single_writer {
            handle.single_writer()
        } else {
            handle
        }
    }
}

/// The S3 configuration the reliability tests use: test credentials, small
/// parts, short polls, and timeouts well above the proxy's stalls.
#[must_use]
pub fn s3_config(endpoint: &str, bucket: &str, prefix: &str) -> S3Config {
    S3Config::new(bucket)
        .with_prefix(prefix)
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_path_style(true)
        .with_credentials(S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY)
        .with_part_size_bytes(64 * 1024)
        .with_poll_interval(Duration::from_millis(2), Duration::from_millis(50))
        .with_connect_timeout(Duration::from_secs(5))
        .with_operation_timeout(Duration::from_secs(20))
}

/// A plain SDK client on an S3 endpoint with the test credentials.
#[must_use]
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            S3_ACCESS_KEY_ID,
            S3_SECRET_ACCESS_KEY,
            None,
            None,
            "tidemark-test-support",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Creates `bucket` on `endpoint` (directly, not through a proxy).
///
/// # Panics
///
/// If the server refuses: a broken test setup.
pub async fn create_bucket(endpoint: &str, bucket: &str) {
    let client = s3_client(endpoint);
    if let Err(err) = client.create_bucket().bucket(bucket).send().await {
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
