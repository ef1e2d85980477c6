//! The documented panics of the seed interface.

use std::collections::BTreeMap;

use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_types::{ReadPolicy, StorageInstanceId};
use timely::progress::ChangeBatch;

use super::*;
use tidemark_storage_controller::ClusterReplicaLocation;

/// Creating an instance twice panics.
pub async fn create_instance_twice_panics<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_instance(StorageInstanceId(1));
    c.create_instance(StorageInstanceId(1));
}

/// Dropping an unknown instance panics.
pub async fn drop_unknown_instance_panics<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.drop_instance(StorageInstanceId(9));
}

/// Connecting an unknown instance panics.
pub async fn connect_unknown_instance_panics<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.connect_replica(
        StorageInstanceId(9),
        ClusterReplicaLocation::single("nowhere"),
    );
}

/// Cancelling a token another controller prepared would take a hold count
/// negative: a bug, so a panic.
pub async fn cancel_foreign_token_panics<F: BackendFactory>(factory: &F) {
    let mut a = controller(factory).await;
    a.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    a.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(2)))]);
    let token = a.prepare_export(user(5), user(1)).unwrap();
    let other = MemoryFactory::fresh();
    let mut b = controller(&other).await;
    b.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    b.cancel_prepare_export(token);
}

/// A read policy for an unknown id panics.
pub async fn set_read_policy_of_unknown_id_panics<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.set_read_policy(vec![(user(9), ReadPolicy::ValidFrom(frontier(1)))]);
}

/// A write frontier for an unknown id panics.
pub async fn update_write_frontiers_of_unknown_id_panics<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.update_write_frontiers(&[(user(9), frontier(1))]);
}

/// A read capability change for an unknown id panics.
pub async fn update_read_capabilities_of_unknown_id_panics<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    let mut changes = BTreeMap::from([(user(9), ChangeBatch::new_from(1u64, 1))]);
    c.update_read_capabilities(&mut changes);
}

/// Releasing a hold that was never taken panics, naming the collection.
pub async fn negative_read_capability_panics<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let mut changes = BTreeMap::from([(user(1), ChangeBatch::new_from(7u64, -1))]);
    c.update_read_capabilities(&mut changes);
}
