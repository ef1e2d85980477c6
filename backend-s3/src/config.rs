//! Configuration of the S3 backend: plain serde data with `Default`, built
//! from the environment, a URL, or `with_*` calls, and turned into a backend
//! by the fallible [`S3Config::build`]. Components that are not settings
//! (the clock) are given to [`S3BackendBuilder`](crate::S3BackendBuilder).
//!
//! Fields are set only through `with_*` (and read through methods of the
//! same names), as in `PostgresConfig`; see
//! `docs/decisions/070-config-settings-and-components.md`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidemark_storage_types::{BackendError, DeterminateKind};

use crate::S3Backend;
use crate::names;

/// How long a writer waits, by default, for another multi-shard append's
/// undecided intent before aborting that append.
pub const DEFAULT_INTENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The URL query parameters [`S3Config::from_url`] reads.
pub const URL_PARAMETERS: &[&str] = &[
    "endpoint",
    "region",
    "path_style",
    "part_size_bytes",
    "grace_period",
    "commit_log",
];

/// The smallest part size accepted, in bytes.
pub const MIN_PART_SIZE_BYTES: usize = 1024;

/// The default bound on the decoded part bytes one streamed snapshot holds
/// ([`S3Config::with_read_memory_bytes`]).
pub const DEFAULT_READ_MEMORY_BYTES: usize = 384 << 20;

/// The least read memory accepted: a window must hold some entries.
pub const MIN_READ_MEMORY_BYTES: usize = 4096;

/// The default largest encoded batch an append stores inline in the shard
/// state (decision 064).
pub const DEFAULT_INLINE_BATCH_BYTES: usize = 4 << 10;

/// The default bound on the encoded bytes of all the inline batches of one
/// shard state (decision 064).
pub const DEFAULT_INLINE_STATE_BYTES: usize = 64 << 10;

