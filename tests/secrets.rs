//! Credentials never appear in `Debug`, `Display`, error messages or tracing
//! output. Sentinel secrets (a PostgreSQL password, an S3 secret key and
//! session token) go into URLs and configurations; the tests drive the
//! error paths (refused connections, invalid URLs and parameters, rejected
//! credentials, the operator tools' reports) and a few working operations
//! with every tracing event captured, and scan all of it for the sentinels.

#![cfg(all(feature = "postgres", feature = "s3"))]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tidemark::cli::ToolError;
use tidemark::cli::doctor::{self, DoctorOptions};
use tidemark::cli::inspect;
use tidemark::postgres::{PostgresBackend, PostgresConfig};
use tidemark::s3::S3Config;
use tidemark::types::{PersistBackend, ShardId};
use tidemark_backend_conformance::service_env;

const PG_PASSWORD: &str = "pgSentinelPassword7Q3";
const S3_SECRET: &str = "s3SentinelSecretKey9Z";
const S3_TOKEN: &str = "s3SentinelSessionToken4K";
const SENTINELS: [&str; 3] = [PG_PASSWORD, S3_SECRET, S3_TOKEN];

/// Every tracing event and span of this test binary, at every level.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static CAPTURED: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .with_ansi(false)
            .with_writer(move || CaptureWriter(Arc::clone(&writer)))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other subscriber in this test binary");
        buffer
    })
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a test saw: every text it produced, and the captured tracing.
#[derive(Default)]
struct Seen {
    texts: Vec<(String, String)>,
}

impl Seen {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.texts.push((what.into(), text.into()));
    }

    fn error(&mut self, what: &str, err: &(impl std::fmt::Display + std::fmt::Debug)) {
        self.add(format!("{what} (Display)"), err.to_string());
        self.add(format!("{what} (Debug)"), format!("{err:?}"));
    }

    fn tool_error(&mut self, what: &str, err: &ToolError) {
        self.error(what, err);
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            self.add(format!("{what} (cause)"), cause.to_string());
            source = cause.source();
        }
    }

    /// Fails naming every text that contains a sentinel; the captured
    /// tracing output is scanned too (it must not be empty: the driving
    /// code does emit events, so an empty capture means nothing was seen).
    fn assert_no_secrets(mut self) {
        let tracing = String::from_utf8_lossy(&captured().lock().unwrap()).into_owned();
        assert!(!tracing.is_empty(), "no tracing output was captured");
        self.add("tracing output", tracing);
        let leaks: Vec<String> = self
            .texts
            .iter()
            .flat_map(|(what, text)| {
                SENTINELS
                    .iter()
                    .filter(|secret| text.contains(*secret))
                    .map(move |secret| {
                        let at = text.find(secret).unwrap();
                        let start = text[..at]
                            .char_indices()
                            .rev()
                            .nth(120)
                            .map_or(0, |(i, _)| i);
                        format!(
                            "{what} shows {secret}: ...{}...",
                            &text[start..at + secret.len()]
                        )
                    })
            })
            .collect();
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}

