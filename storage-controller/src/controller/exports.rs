//! Exports (sinks): prepare, create, cancel and drop.

use std::collections::{BTreeMap, BTreeSet};

use tidemark_storage_types::{
    ExportDescription, GlobalId, PersistBackend, ReadPolicy, StorageError, StorageTimestamp,
};
use timely::PartialOrder;
use timely::progress::Antichain;

use super::Controller;
use super::frontiers::frontier_changes;
use crate::protocol::{ExportCommand, StorageCommand};
use crate::state::{CreateExportToken, ExportState};
use crate::worker::WorkerCommand;

impl<T: StorageTimestamp, B: PersistBackend<T>> Controller<T, B> {
    pub(crate) fn prepare_export_inner(
        &mut self,
        id: GlobalId,
        from_id: GlobalId,
    ) -> Result<CreateExportToken<T>, StorageError> {
        if self.exports.contains_key(&id) {
            return Err(StorageError::SinkIdReused(id));
        }
        let collection = self
            .collections
            .get(&from_id)
            .ok_or(StorageError::IdentifierMissing(from_id))?;
        if collection.implied_capability.is_empty() {
            return Err(StorageError::CollectionDropped(from_id));
        }
        let acquired_since = collection.implied_capability.clone();
        let mut changes = BTreeMap::from([(from_id, frontier_changes(&acquired_since, 1))]);
        self.update_read_capabilities_inner(&mut changes);
        Ok(CreateExportToken {
            id,
            from_id,
            acquired_since,
        })
    }

    /// Releases a token's hold (panics as documented on
    /// `cancel_prepare_export`).
    pub(crate) fn release_token(&mut self, token: CreateExportToken<T>) {
        let mut changes =
            BTreeMap::from([(token.from_id, frontier_changes(&token.acquired_since, -1))]);
        self.update_read_capabilities_inner(&mut changes);
    }

    fn validate_exports(
        &self,
        exports: &[(CreateExportToken<T>, ExportDescription<T>)],
    ) -> Result<(), StorageError> {
        self.check_not_fenced()?;
        let mut seen = BTreeSet::new();
        for (token, description) in exports {
            let id = token.id;
            if !seen.insert(id) {
                return Err(StorageError::SinkIdReused(id));
            }
            if let Some(existing) = self.exports.get(&id)
                && existing.description != *description
            {
                return Err(StorageError::SinkIdReused(id));
            }
            if description.from != token.from_id {
                return Err(StorageError::ExportTokenMismatch {
                    export_id: id,
                    from: description.from,
                    token_from: token.from_id,
                });
            }
            if !PartialOrder::less_equal(&token.acquired_since, &description.as_of) {
                return Err(StorageError::ReadBeforeSince(description.from));
            }
            if !self.instances.contains_key(&description.instance_id) {
                return Err(StorageError::ExportInstanceMissing {
                    storage_instance_id: description.instance_id,
                    export_id: id,
                });
            }
        }
        Ok(())
    }

    pub(crate) async fn create_exports_inner(
        &mut self,
        exports: Vec<(CreateExportToken<T>, ExportDescription<T>)>,
    ) -> Result<(), StorageError> {
        if let Err(err) = self.validate_exports(&exports) {
            for (token, _) in exports {
                self.release_token(token);
            }
            return Err(err);
        }
        let mut new_exports = Vec::new();
        for (token, description) in exports {
            if self.exports.contains_key(&token.id) {
                // Identical re-create: the existing export already holds.
                self.release_token(token);
            } else {
                new_exports.push((token, description));
            }
        }
        if new_exports.is_empty() {
            return Ok(());
        }
        let sinks = new_exports
            .iter()
            .map(|(token, description)| (token.id, description.as_of.clone()))
            .collect();
        let recorded = match self
            .call_worker(|reply| WorkerCommand::RecordSinks { sinks, reply })
            .await
        {
            Ok(recorded) => recorded,
            Err(err) => {
                for (token, _) in new_exports {
                    self.release_token(token);
                }
                return Err(err);
            }
        };
        for ((token, description), initial_as_of) in new_exports.into_iter().zip(recorded) {
            let from_shard = self.collections[&description.from]
                .collection_metadata
                .data_shard;
            let command = ExportCommand {
                id: token.id,
                description: description.clone(),
                from_shard,
                initial_as_of,
            };
            if let Some(instance) = self.instances.get_mut(&description.instance_id) {
                instance.send(StorageCommand::CreateSinks(vec![command]));
            }
            // The export takes over the token's hold.
            self.exports.insert(
                token.id,
                ExportState {
                    description,
                    read_capability: token.acquired_since,
                    read_policy: ReadPolicy::step_back(),
                    write_frontier: Antichain::from_elem(T::minimum()),
                },
            );
        }
        Ok(())
    }

    /// Drops exports. The sink may still read its source until its
    /// replica confirms with `DroppedIds`, so an export's hold on its
    /// source is released then (or when its instance is dropped), not here.
    pub(crate) fn drop_sinks_inner(&mut self, identifiers: Vec<GlobalId>) {
        let mut dropped = Vec::new();
        let mut released = Vec::new();
        for id in identifiers {
            if self.dropping_exports.contains(&id) {
                continue;
            }
            let instance_exists = self
                .exports
                .get(&id)
                .is_some_and(|export| self.instances.contains_key(&export.description.instance_id));
            let Some(export) = self.exports.get_mut(&id) else {
                continue;
            };
            if export.read_capability.is_empty() {
                continue;
            }
            self.dropping_exports.insert(id);
            if !instance_exists {
                released.push(id);
            }
            export.write_frontier = Antichain::new();
            export.read_policy = ReadPolicy::ValidFrom(Antichain::new());
            self.pending_compaction
                .entry(export.description.instance_id)
                .or_default()
                .push((id, Antichain::new()));
            dropped.push(id);
        }
        if !dropped.is_empty() {
            let _ = self
                .worker
                .send(WorkerCommand::ForgetSinks { ids: dropped });
        }
        for id in released {
            self.release_dropped_export(id);
        }
    }

    /// Releases dropped export `id`'s hold on its source, if it is dropped
    /// and still holds.
    pub(crate) fn release_dropped_export(&mut self, id: GlobalId) {
        if !self.dropping_exports.remove(&id) {
            return;
        }
        let Some(export) = self.exports.get_mut(&id) else {
            return;
        };
        let mut changes = BTreeMap::from([(
            export.description.from,
            frontier_changes(&export.read_capability, -1),
        )]);
        export.read_capability = Antichain::new();
        self.update_read_capabilities_inner(&mut changes);
    }
}
