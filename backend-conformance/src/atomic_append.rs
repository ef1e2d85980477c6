//! `compare_and_append_all`: one append over several shards, all or
//! nothing, and never seen in part by any reader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tidemark_storage_types::{
    BackendError, DeterminateKind, EarlierAttempts, IdempotencyToken, InvalidUsage, PersistBackend,
    ShardAppend, ShardId, Update, UpperMismatch, UpperMismatches, WriteFence,
};
use timely::PartialOrder;
use timely::progress::Antichain;

use crate::BackendFactory;
use crate::faults::{FaultRates, FaultyBackend, Operation};
use crate::support::{
    append_ok, at, expect_invalid_usage, frontiers, frontiers_of, keyed_row, model_snapshot,
    open_new_shard, sealed, snapshot_of, update, within_guard,
};

/// How many attempts a retry loop makes before declaring the backend
/// broken. With fault rates well below one, a correct backend needs a few.
const MAX_ATTEMPTS: usize = 200;

/// How many times a call is retried while the backend reports a
/// determinate failure of its own (a serialization conflict inside the
/// service), outside the fault-injection properties.
const DETERMINATE_RETRIES: usize = 100;

/// The seed of the fault property's injected faults; fixed so every run
/// injects the same faults.
const FAULT_SEED: u64 = 0xa70_3c11;

/// One shard's part: `updates` from `expected_upper` to `new_upper`.
pub(crate) fn part(
    shard: ShardId,
    updates: Vec<Update<u64>>,
    expected_upper: Antichain<u64>,
    new_upper: Antichain<u64>,
) -> ShardAppend<u64> {
    ShardAppend {
        shard,
        updates,
        expected_upper,
        new_upper,
    }
}

/// The row call `call` writes to the shard at position `index`.
fn call_row(index: usize, call: u64) -> tidemark_storage_types::Row {
    keyed_row(call as i64, &format!("shard {index}"))
}

/// Runs one call with `token`, retrying only determinate failures the
/// backend reports of itself (nothing applied), and panics on any other
/// error.
async fn append_all_with<B: PersistBackend<u64>>(
    backend: &B,
    appends: Vec<ShardAppend<u64>>,
    token: IdempotencyToken,
    fence: WriteFence,
) -> Result<(), UpperMismatches<u64>> {
    for _ in 0..DETERMINATE_RETRIES {
        match backend
            .compare_and_append_all(appends.clone(), token, fence)
            .await
        {
            Ok(outcome) => return outcome,
            Err(err @ BackendError::Determinate(_))
                if err.determinate_kind() != Some(DeterminateKind::Fenced) =>
            {
                eprintln!("atomic append retries a determinate failure: {err}");
            }
            Err(err) => panic!("compare_and_append_all of {appends:?} failed: {err}"),
        }
    }
    panic!("compare_and_append_all failed determinately {DETERMINATE_RETRIES} times")
}

/// Runs one unfenced call with a fresh token (see [`append_all_with`]).
async fn append_all<B: PersistBackend<u64>>(
    backend: &B,
    appends: Vec<ShardAppend<u64>>,
) -> Result<(), UpperMismatches<u64>> {
    append_all_with(
        backend,
        appends,
        IdempotencyToken::new(),
        WriteFence::Unfenced,
    )
    .await
}

/// Opens `count` fresh shards.
async fn open_shards<B: PersistBackend<u64>>(backend: &B, count: usize) -> Vec<ShardId> {
    let mut shards = Vec::with_capacity(count);
    for _ in 0..count {
        shards.push(open_new_shard(backend).await);
    }
    shards
}

