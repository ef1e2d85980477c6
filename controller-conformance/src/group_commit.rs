//! Group commit: `append` calls queued together commit as one store
//! commit, each call still answered for itself, and no reader ever sees
//! part of a call.
//!
//! Tests that count store commits make the write task wait for exactly the
//! calls they submit (`max_calls` equal to the burst, a long `max_delay`
//! that only bounds a hang), so the grouping they check does not depend on
//! scheduling.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_conformance::faults::{FaultRates, FaultyBackend, Operation};
use tidemark_storage_controller::GroupCommitConfig;
use tidemark_storage_types::{
    BackendError, IdempotencyToken, PersistBackend, ShardId, StorageError, WriteFence,
};
use tokio::sync::oneshot;

use super::*;

/// A receiver of one `append` call's answer.
type Answer = oneshot::Receiver<Result<(), StorageError>>;

/// What an append receiver resolved with.
async fn outcome(receiver: Answer) -> Result<(), StorageError> {
    within_a_minute(receiver, "append never resolved")
        .await
        .expect("append channel open")
}

/// A configuration whose write task gathers `burst` calls into one commit
/// (the delay only bounds a hang: the group closes when the burst is
/// queued), and splits groups at `max_updates`.
fn burst_config(burst: usize, max_updates: usize) -> ControllerConfig {
    ControllerConfig {
        group_commit: GroupCommitConfig {
            max_calls: burst,
            max_updates,
            max_delay: Duration::from_secs(60),
            ..GroupCommitConfig::default()
        },
        ..test_config()
    }
}

/// A controller over the factory's storage behind a fault wrapper that
/// injects no faults: it counts the store commits.
async fn counting_controller<F: BackendFactory>(
    factory: &F,
    config: ControllerConfig,
) -> Controller<u64, FaultyBackend<F::Backend>> {
    let counted = FaultyBackend::new(factory.open_handle().await, 0);
    Controller::new(counted, config)
        .await
        .expect("controller starts")
}

/// How many `compare_and_append_all` calls the controller's backend saw.
fn store_commits<B: PersistBackend<u64>>(c: &Controller<u64, FaultyBackend<B>>) -> u64 {
    c.backend().counts(Operation::CompareAndAppendAll).calls
}

/// The data shard of collection `id`.
fn data_shard<B: PersistBackend<u64>>(c: &Controller<u64, B>, id: GlobalId) -> ShardId {
    c.collection(id).unwrap().collection_metadata.data_shard
}

/// The rows of a shard at `time`, read on `backend`, sorted.
async fn rows_at<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    time: u64,
) -> Vec<(Row, i64)> {
    let mut rows = backend.snapshot(shard, &time).await.expect("snapshot");
    rows.sort();
    rows
}

/// Six calls queued together, three of them to one table and two of them
/// to several tables, commit as one store commit: every call succeeds and
/// each table holds exactly its calls' updates, chained in submission
/// order.
pub async fn queued_calls_commit_as_one_store_commit<F: BackendFactory>(factory: &F) {
    let mut c = counting_controller(factory, burst_config(6, 1_000)).await;
    c.create_collections(vec![
        (user(1), table()),
        (user(2), table()),
        (user(3), table()),
    ])
    .await
    .unwrap();
    let before = store_commits(&c);
    let calls = vec![
        vec![(user(1), vec![update(1, "a", 0, 1)], 1)],
        vec![(user(1), vec![update(2, "b", 1, 1)], 2)],
        vec![
            (user(2), vec![update(3, "c", 0, 1)], 3),
            (user(3), vec![update(4, "d", 0, 1)], 1),
        ],
        vec![(user(1), vec![update(5, "e", 2, 1)], 5)],
        vec![(user(3), vec![update(6, "f", 1, 1)], 2)],
        vec![
            (user(2), vec![update(7, "g", 3, 1)], 4),
            (user(1), vec![update(8, "h", 5, 1)], 6),
        ],
    ];
    let receivers: Vec<Answer> = calls
        .into_iter()
        .map(|call| c.append(call).expect("append accepted"))
        .collect();
    for (index, receiver) in receivers.into_iter().enumerate() {
        assert_eq!(outcome(receiver).await, Ok(()), "call {index}");
    }
    assert_eq!(
        store_commits(&c) - before,
        1,
        "one store commit for six calls"
    );
    let reader = factory.open_handle().await;
    let expected = [
        (
            user(1),
            6,
            vec![
                (row(1, "a"), 1),
                (row(2, "b"), 1),
                (row(5, "e"), 1),
                (row(8, "h"), 1),
            ],
        ),
        (user(2), 4, vec![(row(3, "c"), 1), (row(7, "g"), 1)]),
        (user(3), 2, vec![(row(4, "d"), 1), (row(6, "f"), 1)]),
    ];
    for (id, upper, rows) in expected {
        let shard = data_shard(&c, id);
        assert_eq!(
            reader.frontiers(shard).await.unwrap().upper,
            frontier(upper),
            "{id}"
        );
        assert_eq!(rows_at(&reader, shard, upper - 1).await, rows, "{id}");
    }
    process_until(&mut c, |c| {
        c.collection(user(1)).unwrap().write_frontier == frontier(6)
            && c.collection(user(2)).unwrap().write_frontier == frontier(4)
            && c.collection(user(3)).unwrap().write_frontier == frontier(2)
    })
    .await;
}

