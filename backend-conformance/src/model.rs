//! A proptest state machine: random sequences of appends (matching,
//! stale, ahead, sealing, out of bounds), since downgrades, compactions,
//! snapshots, fetches and reopens, through two handles, each checked
//! against a reference model.
//!
//! A second property runs the same operations reading through
//! `snapshot_stream` and `fetch_stream` in small chunks.
//!
//! The model keeps every update ever appended in a `BTreeMap` keyed by
//! `(time, row)`, plus the since and the upper; reads are computed from it by
//! logical compaction, so physical compaction must be invisible.

use std::collections::BTreeMap;
use std::sync::Mutex;

use std::sync::atomic::{AtomicU32, Ordering};
use tidemark_storage_types::sync::lock;
use tidemark_storage_types::{EarlierAttempts, WriteFence};

use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestCaseResult, TestRunner};
use tidemark_storage_types::{
    BackendError, ChunkLimit, Diff, IdempotencyToken, InvalidUsage, PersistBackend, ReadShare,
    ReadStream, Row, ShardFrontiers, ShardId, Update, UpperMismatch,
};
use timely::progress::Antichain;

use crate::BackendFactory;
use crate::support::{at, frontiers, int_row, model_fetch, model_snapshot, sealed};

/// The fewest cases the property runs (more if `PROPTEST_CASES` asks).
const MIN_CASES: u32 = 256;

/// Where an append's expected upper is, relative to the shard's upper.
#[derive(Clone, Debug)]
enum Expectation {
    /// The current upper: the append succeeds.
    Current,
    /// This far behind it: a mismatch (unless that clamps to the upper).
    Behind(u64),
    /// This far ahead of it: a mismatch.
    Ahead(u64),
}

/// One operation of a case.
#[derive(Clone, Debug)]
enum Operation {
    /// An append of `updates` (row key, time offset into the bounds, diff);
    /// `advance` None seals.
    Append {
        expectation: Expectation,
        advance: Option<u64>,
        updates: Vec<(i64, u64, Diff)>,
    },
    /// An append at the current upper with an update at its new upper (or
    /// just below its lower): `UpdateOutsideBounds`.
    AppendOutsideBounds { below_lower: bool },
    /// A downgrade to the upper plus `offset`.
    DowngradeSince { offset: i64 },
    /// Physical compaction.
    Compact,
    /// A snapshot at the upper plus `offset`.
    Snapshot { offset: i64 },
    /// A fetch of `[upper + lower_offset, that + width)`, or to `[]`.
    Fetch {
        lower_offset: i64,
        width: i64,
        to_empty: bool,
    },
    /// A read of the frontiers.
    Frontiers,
    /// Opening the shard again.
    Reopen,
}

/// An operation and the handle it goes through.
#[derive(Clone, Debug)]
struct Step {
    operation: Operation,
    via_second_handle: bool,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let expectation = prop_oneof![
        6 => Just(Expectation::Current),
        1 => (1u64..4).prop_map(Expectation::Behind),
        1 => (1u64..4).prop_map(Expectation::Ahead),
    ];
    let advance = prop_oneof![15 => (1u64..5).prop_map(Some), 1 => Just(None)];
    let updates = prop::collection::vec((0i64..6, 0u64..8, -2i64..=2), 0..6);
    let operation = prop_oneof![
        8 => (expectation, advance, updates).prop_map(|(expectation, advance, updates)| {
            Operation::Append { expectation, advance, updates }
        }),
        1 => any::<bool>().prop_map(|below_lower| Operation::AppendOutsideBounds { below_lower }),
        2 => (-3i64..6).prop_map(|offset| Operation::DowngradeSince { offset }),
        1 => Just(Operation::Compact),
        3 => (-5i64..2).prop_map(|offset| Operation::Snapshot { offset }),
        2 => (-7i64..2, -1i64..5, prop::bool::weighted(0.1)).prop_map(
            |(lower_offset, width, to_empty)| Operation::Fetch { lower_offset, width, to_empty }
        ),
        1 => Just(Operation::Frontiers),
        1 => Just(Operation::Reopen),
    ];
    (operation, any::<bool>()).prop_map(|(operation, via_second_handle)| Step {
        operation,
        via_second_handle,
    })
}

