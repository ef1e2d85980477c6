//! Read holds: a source holding its collection through the controller's
//! `ReadHold` keeps the since at its progress while it runs, and lets it
//! advance after.

use std::sync::Arc;
use std::time::Duration;

use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_controller::{Controller, ControllerConfig, StorageController};
use tidemark_storage_dataflow::{ShardSource, SharedReadHold};
use tidemark_storage_types::{
    CollectionDescription, GlobalId, PersistBackend, ReadPolicy, RelationDesc, ScalarType,
    StorageError, Update,
};
use timely::PartialOrder;
use timely::progress::Antichain;
use tokio::runtime::Handle;

use crate::harness::{HANG_GUARD, RunningDataflow};
use crate::support::{Captured, at, consolidated_with_times, kv_row, test_retry};

type TestController<F> = Controller<u64, <F as BackendFactory>::Backend>;

async fn controller<F: BackendFactory>(factory: &F) -> TestController<F> {
    let config = ControllerConfig {
        backend_retries: 20,
        initial_backoff: Duration::from_millis(1),
        ..ControllerConfig::default()
    };
    Controller::new(factory.open_handle().await, config)
        .await
        .expect("controller starts")
}

fn table() -> CollectionDescription<u64> {
    CollectionDescription::table(
        RelationDesc::empty()
            .with_column("key", ScalarType::Int64.nullable(false))
            .with_column("value", ScalarType::Int64.nullable(false)),
    )
}

fn since_of<B: PersistBackend<u64>>(
    controller: &Controller<u64, B>,
    id: GlobalId,
) -> Antichain<u64> {
    controller
        .collection(id)
        .expect("collection exists")
        .read_capabilities
        .frontier()
        .to_owned()
}

async fn append_through<B: PersistBackend<u64>>(
    controller: &mut Controller<u64, B>,
    id: GlobalId,
    updates: Vec<Update<u64>>,
    new_upper: u64,
) {
    let receiver = controller
        .append(vec![(id, updates, new_upper)])
        .expect("append accepted");
    tokio::time::timeout(HANG_GUARD, receiver)
        .await
        .expect("append resolves")
        .expect("append answered")
        .expect("append succeeds");
}

/// Runs the controller's `ready`/`process` until `condition` holds.
async fn process_until<B: PersistBackend<u64>>(
    controller: &mut Controller<u64, B>,
    what: &str,
    mut condition: impl FnMut(&Controller<u64, B>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !condition(controller) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: did not happen within {HANG_GUARD:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(20), controller.ready()).await;
        controller.process().await.expect("process");
    }
}

/// While a source holding the collection through a `ReadHold` runs, the
/// collection's since follows the source's progress (just before what it
/// has yet to read) and never passes it,
/// whatever the read policy allows; once the dataflow is dropped the hold
/// is released and the since advances to the policy's.
pub async fn read_hold_keeps_the_since_at_the_source_progress<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    let id = GlobalId::User(1);
    c.create_collections(vec![(id, table())])
        .await
        .expect("create");
    append_through(&mut c, id, vec![Update::new(kv_row(1, 1), 0, 1)], 4).await;
    let hold = c.acquire_read_hold(id, 1).expect("hold");
    assert_eq!(hold.time(), at(1));
    c.set_read_policy(vec![(id, ReadPolicy::ValidFrom(at(100)))]);
    assert_eq!(
        since_of(&c, id),
        at(1),
        "the hold keeps the since at its as_of"
    );
    let shard = c
        .collection(id)
        .expect("collection")
        .collection_metadata
        .data_shard;
    let backend = Arc::new(factory.open_handle().await);
    let shared_hold = SharedReadHold::new(hold, 1);
    let (runtime, reader) = (Handle::current(), Arc::clone(&backend));
    let running = RunningDataflow::start(1, move |scope| {
        let (_, status) = ShardSource::new(runtime.clone(), Arc::clone(&reader), shard, 1)
            .with_read_hold(shared_hold.clone())
            .with_retry(test_retry())
            .build(scope);
        vec![status]
    });
    for (upper, value) in [(4u64, 1i64), (8, 2), (12, 3)] {
        if upper > 4 {
            append_through(
                &mut c,
                id,
                vec![Update::new(kv_row(2, value), upper - 2, 1)],
                upper,
            )
            .await;
        }
        process_until(&mut c, "the since follows the source", |c| {
            let since = since_of(c, id);
            let progress = running.statuses().first().map(|status| status.frontier());
            if let Some(progress) = &progress {
                assert!(
                    PartialOrder::less_equal(&since, progress),
                    "the since {since:?} passed the source's progress {progress:?}"
                );
            }
            since == at(upper - 1)
        })
        .await;
    }
    running.stop().await;
    process_until(&mut c, "the since advances once the source is gone", |c| {
        since_of(c, id) == at(100)
    })
    .await;
}

