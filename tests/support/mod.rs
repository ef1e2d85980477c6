//! Test support for the command-line tools: stores on each backend (a
//! fresh memory name, PostgreSQL schema or S3 bucket per test), collections
//! created through a controller, and the built binary run with a time
//! bound and killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tidemark::DynBackend;
use tidemark::controller::{Controller, ControllerConfig, StorageController};
use tidemark::types::{
    CollectionDescription, Datum, GlobalId, RelationDesc, Row, ScalarType, Update,
};
use tidemark_backend_conformance::service_env;

/// Dummy credentials the local S3 server accepts.
pub const S3_ACCESS_KEY_ID: &str = "tidemark-test";
/// Dummy credentials the local S3 server accepts.
pub const S3_SECRET_ACCESS_KEY: &str = "tidemark-test-secret";

/// A store a test owns: its URL, a handle, and what to clean up.
pub struct Store {
    /// The URL the binary is given.
    pub url: String,
    /// A handle in this process.
    pub backend: DynBackend,
    postgres_schema: Option<(String, String)>,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some((url, schema)) = self.postgres_schema.take() {
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for schema cleanup");
                runtime.block_on(async {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(&url).await?;
                    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .execute(&mut conn)
                        .await
                        .map(drop)
                })
            })
            .join();
            if let Ok(Err(err)) = dropped {
                eprintln!("could not drop a test schema: {err}");
            }
        }
    }
}

fn unique(label: &str) -> String {
    format!(
        "{label}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    )
}

/// A fresh memory store (memory stores live in this process only).
pub async fn memory_store() -> Store {
    let url = format!("memory://{}", unique("tools"));
    let backend = tidemark::open(&url).await.expect("a memory store opens");
    Store {
        url,
        backend,
        postgres_schema: None,
    }
}

/// A fresh schema on the test PostgreSQL, or `None` after a loud SKIPPED
/// line outside CI.
pub async fn postgres_store(test_name: &str) -> Option<Store> {
    let base = service_env("TIDEMARK_TEST_POSTGRES_URL", test_name)?;
    let schema = unique("tools_");
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}schema={schema}");
    let backend = tidemark::open(&url)
        .await
        .unwrap_or_else(|err| panic!("cannot open the test postgres: {err}"));
    Some(Store {
        url,
        backend,
        postgres_schema: Some((base, schema)),
    })
}

/// The test S3 endpoint, or `None` after a loud SKIPPED line outside CI.
pub fn s3_endpoint(test_name: &str) -> Option<String> {
    service_env("TIDEMARK_TEST_S3_ENDPOINT", test_name)
}

/// A plain SDK client on `endpoint` with the dummy credentials.
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
            "tidemark-tests",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A fresh bucket on `endpoint`, created.
pub async fn fresh_bucket(endpoint: &str) -> String {
    let bucket = format!("tm-{}", uuid::Uuid::new_v4().simple());
    s3_client(endpoint)
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|err| panic!("cannot create the test bucket {bucket}: {err:?}"));
    bucket
}

/// The URL of an S3 store on a fresh bucket of `endpoint`.
pub fn s3_url(endpoint: &str, bucket: &str) -> String {
    format!("s3://{bucket}/tools?endpoint={endpoint}&region=us-east-1&path_style=true")
}

/// A fresh bucket on the test S3 server, or `None` after a loud SKIPPED
/// line outside CI.
pub async fn s3_store(test_name: &str) -> Option<Store> {
    let endpoint = s3_endpoint(test_name)?;
    let bucket = fresh_bucket(&endpoint).await;
    let url = s3_url(&endpoint, &bucket);
    let backend = tidemark::s3::S3Config::from_url(&url)
        .expect("a valid s3 url")
        .with_credentials(S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY)
        .build()
        .await
        .unwrap_or_else(|err| panic!("cannot open the test s3 store: {err}"));
    Some(Store {
        url,
        backend: std::sync::Arc::new(backend),
        postgres_schema: None,
    })
}

/// A one-column (`n: int64`) row.
pub fn int_row(n: i64) -> Row {
    Row::pack([Datum::Int64(n)])
}

/// Starts a controller on `backend` (fencing any other).
pub async fn controller(backend: &DynBackend) -> Controller<u64, DynBackend> {
    Controller::new(backend.clone(), ControllerConfig::default())
        .await
        .expect("a controller starts")
}

/// Creates tables `ids` (one int64 column) and appends, for each table,
/// rows `1..=rows` at time 0 and row `100` at time 1 (upper 2).
pub async fn create_tables(
    controller: &mut Controller<u64, DynBackend>,
    ids: &[GlobalId],
    rows: i64,
) {
    let relation = RelationDesc::empty().with_column("n", ScalarType::Int64.nullable(false));
    controller
        .create_collections(
            ids.iter()
                .map(|id| (*id, CollectionDescription::table(relation.clone())))
                .collect(),
        )
        .await
        .expect("tables are created");
    let first = ids
        .iter()
        .map(|id| {
            let updates = (1..=rows).map(|n| Update::new(int_row(n), 0, 1)).collect();
            (*id, updates, 1)
        })
        .collect();
    controller
        .append(first)
        .expect("an append is accepted")
        .await
        .expect("the append completes")
        .expect("the append is durable");
    let second = ids
        .iter()
        .map(|id| (*id, vec![Update::new(int_row(100), 1, 1)], 2))
        .collect();
    controller
        .append(second)
        .expect("an append is accepted")
        .await
        .expect("the append completes")
        .expect("the append is durable");
}

/// A command running the built `tidemark` binary with the test S3
/// credentials in its environment.
pub fn tidemark_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    command
        .args(args)
        .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY)
        .env("AWS_REGION", "us-east-1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

/// A running binary, killed (by pid) when dropped, whose stdout lines
/// arrive on a channel.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Starts the binary with `args`.
    pub fn start(args: &[&str]) -> Running {
        let mut child = tidemark_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The pid of the process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines until one satisfies `done` (which is returned), failing after
    /// `limit` without one.
    pub fn read_until(&self, limit: Duration, done: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let finished = done(&line);
                    seen.push(line);
                    if finished {
                        return seen;
                    }
                }
                Err(_) => panic!("the binary printed no expected line within {limit:?}: {seen:?}"),
            }
        }
    }

    /// Sends SIGINT (as Ctrl-C does) and waits, bounded, for the exit.
    pub fn interrupt_and_wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -INT failed");
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited on") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the binary did not stop within {limit:?} of SIGINT"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary to completion, bounded by `limit`, and returns what it
/// printed.
pub fn run_binary(args: &[&str], limit: Duration) -> Output {
    let mut child = tidemark_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || read_all(stdout));
    let err_reader = std::thread::spawn(move || read_all(stderr));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited on") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tidemark {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

fn read_all(mut reader: impl std::io::Read) -> Vec<u8> {
    let mut buffer = Vec::new();
    let _ = reader.read_to_end(&mut buffer);
    buffer
}

/// Runs the binary expecting success and parses its stdout as JSON.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let output = run_binary(args, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "tidemark {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "tidemark {args:?} printed no JSON ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
