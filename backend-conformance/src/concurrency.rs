//! Concurrency through separate handles: racing writers, sharing, and
//! linearizable reads.

use std::sync::Arc;
use tidemark_storage_types::WriteFence;

use tidemark_storage_types::{
    BackendError, IdempotencyToken, InvalidUsage, PersistBackend, Update,
};
use tokio::sync::Barrier;

use crate::BackendFactory;
use crate::support::{
    append_ok, at, frontiers, frontiers_of, keyed_row, model_snapshot, open_new_shard, snapshot_of,
    update,
};

/// How many times a racing writer retries an attempt the backend reported
/// as definitely not applied (a serialization conflict inside the service).
const DETERMINATE_RETRIES: usize = 100;

/// One attempt of a racing writer: retried only while the backend says it
/// definitely did not happen.
async fn race_once<B: PersistBackend<u64>>(
    backend: &B,
    shard: tidemark_storage_types::ShardId,
    updates: Vec<Update<u64>>,
    round: u64,
) -> Result<(), tidemark_storage_types::UpperMismatch<u64>> {
    let token = IdempotencyToken::new();
    for _ in 0..DETERMINATE_RETRIES {
        match backend
            .compare_and_append(
                shard,
                updates.clone(),
                at(round),
                at(round + 1),
                token,
                WriteFence::Unfenced,
            )
            .await
        {
            Ok(outcome) => return outcome,
            Err(err @ BackendError::Determinate(_)) => {
                eprintln!("racing writer retries a determinate failure: {err}");
            }
            Err(err) => panic!("racing append in round {round} failed: {err}"),
        }
    }
    panic!("racing append in round {round} failed determinately {DETERMINATE_RETRIES} times")
}

/// Eight writers on separate handles and tasks race, 50 rounds, each round
/// with the same expected upper: exactly one wins every round, the losers
/// see the winner's upper, and the final contents are exactly the winners'
/// updates.
pub async fn racing_writers_exactly_one_wins_each_round<F: BackendFactory>(factory: &F) {
    const WRITERS: usize = 8;
    const ROUNDS: u64 = 50;
    let mut handles = Vec::new();
    for _ in 0..WRITERS {
        handles.push(Arc::new(factory.open_handle().await));
    }
    let shard = open_new_shard(handles[0].as_ref()).await;
    let mut winners_updates = Vec::new();

    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for (writer, handle) in handles.iter().enumerate() {
            let handle = Arc::clone(handle);
            let barrier = Arc::clone(&barrier);
            let updates = vec![update(
                keyed_row(writer as i64, &format!("round {round}")),
                round,
                1,
            )];
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let outcome = race_once(handle.as_ref(), shard, updates.clone(), round).await;
                (writer, updates, outcome)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (writer, updates, outcome) = task.await.expect("racing writer panicked");
            match outcome {
                Ok(()) => {
                    winners.push(writer);
                    winners_updates.extend(updates);
                }
                Err(mismatch) => {
                    assert_eq!(mismatch.expected, at(round));
                    assert_eq!(
                        mismatch.current,
                        at(round + 1),
                        "a loser of round {round} must see the winner's upper"
                    );
                }
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one of {WRITERS} racing writers wins, winners={winners:?}"
        );
    }

    assert_eq!(
        frontiers_of(handles[1].as_ref(), shard).await,
        frontiers(at(0), at(ROUNDS))
    );
    assert_eq!(
        snapshot_of(handles[2].as_ref(), shard, ROUNDS - 1).await,
        model_snapshot(&winners_updates, ROUNDS - 1),
        "the contents are exactly the winners' updates"
    );
}

/// Handles on one factory see each other's writes at once: each handle
/// appends in turn, continuing from the upper the other one wrote.
pub async fn handles_see_each_others_writes<F: BackendFactory>(factory: &F) {
    let handles = [factory.open_handle().await, factory.open_handle().await];
    let shard = open_new_shard(&handles[0]).await;
    handles[1]
        .open(shard)
        .await
        .expect("open through the second handle");
    let mut written = Vec::new();
    for step in 0..6u64 {
        let writer = &handles[(step % 2) as usize];
        let reader = &handles[((step + 1) % 2) as usize];
        let updates = vec![update(keyed_row(step as i64, "step"), step, 1)];
        append_ok(writer, shard, updates.clone(), at(step), at(step + 1)).await;
        written.extend(updates);
        assert_eq!(
            frontiers_of(reader, shard).await,
            frontiers(at(0), at(step + 1))
        );
        assert_eq!(
            snapshot_of(reader, shard, step).await,
            model_snapshot(&written, step)
        );
    }
}

/// Writers on separate shards (and handles) never interfere: all their
/// appends succeed and each shard holds exactly its own.
pub async fn concurrent_writers_on_separate_shards_all_succeed<F: BackendFactory>(factory: &F) {
    const WRITERS: i64 = 6;
    const APPENDS: u64 = 8;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let backend = factory.open_handle().await;
        tasks.push(tokio::spawn(async move {
            let shard = open_new_shard(&backend).await;
            let mut written = Vec::new();
            for step in 0..APPENDS {
                let updates = vec![update(keyed_row(writer, "own"), step, 1)];
                append_ok(&backend, shard, updates.clone(), at(step), at(step + 1)).await;
                written.extend(updates);
            }
            (shard, written)
        }));
    }
    let reader = factory.open_handle().await;
    for task in tasks {
        let (shard, written) = task.await.expect("writer panicked");
        assert_eq!(
            frontiers_of(&reader, shard).await,
            frontiers(at(0), at(APPENDS))
        );
        assert_eq!(
            snapshot_of(&reader, shard, APPENDS - 1).await,
            model_snapshot(&written, APPENDS - 1)
        );
    }
}