/// The reference: every update ever appended, the since and the upper.
#[derive(Debug)]
struct Model {
    /// `(time, row) -> summed diff` of every update appended.
    contents: BTreeMap<(u64, Row), Diff>,
    since: u64,
    /// `None` once sealed.
    upper: Option<u64>,
    /// The last upper before sealing (to place operations on a sealed shard).
    last_upper: u64,
}

impl Model {
    /// A new shard: `since = upper = [0]`, no data.
    fn new() -> Model {
        Model {
            contents: BTreeMap::new(),
            since: 0,
            upper: Some(0),
            last_upper: 0,
        }
    }

    fn frontiers(&self) -> ShardFrontiers<u64> {
        frontiers(at(self.since), self.upper.map_or_else(sealed, at))
    }

    /// The upper to place operations relative to.
    fn reference(&self) -> u64 {
        self.upper.unwrap_or(self.last_upper)
    }

    fn updates(&self) -> Vec<Update<u64>> {
        self.contents
            .iter()
            .map(|((time, row), diff)| Update::new(row.clone(), *time, *diff))
            .collect()
    }
}

fn offset_from(base: u64, offset: i64) -> u64 {
    base.saturating_add_signed(offset)
}

fn unexpected<V: std::fmt::Debug>(what: &str, result: V) -> TestCaseError {
    TestCaseError::fail(format!("{what}: unexpected result {result:?}"))
}

/// How a case reads snapshots and fetches.
#[derive(Clone, Copy, Debug)]
enum Reads {
    /// `snapshot` and `fetch`.
    Whole,
    /// `snapshot_stream` and `fetch_stream` within this limit, each chunk
    /// checked against it.
    Streamed(ChunkLimit),
}

/// Reads a stream to its end: the concatenation of its chunks, or its
/// error. A chunk that is empty or over the limit's entries fails the case.
async fn concatenate<C>(
    mut stream: ReadStream<C>,
    limit: ChunkLimit,
) -> Result<Result<Vec<C>, BackendError>, TestCaseError> {
    let mut entries = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                prop_assert!(
                    !chunk.is_empty() && chunk.len() <= limit.max_entries.get(),
                    "a chunk of {} entries, limit {}",
                    chunk.len(),
                    limit.max_entries
                );
                entries.extend(chunk);
            }
            Err(err) => return Ok(Err(err)),
        }
    }
    Ok(Ok(entries))
}

async fn read_snapshot<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    as_of: u64,
    reads: Reads,
) -> Result<Result<Vec<(Row, Diff)>, BackendError>, TestCaseError> {
    match reads {
        Reads::Whole => Ok(backend.snapshot(shard, &as_of).await),
        Reads::Streamed(limit) => {
            match backend
                .snapshot_stream(shard, &as_of, ReadShare::WHOLE, limit)
                .await
            {
                Ok(stream) => concatenate(stream, limit).await,
                Err(err) => Ok(Err(err)),
            }
        }
    }
}

async fn read_fetch<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    lower: &Antichain<u64>,
    upper: &Antichain<u64>,
    reads: Reads,
) -> Result<Result<Vec<Update<u64>>, BackendError>, TestCaseError> {
    match reads {
        Reads::Whole => Ok(backend.fetch(shard, lower, upper).await),
        Reads::Streamed(limit) => {
            match backend
                .fetch_stream(shard, lower, upper, ReadShare::WHOLE, limit)
                .await
            {
                Ok(stream) => concatenate(stream, limit).await,
                Err(err) => Ok(Err(err)),
            }
        }
    }
}