/// Credentials given explicitly instead of the standard chain. `Debug`
/// never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// A session token, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How to reach a bucket and how to lay shards out in it.
///
/// ```
/// use std::time::Duration;
/// use tidemark_backend_s3::S3Config;
/// let config = S3Config::new("my-bucket")
///     .with_prefix("tidemark/prod")
///     .with_endpoint("http://127.0.0.1:9000")
///     .with_path_style(true)
///     .with_grace_period(Duration::from_secs(600));
/// assert_eq!(config.bucket(), "my-bucket");
/// let from_url = S3Config::from_url("s3://my-bucket/tidemark/prod?endpoint=http://127.0.0.1:9000&path_style=true&part_size_bytes=65536").unwrap();
/// assert_eq!(from_url.prefix(), "tidemark/prod");
/// assert_eq!(from_url.part_size_bytes(), 65536);
/// assert!(S3Config::from_url("s3://b/p?colour=blue").unwrap_err().to_string().contains("colour"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The bucket. It must exist.
    pub(crate) bucket: String,
    /// Key prefix under which everything is stored (may be empty).
    pub(crate) prefix: String,
    /// A custom endpoint (an S3-compatible server); `None` for AWS.
    pub(crate) endpoint: Option<String>,
    /// The region; `None` takes it from the standard chain, then `us-east-1`.
    pub(crate) region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible servers need.
    pub(crate) path_style: bool,
    /// Explicit credentials; `None` uses the standard chain (environment,
    /// profile, web identity, container and instance metadata).
    pub(crate) credentials: Option<S3Credentials>,
    /// How long to wait for a connection.
    pub(crate) connect_timeout: Duration,
    /// How long one request may take in all.
    pub(crate) operation_timeout: Duration,
    /// Attempts per request made by the SDK itself (1 = no SDK retries:
    /// retry policy belongs to the caller).
    pub(crate) max_attempts: u32,
    /// How long an unreferenced batch part is kept before it is deleted.
    /// Must exceed the time a reader may hold an old state and the time an
    /// append takes, and the clock skew between processes.
    pub(crate) grace_period: Duration,
    /// Batches larger than this are split into parts of about this size.
    pub(crate) part_size_bytes: usize,
    /// Parts fetched or written at once.
    pub(crate) concurrency: usize,
    /// The decoded part bytes a streamed snapshot may hold at once; one
    /// whose runs would need more is read in row windows (decision 119).
    pub(crate) read_memory_bytes: usize,
    /// An append whose encoded batch is at most this many bytes stores it
    /// inline in the shard state (0: never).
    pub(crate) inline_batch_bytes: usize,
    /// The inline batches of one state hold at most this many encoded
    /// bytes; an append that would pass it writes a part object instead.
    pub(crate) inline_state_bytes: usize,
    /// First delay between polls of a shard's upper.
    pub(crate) poll_interval_min: Duration,
    /// Longest delay between polls of a shard's upper.
    pub(crate) poll_interval_max: Duration,
    /// How long a writer that finds another multi-shard append's undecided
    /// intent on a shard waits for that append to decide before aborting
    /// it (what a writer that crashed mid-append costs the next one).
    pub(crate) intent_timeout: Duration,
    /// Whether this handle commits appends through the shared commit log
    /// (`PREFIX/log/`), so one conditional PUT commits many appends across
    /// shards (decision 118). Shards it creates or appends to are in log
    /// mode; shards already in log mode stay so whatever this says.
    pub(crate) commit_log: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            path_style: false,
            credentials: None,
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            max_attempts: 1,
            grace_period: Duration::from_secs(15 * 60),
            part_size_bytes: 8 << 20,
            concurrency: 16,
            read_memory_bytes: DEFAULT_READ_MEMORY_BYTES,
            inline_batch_bytes: DEFAULT_INLINE_BATCH_BYTES,
            inline_state_bytes: DEFAULT_INLINE_STATE_BYTES,
            poll_interval_min: Duration::from_millis(5),
            poll_interval_max: Duration::from_millis(500),
            intent_timeout: DEFAULT_INTENT_TIMEOUT,
            commit_log: false,
        }
    }
}

fn invalid(message: String) -> BackendError {
    BackendError::determinate(DeterminateKind::InvalidConfig, message)
}

fn parse_part_size(name: &str, value: &str) -> Result<usize, BackendError> {
    match value.parse::<usize>() {
        Ok(bytes) if bytes >= MIN_PART_SIZE_BYTES => Ok(bytes),
        _ => Err(invalid(format!(
            "{name} must be a number of bytes of at least {MIN_PART_SIZE_BYTES}: value={value:?}"
        ))),
    }
}

fn parse_seconds(name: &str, value: &str) -> Result<Duration, BackendError> {
    match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && (0.0..=1e9).contains(&seconds) => {
            Ok(Duration::from_secs_f64(seconds))
        }
        _ => Err(invalid(format!(
            "{name} must be a non-negative number of seconds: value={value:?}"
        ))),
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool, BackendError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(format!(
            "{name} must be true or false: value={value:?}"
        ))),
    }
}

