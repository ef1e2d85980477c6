//! Crash loops: the `crash-writer` program appends through the controller
//! to PostgreSQL and to S3 and is killed with SIGKILL at seeded random
//! points, a new writer (a new controller on the same storage) started
//! after each kill. After every kill a fresh controller checks that every
//! acknowledged append is present exactly once, that no append is half
//! present, that the metadata shard decodes, and that a compaction and gc
//! pass leaves only referenced data (and changes no read).
//!
//! `TIDEMARK_CRASH_KILLS` sets the kills per backend (10 by default, what
//! CI runs; `scripts/crash-loop N` runs more), `TIDEMARK_CRASH_SEED` the
//! seed.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidemark_backend_conformance::service_env;
use tidemark_backend_postgres::PostgresConfig;
use tidemark_backend_s3::S3Config;
use tidemark_storage_controller::read_metadata;
use tidemark_storage_controller::{ControllerConfig, StorageController};
use tidemark_storage_types::{PersistBackend, ShardId};
use tidemark_test_support::ledger::{Ledger, verify};
use tidemark_test_support::services::{
    POSTGRES_URL_VARIABLE, S3_ACCESS_KEY_ID, S3_ENDPOINT_VARIABLE, S3_SECRET_ACCESS_KEY,
    create_bucket, drop_schema, fresh_name,
};
use tidemark_test_support::writer::{COLLECTIONS, attach_with_retries, contents, table_id};

/// The longest the test waits for a writer to reach its kill point.
const KILL_POINT_TIMEOUT: Duration = Duration::from_secs(60);

fn kills() -> usize {
    std::env::var("TIDEMARK_CRASH_KILLS")
        .ok()
        .and_then(|kills| kills.parse().ok())
        .unwrap_or(10)
}

fn seed() -> u64 {
    std::env::var("TIDEMARK_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(1)
}

/// A running writer; killed (SIGKILL) and reaped when dropped, so a failing
/// test leaves no process behind.
struct WriterProcess {
    child: Child,
    output: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl WriterProcess {
    fn start(url: &str, run: usize) -> WriterProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
            .arg(url)
            .arg(run.to_string())
            .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY)
            .env("AWS_REGION", "us-east-1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the crash writer");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let output = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&output);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(count @ 1..) = stdout.read(&mut buffer) {
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_str(&String::from_utf8_lossy(&buffer[..count]));
            }
        });
        WriterProcess {
            child,
            output,
            reader: Some(reader),
        }
    }

    fn acknowledged(&self) -> usize {
        self.output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .lines()
            .filter(|line| line.starts_with("ack "))
            .count()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILLs the writer (if still running), reaps it, and returns all
    /// it printed.
    fn kill(mut self) -> (String, bool) {
        let was_running = !self.exited();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let output = self
            .output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        (output, was_running)
    }
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a kill lands: after some acknowledgements, plus a short delay.
#[derive(Debug)]
struct KillPoint {
    after_acks: usize,
    delay: Duration,
}

fn kill_point(rng: &mut SmallRng) -> KillPoint {
    KillPoint {
        // Zero: possibly before the controller even attached.
        after_acks: rng.random_range(0..6),
        delay: Duration::from_micros(rng.random_range(0..30_000)),
    }
}

/// What the checker does that depends on the backend: a handle, and the
/// "only referenced data" check after compaction and gc.
trait Storage {
    type Backend: PersistBackend<u64> + Clone;
    async fn checker_backend(&self) -> Self::Backend;
    /// Runs gc (if the backend has one) and returns a description of any
    /// stored data no live shard references.
    async fn unreferenced(&self, backend: &Self::Backend, shards: &[ShardId]) -> Vec<String>;
}

struct Postgres {
    url: String,
    direct_url: String,
    schema: String,
}

impl Storage for Postgres {
    type Backend = Arc<tidemark_backend_postgres::PostgresBackend>;

    async fn checker_backend(&self) -> Self::Backend {
        Arc::new(
            PostgresConfig::from_url(&self.url)
                .expect("a valid url")
                .build()
                .await
                .expect("a checker handle"),
        )
    }

    async fn unreferenced(&self, _backend: &Self::Backend, _shards: &[ShardId]) -> Vec<String> {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&self.direct_url)
            .await
            .expect("a direct connection");
        // Rows of shards that are gone or finalized: nothing reads them.
        let orphans: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{schema}\".updates u WHERE NOT EXISTS \
             (SELECT 1 FROM \"{schema}\".shards s WHERE s.shard_id = u.shard_id AND NOT s.finalized)",
            schema = self.schema
        ))
        .fetch_one(&mut connection)
        .await
        .expect("count orphaned rows");
        let _ = connection.close().await;
        if orphans == 0 {
            Vec::new()
        } else {
            vec![format!("{orphans} update rows of no live shard")]
        }
    }
}

struct S3 {
    url: String,
    endpoint: String,
}

impl Storage for S3 {
    type Backend = Arc<tidemark_backend_s3::S3Backend>;

    async fn checker_backend(&self) -> Self::Backend {
        // No grace period: the writer is dead, so no append is in flight
        // and every unreferenced part is garbage.
        Arc::new(
            S3Config::from_url(&self.url)
                .expect("a valid url")
                .with_credentials(S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY)
                .with_grace_period(Duration::ZERO)
                .build()
                .await
                .expect("a checker handle"),
        )
    }