/// A call with one mismatching shard (and one more) writes nothing on any
/// shard, and reports every mismatching shard, in the call's order, with
/// its current upper.
pub async fn append_all_writes_nothing_when_one_shard_mismatches<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let observer = factory.open_handle().await;
    let shards = open_shards(&backend, 4).await;
    // Shards 1 and 3 are ahead of what the call expects.
    append_ok(
        &backend,
        shards[1],
        vec![update(call_row(1, 9), 0, 1)],
        at(0),
        at(3),
    )
    .await;
    append_ok(&backend, shards[3], vec![], at(0), at(5)).await;

    let appends: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(index, shard)| part(*shard, vec![update(call_row(index, 0), 0, 1)], at(0), at(1)))
        .collect();
    let outcome = append_all(&backend, appends).await;
    let mismatch = |current| UpperMismatch {
        expected: at(0),
        current,
        earlier_attempts: EarlierAttempts::NotApplied,
    };
    assert_eq!(
        outcome,
        Err(UpperMismatches {
            mismatches: vec![(shards[1], mismatch(at(3))), (shards[3], mismatch(at(5)))],
        }),
        "every mismatching shard is reported, in the call's order"
    );
    for (shard, upper) in [
        (shards[0], 0),
        (shards[1], 3),
        (shards[2], 0),
        (shards[3], 5),
    ] {
        assert_eq!(
            frontiers_of(&observer, shard).await,
            frontiers(at(0), at(upper)),
            "the call moved no upper: shard={shard}"
        );
    }
    assert_eq!(
        snapshot_of(&observer, shards[1], 2).await,
        vec![(call_row(1, 9), 1)],
        "the call wrote nothing to a mismatching shard"
    );
    for shard in [shards[0], shards[2]] {
        let usage = observer.usage(shard).await.expect("usage");
        assert_eq!(
            usage.updates, 0,
            "the call wrote nothing to matching shard {shard}"
        );
    }
    // With every expectation right, the same parts apply on every shard.
    let appends: Vec<_> = shards
        .iter()
        .zip([0, 3, 0, 5])
        .enumerate()
        .map(|(index, (shard, upper))| {
            part(
                *shard,
                vec![update(call_row(index, 1), upper, 1)],
                at(upper),
                at(upper + 1),
            )
        })
        .collect();
    assert_eq!(append_all(&backend, appends).await, Ok(()));
    for (shard, upper) in shards.iter().zip([0, 3, 0, 5]) {
        assert_eq!(frontiers_of(&observer, *shard).await.upper, at(upper + 1));
    }
}

/// A part that breaks the rules (an update outside its bounds, an unknown
/// shard, an upper regression) refuses the whole call: nothing is written
/// to the other shards.
pub async fn append_all_invalid_part_refuses_the_call<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shards = open_shards(&backend, 2).await;
    let good = part(shards[0], vec![update(call_row(0, 0), 0, 1)], at(0), at(2));
    let cases = [
        (
            part(shards[1], vec![update(call_row(1, 0), 2, 1)], at(0), at(2)),
            "an update at the new upper",
        ),
        (part(shards[1], vec![], at(3), at(1)), "an upper regression"),
        (
            part(ShardId::new(), vec![], at(0), at(1)),
            "an unknown shard",
        ),
    ];
    for (bad, what) in cases {
        let bad_shard = bad.shard;
        let result = backend
            .compare_and_append_all(
                vec![good.clone(), bad],
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await;
        let usage = expect_invalid_usage(result, what);
        let named = match usage {
            InvalidUsage::UpdateOutsideBounds { shard, .. }
            | InvalidUsage::UpperRegression { shard, .. }
            | InvalidUsage::UnknownShard { shard } => shard,
            other => panic!("{what}: unexpected invalid usage {other:?}"),
        };
        assert_eq!(
            named, bad_shard,
            "{what}: the error names the bad part's shard"
        );
        assert_eq!(
            frontiers_of(&backend, shards[0]).await,
            frontiers(at(0), at(0)),
            "{what}: the good part was not written"
        );
    }
    assert_eq!(backend.usage(shards[0]).await.expect("usage").updates, 0);
}

