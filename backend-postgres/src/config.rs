//! Configuration of a [`PostgresBackend`](crate::PostgresBackend): plain
//! serde data with a [`Default`], built from code (`with_*`), the
//! environment ([`PostgresConfig::from_env`]) or a URL
//! ([`PostgresConfig::from_url`]).
//!
//! Fields are set only through `with_*` (and read through methods of the
//! same names), as in `S3Config`; see
//! `docs/decisions/070-config-settings-and-components.md`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use tidemark_storage_types::{BackendError, DeterminateKind};

/// The schema used when none is configured.
pub const DEFAULT_SCHEMA: &str = "tidemark";

/// The longest schema name accepted. The schema name is also part of the
/// notification channel name, which PostgreSQL limits to 63 bytes.
pub const MAX_SCHEMA_LEN: usize = 48;

/// The URL query parameters [`PostgresConfig::from_url`] reads itself (and
/// removes before handing the URL to the driver).
pub const URL_PARAMETERS: &[&str] = &["schema", "pool_size", "connect_timeout", "copy_threshold"];

/// libpq parameters passed through to the driver.
pub const DRIVER_URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
    "statement-cache-capacity",
];

/// Settings of a [`PostgresBackend`](crate::PostgresBackend).
///
/// ```
/// use std::time::Duration;
/// use tidemark_backend_postgres::PostgresConfig;
/// let config = PostgresConfig::new("postgres://postgres@127.0.0.1:5432/test")
///     .with_schema("orders")
///     .with_pool_size(4)
///     .with_connect_timeout(Duration::from_secs(2));
/// assert_eq!(config.schema(), "orders");
/// assert!(config.validate().is_ok());
/// assert!(config.clone().with_schema("Robert'); DROP TABLE x;--").validate().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// A `postgres://` connection URL (driver parameters such as `sslmode`
    /// allowed; tidemark parameters are read by [`from_url`](Self::from_url)).
    pub(crate) url: String,
    /// The schema holding tidemark's tables: lowercase letters, digits and
    /// `_`, starting with a letter or `_`, at most [`MAX_SCHEMA_LEN`] bytes,
    /// not starting with `pg_`.
    pub(crate) schema: String,
    /// The most connections the pool opens (the notification listener uses
    /// one more, once something waits for an upper).
    pub(crate) pool_size: u32,
    /// How long connecting (or waiting for a pooled connection) may take
    /// before the operation fails as unavailable.
    pub(crate) connect_timeout: Duration,
    /// Appends of at least this many updates are written with `COPY` inside
    /// a transaction; smaller ones with one `UNNEST` statement.
    pub(crate) copy_threshold: usize,
    /// Appends of at least this many updates are stored as rows of
    /// `update_batches` (parallel arrays, one index entry per
    /// [`BATCH_MAX_UPDATES`](crate::schema::BATCH_MAX_UPDATES) updates)
    /// instead of one `updates` row each; `usize::MAX` keeps every update
    /// in row form.
    pub(crate) batch_threshold: usize,
    /// The most streamed reads open at once on this backend (each holds a
    /// pooled connection until it ends or is dropped); `None` for half the
    /// pool, at least one.
    pub(crate) max_open_streams: Option<u32>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".to_string(),
            schema: DEFAULT_SCHEMA.to_string(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            copy_threshold: 2_000,
            batch_threshold: 2_000,
            max_open_streams: None,
        }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_password(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("copy_threshold", &self.copy_threshold)
            .field("batch_threshold", &self.batch_threshold)
            .field("max_open_streams", &self.max_open_streams)
            .finish()
    }
}

