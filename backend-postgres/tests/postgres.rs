//! PostgreSQL-specific behaviour: schemas, migrations, start-up races, a
//! connection killed mid-append, lost notifications, and configuration and
//! connection errors.

mod support;

use std::time::Duration;
use tidemark_storage_types::WriteFence;

use sqlx::Connection;
use support::{PostgresFactory, drop_schema, test_url, unique_schema};
use tidemark_backend_postgres::schema::{MIGRATIONS, latest_version};
use tidemark_backend_postgres::{PostgresBackend, PostgresConfig};
use tidemark_storage_types::{
    BackendError, Datum, DeterminateKind, IdempotencyToken, InvalidUsage, PersistBackend, Row,
    ShardId, Update,
};
use timely::progress::Antichain;

fn at(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

fn int_row(value: i64) -> Row {
    Row::pack([Datum::Int64(value), Datum::String("payload")])
}

/// `count` distinct rows at time `time`, diff 1.
fn updates_at(time: u64, count: i64) -> Vec<Update<u64>> {
    (0..count)
        .map(|value| Update::new(int_row(value), time, 1))
        .collect()
}

async fn open_shard(backend: &PostgresBackend) -> ShardId {
    let shard = ShardId::new();
    PersistBackend::<u64>::open(backend, shard)
        .await
        .expect("open");
    shard
}

async fn upper_of(backend: &PostgresBackend, shard: ShardId) -> Antichain<u64> {
    PersistBackend::<u64>::frontiers(backend, shard)
        .await
        .expect("frontiers")
        .upper
}

async fn connect(url: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(url)
        .await
        .expect("a direct connection to the test server")
}

fn kind(result: Result<PostgresBackend, BackendError>) -> (Option<DeterminateKind>, String) {
    let err = result.expect_err("building should fail");
    (err.determinate_kind(), err.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schemas_are_isolated() {
    let Some(url) = test_url("two_schemas_are_isolated") else {
        return;
    };
    let first = PostgresFactory::new(&url, "tmiso");
    let second = PostgresFactory::new(&url, "tmiso");
    let a = first.handle().await;
    let b = second.handle().await;
    let shard = open_shard(&a).await;
    a.compare_and_append(
        shard,
        updates_at(0, 3),
        at(0),
        at(1),
        IdempotencyToken::new(),
        WriteFence::Unfenced,
    )
    .await
    .unwrap()
    .unwrap();

    assert_eq!(
        PersistBackend::<u64>::list_shards(&b).await.unwrap(),
        vec![]
    );
    let err = PersistBackend::<u64>::frontiers(&b, shard)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        BackendError::InvalidUsage(InvalidUsage::UnknownShard { shard })
    );
    // The same shard id opened in the other schema is a different, empty shard.
    PersistBackend::<u64>::open(&b, shard).await.unwrap();
    assert_eq!(upper_of(&b, shard).await, at(0));
    assert_eq!(upper_of(&a, shard).await, at(1));
    assert_eq!(a.snapshot(shard, &0).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_rerun_without_change_and_keep_data() {
    let Some(url) = test_url("migrations_rerun_without_change_and_keep_data") else {
        return;
    };
    let factory = PostgresFactory::new(&url, "tmmig");
    let first = factory.handle().await;
    let shard = open_shard(&first).await;
    first
        .compare_and_append(
            shard,
            updates_at(0, 5),
            at(0),
            at(1),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    drop(first);
    let again = factory.handle().await;
    assert_eq!(again.snapshot(shard, &0).await.unwrap().len(), 5);
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM tidemark_migrations ORDER BY version")
            .fetch_all(again.pool())
            .await
            .unwrap();
    assert_eq!(
        versions,
        MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_version_is_unsupported() {
    let Some(url) = test_url("a_schema_from_a_newer_version_is_unsupported") else {
        return;
    };
    let factory = PostgresFactory::new(&url, "tmnew");
    let backend = factory.handle().await;
    sqlx::query("INSERT INTO tidemark_migrations (version, description) VALUES ($1, 'future')")
        .bind(latest_version() + 1)
        .execute(backend.pool())
        .await
        .unwrap();
    let (kind, message) = kind(factory.config.clone().build().await);
    assert_eq!(kind, Some(DeterminateKind::Unsupported), "{message}");
    assert!(message.contains("newer tidemark"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_startups_on_a_new_schema_all_succeed() {
    let Some(url) = test_url("concurrent_startups_on_a_new_schema_all_succeed") else {
        return;
    };
    let factory = PostgresFactory::new(&url, "tmrace");
    let builders: Vec<_> = (0..6)
        .map(|_| tokio::spawn(factory.config.clone().build()))
        .collect();
    let mut handles = Vec::new();
    for builder in builders {
        handles.push(builder.await.unwrap().expect("every racing build succeeds"));
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM tidemark_migrations")
        .fetch_one(handles[0].pool())
        .await
        .unwrap();
    assert_eq!(applied, MIGRATIONS.len() as i64);
    // Every handle works on the one schema.
    let shard = open_shard(&handles[0]).await;
    for (index, handle) in handles.iter().enumerate() {
        let lower = index as u64;
        handle
            .compare_and_append(
                shard,
                updates_at(lower, 1),
                at(lower),
                at(lower + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(upper_of(&handles[5], shard).await, at(6));
}

/// Appends through a handle whose connections carry a unique
/// application_name, terminates the server process running the append as
/// soon as it is seen working, and checks the outcome is all or nothing,
/// and that a retry with the same token applies it exactly once.
async fn kill_mid_append(url: &str, copy_threshold: usize, rounds: u64) {
    let application = unique_schema("tmkill");
    let mut factory = PostgresFactory::new(url, "tmkill");
    let separator = if factory.config.url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url_with_application = format!(
        "{}{separator}application_name={application}",
        factory.config.url()
    );
    factory.config = factory.config.clone().with_url(url_with_application);
    factory.config = factory
        .config
        .clone()
        .with_pool_size(1)
        .with_copy_threshold(copy_threshold);
    let writer = factory.handle().await;
    let observer = factory.handle().await;
    let shard = open_shard(&writer).await;
    let mut killer = connect(url).await;
    let mut kills = 0;
    const BATCH: i64 = 60_000;

    for round in 0..rounds {
        let token = IdempotencyToken::new();
        let append = {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .compare_and_append(
                        shard,
                        updates_at(round, BATCH),
                        at(round),
                        at(round + 1),
                        token,
                        WriteFence::Unfenced,
                    )
                    .await
            })
        };
        // Terminate the append's server process once it is running a
        // statement (bounded: the append takes far longer than this loop).
        let mut terminated = false;
        for _ in 0..2_000 {
            let killed: Option<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = $1 AND state = 'active' AND query NOT LIKE 'BEGIN%'
                 LIMIT 1",
            )
            .bind(&application)
            .fetch_optional(&mut killer)
            .await
            .unwrap();
            if killed == Some(true) {
                terminated = true;
                break;
            }
            if append.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        kills += u32::from(terminated);
        let outcome = append.await.unwrap();
        eprintln!("round {round}: terminated={terminated} outcome={outcome:?}");

        // All or nothing: the upper and the data agree.
        let upper = upper_of(&observer, shard).await;
        // Stored in either layout: row per update, or batch rows.
        let rows_at_round: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM updates WHERE shard_id = $1 AND ts = $2)
                  + (SELECT count(*) FROM update_batches b, unnest(b.ts) AS t(ts)
                     WHERE b.shard_id = $1 AND t.ts = $2)",
        )
        .bind(shard.0)
        .bind(tidemark_storage_types::Codec64::encode(&round))
        .fetch_one(observer.pool())
        .await
        .unwrap();
        if upper == at(round + 1) {
            assert_eq!(rows_at_round, BATCH, "applied whole (round {round})");
        } else {
            assert_eq!(upper, at(round), "round {round}");
            assert_eq!(
                rows_at_round, 0,
                "nothing of a failed append (round {round})"
            );
            let err = outcome
                .as_ref()
                .expect_err("an append that wrote nothing failed");
            assert!(
                !err.is_determinate(),
                "a killed append is indeterminate: {err}"
            );
        }

        // The caller retries the indeterminate append with its token.
        let mut retried = outcome;
        for _ in 0..3 {
            match &retried {
                Ok(_) => break,
                Err(err) => assert!(!err.is_determinate(), "{err}"),
            }
            retried = writer
                .compare_and_append(
                    shard,
                    updates_at(round, BATCH),
                    at(round),
                    at(round + 1),
                    token,
                    WriteFence::Unfenced,
                )
                .await;
        }
        assert_eq!(retried.expect("the retry reaches the server"), Ok(()));
        assert_eq!(upper_of(&observer, shard).await, at(round + 1));
        let snapshot = observer.snapshot(shard, &round).await.unwrap();
        assert_eq!(snapshot.len(), BATCH as usize);
        let expected_diff = i64::try_from(round + 1).unwrap();
        assert!(
            snapshot.iter().all(|(_, diff)| *diff == expected_diff),
            "each round applied exactly once (round {round})"
        );
    }
    assert!(kills > 0, "no append was seen running, so none was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_copy_append_applies_once_or_not_at_all() {
    let Some(url) = test_url("a_connection_killed_mid_copy_append_applies_once_or_not_at_all")
    else {
        return;
    };
    kill_mid_append(&url, 0, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_statement_append_applies_once_or_not_at_all() {
    let Some(url) = test_url("a_connection_killed_mid_statement_append_applies_once_or_not_at_all")
    else {
        return;
    };
    kill_mid_append(&url, usize::MAX, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_wake_after_the_listener_connection_is_killed() {
    let Some(url) = test_url("waiters_wake_after_the_listener_connection_is_killed") else {
        return;
    };
    let application = unique_schema("tmlisten");
    let mut factory = PostgresFactory::new(&url, "tmlisten");
    let separator = if factory.config.url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url_with_application = format!(
        "{}{separator}application_name={application}",
        factory.config.url()
    );
    factory.config = factory.config.clone().with_url(url_with_application);
    let waiter = factory.handle().await;
    let writer = factory.handle().await;
    let shard = open_shard(&waiter).await;
    let mut killer = connect(&url).await;
    for round in 0..3u64 {
        let wait = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.wait_for_upper_past(shard, &at(round)).await })
        };
        // Kill the waiter's listener connection (it exists once the wait
        // has started listening), then append from the other handle.
        let listener_name = format!("{application}-listener");
        let mut killed = false;
        for _ in 0..2_000 {
            let terminated: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(&listener_name)
            .fetch_all(&mut killer)
            .await
            .unwrap();
            if terminated.contains(&true) {
                killed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(killed, "the listener connection was found");
        writer
            .compare_and_append(
                shard,
                updates_at(round, 1),
                at(round),
                at(round + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
        let upper = tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("the waiter woke")
            .unwrap()
            .unwrap();
        assert_eq!(upper, at(round + 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_stored_row_is_reported_not_returned() {
    let Some(url) = test_url("a_corrupted_stored_row_is_reported_not_returned") else {
        return;
    };
    let factory = PostgresFactory::new(&url, "tmcorrupt");
    let backend = factory.handle().await;
    let shard = open_shard(&backend).await;
    backend
        .compare_and_append(
            shard,
            updates_at(0, 2),
            at(0),
            at(1),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    sqlx::query("INSERT INTO updates (shard_id, ts, row_bytes, diff) VALUES ($1, $2, $3, 1)")
        .bind(shard.0)
        .bind(tidemark_storage_types::Codec64::encode(&0u64))
        .bind(vec![0xEEu8, 1, 2])
        .execute(backend.pool())
        .await
        .unwrap();
    let err = backend.snapshot(shard, &0).await.unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Corrupted),
        "{err}"
    );
    assert!(err.to_string().contains(&shard.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable() {
    // No server listens on port 1; the test needs no service.
    let (kind, message) = kind(
        PostgresBackend::from_url("postgres://postgres@127.0.0.1:1/test?connect_timeout=2").await,
    );
    assert_eq!(kind, Some(DeterminateKind::Unavailable), "{message}");
    assert!(message.contains("cannot connect"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_not_found() {
    let Some(url) = test_url("a_missing_database_is_not_found") else {
        return;
    };
    let mut parsed = url::Url::parse(&url).unwrap();
    parsed.set_path("/tidemark_no_such_database");
    let (kind, message) = kind(PostgresBackend::from_url(parsed.as_str()).await);
    assert_eq!(kind, Some(DeterminateKind::NotFound), "{message}");
    assert!(message.contains("3D000"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_role_is_unauthorized() {
    let Some(url) = test_url("an_unknown_role_is_unauthorized") else {
        return;
    };
    let mut parsed = url::Url::parse(&url).unwrap();
    parsed.set_username("tidemark_no_such_role").unwrap();
    let (kind, message) = kind(PostgresBackend::from_url(parsed.as_str()).await);
    assert_eq!(kind, Some(DeterminateKind::Unauthorized), "{message}");
    assert!(message.contains("28"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schema_names_and_unknown_parameters_are_invalid_config() {
    let Some(url) = test_url("bad_schema_names_and_unknown_parameters_are_invalid_config") else {
        return;
    };
    for schema in ["Upper", "x; DROP TABLE y", "pg_toast", "has space", ""] {
        let (kind, message) = kind(PostgresConfig::new(&url).with_schema(schema).build().await);
        assert_eq!(kind, Some(DeterminateKind::InvalidConfig), "{message}");
        assert!(message.contains("invalid schema name"), "{message}");
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    let (kind, message) =
        kind(PostgresBackend::from_url(&format!("{url}{separator}scheme=x")).await);
    assert_eq!(kind, Some(DeterminateKind::InvalidConfig), "{message}");
    assert!(message.contains("unknown=scheme "), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidemark_url_parameters_configure_the_backend() {
    let Some(url) = test_url("tidemark_url_parameters_configure_the_backend") else {
        return;
    };
    let schema = unique_schema("tmurl");
    let separator = if url.contains('?') { '&' } else { '?' };
    let backend = PostgresBackend::from_url(&format!(
        "{url}{separator}schema={schema}&pool_size=2&connect_timeout=3&sslmode=disable"
    ))
    .await
    .unwrap();
    assert_eq!(backend.schema(), schema);
    assert_eq!(backend.config().pool_size(), 2);
    let shard = open_shard(&backend).await;
    assert_eq!(upper_of(&backend, shard).await, at(0));
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&schema)
            .fetch_one(backend.pool())
            .await
            .unwrap();
    assert!(exists);
    drop(backend);
    drop_schema(&url, &schema).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_shrinks_the_stored_rows() {
    let Some(url) = test_url("compaction_shrinks_the_stored_rows") else {
        return;
    };
    let factory = PostgresFactory::new(&url, "tmcompact");
    let backend = factory.handle().await;
    let shard = open_shard(&backend).await;
    for time in 0..10u64 {
        // The same 100 rows inserted and, later, half of them retracted.
        let mut updates = updates_at(time, 100);
        if time == 9 {
            updates = (0..50)
                .map(|value| Update::new(int_row(value), time, -9))
                .collect();
        }
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
    let before = backend.snapshot(shard, &9).await.unwrap();
    PersistBackend::<u64>::downgrade_since(&backend, shard, &at(9), WriteFence::Unfenced)
        .await
        .unwrap();
    let stats = PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    assert_eq!(stats.updates_before, 950);
    assert_eq!(stats.updates_after, 50);
    assert!(stats.bytes_after < stats.bytes_before);
    // The compacted updates are written back as batch rows.
    let stored: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM updates WHERE shard_id = $1)
              + (SELECT coalesce(sum(update_count), 0) FROM update_batches WHERE shard_id = $1)::BIGINT",
    )
    .bind(shard.0)
    .fetch_one(backend.pool())
    .await
    .unwrap();
    assert_eq!(stored, 50);
    assert_eq!(backend.snapshot(shard, &9).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_uses_tls_or_fails_clearly() {
    let Some(url) = test_url("sslmode_require_uses_tls_or_fails_clearly") else {
        return;
    };
    let mut plain = connect(&url).await;
    let server_ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    let schema = unique_schema("tmtls");
    let mut parsed = url::Url::parse(&url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(key, _)| key != "sslmode")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair("sslmode", "require")
        .append_pair("schema", &schema);
    match PostgresBackend::from_url(parsed.as_str()).await {
        Ok(backend) => {
            assert_eq!(server_ssl, "on");
            let encrypted: bool =
                sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                    .fetch_one(backend.pool())
                    .await
                    .unwrap();
            assert!(encrypted, "sslmode=require connected without tls");
            drop(backend);
            drop_schema(&url, &schema).await.unwrap();
        }
        Err(err) => {
            assert_eq!(server_ssl, "off", "tls failed against a tls server: {err}");
            assert_eq!(
                err.determinate_kind(),
                Some(DeterminateKind::Unavailable),
                "{err}"
            );
        }
    }
}

/// Appends whose futures are dropped part way (a caller's timeout, a task
/// aborted at shutdown), on the `COPY` path and on the statement path, leave
/// the pooled connection usable: later appends and reads on the same handle
/// succeed, and each dropped append applied wholly or not at all.
#[tokio::test]
async fn appends_dropped_part_way_leave_the_pool_usable() {
    let Some(url) = test_url("appends_dropped_part_way_leave_the_pool_usable") else {
        return;
    };
    for copy_threshold in [1, 1_000_000] {
        let mut factory = PostgresFactory::new(&url, "tmdrop");
        factory.config = factory
            .config
            .clone()
            .with_pool_size(1)
            .with_copy_threshold(copy_threshold);
        let backend = factory.handle().await;
        let shard = open_shard(&backend).await;
        let mut upper = 0u64;
        // Bounded: a few dozen cut-off attempts, each followed by checks.
        for round in 0..24u64 {
            let cut_after = Duration::from_micros(200 + 400 * round);
            let append = backend.compare_and_append(
                shard,
                updates_at(upper, 20_000),
                at(upper),
                at(upper + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            );
            let outcome = tokio::time::timeout(cut_after, append).await;
            let now = upper_of(&backend, shard).await;
            match outcome {
                Ok(result) => {
                    result.expect("append request").expect("append upper");
                    assert_eq!(now, at(upper + 1));
                }
                Err(_) => assert!(
                    now == at(upper) || now == at(upper + 1),
                    "a dropped append moved the upper to {now:?} from {upper}"
                ),
            }
            upper = now.as_option().copied().expect("a live shard");
            // The same handle (one pooled connection) still appends.
            backend
                .compare_and_append(
                    shard,
                    updates_at(upper, 3),
                    at(upper),
                    at(upper + 1),
                    IdempotencyToken::new(),
                    WriteFence::Unfenced,
                )
                .await
                .expect("an append after a dropped one")
                .expect("its upper matches");
            upper += 1;
        }
        let rows = PersistBackend::<u64>::snapshot(&backend, shard, &(upper - 1))
            .await
            .expect("snapshot");
        assert!(!rows.is_empty());
        drop(factory);
    }
}

/// An append dropped after a given number of its polls came back pending
/// (a task aborted at shutdown, deterministically at each of its first
/// awaits in turn, the `BEGIN` of the `COPY` path among them) leaves its
/// pooled connection outside any transaction: the next append on the same
/// handle, a single statement, is seen by another handle at once.
///
/// A connection returned to the pool inside a transaction sqlx does not
/// know of would run that statement uncommitted, and the other handle
/// would still see the old upper.
#[tokio::test]
async fn an_append_dropped_at_any_await_leaves_no_transaction_open() {
    let Some(url) = test_url("an_append_dropped_at_any_await_leaves_no_transaction_open") else {
        return;
    };
    let mut factory = PostgresFactory::new(&url, "tmbegin");
    factory.config = factory
        .config
        .clone()
        .with_pool_size(1)
        .with_copy_threshold(100);
    let writer = factory.handle().await;
    let observer = factory.handle().await;
    let shard = open_shard(&writer).await;
    let mut upper = 0u64;
    let mut failure = None;
    for pending_polls in 1..=12usize {
        // The append is dropped at the end of this block, as an aborted
        // task drops its future.
        let finished = {
            let append = writer.compare_and_append(
                shard,
                updates_at(upper, 5_000),
                at(upper),
                at(upper + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            );
            let mut append = std::pin::pin!(append);
            let mut pending = 0;
            std::future::poll_fn(|cx| {
                while pending < pending_polls {
                    match append.as_mut().poll(cx) {
                        std::task::Poll::Ready(result) => {
                            return std::task::Poll::Ready(Some(result));
                        }
                        std::task::Poll::Pending => pending += 1,
                    }
                    if pending < pending_polls {
                        // Polled again only once woken.
                        return std::task::Poll::Pending;
                    }
                }
                std::task::Poll::Ready(None)
            })
            .await
        };
        if let Some(result) = finished {
            result.expect("append request").expect("append upper");
        }
        // The writer's own read waits for its one connection to come back
        // to the pool, so an answer the dropped append still had coming
        // (its COMMIT's) has arrived by then.
        let settled = upper_of(&writer, shard).await;
        let seen = upper_of(&observer, shard).await;
        if settled != at(upper) && settled != at(upper + 1) {
            failure = Some(format!(
                "after {pending_polls} pending polls the upper is {settled:?}, from {upper}: \
                 the dropped append applied neither wholly nor not at all"
            ));
            break;
        }
        if seen != settled {
            failure = Some(format!(
                "after {pending_polls} pending polls the writer sees {settled:?} and another \
                 handle {seen:?}"
            ));
            break;
        }
        upper = settled.as_option().copied().expect("a live shard");
        let next = writer
            .compare_and_append(
                shard,
                updates_at(upper, 3),
                at(upper),
                at(upper + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await;
        if !matches!(next, Ok(Ok(()))) {
            failure = Some(format!(
                "the append after one dropped at its pending poll {pending_polls} failed: {next:?}"
            ));
            break;
        }
        upper += 1;
        let seen = upper_of(&observer, shard).await;
        if seen != at(upper) {
            failure = Some(format!(
                "after an append dropped at its pending poll {pending_polls}, the next append on \
                 its connection (to {upper}) is not visible to another handle, which sees {seen:?}"
            ));
            break;
        }
    }
    // Closed before the schema is dropped: a connection left in a
    // transaction would hold its locks and keep the drop waiting.
    writer.pool().close().await;
    observer.pool().close().await;
    drop(factory);
    if let Some(failure) = failure {
        panic!("{failure}");
    }
}