/// In one group, a call whose command cannot follow the group's earlier
/// calls (it writes before the upper they leave) gets its own
/// `InvalidUppers`, naming only its stale table, and writes nothing on any
/// of its tables; the other calls commit, in the same store commit.
pub async fn a_call_that_cannot_follow_its_group_fails_alone<F: BackendFactory>(factory: &F) {
    let mut c = counting_controller(factory, burst_config(4, 1_000)).await;
    c.create_collections(vec![(user(1), table()), (user(2), table())])
        .await
        .unwrap();
    let before = store_commits(&c);
    let receivers: Vec<Answer> = [
        vec![(user(1), vec![update(1, "a", 0, 1)], 3)],
        // u1 is at [3] after the first call: stale.
        vec![(user(1), vec![update(2, "stale", 1, 1)], 4)],
        vec![
            (user(2), vec![update(3, "c", 0, 1)], 1),
            (user(1), vec![update(4, "d", 3, 1)], 4),
        ],
        // u2 is at [1] after the third call: stale, so its u1 part is
        // not written either.
        vec![
            (user(2), vec![update(5, "stale", 0, 1)], 2),
            (user(1), vec![update(6, "lost", 4, 1)], 5),
        ],
    ]
    .into_iter()
    .map(|call| c.append(call).expect("append accepted"))
    .collect();
    let expected = [
        Ok(()),
        Err(StorageError::InvalidUppers(vec![user(1)])),
        Ok(()),
        Err(StorageError::InvalidUppers(vec![user(2)])),
    ];
    for (index, (receiver, expected)) in receivers.into_iter().zip(expected).enumerate() {
        assert_eq!(outcome(receiver).await, expected, "call {index}");
    }
    assert_eq!(
        store_commits(&c) - before,
        1,
        "the good calls commit together"
    );
    let reader = factory.open_handle().await;
    let (u1, u2) = (data_shard(&c, user(1)), data_shard(&c, user(2)));
    assert_eq!(reader.frontiers(u1).await.unwrap().upper, frontier(4));
    assert_eq!(reader.frontiers(u2).await.unwrap().upper, frontier(1));
    assert_eq!(
        rows_at(&reader, u1, 3).await,
        vec![(row(1, "a"), 1), (row(4, "d"), 1)]
    );
    assert_eq!(rows_at(&reader, u2, 0).await, vec![(row(3, "c"), 1)]);
}

