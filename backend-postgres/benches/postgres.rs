//! PostgreSQL backend benchmark: each figure is a ratio against a raw
//! baseline run on the same server, in the same run, through the same kind
//! of pooled connection (absolute times on shared machines are noise).
//!
//! - bulk append of 100,000 updates (stored as batch rows) vs a raw binary
//!   `COPY` of the same rows into a bare table with the same columns
//!   (throughput ratio, goal >= 0.8), and the row layout's `COPY` and
//!   `UNNEST` paths against the same baseline;
//! - small append (10 updates) vs a raw `BEGIN; INSERT; COMMIT` (latency
//!   ratio, goal <= 1.2);
//! - snapshot of a 1,000,000-update shard (batch rows, and the row layout)
//!   vs the best raw read of the same data from a bare table written by
//!   hand: the `GROUP BY` query returning consolidated rows in row order,
//!   ordered by the server or sorted by the client, whichever is faster
//!   (time ratio, goal <= 1.1), read whole and streamed;
//! - snapshot and fetch of a 100-row shard, the `Vec` form and the
//!   streamed form collected, vs a raw ordered read of a bare table, and
//!   `frontiers` vs a raw read of the shard row (latency ratios, goal
//!   <= 1.2);
//! - peak RSS growth of a streamed snapshot, a streamed fetch from the
//!   start and a compaction of a large shard (`TIDEMARK_BENCH_RSS_UPDATES`
//!   updates, 1,000,000 unless set; goal < 512 MiB each at 10,000,000), each
//!   also as a ratio of the growth of the `Vec` read of the same data.
//!
//! Needs a server: `TIDEMARK_TEST_POSTGRES_URL` (or `TIDEMARK_POSTGRES_URL`);
//! without one it says so and exits. Run with
//! `cargo bench -p tidemark-backend-postgres`; `TIDEMARK_BENCH_ONLY=rss`
//! (or `bulk`, `small`, `small_snapshot`, `snapshot`) runs one part.

use std::time::{Duration, Instant};
use tidemark_storage_types::WriteFence;

use futures::StreamExt;

use sqlx::{Connection, PgConnection};
use tidemark_backend_postgres::PostgresConfig;
use tidemark_storage_types::{
    ChunkLimit, Codec64, Datum, IdempotencyToken, PersistBackend, ReadShare, Row, ShardId, Update,
    collect_stream,
};
use timely::progress::Antichain;
use uuid::Uuid;

const BULK_UPDATES: i64 = 100_000;
const BULK_ROUNDS: usize = 7;
const SMALL_UPDATES: i64 = 10;
const SMALL_ROUNDS: usize = 400;
const SNAPSHOT_ROWS: i64 = 100_000;
const SNAPSHOT_TIMES: u64 = 10;
const SNAPSHOT_ROUNDS: usize = 5;
const SMALL_SNAPSHOT_ROWS: i64 = 100;
const SMALL_SNAPSHOT_ROUNDS: usize = 400;
const RSS_DEFAULT_UPDATES: u64 = 1_000_000;
const RSS_APPEND_UPDATES: u64 = 100_000;

fn row(value: i64) -> Row {
    Row::pack([
        Datum::Int64(value),
        Datum::String("a string datum of moderate length"),
        Datum::Float64(value as f64 * 0.5),
    ])
}

