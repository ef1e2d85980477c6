//! Reconnecting lost replicas: a lost connection schedules a reconnect
//! after the instance's backoff; when it is due the instance connects again
//! through the same path as `connect_replica` (new epoch, replayed history).

use tidemark_storage_types::{PersistBackend, StorageInstanceId, StorageTimestamp};

use super::Controller;
use crate::internal::Internal;

impl<T: StorageTimestamp, B: PersistBackend<T>> Controller<T, B> {
    /// Process `process` of `instance`'s replica at `epoch` lost its
    /// connection: schedule a reconnect, unless the epoch is stale or one
    /// is already scheduled.
    pub(super) fn schedule_reconnect(
        &mut self,
        instance_id: StorageInstanceId,
        epoch: u64,
        process: usize,
    ) {
        let Some(instance) = self.instances.get_mut(&instance_id) else {
            return;
        };
        let Some(wait) = instance.connection_lost(epoch, &self.reconnect) else {
            return;
        };
        tracing::info!(
            instance = %instance_id,
            epoch,
            process,
            ?wait,
            "replica connection lost; reconnecting after a backoff"
        );
        self.record_replica_lost(instance_id);
        let internal = self.internal_sender.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // The controller may be gone meanwhile; then nothing is due.
            let _ = internal.send(Internal::ReconnectDue {
                instance: instance_id,
                epoch,
            });
        });
    }

    /// The backoff after losing `instance`'s replica at `epoch` passed.
    pub(super) fn reconnect_due(&mut self, instance_id: StorageInstanceId, epoch: u64) {
        let Some(instance) = self.instances.get_mut(&instance_id) else {
            return;
        };
        if instance.reconnect_due(epoch, &*self.transport, &self.internal_sender) {
            tracing::info!(instance = %instance_id, lost_epoch = epoch, "replica reconnected");
        }
    }
}