/// Another writer moved one table's upper, so the store refuses the whole
/// group: nothing of it lands, and then each call commits alone, getting
/// the answer it would have had on its own, in submission order: the call
/// that names the moved table `InvalidUppers` (and none of it lands, on
/// either table), the others success.
pub async fn a_group_the_store_refuses_answers_each_call_alone<F: BackendFactory>(factory: &F) {
    let mut c = counting_controller(factory, burst_config(3, 1_000)).await;
    c.create_collections(vec![(user(1), table()), (user(2), table())])
        .await
        .unwrap();
    let (u1, u2) = (data_shard(&c, user(1)), data_shard(&c, user(2)));
    let other = factory.open_handle().await;
    other
        .compare_and_append(
            u2,
            vec![update(9, "other", 0, 1)],
            frontier(0),
            frontier(2),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    let before = store_commits(&c);
    let receivers: Vec<Answer> = [
        vec![(user(1), vec![update(1, "a", 0, 1)], 1)],
        vec![
            (user(1), vec![update(2, "b", 1, 1)], 2),
            (user(2), vec![update(2, "b", 0, 1)], 1),
        ],
        vec![(user(1), vec![update(3, "c", 2, 1)], 3)],
    ]
    .into_iter()
    .map(|call| c.append(call).expect("append accepted"))
    .collect();
    let expected = [
        Ok(()),
        Err(StorageError::InvalidUppers(vec![user(2)])),
        Ok(()),
    ];
    for (index, (receiver, expected)) in receivers.into_iter().zip(expected).enumerate() {
        assert_eq!(outcome(receiver).await, expected, "call {index}");
    }
    assert!(
        store_commits(&c) - before > 1,
        "the refused group was followed by commits of its calls alone"
    );
    assert_eq!(other.frontiers(u1).await.unwrap().upper, frontier(3));
    assert_eq!(
        rows_at(&other, u1, 2).await,
        vec![(row(1, "a"), 1), (row(3, "c"), 1)]
    );
    assert_eq!(other.frontiers(u2).await.unwrap().upper, frontier(2));
    assert_eq!(rows_at(&other, u2, 1).await, vec![(row(9, "other"), 1)]);
}

/// Queued calls that share no table commit side by side, one store commit
/// each; with `join_disjoint_calls` they join one store commit.
pub async fn disjoint_calls_commit_side_by_side_unless_joined<F: BackendFactory>(factory: &F) {
    for join in [false, true] {
        let mut config = burst_config(4, 1_000);
        config.group_commit.join_disjoint_calls = join;
        let mut c = counting_controller(factory, config).await;
        let ids: Vec<GlobalId> = (1..=4)
            .map(|n| user(if join { 10 + n } else { n }))
            .collect();
        c.create_collections(ids.iter().map(|id| (*id, table())).collect())
            .await
            .unwrap();
        let before = store_commits(&c);
        let receivers: Vec<Answer> = ids
            .iter()
            .map(|id| {
                c.append(vec![(*id, vec![update(1, "x", 0, 1)], 1)])
                    .expect("append accepted")
            })
            .collect();
        for receiver in receivers {
            assert_eq!(outcome(receiver).await, Ok(()), "join {join}");
        }
        let expected = if join { 1 } else { 4 };
        assert_eq!(store_commits(&c) - before, expected, "join {join}");
        let reader = factory.open_handle().await;
        for id in &ids {
            let shard = data_shard(&c, *id);
            assert_eq!(
                reader.frontiers(shard).await.unwrap().upper,
                frontier(1),
                "{id}"
            );
        }
    }
}

/// A group reaching `max_updates` closes: four one-update calls with a
/// bound of two updates commit as two store commits.
pub async fn a_group_closes_at_its_update_bound<F: BackendFactory>(factory: &F) {
    let mut c = counting_controller(factory, burst_config(4, 2)).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let before = store_commits(&c);
    let receivers: Vec<Answer> = (0..4u64)
        .map(|time| {
            c.append(vec![(
                user(1),
                vec![update(time as i64, "x", time, 1)],
                time + 1,
            )])
            .expect("append accepted")
        })
        .collect();
    for receiver in receivers {
        assert_eq!(outcome(receiver).await, Ok(()));
    }
    assert_eq!(store_commits(&c) - before, 2);
    let reader = factory.open_handle().await;
    let shard = data_shard(&c, user(1));
    assert_eq!(reader.frontiers(shard).await.unwrap().upper, frontier(4));
    assert_eq!(rows_at(&reader, shard, 3).await.len(), 4);
}

/// One step of the concurrent-reader model.
#[derive(Clone, Debug)]
enum Step {
    /// An `append` call to the tables whose bits are set (1 to 7 of 3
    /// tables), submitted without waiting for its answer.
    Call(u8),
    /// A read, on another handle, of table `.0` (its upper and contents)
    /// and then of table `.1` (its upper).
    Read(usize, usize),
}

fn step() -> impl Strategy<Value = Step> {
    proptest::prop_oneof![
        (1u8..8).prop_map(Step::Call),
        (0usize..3, 0usize..3).prop_map(|(first, second)| Step::Read(first, second)),
    ]
}

/// Random multi-table calls, submitted back to back so they queue and
/// commit in groups, interleaved with reads on another handle: every read
/// agrees with the model. Call `k` writes row `k` at time `k` and moves
/// each of its tables' uppers to `k + 1`; a read of table A that finds
/// upper `u` holds exactly the calls before `u` that name A, and a later
/// read of table B finds every one of those calls that also names B (a
/// reader never sees part of a call). Finally every call succeeded and
/// every table holds exactly its calls.
pub async fn readers_never_see_part_of_a_grouped_call<F: BackendFactory>(factory: &F) {
    const TABLES: usize = 3;
    let mut c = controller(factory).await;
    let reader = factory.open_handle().await;
    let mut runner = TestRunner::deterministic();
    let strategy = proptest::collection::vec(step(), 1..40);
    for case in 0..16u64 {
        let steps = strategy
            .new_tree(&mut runner)
            .expect("strategy generates")
            .current();
        let ids: Vec<GlobalId> = (0..TABLES as u64)
            .map(|n| user(100 * case + n + 1))
            .collect();
        c.create_collections(ids.iter().map(|id| (*id, table())).collect())
            .await
            .unwrap();
        let shards: Vec<ShardId> = ids.iter().map(|id| data_shard(&c, *id)).collect();
        // The tables each call names, by call number.
        let mut calls: Vec<BTreeSet<usize>> = Vec::new();
        let mut receivers = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            let context = format!("case {case} step {index} in {steps:?}");
            match step {
                Step::Call(mask) => {
                    let k = calls.len() as u64;
                    let tables: BTreeSet<usize> = (0..TABLES)
                        .filter(|table| mask & (1 << table) != 0)
                        .collect();
                    let commands = tables
                        .iter()
                        .map(|table| (ids[*table], vec![update(k as i64, "x", k, 1)], k + 1))
                        .collect();
                    receivers.push(c.append(commands).expect("append accepted"));
                    calls.push(tables);
                }
                Step::Read(first, second) => {
                    let seen = reader.frontiers(shards[*first]).await.unwrap().upper;
                    let seen = *seen.as_option().expect("no call seals");
                    let applied: Vec<u64> = (0..seen)
                        .filter(|k| calls.get(*k as usize).is_some_and(|t| t.contains(first)))
                        .collect();
                    if seen > 0 {
                        let expected: Vec<(Row, i64)> =
                            applied.iter().map(|k| (row(*k as i64, "x"), 1)).collect();
                        let mut expected = expected;
                        expected.sort();
                        assert_eq!(
                            rows_at(&reader, shards[*first], seen - 1).await,
                            expected,
                            "{context}: table {first} at upper {seen}"
                        );
                    }
                    let other = reader.frontiers(shards[*second]).await.unwrap().upper;
                    let other = *other.as_option().expect("no call seals");
                    for k in &applied {
                        if calls[*k as usize].contains(second) {
                            assert!(
                                *k < other,
                                "{context}: call {k} is on table {first} but not on table {second} (upper {other})"
                            );
                        }
                    }
                }
            }
        }
        for (k, receiver) in receivers.into_iter().enumerate() {
            assert_eq!(outcome(receiver).await, Ok(()), "case {case} call {k}");
        }
        for (table, shard) in shards.iter().enumerate() {
            let mine: Vec<u64> = (0..calls.len() as u64)
                .filter(|k| calls[*k as usize].contains(&table))
                .collect();
            let Some(last) = mine.last() else {
                continue;
            };
            assert_eq!(
                reader.frontiers(*shard).await.unwrap().upper,
                frontier(last + 1),
                "case {case} table {table}"
            );
            let mut expected: Vec<(Row, i64)> =
                mine.iter().map(|k| (row(*k as i64, "x"), 1)).collect();
            expected.sort();
            assert_eq!(
                rows_at(&reader, *shard, *last).await,
                expected,
                "case {case} table {table}"
            );
        }
    }
}