    async fn unreferenced(&self, backend: &Self::Backend, shards: &[ShardId]) -> Vec<String> {
        let stats = backend.gc().await.expect("gc");
        let client = tidemark_test_support::services::s3_client(&self.endpoint);
        let mut problems = Vec::new();
        for shard in shards {
            let referenced: BTreeSet<String> = backend
                .part_keys(*shard)
                .await
                .expect("part keys")
                .into_iter()
                .collect();
            let mut stored = BTreeSet::new();
            let mut pages = client
                .list_objects_v2()
                .bucket(backend.config().bucket())
                .prefix(backend.parts_prefix(*shard))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.expect("list parts");
                stored.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_string)),
                );
            }
            for key in stored.difference(&referenced) {
                problems.push(format!("unreferenced part after gc ({stats:?}): {key}"));
            }
            for key in referenced.difference(&stored) {
                problems.push(format!("referenced part missing: {key}"));
            }
        }
        problems
    }
}

/// The check a fresh controller runs after a kill.
async fn check_after_kill<S: Storage>(storage: &S, ledger: &Ledger, kill: usize) {
    let backend = storage.checker_backend().await;
    // The metadata shard decodes and names every collection.
    let metadata = read_metadata::<u64, _>(&backend)
        .await
        .unwrap_or_else(|err| panic!("kill {kill}: the metadata shard does not decode: {err}"));
    if metadata.epoch.is_some() {
        for collection in COLLECTIONS {
            assert!(
                metadata.collections.contains_key(&table_id(collection)),
                "kill {kill}: the metadata lost collection {collection}: {metadata:?}"
            );
        }
    }

    let factory = {
        let backend = backend.clone();
        move || {
            let backend = backend.clone();
            async move { backend }
        }
    };
    let mut checker = attach_with_retries(factory, ControllerConfig::default()).await;
    let mut before = Vec::new();
    let mut shards = Vec::new();
    for collection in COLLECTIONS {
        let found = contents(&mut checker, collection)
            .await
            .unwrap_or_else(|err| {
                panic!("kill {kill}: cannot read collection {collection}: {err}")
            });
        verify(collection, &found, ledger)
            .unwrap_or_else(|problems| panic!("kill {kill}: {problems}"));
        before.push(found);
        shards.push(
            checker
                .collection(table_id(collection))
                .expect("an attached collection")
                .collection_metadata
                .data_shard,
        );
    }
    // Compaction and gc change no read and leave only referenced data.
    for shard in &shards {
        backend.compact(*shard).await.expect("compaction");
    }
    let problems = storage.unreferenced(&backend, &shards).await;
    assert!(problems.is_empty(), "kill {kill}: {problems:?}");
    for (collection, before) in COLLECTIONS.iter().zip(&before) {
        let after = contents(&mut checker, *collection)
            .await
            .expect("read after compaction");
        assert_eq!(
            &after, before,
            "kill {kill}: compaction changed collection {collection}"
        );
    }
}

/// Runs the crash loop against the backend `url` names.
async fn crash_loop<S: Storage>(backend_name: &str, url: &str, storage: &S) {
    let kills = kills();
    let mut rng = SmallRng::seed_from_u64(seed());
    let mut ledger = Ledger::default();
    let mut killed_running = 0;
    let mut exited_early = 0;
    let started = Instant::now();
    for kill in 0..kills {
        let point = kill_point(&mut rng);
        let mut writer = WriterProcess::start(url, kill);
        let waiting = Instant::now();
        while writer.acknowledged() < point.after_acks
            && !writer.exited()
            && waiting.elapsed() < KILL_POINT_TIMEOUT
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(point.delay).await;
        let (output, was_running) = writer.kill();
        if was_running {
            killed_running += 1;
        } else {
            exited_early += 1;
            eprintln!("{backend_name}: writer {kill} exited before its kill point");
        }
        ledger.read_output(&output);
        check_after_kill(storage, &ledger, kill).await;
    }
    println!(
        "{backend_name} crash loop: kills={killed_running} exited_early={exited_early} attempted={} \
         acknowledged={} lost=0 duplicated=0 half_present=0 seed={} in {:?}",
        ledger.attempted.len(),
        ledger.acknowledged.len(),
        seed(),
        started.elapsed()
    );
    assert!(
        killed_running * 2 >= kills,
        "{backend_name}: most writers must be killed while running ({killed_running} of {kills})"
    );
    assert!(
        !ledger.acknowledged.is_empty(),
        "{backend_name}: nothing was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_a_crash_loop() {
    let Some(direct_url) = service_env(POSTGRES_URL_VARIABLE, "postgres crash loop") else {
        return;
    };
    let schema = fresh_name("crash");
    let separator = if direct_url.contains('?') { '&' } else { '?' };
    let url = format!("{direct_url}{separator}schema={schema}");
    let storage = Postgres {
        url: url.clone(),
        direct_url: direct_url.clone(),
        schema: schema.clone(),
    };
    crash_loop("postgres", &url, &storage).await;
    if let Err(err) = drop_schema(&direct_url, &schema).await {
        eprintln!("could not drop test schema {schema}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_survives_a_crash_loop() {
    let Some(endpoint) = service_env(S3_ENDPOINT_VARIABLE, "s3 crash loop") else {
        return;
    };
    let bucket = fresh_name("tm-crash").replace('_', "-");
    create_bucket(&endpoint, &bucket).await;
    let url = format!(
        "s3://{bucket}/{}?endpoint={endpoint}&region=us-east-1&path_style=true",
        fresh_name("p")
    );
    let storage = S3 {
        url: url.clone(),
        endpoint,
    };
    crash_loop("s3", &url, &storage).await;
}