/// Runs one step on the backend and the model, comparing them.
async fn run_step<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    model: &mut Model,
    operation: Operation,
    reads: Reads,
) -> Result<&'static str, TestCaseError> {
    let outcome = match operation {
        Operation::Append {
            expectation,
            advance,
            updates,
        } => {
            let reference = model.reference();
            let expected_time = match expectation {
                Expectation::Current => reference,
                Expectation::Behind(distance) => reference.saturating_sub(distance),
                Expectation::Ahead(distance) => reference + distance,
            };
            let new_upper = advance.map_or_else(sealed, |advance| at(expected_time + advance));
            let updates: Vec<Update<u64>> = updates
                .into_iter()
                .map(|(key, offset, diff)| {
                    let offset = advance.map_or(offset, |advance| offset % advance);
                    Update::new(int_row(key), expected_time + offset, diff)
                })
                .collect();
            let result = backend
                .compare_and_append(
                    shard,
                    updates.clone(),
                    at(expected_time),
                    new_upper.clone(),
                    IdempotencyToken::new(),
                    WriteFence::Unfenced,
                )
                .await;
            if model.upper == Some(expected_time) {
                prop_assert_eq!(result, Ok(Ok(())), "append at the current upper");
                for update in updates {
                    *model
                        .contents
                        .entry((update.timestamp, update.row))
                        .or_insert(0) += update.diff;
                }
                model.upper = new_upper.as_option().copied();
                model.last_upper = model.upper.unwrap_or(model.last_upper);
                if model.upper.is_none() {
                    "append sealed"
                } else {
                    "append applied"
                }
            } else {
                let mismatch = UpperMismatch {
                    expected: at(expected_time),
                    current: model.frontiers().upper,
                    earlier_attempts: EarlierAttempts::NotApplied,
                };
                prop_assert_eq!(result, Ok(Err(mismatch)), "append with a wrong upper");
                "append mismatched"
            }
        }
        Operation::AppendOutsideBounds { below_lower } => {
            let Some(upper) = model.upper else {
                return Ok("skipped on a sealed shard");
            };
            let time = if below_lower && upper > 0 {
                upper - 1
            } else {
                upper + 2
            };
            let result = backend
                .compare_and_append(
                    shard,
                    vec![
                        Update::new(int_row(0), upper, 1),
                        Update::new(int_row(1), time, 1),
                    ],
                    at(upper),
                    at(upper + 2),
                    IdempotencyToken::new(),
                    WriteFence::Unfenced,
                )
                .await;
            match result {
                Err(BackendError::InvalidUsage(InvalidUsage::UpdateOutsideBounds { .. })) => {}
                other => return Err(unexpected("append outside its bounds", other)),
            }
            "append outside bounds rejected"
        }
        Operation::DowngradeSince { offset } => {
            let target = offset_from(model.reference(), offset);
            let result = backend
                .downgrade_since(shard, &at(target), WriteFence::Unfenced)
                .await;
            model.since = model.since.max(target);
            prop_assert_eq!(result, Ok(at(model.since)), "downgrade_since to {}", target);
            "since downgraded"
        }
        Operation::Compact => {
            let stats = backend
                .compact(shard)
                .await
                .map_err(|err| unexpected("compact", err))?;
            prop_assert!(
                stats.updates_after <= stats.updates_before,
                "compaction grew the shard: {:?}",
                stats
            );
            "compacted"
        }
        Operation::Snapshot { offset } => {
            let as_of = offset_from(model.reference(), offset);
            let readable = model.since <= as_of && model.upper.is_none_or(|upper| as_of < upper);
            let result = read_snapshot(backend, shard, as_of, reads).await?;
            if readable {
                let expected = model_snapshot(&model.updates(), as_of);
                prop_assert_eq!(result, Ok(expected), "snapshot at {}", as_of);
                "snapshot read"
            } else {
                match result {
                    Err(BackendError::InvalidUsage(InvalidUsage::AsOfNotReadable { .. })) => {}
                    other => return Err(unexpected(&format!("snapshot at {as_of}"), other)),
                }
                "snapshot not readable"
            }
        }
        Operation::Fetch {
            lower_offset,
            width,
            to_empty,
        } => {
            let lower_time = offset_from(model.reference(), lower_offset);
            let lower = at(lower_time);
            let upper: Antichain<u64> = if to_empty {
                sealed()
            } else {
                match lower_time.checked_add_signed(width) {
                    Some(time) => at(time),
                    None => return Ok("fetch range below zero skipped"),
                }
            };
            let within_shard = match (upper.as_option(), model.upper) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(requested), Some(shard_upper)) => *requested <= shard_upper,
            };
            let valid = timely::PartialOrder::less_equal(&lower, &upper) && within_shard;
            let result = read_fetch(backend, shard, &lower, &upper, reads).await?;
            if valid {
                let expected = model_fetch(&model.updates(), &at(model.since), &lower, &upper);
                prop_assert_eq!(result, Ok(expected), "fetch [{:?}, {:?})", lower, upper);
                "fetched"
            } else {
                match result {
                    Err(BackendError::InvalidUsage(InvalidUsage::FetchRangeInvalid { .. })) => {}
                    other => {
                        return Err(unexpected(&format!("fetch [{lower:?}, {upper:?})"), other));
                    }
                }
                "fetch range rejected"
            }
        }
        Operation::Frontiers => {
            prop_assert_eq!(backend.frontiers(shard).await, Ok(model.frontiers()));
            "frontiers read"
        }
        Operation::Reopen => {
            prop_assert_eq!(backend.open(shard).await, Ok(model.frontiers()));
            "reopened"
        }
    };
    Ok(outcome)
}

