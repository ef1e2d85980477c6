//! Hostile names and addresses: bucket names, key prefixes, regions,
//! endpoints and URLs with quotes, `..`, `/`, NUL, very long and non-ASCII
//! values are refused before any request; what is accepted is confined to
//! its prefix (every key the backend writes starts with it).

mod support;

use std::time::Duration;

use support::{config_for, ensure_bucket, fresh_prefix, raw_client, test_endpoint};
use tidemark_backend_s3::{MAX_PREFIX_BYTES, S3Backend, S3Config};
use tidemark_storage_types::{
    BackendError, Datum, DeterminateKind, IdempotencyToken, PersistBackend, Row, ShardId, Update,
    WriteFence,
};
use timely::progress::Antichain;

/// A loopback port nothing listens on: a config that reached the network
/// would fail as unavailable, not as invalid.
const CLOSED_ENDPOINT: &str = "http://127.0.0.1:1";

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

fn hostile_values() -> Vec<(String, &'static str)> {
    vec![
        ("a'b".to_string(), "quote"),
        ("a\"b".to_string(), "double quote"),
        ("..".to_string(), "dot dot"),
        ("a/../b".to_string(), "dot dot segment"),
        ("a\0b".to_string(), "NUL"),
        ("a\nb".to_string(), "newline"),
        ("x".repeat(100_000), "very long"),
        ("tidemark-\u{e9}t\u{e9}".to_string(), "non-ASCII"),
        ("a\\b".to_string(), "backslash"),
        ("a?b=1".to_string(), "query"),
    ]
}

#[tokio::test]
async fn hostile_prefixes_are_refused_before_any_request() {
    for (prefix, case) in hostile_values() {
        let err = config_for(CLOSED_ENDPOINT, "bucket", &prefix)
            .build()
            .await
            .unwrap_err();
        assert_invalid_config(&err, "s3 prefix is not valid", case);
    }
    let err = config_for(CLOSED_ENDPOINT, "bucket", "a//b")
        .build()
        .await
        .unwrap_err();
    assert_invalid_config(&err, "empty segment", "empty segment");
    let longest = "p".repeat(MAX_PREFIX_BYTES);
    assert!(
        config_for(CLOSED_ENDPOINT, "bucket", &longest)
            .validate()
            .is_ok()
    );
}

#[tokio::test]
async fn hostile_bucket_names_are_refused_before_any_request() {
    let mut cases = hostile_values();
    cases.push(("a/b".to_string(), "slash"));
    cases.push(("".to_string(), "empty"));
    cases.push(("-bucket".to_string(), "leading dash"));
    for (bucket, case) in cases {
        let err = config_for(CLOSED_ENDPOINT, &bucket, "p")
            .build()
            .await
            .unwrap_err();
        let expected = if bucket.is_empty() {
            "bucket is not set"
        } else {
            "s3 bucket name is not valid"
        };
        assert_invalid_config(&err, expected, case);
    }
}