/// Racing reader tasks on separate handles, reading the shards of a stream
/// of calls in every order (frontiers, snapshots, upper waits), never see
/// one shard reflect a call that a shard read after it does not.
pub async fn append_all_is_never_seen_in_part_by_concurrent_readers<F: BackendFactory>(
    factory: &F,
) {
    const SHARDS: usize = 3;
    const CALLS: u64 = 60;
    const READERS: usize = 3;
    let writer = factory.open_handle().await;
    let shards = Arc::new(open_shards(&writer, SHARDS).await);
    let done = Arc::new(AtomicBool::new(false));
    // The writer starts once every reader is reading.
    let reading = Arc::new(tokio::sync::Barrier::new(READERS + 1));

    let mut readers = Vec::new();
    for reader in 0..READERS {
        let handle = factory.open_handle().await;
        let shards = Arc::clone(&shards);
        let done = Arc::clone(&done);
        let reading = Arc::clone(&reading);
        readers.push(tokio::spawn(async move {
            reading.wait().await;
            let mut rounds = 0u64;
            while rounds == 0 || !done.load(Ordering::SeqCst) {
                rounds += 1;
                // Every order of the shards in turn, both directions.
                let mut order: Vec<usize> = (0..SHARDS).collect();
                order.rotate_left((rounds as usize + reader) % SHARDS);
                if rounds % 2 == 1 {
                    order.reverse();
                }
                check_reads_agree(&handle, &shards, &order, rounds).await;
                // A backend whose reads never wait (memory) would otherwise
                // keep this task on its worker and starve the writer.
                tokio::task::yield_now().await;
            }
        }));
    }

    reading.wait().await;
    for call in 0..CALLS {
        let appends = shards
            .iter()
            .enumerate()
            .map(|(index, shard)| {
                part(
                    *shard,
                    vec![update(call_row(index, call), call, 1)],
                    at(call),
                    at(call + 1),
                )
            })
            .collect();
        assert_eq!(append_all(&writer, appends).await, Ok(()), "call {call}");
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        within_guard("reader", reader)
            .await
            .expect("a reader saw part of a call");
    }
    // And once the writer is done, every shard holds every call.
    for (index, shard) in shards.iter().enumerate() {
        let expected: Vec<_> = (0..CALLS)
            .map(|call| update(call_row(index, call), call, 1))
            .collect();
        assert_eq!(
            snapshot_of(&writer, *shard, CALLS - 1).await,
            model_snapshot(&expected, CALLS - 1)
        );
    }
}

/// One round of a reader: reads the shards in `order` and checks that each
/// read reflects at least the calls every earlier read reflected.
async fn check_reads_agree<B: PersistBackend<u64>>(
    backend: &B,
    shards: &[ShardId],
    order: &[usize],
    round: u64,
) {
    // The calls reflected so far: call `k` moved each upper to `k + 1`.
    let mut reflected = 0u64;
    for (step, index) in order.iter().enumerate() {
        let shard = shards[*index];
        let upper = match step % 3 {
            // A wait past what an earlier read saw must return at once with
            // an upper at least that far.
            2 if reflected > 0 => within_guard(
                "wait_for_upper_past",
                backend.wait_for_upper_past(shard, &at(reflected - 1)),
            )
            .await
            .unwrap_or_else(|err| panic!("wait on {shard} failed: {err}")),
            _ => {
                backend
                    .frontiers(shard)
                    .await
                    .unwrap_or_else(|err| panic!("frontiers of {shard} failed: {err}"))
                    .upper
            }
        };
        let seen = *upper.as_option().expect("no call seals");
        assert!(
            seen >= reflected,
            "round {round}: shard {shard} reflects {seen} calls after another shard of the same calls reflected {reflected}"
        );
        if reflected > 0 {
            // A snapshot at the last call an earlier read reflected holds
            // every call up to it.
            let as_of = reflected - 1;
            let rows = backend.snapshot(shard, &as_of).await.unwrap_or_else(|err| {
                panic!("round {round}: snapshot of {shard} at {as_of}, a call another shard reflected, failed: {err}")
            });
            let expected: Vec<_> = (0..reflected)
                .map(|call| update(call_row(*index, call), call, 1))
                .collect();
            assert_eq!(
                rows,
                model_snapshot(&expected, as_of),
                "round {round}: snapshot of {shard} at {as_of}"
            );
        }
        reflected = seen;
    }
}

