//! Multi-shard appends on S3 (`compare_and_append_all`): all or nothing,
//! under racing handles, readers and crashes at every step of the protocol.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::calls::{frontier, open_shards, part, row, upper};
use support::{S3Factory, make_factory, raw_client, test_endpoint};
use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_s3::{AtomicAppendStop, S3Backend};
use tidemark_storage_types::{
    BackendError, Datum, DeterminateKind, Diff, IdempotencyToken, InvalidUsage, PersistBackend,
    Row, ShardAppend, ShardId, Update, UpperMismatches, WriteFence,
};
use timely::progress::Antichain;

/// A short wait for undecided intents, so recovery after a simulated crash
/// is quick.
const INTENT_TIMEOUT: Duration = Duration::from_millis(50);

async fn factory(test_name: &str) -> Option<S3Factory> {
    let mut factory = make_factory(test_name).await?;
    factory.config = factory.config.with_intent_timeout(INTENT_TIMEOUT);
    Some(factory)
}

async fn call(
    backend: &S3Backend,
    appends: Vec<ShardAppend<u64>>,
    token: IdempotencyToken,
    fence: WriteFence,
) -> Result<Result<(), UpperMismatches<u64>>, BackendError> {
    backend.compare_and_append_all(appends, token, fence).await
}

fn time_of(upper: &Antichain<u64>) -> u64 {
    *upper.as_option().expect("not sealed")
}

/// The shard's contents just below its upper (empty at upper 0).
async fn contents(backend: &S3Backend, shard: ShardId) -> Vec<(Row, Diff)> {
    let upper = time_of(&upper(backend, shard).await);
    if upper == 0 {
        return Vec::new();
    }
    backend
        .snapshot(shard, &(upper - 1))
        .await
        .expect("snapshot")
}

fn once_each(rows: &[Row]) -> Vec<(Row, Diff)> {
    let mut rows: Vec<(Row, Diff)> = rows.iter().map(|row| (row.clone(), 1)).collect();
    rows.sort();
    rows
}

/// Rows big enough that a batch of them is written as part objects, not
/// inline.
fn large_rows(writer: i64) -> Vec<Row> {
    (0..300)
        .map(|seq| {
            Row::pack([
                Datum::Int64(writer),
                Datum::Int64(seq),
                Datum::String("padding padding padding padding"),
            ])
        })
        .collect()
}