impl PostgresConfig {
    /// The default settings with the given connection URL (taken as it is;
    /// use [`from_url`](Self::from_url) to read tidemark parameters from it).
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            ..PostgresConfig::default()
        }
    }

    /// Settings from the environment: `TIDEMARK_POSTGRES_URL` (required; may
    /// carry tidemark parameters), and optionally `TIDEMARK_POSTGRES_SCHEMA`,
    /// `TIDEMARK_POSTGRES_POOL_SIZE`, `TIDEMARK_POSTGRES_CONNECT_TIMEOUT`
    /// (seconds, fractions allowed), which override the URL's parameters.
    ///
    /// # Errors
    ///
    /// `Determinate(InvalidConfig)` naming the variable when one is missing
    /// or malformed.
    pub fn from_env() -> Result<Self, BackendError> {
        let url = std::env::var("TIDEMARK_POSTGRES_URL")
            .map_err(|_| invalid_config("environment variable TIDEMARK_POSTGRES_URL is not set"))?;
        let mut config = PostgresConfig::from_url(&url)?;
        if let Ok(schema) = std::env::var("TIDEMARK_POSTGRES_SCHEMA") {
            config.schema = schema;
        }
        if let Ok(pool_size) = std::env::var("TIDEMARK_POSTGRES_POOL_SIZE") {
            config.pool_size = parse_pool_size("TIDEMARK_POSTGRES_POOL_SIZE", &pool_size)?;
        }
        if let Ok(timeout) = std::env::var("TIDEMARK_POSTGRES_CONNECT_TIMEOUT") {
            config.connect_timeout = parse_seconds("TIDEMARK_POSTGRES_CONNECT_TIMEOUT", &timeout)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Settings from a `postgres://` (or `postgresql://`) URL. The tidemark
    /// parameters `schema`, `pool_size`, `connect_timeout` (seconds) and
    /// `copy_threshold` are read and removed; the libpq parameters in
    /// [`DRIVER_URL_PARAMETERS`] (`sslmode`, ...) are passed to the driver.
    ///
    /// ```
    /// use tidemark_backend_postgres::PostgresConfig;
    /// let config = PostgresConfig::from_url(
    ///     "postgres://postgres@localhost/test?schema=orders&pool_size=3&sslmode=disable",
    /// )
    /// .unwrap();
    /// assert_eq!(config.schema(), "orders");
    /// assert_eq!(config.pool_size(), 3);
    /// assert_eq!(config.url(), "postgres://postgres@localhost/test?sslmode=disable");
    /// let err = PostgresConfig::from_url("postgres://localhost/test?shcema=x&colour=1").unwrap_err();
    /// assert!(err.to_string().contains("unknown=shcema,colour"));
    /// ```
    ///
    /// # Errors
    ///
    /// `Determinate(InvalidConfig)` naming what was wrong: not a URL, another
    /// scheme, unknown parameters (all of them named), a malformed value, an
    /// invalid schema.
    pub fn from_url(url: &str) -> Result<Self, BackendError> {
        // SUBTLE: before parsing, which drops tabs and newlines silently.
        validate_url_text(url)?;
        let mut parsed = url::Url::parse(url).map_err(|err| {
            invalid_config(format!(
                "not a postgres url: {err}: url={}",
                redact_password(url)
            ))
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(invalid_config(format!(
                "url scheme must be postgres or postgresql: scheme={}",
                parsed.scheme()
            )));
        }
        let mut config = PostgresConfig::default();
        let mut driver_pairs = Vec::new();
        let mut unknown = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "schema" => config.schema = value.to_string(),
                "pool_size" => config.pool_size = parse_pool_size("pool_size", &value)?,
                "connect_timeout" => {
                    config.connect_timeout = parse_seconds("connect_timeout", &value)?;
                }
                "copy_threshold" => {
                    config.copy_threshold = value.parse().map_err(|_| {
                        invalid_config(format!(
                            "url parameter copy_threshold must be a count of updates: value={value}"
                        ))
                    })?;
                }
                known if DRIVER_URL_PARAMETERS.contains(&known) => {
                    driver_pairs.push((key.to_string(), value.to_string()));
                }
                _ => unknown.push(key.escape_debug().to_string()),
            }
        }
        if !unknown.is_empty() {
            return Err(invalid_config(format!(
                "unknown postgres url parameters: unknown={} known={} driver={}",
                unknown.join(","),
                URL_PARAMETERS.join(","),
                DRIVER_URL_PARAMETERS.join(",")
            )));
        }
        if driver_pairs.is_empty() {
            parsed.set_query(None);
        } else {
            parsed
                .query_pairs_mut()
                .clear()
                .extend_pairs(driver_pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        config.url = parsed.to_string();
        config.validate()?;
        Ok(config)
    }

    /// Sets the connection URL (taken as it is).
    #[must_use]
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Sets the schema name.
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the most connections of the pool.
    #[must_use]
    pub fn with_pool_size(mut self, pool_size: u32) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets the size from which appends are written with `COPY`.
    #[must_use]
    pub fn with_copy_threshold(mut self, copy_threshold: usize) -> Self {
        self.copy_threshold = copy_threshold;
        self
    }

    /// Sets the size from which appends are stored as batch rows
    /// (`usize::MAX`: never).
    #[must_use]
    pub fn with_batch_threshold(mut self, batch_threshold: usize) -> Self {
        self.batch_threshold = batch_threshold;
        self
    }

    /// Sets the most streamed reads open at once (at least 1, at most the
    /// pool size).
    #[must_use]
    pub fn with_max_open_streams(mut self, max_open_streams: u32) -> Self {
        self.max_open_streams = Some(max_open_streams);
        self
    }

    /// The connection URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema holding tidemark's tables.
    #[must_use]
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The most connections the pool opens.
    #[must_use]
    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }

    /// How long connecting may take.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The size from which appends are written with `COPY`.
    #[must_use]
    pub fn copy_threshold(&self) -> usize {
        self.copy_threshold
    }

    /// The size from which appends are stored as batch rows.
    #[must_use]
    pub fn batch_threshold(&self) -> usize {
        self.batch_threshold
    }

    /// The most streamed reads open at once: the configured number, or half
    /// the pool (at least one). Each open stream holds a pooled connection,
    /// so the rest of the pool stays for writes and other reads.
    #[must_use]
    pub fn max_open_streams(&self) -> u32 {
        self.max_open_streams
            .unwrap_or_else(|| (self.pool_size / 2).max(1))
    }

    /// Checks the settings without connecting.
    ///
    /// # Errors
    ///
    /// `Determinate(InvalidConfig)` naming the setting that is wrong.
    pub fn validate(&self) -> Result<(), BackendError> {
        validate_schema_name(&self.schema)?;
        validate_url_text(&self.url)?;
        if self.pool_size == 0 {
            return Err(invalid_config("pool_size must be at least 1: pool_size=0"));
        }
        if let Some(max_open_streams) = self.max_open_streams
            && (max_open_streams == 0 || max_open_streams > self.pool_size)
        {
            return Err(invalid_config(format!(
                "max_open_streams must be at least 1 and at most pool_size (each open stream holds a connection): max_open_streams={max_open_streams} pool_size={}",
                self.pool_size
            )));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid_config(
                "connect_timeout must be positive: connect_timeout=0",
            ));
        }
        self.connect_options().map(|_| ())
    }

    /// The driver's connect options: the URL's, with `search_path` set to
    /// the schema as a startup parameter (no SQL text involved).
    pub(crate) fn connect_options(&self) -> Result<PgConnectOptions, BackendError> {
        let options: PgConnectOptions = self.url.parse().map_err(|err| {
            invalid_config(format!(
                "the driver rejected the url: {err}: url={}",
                redact_password(&self.url)
            ))
        })?;
        // SUBTLE: every statement names its tables unqualified and relies on
        // this search_path; the schema name was validated as a plain
        // lowercase identifier, so it needs no quoting here.
        let options = options.options([("search_path", self.schema.as_str())]);
        Ok(match options.get_application_name() {
            Some(_) => options,
            None => options.application_name("tidemark"),
        })
    }
}