/// Calls committed in groups through a store that often fails, before
/// applying (determinately), by timing out, or after applying: afterwards
/// every call is wholly present on all its tables or wholly absent; every
/// call answered `Ok` is present, every call refused determinately is
/// absent, and none is present twice.
pub async fn grouped_calls_under_faults_are_all_or_nothing<F: BackendFactory>(factory: &F) {
    const BURST: usize = 4;
    const ROUNDS: u64 = 8;
    const TABLES: usize = 3;
    let faulty = FaultyBackend::new(factory.open_handle().await, 11).with_rates(
        Operation::CompareAndAppendAll,
        FaultRates::new(0.1, 0.25)
            .and_then(|rates| rates.with_timeout(0.2))
            .expect("valid rates"),
    );
    let mut c = Controller::new(faulty, burst_config(BURST, 1_000))
        .await
        .expect("controller starts");
    let ids: Vec<GlobalId> = (1..=TABLES as u64).map(user).collect();
    c.create_collections(ids.iter().map(|id| (*id, table())).collect())
        .await
        .unwrap();
    let shards: Vec<ShardId> = ids.iter().map(|id| data_shard(&c, *id)).collect();
    // Call k names tables by its number: never an empty set.
    let tables_of = |k: u64| -> Vec<usize> {
        let mask = (k % 7) + 1;
        (0..TABLES)
            .filter(|table| mask & (1 << table) != 0)
            .collect()
    };
    let mut answers: BTreeMap<u64, Result<(), StorageError>> = BTreeMap::new();
    for round in 0..ROUNDS {
        let receivers: Vec<(u64, Answer)> = (0..BURST as u64)
            .map(|offset| {
                let k = round * BURST as u64 + offset;
                let commands = tables_of(k)
                    .into_iter()
                    .map(|table| (ids[table], vec![update(k as i64, "x", k, 1)], k + 1))
                    .collect();
                (k, c.append(commands).expect("append accepted"))
            })
            .collect();
        for (k, receiver) in receivers {
            answers.insert(k, outcome(receiver).await);
        }
    }
    let counts = c.backend().counts(Operation::CompareAndAppendAll);
    assert!(
        counts.failed_before > 0 && counts.failed_after > 0 && counts.timed_out > 0,
        "the store injected every kind of fault: {counts:?}"
    );
    assert!(
        answers.values().any(Result::is_ok),
        "some calls committed: {answers:?}"
    );
    let reader = factory.open_handle().await;
    let end = ROUNDS * BURST as u64;
    let mut present: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (table, shard) in shards.iter().enumerate() {
        let upper = reader.frontiers(*shard).await.unwrap().upper;
        let Some(&upper) = upper.as_option() else {
            panic!("table {table} is sealed");
        };
        if upper == 0 {
            continue;
        }
        for (row_seen, diff) in rows_at(&reader, *shard, upper - 1).await {
            assert_eq!(diff, 1, "table {table}: a call applied twice");
            let k = (0..end)
                .find(|k| row(*k as i64, "x") == row_seen)
                .expect("a row some call wrote");
            present.entry(k).or_default().push(table);
        }
    }
    for k in 0..end {
        let tables = present.get(&k).cloned().unwrap_or_default();
        let answer = &answers[&k];
        assert!(
            tables.is_empty() || tables == tables_of(k),
            "call {k} ({answer:?}) is only partly present: on {tables:?} of {:?}",
            tables_of(k)
        );
        match answer {
            Ok(()) => assert!(!tables.is_empty(), "call {k} answered Ok is absent"),
            Err(StorageError::InvalidUppers(_)) => {
                assert!(tables.is_empty(), "call {k} refused is present");
            }
            Err(StorageError::Backend(BackendError::Determinate(_))) => {
                assert!(
                    tables.is_empty(),
                    "call {k} failed determinately is present"
                );
            }
            Err(StorageError::Backend(_)) => {}
            Err(other) => panic!("call {k}: unexpected answer {other}"),
        }
    }
}