#[tokio::test]
async fn a_call_applies_to_every_shard_and_other_handles_see_it() {
    let Some(factory) = factory("a_call_applies_to_every_shard_and_other_handles_see_it").await
    else {
        return;
    };
    let writer = factory.open_handle().await;
    let reader = factory.open_handle().await;
    let shards = open_shards(&writer, 3).await;
    let rows: Vec<Vec<Row>> = (0..3)
        .map(|shard| vec![row(shard, 0), row(shard, 1)])
        .collect();
    let appends = shards
        .iter()
        .zip(&rows)
        .map(|(&shard, rows)| part(shard, 0, 2, rows))
        .collect();
    call(
        &writer,
        appends,
        IdempotencyToken::new(),
        WriteFence::Unfenced,
    )
    .await
    .expect("request")
    .expect("uppers match");
    // Before and after the intents are rolled forward.
    for settled in [false, true] {
        if settled {
            writer.wait_for_background_writes().await;
        }
        for (shard, rows) in shards.iter().zip(&rows) {
            assert_eq!(upper(&reader, *shard).await, frontier(2));
            assert_eq!(contents(&reader, *shard).await, once_each(rows));
        }
    }
    // Single-shard appends continue from there, on either handle.
    writer
        .compare_and_append(
            shards[0],
            vec![Update::new(row(9, 9), 2, 1)],
            frontier(2),
            frontier(3),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    reader
        .compare_and_append(
            shards[1],
            Vec::new(),
            frontier(2),
            frontier(4),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(upper(&writer, shards[0]).await, frontier(3));
    assert_eq!(upper(&writer, shards[1]).await, frontier(4));
}

#[tokio::test]
async fn a_mismatch_on_one_shard_writes_nothing_anywhere() {
    let Some(factory) = factory("a_mismatch_on_one_shard_writes_nothing_anywhere").await else {
        return;
    };
    let writer = factory.open_handle().await;
    let other = factory.open_handle().await;
    let shards = open_shards(&writer, 3).await;
    // This handle's cached states say upper 0 everywhere; another handle
    // moves the middle shard, so the call writes intents before it learns.
    other
        .compare_and_append(
            shards[1],
            vec![Update::new(row(7, 7), 0, 1)],
            frontier(0),
            frontier(5),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    let appends = |lower: u64| {
        shards
            .iter()
            .map(|&shard| part(shard, lower, lower + 1, &[row(1, lower as i64)]))
            .collect::<Vec<_>>()
    };
    let mismatches = call(
        &writer,
        appends(0),
        IdempotencyToken::new(),
        WriteFence::Unfenced,
    )
    .await
    .expect("request")
    .expect_err("the middle shard mismatches");
    assert_eq!(mismatches.mismatches.len(), 1, "{mismatches:?}");
    let (shard, mismatch) = &mismatches.mismatches[0];
    assert_eq!(*shard, shards[1]);
    assert_eq!(mismatch.expected, frontier(0));
    assert_eq!(mismatch.current, frontier(5));
    writer.wait_for_background_writes().await;
    for &shard in [shards[0], shards[2]].iter() {
        assert_eq!(upper(&other, shard).await, frontier(0), "nothing written");
    }
    assert_eq!(contents(&other, shards[1]).await, once_each(&[row(7, 7)]));

    // Two mismatches are both reported, in the call's order.
    other
        .compare_and_append(
            shards[2],
            Vec::new(),
            frontier(0),
            frontier(3),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    let mismatches = call(
        &writer,
        appends(0),
        IdempotencyToken::new(),
        WriteFence::Unfenced,
    )
    .await
    .unwrap()
    .unwrap_err();
    let reported: Vec<(ShardId, Antichain<u64>)> = mismatches
        .mismatches
        .iter()
        .map(|(shard, mismatch)| (*shard, mismatch.current.clone()))
        .collect();
    assert_eq!(
        reported,
        vec![(shards[1], frontier(5)), (shards[2], frontier(3))]
    );
    // The untouched shard takes a write at its upper, from a fresh handle,
    // without waiting for anything.
    let fresh = factory.open_handle().await;
    fresh
        .compare_and_append(
            shards[0],
            Vec::new(),
            frontier(0),
            frontier(1),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .expect("shard 0 is still at 0");
}

#[tokio::test]
async fn invalid_parts_refuse_the_whole_call() {
    let Some(factory) = factory("invalid_parts_refuse_the_whole_call").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shards = open_shards(&backend, 2).await;
    let token = IdempotencyToken::new();

    call(&backend, Vec::new(), token, WriteFence::Unfenced)
        .await
        .expect("an empty call")
        .expect("writes nothing and succeeds");

    let twice = vec![
        part(shards[0], 0, 1, &[row(0, 0)]),
        part(shards[1], 0, 1, &[row(0, 1)]),
        part(shards[0], 0, 1, &[row(0, 2)]),
    ];
    let err = call(&backend, twice, token, WriteFence::Unfenced)
        .await
        .unwrap_err();
    match &err {
        BackendError::InvalidUsage(usage @ InvalidUsage::DuplicateShardInAppend { shard }) => {
            assert_eq!(*shard, shards[0]);
            assert_eq!(
                usage.to_string(),
                format!(
                    "shard {} appears more than once in one atomic append",
                    shards[0]
                )
            );
        }
        other => panic!("expected a duplicate shard, got {other:?}"),
    }

    // An update outside its part's bounds.
    let mut outside = part(shards[1], 0, 1, &[row(0, 1)]);
    outside.updates.push(Update::new(row(0, 2), 1, 1));
    let err = call(
        &backend,
        vec![part(shards[0], 0, 1, &[row(0, 0)]), outside],
        token,
        WriteFence::Unfenced,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::InvalidUsage(InvalidUsage::UpdateOutsideBounds { shard, .. }) if shard == shards[1]
        ),
        "{err:?}"
    );

    // A shard that was never opened.
    let unknown = ShardId::new();
    let err = call(
        &backend,
        vec![
            part(shards[0], 0, 1, &[row(0, 0)]),
            part(unknown, 0, 1, &[]),
        ],
        token,
        WriteFence::Unfenced,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::InvalidUsage(InvalidUsage::UnknownShard { shard }) if shard == unknown
        ),
        "{err:?}"
    );

    backend.wait_for_background_writes().await;
    for &shard in &shards {
        assert_eq!(upper(&backend, shard).await, frontier(0), "nothing written");
    }
}

#[tokio::test]
async fn a_one_shard_call_is_one_compare_and_append() {
    let Some(factory) = factory("a_one_shard_call_is_one_compare_and_append").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shards = open_shards(&backend, 1).await;
    let shard = shards[0];
    // Warm the cache as an append path would.
    upper(&backend, shard).await;
    let before = backend.object_puts();
    call(
        &backend,
        vec![part(shard, 0, 1, &[row(0, 0)])],
        IdempotencyToken::new(),
        WriteFence::Unfenced,
    )
    .await
    .unwrap()
    .unwrap();
    backend.wait_for_background_writes().await;
    let after = backend.object_puts();
    assert_eq!(after.conditional - before.conditional, 1, "one state PUT");
    assert_eq!(after.unconditional, before.unconditional);

    let mismatches = call(
        &backend,
        vec![part(shard, 0, 2, &[row(0, 1)])],
        IdempotencyToken::new(),
        WriteFence::Unfenced,
    )
    .await
    .unwrap()
    .unwrap_err();
    let single = backend
        .compare_and_append(
            shard,
            vec![Update::new(row(0, 1), 0, 1)],
            frontier(0),
            frontier(2),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(mismatches.mismatches, vec![(shard, single)]);
}

#[tokio::test]
async fn a_three_shard_call_costs_seven_conditional_puts() {
    let Some(factory) = factory("a_three_shard_call_costs_seven_conditional_puts").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shards = open_shards(&backend, 3).await;
    for &shard in &shards {
        upper(&backend, shard).await;
    }
    for round in 0..3u64 {
        let before = backend.object_puts();
        let appends = shards
            .iter()
            .map(|&shard| part(shard, round, round + 1, &[row(0, round as i64)]))
            .collect();
        call(
            &backend,
            appends,
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
        backend.wait_for_background_writes().await;
        let after = backend.object_puts();
        // Three intents, the record, three roll-forwards.
        assert_eq!(after.conditional - before.conditional, 7, "round {round}");
        assert_eq!(after.unconditional, before.unconditional, "round {round}");
    }
}

#[tokio::test]
async fn a_fence_on_one_shard_refuses_the_call() {
    let Some(factory) = factory("a_fence_on_one_shard_refuses_the_call").await else {
        return;
    };
    let backend = factory.open_handle().await;
    let shards = open_shards(&backend, 2).await;
    backend
        .downgrade_since(shards[1], &frontier(0), WriteFence::Epoch(5))
        .await
        .unwrap();
    let appends = || {
        vec![
            part(shards[0], 0, 1, &[row(0, 0)]),
            part(shards[1], 0, 1, &[row(1, 0)]),
        ]
    };
    let err = call(
        &backend,
        appends(),
        IdempotencyToken::new(),
        WriteFence::Epoch(3),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Fenced),
        "{err}"
    );
    backend.wait_for_background_writes().await;
    assert_eq!(
        upper(&backend, shards[0]).await,
        frontier(0),
        "nothing written"
    );
    assert_eq!(
        upper(&backend, shards[1]).await,
        frontier(0),
        "nothing written"
    );

    call(
        &backend,
        appends(),
        IdempotencyToken::new(),
        WriteFence::Epoch(5),
    )
    .await
    .unwrap()
    .unwrap();
    // The applied call raised the first shard's epoch too.
    let err = backend
        .compare_and_append(
            shards[0],
            Vec::new(),
            frontier(1),
            frontier(2),
            IdempotencyToken::new(),
            WriteFence::Epoch(4),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.determinate_kind(),
        Some(DeterminateKind::Fenced),
        "{err}"
    );
}

/// What one writer of the race does: `rounds` successful calls on its
/// shards, each adding a row of its own at each shard's upper.
async fn race(
    backend: S3Backend,
    writer: i64,
    shards: Vec<ShardId>,
    rounds: i64,
) -> Vec<(ShardId, Row)> {
    let mut written = Vec::new();
    let mut seq = 0;
    while seq < rounds {
        let mut appends = Vec::new();
        for &shard in &shards {
            let lower = time_of(&upper(&backend, shard).await);
            appends.push(part(shard, lower, lower + 1, &[row(writer, seq)]));
        }
        let outcome = if appends.len() == 1 {
            let append = appends.pop().expect("one");
            backend
                .compare_and_append(
                    append.shard,
                    append.updates,
                    append.expected_upper,
                    append.new_upper,
                    IdempotencyToken::new(),
                    WriteFence::Unfenced,
                )
                .await
                .map(|outcome| outcome.map_err(|_| ()))
        } else {
            call(
                &backend,
                appends,
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .map(|outcome| outcome.map_err(|_| ()))
        };
        match outcome {
            Ok(Ok(())) => {
                written.extend(shards.iter().map(|&shard| (shard, row(writer, seq))));
                seq += 1;
            }
            Ok(Err(())) => {}
            Err(err) if err.determinate_kind() == Some(DeterminateKind::Conflict) => {}
            Err(err) => panic!("writer {writer}: {err}"),
        }
    }
    written
}

#[tokio::test]
async fn racing_handles_on_overlapping_shards_lose_and_duplicate_nothing() {
    let Some(factory) =
        factory("racing_handles_on_overlapping_shards_lose_and_duplicate_nothing").await
    else {
        return;
    };
    let setup = factory.open_handle().await;
    let shards = open_shards(&setup, 3).await;
    let plans = [
        vec![shards[0], shards[1]],
        vec![shards[1], shards[2]],
        vec![shards[0], shards[1], shards[2]],
        vec![shards[1]],
        vec![shards[2]],
    ];
    let mut tasks = Vec::new();
    for (writer, plan) in plans.iter().enumerate() {
        let backend = factory.open_handle().await;
        tasks.push(tokio::spawn(race(backend, writer as i64, plan.clone(), 4)));
    }
    let mut expected: BTreeMap<ShardId, Vec<Row>> = BTreeMap::new();
    for task in tasks {
        for (shard, row) in task.await.expect("writer task") {
            expected.entry(shard).or_default().push(row);
        }
    }
    let reader = factory.open_handle().await;
    for &shard in &shards {
        let rows = &expected[&shard];
        // Every successful call moved each of its shards' upper by one.
        assert_eq!(upper(&reader, shard).await, frontier(rows.len() as u64));
        assert_eq!(contents(&reader, shard).await, once_each(rows), "{shard}");
    }
}

#[tokio::test]
async fn readers_never_see_part_of_a_call() {
    let Some(factory) = factory("readers_never_see_part_of_a_call").await else {
        return;
    };
    let writer = factory.open_handle().await;
    let reader = factory.open_handle().await;
    let shards = open_shards(&writer, 2).await;
    let (a, b) = (shards[0], shards[1]);
    let calls = 12u64;
    let writing = tokio::spawn({
        let writer = writer.clone();
        async move {
            for time in 0..calls {
                let rows = [row(0, time as i64)];
                call(
                    &writer,
                    vec![
                        part(a, time, time + 1, &rows),
                        part(b, time, time + 1, &rows),
                    ],
                    IdempotencyToken::new(),
                    WriteFence::Unfenced,
                )
                .await
                .unwrap()
                .unwrap();
            }
        }
    });
    let mut reads = 0;
    loop {
        let done = writing.is_finished();
        // Every call moves both uppers alike: whichever shard is read
        // second is at least as far along as the first.
        let first_a = upper(&reader, a).await;
        let then_b = upper(&reader, b).await;
        assert!(
            timely::PartialOrder::less_equal(&first_a, &then_b),
            "a={first_a:?} then b={then_b:?}"
        );
        let first_b = upper(&reader, b).await;
        let then_a = upper(&reader, a).await;
        assert!(
            timely::PartialOrder::less_equal(&first_b, &then_a),
            "b={first_b:?} then a={then_a:?}"
        );
        // The same contents at the same time on both.
        let time = time_of(&first_b);
        if time > 0 {
            let of_a = reader.snapshot(a, &(time - 1)).await.unwrap();
            let of_b = reader.snapshot(b, &(time - 1)).await.unwrap();
            assert_eq!(of_a, of_b);
            assert_eq!(of_a.len() as u64, time);
            let fetched_b = reader.fetch(b, &frontier(0), &first_b).await.unwrap();
            assert_eq!(fetched_b.len() as u64, time);
        }
        reads += 1;
        if done {
            break;
        }
    }
    writing.await.unwrap();
    assert!(reads >= 1);
    assert_eq!(upper(&reader, a).await, frontier(calls));
    assert_eq!(
        reader
            .wait_for_upper_past(b, &frontier(calls - 1))
            .await
            .unwrap(),
        frontier(calls)
    );
}

/// Every step the protocol can stop after, and whether the call applied.
const STOPS: [(AtomicAppendStop, bool); 7] = [
    (AtomicAppendStop::AfterIntents(0), false),
    (AtomicAppendStop::AfterIntents(1), false),
    (AtomicAppendStop::AfterIntents(2), false),
    (AtomicAppendStop::AfterIntents(3), false),
    (AtomicAppendStop::AfterCommit, true),
    (AtomicAppendStop::AfterRollForward(1), true),
    (AtomicAppendStop::AfterRollForward(3), true),
];

/// The call of the crash tests: a large batch on the first shard (part
/// objects), small ones inline on the others.
fn crash_call(shards: &[ShardId]) -> (Vec<ShardAppend<u64>>, Vec<Vec<Row>>) {
    let rows = vec![large_rows(0), vec![row(1, 0)], vec![row(2, 0), row(2, 1)]];
    let appends = shards
        .iter()
        .zip(&rows)
        .map(|(&shard, rows)| part(shard, 0, 1, rows))
        .collect();
    (appends, rows)
}

#[tokio::test]
async fn a_crash_after_any_step_recovers_to_all_or_nothing() {
    let Some(factory) = factory("a_crash_after_any_step_recovers_to_all_or_nothing").await else {
        return;
    };
    for (stop, applied) in STOPS {
        let crashing = factory.open_handle().await;
        let shards = open_shards(&crashing, 3).await;
        let (appends, rows) = crash_call(&shards);
        crashing.stop_atomic_appends_at(Some(stop));
        let err = call(
            &crashing,
            appends,
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .expect_err("stopped");
        assert!(!err.is_determinate(), "{stop:?}: {err}");
        drop(crashing);

        // A new process: readers see all or nothing.
        let recovered = factory.open_handle().await;
        for (shard, rows) in shards.iter().zip(&rows) {
            let expected_upper = if applied { frontier(1) } else { frontier(0) };
            assert_eq!(upper(&recovered, *shard).await, expected_upper, "{stop:?}");
            let expected = if applied { once_each(rows) } else { Vec::new() };
            assert_eq!(contents(&recovered, *shard).await, expected, "{stop:?}");
        }
        // Writers go on from there (deciding what the crash left undecided).
        let lower = u64::from(applied);
        for (index, &shard) in shards.iter().enumerate() {
            recovered
                .compare_and_append(
                    shard,
                    vec![Update::new(row(5, index as i64), lower, 1)],
                    frontier(lower),
                    frontier(lower + 1),
                    IdempotencyToken::new(),
                    WriteFence::Unfenced,
                )
                .await
                .unwrap()
                .unwrap_or_else(|mismatch| panic!("{stop:?}: {mismatch}"));
        }
        let reader = factory.open_handle().await;
        for (index, (shard, rows)) in shards.iter().zip(&rows).enumerate() {
            let mut expected = if applied { rows.clone() } else { Vec::new() };
            expected.push(row(5, index as i64));
            assert_eq!(
                contents(&reader, *shard).await,
                once_each(&expected),
                "{stop:?}"
            );
        }
    }
}

#[tokio::test]
async fn an_undecided_intent_is_stored_in_a_newer_format() {
    let Some(factory) = factory("an_undecided_intent_is_stored_in_a_newer_format").await else {
        return;
    };
    let Some(endpoint) = test_endpoint("an_undecided_intent_is_stored_in_a_newer_format") else {
        return;
    };
    let crashing = factory.open_handle().await;
    let shards = open_shards(&crashing, 3).await;
    let (appends, _) = crash_call(&shards);
    crashing.stop_atomic_appends_at(Some(AtomicAppendStop::AfterIntents(3)));
    call(
        &crashing,
        appends,
        IdempotencyToken::new(),
        WriteFence::Unfenced,
    )
    .await
    .expect_err("stopped");
    for &shard in &shards {
        let state = raw_state(&endpoint, &crashing, shard).await;
        assert_eq!(state["format"], 4, "{state}");
        assert!(state["pending"].is_object(), "{state}");
    }
    // A reader leaves an undecided intent in place; a writer decides it.
    let other = factory.open_handle().await;
    assert_eq!(upper(&other, shards[0]).await, frontier(0));
    assert!(raw_state(&endpoint, &other, shards[0]).await["pending"].is_object());
    PersistBackend::<u64>::downgrade_since(&other, shards[0], &frontier(0), WriteFence::Unfenced)
        .await
        .unwrap();
    let state = raw_state(&endpoint, &other, shards[0]).await;
    assert_eq!(state["format"], 6, "{state}");
    assert!(state.get("pending").is_none(), "{state}");
}

#[tokio::test]
async fn a_retry_with_the_token_after_an_indeterminate_outcome_applies_once() {
    let Some(factory) =
        factory("a_retry_with_the_token_after_an_indeterminate_outcome_applies_once").await
    else {
        return;
    };
    for (stop, _) in STOPS {
        let crashing = factory.open_handle().await;
        let shards = open_shards(&crashing, 3).await;
        let (appends, rows) = crash_call(&shards);
        let token = IdempotencyToken::new();
        crashing.stop_atomic_appends_at(Some(stop));
        call(&crashing, appends.clone(), token, WriteFence::Unfenced)
            .await
            .expect_err("stopped");
        // The caller retries on a new handle with the same token, twice.
        let retrying = factory.open_handle().await;
        for attempt in 0..2 {
            call(&retrying, appends.clone(), token, WriteFence::Unfenced)
                .await
                .unwrap_or_else(|err| panic!("{stop:?} attempt {attempt}: {err}"))
                .unwrap_or_else(|mismatches| panic!("{stop:?} attempt {attempt}: {mismatches:?}"));
        }
        retrying.wait_for_background_writes().await;
        let reader = factory.open_handle().await;
        for (shard, rows) in shards.iter().zip(&rows) {
            assert_eq!(upper(&reader, *shard).await, frontier(1), "{stop:?}");
            assert_eq!(contents(&reader, *shard).await, once_each(rows), "{stop:?}");
        }
    }
}

/// A shard's state object as JSON, read directly from the bucket.
async fn raw_state(endpoint: &str, backend: &S3Backend, shard: ShardId) -> serde_json::Value {
    let key = format!(
        "{}state",
        backend.parts_prefix(shard).trim_end_matches("batches/")
    );
    let object = raw_client(endpoint)
        .get_object()
        .bucket(backend.config().bucket())
        .key(key)
        .send()
        .await
        .expect("get state");
    let bytes = object.body.collect().await.unwrap().into_bytes();
    // A plain state is stored binary: read its JSON form.
    let json =
        tidemark_backend_s3::stored_state_as_json("state", &bytes).expect("a readable state");
    serde_json::from_slice(&json).expect("state is JSON")
}
