//! Writing ledger groups through the public `Controller` API, as the
//! restart scenario and the crash-loop writer do.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tidemark_storage_controller::{Controller, ControllerConfig, StorageController};
use tidemark_storage_types::{
    CollectionDescription, Diff, GlobalId, PersistBackend, Row, StorageError,
};

use crate::ledger::{Append, group_relation};

/// The tables every reliability writer appends to.
pub const COLLECTIONS: [u64; 2] = [1, 2];

/// How many times attaching a controller is attempted.
const ATTACH_ATTEMPTS: usize = 20;

/// The id of table `collection`.
#[must_use]
pub fn table_id(collection: u64) -> GlobalId {
    GlobalId::User(collection)
}

/// Starts a controller on `backend` and creates (or, on storage a former
/// controller used, reattaches to) the [`COLLECTIONS`].
///
/// # Errors
///
/// The controller could not start or create the tables.
pub async fn attach<B: PersistBackend<u64>>(
    backend: B,
    config: ControllerConfig,
) -> Result<Controller<u64, B>, StorageError> {
    let mut controller = Controller::new(backend, config).await?;
    let tables = COLLECTIONS
        .iter()
        .map(|collection| {
            (
                table_id(*collection),
                CollectionDescription::table(group_relation()),
            )
        })
        .collect();
    controller.create_collections(tables).await?;
    Ok(controller)
}

/// [`attach`], retried with a fresh backend from `make_backend` while it
/// fails (the network may be breaking it).
///
/// # Panics
///
/// If every attempt fails.
pub async fn attach_with_retries<B, F, Fut>(
    mut make_backend: F,
    config: ControllerConfig,
) -> Controller<u64, B>
where
    B: PersistBackend<u64>,
    F: FnMut() -> Fut,
    Fut: Future<Output = B>,
{
    let mut last = None;
    for _ in 0..ATTACH_ATTEMPTS {
        match attach(make_backend().await, config.clone()).await {
            Ok(controller) => return controller,
            Err(err) => {
                last = Some(err);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    panic!("could not attach a controller in {ATTACH_ATTEMPTS} attempts: {last:?}")
}

/// The write frontier of each of the [`COLLECTIONS`] (`None` if sealed).
///
/// # Panics
///
/// If the controller does not know a collection (it was not attached).
#[must_use]
pub fn uppers<B: PersistBackend<u64>>(controller: &Controller<u64, B>) -> BTreeMap<u64, u64> {
    COLLECTIONS
        .iter()
        .filter_map(|collection| {
            let state = controller
                .collection(table_id(*collection))
                .expect("an attached collection");
            state
                .write_frontier
                .as_option()
                .map(|upper| (*collection, *upper))
        })
        .collect()
}

/// Appends `append`'s group and waits until the controller reports it
/// durable (or failed).
///
/// # Errors
///
/// What the controller reported.
pub async fn append_group<B: PersistBackend<u64>>(
    controller: &mut Controller<u64, B>,
    append: &Append,
) -> Result<(), StorageError> {
    let receiver = controller.append(vec![(
        table_id(append.collection),
        append.updates(),
        append.upper,
    )])?;
    match receiver.await {
        Ok(outcome) => outcome,
        Err(_) => Err(StorageError::WriteTaskStopped),
    }
}

/// The contents of `collection` at every time below its upper.
///
/// # Errors
///
/// What the controller reported.
pub async fn contents<B: PersistBackend<u64>>(
    controller: &mut Controller<u64, B>,
    collection: u64,
) -> Result<Vec<(Row, Diff)>, StorageError> {
    match uppers(controller).get(&collection) {
        Some(0) => Ok(Vec::new()),
        Some(upper) => controller.snapshot(table_id(collection), upper - 1).await,
        None => Err(StorageError::CollectionDropped(table_id(collection))),
    }
}
