//! Subscriptions.

use futures::StreamExt;
use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_conformance::faults::{FaultyBackend, Operation};
use tidemark_storage_types::{ChunkLimit, PersistBackend, ReadPolicy, StorageError};

use super::*;
use tidemark_storage_controller::{Subscription, SubscriptionEvent};

async fn next_event(subscription: &mut Subscription<u64>) -> SubscriptionEvent<u64> {
    within_a_minute(subscription.next(), "no subscription event")
        .await
        .expect("stream open")
        .expect("no error")
}

/// The snapshot at the as_of, then each later batch and its progress.
pub async fn subscription_streams_snapshot_then_changes<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(
        &mut c,
        user(1),
        vec![update(1, "a", 0, 1), update(2, "b", 2, 1)],
        4,
    )
    .await;
    let mut subscription = c.subscribe(user(1), 2).unwrap();
    assert_eq!(subscription.id(), user(1));
    assert_eq!(
        next_event(&mut subscription).await,
        SubscriptionEvent::Updates(vec![update(1, "a", 2, 1), update(2, "b", 2, 1)])
    );
    assert_eq!(
        next_event(&mut subscription).await,
        SubscriptionEvent::Progress(frontier(3))
    );
    assert_eq!(
        next_event(&mut subscription).await,
        SubscriptionEvent::Progress(frontier(4))
    );
    append_and_settle(&mut c, user(1), vec![update(1, "a", 5, -1)], 7).await;
    assert_eq!(
        next_event(&mut subscription).await,
        SubscriptionEvent::Updates(vec![update(1, "a", 5, -1)])
    );
    assert_eq!(
        next_event(&mut subscription).await,
        SubscriptionEvent::Progress(frontier(7))
    );
    // Sealing ends the stream.
    let receiver = c.append(vec![(user(1), vec![], u64::MAX)]).unwrap();
    within_a_minute(receiver, "append never resolved")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next_event(&mut subscription).await,
        SubscriptionEvent::Progress(frontier(u64::MAX))
    );
}

/// While a subscription lives the since stays just before what it has yet
/// to read (so a fetch advancing times by the since cannot bring what it
/// already delivered into its next range); dropping it releases the hold.
pub async fn subscription_holds_the_since_until_dropped<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(&mut c, user(1), vec![update(1, "a", 0, 1)], 4).await;
    let mut subscription = c.subscribe(user(1), 1).unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(100)))]);
    assert_eq!(since_of(&c, user(1)), frontier(1));
    // After the snapshot and catching up to the upper 4 the hold moves to
    // 3, just before what it has yet to read.
    next_event(&mut subscription).await;
    next_event(&mut subscription).await;
    assert_eq!(
        next_event(&mut subscription).await,
        SubscriptionEvent::Progress(frontier(4))
    );
    process_until(&mut c, |c| since_of(c, user(1)) == frontier(3)).await;
    drop(subscription);
    process_until(&mut c, |c| since_of(c, user(1)) == frontier(100)).await;
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .read_capabilities
            .count_for(&3),
        0
    );
}

/// Unknown ids and reads before the since are refused up front.
pub async fn subscription_rejects_bad_requests<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(5)))]);
    assert_eq!(
        c.subscribe(user(2), 5).unwrap_err(),
        StorageError::IdentifierMissing(user(2))
    );
    assert_eq!(
        c.subscribe(user(1), 4).unwrap_err(),
        StorageError::ReadBeforeSince(user(1))
    );
}

/// A subscription whose shard a newer controller reclaims ends with
/// `CollectionDropped`, not as if the collection were sealed.
pub async fn subscription_reports_a_shard_reclaimed_meanwhile<F: BackendFactory>(factory: &F) {
    let mut a = controller(factory).await;
    a.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(&mut a, user(1), vec![update(1, "a", 0, 1)], 2).await;
    let mut subscription = a.subscribe(user(1), 1).unwrap();
    assert_eq!(
        next_event(&mut subscription).await,
        SubscriptionEvent::Updates(vec![update(1, "a", 1, 1)])
    );
    let mut b = controller(factory).await;
    b.try_reconcile_state().await.unwrap();
    loop {
        match within_a_minute(subscription.recv(), "subscription never ended").await {
            Some(Ok(SubscriptionEvent::Progress(upper))) => {
                assert!(!upper.is_empty(), "reported as sealed")
            }
            Some(Ok(other)) => panic!("unexpected event {other:?}"),
            Some(Err(err)) => {
                assert_eq!(err, StorageError::CollectionDropped(user(1)));
                break;
            }
            None => panic!("the stream ended without an error"),
        }
    }
    assert!(subscription.recv().await.is_none());
}

