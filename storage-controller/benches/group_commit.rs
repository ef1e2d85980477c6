//! Group commit: `W` concurrent appenders (each awaiting its call before
//! the next, one update to one of `C` tables per call) through one
//! controller, for `W` in {8, 64} and `C` in {8, 1,000}: aggregate durable
//! appends/s and p50/p99 latency, against, in the same run,
//!
//! - (a) the same workload through a controller that commits every call on
//!   its own (`GroupCommitConfig::one_commit_per_call`; "joined" is a third
//!   controller whose queued calls all join one commit,
//!   `join_disjoint_calls`), and
//! - (b) the raw store: `W` concurrent requests of the store's own kind
//!   (S3: one PUT of a small object; PostgreSQL: one autocommitted
//!   single-row INSERT; memory: a push onto a mutex-guarded Vec), in
//!   requests/s.
//!
//! Also the p50 of one uncontended single-table append, and of one
//! uncontended atomic call naming 3 tables, as a ratio to it.
//!
//! The grouped, per-call and joined controllers each have a store of their own
//! (memory registry name, PostgreSQL schema, S3 prefix), so they do not
//! fence each other; their runs alternate shape by shape.
//!
//! Backends: memory always; PostgreSQL when `TIDEMARK_TEST_POSTGRES_URL`
//! is set; S3 when `TIDEMARK_TEST_S3_ENDPOINT` is set (credentials from
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, bucket `tidemark-bench`),
//! then S3 with the commit log on (decision 118): its grouped controller
//! against a per-call controller on default S3, and the cost to readers of
//! entries not yet folded into a shard's state (a cold handle's snapshot).
//!
//! `TIDEMARK_BENCH_GROUP_COMMIT=s3-log` runs only the commit-log figures.
//!
//! `cargo bench -p tidemark-storage-controller --bench group_commit`

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_controller::{
    Controller, ControllerConfig, GroupCommitConfig, StorageController,
};
use tidemark_storage_types::{
    CollectionDescription, Datum, GlobalId, PersistBackend, RelationDesc, Row, ScalarType,
    StorageParameters, Update,
};
use tokio::sync::Mutex;

/// `(writers, tables)` of each measured shape.
const SHAPES: [(usize, u64); 4] = [(8, 8), (8, 1_000), (64, 8), (64, 1_000)];
const BUCKET: &str = "tidemark-bench";

/// What one timed run measured.
struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * fraction).round() as usize;
    samples[index]
}

fn figures(mut latencies: Vec<Duration>, elapsed: Duration) -> Figures {
    assert!(!latencies.is_empty(), "a run completed no operation");
    Figures {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&mut latencies, 0.5),
        p99: percentile(&mut latencies, 0.99),
    }
}

fn relation() -> RelationDesc {
    RelationDesc::empty()
        .with_column("key", ScalarType::Int64.nullable(false))
        .with_column("value", ScalarType::String.nullable(false))
}

fn one_update(key: u64, time: u64) -> Vec<Update<u64>> {
    let key = i64::try_from(key >> 1).expect("a key below 2^63 fits");
    vec![Update::new(
        Row::pack([Datum::Int64(key), Datum::String("group-commit-bench")]),
        time,
        1,
    )]
}

/// A controller and the next time of each of its tables.
struct Writer<B: PersistBackend<u64>> {
    controller: Controller<u64, B>,
    next_times: Vec<u64>,
}

type Shared<B> = Arc<Mutex<Writer<B>>>;

/// A controller over `backend` with `group_commit`, owning tables
/// `u1..=u{tables}` (created, or re-attached where an earlier run left
/// them).
async fn writer<B: PersistBackend<u64> + 'static>(
    backend: B,
    group_commit: GroupCommitConfig,
    tables: u64,
) -> Shared<B> {
    let config = ControllerConfig {
        parameters: StorageParameters {
            physical_compaction: Some(false),
            ..StorageParameters::default()
        },
        group_commit,
        ..ControllerConfig::default()
    };
    let mut controller = Controller::<u64, _>::new(backend, config)
        .await
        .expect("the controller starts");
    let ids: Vec<GlobalId> = (1..=tables).map(GlobalId::User).collect();
    for chunk in ids.chunks(100) {
        controller
            .create_collections(
                chunk
                    .iter()
                    .map(|id| (*id, CollectionDescription::table(relation())))
                    .collect(),
            )
            .await
            .expect("the benchmark's tables exist");
    }
    let next_times = ids
        .iter()
        .map(|id| {
            let upper = &controller.collection(*id).expect("created").write_frontier;
            *upper.as_option().expect("a table is not sealed")
        })
        .collect();
    Arc::new(Mutex::new(Writer {
        controller,
        next_times,
    }))
}

