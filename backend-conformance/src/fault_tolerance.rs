//! Faults, through [`FaultyBackend`]: determinate failures never applied,
//! indeterminate ones did, and a caller that retries correctly (the same
//! token after an indeterminate outcome, a re-read after a determinate one)
//! loses and duplicates nothing.

use tidemark_storage_types::WriteFence;
use tidemark_storage_types::{
    BackendError, DeterminateKind, IdempotencyToken, PersistBackend, ShardId, Update, UpperMismatch,
};
use timely::PartialOrder;
use timely::progress::Antichain;

use crate::BackendFactory;
use crate::faults::{FaultRates, FaultyBackend, Operation};
use crate::support::{
    at, expect_unknown_shard, frontiers, frontiers_of, int_row, keyed_row, model_snapshot,
    open_new_shard, sealed, snapshot_of, update,
};

/// How many attempts a retry loop makes before declaring the backend
/// broken. With fault rates well below one, a correct backend needs a few.
const MAX_ATTEMPTS: usize = 200;

/// Seeds of the fault RNGs; fixed so every run injects the same faults.
const SEEDS: [u64; 3] = [0x7ed3_a11c, 0x5eed_0002, 0x5eed_0003];

fn rates(before: f64, after: f64) -> FaultRates {
    FaultRates::new(before, after).expect("the suite's fault rates are probabilities")
}

/// Calls `operation` until it answers, retrying every failure: for reads and
/// idempotent writes (open) a retry is always safe.
async fn retry_until_answered<V, Fut>(what: &str, mut operation: impl FnMut() -> Fut) -> V
where
    Fut: Future<Output = Result<V, BackendError>>,
{
    for _ in 0..MAX_ATTEMPTS {
        match operation().await {
            Ok(value) => return value,
            Err(BackendError::InvalidUsage(usage)) => panic!("{what}: invalid usage: {usage}"),
            Err(_) => continue,
        }
    }
    panic!("{what}: no answer after {MAX_ATTEMPTS} attempts")
}

/// The upper, read until a read succeeds.
async fn read_upper<B: PersistBackend<u64>>(backend: &B, shard: ShardId) -> Antichain<u64> {
    retry_until_answered("frontiers", || backend.frontiers(shard))
        .await
        .upper
}

/// The retry policy a caller of a faulty backend must follow for one logical
/// append. Returns whether the append applied (`Ok`) or lost to another
/// writer (`Err` with the current upper).
///
/// - An indeterminate failure may have applied: retry with the SAME token,
///   so the backend answers success if it did, and applies it at most once.
/// - A determinate failure did not apply: re-read the upper. If it is still
///   the expected one, retry. If it moved, an earlier indeterminate attempt
///   of ours or another writer moved it; the same-token retry tells which.
async fn append_with_retries<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    updates: &[Update<u64>],
    expected_upper: &Antichain<u64>,
    new_upper: &Antichain<u64>,
) -> Result<(), UpperMismatch<u64>> {
    let token = IdempotencyToken::new();
    for _ in 0..MAX_ATTEMPTS {
        let attempt = backend
            .compare_and_append(
                shard,
                updates.to_vec(),
                expected_upper.clone(),
                new_upper.clone(),
                token,
                WriteFence::Unfenced,
            )
            .await;
        match attempt {
            Ok(outcome) => return outcome,
            Err(BackendError::Indeterminate(_)) => continue,
            Err(BackendError::Determinate(_)) => {
                // This attempt did not apply. If the upper is still the
                // expected one, nothing of ours applied; if it moved, an
                // earlier indeterminate attempt of ours or another writer
                // moved it, and the same-token retry answers which (success
                // or a mismatch). Either way the retry is safe.
                let upper = read_upper(backend, shard).await;
                assert!(
                    PartialOrder::less_equal(expected_upper, &upper),
                    "the upper of {shard} moved backward: expected_upper={expected_upper:?} now={upper:?}"
                );
                continue;
            }
            Err(err) => panic!("append to {shard} was invalid: {err}"),
        }
    }
    panic!("append to {shard} got no answer after {MAX_ATTEMPTS} attempts")
}