/// Reads are linearizable with appends: a reader on another handle that
/// sees upper `[u]` then reads at `u - 1` sees every append below `u`, whole,
/// while a writer keeps appending.
pub async fn reads_below_an_observed_upper_see_every_append<F: BackendFactory>(factory: &F) {
    const APPENDS: u64 = 20;
    const ROWS_PER_APPEND: i64 = 5;
    let writer = factory.open_handle().await;
    let reader = factory.open_handle().await;
    let shard = open_new_shard(&writer).await;

    let mut writer_done = false;
    let mut writing = tokio::spawn(async move {
        for step in 0..APPENDS {
            let updates = (0..ROWS_PER_APPEND)
                .map(|row| update(keyed_row(row, "counter"), step, 1))
                .collect();
            append_ok(&writer, shard, updates, at(step), at(step + 1)).await;
        }
    });

    loop {
        let upper = *frontiers_of(&reader, shard)
            .await
            .upper
            .as_option()
            .expect("the writer never seals");
        if upper > 0 {
            let snapshot = snapshot_of(&reader, shard, upper - 1).await;
            let expected: Vec<_> = (0..ROWS_PER_APPEND)
                .map(|row| (keyed_row(row, "counter"), upper as i64))
                .collect();
            assert_eq!(
                snapshot,
                expected,
                "a read at {} after observing upper [{upper}] must see all {upper} appends whole",
                upper - 1
            );
        }
        if upper == APPENDS {
            break;
        }
        // A writer that died would leave this loop waiting forever: surface
        // its panic instead. (One that finished normally has written all.)
        if !writer_done && writing.is_finished() {
            (&mut writing).await.expect("writer panicked");
            writer_done = true;
        }
        tokio::task::yield_now().await;
    }
    if !writer_done {
        writing.await.expect("writer panicked");
    }
}

/// The update the compaction race writes at `step`: rows that overlap and
/// cancel across steps, so compaction has work to do.
fn racing_compaction_update(step: u64) -> Vec<Update<u64>> {
    vec![
        update(keyed_row((step % 3) as i64, "churn"), step, 1),
        update(keyed_row(((step + 1) % 3) as i64, "churn"), step, -1),
        update(keyed_row(step as i64, "kept"), step, 1),
    ]
}

/// Physical compaction running concurrently with appends, since downgrades
/// and reads (each on its own handle and task) is invisible: every read at a
/// readable time equals the model, during and after the race.
pub async fn compaction_racing_appends_is_invisible<F: BackendFactory>(factory: &F) {
    const APPENDS: u64 = 15;
    let writer = factory.open_handle().await;
    let compactor = factory.open_handle().await;
    let reader = factory.open_handle().await;
    let shard = open_new_shard(&writer).await;
    let model_at = |as_of: u64, upper: u64| {
        let written: Vec<_> = (0..upper).flat_map(racing_compaction_update).collect();
        model_snapshot(&written, as_of)
    };

    let mut writer_done = false;
    let mut writing = tokio::spawn(async move {
        for step in 0..APPENDS {
            let updates = racing_compaction_update(step);
            append_ok(&writer, shard, updates, at(step), at(step + 1)).await;
            writer
                .downgrade_since(shard, &at(step.saturating_sub(1)), WriteFence::Unfenced)
                .await
                .expect("downgrade_since");
        }
    });
    let compacting = tokio::spawn(async move {
        let mut passes = 0u32;
        loop {
            let upper = frontiers_of(&compactor, shard).await.upper;
            compactor.compact(shard).await.expect("compact");
            passes += 1;
            if upper == at(APPENDS) {
                return passes;
            }
            tokio::task::yield_now().await;
        }
    });

    loop {
        let upper = *frontiers_of(&reader, shard)
            .await
            .upper
            .as_option()
            .expect("the writer never seals");
        // The writer keeps the since at upper - 2 when it has appended, but
        // it may append again between this read of the upper and the
        // snapshot, moving the since past upper - 1. The backend then rightly
        // refuses the read, and the loop reads the upper again.
        if upper > 0 {
            match reader.snapshot(shard, &(upper - 1)).await {
                Ok(contents) => assert_eq!(
                    contents,
                    model_at(upper - 1, upper),
                    "read at {} during the race",
                    upper - 1
                ),
                Err(BackendError::InvalidUsage(InvalidUsage::AsOfNotReadable { .. })) => {}
                Err(err) => panic!("snapshot at {} during the race failed: {err}", upper - 1),
            }
        }
        if upper == APPENDS {
            break;
        }
        // A writer that died would leave this loop waiting forever: surface
        // its panic instead. (One that finished normally has written all.)
        if !writer_done && writing.is_finished() {
            (&mut writing).await.expect("writer panicked");
            writer_done = true;
        }
        tokio::task::yield_now().await;
    }
    if !writer_done {
        writing.await.expect("writer panicked");
    }
    let passes = compacting.await.expect("compactor panicked");
    assert!(passes >= 1);

    reader.compact(shard).await.expect("final compact");
    let since = APPENDS - 2;
    assert_eq!(
        frontiers_of(&reader, shard).await,
        frontiers(at(since), at(APPENDS))
    );
    for as_of in since..APPENDS {
        assert_eq!(
            snapshot_of(&reader, shard, as_of).await,
            model_at(as_of, APPENDS),
            "read at {as_of} after the race"
        );
    }
}
