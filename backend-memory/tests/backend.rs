//! Behaviour of the memory backend through its public API: handles sharing
//! a name, racing writers, waits, finalization, and reads against a model.

use std::collections::BTreeMap;
use tidemark_storage_types::{EarlierAttempts, WriteFence};

use tidemark_backend_memory::{MemoryBackend, REMEMBERED_APPENDS};
use tidemark_storage_types::{
    BackendError, Datum, Diff, IdempotencyToken, InvalidUsage, PersistBackend, Row, ShardFrontiers,
    ShardId, Update, UpperMismatch,
};
use timely::progress::Antichain;

fn fresh_backend(test: &str) -> MemoryBackend {
    MemoryBackend::open(&format!("{test}-{}", ShardId::new()))
}

fn row(value: i64) -> Row {
    Row::pack([Datum::Int64(value)])
}

fn frontier(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

async fn open(backend: &MemoryBackend, shard: ShardId) -> ShardFrontiers<u64> {
    PersistBackend::<u64>::open(backend, shard).await.unwrap()
}

async fn append(
    backend: &MemoryBackend,
    shard: ShardId,
    updates: Vec<(i64, u64, Diff)>,
    expected_upper: u64,
    new_upper: u64,
) -> Result<(), UpperMismatch<u64>> {
    backend
        .compare_and_append(
            shard,
            updates
                .into_iter()
                .map(|(value, time, diff)| Update::new(row(value), time, diff))
                .collect(),
            frontier(expected_upper),
            frontier(new_upper),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
}

fn invalid_usage(err: BackendError) -> InvalidUsage {
    match err {
        BackendError::InvalidUsage(usage) => usage,
        other => panic!("expected invalid usage, got {other}"),
    }
}

#[tokio::test]
async fn handles_on_one_name_share_shards_and_other_names_do_not() {
    let writer = fresh_backend("share");
    let reader = MemoryBackend::open(writer.name());
    let stranger = fresh_backend("share-other");
    let shard = ShardId::new();
    open(&writer, shard).await;
    append(&writer, shard, vec![(1, 0, 1)], 0, 1).await.unwrap();

    assert_eq!(reader.snapshot(shard, &0).await.unwrap(), vec![(row(1), 1)]);
    assert_eq!(
        PersistBackend::<u64>::list_shards(&reader).await.unwrap(),
        vec![shard]
    );
    assert!(
        PersistBackend::<u64>::list_shards(&stranger)
            .await
            .unwrap()
            .is_empty()
    );
    let from_url = MemoryBackend::from_url(&format!("memory://{}", writer.name())).unwrap();
    assert_eq!(
        PersistBackend::<u64>::frontiers(&from_url, shard)
            .await
            .unwrap()
            .upper,
        frontier(1)
    );
    assert!(format!("{writer:?}").contains(writer.name()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_racing_writers_with_one_expected_upper_exactly_one_wins() {
    let backend = fresh_backend("race-one");
    let shard = ShardId::new();
    open(&backend, shard).await;
    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let handle = MemoryBackend::open(backend.name());
            tokio::spawn(async move {
                append(
                    &handle,
                    shard,
                    vec![(writer, 0, 1), (100 + writer, 1, 1)],
                    0,
                    2,
                )
                .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for (writer, task) in writers.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(()) => winners.push(writer as i64),
            Err(mismatch) => assert_eq!(mismatch.current, frontier(2)),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let winner = winners[0];
    assert_eq!(
        backend.snapshot(shard, &1).await.unwrap(),
        vec![(row(winner), 1), (row(100 + winner), 1)],
        "the losers wrote nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_that_retry_on_mismatch_all_land_once() {
    let backend = fresh_backend("race-retry");
    let shard = ShardId::new();
    open(&backend, shard).await;
    let writers: Vec<_> = (0..8i64)
        .map(|writer| {
            let handle = MemoryBackend::open(backend.name());
            tokio::spawn(async move {
                let mut expected_upper = 0;
                for round in 0..20 {
                    loop {
                        let value = writer * 1000 + round;
                        match append(
                            &handle,
                            shard,
                            vec![(value, expected_upper, 1)],
                            expected_upper,
                            expected_upper + 1,
                        )
                        .await
                        {
                            Ok(()) => {
                                expected_upper += 1;
                                break;
                            }
                            Err(mismatch) => {
                                expected_upper = mismatch.current.elements()[0];
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for task in writers {
        task.await.unwrap();
    }
    let upper = PersistBackend::<u64>::frontiers(&backend, shard)
        .await
        .unwrap()
        .upper;
    assert_eq!(upper, frontier(160));
    let mut expected: Vec<_> = (0..8i64)
        .flat_map(|writer| (0..20).map(move |round| (row(writer * 1000 + round), 1)))
        .collect();
    expected.sort();
    assert_eq!(backend.snapshot(shard, &159).await.unwrap(), expected);
    let fetched = backend
        .fetch(shard, &frontier(0), &frontier(160))
        .await
        .unwrap();
    let times: Vec<_> = fetched.iter().map(|update| update.timestamp).collect();
    assert_eq!(times, (0..160).collect::<Vec<_>>(), "one write per time");
}

#[tokio::test]
async fn a_retried_append_answers_success_through_any_handle() {
    let backend = fresh_backend("retry");
    let other = MemoryBackend::open(backend.name());
    let shard = ShardId::new();
    open(&backend, shard).await;
    let token = IdempotencyToken::new();
    let updates = vec![Update::new(row(7), 0, 1)];
    let first = backend
        .compare_and_append(
            shard,
            updates.clone(),
            frontier(0),
            frontier(1),
            token,
            WriteFence::Unfenced,
        )
        .await
        .unwrap();
    assert_eq!(first, Ok(()));
    // Many later appends: the token is still remembered after the minimum
    // the contract asks for.
    for time in 1..=128 {
        append(&backend, shard, vec![], time, time + 1)
            .await
            .unwrap();
    }
    let retry = other
        .compare_and_append(
            shard,
            updates.clone(),
            frontier(0),
            frontier(1),
            token,
            WriteFence::Unfenced,
        )
        .await
        .unwrap();
    assert_eq!(retry, Ok(()));
    assert_eq!(
        backend.snapshot(shard, &128).await.unwrap(),
        vec![(row(7), 1)]
    );

    // Far enough back, the token is forgotten: the retry is a mismatch that
    // says whether it applied cannot be determined.
    for time in 129..=(REMEMBERED_APPENDS as u64 + 1) {
        append(&backend, shard, vec![], time, time + 1)
            .await
            .unwrap();
    }
    let late = other
        .compare_and_append(
            shard,
            updates,
            frontier(0),
            frontier(1),
            token,
            WriteFence::Unfenced,
        )
        .await
        .unwrap();
    assert_eq!(
        late,
        Err(UpperMismatch {
            expected: frontier(0),
            current: frontier(REMEMBERED_APPENDS as u64 + 2),
            earlier_attempts: EarlierAttempts::Undetermined,
        })
    );
}

#[tokio::test]
async fn invalid_appends_write_nothing() {
    let backend = fresh_backend("invalid-append");
    let shard = ShardId::new();
    open(&backend, shard).await;
    append(&backend, shard, vec![], 0, 5).await.unwrap();

    let err = backend
        .compare_and_append(
            shard,
            vec![Update::new(row(1), 5, 1), Update::new(row(2), 9, 1)],
            frontier(5),
            frontier(9),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(invalid_usage(err.clone()), InvalidUsage::UpdateOutsideBounds { ref time, .. } if time == "9"),
        "{err}"
    );
    let err = backend
        .compare_and_append(
            shard,
            vec![Update::new(row(1), 4, 1)],
            frontier(5),
            frontier(9),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(invalid_usage(err), InvalidUsage::UpdateOutsideBounds { .. }),
        "a time before the expected upper"
    );
    let err = backend
        .compare_and_append(
            shard,
            vec![],
            frontier(5),
            frontier(4),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "invalid use of the backend: new upper is behind the expected upper: shard={shard} expected_upper=[5] new_upper=[4]"
        )
    );
    let frontiers = PersistBackend::<u64>::frontiers(&backend, shard)
        .await
        .unwrap();
    assert_eq!(frontiers.upper, frontier(5));
    assert_eq!(
        PersistBackend::<u64>::usage(&backend, shard)
            .await
            .unwrap()
            .updates,
        0
    );
}

#[tokio::test]
async fn a_mismatch_is_a_value_naming_the_current_upper() {
    let backend = fresh_backend("mismatch");
    let shard = ShardId::new();
    open(&backend, shard).await;
    append(&backend, shard, vec![(1, 0, 1)], 0, 3)
        .await
        .unwrap();
    let mismatch = append(&backend, shard, vec![(2, 1, 1)], 1, 4)
        .await
        .unwrap_err();
    assert_eq!(
        mismatch.to_string(),
        "upper mismatch: expected=[1] current=[3]"
    );
    assert_eq!(
        backend.snapshot(shard, &2).await.unwrap(),
        vec![(row(1), 1)]
    );
}

#[tokio::test]
async fn every_method_but_open_rejects_an_unknown_shard() {
    let backend = fresh_backend("unknown");
    let shard = ShardId::new();
    let errors: Vec<BackendError> = vec![
        PersistBackend::<u64>::frontiers(&backend, shard)
            .await
            .unwrap_err(),
        backend
            .compare_and_append(
                shard,
                vec![],
                frontier(0),
                frontier(1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await
            .unwrap_err(),
        backend.snapshot(shard, &0).await.unwrap_err(),
        backend
            .fetch(shard, &frontier(0), &frontier(0))
            .await
            .unwrap_err(),
        backend
            .wait_for_upper_past(shard, &frontier(0))
            .await
            .unwrap_err(),
        backend
            .downgrade_since(shard, &frontier(1), WriteFence::Unfenced)
            .await
            .unwrap_err(),
        PersistBackend::<u64>::compact(&backend, shard)
            .await
            .unwrap_err(),
        PersistBackend::<u64>::usage(&backend, shard)
            .await
            .unwrap_err(),
        PersistBackend::<u64>::finalize(&backend, shard)
            .await
            .unwrap_err(),
    ];
    for err in errors {
        assert_eq!(
            invalid_usage(err),
            InvalidUsage::UnknownShard { shard },
            "every method names the shard"
        );
    }
    assert!(
        PersistBackend::<u64>::list_shards(&backend)
            .await
            .unwrap()
            .is_empty(),
        "failed calls created nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_wake_when_another_handle_moves_the_upper() {
    let backend = fresh_backend("wait");
    let shard = ShardId::new();
    open(&backend, shard).await;
    let waiter = {
        let handle = MemoryBackend::open(backend.name());
        tokio::spawn(async move { handle.wait_for_upper_past(shard, &frontier(4)).await })
    };
    // Appends that do not pass [4] must not wake the waiter with a wrong
    // answer; the one that does returns its upper.
    append(&backend, shard, vec![], 0, 3).await.unwrap();
    append(&backend, shard, vec![], 3, 4).await.unwrap();
    append(&backend, shard, vec![(1, 4, 1)], 4, 6)
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), frontier(6));

    assert_eq!(
        backend
            .wait_for_upper_past(shard, &frontier(5))
            .await
            .unwrap(),
        frontier(6),
        "already past: returns at once"
    );
    let err = backend
        .wait_for_upper_past(shard, &Antichain::<u64>::new())
        .await
        .unwrap_err();
    assert_eq!(
        invalid_usage(err),
        InvalidUsage::WaitPastEmptyFrontier { shard }
    );
}

#[tokio::test]
async fn a_dropped_wait_leaves_later_waits_working() {
    let backend = fresh_backend("wait-cancel");
    let shard = ShardId::new();
    open(&backend, shard).await;
    // Poll a wait once (it cannot be ready) and drop it.
    let minimum = frontier(0);
    let cancelled = tokio::select! {
        biased;
        _ = backend.wait_for_upper_past(shard, &minimum) => false,
        () = std::future::ready(()) => true,
    };
    assert!(
        cancelled,
        "the upper had not moved, so the wait was pending"
    );
    let waiter = {
        let handle = backend.clone();
        tokio::spawn(async move { handle.wait_for_upper_past(shard, &frontier(0)).await })
    };
    append(&backend, shard, vec![], 0, 1).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), frontier(1));
}

#[tokio::test]
async fn finalize_leaves_a_sealed_tombstone() {
    let backend = fresh_backend("finalize");
    let shard = ShardId::new();
    let kept = ShardId::new();
    open(&backend, shard).await;
    open(&backend, kept).await;
    let token = IdempotencyToken::new();
    backend
        .compare_and_append(
            shard,
            vec![Update::new(row(1), 0, 1)],
            frontier(0),
            frontier(2),
            token,
            WriteFence::Unfenced,
        )
        .await
        .unwrap()
        .unwrap();
    let waiter = {
        let handle = backend.clone();
        tokio::spawn(async move { handle.wait_for_upper_past(shard, &frontier(10)).await })
    };

    PersistBackend::<u64>::finalize(&backend, shard)
        .await
        .unwrap();
    PersistBackend::<u64>::finalize(&backend, shard)
        .await
        .expect("finalize is idempotent");
    assert_eq!(
        waiter.await.unwrap().unwrap(),
        Antichain::new(),
        "waiters learn the shard is sealed"
    );
    let sealed = ShardFrontiers {
        since: Antichain::new(),
        upper: Antichain::new(),
    };
    let reopened = MemoryBackend::open(backend.name());
    assert_eq!(
        open(&reopened, shard).await,
        sealed,
        "reopening reports sealed"
    );
    assert_eq!(
        PersistBackend::<u64>::list_shards(&reopened).await.unwrap(),
        vec![kept]
    );
    assert_eq!(
        PersistBackend::<u64>::usage(&backend, shard).await.unwrap(),
        Default::default(),
        "data freed"
    );
    let err = backend.snapshot(shard, &1).await.unwrap_err();
    assert!(matches!(
        invalid_usage(err),
        InvalidUsage::AsOfNotReadable { .. }
    ));
    assert_eq!(
        append(&backend, shard, vec![(2, 2, 1)], 2, 3).await,
        Err(UpperMismatch {
            expected: frontier(2),
            current: Antichain::new(),
            earlier_attempts: EarlierAttempts::NotApplied,
        }),
        "nothing can be written"
    );
    let retry = backend
        .compare_and_append(
            shard,
            vec![Update::new(row(1), 0, 1)],
            frontier(0),
            frontier(2),
            token,
            WriteFence::Unfenced,
        )
        .await
        .unwrap();
    assert_eq!(
        retry,
        Ok(()),
        "an append that applied before still answers success"
    );
    assert_eq!(
        backend
            .downgrade_since(shard, &frontier(1), WriteFence::Unfenced)
            .await
            .unwrap(),
        Antichain::new()
    );
}

/// A small deterministic generator, so the model test replays exactly.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

/// Appends, since downgrades and compactions in a seeded order; after each
/// step every readable snapshot and a full fetch equal a model that keeps
/// every update ever appended.
#[tokio::test]
async fn reads_match_a_model_whatever_compaction_has_run() {
    for seed in 0..8 {
        let backend = fresh_backend("model");
        let shard = ShardId::new();
        open(&backend, shard).await;
        let mut rng = Lcg(seed);
        let mut model: Vec<(Row, u64, Diff)> = Vec::new();
        let mut upper = 0u64;
        let mut since = 0u64;
        for _ in 0..120 {
            match rng.next(10) {
                0..=5 => {
                    let new_upper = upper + 1 + rng.next(3);
                    let updates: Vec<_> = (0..rng.next(6))
                        .map(|_| {
                            let time = upper + rng.next(new_upper - upper);
                            let diff = rng.next(5) as i64 - 2;
                            (rng.next(8) as i64, time, diff)
                        })
                        .collect();
                    model.extend(updates.iter().map(|&(v, t, d)| (row(v), t, d)));
                    append(&backend, shard, updates, upper, new_upper)
                        .await
                        .unwrap();
                    upper = new_upper;
                }
                6..=7 => {
                    let requested = rng.next(upper + 2);
                    let result = backend
                        .downgrade_since(shard, &frontier(requested), WriteFence::Unfenced)
                        .await
                        .unwrap();
                    since = since.max(requested);
                    assert_eq!(result, frontier(since));
                }
                _ => {
                    let stats = PersistBackend::<u64>::compact(&backend, shard)
                        .await
                        .unwrap();
                    assert!(stats.updates_after <= stats.updates_before, "{stats:?}");
                    let usage = PersistBackend::<u64>::usage(&backend, shard).await.unwrap();
                    assert_eq!(usage.updates, stats.updates_after);
                    assert_eq!(usage.bytes, stats.bytes_after);
                }
            }
            for as_of in since..upper {
                let mut expected: BTreeMap<Row, Diff> = BTreeMap::new();
                for (row, time, diff) in &model {
                    if *time <= as_of {
                        *expected.entry(row.clone()).or_default() += diff;
                    }
                }
                expected.retain(|_, diff| *diff != 0);
                let expected: Vec<_> = expected.into_iter().collect();
                assert_eq!(
                    backend.snapshot(shard, &as_of).await.unwrap(),
                    expected,
                    "seed {seed} as_of {as_of}"
                );
            }
            let mut expected: BTreeMap<(u64, Row), Diff> = BTreeMap::new();
            for (row, time, diff) in &model {
                *expected
                    .entry(((*time).max(since), row.clone()))
                    .or_default() += diff;
            }
            expected.retain(|_, diff| *diff != 0);
            let expected: Vec<_> = expected
                .into_iter()
                .filter(|((time, _), _)| *time < upper)
                .map(|((time, row), diff)| Update::new(row, time, diff))
                .collect();
            assert_eq!(
                backend
                    .fetch(shard, &frontier(0), &frontier(upper))
                    .await
                    .unwrap(),
                expected,
                "seed {seed}"
            );
        }
    }
}

#[tokio::test]
async fn compaction_shrinks_storage_and_keeps_reads() {
    let backend = fresh_backend("compact");
    let shard = ShardId::new();
    open(&backend, shard).await;
    for time in 0..100u64 {
        let value = (time % 10) as i64;
        append(
            &backend,
            shard,
            vec![(value, time, 1), (value, time, 1)],
            time,
            time + 1,
        )
        .await
        .unwrap();
    }
    let before = backend.snapshot(shard, &99).await.unwrap();
    backend
        .downgrade_since(shard, &frontier(99), WriteFence::Unfenced)
        .await
        .unwrap();
    let stats = PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    assert_eq!(stats.updates_before, 100);
    assert_eq!(stats.updates_after, 10);
    assert!(stats.bytes_after < stats.bytes_before, "{stats:?}");
    assert_eq!(backend.snapshot(shard, &99).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_racing_a_writer_see_whole_appends() {
    let backend = fresh_backend("atomic-reads");
    let shard = ShardId::new();
    open(&backend, shard).await;
    let appends = 300u64;
    let writer = {
        let handle = MemoryBackend::open(backend.name());
        tokio::spawn(async move {
            for time in 0..appends {
                // Two rows per append: a reader that saw part of an append
                // would count them differently.
                append(
                    &handle,
                    shard,
                    vec![(1, time, 1), (2, time, 1)],
                    time,
                    time + 1,
                )
                .await
                .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let reader = MemoryBackend::open(backend.name());
    let mut observed_upper = 0;
    while observed_upper < appends {
        let upper = PersistBackend::<u64>::frontiers(&reader, shard)
            .await
            .unwrap()
            .upper
            .elements()[0];
        assert!(upper >= observed_upper, "the upper moved backward");
        observed_upper = upper;
        if upper == 0 {
            tokio::task::yield_now().await;
            continue;
        }
        let count = upper as i64;
        assert_eq!(
            reader.snapshot(shard, &(upper - 1)).await.unwrap(),
            vec![(row(1), count), (row(2), count)],
            "as of {}",
            upper - 1
        );
    }
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_racing_appends_loses_nothing() {
    let backend = fresh_backend("compact-race");
    let shard = ShardId::new();
    open(&backend, shard).await;
    let appends = 400u64;
    let writer = {
        let handle = MemoryBackend::open(backend.name());
        tokio::spawn(async move {
            for time in 0..appends {
                let value = (time % 7) as i64;
                append(
                    &handle,
                    shard,
                    vec![(value, time, 1), (100, time, 1)],
                    time,
                    time + 1,
                )
                .await
                .unwrap();
                handle
                    .downgrade_since(
                        shard,
                        &frontier(time.saturating_sub(3)),
                        WriteFence::Unfenced,
                    )
                    .await
                    .unwrap();
            }
        })
    };
    let compactor = MemoryBackend::open(backend.name());
    let mut compactions = 0;
    while !writer.is_finished() {
        PersistBackend::<u64>::compact(&compactor, shard)
            .await
            .unwrap();
        compactions += 1;
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert!(compactions > 0);
    let mut expected: Vec<_> = (0..7i64)
        .map(|value| {
            let count = (0..appends)
                .filter(|time| (time % 7) as i64 == value)
                .count();
            (row(value), count as i64)
        })
        .collect();
    expected.push((row(100), appends as i64));
    assert_eq!(
        backend.snapshot(shard, &(appends - 1)).await.unwrap(),
        expected
    );
    let stats = PersistBackend::<u64>::compact(&backend, shard)
        .await
        .unwrap();
    assert!(stats.updates_after <= 8 + 2 * 3, "{stats:?}");
}
