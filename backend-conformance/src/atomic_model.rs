//! A proptest over random `compare_and_append_all` calls (over random
//! subsets of a case's shards, in random order, each part matching, stale
//! or ahead), single-shard appends and reads, through two handles, each
//! checked against a reference model of every shard.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestCaseResult, TestRunner};
use tidemark_storage_types::sync::lock;
use tidemark_storage_types::{
    BackendError, Diff, EarlierAttempts, IdempotencyToken, PersistBackend, Row, ShardAppend,
    ShardId, Update, UpperMismatch, UpperMismatches, WriteFence,
};

use crate::BackendFactory;
use crate::support::{at, int_row, model_snapshot};

/// The fewest cases the property runs (more if `PROPTEST_CASES` asks).
const MIN_CASES: u32 = 128;

/// How many shards each case has.
const SHARDS: usize = 3;

/// Where a part's expected upper is, relative to its shard's upper.
#[derive(Clone, Debug)]
enum Expectation {
    /// The current upper.
    Current,
    /// This far behind it (a mismatch unless that clamps to the upper).
    Behind(u64),
    /// This far ahead of it: a mismatch.
    Ahead(u64),
}

/// One part of a random call.
#[derive(Clone, Debug)]
struct PartSpec {
    expectation: Expectation,
    advance: u64,
    /// `(row key, time offset into the bounds, diff)`.
    updates: Vec<(i64, u64, Diff)>,
}

/// One operation of a case.
#[derive(Clone, Debug)]
enum Step {
    /// A call over the shards at these positions, in this order.
    AppendAll { parts: Vec<(usize, PartSpec)> },
    /// A single-shard append at the shard's upper, so uppers drift apart.
    Append { shard: usize, advance: u64 },
    /// A snapshot of a shard just below its upper.
    Snapshot { shard: usize, back: u64 },
    /// The frontiers of every shard.
    Frontiers,
}

fn part_strategy() -> impl Strategy<Value = PartSpec> {
    let expectation = prop_oneof![
        8 => Just(Expectation::Current),
        1 => (1u64..3).prop_map(Expectation::Behind),
        1 => (1u64..3).prop_map(Expectation::Ahead),
    ];
    (
        expectation,
        1u64..4,
        prop::collection::vec((0i64..5, 0u64..4, -2i64..=2), 0..4),
    )
        .prop_map(|(expectation, advance, updates)| PartSpec {
            expectation,
            advance,
            updates,
        })
}

fn step_strategy() -> impl Strategy<Value = (Step, bool)> {
    let shards: Vec<usize> = (0..SHARDS).collect();
    let call = (
        Just(shards).prop_shuffle(),
        0..=SHARDS,
        prop::collection::vec(part_strategy(), SHARDS),
    )
        .prop_map(|(order, count, specs)| Step::AppendAll {
            parts: order.into_iter().take(count).zip(specs).collect(),
        });
    let step = prop_oneof![
        8 => call,
        1 => (0..SHARDS, 1u64..3).prop_map(|(shard, advance)| Step::Append { shard, advance }),
        3 => (0..SHARDS, 1u64..4).prop_map(|(shard, back)| Step::Snapshot { shard, back }),
        1 => Just(Step::Frontiers),
    ];
    (step, any::<bool>())
}

/// The reference: each shard's updates and upper (no call seals).
#[derive(Debug, Default)]
struct ShardModel {
    contents: BTreeMap<(u64, Row), Diff>,
    upper: u64,
}

impl ShardModel {
    fn updates(&self) -> Vec<Update<u64>> {
        self.contents
            .iter()
            .map(|((time, row), diff)| Update::new(row.clone(), *time, *diff))
            .collect()
    }
}

fn unexpected<V: std::fmt::Debug>(what: &str, result: V) -> TestCaseError {
    TestCaseError::fail(format!("{what}: unexpected result {result:?}"))
}