/// A call retried with the same token after it applied answers success and
/// writes nothing again, on any shard.
pub async fn append_all_retry_with_same_token_applies_once<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let retrier = factory.open_handle().await;
    let shards = open_shards(&backend, 3).await;
    let appends: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(index, shard)| part(*shard, vec![update(call_row(index, 0), 0, 1)], at(0), at(1)))
        .collect();
    let token = IdempotencyToken::new();
    assert_eq!(
        append_all_with(&backend, appends.clone(), token, WriteFence::Unfenced).await,
        Ok(())
    );
    for attempt in 0..2 {
        assert_eq!(
            append_all_with(&retrier, appends.clone(), token, WriteFence::Unfenced).await,
            Ok(()),
            "retry {attempt} of an applied call answers success"
        );
    }
    for (index, shard) in shards.iter().enumerate() {
        assert_eq!(frontiers_of(&backend, *shard).await.upper, at(1));
        assert_eq!(
            snapshot_of(&backend, *shard, 0).await,
            vec![(call_row(index, 0), 1)],
            "the call applied once on shard {shard}"
        );
    }
    // The same parts under another token are another call: a mismatch.
    let outcome = append_all(&backend, appends).await;
    let Err(mismatches) = outcome else {
        panic!("the same parts under a fresh token must mismatch, got {outcome:?}");
    };
    assert_eq!(mismatches.mismatches.len(), 3);
}

/// A call whose fence is below one shard's epoch is refused as `Fenced`
/// and writes nothing anywhere; an applied fenced call raises every shard's
/// epoch, fencing an older writer on each.
pub async fn append_all_stale_fence_on_one_shard_refuses_the_call<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shards = open_shards(&backend, 3).await;
    // Shard 1 has seen a writer with epoch 5.
    let raised = backend
        .downgrade_since(shards[1], &at(0), WriteFence::Epoch(5))
        .await
        .expect("downgrade with epoch 5");
    assert_eq!(raised, at(0));
    let appends: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(index, shard)| part(*shard, vec![update(call_row(index, 0), 0, 1)], at(0), at(1)))
        .collect();
    let refused = backend
        .compare_and_append_all(
            appends.clone(),
            IdempotencyToken::new(),
            WriteFence::Epoch(4),
        )
        .await;
    match refused {
        Err(err) if err.determinate_kind() == Some(DeterminateKind::Fenced) => {}
        other => panic!("a call with epoch 4 after epoch 5 must be fenced, got {other:?}"),
    }
    for shard in &shards {
        assert_eq!(
            frontiers_of(&backend, *shard).await,
            frontiers(at(0), at(0)),
            "the fenced call wrote nothing: shard={shard}"
        );
    }
    assert_eq!(
        append_all_with(
            &backend,
            appends,
            IdempotencyToken::new(),
            WriteFence::Epoch(6)
        )
        .await,
        Ok(())
    );
    // Every shard now records epoch 6: epoch 5 is refused on each.
    for shard in &shards {
        let stale = backend
            .compare_and_append(
                *shard,
                vec![],
                at(1),
                at(2),
                IdempotencyToken::new(),
                WriteFence::Epoch(5),
            )
            .await;
        match stale {
            Err(err) if err.determinate_kind() == Some(DeterminateKind::Fenced) => {}
            other => panic!("epoch 5 after a call with epoch 6 on {shard}: {other:?}"),
        }
    }
}

/// The same shard twice in one call is `DuplicateShardInAppend` naming it,
/// and nothing is written.
pub async fn append_all_duplicate_shard_is_rejected<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shards = open_shards(&backend, 2).await;
    let result = backend
        .compare_and_append_all(
            vec![
                part(shards[0], vec![update(call_row(0, 0), 0, 1)], at(0), at(1)),
                part(shards[1], vec![], at(0), at(1)),
                part(shards[0], vec![update(call_row(0, 1), 1, 1)], at(1), at(2)),
            ],
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await;
    match expect_invalid_usage(result, "a shard named twice") {
        InvalidUsage::DuplicateShardInAppend { shard } => assert_eq!(shard, shards[0]),
        other => panic!("expected DuplicateShardInAppend, got {other:?}"),
    }
    for shard in &shards {
        assert_eq!(
            frontiers_of(&backend, *shard).await,
            frontiers(at(0), at(0))
        );
    }
}

/// An empty call answers success and changes nothing.
pub async fn append_all_empty_call_writes_nothing<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let listed = backend.list_shards().await.expect("list_shards");
    assert_eq!(append_all(&backend, Vec::new()).await, Ok(()));
    assert_eq!(frontiers_of(&backend, shard).await, frontiers(at(0), at(0)));
    assert_eq!(backend.list_shards().await.expect("list_shards"), listed);
}