/// A source whose read hold alone keeps the since back emits each update
/// once: with the since as far as the hold lets it go, no fetch brings an
/// update already emitted back into its range at the since.
pub async fn read_hold_never_lets_the_source_reemit_what_the_since_advances<F: BackendFactory>(
    factory: &F,
) {
    let mut c = controller(factory).await;
    let id = GlobalId::User(1);
    c.create_collections(vec![(id, table())])
        .await
        .expect("create");
    append_through(&mut c, id, vec![Update::new(kv_row(1, 1), 0, 1)], 4).await;
    let hold = c.acquire_read_hold(id, 1).expect("hold");
    c.set_read_policy(vec![(id, ReadPolicy::ValidFrom(at(100)))]);
    let shard = c
        .collection(id)
        .expect("collection")
        .collection_metadata
        .data_shard;
    let backend = Arc::new(factory.open_handle().await);
    let shared_hold = SharedReadHold::new(hold, 1);
    let captured: Captured = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (runtime, reader, sink) = (
        Handle::current(),
        Arc::clone(&backend),
        Arc::clone(&captured),
    );
    let running = RunningDataflow::start(1, move |scope| {
        let (collection, status) = ShardSource::new(runtime.clone(), Arc::clone(&reader), shard, 1)
            .with_read_hold(shared_hold.clone())
            .with_retry(test_retry())
            .build(scope);
        let sink = Arc::clone(&sink);
        collection.inspect(move |update| sink.lock().expect("captured lock").push(update.clone()));
        vec![status]
    });
    for (upper, value) in [(4u64, 1i64), (6, 2), (8, 3), (10, 4)] {
        if upper > 4 {
            append_through(
                &mut c,
                id,
                vec![Update::new(kv_row(2, value), upper - 1, 1)],
                upper,
            )
            .await;
        }
        // The since goes as far as the hold lets it before the next append.
        process_until(&mut c, "the since follows the source", |c| {
            PartialOrder::less_equal(&at(upper - 1), &since_of(c, id))
        })
        .await;
    }
    running.stop().await;
    let mut expected = vec![((1, kv_row(1, 1)), 1)];
    expected.extend((2..5i64).map(|value| ((value as u64 * 2 + 1, kv_row(2, value)), 1)));
    expected.sort();
    assert_eq!(
        consolidated_with_times(&captured),
        expected,
        "the source emitted updates twice, advanced to the since"
    );
}

/// `acquire_read_hold` refuses an unknown collection and a time before the
/// since.
pub async fn acquire_read_hold_rejects_bad_requests<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    let id = GlobalId::User(1);
    c.create_collections(vec![(id, table())])
        .await
        .expect("create");
    c.set_read_policy(vec![(id, ReadPolicy::ValidFrom(at(5)))]);
    assert_eq!(
        c.acquire_read_hold(GlobalId::User(2), 5).unwrap_err(),
        StorageError::IdentifierMissing(GlobalId::User(2))
    );
    assert_eq!(
        c.acquire_read_hold(id, 4).unwrap_err(),
        StorageError::ReadBeforeSince(id)
    );
    let hold = c.acquire_read_hold(id, 5).expect("hold at the since");
    hold.downgrade(&at(3));
    assert_eq!(hold.time(), at(5), "a hold never moves backward");
    hold.release();
    assert_eq!(hold.time(), Antichain::new());
}