#[tokio::test]
async fn hostile_regions_and_endpoints_are_refused_before_any_request() {
    for (region, case) in hostile_values() {
        let err = config_for(CLOSED_ENDPOINT, "bucket", "p")
            .with_region(region)
            .build()
            .await
            .unwrap_err();
        assert_invalid_config(&err, "s3 region is not valid", case);
    }
    for (endpoint, expected) in [
        ("http://127.0.0.1:1\0".to_string(), "control characters"),
        ("http://127.0.0.1:1/\n".to_string(), "control characters"),
        ("file:///etc/passwd".to_string(), "http:// or https://"),
        ("http://127.0.0.1:1/?x=1".to_string(), "query or fragment"),
        (format!("http://h/{}", "a".repeat(100_000)), "longer than"),
        (
            "http://key:hunter2@127.0.0.1:1".to_string(),
            "user name or password",
        ),
    ] {
        let err = config_for(&endpoint, "bucket", "p")
            .build()
            .await
            .unwrap_err();
        assert_invalid_config(&err, expected, &endpoint[..endpoint.len().min(40)]);
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}

#[tokio::test]
async fn hostile_urls_are_refused_naming_the_problem() {
    for (url, expected) in [
        ("s3://b/a/../../other", "'..' segment"),
        ("s3://b/a/%2e%2e/other", "'..' segment"),
        ("s3://b/./p", "'..' segment"),
        ("s3://b/a%00b", "s3 prefix is not valid"),
        ("s3://b/a%27b", "s3 prefix is not valid"),
        ("s3://b/caf%C3%A9", "s3 prefix is not valid"),
        (
            "s3://b/p?region=us-east-1.evil.example",
            "s3 region is not valid",
        ),
        ("s3://b/p?endpoint=ftp://h", "http:// or https://"),
        ("s3://b%2Fc/p", "s3 bucket name is not valid"),
        ("s3://b'c/p", "s3 bucket name is not valid"),
        ("s3://key:hunter2@b/p", "carry no credentials"),
        ("s3://b/p?part_size_bytes=1%00", "part_size_bytes"),
        ("s3://b/p?region=a&colour=%00", "unknown s3 url parameters"),
    ] {
        let err = S3Config::from_url(url).unwrap_err();
        assert_invalid_config(&err, expected, url);
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    let long = format!("s3://b/{}", "p".repeat(100_000));
    let err = S3Config::from_url(&long).unwrap_err();
    assert_invalid_config(&err, "longer than 512", "long url");
    // Opening the URL refuses it the same way, before any request.
    let err = S3Backend::from_url("s3://b/a/../b?endpoint=http://127.0.0.1:1")
        .await
        .unwrap_err();
    assert_invalid_config(&err, "'..' segment", "from_url");
}

fn row(i: usize) -> Row {
    Row::pack([
        Datum::Int64(i as i64),
        Datum::String("payload of some length"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_stays_under_its_prefix() {
    let Some(endpoint) = test_endpoint("s3 keys stay under their prefix") else {
        return;
    };
    let bucket = format!("tm-{}", uuid::Uuid::new_v4().simple());
    ensure_bucket(&endpoint, &bucket).await;
    // Dots, dashes and underscores inside segments are plain characters,
    // and a sibling prefix that starts with the same text is someone else's.
    let base = fresh_prefix("hostile");
    let prefix = format!("{base}/a.b-c_d/..x");
    let sibling = format!("{base}/a.b-c_d/..x2");
    let config = |prefix: &str| {
        config_for(&endpoint, &bucket, prefix)
            .with_part_size_bytes(1024)
            .with_grace_period(Duration::ZERO)
    };
    let backend = config(&prefix).build().await.unwrap();
    let neighbour = config(&sibling).build().await.unwrap();
    for handle in [&backend, &neighbour] {
        let shard = ShardId::new();
        PersistBackend::<u64>::open(handle, shard).await.unwrap();
        for (round, count) in [1usize, 200, 3, 400].into_iter().enumerate() {
            let time = round as u64;
            let updates = (0..count).map(|i| Update::new(row(i), time, 1)).collect();
            PersistBackend::<u64>::compare_and_append(
                handle,
                shard,
                updates,
                Antichain::from_elem(time),
                Antichain::from_elem(time + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap()
            .unwrap();
        }
        PersistBackend::<u64>::downgrade_since(
            handle,
            shard,
            &Antichain::from_elem(3),
            WriteFence::Unfenced,
        )
        .await
        .unwrap();
        PersistBackend::<u64>::compact(handle, shard).await.unwrap();
        handle.gc().await.unwrap();
        let snapshot = PersistBackend::<u64>::snapshot(handle, shard, &3)
            .await
            .unwrap();
        let total: i64 = snapshot.iter().map(|(_, diff)| diff).sum();
        assert_eq!(total, 604);
    }
    let client = raw_client(&endpoint);
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(&bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
    }
    let (mine, theirs): (Vec<_>, Vec<_>) = keys
        .iter()
        .partition(|key| key.starts_with(&format!("{prefix}/")));
    assert!(mine.iter().any(|key| key.ends_with("/state")), "{keys:?}");
    assert!(mine.iter().any(|key| key.contains("/batches/")), "{keys:?}");
    assert!(!theirs.is_empty());
    for key in theirs {
        assert!(
            key.starts_with(&format!("{sibling}/")),
            "a key outside both prefixes: {key}"
        );
    }
}