fn at(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The binary COPY stream a raw client would send for these rows.
fn copy_stream(shard: Uuid, time: i64, rows: &[Row]) -> Vec<u8> {
    copy_stream_with_diff(shard, time, rows, 1)
}

/// [`copy_stream`] with every update carrying `diff`.
fn copy_stream_with_diff(shard: Uuid, time: i64, rows: &[Row], diff: i64) -> Vec<u8> {
    let mut buffer = Vec::new();
    buffer.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buffer.extend_from_slice(&0i32.to_be_bytes());
    buffer.extend_from_slice(&0i32.to_be_bytes());
    for row in rows {
        buffer.extend_from_slice(&4i16.to_be_bytes());
        buffer.extend_from_slice(&16i32.to_be_bytes());
        buffer.extend_from_slice(shard.as_bytes());
        buffer.extend_from_slice(&8i32.to_be_bytes());
        buffer.extend_from_slice(&time.to_be_bytes());
        buffer.extend_from_slice(&(row.byte_len() as i32).to_be_bytes());
        buffer.extend_from_slice(row.as_bytes());
        buffer.extend_from_slice(&8i32.to_be_bytes());
        buffer.extend_from_slice(&diff.to_be_bytes());
    }
    buffer.extend_from_slice(&(-1i16).to_be_bytes());
    buffer
}

async fn raw_copy(conn: &mut PgConnection, table: &str, stream: &[u8]) {
    let statement =
        format!("COPY {table} (shard_id, ts, row_bytes, diff) FROM STDIN (FORMAT binary)");
    let mut copy = conn.copy_in_raw(&statement).await.expect("raw copy");
    copy.send(stream).await.expect("raw copy data");
    copy.finish().await.expect("raw copy finish");
}

async fn bench_bulk(url: &str, schema: &str) {
    let backend = PostgresConfig::from_url(url)
        .unwrap()
        .with_schema(schema)
        .build()
        .await
        .unwrap();
    // The row layout, for comparison: COPY into `updates`, and the UNNEST
    // statement.
    let rows_backend = backend
        .config()
        .clone()
        .with_batch_threshold(usize::MAX)
        .build()
        .await
        .unwrap();
    let unnest_backend = rows_backend
        .config()
        .clone()
        .with_copy_threshold(usize::MAX)
        .build()
        .await
        .unwrap();
    let mut conn = backend.pool().acquire().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE raw_bare (shard_id UUID NOT NULL, ts BIGINT NOT NULL, row_bytes BYTEA NOT NULL, diff BIGINT NOT NULL);
         CREATE TABLE raw_indexed (shard_id UUID NOT NULL, ts BIGINT NOT NULL, row_bytes BYTEA NOT NULL, diff BIGINT NOT NULL);
         CREATE INDEX ON raw_indexed (shard_id, ts);",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let rows: Vec<Row> = (0..BULK_UPDATES).map(row).collect();
    let shards = [ShardId::new(), ShardId::new(), ShardId::new()];
    for shard in shards {
        PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    }
    let raw_shard = Uuid::new_v4();
    let mut ours: [Vec<Duration>; 3] = Default::default();
    let (mut bare, mut indexed) = (Vec::new(), Vec::new());
    for round in 0..BULK_ROUNDS as u64 {
        let updates: Vec<Update<u64>> = rows
            .iter()
            .map(|row| Update::new(row.clone(), round, 1))
            .collect();
        for ((handle, shard), samples) in [&backend, &rows_backend, &unnest_backend]
            .into_iter()
            .zip(shards)
            .zip(ours.iter_mut())
        {
            let started = Instant::now();
            handle
                .compare_and_append(
                    shard,
                    updates.clone(),
                    at(round),
                    at(round + 1),
                    IdempotencyToken::new(),
                    WriteFence::Unfenced,
                )
                .await
                .unwrap()
                .unwrap();
            samples.push(started.elapsed());
        }

        // The raw client encodes its stream inside the timed region too.
        let started = Instant::now();
        let stream = copy_stream(raw_shard, round.encode(), &rows);
        raw_copy(&mut conn, "raw_bare", &stream).await;
        bare.push(started.elapsed());

        let started = Instant::now();
        let stream = copy_stream(raw_shard, round.encode(), &rows);
        raw_copy(&mut conn, "raw_indexed", &stream).await;
        indexed.push(started.elapsed());
    }
    let [batches, rows_copy, rows_unnest] = ours.map(median);
    let bare = median(bare);
    let indexed = median(indexed);
    println!(
        "bulk append {BULK_UPDATES} updates (batch rows): throughput ratio vs raw COPY into a bare table = {:.2} (goal >= 0.8); vs raw COPY into a table with the row layout's index = {:.2}",
        bare.as_secs_f64() / batches.as_secs_f64(),
        indexed.as_secs_f64() / batches.as_secs_f64(),
    );
    println!(
        "bulk append {BULK_UPDATES} updates (row layout, COPY): throughput ratio vs raw COPY into a bare table = {:.2}; (row layout, UNNEST) = {:.2}",
        bare.as_secs_f64() / rows_copy.as_secs_f64(),
        bare.as_secs_f64() / rows_unnest.as_secs_f64(),
    );
}

async fn bench_small(url: &str, schema: &str) {
    let backend = PostgresConfig::from_url(url)
        .unwrap()
        .with_schema(schema)
        .with_pool_size(1)
        .build()
        .await
        .unwrap();
    let mut conn = backend.pool().acquire().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS raw_small (shard_id UUID NOT NULL, ts BIGINT NOT NULL, row_bytes BYTEA NOT NULL, diff BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let rows: Vec<Row> = (0..SMALL_UPDATES).map(row).collect();
    let raw_shard = Uuid::new_v4();
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for round in 0..SMALL_ROUNDS as u64 {
        let updates: Vec<Update<u64>> = rows
            .iter()
            .map(|row| Update::new(row.clone(), round, 1))
            .collect();
        let started = Instant::now();
        backend
            .compare_and_append(
                shard,
                updates,
                at(round),
                at(round + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
        ours.push(started.elapsed());

        let started = Instant::now();
        let mut conn = backend.pool().acquire().await.unwrap();
        let times: Vec<i64> = vec![round.encode(); rows.len()];
        let bytes: Vec<&[u8]> = rows.iter().map(Row::as_bytes).collect();
        let diffs: Vec<i64> = vec![1; rows.len()];
        let mut tx = conn.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO raw_small (shard_id, ts, row_bytes, diff)
             SELECT $1, * FROM unnest($2::BIGINT[], $3::BYTEA[], $4::BIGINT[])",
        )
        .bind(raw_shard)
        .bind(&times)
        .bind(&bytes)
        .bind(&diffs)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        raw.push(started.elapsed());
    }
    let ours = median(ours);
    let raw = median(raw);
    println!(
        "small append {SMALL_UPDATES} updates: latency ratio vs raw BEGIN; INSERT; COMMIT = {:.2} (goal <= 1.2)",
        ours.as_secs_f64() / raw.as_secs_f64(),
    );
}

/// Fills `shard` with every one of `rows` at every time `0..SNAPSHOT_TIMES`
/// (every third time a retraction, so consolidation has work to do), and
/// the bare table `raw_snapshot` with the same updates.
async fn fill_snapshot_shard(
    backend: &tidemark_backend_postgres::PostgresBackend,
    shard: ShardId,
    rows: &[Row],
) {
    PersistBackend::<u64>::open(backend, shard).await.unwrap();
    for time in 0..SNAPSHOT_TIMES {
        let diff = if time % 3 == 2 { -1 } else { 1 };
        let updates: Vec<Update<u64>> = rows
            .iter()
            .map(|row| Update::new(row.clone(), time, diff))
            .collect();
        backend
            .compare_and_append(
                shard,
                updates,
                at(time),
                at(time + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
    }
}

async fn bench_snapshot(url: &str, schema: &str) {
    let backend = PostgresConfig::from_url(url)
        .unwrap()
        .with_schema(schema)
        .build()
        .await
        .unwrap();
    let rows_backend = backend
        .config()
        .clone()
        .with_batch_threshold(usize::MAX)
        .build()
        .await
        .unwrap();
    let rows: Vec<Row> = (0..SNAPSHOT_ROWS).map(row).collect();
    let shard = ShardId::new();
    fill_snapshot_shard(&backend, shard, &rows).await;
    let rows_shard = ShardId::new();
    fill_snapshot_shard(&rows_backend, rows_shard, &rows).await;
    let mut conn = backend.pool().acquire().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE raw_snapshot (shard_id UUID NOT NULL, ts BIGINT NOT NULL, row_bytes BYTEA NOT NULL, diff BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    for time in 0..SNAPSHOT_TIMES {
        let diff = if time % 3 == 2 { -1 } else { 1 };
        let stream = copy_stream_with_diff(shard.0, time.encode(), &rows, diff);
        raw_copy(&mut conn, "raw_snapshot", &stream).await;
    }
    sqlx::raw_sql("ANALYZE updates; ANALYZE update_batches; ANALYZE raw_snapshot")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let as_of = SNAPSHOT_TIMES - 1;
    let mut samples: [Vec<Duration>; 6] = Default::default();
    let mut sizes = [0usize; 6];
    for _ in 0..SNAPSHOT_ROUNDS {
        let started = Instant::now();
        let snapshot = backend.snapshot(shard, &as_of).await.unwrap();
        samples[0].push(started.elapsed());
        sizes[0] = snapshot.len();
        drop(snapshot);

        let started = Instant::now();
        let mut stream = backend
            .snapshot_stream(shard, &as_of, ReadShare::WHOLE, ChunkLimit::DEFAULT)
            .await
            .unwrap();
        let mut streamed = 0;
        while let Some(chunk) = stream.next().await {
            streamed += chunk.unwrap().len();
        }
        samples[1].push(started.elapsed());
        sizes[1] = streamed;

        let started = Instant::now();
        let snapshot = rows_backend.snapshot(rows_shard, &as_of).await.unwrap();
        samples[2].push(started.elapsed());
        sizes[2] = snapshot.len();
        drop(snapshot);

        // Raw reads of the same data from the bare table, decoded into
        // rows as the backend does: ordered by the server, sorted by the
        // client, and (not what a snapshot delivers) unordered.
        for (index, ordered_by_server, sorted_by_client) in
            [(3, true, false), (4, false, true), (5, false, false)]
        {
            let statement = if ordered_by_server {
                "SELECT row_bytes, sum(diff)::BIGINT FROM raw_snapshot
                 WHERE shard_id = $1 AND ts <= $2
                 GROUP BY row_bytes HAVING sum(diff) <> 0 ORDER BY row_bytes"
            } else {
                "SELECT row_bytes, sum(diff)::BIGINT FROM raw_snapshot
                 WHERE shard_id = $1 AND ts <= $2
                 GROUP BY row_bytes HAVING sum(diff) <> 0"
            };
            let started = Instant::now();
            let mut conn = backend.pool().acquire().await.unwrap();
            let result: Vec<(Vec<u8>, i64)> = sqlx::query_as(statement)
                .bind(shard.0)
                .bind(as_of.encode())
                .fetch_all(&mut *conn)
                .await
                .unwrap();
            let mut decoded: Vec<(Row, i64)> = result
                .into_iter()
                .map(|(bytes, diff)| (Row::from_bytes(&bytes).unwrap(), diff))
                .collect();
            if sorted_by_client {
                decoded.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            }
            samples[index].push(started.elapsed());
            sizes[index] = decoded.len();
        }
    }
    assert!(
        sizes.iter().all(|size| *size == sizes[0]),
        "every read returns the same rows: {sizes:?}"
    );
    let [
        ours,
        streamed,
        row_layout,
        raw_ordered,
        raw_sorted,
        raw_unordered,
    ] = samples.map(median);
    let best_raw = raw_ordered.min(raw_sorted);
    let updates = SNAPSHOT_ROWS * SNAPSHOT_TIMES as i64;
    println!(
        "snapshot of a {updates} update shard in batch rows ({} rows out): time ratio vs the best raw ordered read of a bare table = {:.2} (goal <= 1.1); streamed = {:.2}; vs the raw unordered read = {:.2}",
        sizes[0],
        ours.as_secs_f64() / best_raw.as_secs_f64(),
        streamed.as_secs_f64() / best_raw.as_secs_f64(),
        ours.as_secs_f64() / raw_unordered.as_secs_f64(),
    );
    println!(
        "snapshot of a {updates} update shard in the row layout: time ratio vs the best raw ordered read = {:.2}; raw ordered by the server vs sorted by the client = {:.2}",
        row_layout.as_secs_f64() / best_raw.as_secs_f64(),
        raw_ordered.as_secs_f64() / raw_sorted.as_secs_f64(),
    );
}

/// A small snapshot and fetch (one append of `SMALL_SNAPSHOT_ROWS` rows,
/// the row layout): the `Vec` form and the streamed form collected into a
/// `Vec`, against a raw `GROUP BY ... ORDER BY` of the same rows in a bare
/// table on a pooled connection; and `frontiers` against the same
/// statement on the shard row, written by hand.
async fn bench_small_snapshot(url: &str, schema: &str) {
    let backend = PostgresConfig::from_url(url)
        .unwrap()
        .with_schema(schema)
        .build()
        .await
        .unwrap();
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let rows: Vec<Row> = (0..SMALL_SNAPSHOT_ROWS).map(row).collect();
    let updates: Vec<Update<u64>> = rows
        .iter()
        .map(|row| Update::new(row.clone(), 0, 1))
        .collect();
    backend
        .compare_and_append(
            shard,
            updates,
            at(0),
            at(1),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    let mut conn = backend.pool().acquire().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE raw_small_snapshot (shard_id UUID NOT NULL, ts BIGINT NOT NULL, row_bytes BYTEA NOT NULL, diff BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    raw_copy(
        &mut conn,
        "raw_small_snapshot",
        &copy_stream(shard.0, 0, &rows),
    )
    .await;
    drop(conn);
    let mut samples: [Vec<Duration>; 8] = Default::default();
    for _ in 0..SMALL_SNAPSHOT_ROUNDS {
        let started = Instant::now();
        let whole = backend.snapshot(shard, &0).await.unwrap();
        samples[0].push(started.elapsed());

        let started = Instant::now();
        let stream = backend
            .snapshot_stream(shard, &0, ReadShare::WHOLE, ChunkLimit::DEFAULT)
            .await
            .unwrap();
        let collected = collect_stream(stream).await.unwrap();
        samples[1].push(started.elapsed());

        let started = Instant::now();
        let mut conn = backend.pool().acquire().await.unwrap();
        let result: Vec<(Vec<u8>, i64)> = sqlx::query_as(
            "SELECT row_bytes, sum(diff)::BIGINT FROM raw_small_snapshot
             WHERE shard_id = $1 AND ts <= $2
             GROUP BY row_bytes HAVING sum(diff) <> 0 ORDER BY row_bytes",
        )
        .bind(shard.0)
        .bind(0i64)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let raw: Vec<(Row, i64)> = result
            .into_iter()
            .map(|(bytes, diff)| (Row::from_bytes(&bytes).unwrap(), diff))
            .collect();
        drop(conn);
        samples[2].push(started.elapsed());
        assert!(whole.len() == collected.len() && whole.len() == raw.len());

        let started = Instant::now();
        let fetched = backend.fetch(shard, &at(0), &at(1)).await.unwrap();
        samples[3].push(started.elapsed());

        let started = Instant::now();
        let stream = backend
            .fetch_stream(shard, &at(0), &at(1), ReadShare::WHOLE, ChunkLimit::DEFAULT)
            .await
            .unwrap();
        let streamed = collect_stream(stream).await.unwrap();
        samples[4].push(started.elapsed());

        let started = Instant::now();
        let mut conn = backend.pool().acquire().await.unwrap();
        let result: Vec<(i64, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT ts, row_bytes, sum(diff)::BIGINT FROM raw_small_snapshot
             WHERE shard_id = $1 AND ts >= $2 AND ts < $3
             GROUP BY ts, row_bytes HAVING sum(diff) <> 0 ORDER BY ts, row_bytes",
        )
        .bind(shard.0)
        .bind(0i64)
        .bind(1i64)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let raw: Vec<Update<u64>> = result
            .into_iter()
            .map(|(time, bytes, diff)| {
                Update::new(Row::from_bytes(&bytes).unwrap(), u64::decode(time), diff)
            })
            .collect();
        drop(conn);
        samples[5].push(started.elapsed());
        assert!(fetched.len() == streamed.len() && fetched.len() == raw.len());

        let started = Instant::now();
        let frontiers = PersistBackend::<u64>::frontiers(&backend, shard)
            .await
            .unwrap();
        samples[6].push(started.elapsed());

        let started = Instant::now();
        let mut conn = backend.pool().acquire().await.unwrap();
        let (since, upper): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT since, upper FROM shards WHERE shard_id = $1")
                .bind(shard.0)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        drop(conn);
        samples[7].push(started.elapsed());
        assert_eq!(upper.map(u64::decode), frontiers.upper.as_option().copied());
        assert_eq!(since.map(u64::decode), frontiers.since.as_option().copied());
    }
    let [
        whole,
        streamed,
        raw,
        fetch_whole,
        fetch_streamed,
        fetch_raw,
        frontiers,
        frontiers_raw,
    ] = samples.map(median);
    let ratio = |of: Duration, to: Duration| of.as_secs_f64() / to.as_secs_f64();
    println!(
        "snapshot of a {SMALL_SNAPSHOT_ROWS} row shard: latency ratio vs a raw ordered read = {:.2}; streamed and collected = {:.2}; streamed vs the Vec form = {:.2} (goal <= 1.2; raw {:?})",
        ratio(whole, raw),
        ratio(streamed, raw),
        ratio(streamed, whole),
        raw,
    );
    println!(
        "fetch of the same {SMALL_SNAPSHOT_ROWS} updates: latency ratio vs a raw ordered read = {:.2}; streamed and collected = {:.2} (goal <= 1.2; raw {fetch_raw:?})",
        ratio(fetch_whole, fetch_raw),
        ratio(fetch_streamed, fetch_raw),
    );
    println!(
        "frontiers: latency ratio vs a raw read of the shard row = {:.2} (goal <= 1.2; raw {frontiers_raw:?})",
        ratio(frontiers, frontiers_raw),
    );
}

/// This process's resident set size and its peak, in bytes, from
/// `/proc/self/status` (`VmRSS`, `VmHWM`).
fn rss_and_peak() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs `work` and returns how far the peak RSS rose above the RSS before
/// it, in bytes. Each phase runs in a process of its own (see
/// [`rss_phase`]), so no earlier allocation hides in the figure or lends it
/// freed memory.
async fn peak_growth<F: std::future::Future<Output = ()>>(work: F) -> u64 {
    let (before, _) = rss_and_peak();
    work.await;
    let (_, peak) = rss_and_peak();
    peak.saturating_sub(before)
}

/// Runs this benchmark again as a child process that performs one RSS
/// phase on the shard and prints its peak growth; returns that growth.
fn measure_in_child(url: &str, schema: &str, shard: ShardId, appends: u64, phase: &str) -> u64 {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .env("TIDEMARK_TEST_POSTGRES_URL", url)
        .env("TIDEMARK_BENCH_RSS_PHASE", phase)
        .env("TIDEMARK_BENCH_RSS_SCHEMA", schema)
        .env("TIDEMARK_BENCH_RSS_SHARD", shard.0.to_string())
        .env("TIDEMARK_BENCH_RSS_APPENDS", appends.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("peak_growth_bytes="))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "rss phase {phase} failed: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// One RSS phase, in a child process: `snapshot` / `fetch` (streamed),
/// `vec_snapshot` / `vec_fetch` (the `Vec` forms), or `compact` (after
/// moving the since to the last time).
async fn rss_phase(url: &str, phase: &str) {
    let var = |name: &str| std::env::var(name).unwrap();
    let backend = PostgresConfig::from_url(url)
        .unwrap()
        .with_schema(var("TIDEMARK_BENCH_RSS_SCHEMA"))
        .build()
        .await
        .unwrap();
    let shard = ShardId(var("TIDEMARK_BENCH_RSS_SHARD").parse().unwrap());
    let appends: u64 = var("TIDEMARK_BENCH_RSS_APPENDS").parse().unwrap();
    let as_of = appends - 1;
    // Warm the pool and the runtime before the baseline.
    PersistBackend::<u64>::frontiers(&backend, shard)
        .await
        .unwrap();
    if phase == "compact" {
        PersistBackend::<u64>::downgrade_since(&backend, shard, &at(as_of), WriteFence::Unfenced)
            .await
            .unwrap();
    }
    let growth = peak_growth(async {
        match phase {
            "snapshot" => {
                let mut stream = backend
                    .snapshot_stream(shard, &as_of, ReadShare::WHOLE, ChunkLimit::DEFAULT)
                    .await
                    .unwrap();
                while let Some(chunk) = stream.next().await {
                    drop(chunk.unwrap());
                }
            }
            "vec_snapshot" => drop(backend.snapshot(shard, &as_of).await.unwrap()),
            "fetch" => {
                let mut stream = backend
                    .fetch_stream(
                        shard,
                        &at(0),
                        &at(appends),
                        ReadShare::WHOLE,
                        ChunkLimit::DEFAULT,
                    )
                    .await
                    .unwrap();
                while let Some(chunk) = stream.next().await {
                    drop(chunk.unwrap());
                }
            }
            "vec_fetch" => drop(backend.fetch(shard, &at(0), &at(appends)).await.unwrap()),
            "compact" => {
                let stats = PersistBackend::<u64>::compact(&backend, shard)
                    .await
                    .unwrap();
                println!(
                    "compacted {} to {} updates",
                    stats.updates_before, stats.updates_after
                );
            }
            other => panic!("unknown rss phase {other}"),
        }
    })
    .await;
    println!("peak_growth_bytes={growth}");
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

async fn bench_rss(url: &str, schema: &str) {
    let total: u64 = std::env::var("TIDEMARK_BENCH_RSS_UPDATES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(RSS_DEFAULT_UPDATES);
    let backend = PostgresConfig::from_url(url)
        .unwrap()
        .with_schema(schema)
        .build()
        .await
        .unwrap();
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    // Appends of RSS_APPEND_UPDATES distinct rows, one per time; the rows
    // come in blocks, each appended at ten (or, for fewer than ten
    // appends, every) different times, so compaction consolidates.
    let appends = total.div_ceil(RSS_APPEND_UPDATES);
    let blocks = (appends / 10).max(1);
    let distinct = blocks * RSS_APPEND_UPDATES;
    let started = Instant::now();
    for time in 0..appends {
        let count = RSS_APPEND_UPDATES.min(total - time * RSS_APPEND_UPDATES);
        let block = (time % blocks) * RSS_APPEND_UPDATES;
        let updates: Vec<Update<u64>> = (0..count)
            .map(|offset| Update::new(row((block + offset) as i64), time, 1))
            .collect();
        backend
            .compare_and_append(
                shard,
                updates,
                at(time),
                at(time + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
    }
    println!(
        "rss: a {total} update shard (at most {distinct} distinct rows) written in {appends} appends in {:.1?}",
        started.elapsed()
    );
    let measure = |phase: &str| measure_in_child(url, schema, shard, appends, phase);
    let streamed_snapshot = measure("snapshot");
    let vec_snapshot = measure("vec_snapshot");
    let streamed_fetch = measure("fetch");
    let vec_fetch = measure("vec_fetch");
    let compaction = measure("compact");
    let ratio = |ours: u64, baseline: u64| ours as f64 / baseline.max(1) as f64;
    println!(
        "rss at {total} updates: peak growth of a streamed snapshot = {:.0} MiB (goal < 512), ratio vs the Vec snapshot's {:.0} MiB = {:.3}",
        mib(streamed_snapshot),
        mib(vec_snapshot),
        ratio(streamed_snapshot, vec_snapshot),
    );
    println!(
        "rss at {total} updates: peak growth of a streamed fetch from the start = {:.0} MiB (goal < 512), ratio vs the Vec fetch's {:.0} MiB = {:.3}",
        mib(streamed_fetch),
        mib(vec_fetch),
        ratio(streamed_fetch, vec_fetch),
    );
    println!(
        "rss at {total} updates: peak growth of compaction = {:.0} MiB (goal < 512), ratio vs the Vec snapshot's = {:.3}",
        mib(compaction),
        ratio(compaction, vec_snapshot),
    );
}

async fn drop_schema(url: &str, schema: &str) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}

fn main() {
    let url = std::env::var("TIDEMARK_TEST_POSTGRES_URL")
        .or_else(|_| std::env::var("TIDEMARK_POSTGRES_URL"))
        .ok()
        .filter(|url| !url.is_empty());
    let Some(url) = url else {
        println!(
            "SKIPPED postgres benchmark: set TIDEMARK_TEST_POSTGRES_URL (or TIDEMARK_POSTGRES_URL)"
        );
        return;
    };
    if let Ok(phase) = std::env::var("TIDEMARK_BENCH_RSS_PHASE") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(rss_phase(&url, &phase));
        return;
    }
    let schema = format!("tmbench_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::var("TIDEMARK_BENCH_ONLY").unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only == part;
    runtime.block_on(async {
        if runs("bulk") {
            bench_bulk(&url, &schema).await;
        }
        if runs("small") {
            bench_small(&url, &schema).await;
        }
        if runs("small_snapshot") {
            bench_small_snapshot(&url, &schema).await;
        }
        if runs("snapshot") {
            bench_snapshot(&url, &schema).await;
        }
        if runs("rss") {
            bench_rss(&url, &schema).await;
        }
        drop_schema(&url, &schema).await;
    });
}
