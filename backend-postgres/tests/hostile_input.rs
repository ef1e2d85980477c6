//! Hostile input: schema names and URL parameters with quotes, `..`, `/`,
//! NUL, very long and non-ASCII values are refused before anything reaches
//! the server, and row data with the same bytes is stored and read back
//! exactly on both write paths (rows travel as bound parameters and `COPY`
//! data, never as SQL text).

mod support;

use sqlx::Connection;
use support::{PostgresFactory, test_url};
use tidemark_backend_postgres::{PostgresBackend, PostgresConfig};
use tidemark_storage_types::{
    BackendError, Datum, DeterminateKind, IdempotencyToken, PersistBackend, Row, ShardId, Update,
    WriteFence,
};
use timely::progress::Antichain;

fn hostile_values() -> Vec<(String, &'static str)> {
    vec![
        ("a'b".to_string(), "quote"),
        ("a\"b".to_string(), "double quote"),
        (
            "x\"; DROP SCHEMA public CASCADE; --".to_string(),
            "injection",
        ),
        ("..".to_string(), "dot dot"),
        ("a/b".to_string(), "slash"),
        ("a\0b".to_string(), "NUL"),
        ("x".repeat(100_000), "very long"),
        ("sch\u{e9}ma".to_string(), "non-ASCII"),
        ("Tidemark".to_string(), "upper case"),
        ("pg_temp".to_string(), "reserved"),
        (String::new(), "empty"),
    ]
}

fn assert_invalid_config(err: &BackendError, expected: &str, case: &str) {
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::InvalidConfig),
        "{case}: {err}"
    );
    let text = err.to_string();
    assert!(text.contains(expected), "{case}: {text}");
    assert!(
        text.len() < 600,
        "{case}: the message quotes too much: {} bytes",
        text.len()
    );
}

/// A closed loopback port: a config that reached the network would fail as
/// unavailable, not as invalid.
const CLOSED_URL: &str = "postgres://postgres@127.0.0.1:1/test";

#[tokio::test]
async fn hostile_schema_names_are_refused_before_connecting() {
    for (schema, case) in hostile_values() {
        let err = PostgresConfig::new(CLOSED_URL)
            .with_schema(schema.clone())
            .build()
            .await
            .unwrap_err();
        assert_invalid_config(&err, "invalid schema name", case);
        // The same through the URL, percent-encoded.
        let encoded: String = schema
            .bytes()
            .take(200)
            .map(|b| format!("%{b:02X}"))
            .collect();
        let url = format!("{CLOSED_URL}?schema={encoded}");
        let err = PostgresBackend::from_url(&url).await.unwrap_err();
        // A NUL is refused as a control character of the URL, before the
        // schema rules are read.
        let expected = if schema.contains('\0') {
            "parameter schema must not contain control characters"
        } else {
            "invalid schema name"
        };
        assert_invalid_config(&err, expected, case);
    }
}

#[tokio::test]
async fn hostile_url_values_are_refused_before_connecting() {
    for (url, expected) in [
        (
            "postgres://postgres:pw%00d@127.0.0.1:1/test",
            "password must not contain",
        ),
        (
            "postgres://post%00gres@127.0.0.1:1/test",
            "user name must not contain",
        ),
        (
            "postgres://postgres@127.0.0.1:1/te%00st",
            "database name must not contain",
        ),
        (
            "postgres://postgres@127.0.0.1:1/test?application_name=a%00b",
            "parameter application_name",
        ),
        (
            "postgres://postgres@127.0.0.1:1/test?options=-c%0Asearch_path%3Dpublic",
            "parameter options",
        ),
        (
            "postgres://postgres@127.0.0.1:1/te\nst",
            "control characters",
        ),
        (
            "postgres://postgres@127.0.0.1:1/test?pool_size=1%27",
            "pool_size",
        ),
        (
            "postgres://postgres@127.0.0.1:1/test?schema=a&sch%00ema=b",
            "parameter name must not contain",
        ),
        ("postgres://postgres@127.0.0.1:1/test?../x=1", "unknown"),
    ] {
        let err = PostgresBackend::from_url(url).await.unwrap_err();
        assert_invalid_config(&err, expected, url);
        assert!(!err.to_string().contains("pw"), "{err}");
    }
    let long = format!(
        "postgres://postgres@127.0.0.1:1/test?application_name={}",
        "a".repeat(100_000)
    );
    let err = PostgresBackend::from_url(&long).await.unwrap_err();
    assert_invalid_config(&err, "longer than", "long url");
}

fn hostile_rows() -> Vec<Row> {
    let long = "'\"\\".repeat(200_000);
    [
        "'); DROP TABLE updates; --",
        "\"quoted\" identifier",
        "nul \0 inside",
        "../../etc/passwd",
        "caf\u{e9} \u{1f600}",
        "$1 $2 ::bytea",
        long.as_str(),
    ]
    .iter()
    .enumerate()
    .map(|(i, text)| {
        Row::pack([
            Datum::Int64(i as i64),
            Datum::String(text),
            Datum::Bytes(b"\0\xff'"),
        ])
    })
    .collect()
}

async fn round_trip(backend: &PostgresBackend) {
    let shard = ShardId::new();
    PersistBackend::<u64>::open(backend, shard).await.unwrap();
    let rows = hostile_rows();
    let updates = rows
        .iter()
        .map(|row| Update::new(row.clone(), 0, 1))
        .collect();
    PersistBackend::<u64>::compare_and_append(
        backend,
        shard,
        updates,
        Antichain::from_elem(0),
        Antichain::from_elem(1),
        IdempotencyToken::new(),
        WriteFence::Unfenced,
    )
    .await
    .unwrap()
    .unwrap();
    let mut snapshot = PersistBackend::<u64>::snapshot(backend, shard, &0)
        .await
        .unwrap();
    snapshot.sort();
    let mut expected: Vec<(Row, i64)> = rows.into_iter().map(|row| (row, 1)).collect();
    expected.sort();
    assert_eq!(snapshot, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_row_bytes_round_trip_on_both_write_paths() {
    let Some(url) = test_url("postgres hostile rows") else {
        return;
    };
    for copy_threshold in [usize::MAX, 1] {
        let factory = PostgresFactory::new(&url, "hostile");
        let backend = factory
            .config
            .clone()
            .with_copy_threshold(copy_threshold)
            .build()
            .await
            .unwrap();
        round_trip(&backend).await;
        // Nothing but tidemark's tables exists in the schema, and the
        // server's own schemas are intact.
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
        )
        .bind(factory.config.schema())
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert!(tables.contains(&"updates".to_string()), "{tables:?}");
        let public: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'public'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(public, 1);
    }
}
