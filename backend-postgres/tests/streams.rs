//! Streamed reads and the batch layout of the PostgreSQL backend: streams
//! equal the `Vec` reads over both layouts, chunks keep their limit, the
//! state is fixed at the call, dropped streams give their connection back,
//! the open-stream limit is a clear error, and a schema of the previous
//! version migrates with its data.

mod support;

use std::collections::BTreeMap;

use futures::StreamExt;
use sqlx::Connection;
use support::reads::{append, at, backend_with, limit};
use support::{PostgresFactory, test_url};
use tidemark_backend_postgres::PostgresBackend;
use tidemark_backend_postgres::schema::{MIGRATIONS, latest_version};
use tidemark_storage_types::{
    ChunkEntry, ChunkLimit, Codec64, Datum, DeterminateKind, Diff, PersistBackend, ReadShare, Row,
    ShardId, Update, WriteFence, collect_stream,
};

fn row(value: i64) -> Row {
    Row::pack([Datum::Int64(value), Datum::String("streamed payload")])
}

/// How many rows each table stores for the shard: `(updates, batches)`.
async fn stored_rows(backend: &PostgresBackend, shard: ShardId) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM updates WHERE shard_id = $1),
                (SELECT count(*) FROM update_batches WHERE shard_id = $1)",
    )
    .bind(shard.0)
    .fetch_one(backend.pool())
    .await
    .unwrap()
}

/// Appends, at times 0..6, small appends (rows) and large ones (batches),
/// with repeated rows and retractions, and returns everything appended.
async fn fill_both_layouts(backend: &PostgresBackend, shard: ShardId) -> Vec<Update<u64>> {
    let mut all = Vec::new();
    for time in 0..6u64 {
        let updates: Vec<Update<u64>> = if time % 2 == 0 {
            // Large: 40 updates, over the batch threshold of 10.
            (0..40)
                .map(|value| Update::new(row(value), time, if value % 5 == 0 { -1 } else { 1 }))
                .collect()
        } else {
            // Small: 4 updates, stored as rows.
            (0..4)
                .map(|value| Update::new(row(value * 7), time, 2))
                .collect()
        };
        all.extend(updates.iter().cloned());
        append(backend, shard, time, &updates).await;
    }
    let (rows, batches) = stored_rows(backend, shard).await;
    assert!(
        rows > 0 && batches > 0,
        "both layouts hold data: {rows} {batches}"
    );
    all
}