/// Checks that `schema` is a plain lowercase SQL identifier tidemark may
/// use as its schema: `[a-z_][a-z0-9_]*`, at most [`MAX_SCHEMA_LEN`] bytes,
/// not starting with `pg_`.
///
/// # Errors
///
/// `Determinate(InvalidConfig)` naming the schema and the rule it breaks.
pub fn validate_schema_name(schema: &str) -> Result<(), BackendError> {
    let problem = if schema.is_empty() {
        Some("must not be empty")
    } else if schema.len() > MAX_SCHEMA_LEN {
        Some("is longer than 48 bytes")
    } else if schema.starts_with("pg_") {
        Some("must not start with pg_ (reserved by postgres)")
    } else if !schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Some("may only contain lowercase letters, digits and _")
    } else if schema.as_bytes()[0].is_ascii_digit() {
        Some("must start with a letter or _")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(invalid_config(format!(
            "invalid schema name: it {problem}: schema={}",
            shown(schema)
        ))),
        None => Ok(()),
    }
}

/// The longest connection URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 8192;

/// Refuses a connection URL that is too long or has a control character
/// (NUL included) anywhere, as text or percent-encoded in its user, password,
/// database or a parameter value: the driver sends these as NUL-terminated
/// strings in the startup message, where such a value would be cut or read
/// as something else. The error names the part, never a password's value.
fn validate_url_text(url: &str) -> Result<(), BackendError> {
    if url.len() > MAX_URL_BYTES {
        return Err(invalid_config(format!(
            "postgres url is longer than {MAX_URL_BYTES} bytes: bytes={}",
            url.len()
        )));
    }
    // SUBTLE: checked on the text first: the URL parser drops tabs and
    // newlines silently.
    if url.chars().any(char::is_control) {
        return Err(invalid_config(
            "postgres url must not contain control characters (url not shown)",
        ));
    }
    let Ok(parsed) = url::Url::parse(url) else {
        // The driver's parse names the problem.
        return Ok(());
    };
    let refused = |part: &str| {
        Err(invalid_config(format!(
            "postgres url {part} must not contain control characters (such as %00)"
        )))
    };
    if has_encoded_control(parsed.username()) {
        return refused("user name");
    }
    if parsed.password().is_some_and(has_encoded_control) {
        return refused("password");
    }
    if has_encoded_control(parsed.path()) {
        return refused("database name");
    }
    for (key, value) in parsed.query_pairs() {
        if key.chars().any(char::is_control) {
            return refused("parameter name");
        }
        if value.chars().any(char::is_control) {
            return refused(&format!("parameter {key}"));
        }
    }
    Ok(())
}