/// Collects a subscription's updates until its progress reaches `upper`,
/// counting the update events.
async fn updates_until(
    subscription: &mut Subscription<u64>,
    upper: u64,
    updates: &mut Vec<Update<u64>>,
) -> usize {
    let mut events = 0;
    loop {
        match next_event(subscription).await {
            SubscriptionEvent::Updates(batch) => {
                assert!(!batch.is_empty(), "an empty update event");
                events += 1;
                updates.extend(batch);
            }
            SubscriptionEvent::Progress(progress) if progress == frontier(upper) => {
                return events;
            }
            SubscriptionEvent::Progress(_) => {}
        }
    }
}

/// Rows `0..count` at `time`, each with diff 1.
fn many_rows(count: i64, time: u64) -> Vec<Update<u64>> {
    (0..count).map(|id| update(id, "many", time, 1)).collect()
}

/// A snapshot larger than one read chunk is delivered as several update
/// events, which together are the snapshot.
pub async fn subscription_delivers_a_large_snapshot_in_several_events<F: BackendFactory>(
    factory: &F,
) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let count = 3 * ChunkLimit::DEFAULT.max_entries.get() as i64 / 2;
    append_and_settle(&mut c, user(1), many_rows(count, 0), 2).await;
    let mut subscription = c.subscribe(user(1), 1).unwrap();
    let mut delivered = Vec::new();
    let events = updates_until(&mut subscription, 2, &mut delivered).await;
    assert!(
        events >= 2,
        "a snapshot of {count} rows came as {events} event(s)"
    );
    let mut expected: Vec<Update<u64>> = many_rows(count, 1);
    expected.sort_by(|left, right| left.row.cmp(&right.row));
    assert_eq!(delivered, expected);
}

/// With the since allowed to follow the subscription, each fetch still
/// delivers only the new updates: none of those already delivered comes
/// again advanced to the fetch's lower.
pub async fn subscription_never_redelivers_what_the_since_advances_into_its_range<
    F: BackendFactory,
>(
    factory: &F,
) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(&mut c, user(1), vec![update(1, "a", 0, 1)], 2).await;
    let mut subscription = c.subscribe(user(1), 1).unwrap();
    // Nothing but the subscription holds the since back.
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(1000)))]);
    let mut delivered = Vec::new();
    updates_until(&mut subscription, 2, &mut delivered).await;
    for time in 2..6u64 {
        // Let the since reach what the subscription holds before the next
        // write, so the next fetch is read at that since.
        process_until(&mut c, |c| {
            timely::PartialOrder::less_equal(&frontier(time - 1), &since_of(c, user(1)))
        })
        .await;
        append_and_settle(&mut c, user(1), vec![update(2, "b", time, 1)], time + 1).await;
        updates_until(&mut subscription, time + 1, &mut delivered).await;
    }
    let mut expected = vec![update(1, "a", 1, 1)];
    expected.extend((2..6u64).map(|time| update(2, "b", time, 1)));
    assert_eq!(
        delivered, expected,
        "a fetch re-delivered updates the since advanced into its range"
    );
}

/// Reads failing part-way (an indeterminate error after some chunks) are
/// read again without delivering anything twice: the subscription's
/// snapshot and fetches, and the controller's snapshot, are exact.
pub async fn subscription_resumes_failed_reads_without_redelivering<F: BackendFactory>(
    factory: &F,
) {
    let faulty = FaultyBackend::new(factory.open_handle().await, 5)
        .with_mid_stream_rate(0.3)
        .expect("valid rate");
    let mut c = Controller::new(faulty, test_config()).await.unwrap();
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let count = 3 * ChunkLimit::DEFAULT.max_entries.get() as i64;
    append_and_settle(&mut c, user(1), many_rows(count, 0), 2).await;
    let mut subscription = c.subscribe(user(1), 1).unwrap();
    let mut delivered = Vec::new();
    updates_until(&mut subscription, 2, &mut delivered).await;
    let retracted: Vec<Update<u64>> = (0..count).map(|id| update(id, "many", 2, -1)).collect();
    append_and_settle(&mut c, user(1), retracted, 3).await;
    updates_until(&mut subscription, 3, &mut delivered).await;

    let mut expected = many_rows(count, 1);
    expected.sort_by(|left, right| left.row.cmp(&right.row));
    let mut retractions: Vec<Update<u64>> =
        (0..count).map(|id| update(id, "many", 2, -1)).collect();
    retractions.sort_by(|left, right| left.row.cmp(&right.row));
    expected.extend(retractions);
    assert_eq!(delivered.len(), expected.len(), "updates lost or repeated");
    assert_eq!(delivered, expected);

    let snapshot = c.snapshot(user(1), 1).await.unwrap();
    assert_eq!(snapshot.len(), count as usize, "rows lost or repeated");
    let backend = c.backend();
    let failed = backend.counts(Operation::SnapshotStream).failed_mid_stream
        + backend.counts(Operation::FetchStream).failed_mid_stream;
    assert!(
        failed > 0,
        "no read failed part-way: the test proves nothing"
    );
    assert!(
        PersistBackend::<u64>::list_shards(backend.inner())
            .await
            .is_ok()
    );
}
