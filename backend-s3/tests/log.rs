//! The S3 commit log (`S3Config::with_commit_log`): atomic and linearizable
//! across shards, readable before it is applied, each packed call answered
//! on its own, plain shards converted, crash-safe, and one conditional PUT
//! per call.

mod support;

use std::collections::BTreeMap;

use support::calls::{frontier, open_shards, part, row, upper};
use support::{S3Factory, make_factory, raw_client};
use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_s3::S3Backend;
use tidemark_storage_types::{
    BackendError, DeterminateKind, IdempotencyToken, PersistBackend, Row, ShardAppend, ShardId,
    UpperMismatches, WriteFence,
};

async fn log_factory(test_name: &str) -> Option<S3Factory> {
    let mut factory = make_factory(test_name).await?;
    factory.config = factory.config.with_commit_log(true);
    Some(factory)
}

async fn call(
    backend: &S3Backend,
    appends: Vec<ShardAppend<u64>>,
    token: IdempotencyToken,
) -> Result<Result<(), UpperMismatches<u64>>, BackendError> {
    PersistBackend::<u64>::compare_and_append_all(backend, appends, token, WriteFence::Unfenced)
        .await
}

async fn rows_at(backend: &S3Backend, shard: ShardId, as_of: u64) -> BTreeMap<Row, i64> {
    PersistBackend::<u64>::snapshot(backend, shard, &as_of)
        .await
        .expect("snapshot")
        .into_iter()
        .collect()
}

/// How a state object spells an upper of `time` (times are stored
/// order-preserving as `i64`).
fn stored_upper(time: u64) -> String {
    format!("\"upper\":{}", (time ^ (1 << 63)) as i64)
}

/// The raw state object of a shard, as JSON text (a plain state is stored
/// binary: its JSON form).
async fn raw_state(factory: &S3Factory, shard: ShardId) -> String {
    let client = raw_client(factory.config.endpoint().expect("endpoint"));
    let key = format!("{}/shards/{shard}/state", factory.config.prefix());
    let object = client
        .get_object()
        .bucket(factory.config.bucket())
        .key(&key)
        .send()
        .await
        .expect("get state");
    let bytes = object.body.collect().await.expect("body").into_bytes();
    let json = tidemark_backend_s3::stored_state_as_json(&key, &bytes).expect("a readable state");
    String::from_utf8(json).expect("utf-8 state")
}