/// Whether percent-decoding `text` gives an ASCII control byte.
fn has_encoded_control(text: &str) -> bool {
    let bytes = text.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    bytes.iter().enumerate().any(|(index, &byte)| {
        let decoded = if byte == b'%' {
            match (bytes.get(index + 1), bytes.get(index + 2)) {
                (Some(&high), Some(&low)) => match (hex(high), hex(low)) {
                    (Some(high), Some(low)) => (high * 16 + low) as u8,
                    _ => byte,
                },
                _ => byte,
            }
        } else {
            byte
        };
        decoded.is_ascii_control()
    })
}

/// `schema` as a quoted SQL identifier. Only ever called on a validated
/// schema name; the quoting doubles any `"` regardless.
pub(crate) fn quote_identifier(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

/// `value` quoted for a message, cut to its first 64 characters.
fn shown(value: &str) -> String {
    const SHOWN_CHARS: usize = 64;
    if value.chars().count() <= SHOWN_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(SHOWN_CHARS).collect();
        format!("{head:?}... ({} bytes)", value.len())
    }
}

pub(crate) fn invalid_config(message: impl Into<String>) -> BackendError {
    BackendError::determinate(DeterminateKind::InvalidConfig, message)
}

fn parse_pool_size(name: &str, value: &str) -> Result<u32, BackendError> {
    match value.parse::<u32>() {
        Ok(size) if size > 0 => Ok(size),
        _ => Err(invalid_config(format!(
            "{name} must be a positive number of connections: value={value}"
        ))),
    }
}

fn parse_seconds(name: &str, value: &str) -> Result<Duration, BackendError> {
    match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds < 86_400.0 => {
            Ok(Duration::from_secs_f64(seconds))
        }
        _ => Err(invalid_config(format!(
            "{name} must be a positive number of seconds: value={value}"
        ))),
    }
}

/// URL parameters whose values are secrets.
const SECRET_PARAMETERS: &[&str] = &["password", "sslpassword"];

