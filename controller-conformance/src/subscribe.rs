//! Subscriptions.

use futures::StreamExt;
use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_types::{ReadPolicy, StorageError};

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

/// While a subscription lives the since stays at what it has yet to read;
/// dropping it releases the hold.
pub async fn subscription_holds_the_since_until_dropped<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(&mut c, user(1), vec![update(1, "a", 0, 1)], 4).await;
    let mut subscription = c.subscribe(user(1), 1).unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(100)))]);
    assert_eq!(since_of(&c, user(1)), frontier(1));
    // After the snapshot and catching up to the upper the hold moves to 4.
    next_event(&mut subscription).await;
    next_event(&mut subscription).await;
    assert_eq!(
        next_event(&mut subscription).await,
        SubscriptionEvent::Progress(frontier(4))
    );
    process_until(&mut c, |c| since_of(c, user(1)) == frontier(4)).await;
    drop(subscription);
    process_until(&mut c, |c| since_of(c, user(1)) == frontier(100)).await;
    assert_eq!(
        c.collection(user(1))
            .unwrap()
            .read_capabilities
            .count_for(&4),
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