/// The snapshot at `as_of` computed from the appended updates, in row order.
fn expected_snapshot(all: &[Update<u64>], as_of: u64) -> Vec<(Row, Diff)> {
    let mut sums: BTreeMap<Row, Diff> = BTreeMap::new();
    for update in all.iter().filter(|update| update.timestamp <= as_of) {
        *sums.entry(update.row.clone()).or_default() += update.diff;
    }
    sums.into_iter().filter(|(_, diff)| *diff != 0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_and_vec_snapshots_agree_with_the_appends_across_both_layouts() {
    let Some(url) = test_url("streamed snapshots across layouts") else {
        return;
    };
    let (_factory, backend) = backend_with(&url, "tmstream", 10, 4, 2).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let all = fill_both_layouts(&backend, shard).await;
    for as_of in 0..6u64 {
        let expected = expected_snapshot(&all, as_of);
        let vec = backend.snapshot(shard, &as_of).await.unwrap();
        assert_eq!(vec, expected, "as_of={as_of}");
        let stream = backend
            .snapshot_stream(shard, &as_of, ReadShare::WHOLE, limit(7, 1 << 20))
            .await
            .unwrap();
        assert_eq!(
            collect_stream(stream).await.unwrap(),
            expected,
            "as_of={as_of}"
        );
        // The shares partition the snapshot, streamed as in whole.
        let mut shared = Vec::new();
        for index in 0..3 {
            let share = ReadShare::new(index, 3);
            let vec = backend.snapshot_share(shard, &as_of, share).await.unwrap();
            let stream = backend
                .snapshot_stream(shard, &as_of, share, limit(5, 1 << 20))
                .await
                .unwrap();
            assert_eq!(collect_stream(stream).await.unwrap(), vec);
            shared.extend(vec);
        }
        shared.sort();
        assert_eq!(shared, expected, "as_of={as_of}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_and_vec_fetches_agree_across_both_layouts_and_compaction() {
    let Some(url) = test_url("streamed fetches across layouts") else {
        return;
    };
    let (_factory, backend) = backend_with(&url, "tmfetch", 10, 4, 2).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let all = fill_both_layouts(&backend, shard).await;
    let check = |lower: u64, upper: u64| {
        let backend = backend.clone();
        async move {
            let vec = backend.fetch(shard, &at(lower), &at(upper)).await.unwrap();
            let stream = backend
                .fetch_stream(
                    shard,
                    &at(lower),
                    &at(upper),
                    ReadShare::WHOLE,
                    limit(6, 1 << 20),
                )
                .await
                .unwrap();
            assert_eq!(
                collect_stream(stream).await.unwrap(),
                vec,
                "[{lower}, {upper})"
            );
            vec
        }
    };
    for lower in 0..6u64 {
        for upper in lower..=6 {
            let fetched = check(lower, upper).await;
            let mut expected: BTreeMap<(u64, Row), Diff> = BTreeMap::new();
            for update in &all {
                if (lower..upper).contains(&update.timestamp) {
                    *expected
                        .entry((update.timestamp, update.row.clone()))
                        .or_default() += update.diff;
                }
            }
            let expected: Vec<Update<u64>> = expected
                .into_iter()
                .filter(|(_, diff)| *diff != 0)
                .map(|((time, row), diff)| Update::new(row, time, diff))
                .collect();
            assert_eq!(fetched, expected, "[{lower}, {upper})");
        }
    }
    // After compaction to 3 the snapshots at 3 and later are unchanged,
    // and fetches see times advanced by the since.
    let before: Vec<_> = futures::future::join_all((3..6u64).map(|as_of| {
        let backend = backend.clone();
        async move { backend.snapshot(shard, &as_of).await.unwrap() }
    }))
    .await;
    PersistBackend::<u64>::downgrade_since(&backend, shard, &at(3), WriteFence::Unfenced)
        .await
        .unwrap();
    PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    for (as_of, before) in (3..6u64).zip(before) {
        assert_eq!(backend.snapshot(shard, &as_of).await.unwrap(), before);
        let stream = backend
            .snapshot_stream(shard, &as_of, ReadShare::WHOLE, limit(4, 1 << 20))
            .await
            .unwrap();
        assert_eq!(collect_stream(stream).await.unwrap(), before);
    }
    let fetched = check(0, 6).await;
    assert!(
        fetched.iter().all(|update| update.timestamp >= 3),
        "{fetched:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chunk_is_non_empty_and_within_the_limit() {
    let Some(url) = test_url("streamed chunk limits") else {
        return;
    };
    let (_factory, backend) = backend_with(&url, "tmchunk", 10, 4, 2).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let all = fill_both_layouts(&backend, shard).await;
    let expected = expected_snapshot(&all, 5);
    let one = expected[0].chunk_bytes();
    for chunk_limit in [
        limit(1, 1 << 20),
        limit(3, 1 << 20),
        limit(100, one * 2),
        limit(100, 1),
    ] {
        let mut stream = backend
            .snapshot_stream(shard, &5, ReadShare::WHOLE, chunk_limit)
            .await
            .unwrap();
        let mut collected = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            assert!(!chunk.is_empty());
            assert!(
                chunk.len() <= chunk_limit.max_entries.get(),
                "{chunk_limit:?}"
            );
            let bytes: usize = chunk.iter().map(ChunkEntry::chunk_bytes).sum();
            assert!(
                chunk.len() == 1 || bytes <= chunk_limit.max_bytes.get(),
                "{chunk_limit:?}: {bytes} bytes in {} entries",
                chunk.len()
            );
            collected.extend(chunk);
        }
        assert_eq!(collected, expected, "{chunk_limit:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reads_the_state_of_its_call() {
    let Some(url) = test_url("streams read the state of their call") else {
        return;
    };
    let (_factory, backend) = backend_with(&url, "tmfixed", 10, 4, 2).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let all = fill_both_layouts(&backend, shard).await;
    let expected_snapshot = backend.snapshot(shard, &5).await.unwrap();
    let expected_fetch = backend.fetch(shard, &at(0), &at(6)).await.unwrap();
    let snapshot = backend
        .snapshot_stream(shard, &5, ReadShare::WHOLE, limit(2, 1 << 20))
        .await
        .unwrap();
    let fetch = backend
        .fetch_stream(shard, &at(0), &at(6), ReadShare::WHOLE, limit(2, 1 << 20))
        .await
        .unwrap();
    // After the calls: a large append (batch), a small one (rows), the
    // since moved past both reads and compaction rewriting everything.
    append(
        &backend,
        shard,
        6,
        &(0..40)
            .map(|value| Update::new(row(value), 6, 5))
            .collect::<Vec<_>>(),
    )
    .await;
    append(&backend, shard, 7, &[Update::new(row(1000), 7, 1)]).await;
    PersistBackend::<u64>::downgrade_since(&backend, shard, &at(7), WriteFence::Unfenced)
        .await
        .unwrap();
    PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    assert_ne!(
        backend.snapshot(shard, &7).await.unwrap(),
        expected_snapshot
    );
    assert_eq!(collect_stream(snapshot).await.unwrap(), expected_snapshot);
    assert_eq!(collect_stream(fetch).await.unwrap(), expected_fetch);
    assert!(!all.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_streams_give_their_connections_back() {
    let Some(url) = test_url("dropped streams release connections") else {
        return;
    };
    // Two connections, one stream at a time: a stream that kept its
    // connection after being dropped would exhaust the pool within three
    // rounds (acquiring fails after the connect timeout).
    let (_factory, backend) = backend_with(&url, "tmdrop", 10, 2, 1).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let all = fill_both_layouts(&backend, shard).await;
    for round in 0..30 {
        let mut stream = backend
            .snapshot_stream(shard, &5, ReadShare::WHOLE, limit(1, 1 << 20))
            .await
            .unwrap_or_else(|err| panic!("round {round}: {err}"));
        if round % 2 == 0 {
            // Dropped part-way, with the cursor open.
            assert!(stream.next().await.unwrap().is_ok());
        }
        drop(stream);
        assert_eq!(backend.open_streams(), 0, "round {round}");
    }
    assert_eq!(
        backend.snapshot(shard, &5).await.unwrap(),
        expected_snapshot(&all, 5)
    );
    append(&backend, shard, 6, &[Update::new(row(1), 6, 1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_more_streams_than_the_limit_is_unavailable_until_one_ends() {
    let Some(url) = test_url("open stream limit") else {
        return;
    };
    let (_factory, backend) = backend_with(&url, "tmlimit", 10, 4, 2).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    fill_both_layouts(&backend, shard).await;
    let first = backend
        .snapshot_stream(shard, &5, ReadShare::WHOLE, limit(1, 1 << 20))
        .await
        .unwrap();
    let second = backend
        .fetch_stream(shard, &at(0), &at(6), ReadShare::WHOLE, limit(1, 1 << 20))
        .await
        .unwrap();
    assert_eq!(backend.open_streams(), 2);
    let Err(err) = backend
        .snapshot_stream(shard, &5, ReadShare::WHOLE, ChunkLimit::DEFAULT)
        .await
    else {
        panic!("a third stream over a limit of two opened");
    };
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Unavailable),
        "{err}"
    );
    assert!(err.to_string().contains("max_open_streams=2"), "{err}");
    // Vec reads take no slot.
    backend.snapshot(shard, &5).await.unwrap();
    // A stream read to its end frees its slot as one dropped does.
    collect_stream(first).await.unwrap();
    drop(second);
    assert_eq!(backend.open_streams(), 0);
    let third = backend
        .snapshot_stream(shard, &5, ReadShare::WHOLE, ChunkLimit::DEFAULT)
        .await
        .unwrap();
    collect_stream(third).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_errors_come_from_the_call_and_corruption_ends_the_stream() {
    let Some(url) = test_url("stream errors") else {
        return;
    };
    let (_factory, backend) = backend_with(&url, "tmerr", 10, 4, 2).await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    fill_both_layouts(&backend, shard).await;
    PersistBackend::<u64>::downgrade_since(&backend, shard, &at(2), WriteFence::Unfenced)
        .await
        .unwrap();
    let unreadable = backend
        .snapshot_stream(shard, &1, ReadShare::WHOLE, ChunkLimit::DEFAULT)
        .await;
    assert!(matches!(
        unreadable,
        Err(tidemark_storage_types::BackendError::InvalidUsage(_))
    ));
    let beyond_upper = backend
        .fetch_stream(shard, &at(0), &at(9), ReadShare::WHOLE, ChunkLimit::DEFAULT)
        .await;
    assert!(matches!(
        beyond_upper,
        Err(tidemark_storage_types::BackendError::InvalidUsage(_))
    ));
    let unknown = backend
        .snapshot_stream(ShardId::new(), &5, ReadShare::WHOLE, ChunkLimit::DEFAULT)
        .await;
    assert!(matches!(
        unknown,
        Err(tidemark_storage_types::BackendError::InvalidUsage(_))
    ));
    assert_eq!(backend.open_streams(), 0, "refused calls hold no slot");
    // A stored row that is not a row encoding, sorting after every valid
    // one: the stream delivers the valid chunks, then the error, then ends.
    sqlx::query("INSERT INTO updates (shard_id, ts, row_bytes, diff) VALUES ($1, $2, $3, 1)")
        .bind(shard.0)
        .bind(3u64.encode())
        .bind(vec![0xFFu8, 0xFF, 0xFF])
        .execute(backend.pool())
        .await
        .unwrap();
    let items: Vec<_> = backend
        .snapshot_stream(shard, &5, ReadShare::WHOLE, limit(4, 1 << 20))
        .await
        .unwrap()
        .collect()
        .await;
    let (last, valid) = items.split_last().unwrap();
    assert!(!valid.is_empty() && valid.iter().all(Result::is_ok));
    let err = last.as_ref().unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Corrupted),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_the_previous_version_migrates_with_its_data() {
    let Some(url) = test_url("migration from schema version 2") else {
        return;
    };
    let factory = PostgresFactory::new(&url, "tmv2");
    let schema = factory.config.schema().to_string();
    let shard = ShardId::new();
    let previous = latest_version() - 1;
    {
        // The schema as the previous version left it, with a shard and two
        // stored updates in the row layout.
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(&format!(
            "CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\";
             CREATE TABLE tidemark_migrations (
                 version INT PRIMARY KEY, description TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        for migration in MIGRATIONS.iter().filter(|m| m.version <= previous) {
            sqlx::raw_sql(migration.sql)
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query("INSERT INTO tidemark_migrations (version, description) VALUES ($1, $2)")
                .bind(migration.version)
                .bind(migration.description)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        sqlx::query("INSERT INTO shards (shard_id, since, upper) VALUES ($1, $2, $3)")
            .bind(shard.0)
            .bind(0u64.encode())
            .bind(1u64.encode())
            .execute(&mut conn)
            .await
            .unwrap();
        for value in [1, 2] {
            sqlx::query(
                "INSERT INTO updates (shard_id, ts, row_bytes, diff) VALUES ($1, $2, $3, 1)",
            )
            .bind(shard.0)
            .bind(0u64.encode())
            .bind(row(value).as_bytes())
            .execute(&mut conn)
            .await
            .unwrap();
        }
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables
             WHERE table_schema = $1 AND table_name = 'update_batches'",
        )
        .bind(&schema)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(tables, 0, "the previous version has no batch table");
    }
    let mut config = factory.config.clone().with_batch_threshold(10);
    config = config.with_max_open_streams(1);
    let backend = config.build().await.unwrap();
    let version: i32 = sqlx::query_scalar("SELECT max(version) FROM tidemark_migrations")
        .fetch_one(backend.pool())
        .await
        .unwrap();
    assert_eq!(version, latest_version());
    let old = vec![(row(1), 1), (row(2), 1)];
    assert_eq!(backend.snapshot(shard, &0).await.unwrap(), old);
    // A large append lands in the new table; reads union both.
    append(
        &backend,
        shard,
        1,
        &(0..20)
            .map(|value| Update::new(row(value), 1, 1))
            .collect::<Vec<_>>(),
    )
    .await;
    let (rows, batches) = stored_rows(&backend, shard).await;
    assert_eq!((rows, batches), (2, 1));
    let mut expected: Vec<(Row, Diff)> = (0..20)
        .map(|value| (row(value), if value == 1 || value == 2 { 2 } else { 1 }))
        .collect();
    expected.sort();
    let stream = backend
        .snapshot_stream(shard, &1, ReadShare::WHOLE, limit(3, 1 << 20))
        .await
        .unwrap();
    assert_eq!(collect_stream(stream).await.unwrap(), expected);
    let usage = PersistBackend::<u64>::usage(&backend, shard).await.unwrap();
    assert_eq!(usage.updates, 22);
}