/// Host and port of the test server, from its URL.
fn postgres_server() -> Option<(String, u16)> {
    let url = service_env("TIDEMARK_TEST_POSTGRES_URL", "secrets: postgres server")?;
    let parsed = url::Url::parse(&url).expect("a postgres url");
    Some((
        parsed.host_str().unwrap_or("127.0.0.1").to_string(),
        parsed.port().unwrap_or(5432),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passwords_stay_out_of_errors_debug_and_tracing() {
    captured();
    let mut seen = Seen::default();
    tracing::info!("postgres secrets test starts");
    let refused = [
        format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:1/test?connect_timeout=2"),
        format!("postgres://postgres@127.0.0.1:1/test?password={PG_PASSWORD}&connect_timeout=2"),
        format!("postgresql://postgres:{PG_PASSWORD}@127.0.0.1:1/test?sslmode=disable"),
    ];
    for url in &refused {
        let err = tidemark::open(url).await.map(|_| ()).unwrap_err();
        seen.error("refused connection", &err);
        let config = PostgresConfig::from_url(url).unwrap();
        seen.add("config (Debug)", format!("{config:?}"));
    }
    for url in [
        format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:1/test?bogus=1"),
        format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:1/test?pool_size=none"),
        format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:1/test?schema=Bad"),
        format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:1/test?sslmode=sometimes"),
        format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:notaport/test"),
        format!("postgres://postgres:{PG_PASSWORD}@[::1/test"),
        format!("postgres://postgres:{PG_PASSWORD}%00@127.0.0.1:1/test"),
        format!("postgres://postgres@127.0.0.1:1/te\nst?password={PG_PASSWORD}"),
        format!("postgres://h:notaport/db?password={PG_PASSWORD}"),
        format!("post gres://postgres:{PG_PASSWORD}@127.0.0.1:1/test"),
    ] {
        let err = tidemark::open(&url).await.map(|_| ()).unwrap_err();
        seen.error("invalid url", &err);
        if let Err(err) = PostgresConfig::from_url(&url) {
            seen.error("invalid url (config)", &err);
        }
        seen.add(
            "config (Debug)",
            format!("{:?}", PostgresConfig::new(url.clone())),
        );
        let err = inspect::run(&url).await.unwrap_err();
        seen.tool_error("inspect", &err);
    }
    // The operator tools on a store they cannot reach.
    let err = inspect::run(&refused[0]).await.unwrap_err();
    seen.tool_error("inspect", &err);
    match doctor::run(&refused[0], DoctorOptions { rounds: 1 }).await {
        Ok(report) => {
            seen.add("doctor report", serde_json::to_string(&report).unwrap());
            let mut text = Vec::new();
            doctor::write_text(&report, &mut text).unwrap();
            seen.add("doctor text", String::from_utf8(text).unwrap());
        }
        Err(err) => seen.tool_error("doctor", &err),
    }

    if let Some((host, port)) = postgres_server() {
        // A role that does not exist: the server refuses the credentials.
        let url = format!("postgres://tidemark_no_such_role:{PG_PASSWORD}@{host}:{port}/test");
        let err = tidemark::open(&url).await.map(|_| ()).unwrap_err();
        seen.error("rejected credentials", &err);
        let err = inspect::run(&url).await.unwrap_err();
        seen.tool_error("inspect rejected credentials", &err);
        // The test server trusts local connections, so a password is
        // accepted whatever it is: a working backend carrying the secret.
        let url = format!(
            "postgres://postgres:{PG_PASSWORD}@{host}:{port}/test?schema=tidemark_secrets_test"
        );
        let backend = PostgresBackend::from_url(&url).await.unwrap();
        seen.add("backend (Debug)", format!("{backend:?}"));
        let opened = tidemark::open(&url).await.unwrap();
        let shard = ShardId::new();
        opened.open(shard).await.unwrap();
        let err = opened.snapshot(ShardId::new(), &0).await.unwrap_err();
        seen.error("unknown shard", &err);
        let err = opened.snapshot(shard, &5).await.unwrap_err();
        seen.error("unreadable as_of", &err);
        let report = inspect::run(&url).await;
        match report {
            Ok(report) => seen.add("inspect report", format!("{report:?}")),
            Err(err) => seen.tool_error("inspect", &err),
        }
        let report = doctor::run(&url, DoctorOptions { rounds: 1 })
            .await
            .unwrap();
        seen.add("doctor report", serde_json::to_string(&report).unwrap());
        drop(backend);
    }
    // Background tasks (the notification listener) get a moment to log.
    tokio::time::sleep(Duration::from_millis(100)).await;
    seen.assert_no_secrets();
}

fn s3_config(endpoint: &str, bucket: &str) -> S3Config {
    let json = serde_json::json!({
        "bucket": bucket,
        "prefix": "secrets",
        "endpoint": endpoint,
        "region": "us-east-1",
        "path_style": true,
        "credentials": {
            "access_key_id": "tidemark-test",
            "secret_access_key": S3_SECRET,
            "session_token": S3_TOKEN,
        },
        "connect_timeout": { "secs": 2, "nanos": 0 },
        "operation_timeout": { "secs": 10, "nanos": 0 },
    });
    serde_json::from_value(json).expect("an s3 config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_secret_keys_and_session_tokens_stay_out_of_errors_debug_and_tracing() {
    captured();
    let mut seen = Seen::default();
    tracing::info!("s3 secrets test starts");
    let config = s3_config("http://127.0.0.1:1", "bucket");
    assert_eq!(
        config.credentials().unwrap().session_token.as_deref(),
        Some(S3_TOKEN)
    );
    seen.add("config (Debug)", format!("{config:?}"));
    seen.add(
        "credentials (Debug)",
        format!("{:?}", config.credentials().unwrap()),
    );
    let err = config.clone().build().await.unwrap_err();
    seen.error("refused connection", &err);
    for bad in [
        config.clone().with_prefix("a/../b"),
        config.clone().with_region("us-east-1.evil"),
        config
            .clone()
            .with_endpoint(format!("http://key:{S3_SECRET}@127.0.0.1:1")),
        config
            .clone()
            .with_endpoint(format!("http://key:{S3_SECRET}@127.0.0.1:1/\n")),
        config
            .clone()
            .with_endpoint(format!("http://key:{S3_SECRET}@127.0.0.1:1/?x=1")),
    ] {
        let err = bad.build().await.unwrap_err();
        seen.error("invalid config", &err);
    }
    for url in [
        format!("s3://key:{S3_SECRET}@bucket/p?endpoint=http://127.0.0.1:1"),
        format!("s3://key:{S3_SECRET}@bucket/p?colour=blue"),
        format!("s3://key:{S3_SECRET}@/p"),
        format!("s3://key:{S3_SECRET}@bu cket/p"),
        format!("s3://bucket/p?endpoint=http://key:{S3_SECRET}@127.0.0.1:1"),
    ] {
        let err = tidemark::open(&url).await.map(|_| ()).unwrap_err();
        seen.error("invalid url", &err);
        let err = inspect::run(&url).await.unwrap_err();
        seen.tool_error("inspect", &err);
    }

    let endpoint = service_env("TIDEMARK_TEST_S3_ENDPOINT", "secrets: s3 server");
    if let Some(endpoint) = endpoint {
        // The test server checks credentials: the sentinel secret (with and
        // without the sentinel session token) signs requests it refuses.
        let bucket = format!("tm-secrets-{}", uuid::Uuid::new_v4().simple());
        let client = {
            let sdk = aws_sdk_s3::config::Builder::new()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .endpoint_url(&endpoint)
                .force_path_style(true)
                .credentials_provider(aws_sdk_s3::config::Credentials::new(
                    "tidemark-test",
                    "tidemark-test-secret",
                    None,
                    None,
                    "tidemark-tests",
                ))
                .build();
            aws_sdk_s3::Client::from_conf(sdk)
        };
        client.create_bucket().bucket(&bucket).send().await.unwrap();
        let with_token = s3_config(&endpoint, &bucket);
        let without_token = S3Config::new(&bucket)
            .with_prefix("secrets")
            .with_endpoint(&endpoint)
            .with_region("us-east-1")
            .with_path_style(true)
            .with_credentials("tidemark-test", S3_SECRET);
        for config in [with_token, without_token] {
            seen.add("config (Debug)", format!("{config:?}"));
            let err = config.build().await.unwrap_err();
            assert_eq!(
                err.determinate_kind(),
                Some(tidemark::types::DeterminateKind::Unauthorized),
                "{err}"
            );
            seen.error("rejected credentials", &err);
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                seen.add("rejected credentials (cause)", format!("{cause} {cause:?}"));
                source = cause.source();
            }
        }
        let err = s3_config(&endpoint, "tm-secrets-no-such-bucket")
            .build()
            .await
            .unwrap_err();
        seen.error("missing bucket", &err);
    }
    seen.assert_no_secrets();
}
