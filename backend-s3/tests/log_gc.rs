//! Commit log gc (decision 120): entries every shard has folded in are
//! deleted once older than the grace period, never the highest one;
//! readers, cold or warm, still see exactly what was committed; a committer
//! whose view of the log is older than half the grace period never writes
//! at a deleted seq; and gc under concurrent appends and readers loses and
//! duplicates nothing.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::calls::{frontier, open_shards, part, row, upper};
use support::{S3Factory, make_factory_with_clock, raw_client};
use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_s3::{ManualClock, S3Backend};
use tidemark_storage_types::{
    BackendError, IdempotencyToken, PersistBackend, Row, ShardAppend, ShardId, UpperMismatches,
    WriteFence,
};

const GRACE: Duration = Duration::from_secs(60);

async fn log_factory(test_name: &str, clock: &Arc<ManualClock>) -> Option<S3Factory> {
    let mut factory = make_factory_with_clock(test_name, Arc::clone(clock) as _, GRACE).await?;
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

/// Appends `rows` to `shard` at `lower`, moving its upper to `lower + 1`.
async fn append(backend: &S3Backend, shard: ShardId, lower: u64, rows: &[Row]) {
    call(
        backend,
        vec![part(shard, lower, lower + 1, rows)],
        IdempotencyToken::new(),
    )
    .await
    .expect("append")
    .expect("no mismatch");
}

async fn rows_at(backend: &S3Backend, shard: ShardId, as_of: u64) -> BTreeMap<Row, i64> {
    PersistBackend::<u64>::snapshot(backend, shard, &as_of)
        .await
        .expect("snapshot")
        .into_iter()
        .collect()
}

/// The seqs of the entries in the log, in order.
async fn log_seqs(factory: &S3Factory) -> Vec<u64> {
    let client = raw_client(factory.config.endpoint().expect("endpoint"));
    let dir = format!("{}/log/", factory.config.prefix());
    let mut seqs = Vec::new();
    let mut continuation = None;
    loop {
        let listed = client
            .list_objects_v2()
            .bucket(factory.config.bucket())
            .prefix(&dir)
            .set_continuation_token(continuation)
            .send()
            .await
            .expect("list log");
        for object in listed.contents() {
            let key = object.key().expect("key");
            seqs.push(
                key.strip_prefix(&dir)
                    .and_then(|seq| seq.parse().ok())
                    .expect("a log key"),
            );
        }
        continuation = listed.next_continuation_token().map(str::to_string);
        if continuation.is_none() {
            return seqs;
        }
    }
}

/// The `applied` seq in a shard's stored state.
async fn stored_applied(factory: &S3Factory, shard: ShardId) -> u64 {
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
    let state: serde_json::Value = serde_json::from_slice(&json).expect("a json state");
    state["log"]["applied"].as_u64().expect("a log-mode state")
}

/// Rows `(writer, seq)` for each seq, once each.
fn rows_of(writer: i64, seqs: impl IntoIterator<Item = u64>) -> BTreeMap<Row, i64> {
    seqs.into_iter()
        .map(|seq| (row(writer, seq as i64), 1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_deletes_folded_old_entries_and_keeps_the_highest_and_unfolded_ones() {
    let clock = Arc::new(ManualClock::starting_now());
    let Some(factory) = log_factory("s3 log gc deletes", &clock).await else {
        return;
    };
    let busy_writer = factory.open_handle().await;
    let stopped_writer = factory.open_handle().await;
    stopped_writer.hold_log_applier(true);
    let gc = factory.open_handle().await;
    gc.hold_log_applier(true);
    let busy = open_shards(&busy_writer, 1).await[0];
    let unfolded = open_shards(&stopped_writer, 1).await[0];

    for lower in 0..3 {
        append(&busy_writer, busy, lower, &[row(0, lower as i64)]).await;
    }
    append(&stopped_writer, unfolded, 0, &[row(1, 0)]).await;
    append(&busy_writer, busy, 3, &[row(0, 3)]).await;
    busy_writer.wait_for_background_writes().await;
    // Folded now; held from here on so that its background passes (after a
    // commit, or when its committer idles) do not race the passes below.
    busy_writer.hold_log_applier(true);
    assert_eq!(log_seqs(&factory).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(stored_applied(&factory, busy).await, 5);
    let behind = stored_applied(&factory, unfolded).await;
    assert!(
        behind < 4,
        "the held writer did not fold its entry 4: {behind}"
    );

    // Young entries stay, whatever is folded in; the pass is one listing.
    let young = gc.gc_log().await.unwrap();
    assert_eq!((young.entries_deleted, young.requests), (0, 1), "{young:?}");

    clock.advance(2 * GRACE);
    let first = gc.gc_log().await.unwrap();
    assert_eq!(first.entries_deleted, 3, "{first:?}");
    assert_eq!(first.shards_folded, 0, "the applier is held: {first:?}");
    assert_eq!(
        log_seqs(&factory).await,
        vec![4, 5],
        "the unfolded entry and the highest one stay"
    );
    let reader = factory.open_handle().await;
    assert_eq!(upper(&reader, busy).await, frontier(4));
    assert_eq!(rows_at(&reader, busy, 3).await, rows_of(0, 0..4));
    assert_eq!(upper(&reader, unfolded).await, frontier(1));
    assert_eq!(rows_at(&reader, unfolded, 0).await, rows_of(1, [0]));

    // Unheld, gc folds the shard whose writer stopped, then deletes.
    gc.hold_log_applier(false);
    let second = gc.gc_log().await.unwrap();
    assert_eq!(
        (second.entries_deleted, second.shards_folded),
        (1, 1),
        "{second:?}"
    );
    assert_eq!(log_seqs(&factory).await, vec![5]);
    assert_eq!(stored_applied(&factory, unfolded).await, 5);

    // Nothing left to delete but the highest entry: one listing.
    let idle = gc.gc_log().await.unwrap();
    assert_eq!(
        idle,
        tidemark_backend_s3::LogGcStats {
            requests: 1,
            ..Default::default()
        }
    );
    println!(
        "log gc pass with nothing deletable: {} request(s) (young entries: {})",
        idle.requests, young.requests
    );

    // The old entry goes once it is no longer the highest; young ones stay.
    append(&busy_writer, busy, 4, &[row(0, 4)]).await;
    append(&busy_writer, busy, 5, &[row(0, 5)]).await;
    busy_writer.wait_for_background_writes().await;
    gc.gc_log().await.unwrap();
    assert_eq!(log_seqs(&factory).await, vec![6, 7]);

    let cold = factory.open_handle().await;
    assert_eq!(rows_at(&cold, busy, 5).await, rows_of(0, 0..6));
    assert_eq!(rows_at(&cold, unfolded, 0).await, rows_of(1, [0]));
    // `gc` runs the log pass too (the writer held: no background pass).
    clock.advance(2 * GRACE);
    append(&busy_writer, busy, 6, &[row(0, 6)]).await;
    let all = cold.gc().await.unwrap();
    assert_eq!(all.log.entries_deleted, 2, "{all:?}");
    assert_eq!(log_seqs(&factory).await, vec![8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_readers_after_gc_see_exactly_what_was_committed() {
    let clock = Arc::new(ManualClock::starting_now());
    let Some(factory) = log_factory("s3 log gc cold readers", &clock).await else {
        return;
    };
    let writer = factory.open_handle().await;
    let held = factory.open_handle().await;
    held.hold_log_applier(true);
    let gc = factory.open_handle().await;
    gc.hold_log_applier(true);
    let shards = open_shards(&writer, 3).await;
    let (rare, busy_a, busy_b) = (shards[0], shards[1], shards[2]);
    let unfolded = open_shards(&held, 1).await[0];

    // The rare shard is written once, in a call with a busy one.
    call(
        &writer,
        vec![
            part(rare, 0, 1, &[row(9, 0)]),
            part(busy_a, 0, 1, &[row(0, 0)]),
        ],
        IdempotencyToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
    // Folded now, the rare shard's `applied` stays at 1.
    writer.wait_for_background_writes().await;
    const BUSY_CALLS: u64 = 24;
    for lower in 1..BUSY_CALLS {
        call(
            &writer,
            vec![
                part(busy_a, lower, lower + 1, &[row(0, lower as i64)]),
                // busy_b starts at the second call, from upper 0.
                part(
                    busy_b,
                    if lower == 1 { 0 } else { lower },
                    lower + 1,
                    &[row(1, lower as i64)],
                ),
            ],
            IdempotencyToken::new(),
        )
        .await
        .unwrap()
        .unwrap();
        if lower == BUSY_CALLS / 2 {
            append(&held, unfolded, 0, &[row(2, 0)]).await;
        }
    }
    writer.wait_for_background_writes().await;
    // Held from here on: a background pass of the writer's own would fold
    // the held handle's shard and race the pass below.
    writer.hold_log_applier(true);
    clock.advance(2 * GRACE);
    let stats = gc.gc_log().await.unwrap();
    let left = log_seqs(&factory).await;
    assert_eq!(
        left.len(),
        2,
        "the unfolded entry and the highest: {left:?} {stats:?}"
    );
    let rare_applied = stored_applied(&factory, rare).await;
    assert!(
        rare_applied < left[0] - 1,
        "the rare shard's applied ({rare_applied}) is far below the first entry left ({left:?})"
    );

    let expected_busy_a = rows_of(0, 0..BUSY_CALLS);
    let expected_busy_b = rows_of(1, 1..BUSY_CALLS);
    // A log handle and a plain one, each cold.
    let plain_config = factory.config.clone().with_commit_log(false);
    let plain = S3Backend::builder(plain_config)
        .with_clock(Arc::clone(&clock) as _)
        .build()
        .await
        .unwrap();
    for reader in [factory.open_handle().await, plain] {
        assert_eq!(upper(&reader, rare).await, frontier(1));
        assert_eq!(rows_at(&reader, rare, 0).await, rows_of(9, [0]));
        assert_eq!(upper(&reader, busy_a).await, frontier(BUSY_CALLS));
        assert_eq!(
            rows_at(&reader, busy_a, BUSY_CALLS - 1).await,
            expected_busy_a
        );
        assert_eq!(
            rows_at(&reader, busy_b, BUSY_CALLS - 1).await,
            expected_busy_b
        );
        assert_eq!(rows_at(&reader, unfolded, 0).await, rows_of(2, [0]));
    }

    // A cold writer of the rare shard judges it right, and so do readers
    // after that.
    let cold_writer = factory.open_handle().await;
    let refused = call(
        &cold_writer,
        vec![part(rare, 0, 1, &[row(9, 99)])],
        IdempotencyToken::new(),
    )
    .await
    .unwrap()
    .expect_err("the rare shard's upper is 1");
    assert_eq!(refused.mismatches[0].1.current, frontier(1));
    append(&cold_writer, rare, 1, &[row(9, 1)]).await;
    let reader = factory.open_handle().await;
    assert_eq!(rows_at(&reader, rare, 1).await, rows_of(9, [0, 1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_committer_neither_loses_nor_misjudges_an_append() {
    let clock = Arc::new(ManualClock::starting_now());
    let Some(factory) = log_factory("s3 log gc stale committer", &clock).await else {
        return;
    };
    let stale = factory.open_handle().await;
    let other = factory.open_handle().await;
    let gc = factory.open_handle().await;
    let quiet = open_shards(&stale, 1).await[0];
    let busy = open_shards(&other, 1).await[0];

    // The stale handle writes entry 1, then nothing for a long time (held:
    // it runs no background gc either).
    append(&stale, quiet, 0, &[row(0, 0)]).await;
    stale.wait_for_background_writes().await;
    stale.hold_log_applier(true);
    for lower in 0..4 {
        append(&other, busy, lower, &[row(1, lower as i64)]).await;
    }
    // Another handle's committer loads the quiet shard for a call it
    // refuses, folding the state past the seqs gc is about to delete.
    let refused = call(
        &other,
        vec![part(quiet, 5, 6, &[row(1, 5)])],
        IdempotencyToken::new(),
    )
    .await
    .unwrap();
    assert!(refused.is_err(), "the quiet shard's upper is 1");
    other.wait_for_background_writes().await;
    assert_eq!(stored_applied(&factory, quiet).await, 5);
    // Held while the log is checked: its background passes would race the
    // explicit ones.
    other.hold_log_applier(true);
    clock.advance(2 * GRACE);
    gc.gc_log().await.unwrap();
    assert_eq!(log_seqs(&factory).await, vec![5]);

    // Its committer last saw the log end at 1. Entry 2 was deleted: a PUT
    // there would be refused by nobody and ignored by the quiet shard,
    // whose state is past it.
    append(&stale, quiet, 1, &[row(0, 1)]).await;
    let seqs = log_seqs(&factory).await;
    assert_eq!(
        seqs,
        vec![5, 6],
        "written above the head, not at a deleted seq"
    );
    let reader = factory.open_handle().await;
    assert_eq!(upper(&reader, quiet).await, frontier(2));
    assert_eq!(rows_at(&reader, quiet, 1).await, rows_of(0, [0, 1]));

    // Another handle moves the quiet shard on; those entries are deleted
    // too. The stale committer's cached view says upper 2, the shard's is
    // 3: it must find that out (a probe of the deleted seq 7 would say the
    // log ends at 6) and commit, not answer a mismatch.
    other.hold_log_applier(false);
    append(&other, quiet, 2, &[row(1, 2)]).await;
    append(&other, busy, 4, &[row(1, 4)]).await;
    other.wait_for_background_writes().await;
    other.hold_log_applier(true);
    clock.advance(2 * GRACE);
    gc.gc_log().await.unwrap();
    assert_eq!(log_seqs(&factory).await, vec![8]);
    call(
        &stale,
        vec![part(quiet, 3, 4, &[row(0, 3)])],
        IdempotencyToken::new(),
    )
    .await
    .unwrap()
    .expect("the quiet shard's upper is 3");
    let reader = factory.open_handle().await;
    assert_eq!(upper(&reader, quiet).await, frontier(4));
    let mut expected = rows_of(0, [0, 1, 3]);
    expected.insert(row(1, 2), 1);
    assert_eq!(rows_at(&reader, quiet, 3).await, expected);
    assert_eq!(log_seqs(&factory).await, vec![8, 9]);
}

/// What one writer of the concurrent test writes: call `k` appends
/// `(writer, k)` at time `k` to its first shard, and on even `k` to its
/// second one too (one call, both shards).
fn writer_call(writer: usize, shards: [ShardId; 2], k: u64) -> Vec<ShardAppend<u64>> {
    let rows = [row(writer as i64, k as i64)];
    let mut parts = vec![part(shards[0], k, k + 1, &rows)];
    if k.is_multiple_of(2) {
        let lower = k.saturating_sub(1);
        let mut second = part(shards[1], lower, k + 1, &rows);
        second.updates[0].timestamp = k;
        parts.push(second);
    }
    parts
}

/// What a shard of that writer holds below `upper`.
fn expected_rows(writer: usize, second: bool, upper: u64) -> BTreeMap<Row, i64> {
    rows_of(
        writer as i64,
        (0..upper).filter(|k| !second || k.is_multiple_of(2)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_under_concurrent_appends_and_readers_loses_and_duplicates_nothing() {
    // Half the grace period must exceed any request by far: the clock runs
    // about 5x real time here, so 30 s of it is several real seconds.
    const CONCURRENT_GRACE: Duration = Duration::from_secs(60);
    const WRITERS: usize = 3;
    const CALLS: u64 = 40;
    let clock = Arc::new(ManualClock::starting_now());
    let Some(mut factory) = make_factory_with_clock(
        "s3 log gc concurrent",
        Arc::clone(&clock) as _,
        CONCURRENT_GRACE,
    )
    .await
    else {
        return;
    };
    factory.config = factory.config.with_commit_log(true);
    let factory = Arc::new(factory);
    let setup = factory.open_handle().await;
    let mut owned = Vec::new();
    for _ in 0..WRITERS {
        let shards = open_shards(&setup, 2).await;
        owned.push([shards[0], shards[1]]);
    }
    // Acknowledged calls per writer (call k acknowledged => k < count).
    let acknowledged: Arc<Vec<AtomicU64>> =
        Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let writing = Arc::new(AtomicBool::new(true));

    let mut writers = Vec::new();
    for (writer, shards) in owned.iter().copied().enumerate() {
        let factory = Arc::clone(&factory);
        let acknowledged = Arc::clone(&acknowledged);
        writers.push(tokio::spawn(async move {
            let backend = factory.open_handle().await;
            for k in 0..CALLS {
                let token = IdempotencyToken::new();
                // An indeterminate answer is retried with the same token.
                let mut attempts = 0;
                loop {
                    match call(&backend, writer_call(writer, shards, k), token).await {
                        Ok(Ok(())) => break,
                        Ok(Err(mismatch)) => panic!("writer {writer} call {k}: {mismatch:?}"),
                        Err(err) if !err.is_determinate() && attempts < 8 => attempts += 1,
                        Err(err) => panic!("writer {writer} call {k}: {err}"),
                    }
                }
                acknowledged[writer].store(k + 1, Ordering::SeqCst);
            }
        }));
    }

    let mut readers = Vec::new();
    for reader in 0..2 {
        let factory = Arc::clone(&factory);
        let owned = owned.clone();
        let acknowledged = Arc::clone(&acknowledged);
        let writing = Arc::clone(&writing);
        readers.push(tokio::spawn(async move {
            let mut warm = factory.open_handle().await;
            let mut reads = 0u64;
            while writing.load(Ordering::SeqCst) {
                // Every few reads start from a cold handle.
                if reads % 5 == 4 {
                    warm = factory.open_handle().await;
                }
                let writer = (reads as usize + reader) % WRITERS;
                let second = reads % 2 == 1;
                let shard = owned[writer][usize::from(second)];
                let acknowledged_before = acknowledged[writer].load(Ordering::SeqCst);
                let read_upper = upper(&warm, shard).await;
                let read_upper = read_upper.elements().first().copied().unwrap_or(u64::MAX);
                // Linearizable: at least every call acknowledged before
                // (on the second shard, the last even one).
                let floor = match acknowledged_before {
                    0 => 0,
                    calls if second => (calls - 1) / 2 * 2 + 1,
                    calls => calls,
                };
                assert!(
                    read_upper >= floor,
                    "reader {reader}: shard of writer {writer} at {read_upper}, {acknowledged_before} calls acknowledged"
                );
                if read_upper > 0 {
                    let rows = rows_at(&warm, shard, read_upper - 1).await;
                    assert_eq!(
                        rows,
                        expected_rows(writer, second, read_upper),
                        "reader {reader}: shard {shard} below {read_upper}"
                    );
                }
                reads += 1;
            }
            reads
        }));
    }

    let collector = {
        let factory = Arc::clone(&factory);
        let clock = Arc::clone(&clock);
        let writing = Arc::clone(&writing);
        tokio::spawn(async move {
            let gc = factory.open_handle().await;
            let mut deleted = 0;
            let mut deleted_while_writing = 0;
            let mut pass = 0u64;
            // Passes go on after the writers stop until the log is short.
            loop {
                clock.advance(CONCURRENT_GRACE / 40);
                let stats = gc.gc_log().await.expect("gc pass");
                deleted += stats.entries_deleted;
                let still_writing = writing.load(Ordering::SeqCst);
                if still_writing {
                    deleted_while_writing += stats.entries_deleted;
                }
                pass += 1;
                if !still_writing && (deleted > 0 || pass > 400) {
                    return (deleted, deleted_while_writing);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    for writer in writers {
        writer.await.expect("writer");
    }
    writing.store(false, Ordering::SeqCst);
    for reader in readers {
        assert!(reader.await.expect("reader") > 0);
    }
    let (deleted, deleted_while_writing) = collector.await.expect("gc");
    assert!(deleted > 0, "gc deleted entries");
    println!(
        "concurrent log gc: {deleted} entries deleted, {deleted_while_writing} of them while writing"
    );

    let cold = factory.open_handle().await;
    for (writer, shards) in owned.iter().enumerate() {
        assert_eq!(upper(&cold, shards[0]).await, frontier(CALLS));
        assert_eq!(
            rows_at(&cold, shards[0], CALLS - 1).await,
            expected_rows(writer, false, CALLS)
        );
        assert_eq!(upper(&cold, shards[1]).await, frontier(CALLS - 1));
        assert_eq!(
            rows_at(&cold, shards[1], CALLS - 2).await,
            expected_rows(writer, true, CALLS - 1)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_stays_about_one_grace_period_long_under_a_long_run_of_appends() {
    const APPENDS: u64 = 400;
    // 40 appends per grace period.
    const STEP: Duration = Duration::from_millis(1500);
    let clock = Arc::new(ManualClock::starting_now());
    let Some(factory) = log_factory("s3 log gc long run", &clock).await else {
        return;
    };
    let writer = factory.open_handle().await;
    let shard = open_shards(&writer, 1).await[0];
    for lower in 0..APPENDS {
        append(&writer, shard, lower, &[row(0, lower as i64)]).await;
        clock.advance(STEP);
    }
    writer.wait_for_background_writes().await;
    let left = log_seqs(&factory).await;
    let per_grace = (GRACE.as_millis() / STEP.as_millis()) as usize;
    println!(
        "log objects after {APPENDS} appends: {} with gc (the background pass, every quarter grace period), {APPENDS} without (every entry stays): ratio {:.3}; one grace period is {per_grace} appends",
        left.len(),
        left.len() as f64 / APPENDS as f64
    );
    // Entries younger than the grace period stay, plus those written since
    // the last pass (a quarter grace period), plus the applier's lag.
    assert!(
        left.len() <= per_grace + per_grace / 4 + 20,
        "{} entries left: {left:?}",
        left.len()
    );
    assert_eq!(left.last().copied(), Some(APPENDS));
    let cold = factory.open_handle().await;
    assert_eq!(
        rows_at(&cold, shard, APPENDS - 1).await,
        rows_of(0, 0..APPENDS)
    );
}