/// One writer appends 40 times through a handle that fails a fifth of calls
/// before and a fifth after; with the retry policy, the shard ends holding
/// every update exactly once.
pub async fn faulty_appends_with_token_retries_lose_and_duplicate_nothing<F: BackendFactory>(
    factory: &F,
) {
    const APPENDS: u64 = 40;
    let observer = factory.open_handle().await;
    let faulty = FaultyBackend::new(factory.open_handle().await, SEEDS[0])
        .with_rates_for_all(rates(0.2, 0.2));
    let shard = ShardId::new();
    retry_until_answered("open", || faulty.open(shard)).await;

    let mut written = Vec::new();
    for step in 0..APPENDS {
        let updates = vec![
            update(keyed_row(step as i64, "faulty"), step, 1),
            update(int_row(-1), step, 1),
        ];
        let outcome = append_with_retries(&faulty, shard, &updates, &at(step), &at(step + 1)).await;
        assert_eq!(outcome, Ok(()), "the only writer never loses: step {step}");
        written.extend(updates);
    }

    assert_eq!(
        frontiers_of(&observer, shard).await,
        frontiers(at(0), at(APPENDS))
    );
    assert_eq!(
        snapshot_of(&observer, shard, APPENDS - 1).await,
        model_snapshot(&written, APPENDS - 1),
        "every append applied exactly once"
    );
    let counts = faulty.counts(Operation::CompareAndAppend);
    assert!(
        counts.failed_before > 0 && counts.failed_after > 0,
        "the seeded faults must exercise both failure kinds: {counts:?}"
    );
}