/// One step of [`append_all_of_one_shard_equals_compare_and_append`]:
/// updates as `(key, time)`, the bounds, and whether it retries the
/// previous step's token.
type OneShardStep = (Vec<(i64, u64)>, Antichain<u64>, Antichain<u64>, bool);

/// A call of one part answers exactly what `compare_and_append` answers for
/// the same arguments: success, a mismatch (as one entry), a sealing
/// append, a retry, the same errors.
pub async fn append_all_of_one_shard_equals_compare_and_append<F: BackendFactory>(factory: &F) {
    let backend = factory.open_handle().await;
    let single = open_new_shard(&backend).await;
    let all = open_new_shard(&backend).await;
    let mut tokens = (IdempotencyToken::new(), IdempotencyToken::new());
    // (updates as (key, time), expected, new, retry of the previous step)
    let steps: Vec<OneShardStep> = vec![
        (vec![(1, 0), (2, 1)], at(0), at(2), false),
        (vec![(1, 0), (2, 1)], at(0), at(2), true),
        (vec![(3, 2)], at(0), at(3), false),
        (vec![(3, 5)], at(2), at(4), false),
        (vec![], at(4), at(2), false),
        (vec![(4, 2), (5, 3)], at(2), at(4), false),
        (vec![(6, 1_000)], at(4), sealed(), false),
        (vec![], sealed(), sealed(), false),
    ];
    for (step, (updates, expected_upper, new_upper, retry)) in steps.into_iter().enumerate() {
        let updates: Vec<_> = updates
            .into_iter()
            .map(|(key, time)| update(keyed_row(key, "one"), time, 1))
            .collect();
        if !retry {
            tokens = (IdempotencyToken::new(), IdempotencyToken::new());
        }
        let from_single = backend
            .compare_and_append(
                single,
                updates.clone(),
                expected_upper.clone(),
                new_upper.clone(),
                tokens.0,
                WriteFence::Unfenced,
            )
            .await;
        let from_all = backend
            .compare_and_append_all(
                vec![part(all, updates, expected_upper, new_upper)],
                tokens.1,
                WriteFence::Unfenced,
            )
            .await;
        match (from_single, from_all) {
            (Ok(Ok(())), Ok(Ok(()))) => {}
            (Ok(Err(mismatch)), Ok(Err(mismatches))) => assert_eq!(
                mismatches.mismatches,
                vec![(all, mismatch)],
                "step {step}: the same mismatch"
            ),
            (Err(BackendError::InvalidUsage(one)), Err(BackendError::InvalidUsage(other))) => {
                assert_eq!(
                    std::mem::discriminant(&one),
                    std::mem::discriminant(&other),
                    "step {step}: the same invalid usage: {one} / {other}"
                );
            }
            (one, other) => panic!(
                "step {step}: compare_and_append gave {one:?}, the call of one part {other:?}"
            ),
        }
        assert_eq!(
            frontiers_of(&backend, single).await,
            frontiers_of(&backend, all).await,
            "step {step}: the same frontiers"
        );
    }
    assert_eq!(
        backend.usage(single).await.expect("usage").updates,
        backend.usage(all).await.expect("usage").updates,
    );
}

