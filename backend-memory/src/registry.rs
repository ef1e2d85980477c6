//! The process-wide registry of named memory stores, and the shards of one
//! store.
//!
//! A [`Store`] is what a name (`memory://NAME`) denotes: every handle opened
//! on the name shares it. The registry keeps each store for the life of the
//! process, so dropping every handle and opening the name again finds the
//! same shards, as a durable backend would (see
//! `docs/decisions/040-memory-registry-lifetime.md`).
//!
//! A store holds shards of any timestamp type: each shard is stored
//! type-erased and checked against the caller's timestamp type on every
//! access.

use std::any::{Any, type_name};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use tidemark_storage_types::sync::lock;
use tidemark_storage_types::{
    BackendError, DeterminateKind, InvalidUsage, ShardId, StorageTimestamp,
};

use crate::shard::Shard;

/// Every named store of the process.
static REGISTRY: LazyLock<Mutex<HashMap<String, Arc<Store>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The store registered under `name`, created empty on first use.
pub fn named_store(name: &str) -> Arc<Store> {
    // The map is only read or extended under the lock, never left half
    // updated, so a poisoned lock still guards a consistent map.
    let mut registry = lock(&REGISTRY);
    Arc::clone(registry.entry(name.to_string()).or_default())
}

/// A shard of some timestamp type.
trait ErasedShard: Any + Send + Sync {
    fn is_finalized(&self) -> bool;
    fn timestamp_type(&self) -> &'static str;
}

impl<T: StorageTimestamp> ErasedShard for Shard<T> {
    fn is_finalized(&self) -> bool {
        Shard::is_finalized(self)
    }

    fn timestamp_type(&self) -> &'static str {
        type_name::<T>()
    }
}

/// The shards under one name.
///
/// Lock order: the store's map lock is never taken while a shard's state
/// lock is held.
#[derive(Default)]
pub struct Store {
    shards: Mutex<BTreeMap<ShardId, Arc<dyn ErasedShard>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("shards", &self.lock_shards().len())
            .finish()
    }
}

impl Store {
    fn lock_shards(&self) -> MutexGuard<'_, BTreeMap<ShardId, Arc<dyn ErasedShard>>> {
        // As for the registry: the map is never left half updated.
        lock(&self.shards)
    }

    /// The shard, created with `since = upper = [minimum]` if absent.
    ///
    /// # Errors
    ///
    /// A determinate error if the shard exists with another timestamp type.
    pub fn open_shard<T: StorageTimestamp>(
        &self,
        shard_id: ShardId,
    ) -> Result<Arc<Shard<T>>, BackendError> {
        let erased = Arc::clone(
            self.lock_shards()
                .entry(shard_id)
                .or_insert_with(|| Arc::new(Shard::<T>::new(shard_id))),
        );
        downcast(shard_id, erased)
    }

    /// The shard, which must have been opened.
    ///
    /// # Errors
    ///
    /// [`InvalidUsage::UnknownShard`] if it never was; a determinate error
    /// if it exists with another timestamp type.
    pub fn shard<T: StorageTimestamp>(
        &self,
        shard_id: ShardId,
    ) -> Result<Arc<Shard<T>>, BackendError> {
        let erased = self
            .lock_shards()
            .get(&shard_id)
            .cloned()
            .ok_or(InvalidUsage::UnknownShard { shard: shard_id })?;
        downcast(shard_id, erased)
    }

    /// Every shard opened and not finalized, sorted.
    pub fn live_shards(&self) -> Vec<ShardId> {
        let shards: Vec<_> = self
            .lock_shards()
            .iter()
            .map(|(id, shard)| (*id, Arc::clone(shard)))
            .collect();
        // Checked after releasing the map lock: `is_finalized` takes the
        // shard's lock.
        shards
            .into_iter()
            .filter(|(_, shard)| !shard.is_finalized())
            .map(|(id, _)| id)
            .collect()
    }
}

fn downcast<T: StorageTimestamp>(
    shard_id: ShardId,
    erased: Arc<dyn ErasedShard>,
) -> Result<Arc<Shard<T>>, BackendError> {
    let stored_type = erased.timestamp_type();
    let any: Arc<dyn Any + Send + Sync> = erased;
    any.downcast::<Shard<T>>().map_err(|_| {
        BackendError::determinate(
            DeterminateKind::Other,
            format!(
                "shard holds another timestamp type: shard={shard_id} stored={stored_type} requested={}",
                type_name::<T>()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_denotes_one_store() {
        let name = format!("registry-test-{}", ShardId::new());
        let first = named_store(&name);
        let second = named_store(&name);
        assert!(Arc::ptr_eq(&first, &second));
        let other = named_store(&format!("{name}-other"));
        assert!(!Arc::ptr_eq(&first, &other));

        let shard_id = ShardId::new();
        let opened = first.open_shard::<u64>(shard_id).unwrap();
        let found = second.shard::<u64>(shard_id).unwrap();
        assert!(Arc::ptr_eq(&opened, &found), "both names see one shard");
        assert!(
            matches!(
                other.shard::<u64>(shard_id),
                Err(BackendError::InvalidUsage(
                    InvalidUsage::UnknownShard { .. }
                ))
            ),
            "another name does not"
        );
    }

    #[test]
    fn the_store_outlives_its_handles() {
        let name = format!("registry-test-{}", ShardId::new());
        let shard_id = ShardId::new();
        named_store(&name).open_shard::<u64>(shard_id).unwrap();
        assert_eq!(named_store(&name).live_shards(), vec![shard_id]);
    }

    #[test]
    fn finalized_shards_are_not_listed() {
        let store = Store::default();
        let mut ids: Vec<_> = (0..3).map(|_| ShardId::new()).collect();
        for id in &ids {
            store.open_shard::<u64>(*id).unwrap();
        }
        ids.sort();
        assert_eq!(store.live_shards(), ids);
        store.shard::<u64>(ids[1]).unwrap().finalize().unwrap();
        assert_eq!(store.live_shards(), vec![ids[0], ids[2]]);
    }
}
