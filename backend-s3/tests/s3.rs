//! S3-specific behaviour: corruption, compaction and gc against a real
//! server, racing handles, and a store that breaks the rules.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tidemark_storage_types::WriteFence;

use support::stub::{StubResponse, start_stub};
use support::{
    S3Factory, config_for, make_factory, make_factory_with_clock, raw_client, test_endpoint,
};
use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_s3::{ManualClock, S3Backend, S3Config, stored_state_as_json};
use tidemark_storage_types::{
    BackendError, Datum, DeterminateKind, IdempotencyToken, PersistBackend, ReadShare, Row,
    ShardId, Update,
};
use timely::progress::Antichain;

fn row(value: i64) -> Row {
    Row::pack([Datum::Int64(value), Datum::String("payload")])
}

fn frontier(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

/// Appends `updates` at `[lower, upper)`, expecting success.
async fn append(
    backend: &S3Backend,
    shard: ShardId,
    updates: Vec<Update<u64>>,
    lower: u64,
    upper: u64,
) {
    backend
        .compare_and_append(
            shard,
            updates,
            frontier(lower),
            frontier(upper),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .expect("append request")
        .expect("append upper matches");
}

/// Every key under `prefix`.
async fn list_keys(endpoint: &str, bucket: &str, prefix: &str) -> BTreeSet<String> {
    let client = raw_client(endpoint);
    let mut keys = BTreeSet::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.expect("list");
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
    }
    keys
}

async fn endpoint_and_factory(test_name: &str) -> Option<(String, S3Factory)> {
    let endpoint = test_endpoint(test_name)?;
    let factory = make_factory(test_name).await?;
    Some((endpoint, factory))
}

/// The factory with no batch stored inline: every append writes part
/// objects (for tests of what happens to those objects).
fn objects_only(mut factory: S3Factory) -> S3Factory {
    let (_, state_bytes) = factory.config.inline_bytes();
    factory.config = factory.config.with_inline_bytes(0, state_bytes);
    factory
}

/// As [`endpoint_and_factory`], with every append writing part objects.
async fn endpoint_and_objects_only_factory(test_name: &str) -> Option<(String, S3Factory)> {
    let (endpoint, factory) = endpoint_and_factory(test_name).await?;
    Some((endpoint, objects_only(factory)))
}

/// The key of a shard's state object.
fn state_key(backend: &S3Backend, shard: ShardId) -> String {
    format!(
        "{}state",
        backend.parts_prefix(shard).trim_end_matches("batches/")
    )
}

/// A shard's state object as stored, read directly from the bucket.
async fn raw_state_bytes(endpoint: &str, backend: &S3Backend, shard: ShardId) -> Vec<u8> {
    let object = raw_client(endpoint)
        .get_object()
        .bucket(backend.config().bucket())
        .key(state_key(backend, shard))
        .send()
        .await
        .expect("get state");
    object.body.collect().await.unwrap().into_bytes().to_vec()
}

/// A shard's state object in its JSON form (a plain state is stored
/// binary), read directly from the bucket.
async fn raw_state(endpoint: &str, backend: &S3Backend, shard: ShardId) -> serde_json::Value {
    let bytes = raw_state_bytes(endpoint, backend, shard).await;
    let json = stored_state_as_json(&state_key(backend, shard), &bytes).expect("a readable state");
    serde_json::from_slice(&json).expect("state is JSON")
}

/// Writes a shard's state object directly (unconditionally).
async fn put_raw_state(
    endpoint: &str,
    backend: &S3Backend,
    shard: ShardId,
    state: &serde_json::Value,
) {
    raw_client(endpoint)
        .put_object()
        .bucket(backend.config().bucket())
        .key(state_key(backend, shard))
        .body(serde_json::to_vec(state).unwrap().into())
        .send()
        .await
        .expect("put state");
}

/// The encoded bytes of the parts a raw state holds inline, and how many
/// parts those are.
fn inline_parts(state: &serde_json::Value) -> (u64, usize) {
    let mut bytes = 0;
    let mut count = 0;
    for batch in state["batches"].as_array().unwrap() {
        for part in batch["parts"].as_array().unwrap() {
            if part.get("inline").is_some() {
                bytes += part["bytes"].as_u64().unwrap();
                count += 1;
            }
        }
    }
    (bytes, count)
}

/// Ten small updates at `time`.
fn ten_rows(time: u64) -> Vec<Update<u64>> {
    (0..10)
        .map(|i| Update::new(row(time as i64 * 10 + i), time, 1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_part_is_detected_and_names_its_key() {
    let Some((endpoint, factory)) = endpoint_and_objects_only_factory("s3 corrupted part").await
    else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    append(
        &backend,
        shard,
        (0..50).map(|i| Update::new(row(i), 0, 1)).collect(),
        0,
        1,
    )
    .await;
    let keys = backend.part_keys(shard).await.unwrap();
    let key = keys.first().expect("one part").clone();

    let client = raw_client(&endpoint);
    let object = client
        .get_object()
        .bucket(backend.config().bucket())
        .key(&key)
        .send()
        .await
        .unwrap();
    let mut bytes = object.body.collect().await.unwrap().into_bytes().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    client
        .put_object()
        .bucket(backend.config().bucket())
        .key(&key)
        .body(bytes.into())
        .send()
        .await
        .unwrap();

    let err = backend.snapshot(shard, &0).await.unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Corrupted),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&key),
        "error does not name the key {key}: {text}"
    );
    assert!(text.contains("checksum"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_deleted_under_a_reader_is_reported_after_rereading_state() {
    let Some((endpoint, factory)) = endpoint_and_objects_only_factory("s3 missing part").await
    else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    append(&backend, shard, vec![Update::new(row(1), 0, 1)], 0, 1).await;
    let key = backend.part_keys(shard).await.unwrap().remove(0);
    raw_client(&endpoint)
        .delete_object()
        .bucket(backend.config().bucket())
        .key(&key)
        .send()
        .await
        .unwrap();
    let err = backend.snapshot(shard, &0).await.unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Corrupted),
        "{err}"
    );
    assert!(err.to_string().contains(&key), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_split_into_parts_and_read_back() {
    let Some((_, factory)) = endpoint_and_factory("s3 multipart batch").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    // About 30 bytes per update against 64 KiB parts: several parts.
    let updates: Vec<_> = (0..20_000)
        .map(|i| Update::new(row(i), (i % 5) as u64, 1))
        .collect();
    append(&backend, shard, updates, 0, 5).await;
    let parts = backend.part_keys(shard).await.unwrap();
    assert!(
        parts.len() > 2,
        "expected several parts, got {}",
        parts.len()
    );
    let snapshot = backend.snapshot(shard, &4).await.unwrap();
    assert_eq!(snapshot.len(), 20_000);
    assert!(
        snapshot.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "sorted by row"
    );
    assert_eq!(backend.snapshot(shard, &0).await.unwrap().len(), 4_000);
    let fetched = backend
        .fetch(shard, &frontier(2), &frontier(3))
        .await
        .unwrap();
    assert_eq!(fetched.len(), 4_000);
    assert!(fetched.iter().all(|update| update.timestamp == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_gc_leave_no_unreferenced_parts_after_the_grace_period() {
    let clock = Arc::new(ManualClock::starting_now());
    let grace = Duration::from_secs(3600);
    let Some(factory) = make_factory_with_clock("s3 compaction gc", clock.clone(), grace).await
    else {
        return;
    };
    let factory = objects_only(factory);
    let endpoint = test_endpoint("s3 compaction gc").expect("endpoint is set");
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    for time in 0..8u64 {
        let updates = (0..10).map(|i| Update::new(row(i), time, 1)).collect();
        append(&backend, shard, updates, time, time + 1).await;
    }
    let parts_prefix = backend.parts_prefix(shard);
    assert_eq!(
        list_keys(&endpoint, backend.config().bucket(), &parts_prefix)
            .await
            .len(),
        8
    );

    // An orphan, as a crashed append would leave it.
    let orphan = format!("{parts_prefix}{}", uuid::Uuid::new_v4());
    raw_client(&endpoint)
        .put_object()
        .bucket(backend.config().bucket())
        .key(&orphan)
        .body(b"left behind".to_vec().into())
        .send()
        .await
        .unwrap();

    backend
        .downgrade_since(shard, &frontier(7), WriteFence::Unfenced)
        .await
        .unwrap();
    let stats = PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    assert_eq!(stats.updates_before, 80);
    assert_eq!(stats.updates_after, 10, "ten rows, all at the since");
    let referenced: BTreeSet<String> = backend
        .part_keys(shard)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(referenced.len(), 1);

    // Within the grace period nothing is deleted: replaced parts may still be
    // read by holders of the older state.
    let gc = backend.gc().await.unwrap();
    assert_eq!(gc.parts_deleted, 0);
    assert_eq!(
        list_keys(&endpoint, backend.config().bucket(), &parts_prefix)
            .await
            .len(),
        8 + 1 + 1
    );

    clock.advance(grace + Duration::from_secs(60));
    let gc = backend.gc().await.unwrap();
    assert_eq!(gc.parts_deleted, 9, "eight replaced parts and the orphan");
    assert_eq!(
        list_keys(&endpoint, backend.config().bucket(), &parts_prefix).await,
        referenced
    );

    let snapshot = backend.snapshot(shard, &7).await.unwrap();
    assert_eq!(snapshot, (0..10).map(|i| (row(i), 8)).collect::<Vec<_>>());
    // Nothing left to do.
    assert_eq!(backend.gc().await.unwrap().parts_deleted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_deletes_retired_parts_once_the_grace_period_passed() {
    let clock = Arc::new(ManualClock::starting_now());
    let grace = Duration::from_secs(60);
    let Some(factory) = make_factory_with_clock("s3 compaction retire", clock.clone(), grace).await
    else {
        return;
    };
    let factory = objects_only(factory);
    let endpoint = test_endpoint("s3 compaction retire").expect("endpoint is set");
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    for time in 0..4u64 {
        append(
            &backend,
            shard,
            vec![Update::new(row(time as i64), time, 1)],
            time,
            time + 1,
        )
        .await;
    }
    let originals = backend.part_keys(shard).await.unwrap();
    PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    let merged = backend.part_keys(shard).await.unwrap();
    assert_eq!(merged.len(), 1, "four equal batches merge into one");
    clock.advance(grace * 2);
    for time in 4..8u64 {
        append(
            &backend,
            shard,
            vec![Update::new(row(time as i64), time, 1)],
            time,
            time + 1,
        )
        .await;
    }
    PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    let listed = list_keys(
        &endpoint,
        backend.config().bucket(),
        &backend.parts_prefix(shard),
    )
    .await;
    let referenced = backend.part_keys(shard).await.unwrap();
    assert_eq!(
        referenced.len(),
        1,
        "the tail merge took in the older batch"
    );
    // The original parts are past their grace period and gone; the first
    // merge's part was retired just now and waits out its own.
    assert!(
        originals.iter().all(|key| !listed.contains(key)),
        "listed={listed:?}"
    );
    assert!(listed.contains(&merged[0]) && !referenced.contains(&merged[0]));
    let snapshot = backend.snapshot(shard, &7).await.unwrap();
    assert_eq!(snapshot, (0..8).map(|i| (row(i), 1)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_removes_every_part_and_the_listing() {
    let Some((endpoint, factory)) = endpoint_and_factory("s3 finalize").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    append(&backend, shard, vec![Update::new(row(1), 0, 1)], 0, 1).await;
    PersistBackend::<u64>::finalize(&backend, shard)
        .await
        .unwrap();
    assert!(
        list_keys(
            &endpoint,
            backend.config().bucket(),
            &backend.parts_prefix(shard)
        )
        .await
        .is_empty()
    );
    assert!(
        PersistBackend::<u64>::list_shards(&backend)
            .await
            .unwrap()
            .is_empty()
    );
    let reopened = PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    assert!(reopened.since.is_empty() && reopened.upper.is_empty());
    assert!(
        PersistBackend::<u64>::list_shards(&backend)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_on_separate_handles_never_lose_or_duplicate() {
    let Some((_, factory)) = endpoint_and_factory("s3 racing writers").await else {
        return;
    };
    let shard = ShardId::new();
    let first = factory.open_handle().await;
    PersistBackend::<u64>::open(&first, shard).await.unwrap();
    let writers = 4;
    let appends_each = 6;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let backend = factory.open_handle().await;
        tasks.push(tokio::spawn(async move {
            let mut mismatches = 0;
            let mut written = 0;
            let mut upper = 0u64;
            while written < appends_each {
                let value = writer * 1000 + written;
                let outcome = backend
                    .compare_and_append(
                        shard,
                        vec![Update::new(row(value), upper, 1)],
                        frontier(upper),
                        frontier(upper + 1),
                        IdempotencyToken::new(),
                        WriteFence::Unfenced,
                    )
                    .await
                    .expect("append request");
                match outcome {
                    Ok(()) => {
                        written += 1;
                        upper += 1;
                    }
                    Err(mismatch) => {
                        mismatches += 1;
                        upper = mismatch.current.elements()[0];
                    }
                }
            }
            mismatches
        }));
    }
    let mut mismatches = 0;
    for task in tasks {
        mismatches += task.await.unwrap();
    }
    let total = (writers * appends_each) as u64;
    let frontiers = PersistBackend::<u64>::frontiers(&first, shard)
        .await
        .unwrap();
    assert_eq!(
        frontiers.upper,
        frontier(total),
        "one time per successful append"
    );
    let snapshot = first.snapshot(shard, &(total - 1)).await.unwrap();
    let expected: Vec<(Row, i64)> = {
        let mut rows: Vec<_> = (0..writers)
            .flat_map(|writer| (0..appends_each).map(move |i| (row(writer * 1000 + i), 1)))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(snapshot, expected);
    // Each time holds exactly one writer's row.
    for time in 0..total {
        let at = first
            .fetch(shard, &frontier(time), &frontier(time + 1))
            .await
            .unwrap();
        assert_eq!(at.len(), 1, "time {time}: {at:?}");
    }
    eprintln!("racing writers: {total} appends, {mismatches} lost races");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_that_ignores_conditional_writes_is_refused() {
    let endpoint = start_stub(StubResponse::IgnoreConditions).await;
    let err = config_for(&endpoint, "any-bucket", "p")
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Unsupported),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("conditional writes"), "{text}");
    assert!(text.contains("appends would not be safe"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_that_sends_no_etag_is_refused_at_build() {
    // A store that honours conditions but sends no ETag: without the build
    // check, every append after a shard's first state would be refused by
    // its If-Match and give up as a conflict.
    let endpoint = start_stub(StubResponse::NoEtag).await;
    for attempt in [
        "first build (writes the probe)",
        "second build (probe exists)",
    ] {
        let err = config_for(&endpoint, "any-bucket", "p")
            .build()
            .await
            .unwrap_err();
        assert_eq!(
            err.determinate_kind(),
            Some(DeterminateKind::Unsupported),
            "{attempt}: {err}"
        );
        let text = err.to_string();
        assert!(text.contains("sent no ETag"), "{attempt}: {text}");
        assert!(text.contains("bucket=any-bucket"), "{attempt}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_unauthorized() {
    let endpoint = start_stub(StubResponse::AccessDenied).await;
    let err = config_for(&endpoint, "any-bucket", "p")
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Unauthorized),
        "{err}"
    );
    assert!(err.to_string().contains("access denied"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_indeterminate() {
    let endpoint = start_stub(StubResponse::Unavailable).await;
    let err = config_for(&endpoint, "any-bucket", "p")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Indeterminate(_)), "{err}");
    assert!(err.to_string().contains("status=503"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_not_found() {
    let Some(endpoint) = test_endpoint("s3 missing bucket") else {
        return;
    };
    let bucket = format!("tidemark-missing-{}", uuid::Uuid::new_v4().simple());
    let err = config_for(&endpoint, &bucket, "p")
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::NotFound),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("bucket does not exist") && text.contains(&bucket),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_unavailable() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = config_for(&endpoint, "any-bucket", "p")
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Unavailable),
        "{err}"
    );
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[tokio::test]
async fn unknown_url_parameters_are_named() {
    let err =
        S3Backend::from_url("s3://bucket/prefix?endpoint=http://127.0.0.1:1&regoin=x&colour=y")
            .await
            .unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::InvalidConfig),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("regoin") && text.contains("colour"), "{text}");
    let err = S3Backend::from_url("gs://bucket/prefix").await.unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::InvalidConfig),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_url_opens_the_same_storage_as_the_builder() {
    let Some((endpoint, factory)) = endpoint_and_factory("s3 from url").await else {
        return;
    };
    let by_config = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&by_config, shard)
        .await
        .unwrap();
    // The URL names no credentials; the test passes its dummies explicitly
    // instead of relying on the environment chain.
    let url = format!(
        "s3://{}/{}?endpoint={endpoint}&region=us-east-1&path_style=true",
        factory.config.bucket(),
        factory.config.prefix()
    );
    let config = S3Config::from_url(&url)
        .unwrap()
        .with_credentials(support::ACCESS_KEY_ID, support::SECRET_ACCESS_KEY);
    let by_url = config.build().await.unwrap();
    assert_eq!(
        PersistBackend::<u64>::list_shards(&by_url).await.unwrap(),
        vec![shard]
    );
}

/// Reads every share of `count` of the snapshot at `as_of` on its own
/// handle, returning the consolidated union of the shares and the bytes of
/// parts each share downloaded.
async fn snapshot_by_shares(
    factory: &S3Factory,
    shard: ShardId,
    as_of: u64,
    count: u32,
) -> (Vec<(Row, i64)>, Vec<u64>) {
    let mut union = Vec::new();
    let mut bytes = Vec::new();
    for index in 0..count {
        let reader = factory.open_handle().await;
        let rows = reader
            .snapshot_share(shard, &as_of, ReadShare::new(index, count))
            .await
            .expect("share snapshot");
        assert!(
            rows.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "a share is consolidated and sorted"
        );
        bytes.push(reader.part_downloads().bytes);
        union.extend(rows);
    }
    union.sort();
    (union, bytes)
}

/// The bytes of parts a fresh handle downloads for the whole snapshot, and
/// the snapshot.
async fn whole_snapshot(factory: &S3Factory, shard: ShardId, as_of: u64) -> (Vec<(Row, i64)>, u64) {
    let reader = factory.open_handle().await;
    let rows = reader.snapshot(shard, &as_of).await.expect("snapshot");
    (rows, reader.part_downloads().bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_a_large_append_downloads_only_its_buckets() {
    let Some((_, factory)) = endpoint_and_factory("s3 bucketed shares").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    // About 600 KB against 64 KiB parts: written as one run per bucket group.
    let updates: Vec<_> = (0..20_000)
        .map(|i| Update::new(row(i), (i % 5) as u64, 1))
        .collect();
    append(&backend, shard, updates, 0, 5).await;

    let (whole, whole_bytes) = whole_snapshot(&factory, shard, 4).await;
    assert_eq!(whole.len(), 20_000);
    let (union, share_bytes) = snapshot_by_shares(&factory, shard, 4, 4).await;
    assert_eq!(union, whole, "the shares together are the whole snapshot");
    for (index, bytes) in share_bytes.iter().enumerate() {
        assert!(
            *bytes > 0 && *bytes < whole_bytes / 2,
            "share {index} of 4 downloaded {bytes} bytes, the whole read {whole_bytes}"
        );
    }
    assert!(
        share_bytes.iter().sum::<u64>() <= whole_bytes + whole_bytes / 4,
        "the shares download about the whole read once: {share_bytes:?} vs {whole_bytes}"
    );

    // A fetch share downloads only its buckets too.
    let reader = factory.open_handle().await;
    let fetched = reader
        .fetch_share(shard, &frontier(0), &frontier(5), ReadShare::new(1, 4))
        .await
        .unwrap();
    assert!(reader.part_downloads().bytes < whole_bytes / 2);
    assert!(!fetched.is_empty() && fetched.len() < 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_writes_its_output_by_bucket_group() {
    let Some((_, factory)) = endpoint_and_objects_only_factory("s3 bucketed compaction").await
    else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    // Small appends (about 4 KB against 64 KiB parts): each one mixed run
    // of nearly every bucket.
    for time in 0..20u64 {
        let updates = (0..100)
            .map(|i| Update::new(row(time as i64 * 100 + i), time, 1))
            .collect();
        append(&backend, shard, updates, time, time + 1).await;
    }
    let (before, _) = whole_snapshot(&factory, shard, 19).await;
    let (_, mixed_bytes) = snapshot_by_shares(&factory, shard, 19, 4).await;
    let (_, whole_mixed) = whole_snapshot(&factory, shard, 19).await;
    assert!(
        mixed_bytes.iter().all(|bytes| *bytes == whole_mixed),
        "mixed parts are downloaded by every share: {mixed_bytes:?} vs {whole_mixed}"
    );

    // Twenty batches of equal size: one compaction merges them all.
    PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    assert!(
        backend.part_keys(shard).await.unwrap().len() > 4,
        "the merged batch is written as several bucket groups"
    );
    let (after, whole_bytes) = whole_snapshot(&factory, shard, 19).await;
    assert_eq!(after, before);
    let (union, share_bytes) = snapshot_by_shares(&factory, shard, 19, 4).await;
    assert_eq!(union, before);
    assert!(
        share_bytes.iter().all(|bytes| *bytes < whole_bytes / 2),
        "compacted parts hold few buckets: {share_bytes:?} vs {whole_bytes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_written_before_parts_had_buckets_read_as_every_bucket() {
    let Some((endpoint, factory)) = endpoint_and_objects_only_factory("s3 unbucketed state").await
    else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    for time in 0..4u64 {
        let updates = (0..100)
            .map(|i| Update::new(row(time as i64 * 100 + i), time, 1))
            .collect();
        append(&backend, shard, updates, time, time + 1).await;
    }
    // Rewrite the state as format 1 stored it before parts recorded their
    // buckets and runs (format 1 had no inline parts either).
    assert!(
        raw_state_bytes(&endpoint, &backend, shard)
            .await
            .starts_with(b"TMSB"),
        "a plain state is stored binary"
    );
    let mut state = raw_state(&endpoint, &backend, shard).await;
    assert_eq!(state["format"], 6, "the current format is written");
    state["format"] = 1.into();
    let mut stripped = 0;
    for batch in state["batches"].as_array_mut().unwrap() {
        for part in batch["parts"].as_array_mut().unwrap() {
            let part = part.as_object_mut().unwrap();
            stripped += usize::from(part.remove("buckets").is_some());
            part.remove("run");
        }
    }
    assert_eq!(stripped, 4, "one part per append");
    put_raw_state(&endpoint, &backend, shard, &state).await;

    let (whole, whole_bytes) = whole_snapshot(&factory, shard, 3).await;
    assert_eq!(whole.len(), 400);
    let (union, share_bytes) = snapshot_by_shares(&factory, shard, 3, 4).await;
    assert_eq!(union, whole);
    assert!(
        share_bytes.iter().all(|bytes| *bytes == whole_bytes),
        "every share reads every part of unknown buckets: {share_bytes:?} vs {whole_bytes}"
    );
    let mut fetched = Vec::new();
    for index in 0..3 {
        fetched.extend(
            backend
                .fetch_share(shard, &frontier(1), &frontier(3), ReadShare::new(index, 3))
                .await
                .unwrap(),
        );
    }
    assert_eq!(fetched.len(), 200);
    // Still appendable, and the new part records its buckets.
    append(&backend, shard, vec![Update::new(row(-1), 4, 1)], 4, 5).await;
    assert_eq!(backend.snapshot(shard, &4).await.unwrap().len(), 401);
    assert_eq!(
        raw_state(&endpoint, &backend, shard).await["format"],
        6,
        "a format 1 state is rewritten in the current format"
    );
    assert!(
        raw_state_bytes(&endpoint, &backend, shard)
            .await
            .starts_with(b"TMSB"),
        "and stored binary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_append_is_one_conditional_put() {
    let Some((endpoint, factory)) = endpoint_and_factory("s3 inline append").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let before = backend.object_puts();
    append(&backend, shard, ten_rows(0), 0, 1).await;
    let after = backend.object_puts();
    assert_eq!(
        after.conditional - before.conditional,
        1,
        "one state commit"
    );
    assert_eq!(after.unconditional, before.unconditional, "no part object");
    assert!(backend.part_keys(shard).await.unwrap().is_empty());
    assert!(
        list_keys(
            &endpoint,
            backend.config().bucket(),
            &backend.parts_prefix(shard)
        )
        .await
        .is_empty()
    );
    assert_eq!(
        inline_parts(&raw_state(&endpoint, &backend, shard).await).1,
        1
    );

    // Read back like any part, with no download.
    let reader = factory.open_handle().await;
    let expected: Vec<_> = ten_rows(0).into_iter().map(|u| (u.row, 1)).collect();
    assert_eq!(reader.snapshot(shard, &0).await.unwrap(), expected);
    let fetched = reader
        .fetch(shard, &frontier(0), &frontier(1))
        .await
        .unwrap();
    assert_eq!(fetched.len(), 10);
    let (union, _) = snapshot_by_shares(&factory, shard, 0, 3).await;
    assert_eq!(union, expected, "the shares of inline parts are whole");
    assert_eq!(reader.part_downloads().parts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_append_writes_part_objects() {
    let Some((endpoint, factory)) = endpoint_and_factory("s3 large append").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let (inline_batch_bytes, _) = backend.config().inline_bytes();
    // About 30 encoded bytes per update: well past the inline bound.
    let updates: Vec<_> = (0..inline_batch_bytes as i64)
        .map(|i| Update::new(row(i), 0, 1))
        .collect();
    let before = backend.object_puts();
    append(&backend, shard, updates, 0, 1).await;
    let after = backend.object_puts();
    let parts = backend.part_keys(shard).await.unwrap();
    assert!(!parts.is_empty());
    assert_eq!(
        after.unconditional - before.unconditional,
        parts.len() as u64
    );
    assert_eq!(after.conditional - before.conditional, 1);
    assert_eq!(
        inline_parts(&raw_state(&endpoint, &backend, shard).await).1,
        0
    );
    assert_eq!(
        backend.snapshot(shard, &0).await.unwrap().len(),
        inline_batch_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_bytes_of_a_state_stay_within_their_bound() {
    let Some((endpoint, mut factory)) = endpoint_and_factory("s3 inline bound").await else {
        return;
    };
    let bound = 2048;
    factory.config = factory.config.with_inline_bytes(1024, bound);
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    let mut spilled = 0;
    for time in 0..12u64 {
        let before = backend.object_puts();
        append(&backend, shard, ten_rows(time), time, time + 1).await;
        spilled += backend.object_puts().unconditional - before.unconditional;
        let (inline_bytes, _) = inline_parts(&raw_state(&endpoint, &backend, shard).await);
        assert!(inline_bytes <= bound as u64, "{inline_bytes} > {bound}");
    }
    assert!(spilled > 0, "appends past the bound wrote part objects");
    assert!(spilled < 12, "appends within the bound were inline");
    let snapshot = backend.snapshot(shard, &11).await.unwrap();
    assert_eq!(snapshot.len(), 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_moves_inline_data_out_into_part_objects() {
    let Some((endpoint, mut factory)) = endpoint_and_factory("s3 inline compaction").await else {
        return;
    };
    factory.config = factory.config.with_inline_bytes(1024, 4096);
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    // A large batch first, so that tiering alone would not touch the small
    // ones after it.
    let large: Vec<_> = (0..5000).map(|i| Update::new(row(-1 - i), 0, 1)).collect();
    append(&backend, shard, large, 0, 1).await;
    for time in 1..9u64 {
        append(&backend, shard, ten_rows(time), time, time + 1).await;
    }
    let (inline_before, count_before) = inline_parts(&raw_state(&endpoint, &backend, shard).await);
    assert!(
        count_before >= 2 && inline_before * 2 >= 4096,
        "{inline_before}"
    );
    let expected = backend.snapshot(shard, &8).await.unwrap();
    let objects_before = backend.part_keys(shard).await.unwrap().len();

    PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    let state = raw_state(&endpoint, &backend, shard).await;
    assert_eq!(inline_parts(&state), (0, 0), "no inline part is left");
    assert!(backend.part_keys(shard).await.unwrap().len() > objects_before);
    assert!(
        state["retired"].as_array().unwrap().is_empty(),
        "inline parts retire no object"
    );
    assert_eq!(backend.snapshot(shard, &8).await.unwrap(), expected);
    // And appends are inline again.
    let before = backend.object_puts();
    append(&backend, shard, ten_rows(9), 9, 10).await;
    assert_eq!(backend.object_puts().unconditional, before.unconditional);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_inline_part_is_detected_and_names_the_state() {
    let Some((endpoint, factory)) = endpoint_and_factory("s3 corrupted inline part").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = ShardId::new();
    PersistBackend::<u64>::open(&backend, shard).await.unwrap();
    append(&backend, shard, ten_rows(0), 0, 1).await;
    let mut state = raw_state(&endpoint, &backend, shard).await;
    let inline = state["batches"][0]["parts"][0]["inline"]
        .as_str()
        .expect("an inline part")
        .to_string();
    // Change one base64 digit in the middle: still base64, other bytes.
    let middle = inline.len() / 2;
    let digit = &inline[middle..=middle];
    let replacement = if digit == "A" { "B" } else { "A" };
    let corrupted = format!(
        "{}{replacement}{}",
        &inline[..middle],
        &inline[middle + 1..]
    );
    state["batches"][0]["parts"][0]["inline"] = corrupted.into();
    put_raw_state(&endpoint, &backend, shard, &state).await;

    let err = backend.snapshot(shard, &0).await.unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Corrupted),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains(&state_key(&backend, shard)), "{text}");
    assert!(text.contains("checksum"), "{text}");
}