/// One call naming `tables` (indexes), each with one update at its next
/// time; resolves when durable.
async fn append<B: PersistBackend<u64>>(shared: &Shared<B>, tables: &[usize], key: u64) {
    let receiver = {
        let mut writer = shared.lock().await;
        let commands = tables
            .iter()
            .map(|table| {
                let time = writer.next_times[*table];
                writer.next_times[*table] = time + 1;
                (
                    GlobalId::User(*table as u64 + 1),
                    one_update(key, time),
                    time + 1,
                )
            })
            .collect();
        writer.controller.append(commands).expect("append accepted")
    };
    receiver
        .await
        .expect("the write task answers")
        .expect("the append is durable");
}

/// `writers` tasks appending for `duration`, each to a table picked by its
/// own sequence among the first `tables`.
async fn appenders<B: PersistBackend<u64> + 'static>(
    shared: &Shared<B>,
    writers: usize,
    tables: u64,
    duration: Duration,
) -> Figures {
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers as u64)
        .map(|writer| {
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut state = writer.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                while started.elapsed() < duration {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let table = (state % tables) as usize;
                    let call = Instant::now();
                    append(&shared, &[table], state).await;
                    latencies.push(call.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("an appender finished"));
    }
    figures(latencies, started.elapsed())
}

/// One writer's sequential calls naming `tables` (indexes) for `duration`.
async fn uncontended<B: PersistBackend<u64>>(
    shared: &Shared<B>,
    tables: &[usize],
    duration: Duration,
) -> Figures {
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut key = 0;
    while started.elapsed() < duration {
        key += 1;
        let call = Instant::now();
        append(shared, tables, key).await;
        latencies.push(call.elapsed());
    }
    figures(latencies, started.elapsed())
}

/// One raw store request by writer `.0`, number `.1`.
type RawRequest = Arc<dyn Fn(u64, u64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// `writers` tasks issuing raw requests for `duration`.
async fn raw_requests(request: &RawRequest, writers: usize, duration: Duration) -> Figures {
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers as u64)
        .map(|writer| {
            let request = Arc::clone(request);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0;
                while started.elapsed() < duration {
                    n += 1;
                    let call = Instant::now();
                    request(writer, n).await;
                    latencies.push(call.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("a raw writer finished"));
    }
    figures(latencies, started.elapsed())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Runs every figure on one backend: `open(mode)` gives the store of the
/// grouped (`"grouped"`), per-call (`"per-call"`) or joined (`"joined"`)
/// controller.
async fn run<B, O, Fut>(name: &str, open: O, raw: RawRequest, duration: Duration, s3_goals: bool)
where
    B: PersistBackend<u64> + 'static,
    O: Fn(&'static str) -> Fut,
    Fut: Future<Output = B>,
{
    println!("{name} ({} s per run):", duration.as_secs_f64());
    let tables = SHAPES.iter().map(|(_, tables)| *tables).max().unwrap_or(1);
    let grouped = writer(open("grouped").await, GroupCommitConfig::default(), tables).await;
    let per_call = writer(
        open("per-call").await,
        GroupCommitConfig::one_commit_per_call(),
        tables,
    )
    .await;
    let joined = writer(
        open("joined").await,
        GroupCommitConfig {
            join_disjoint_calls: true,
            ..GroupCommitConfig::default()
        },
        tables,
    )
    .await;
    let single = uncontended(&grouped, &[0], duration).await;
    let three = uncontended(&grouped, &[0, 1, 2], duration).await;
    println!(
        "  uncontended p50: 1 table {:.2} ms, 3 tables in one call {:.2} ms, ratio {:.2} (goal <= 1.3{})",
        ms(single.p50),
        ms(three.p50),
        three.p50.as_secs_f64() / single.p50.as_secs_f64(),
        if s3_goals { "" } else { ", set for S3" },
    );
    for (writers, shape_tables) in SHAPES {
        let a = appenders(&per_call, writers, shape_tables, duration).await;
        let g = appenders(&grouped, writers, shape_tables, duration).await;
        let j = appenders(&joined, writers, shape_tables, duration).await;
        let r = raw_requests(&raw, writers, duration).await;
        println!(
            "  {writers:>2} writers x {shape_tables:>4} tables: grouped {:>9.0}/s p50 {:>7.2} ms p99 {:>7.2} ms | per-call {:>9.0}/s p50 {:>7.2} ms p99 {:>7.2} ms | raw {:>9.0} req/s",
            g.per_second,
            ms(g.p50),
            ms(g.p99),
            a.per_second,
            ms(a.p50),
            ms(a.p99),
            r.per_second,
        );
        let goals = if s3_goals && writers == 8 {
            " (goals at 8 writers: grouped/per-call >= 5, p50/uncontended <= 1.5)"
        } else {
            ""
        };
        println!(
            "      joined (one commit for all queued calls) {:>9.0}/s p50 {:>7.2} ms p99 {:>7.2} ms",
            j.per_second,
            ms(j.p50),
            ms(j.p99),
        );
        println!(
            "      ratios: grouped/per-call {:.2}, joined/per-call {:.2}, grouped/raw {:.3}, per-call/raw {:.3}, grouped p50/uncontended p50 {:.2}{goals}",
            g.per_second / a.per_second,
            j.per_second / a.per_second,
            g.per_second / r.per_second,
            a.per_second / r.per_second,
            g.p50.as_secs_f64() / single.p50.as_secs_f64(),
        );
    }
}

/// The commit-log figures: `open_log` gives the store of the grouped
/// controller (commit log on), `open_plain` the default S3 store of the
/// per-call baseline.
async fn run_log<B, P, OL, OP, FL, FP>(open_log: OL, open_plain: OP, duration: Duration)
where
    B: PersistBackend<u64> + 'static,
    P: PersistBackend<u64> + 'static,
    OL: Fn(&'static str) -> FL,
    OP: Fn(&'static str) -> FP,
    FL: Future<Output = B>,
    FP: Future<Output = P>,
{
    println!(
        "s3 with the commit log ({} s per run; baseline: one commit per call on default s3):",
        duration.as_secs_f64()
    );
    let tables = SHAPES.iter().map(|(_, tables)| *tables).max().unwrap_or(1);
    let logged = writer(
        open_log("log-grouped").await,
        GroupCommitConfig::default(),
        tables,
    )
    .await;
    let per_call = writer(
        open_plain("plain-per-call").await,
        GroupCommitConfig::one_commit_per_call(),
        tables,
    )
    .await;
    let single = uncontended(&logged, &[0], duration).await;
    let three = uncontended(&logged, &[0, 1, 2], duration).await;
    let plain_single = uncontended(&per_call, &[0], duration).await;
    println!(
        "  uncontended p50: 1 table {:.2} ms, 3 tables in one call {:.2} ms, ratio {:.2} (goal <= 1.3); default s3 1 table {:.2} ms",
        ms(single.p50),
        ms(three.p50),
        three.p50.as_secs_f64() / single.p50.as_secs_f64(),
        ms(plain_single.p50),
    );
    for (writers, shape_tables) in SHAPES {
        let a = appenders(&per_call, writers, shape_tables, duration).await;
        let g = appenders(&logged, writers, shape_tables, duration).await;
        let goals = if writers == 8 {
            " (goals at 8 writers: >= 5, <= 1.5)"
        } else {
            ""
        };
        println!(
            "  {writers:>2} writers x {shape_tables:>4} tables: log {:>7.0}/s p50 {:>7.2} ms p99 {:>7.2} ms | default per-call {:>7.0}/s p50 {:>7.2} ms | log/per-call {:.2}, log p50/uncontended {:.2}, log p99/uncontended {:.2}{goals}",
            g.per_second,
            ms(g.p50),
            ms(g.p99),
            a.per_second,
            ms(a.p50),
            g.per_second / a.per_second,
            g.p50.as_secs_f64() / single.p50.as_secs_f64(),
            g.p99.as_secs_f64() / single.p50.as_secs_f64(),
        );
    }
}

/// What unapplied log entries cost a reader: the p50 of a snapshot from a
/// fresh handle of a log-mode shard with `entries` entries not yet folded
/// into its state, against the same from a plain shard with the same data.
async fn log_read_cost(
    config: tidemark_backend_s3::S3Config,
    entries: u64,
    samples: usize,
) -> (Duration, Duration) {
    use tidemark_storage_types::{IdempotencyToken, ShardId, WriteFence};
    let mut medians = Vec::new();
    for commit_log in [true, false] {
        let config = config
            .clone()
            .with_prefix(format!("{}/reads-{commit_log}", config.prefix()))
            .with_commit_log(commit_log);
        let backend = config.clone().build().await.expect("the read store opens");
        backend.hold_log_applier(true);
        let shard = ShardId::new();
        PersistBackend::<u64>::open(&backend, shard)
            .await
            .expect("open");
        for time in 0..entries {
            PersistBackend::<u64>::compare_and_append(
                &backend,
                shard,
                // One distinct row per entry.
                one_update(time * 2, time),
                timely::progress::Antichain::from_elem(time),
                timely::progress::Antichain::from_elem(time + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .expect("append")
            .expect("no mismatch");
        }
        let mut latencies = Vec::new();
        for _ in 0..samples {
            let reader = config.clone().build().await.expect("a reader opens");
            let started = Instant::now();
            let rows = PersistBackend::<u64>::snapshot(&reader, shard, &(entries - 1))
                .await
                .expect("snapshot");
            latencies.push(started.elapsed());
            assert_eq!(rows.len() as u64, entries);
        }
        medians.push(percentile(&mut latencies, 0.5));
        backend.hold_log_applier(false);
        backend.wait_for_background_writes().await;
    }
    (medians[0], medians[1])
}

fn memory_raw() -> RawRequest {
    let store: Arc<std::sync::Mutex<Vec<Update<u64>>>> = Arc::default();
    Arc::new(move |writer, n| {
        let store = Arc::clone(&store);
        Box::pin(async move {
            store
                .lock()
                .expect("the raw store is not poisoned")
                .extend(one_update(writer, n));
        })
    })
}

async fn postgres_raw(base: &str) -> RawRequest {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(64)
        .connect(base)
        .await
        .expect("the raw PostgreSQL pool connects");
    sqlx::query("CREATE SCHEMA IF NOT EXISTS tidemark_group_commit_raw")
        .execute(&pool)
        .await
        .expect("the raw schema exists");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS tidemark_group_commit_raw.rows (writer BIGINT, n BIGINT, payload BYTEA)",
    )
    .execute(&pool)
    .await
    .expect("the raw table exists");
    sqlx::query("TRUNCATE tidemark_group_commit_raw.rows")
        .execute(&pool)
        .await
        .expect("the raw table empties");
    Arc::new(move |writer, n| {
        let pool = pool.clone();
        Box::pin(async move {
            let row = one_update(writer, n).remove(0).row;
            sqlx::query("INSERT INTO tidemark_group_commit_raw.rows VALUES ($1, $2, $3)")
                .bind(writer as i64)
                .bind(n as i64)
                .bind(row.as_bytes().to_vec())
                .execute(&pool)
                .await
                .expect("a raw INSERT");
        })
    })
}

fn s3_client(endpoint: &str, access: &str, secret: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            access,
            secret,
            None,
            None,
            "tidemark-group-commit-bench",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn s3_raw(client: aws_sdk_s3::Client, prefix: String) -> RawRequest {
    Arc::new(move |writer, n| {
        let client = client.clone();
        let key = format!("{prefix}/raw/{writer}/{n}");
        Box::pin(async move {
            let row = one_update(writer, n).remove(0).row;
            client
                .put_object()
                .bucket(BUCKET)
                .key(key)
                .body(row.as_bytes().to_vec().into())
                .send()
                .await
                .expect("a raw PUT");
        })
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let run_id = std::process::id();
    let only_log = std::env::var("TIDEMARK_BENCH_GROUP_COMMIT").as_deref() == Ok("s3-log");
    runtime.block_on(async {
        if !only_log {
            existing_runs(run_id).await;
        }
        let Ok(endpoint) = std::env::var("TIDEMARK_TEST_S3_ENDPOINT") else {
            println!("s3 with the commit log: skipped (TIDEMARK_TEST_S3_ENDPOINT is not set)");
            return;
        };
        let access = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "tidemark-test".into());
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY")
            .unwrap_or_else(|_| "tidemark-test-secret".into());
        let client = s3_client(&endpoint, &access, &secret);
        if client.head_bucket().bucket(BUCKET).send().await.is_err() {
            client
                .create_bucket()
                .bucket(BUCKET)
                .send()
                .await
                .expect("the bench bucket exists");
        }
        let prefix = format!(
            "group-commit-log-{run_id}-{}",
            tidemark_storage_types::ShardId::new()
        );
        let config = tidemark_backend_s3::S3Config::new(BUCKET)
            .with_prefix(&prefix)
            .with_endpoint(&endpoint)
            .with_region("us-east-1")
            .with_path_style(true)
            .with_credentials(&access, &secret)
            .with_poll_interval(Duration::from_millis(1), Duration::from_millis(20));
        let open = |commit_log: bool| {
            let config = config.clone();
            let prefix = prefix.clone();
            move |mode: &'static str| {
                let config = config
                    .clone()
                    .with_prefix(format!("{prefix}/{mode}"))
                    .with_commit_log(commit_log);
                async move {
                    config
                        .build()
                        .await
                        .expect("the S3 benchmark store opens")
                }
            }
        };
        run_log(open(true), open(false), Duration::from_secs(2)).await;
        for entries in [4, 16, 64] {
            let (log, plain) = log_read_cost(config.clone(), entries, 9).await;
            println!(
                "  cold-handle snapshot p50, {entries:>2} entries unapplied: log mode {:.2} ms, plain {:.2} ms, ratio {:.2}",
                ms(log),
                ms(plain),
                log.as_secs_f64() / plain.as_secs_f64(),
            );
        }
    });
}

/// The memory, PostgreSQL and default S3 runs.
async fn existing_runs(run_id: u32) {
    {
        run(
            "memory",
            |mode| async move {
                MemoryBackend::open(&format!("group-commit-bench-{run_id}-{mode}"))
            },
            memory_raw(),
            Duration::from_millis(500),
            false,
        )
        .await;
        match std::env::var("TIDEMARK_TEST_POSTGRES_URL") {
            Ok(base) => {
                let raw = postgres_raw(&base).await;
                let open = |mode: &'static str| {
                    let base = base.clone();
                    async move {
                        let separator = if base.contains('?') { '&' } else { '?' };
                        let schema = format!("tidemark_group_commit_{}", mode.replace('-', "_"));
                        tidemark_backend_postgres::PostgresBackend::from_url(&format!(
                            "{base}{separator}schema={schema}"
                        ))
                        .await
                        .expect("the benchmark schema opens")
                    }
                };
                run("postgres", open, raw, Duration::from_secs(2), false).await;
            }
            Err(_) => println!("postgres: skipped (TIDEMARK_TEST_POSTGRES_URL is not set)"),
        }
        match std::env::var("TIDEMARK_TEST_S3_ENDPOINT") {
            Ok(endpoint) => {
                let access =
                    std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "tidemark-test".into());
                let secret = std::env::var("AWS_SECRET_ACCESS_KEY")
                    .unwrap_or_else(|_| "tidemark-test-secret".into());
                let client = s3_client(&endpoint, &access, &secret);
                if client.head_bucket().bucket(BUCKET).send().await.is_err() {
                    client
                        .create_bucket()
                        .bucket(BUCKET)
                        .send()
                        .await
                        .expect("the bench bucket exists");
                }
                let prefix = format!(
                    "group-commit-{run_id}-{}",
                    tidemark_storage_types::ShardId::new()
                );
                let raw = s3_raw(client, prefix.clone());
                let open = |mode: &'static str| {
                    let (endpoint, access, secret) =
                        (endpoint.clone(), access.clone(), secret.clone());
                    let prefix = format!("{prefix}/{mode}");
                    async move {
                        tidemark_backend_s3::S3Config::new(BUCKET)
                            .with_prefix(&prefix)
                            .with_endpoint(&endpoint)
                            .with_region("us-east-1")
                            .with_path_style(true)
                            .with_credentials(&access, &secret)
                            .with_poll_interval(Duration::from_millis(1), Duration::from_millis(20))
                            .build()
                            .await
                            .expect("the S3 benchmark store opens")
                    }
                };
                run("s3", open, raw, Duration::from_secs(2), true).await;
            }
            Err(_) => println!("s3: skipped (TIDEMARK_TEST_S3_ENDPOINT is not set)"),
        }
    }
}