/// The URL with any password (in the user info or as a `password`
/// parameter) replaced by `***`, for messages.
pub(crate) fn redact_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            let has_secret = parsed
                .query_pairs()
                .any(|(key, _)| SECRET_PARAMETERS.contains(&&*key));
            if has_secret {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(key, value)| {
                        let value = if SECRET_PARAMETERS.contains(&&*key) {
                            "***".to_string()
                        } else {
                            value.into_owned()
                        };
                        (key.into_owned(), value)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(err: &BackendError) -> Option<DeterminateKind> {
        err.determinate_kind()
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["tidemark", "_x", "a1_b2", &"a".repeat(48)] {
            assert!(validate_schema_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Tidemark",
            "1abc",
            "pg_catalog",
            "a-b",
            "a b",
            "x\"; drop schema public; --",
            "é",
            &"a".repeat(49),
        ] {
            let err = validate_schema_name(bad).unwrap_err();
            assert_eq!(kind(&err), Some(DeterminateKind::InvalidConfig), "{bad}");
            assert!(err.to_string().contains("invalid schema name"), "{err}");
        }
    }

    #[test]
    fn url_parameters_are_read_passed_or_rejected() {
        let config = PostgresConfig::from_url(
            "postgresql://u:secret@h:5433/db?schema=s1&pool_size=2&connect_timeout=0.5&copy_threshold=10&sslmode=prefer&application_name=x",
        )
        .unwrap();
        assert_eq!(config.schema, "s1");
        assert_eq!(config.pool_size, 2);
        assert_eq!(config.connect_timeout, Duration::from_millis(500));
        assert_eq!(config.copy_threshold, 10);
        assert_eq!(
            config.url,
            "postgresql://u:secret@h:5433/db?sslmode=prefer&application_name=x"
        );
        assert!(!format!("{config:?}").contains("secret"));

        let err = PostgresConfig::from_url("postgres://h/db?bogus=1&sslmode=disable&worse=2")
            .unwrap_err();
        assert_eq!(kind(&err), Some(DeterminateKind::InvalidConfig));
        assert!(
            err.to_string().contains(
                "unknown postgres url parameters: unknown=bogus,worse known=schema,pool_size,connect_timeout,copy_threshold driver=sslmode,"
            ),
            "{err}"
        );

        for bad in [
            "postgres://h/db?pool_size=0",
            "postgres://h/db?pool_size=x",
            "postgres://h/db?connect_timeout=-1",
            "postgres://h/db?copy_threshold=many",
            "postgres://h/db?schema=Bad",
            "postgres://h/db?sslmode=sometimes",
            "mysql://h/db",
            "not a url",
        ] {
            let err = PostgresConfig::from_url(bad).unwrap_err();
            assert_eq!(kind(&err), Some(DeterminateKind::InvalidConfig), "{bad}");
        }
    }

    #[test]
    fn control_characters_and_long_urls_are_refused() {
        for (bad, part) in [
            ("postgres://u:pw%00x@h/db", "password"),
            ("postgres://u%0a@h/db", "user name"),
            ("postgres://h/db%00x", "database name"),
            (
                "postgres://h/db?application_name=a%00b",
                "parameter application_name",
            ),
            ("postgres://h/db?options=-c%0Ax", "parameter options"),
            ("postgres://h/d\nb", "control characters (url not shown)"),
            ("postgres://h/db\0", "control characters (url not shown)"),
        ] {
            let err = PostgresConfig::from_url(bad).unwrap_err();
            assert_eq!(kind(&err), Some(DeterminateKind::InvalidConfig), "{bad}");
            assert!(err.to_string().contains(part), "{bad}: {err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
        let long = format!(
            "postgres://h/db?application_name={}",
            "a".repeat(MAX_URL_BYTES)
        );
        let err = PostgresConfig::from_url(&long).unwrap_err();
        assert!(err.to_string().contains("longer than 8192"), "{err}");
        // Percent signs that encode nothing, and non-ASCII, are plain text.
        if let Err(err) =
            PostgresConfig::from_url("postgres://h/db?application_name=100%25%20\u{e9}")
        {
            panic!("{err}");
        }
        let err = validate_schema_name(&"x".repeat(100_000)).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn password_parameters_are_redacted() {
        let url = "postgres://u:top@h/db?password=also-top&sslpassword=third&sslmode=disable";
        let redacted = redact_password(url);
        assert!(
            !redacted.contains("top") && !redacted.contains("third"),
            "{redacted}"
        );
        assert!(redacted.contains("sslmode=disable"), "{redacted}");
        let config = PostgresConfig::new(url);
        assert!(!format!("{config:?}").contains("top"));
    }

    #[test]
    fn settings_are_plain_serde_data() {
        let config = PostgresConfig::new("postgres://h/db").with_pool_size(3);
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<PostgresConfig>(&json).unwrap(),
            config
        );
        let err = serde_json::from_str::<PostgresConfig>(r#"{"url":"postgres://h/db","pool":3}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `pool`"), "{err}");
    }

    #[test]
    fn builder_validates() {
        let config = PostgresConfig::default();
        assert!(config.validate().is_ok());
        assert!(config.clone().with_pool_size(0).validate().is_err());
        assert!(
            config
                .clone()
                .with_connect_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