/// Runs one case on a fresh shard, then finalizes the shard so cases do not
/// pile up in shared storage.
async fn run_case<B: PersistBackend<u64>>(
    handles: &[B; 2],
    steps: Vec<Step>,
    reads: Reads,
    coverage: &Mutex<BTreeMap<&'static str, u64>>,
) -> TestCaseResult {
    let shard = ShardId::new();
    let opened = handles[0]
        .open(shard)
        .await
        .map_err(|err| unexpected("open", err))?;
    let mut model = Model::new();
    prop_assert_eq!(opened, model.frontiers());
    for step in steps {
        let backend = &handles[usize::from(step.via_second_handle)];
        let outcome = run_step(backend, shard, &mut model, step.operation, reads).await?;
        *lock(coverage).entry(outcome).or_insert(0) += 1;
    }
    prop_assert_eq!(handles[1].frontiers(shard).await, Ok(model.frontiers()));
    finalize_for_cleanup(&handles[0], shard).await
}

/// Finalizes a case's shard so cases do not pile up in shared storage.
///
/// This is cleanup, not part of the property: a failure that may be
/// transient (a test server's hiccup) is retried, which is safe because
/// finalize is idempotent. Only a failure on every attempt fails the case.
async fn finalize_for_cleanup<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
) -> TestCaseResult {
    const ATTEMPTS: usize = 5;
    let mut last_failure = None;
    for _ in 0..ATTEMPTS {
        match backend.finalize(shard).await {
            Ok(()) => return Ok(()),
            Err(err @ BackendError::InvalidUsage(_)) => return Err(unexpected("finalize", err)),
            Err(err) => last_failure = Some(err),
        }
    }
    Err(unexpected(
        &format!("finalize, {ATTEMPTS} attempts"),
        last_failure,
    ))
}

/// Random operation sequences (at least 256 cases of up to 12 steps),
/// through two handles, always agree with the reference model: every
/// result, every error, every frontier.
///
/// Needs a multi-threaded runtime: proptest drives the cases synchronously
/// from inside it.
pub async fn random_operations_match_the_model<F: BackendFactory>(factory: &F) {
    run_against_the_model(factory, Reads::Whole).await;
}

/// The same random operation sequences, reading every snapshot and fetch
/// through `snapshot_stream` and `fetch_stream` in chunks of at most two
/// entries, agree with the reference model: every concatenation, every
/// error (at the call), every chunk within the limit.
pub async fn random_operations_with_streamed_reads_match_the_model<F: BackendFactory>(factory: &F) {
    let limit = ChunkLimit::entries(std::num::NonZeroUsize::new(2).expect("nonzero"));
    run_against_the_model(factory, Reads::Streamed(limit)).await;
}

async fn run_against_the_model<F: BackendFactory>(factory: &F, reads: Reads) {
    let handles = [factory.open_handle().await, factory.open_handle().await];
    let runtime = tokio::runtime::Handle::current();
    let default = Config::default();
    let config = Config {
        cases: default.cases.max(MIN_CASES),
        failure_persistence: None,
        ..default
    };
    let mut runner = TestRunner::new(config);
    let strategy = prop::collection::vec(step_strategy(), 1..12);
    let coverage = Mutex::new(BTreeMap::new());
    let cases = AtomicU32::new(0);
    let outcome = tokio::task::block_in_place(|| {
        runner.run(&strategy, |steps| {
            cases.fetch_add(1, Ordering::Relaxed);
            runtime.block_on(run_case(&handles, steps, reads, &coverage))
        })
    });
    if let Err(failure) = outcome {
        panic!("the backend disagrees with the model ({reads:?}): {failure}");
    }

    // The property is only as good as what it exercised.
    assert!(cases.into_inner() >= MIN_CASES);
    let coverage = coverage
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for outcome in [
        "append applied",
        "append sealed",
        "append mismatched",
        "append outside bounds rejected",
        "since downgraded",
        "compacted",
        "snapshot read",
        "snapshot not readable",
        "fetched",
        "fetch range rejected",
    ] {
        assert!(
            coverage.get(outcome).is_some_and(|count| *count > 0),
            "the random operations never produced {outcome:?}: {coverage:?}"
        );
    }
}