async fn log_keys(factory: &S3Factory) -> Vec<String> {
    let client = raw_client(factory.config.endpoint().expect("endpoint"));
    let listed = client
        .list_objects_v2()
        .bucket(factory.config.bucket())
        .prefix(format!("{}/log/", factory.config.prefix()))
        .send()
        .await
        .expect("list log");
    listed
        .contents()
        .iter()
        .filter_map(|object| object.key().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_part_of_a_call() {
    let Some(factory) = log_factory("s3 log atomicity").await else {
        return;
    };
    let writer = factory.open_handle().await;
    let shards = open_shards(&writer, 3).await;
    const CALLS: u64 = 20;
    let writing = {
        let writer = writer.clone();
        let shards = shards.clone();
        tokio::spawn(async move {
            for round in 0..CALLS {
                let appends = shards
                    .iter()
                    .map(|&shard| part(shard, round, round + 1, &[row(0, round as i64)]))
                    .collect();
                call(&writer, appends, IdempotencyToken::new())
                    .await
                    .expect("call")
                    .expect("no mismatch");
            }
        })
    };
    let mut readers = Vec::new();
    for _ in 0..2 {
        // Each reader is a handle of its own (a cold cache at first).
        let reader = factory.open_handle().await;
        let shards = shards.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            loop {
                // A call moves every upper by one: read in order, no later
                // shard may be behind an earlier one.
                let mut seen = Vec::new();
                for &shard in &shards {
                    seen.push(upper(&reader, shard).await);
                }
                for pair in seen.windows(2) {
                    assert!(
                        timely::PartialOrder::less_equal(&pair[0], &pair[1]),
                        "a reader saw part of a call: {seen:?}"
                    );
                }
                reads += 1;
                if seen[0] == frontier(CALLS) || reads >= 400 {
                    return reads;
                }
            }
        }));
    }
    writing.await.expect("writer");
    for reader in readers {
        assert!(reader.await.expect("reader") > 0);
    }
    for &shard in &shards {
        assert_eq!(upper(&writer, shard).await, frontier(CALLS));
        assert_eq!(
            rows_at(&writer, shard, CALLS - 1).await.len(),
            CALLS as usize
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_handle_reads_entries_before_they_are_applied() {
    let Some(factory) = log_factory("s3 log cold reader").await else {
        return;
    };
    let writer = factory.open_handle().await;
    writer.hold_log_applier(true);
    let shards = open_shards(&writer, 2).await;
    let appends = shards
        .iter()
        .map(|&shard| part(shard, 0, 1, &[row(1, 1), row(1, 2)]))
        .collect();
    call(&writer, appends, IdempotencyToken::new())
        .await
        .unwrap()
        .unwrap();
    // The state objects do not hold the call yet: only the log does.
    for &shard in &shards {
        let state = raw_state(&factory, shard).await;
        assert!(state.contains(&stored_upper(0)), "{state}");
        assert!(state.contains("\"log\":{\"applied\":0}"), "{state}");
    }
    assert_eq!(log_keys(&factory).await.len(), 1);
    let reader = factory.open_handle().await;
    for &shard in &shards {
        assert_eq!(upper(&reader, shard).await, frontier(1));
        assert_eq!(rows_at(&reader, shard, 0).await.len(), 2);
    }
    // Applied, the states hold it and read the same.
    writer.hold_log_applier(false);
    writer.wait_for_background_writes().await;
    for &shard in &shards {
        let state = raw_state(&factory, shard).await;
        assert!(state.contains(&stored_upper(1)), "{state}");
        assert_eq!(rows_at(&reader, shard, 0).await.len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn packed_calls_each_get_their_own_answer() {
    let Some(factory) = log_factory("s3 log packed answers").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shards = open_shards(&backend, 16).await;
    // Half the calls expect the right upper, half a wrong one; all queued
    // at once, so the committer packs them.
    let calls = shards.iter().enumerate().map(|(index, &shard)| {
        let backend = backend.clone();
        async move {
            let good = index % 2 == 0;
            let lower = if good { 0 } else { 5 };
            let outcome = call(
                &backend,
                vec![part(shard, lower, lower + 1, &[row(index as i64, 0)])],
                IdempotencyToken::new(),
            )
            .await
            .expect("call");
            (shard, good, outcome)
        }
    });
    for (shard, good, outcome) in futures::future::join_all(calls).await {
        if good {
            assert!(outcome.is_ok(), "{shard}: {outcome:?}");
            assert_eq!(upper(&backend, shard).await, frontier(1));
        } else {
            let mismatches = outcome.expect_err("a wrong expected upper mismatches");
            assert_eq!(mismatches.mismatches.len(), 1);
            assert_eq!(mismatches.mismatches[0].0, shard);
            assert_eq!(mismatches.mismatches[0].1.current, frontier(0));
            assert_eq!(upper(&backend, shard).await, frontier(0));
        }
    }
    assert!(
        log_keys(&factory).await.len() <= 8,
        "the good calls wrote at most one entry each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_shard_call_converts_a_plain_shard() {
    let Some(factory) = make_factory("s3 log conversion").await else {
        return;
    };
    let plain = factory.open_handle().await;
    let plain_shard = open_shards(&plain, 1).await[0];
    call(
        &plain,
        vec![part(plain_shard, 0, 1, &[row(0, 0)])],
        IdempotencyToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!raw_state(&factory, plain_shard).await.contains("\"log\""));

    let log_config = factory.config.clone().with_commit_log(true);
    let logged = S3Backend::builder(log_config).build().await.unwrap();
    let log_shard = open_shards(&logged, 1).await[0];
    call(
        &logged,
        vec![
            part(plain_shard, 1, 2, &[row(1, 1)]),
            part(log_shard, 0, 2, &[row(1, 1)]),
        ],
        IdempotencyToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(raw_state(&factory, plain_shard).await.contains("\"log\""));
    // The plain handle reads the converted shard through the log, and its
    // own appends to it go through the log too.
    assert_eq!(upper(&plain, plain_shard).await, frontier(2));
    call(
        &plain,
        vec![part(plain_shard, 2, 3, &[row(0, 2)])],
        IdempotencyToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(upper(&logged, plain_shard).await, frontier(3));
    assert_eq!(rows_at(&logged, plain_shard, 2).await.len(), 3);
    assert!(log_keys(&factory).await.len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_stopped_after_its_entry_is_wholly_applied_once() {
    let Some(factory) = log_factory("s3 log crash after entry").await else {
        return;
    };
    let shards;
    let token = IdempotencyToken::new();
    let appends = |shards: &[ShardId]| {
        shards
            .iter()
            .map(|&shard| part(shard, 0, 1, &[row(7, 7)]))
            .collect::<Vec<_>>()
    };
    {
        let crashed = factory.open_handle().await;
        crashed.hold_log_applier(true);
        shards = open_shards(&crashed, 3).await;
        call(&crashed, appends(&shards), token)
            .await
            .unwrap()
            .unwrap();
        // Dropped with nothing applied: as if the process died after the
        // entry PUT.
    }
    let fresh = factory.open_handle().await;
    for &shard in &shards {
        assert!(raw_state(&factory, shard).await.contains(&stored_upper(0)));
        assert_eq!(upper(&fresh, shard).await, frontier(1));
    }
    // The retry is answered by the token and writes nothing.
    let entries = log_keys(&factory).await.len();
    call(&fresh, appends(&shards), token)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(log_keys(&factory).await.len(), entries);
    fresh.wait_for_background_writes().await;
    for &shard in &shards {
        assert_eq!(upper(&fresh, shard).await, frontier(1));
        let rows = rows_at(&fresh, shard, 0).await;
        assert_eq!(rows.get(&row(7, 7)), Some(&1), "applied once: {rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_entry_is_an_error_naming_its_key() {
    let Some(factory) = log_factory("s3 log bad entry").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shard = open_shards(&backend, 1).await[0];
    let client = raw_client(factory.config.endpoint().unwrap());
    for (seq, body) in [
        (1u64, b"{\"format\":9,\"seq\":1}".to_vec()),
        (1u64, b"not json at all".to_vec()),
    ] {
        let key = format!("{}/log/{seq:020}", factory.config.prefix());
        client
            .put_object()
            .bucket(factory.config.bucket())
            .key(&key)
            .body(body.into())
            .send()
            .await
            .unwrap();
        let reader = factory.open_handle().await;
        let err = PersistBackend::<u64>::frontiers(&reader, shard)
            .await
            .expect_err("a bad entry");
        assert_eq!(err.determinate_kind(), Some(DeterminateKind::Corrupted));
        assert!(err.to_string().contains(&key), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_is_one_conditional_put_whatever_its_shards() {
    let Some(factory) = log_factory("s3 log request counts").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shards = open_shards(&backend, 3).await;
    // Warm: every shard known to the committer.
    call(
        &backend,
        shards.iter().map(|&shard| part(shard, 0, 1, &[])).collect(),
        IdempotencyToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
    backend.wait_for_background_writes().await;
    backend.hold_log_applier(true);

    let before = backend.object_puts();
    call(
        &backend,
        vec![part(shards[0], 1, 2, &[row(0, 1)])],
        IdempotencyToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
    let after = backend.object_puts();
    assert_eq!(after.conditional - before.conditional, 1, "one entry PUT");
    assert_eq!(after.unconditional, before.unconditional);

    let before = backend.object_puts();
    call(
        &backend,
        vec![
            part(shards[0], 2, 3, &[row(0, 2)]),
            part(shards[1], 1, 3, &[row(1, 2)]),
            part(shards[2], 1, 3, &[row(2, 2)]),
        ],
        IdempotencyToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
    let after = backend.object_puts();
    assert_eq!(after.conditional - before.conditional, 1, "one entry PUT");
    assert_eq!(after.unconditional, before.unconditional);
    for &shard in &shards {
        assert_eq!(upper(&backend, shard).await, frontier(3));
    }
    backend.hold_log_applier(false);
    backend.wait_for_background_writes().await;
}