/// Three writers race through faulty handles (separate seeds), each making
/// 12 logical appends at whatever the upper is; with the retry policy the
/// shard ends holding exactly the 36 appended rows, once each.
pub async fn racing_faulty_writers_lose_and_duplicate_nothing<F: BackendFactory>(factory: &F) {
    const APPENDS_PER_WRITER: u64 = 12;
    let observer = factory.open_handle().await;
    let shard = open_new_shard(&observer).await;
    let mut tasks = Vec::new();
    for (writer, seed) in SEEDS.into_iter().enumerate() {
        let faulty = FaultyBackend::new(factory.open_handle().await, seed)
            .with_rates_for_all(rates(0.15, 0.15));
        tasks.push(tokio::spawn(async move {
            let mut upper = read_upper(&faulty, shard).await;
            for step in 0..APPENDS_PER_WRITER {
                loop {
                    let lower = *upper.as_option().expect("no writer seals");
                    let updates = vec![update(
                        keyed_row(writer as i64, &format!("append {step}")),
                        lower,
                        1,
                    )];
                    let new_upper = at(lower + 1);
                    match append_with_retries(&faulty, shard, &updates, &upper, &new_upper).await {
                        Ok(()) => {
                            upper = new_upper;
                            break;
                        }
                        Err(mismatch) => upper = mismatch.current,
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("faulty writer panicked");
    }

    let total = APPENDS_PER_WRITER * SEEDS.len() as u64;
    assert_eq!(
        frontiers_of(&observer, shard).await,
        frontiers(at(0), at(total)),
        "each logical append advanced the upper exactly once"
    );
    let mut expected: Vec<_> = (0..SEEDS.len())
        .flat_map(|writer| {
            (0..APPENDS_PER_WRITER)
                .map(move |step| (keyed_row(writer as i64, &format!("append {step}")), 1))
        })
        .collect();
    expected.sort();
    assert_eq!(snapshot_of(&observer, shard, total - 1).await, expected);
}

fn assert_injected_determinate<V: std::fmt::Debug>(result: Result<V, BackendError>, call: &str) {
    match result {
        Err(err @ BackendError::Determinate(_)) => {
            assert_eq!(err.determinate_kind(), Some(DeterminateKind::Unavailable));
            assert!(err.is_determinate());
        }
        other => panic!("{call}: expected an injected determinate failure, got {other:?}"),
    }
}

fn assert_injected_indeterminate<V: std::fmt::Debug>(result: Result<V, BackendError>, call: &str) {
    match result {
        Err(err @ BackendError::Indeterminate(_)) => assert!(!err.is_determinate()),
        other => panic!("{call}: expected an injected indeterminate failure, got {other:?}"),
    }
}

/// A determinate failure (injected before the call) never applied: open,
/// append, downgrade and finalize leave no trace.
pub async fn determinate_faults_never_apply<F: BackendFactory>(factory: &F) {
    let observer = factory.open_handle().await;
    let faulty = FaultyBackend::new(factory.open_handle().await, SEEDS[1])
        .with_rates_for_all(rates(1.0, 0.0));

    let unopened = ShardId::new();
    assert_injected_determinate(faulty.open(unopened).await, "open");
    expect_unknown_shard(observer.frontiers(unopened).await, unopened, "frontiers");

    let shard = open_new_shard(&observer).await;
    let append = faulty
        .compare_and_append(
            shard,
            vec![update(int_row(1), 0, 1)],
            at(0),
            at(2),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await;
    assert_injected_determinate(append, "compare_and_append");
    assert_injected_determinate(
        faulty
            .downgrade_since(shard, &at(1), WriteFence::Unfenced)
            .await,
        "downgrade_since",
    );
    assert_injected_determinate(faulty.finalize(shard).await, "finalize");
    assert_injected_determinate(faulty.snapshot(shard, &0).await, "snapshot");

    assert_eq!(
        frontiers_of(&observer, shard).await,
        frontiers(at(0), at(0))
    );
    let listed = observer.list_shards().await.expect("list_shards");
    assert!(
        listed.contains(&shard),
        "a failed finalize unlisted {shard}"
    );
    assert!(faulty.inner().frontiers(shard).await.is_ok());
    let counts = faulty.total_counts();
    assert_eq!(counts.calls, counts.failed_before, "{counts:?}");
}

/// An indeterminate failure injected after the call did apply: the shard
/// shows the effect, and a same-token retry of the append answers success
/// without applying it twice.
pub async fn indeterminate_faults_after_the_call_did_apply<F: BackendFactory>(factory: &F) {
    let observer = factory.open_handle().await;
    let faulty = FaultyBackend::new(factory.open_handle().await, SEEDS[2])
        .with_rates_for_all(rates(0.0, 1.0));

    let shard = ShardId::new();
    assert_injected_indeterminate(faulty.open(shard).await, "open");
    assert_eq!(
        frontiers_of(&observer, shard).await,
        frontiers(at(0), at(0))
    );

    let token = IdempotencyToken::new();
    let updates = vec![update(int_row(1), 0, 1), update(int_row(2), 1, 2)];
    let append = faulty
        .compare_and_append(
            shard,
            updates.clone(),
            at(0),
            at(2),
            token,
            WriteFence::Unfenced,
        )
        .await;
    assert_injected_indeterminate(append, "compare_and_append");
    assert_eq!(
        frontiers_of(&observer, shard).await,
        frontiers(at(0), at(2))
    );
    let retry = observer
        .compare_and_append(
            shard,
            updates.clone(),
            at(0),
            at(2),
            token,
            WriteFence::Unfenced,
        )
        .await
        .expect("same-token retry");
    assert_eq!(
        retry,
        Ok(()),
        "the retry of an applied append answers success"
    );
    assert_eq!(
        snapshot_of(&observer, shard, 1).await,
        model_snapshot(&updates, 1),
        "the append applied once"
    );

    assert_injected_indeterminate(
        faulty
            .downgrade_since(shard, &at(1), WriteFence::Unfenced)
            .await,
        "downgrade_since",
    );
    assert_eq!(
        frontiers_of(&observer, shard).await,
        frontiers(at(1), at(2))
    );
    assert_injected_indeterminate(faulty.finalize(shard).await, "finalize");
    assert_eq!(
        frontiers_of(&observer, shard).await,
        frontiers(sealed(), sealed())
    );
}

/// The faults depend only on the seed and the calls: two wrappers with the
/// same seed, given the same calls, fail the same calls the same way.
pub async fn fault_injection_is_reproducible_from_the_seed<F: BackendFactory>(factory: &F) {
    async fn outcomes<B: PersistBackend<u64>>(faulty: &FaultyBackend<B>) -> Vec<&'static str> {
        let shard = open_new_shard(faulty.inner()).await;
        let mut outcomes = Vec::new();
        for step in 0..30u64 {
            let result = match step % 3 {
                0 => faulty.frontiers(shard).await.map(|_| ()),
                1 => faulty.usage(shard).await.map(|_| ()),
                _ => faulty.list_shards().await.map(|_| ()),
            };
            outcomes.push(match result {
                Ok(()) => "ok",
                Err(BackendError::Determinate(_)) => "determinate",
                Err(BackendError::Indeterminate(_)) => "indeterminate",
                Err(other) => panic!("unexpected failure: {other}"),
            });
        }
        outcomes
    }
    let make = |backend| FaultyBackend::new(backend, SEEDS[0]).with_rates_for_all(rates(0.3, 0.3));
    let first = make(factory.open_handle().await);
    let second = make(factory.open_handle().await);
    let first_outcomes = outcomes(&first).await;
    assert_eq!(first_outcomes, outcomes(&second).await);
    assert!(first_outcomes.contains(&"determinate") && first_outcomes.contains(&"indeterminate"));
}