/// Two writers race calls that share one shard (each with a shard of its
/// own too), each call expecting the uppers it last saw: of each round's
/// racing calls exactly one applies, on all of its shards.
pub async fn append_all_racing_calls_on_a_shared_shard_exactly_one_wins<F: BackendFactory>(
    factory: &F,
) {
    const ROUNDS: u64 = 30;
    let setup = factory.open_handle().await;
    let shared = open_new_shard(&setup).await;
    let own = [open_new_shard(&setup).await, open_new_shard(&setup).await];
    let mut wins = [0u64; 2];
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for (writer, own_shard) in own.iter().enumerate() {
            let handle = factory.open_handle().await;
            let barrier = Arc::clone(&barrier);
            let own_shard = *own_shard;
            let own_upper = wins[writer];
            tasks.push(tokio::spawn(async move {
                let appends = vec![
                    part(
                        shared,
                        vec![update(call_row(writer, round), round, 1)],
                        at(round),
                        at(round + 1),
                    ),
                    part(
                        own_shard,
                        vec![update(call_row(writer, round), own_upper, 1)],
                        at(own_upper),
                        at(own_upper + 1),
                    ),
                ];
                barrier.wait().await;
                append_all(&handle, appends).await
            }));
        }
        let mut winners = Vec::new();
        for (writer, task) in tasks.into_iter().enumerate() {
            match task.await.expect("racing writer panicked") {
                Ok(()) => winners.push(writer),
                Err(mismatches) => assert_eq!(
                    mismatches.mismatches,
                    vec![(
                        shared,
                        UpperMismatch {
                            expected: at(round),
                            current: at(round + 1),
                            earlier_attempts: EarlierAttempts::NotApplied,
                        }
                    )],
                    "round {round}: the loser mismatches on the shared shard only"
                ),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners={winners:?}");
        wins[winners[0]] += 1;
    }
    assert_eq!(frontiers_of(&setup, shared).await.upper, at(ROUNDS));
    for (writer, own_shard) in own.iter().enumerate() {
        assert_eq!(
            frontiers_of(&setup, *own_shard).await.upper,
            at(wins[writer]),
            "writer {writer}'s own shard moved once per win"
        );
    }
}

/// One writer makes 30 calls over three shards through a handle that fails
/// calls before, by timing out, and after; retrying with each call's token
/// (and re-reading after a determinate failure), every shard ends holding
/// every call's update exactly once.
pub async fn append_all_faulty_calls_with_token_retries_apply_once<F: BackendFactory>(factory: &F) {
    const CALLS: u64 = 30;
    const SHARDS: usize = 3;
    let observer = factory.open_handle().await;
    let shards = open_shards(&observer, SHARDS).await;
    let rates = FaultRates::new(0.2, 0.2)
        .and_then(|rates| rates.with_timeout(0.1))
        .expect("the suite's fault rates are probabilities");
    let faulty =
        FaultyBackend::new(factory.open_handle().await, FAULT_SEED).with_rates_for_all(rates);
    for call in 0..CALLS {
        let appends: Vec<_> = shards
            .iter()
            .enumerate()
            .map(|(index, shard)| {
                part(
                    *shard,
                    vec![update(call_row(index, call), call, 1)],
                    at(call),
                    at(call + 1),
                )
            })
            .collect();
        let token = IdempotencyToken::new();
        let mut answered = None;
        for _ in 0..MAX_ATTEMPTS {
            match faulty
                .compare_and_append_all(appends.clone(), token, WriteFence::Unfenced)
                .await
            {
                Ok(outcome) => {
                    answered = Some(outcome);
                    break;
                }
                // Maybe applied: retry with the same token, which answers
                // success if it did.
                Err(BackendError::Indeterminate(_)) => {}
                // Did not apply: the uppers never moved backward, and the
                // same-token retry is safe whatever an earlier attempt did.
                Err(BackendError::Determinate(_)) => {
                    for shard in &shards {
                        let upper = frontiers_of(&observer, *shard).await.upper;
                        assert!(PartialOrder::less_equal(&at(call), &upper));
                    }
                }
                Err(err) => panic!("call {call} was invalid: {err}"),
            }
        }
        assert_eq!(
            answered,
            Some(Ok(())),
            "call {call}: the only writer's call applies once resolved"
        );
    }
    for (index, shard) in shards.iter().enumerate() {
        assert_eq!(
            frontiers_of(&observer, *shard).await,
            frontiers(at(0), at(CALLS))
        );
        let expected: Vec<_> = (0..CALLS)
            .map(|call| update(call_row(index, call), call, 1))
            .collect();
        assert_eq!(
            snapshot_of(&observer, *shard, CALLS - 1).await,
            model_snapshot(&expected, CALLS - 1),
            "every call applied exactly once on shard {shard}"
        );
    }
    let counts = faulty.counts(Operation::CompareAndAppendAll);
    assert!(
        counts.failed_before > 0 && counts.failed_after > 0 && counts.timed_out > 0,
        "the seeded faults must exercise every failure kind: {counts:?}"
    );
}
