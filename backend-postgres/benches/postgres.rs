//! PostgreSQL backend benchmark: each figure is a ratio against a raw
//! baseline run on the same server, in the same run, through the same kind
//! of pooled connection (absolute times on shared machines are noise).
//!
//! - bulk append of 100,000 updates vs a raw binary `COPY` of the same rows
//!   into a bare table with the same columns (throughput ratio, goal >= 0.8),
//!   and vs the same `COPY` into a table with the backend's index;
//! - small append (10 updates) vs a raw `BEGIN; INSERT; COMMIT` (latency
//!   ratio, goal <= 1.5);
//! - snapshot of a 1,000,000-update shard vs the raw `GROUP BY` query over
//!   the same table.
//!
//! Needs a server: `TIDEMARK_TEST_POSTGRES_URL` (or `TIDEMARK_POSTGRES_URL`);
//! without one it says so and exits. Run with
//! `cargo bench -p tidemark-backend-postgres`.

use std::time::{Duration, Instant};
use tidemark_storage_types::WriteFence;

use sqlx::{Connection, PgConnection};
use tidemark_backend_postgres::PostgresConfig;
use tidemark_storage_types::{
    Codec64, Datum, IdempotencyToken, PersistBackend, Row, ShardId, Update,
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
        buffer.extend_from_slice(&1i64.to_be_bytes());
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
    let unnest_backend = backend
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
    let copy_shard = ShardId::new();
    let unnest_shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, copy_shard)
        .await
        .unwrap();
    PersistBackend::<u64>::open(&backend, unnest_shard)
        .await
        .unwrap();
    let raw_shard = Uuid::new_v4();
    let (mut ours, mut ours_unnest, mut bare, mut indexed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..BULK_ROUNDS as u64 {
        let updates: Vec<Update<u64>> = rows
            .iter()
            .map(|row| Update::new(row.clone(), round, 1))
            .collect();
        let started = Instant::now();
        backend
            .compare_and_append(
                copy_shard,
                updates.clone(),
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
        unnest_backend
            .compare_and_append(
                unnest_shard,
                updates,
                at(round),
                at(round + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
        ours_unnest.push(started.elapsed());

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
    let ours = median(ours);
    let ours_unnest = median(ours_unnest);
    let bare = median(bare);
    let indexed = median(indexed);
    println!(
        "bulk append {BULK_UPDATES} updates (COPY path): throughput ratio vs raw COPY into a bare table = {:.2} (goal >= 0.8); vs raw COPY into a table with the same index = {:.2}",
        bare.as_secs_f64() / ours.as_secs_f64(),
        indexed.as_secs_f64() / ours.as_secs_f64(),
    );
    println!(
        "bulk append {BULK_UPDATES} updates (UNNEST path): throughput ratio vs raw COPY into a bare table = {:.2}; vs the COPY path = {:.2}",
        bare.as_secs_f64() / ours_unnest.as_secs_f64(),
        ours.as_secs_f64() / ours_unnest.as_secs_f64(),
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
        "small append {SMALL_UPDATES} updates: latency ratio vs raw BEGIN; INSERT; COMMIT = {:.2} (goal <= 1.5)",
        ours.as_secs_f64() / raw.as_secs_f64(),
    );
}

async fn bench_snapshot(url: &str, schema: &str) {
    let backend = PostgresConfig::from_url(url)
        .unwrap()
        .with_schema(schema)
        .build()
        .await
        .unwrap();
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let rows: Vec<Row> = (0..SNAPSHOT_ROWS).map(row).collect();
    for time in 0..SNAPSHOT_TIMES {
        // Every row at every time; every third time a retraction, so
        // consolidation has work to do.
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
    let mut conn = backend.pool().acquire().await.unwrap();
    sqlx::raw_sql("ANALYZE updates")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let as_of = SNAPSHOT_TIMES - 1;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    let mut sizes = (0, 0);
    for _ in 0..SNAPSHOT_ROUNDS {
        let started = Instant::now();
        let snapshot = backend.snapshot(shard, &as_of).await.unwrap();
        ours.push(started.elapsed());
        sizes.0 = snapshot.len();
        drop(snapshot);

        let started = Instant::now();
        let mut conn = backend.pool().acquire().await.unwrap();
        let result: Vec<(Vec<u8>, i64)> = sqlx::query_as(
            "SELECT row_bytes, sum(diff)::BIGINT FROM updates
             WHERE shard_id = $1 AND ts <= $2
             GROUP BY row_bytes HAVING sum(diff) <> 0",
        )
        .bind(shard.0)
        .bind(as_of.encode())
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        raw.push(started.elapsed());
        sizes.1 = result.len();
    }
    assert_eq!(sizes.0, sizes.1, "both reads return the same rows");
    let ours = median(ours);
    let raw = median(raw);
    println!(
        "snapshot of a {} update shard ({} rows out): time ratio vs the raw GROUP BY query = {:.2}",
        SNAPSHOT_ROWS * SNAPSHOT_TIMES as i64,
        sizes.0,
        ours.as_secs_f64() / raw.as_secs_f64(),
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
    let schema = format!("tmbench_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        bench_bulk(&url, &schema).await;
        bench_small(&url, &schema).await;
        bench_snapshot(&url, &schema).await;
        drop_schema(&url, &schema).await;
    });
}