async fn run_step<B: PersistBackend<u64>>(
    backend: &B,
    shards: &[ShardId; SHARDS],
    model: &mut [ShardModel; SHARDS],
    step: Step,
) -> Result<&'static str, TestCaseError> {
    let outcome = match step {
        Step::AppendAll { parts } => {
            let mut appends = Vec::with_capacity(parts.len());
            let mut expected_mismatches = Vec::new();
            for (index, spec) in &parts {
                let upper = model[*index].upper;
                let expected = match spec.expectation {
                    Expectation::Current => upper,
                    Expectation::Behind(distance) => upper.saturating_sub(distance),
                    Expectation::Ahead(distance) => upper + distance,
                };
                if expected != upper {
                    expected_mismatches.push((
                        shards[*index],
                        UpperMismatch {
                            expected: at(expected),
                            current: at(upper),
                            earlier_attempts: EarlierAttempts::NotApplied,
                        },
                    ));
                }
                appends.push(ShardAppend {
                    shard: shards[*index],
                    updates: spec
                        .updates
                        .iter()
                        .map(|(key, offset, diff)| {
                            Update::new(int_row(*key), expected + offset % spec.advance, *diff)
                        })
                        .collect(),
                    expected_upper: at(expected),
                    new_upper: at(expected + spec.advance),
                });
            }
            let result = backend
                .compare_and_append_all(
                    appends.clone(),
                    IdempotencyToken::new(),
                    WriteFence::Unfenced,
                )
                .await;
            if expected_mismatches.is_empty() {
                prop_assert_eq!(result, Ok(Ok(())), "a call with every upper right");
                for ((index, _), append) in parts.iter().zip(appends) {
                    let shard = &mut model[*index];
                    for update in append.updates {
                        *shard
                            .contents
                            .entry((update.timestamp, update.row))
                            .or_insert(0) += update.diff;
                    }
                    shard.upper = *append.new_upper.as_option().expect("no call seals");
                }
                if parts.len() > 1 {
                    "call over several shards applied"
                } else {
                    "call of at most one shard applied"
                }
            } else {
                prop_assert_eq!(
                    result,
                    Ok(Err(UpperMismatches {
                        mismatches: expected_mismatches,
                    })),
                    "a call with a wrong upper"
                );
                if parts.len() > 1 {
                    "call over several shards mismatched"
                } else {
                    "call of one shard mismatched"
                }
            }
        }
        Step::Append { shard, advance } => {
            let upper = model[shard].upper;
            let row = int_row(100 + shard as i64);
            let result = backend
                .compare_and_append(
                    shards[shard],
                    vec![Update::new(row.clone(), upper, 1)],
                    at(upper),
                    at(upper + advance),
                    IdempotencyToken::new(),
                    WriteFence::Unfenced,
                )
                .await;
            prop_assert_eq!(result, Ok(Ok(())), "a single-shard append at the upper");
            *model[shard].contents.entry((upper, row)).or_insert(0) += 1;
            model[shard].upper = upper + advance;
            "single-shard append applied"
        }
        Step::Snapshot { shard, back } => {
            let upper = model[shard].upper;
            if upper == 0 {
                return Ok("snapshot of an empty shard skipped");
            }
            let as_of = upper.saturating_sub(back);
            let result = backend.snapshot(shards[shard], &as_of).await;
            let expected = model_snapshot(&model[shard].updates(), as_of);
            prop_assert_eq!(result, Ok(expected), "snapshot at {}", as_of);
            "snapshot read"
        }
        Step::Frontiers => {
            for (index, shard) in shards.iter().enumerate() {
                let result = backend.frontiers(*shard).await;
                let upper = result.map_err(|err| unexpected("frontiers", err))?.upper;
                prop_assert_eq!(upper, at(model[index].upper), "upper of shard {}", index);
            }
            "frontiers read"
        }
    };
    Ok(outcome)
}

async fn run_case<B: PersistBackend<u64>>(
    handles: &[B; 2],
    steps: Vec<(Step, bool)>,
    coverage: &Mutex<BTreeMap<&'static str, u64>>,
) -> TestCaseResult {
    let shards: [ShardId; SHARDS] = std::array::from_fn(|_| ShardId::new());
    for shard in &shards {
        handles[0]
            .open(*shard)
            .await
            .map_err(|err| unexpected("open", err))?;
    }
    let mut model: [ShardModel; SHARDS] = Default::default();
    for (step, via_second_handle) in steps {
        let backend = &handles[usize::from(via_second_handle)];
        let outcome = run_step(backend, &shards, &mut model, step).await?;
        *lock(coverage).entry(outcome).or_insert(0) += 1;
    }
    for shard in &shards {
        // Cleanup so cases do not pile up in shared storage; finalize is
        // idempotent, so a transient failure is retried.
        let mut finalized = false;
        for _ in 0..5 {
            match handles[0].finalize(*shard).await {
                Ok(()) => {
                    finalized = true;
                    break;
                }
                Err(err @ BackendError::InvalidUsage(_)) => {
                    return Err(unexpected("finalize", err));
                }
                Err(_) => {}
            }
        }
        prop_assert!(finalized, "finalize of {} failed 5 times", shard);
    }
    Ok(())
}

/// Random sequences of calls over several shards (at least 128 cases of up
/// to 10 steps), mixed with single-shard appends and reads through two
/// handles, always agree with a model in which a call applies on every
/// shard iff every part's expected upper is the shard's upper: every
/// result, every mismatch list, every snapshot and frontier.
pub async fn append_all_random_calls_match_the_model<F: BackendFactory>(factory: &F) {
    let handles = [factory.open_handle().await, factory.open_handle().await];
    let runtime = tokio::runtime::Handle::current();
    let default = Config::default();
    let config = Config {
        cases: default.cases.max(MIN_CASES),
        failure_persistence: None,
        ..default
    };
    let mut runner = TestRunner::new(config);
    let strategy = prop::collection::vec(step_strategy(), 1..10);
    let coverage = Mutex::new(BTreeMap::new());
    let cases = AtomicU32::new(0);
    let outcome = tokio::task::block_in_place(|| {
        runner.run(&strategy, |steps| {
            cases.fetch_add(1, Ordering::Relaxed);
            runtime.block_on(run_case(&handles, steps, &coverage))
        })
    });
    if let Err(failure) = outcome {
        panic!("the backend's atomic appends disagree with the model: {failure}");
    }
    assert!(cases.into_inner() >= MIN_CASES);
    let coverage = coverage
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for outcome in [
        "call over several shards applied",
        "call over several shards mismatched",
        "call of one shard mismatched",
        "single-shard append applied",
        "snapshot read",
    ] {
        assert!(
            coverage.get(outcome).is_some_and(|count| *count > 0),
            "the random calls never produced {outcome:?}: {coverage:?}"
        );
    }
}