impl S3Config {
    /// Defaults for `bucket`.
    #[must_use]
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            ..S3Config::default()
        }
    }

    /// Reads `TIDEMARK_S3_BUCKET`, `TIDEMARK_S3_PREFIX`,
    /// `TIDEMARK_S3_ENDPOINT`, `TIDEMARK_S3_REGION` and
    /// `TIDEMARK_S3_PATH_STYLE`; unset variables keep their defaults.
    /// Credentials come from the standard chain (`AWS_ACCESS_KEY_ID`, ...).
    ///
    /// # Errors
    ///
    /// `Determinate(InvalidConfig)` if `TIDEMARK_S3_PATH_STYLE` is not a
    /// boolean.
    pub fn from_env() -> Result<Self, BackendError> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let mut config = S3Config::default();
        if let Some(bucket) = var("TIDEMARK_S3_BUCKET") {
            config.bucket = bucket;
        }
        if let Some(prefix) = var("TIDEMARK_S3_PREFIX") {
            config.prefix = prefix;
        }
        config.endpoint = var("TIDEMARK_S3_ENDPOINT");
        config.region = var("TIDEMARK_S3_REGION");
        if let Some(path_style) = var("TIDEMARK_S3_PATH_STYLE") {
            config.path_style = parse_bool("TIDEMARK_S3_PATH_STYLE", &path_style)?;
        }
        Ok(config)
    }

    /// Parses `s3://BUCKET/PREFIX?endpoint=URL&region=NAME&path_style=BOOL`,
    /// with the tuning parameters `part_size_bytes=BYTES` (at least
    /// [`MIN_PART_SIZE_BYTES`]), `grace_period=SECONDS` (fractions
    /// allowed) and `commit_log=BOOL` ([`S3Config::with_commit_log`]):
    /// every parameter in [`URL_PARAMETERS`].
    ///
    /// # Errors
    ///
    /// `Determinate(InvalidConfig)` for a malformed URL, another scheme, a
    /// missing bucket, a bad value (naming the parameter), or unknown
    /// parameters (all of them named).
    pub fn from_url(url: &str) -> Result<Self, BackendError> {
        // SUBTLE: errors quote the url only once it is known to carry no
        // user name or password (an s3 url has no place for credentials).
        let parsed = url::Url::parse(url).map_err(|err| {
            let shown = if url.contains('@') {
                "<not shown: it contains '@'>".to_string()
            } else {
                names::shown(url)
            };
            invalid(format!("malformed s3 url: error={err} url={shown}"))
        })?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "s3 urls carry no credentials: give them through the standard chain or S3Config::with_credentials (url not shown)"
                    .to_string(),
            ));
        }
        if parsed.scheme() != "s3" {
            return Err(invalid(format!(
                "s3 url must start with s3://: scheme={:?}",
                parsed.scheme()
            )));
        }
        let bucket = parsed.host_str().unwrap_or_default();
        if bucket.is_empty() {
            return Err(invalid(format!(
                "s3 url names no bucket: url={}",
                names::shown(url)
            )));
        }
        if names::url_path_has_dot_segment(url) {
            return Err(invalid(format!(
                "s3 prefix is not valid: it must not contain a '.' or '..' segment: url={}",
                names::shown(url)
            )));
        }
        let mut config = S3Config::new(bucket);
        config.prefix = parsed.path().trim_matches('/').to_string();
        let mut unknown = Vec::new();
        for (name, value) in parsed.query_pairs() {
            match name.as_ref() {
                "endpoint" => config.endpoint = Some(value.into_owned()),
                "region" => config.region = Some(value.into_owned()),
                "path_style" => config.path_style = parse_bool("path_style", &value)?,
                "part_size_bytes" => {
                    config.part_size_bytes = parse_part_size("part_size_bytes", &value)?;
                }
                "grace_period" => config.grace_period = parse_seconds("grace_period", &value)?,
                "commit_log" => config.commit_log = parse_bool("commit_log", &value)?,
                _ => unknown.push(name.escape_debug().to_string()),
            }
        }
        if !unknown.is_empty() {
            return Err(invalid(format!(
                "unknown s3 url parameters: unknown={} known={}",
                unknown.join(","),
                URL_PARAMETERS.join(",")
            )));
        }
        config.validate_names()?;
        Ok(config)
    }

    /// Sets the bucket.
    #[must_use]
    pub fn with_bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// Sets the key prefix.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets a custom endpoint.
    #[must_use]
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the region.
    #[must_use]
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Chooses path-style addressing.
    #[must_use]
    pub fn with_path_style(mut self, path_style: bool) -> Self {
        self.path_style = path_style;
        self
    }

    /// Uses these credentials instead of the standard chain.
    #[must_use]
    pub fn with_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some(S3Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        });
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the whole-request timeout.
    #[must_use]
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets the SDK's attempts per request.
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the grace period before unreferenced parts are deleted.
    #[must_use]
    pub fn with_grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// Sets the part size.
    #[must_use]
    pub fn with_part_size_bytes(mut self, bytes: usize) -> Self {
        self.part_size_bytes = bytes;
        self
    }

    /// Sets how many parts are fetched or written at once.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets the decoded part bytes one streamed snapshot may hold at once
    /// (default [`DEFAULT_READ_MEMORY_BYTES`]). A snapshot whose runs, each
    /// holding the part being merged and the one fetched ahead, would need
    /// more (a shard of many appended batches) is read in row windows of a
    /// quarter of this many entry bytes instead, one download of its parts
    /// per window (decision 119).
    #[must_use]
    pub fn with_read_memory_bytes(mut self, bytes: usize) -> Self {
        self.read_memory_bytes = bytes;
        self
    }

    /// Sets the largest encoded batch an append stores inline in the shard
    /// state (0 stores none inline) and the bound on the inline bytes of
    /// one state.
    #[must_use]
    pub fn with_inline_bytes(mut self, batch_bytes: usize, state_bytes: usize) -> Self {
        self.inline_batch_bytes = batch_bytes;
        self.inline_state_bytes = state_bytes;
        self
    }

    /// Sets the bounds of the upper-poll backoff.
    #[must_use]
    pub fn with_poll_interval(mut self, min: Duration, max: Duration) -> Self {
        self.poll_interval_min = min;
        self.poll_interval_max = max;
        self
    }

    /// Sets how long a writer waits for another multi-shard append's
    /// undecided intent before aborting that append (default
    /// [`DEFAULT_INTENT_TIMEOUT`]). Zero aborts at once: always safe, but
    /// concurrent multi-shard appends on the same shards then abort each
    /// other more often.
    #[must_use]
    pub fn with_intent_timeout(mut self, timeout: Duration) -> Self {
        self.intent_timeout = timeout;
        self
    }

    /// How long a writer waits for an undecided multi-shard append.
    #[must_use]
    pub fn intent_timeout(&self) -> Duration {
        self.intent_timeout
    }

    /// Commits this handle's appends through the shared commit log
    /// (default off): concurrent appends of this handle, to any shards, are
    /// packed into one log entry written by one conditional PUT, and a
    /// multi-shard append costs one conditional PUT like a single-shard
    /// one. Shards this handle creates or appends to are put in log mode;
    /// a shard in log mode is read and written through the log by every
    /// handle, whatever its setting (decision 118).
    #[must_use]
    pub fn with_commit_log(mut self, commit_log: bool) -> Self {
        self.commit_log = commit_log;
        self
    }

    /// Whether this handle commits through the commit log.
    #[must_use]
    pub fn commit_log(&self) -> bool {
        self.commit_log
    }

    /// The bucket.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix under which everything is stored (may be empty).
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The custom endpoint, if any (`None` for AWS).
    #[must_use]
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The region, if set (otherwise the standard chain, then `us-east-1`).
    #[must_use]
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// Whether path-style addressing is used.
    #[must_use]
    pub fn path_style(&self) -> bool {
        self.path_style
    }

    /// The explicit credentials, if any (otherwise the standard chain).
    #[must_use]
    pub fn credentials(&self) -> Option<&S3Credentials> {
        self.credentials.as_ref()
    }

    /// How long to wait for a connection.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long one request may take in all.
    #[must_use]
    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout
    }

    /// Attempts per request made by the SDK itself.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// How long an unreferenced batch part is kept before it is deleted.
    #[must_use]
    pub fn grace_period(&self) -> Duration {
        self.grace_period
    }

    /// The size batches are split into parts of.
    #[must_use]
    pub fn part_size_bytes(&self) -> usize {
        self.part_size_bytes
    }

    /// How many parts are fetched or written at once.
    #[must_use]
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The decoded part bytes one streamed snapshot may hold at once.
    #[must_use]
    pub fn read_memory_bytes(&self) -> usize {
        self.read_memory_bytes
    }

    /// The largest encoded batch stored inline in the shard state, and the
    /// bound on the inline bytes of one state.
    #[must_use]
    pub fn inline_bytes(&self) -> (usize, usize) {
        (self.inline_batch_bytes, self.inline_state_bytes)
    }

    /// The first and the longest delay between polls of a shard's upper.
    #[must_use]
    pub fn poll_interval(&self) -> (Duration, Duration) {
        (self.poll_interval_min, self.poll_interval_max)
    }

    /// Checks the settings that need no network.
    ///
    /// # Errors
    ///
    /// `Determinate(InvalidConfig)` naming the bad setting.
    pub fn validate(&self) -> Result<(), BackendError> {
        self.validate_names()?;
        if self.max_attempts == 0 {
            return Err(invalid(
                "max_attempts must be at least 1: max_attempts=0".to_string(),
            ));
        }
        if self.part_size_bytes < MIN_PART_SIZE_BYTES {
            return Err(invalid(format!(
                "part_size_bytes must be at least {MIN_PART_SIZE_BYTES}: part_size_bytes={}",
                self.part_size_bytes
            )));
        }
        if self.concurrency == 0 {
            return Err(invalid(
                "concurrency must be at least 1: concurrency=0".to_string(),
            ));
        }
        if self.read_memory_bytes < MIN_READ_MEMORY_BYTES {
            return Err(invalid(format!(
                "read_memory_bytes must be at least {MIN_READ_MEMORY_BYTES}: read_memory_bytes={}",
                self.read_memory_bytes
            )));
        }
        if self.inline_batch_bytes > self.inline_state_bytes {
            return Err(invalid(format!(
                "inline batch bytes must be at most the inline state bytes: inline_batch_bytes={} inline_state_bytes={}",
                self.inline_batch_bytes, self.inline_state_bytes
            )));
        }
        if self.poll_interval_min.is_zero() || self.poll_interval_max < self.poll_interval_min {
            return Err(invalid(format!(
                "poll intervals must satisfy 0 < min <= max: min={:?} max={:?}",
                self.poll_interval_min, self.poll_interval_max
            )));
        }
        Ok(())
    }

    /// The bucket, prefix, region and endpoint rules (decision 083).
    fn validate_names(&self) -> Result<(), BackendError> {
        names::validate_bucket(&self.bucket)?;
        names::validate_prefix(&self.prefix)?;
        if let Some(region) = &self.region {
            names::validate_region(region)?;
        }
        if let Some(endpoint) = &self.endpoint {
            names::validate_endpoint(endpoint)?;
        }
        Ok(())
    }

    /// Connects, checks that the bucket is reachable and that it enforces
    /// conditional writes, and returns the backend.
    ///
    /// # Errors
    ///
    /// - `Determinate(InvalidConfig)` for a bad setting.
    /// - `Determinate(NotFound)` if the bucket does not exist.
    /// - `Determinate(Unauthorized)` if the credentials are refused.
    /// - `Determinate(Unavailable)` if the endpoint cannot be reached.
    /// - `Determinate(Unsupported)` if the store ignores conditional writes
    ///   (appends would not be safe).
    /// - `Indeterminate` for timeouts and server errors.
    pub async fn build(self) -> Result<S3Backend, BackendError> {
        S3Backend::builder(self).build().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_unknown_parameters_are_named() {
        let config = S3Config::from_url(
            "s3://bucket/a/b/?endpoint=http://h:1&region=eu-west-1&path_style=true",
        )
        .unwrap();
        assert_eq!(config.bucket, "bucket");
        assert_eq!(config.prefix, "a/b");
        assert_eq!(config.endpoint.as_deref(), Some("http://h:1"));
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert!(config.path_style);

        let err = S3Config::from_url("s3://bucket/p?colour=red&size=2&region=x").unwrap_err();
        assert_eq!(err.determinate_kind(), Some(DeterminateKind::InvalidConfig));
        let text = err.to_string();
        assert!(
            text.ends_with(
                "unknown s3 url parameters: unknown=colour,size known=endpoint,region,path_style,part_size_bytes,grace_period,commit_log"
            ),
            "{text}"
        );

        for bad in [
            "http://bucket/p",
            "s3:///p",
            "not a url",
            "s3://b/p?path_style=maybe",
        ] {
            let err = S3Config::from_url(bad).unwrap_err();
            assert_eq!(
                err.determinate_kind(),
                Some(DeterminateKind::InvalidConfig),
                "{bad}"
            );
        }
    }

    #[test]
    fn tuning_parameters_parse_and_bad_values_are_named() {
        let config = S3Config::from_url(
            "s3://b/p?part_size_bytes=1048576&grace_period=90.5&commit_log=true",
        )
        .unwrap();
        assert_eq!(config.part_size_bytes(), 1 << 20);
        assert!(config.commit_log());
        assert_eq!(config.grace_period(), Duration::from_millis(90_500));
        let defaults = S3Config::from_url("s3://b/p").unwrap();
        assert_eq!(defaults, S3Config::new("b").with_prefix("p"));
        for (url, named) in [
            ("s3://b/p?part_size_bytes=1023", "part_size_bytes"),
            ("s3://b/p?part_size_bytes=big", "part_size_bytes"),
            ("s3://b/p?grace_period=-1", "grace_period"),
            ("s3://b/p?grace_period=soon", "grace_period"),
            ("s3://b/p?grace_period=inf", "grace_period"),
            ("s3://b/p?commit_log=often", "commit_log"),
        ] {
            let err = S3Config::from_url(url).unwrap_err();
            assert_eq!(err.determinate_kind(), Some(DeterminateKind::InvalidConfig));
            let text = err.to_string();
            assert!(
                text.contains(named) && text.contains("value="),
                "{url}: {text}"
            );
        }
    }

    #[test]
    fn settings_are_plain_serde_data() {
        let config = S3Config::new("b")
            .with_prefix("p")
            .with_part_size_bytes(4096);
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<S3Config>(&json).unwrap(), config);
        let partial: S3Config = serde_json::from_str(r#"{"bucket":"b"}"#).unwrap();
        assert_eq!(partial, S3Config::new("b"));
        let err = serde_json::from_str::<S3Config>(r#"{"bucket":"b","clock":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `clock`"), "{err}");
    }

    #[test]
    fn validation_names_the_setting() {
        assert!(S3Config::new("b").validate().is_ok());
        let cases = [
            (S3Config::default(), "bucket is not set"),
            (S3Config::new("b").with_max_attempts(0), "max_attempts"),
            (
                S3Config::new("b").with_part_size_bytes(10),
                "part_size_bytes",
            ),
            (S3Config::new("b").with_concurrency(0), "concurrency"),
            (
                S3Config::new("b").with_read_memory_bytes(100),
                "read_memory_bytes must be at least 4096: read_memory_bytes=100",
            ),
            (
                S3Config::new("b").with_inline_bytes(2048, 1024),
                "inline_batch_bytes=2048 inline_state_bytes=1024",
            ),
            (
                S3Config::new("b")
                    .with_poll_interval(Duration::from_secs(2), Duration::from_secs(1)),
                "poll intervals",
            ),
        ];
        for (config, expected) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn credentials_are_redacted() {
        let config = S3Config::new("b").with_credentials("AKID", "very-secret");
        let text = format!("{config:?}");
        assert!(
            text.contains("AKID") && !text.contains("very-secret"),
            "{text}"
        );
    }
}
