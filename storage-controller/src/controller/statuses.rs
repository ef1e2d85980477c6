//! Status history: every status change of a collection that names a
//! status collection (`status_collection_id`) is appended to that
//! collection as one row of [`status_history_relation`], durably, through
//! the write task like any append (decision 104).
//!
//! A change is written once: a status equal to the last one written for the
//! id in this controller's lifetime is skipped. Rows of one status
//! collection are appended one time apart (`t`, upper `t + 1`), in the
//! order the changes happened.

use std::time::{SystemTime, UNIX_EPOCH};

use tidemark_storage_types::description::status_history_relation;
use tidemark_storage_types::{
    CollectionDescription, DataSource, Datum, GlobalId, PersistBackend, Row, StorageError,
    StorageInstanceId, StorageTimestamp, Update,
};
use timely::progress::Antichain;
use tokio::sync::oneshot;

use super::Controller;
use crate::internal::Internal;
use crate::worker::{ShardAppend, WorkerCommand};

/// One status change, as a status history row holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StatusChange {
    pub(crate) status: String,
    pub(crate) error: Option<String>,
}

impl StatusChange {
    /// A status without error.
    pub(crate) fn plain(status: &str) -> Self {
        StatusChange {
            status: status.to_owned(),
            error: None,
        }
    }

    /// A replica's status text: `stalled: why` is status `stalled` with
    /// error `why`; anything else is the status itself.
    pub(crate) fn parse(text: &str) -> Self {
        match text.split_once(": ") {
            Some((status, error)) => StatusChange {
                status: status.to_owned(),
                error: Some(error.to_owned()),
            },
            None => StatusChange::plain(text),
        }
    }
}

/// Checks the status collections of a batch being created: every
/// `status_collection_id` names a status history, and every status
/// history has the status history relation. `lookup` finds a description
/// in the batch or among existing collections.
pub(crate) fn validate_status_collections<'a, T: 'a>(
    batch: impl IntoIterator<Item = (&'a GlobalId, &'a CollectionDescription<T>)>,
    lookup: impl Fn(GlobalId) -> Option<&'a CollectionDescription<T>>,
) -> Result<(), StorageError> {
    for (id, description) in batch {
        if matches!(description.data_source, DataSource::StatusHistory)
            && description.desc != status_history_relation()
        {
            return Err(StorageError::StatusRelationMismatch(*id));
        }
        if let Some(status_collection) = description.status_collection_id
            && lookup(status_collection)
                .is_some_and(|named| !matches!(named.data_source, DataSource::StatusHistory))
        {
            return Err(StorageError::NotAStatusCollection {
                id: *id,
                status_collection,
            });
        }
    }
    Ok(())
}

/// Microseconds since the Unix epoch, now.
fn now_micros() -> i64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
}

impl<T: StorageTimestamp, B: PersistBackend<T>> Controller<T, B> {
    /// Appends `change` of collection `id` to its status collection, if it
    /// names one that exists and the status changed. `replica` is the
    /// reporting instance and process (`None` for the controller's own).
    pub(crate) fn record_status(
        &mut self,
        id: GlobalId,
        change: StatusChange,
        replica: Option<(StorageInstanceId, usize)>,
    ) {
        let Some(status_id) = self
            .collections
            .get(&id)
            .and_then(|collection| collection.description.status_collection_id)
        else {
            return;
        };
        let Some(status_collection) = self.collections.get(&status_id) else {
            return;
        };
        if self.last_statuses.get(&id) == Some(&change) {
            return;
        }
        let known_upper = status_collection
            .write_frontier
            .as_option()
            .copied()
            .unwrap_or_else(T::minimum);
        let time = match self.status_uppers.get(&status_id) {
            Some(next) if *next > known_upper => *next,
            _ => known_upper,
        };
        let Some(new_upper) = time.checked_step_forward() else {
            // The status collection is closed: nothing can be added.
            return;
        };
        let replica = replica.map(|(instance, process)| format!("{instance}/{process}"));
        let row = Row::pack([
            Datum::Timestamp(now_micros()),
            Datum::String(&id.to_string()),
            Datum::String(&change.status),
            change.error.as_deref().map_or(Datum::Null, Datum::String),
            replica.as_deref().map_or(Datum::Null, Datum::String),
        ]);
        let shard = status_collection.collection_metadata.data_shard;
        let (reply, written) = oneshot::channel();
        let command = WorkerCommand::Append {
            commands: vec![ShardAppend {
                id: status_id,
                shard,
                updates: vec![Update::new(row, time, 1)],
                new_upper: Antichain::from_elem(new_upper),
            }],
            reply,
        };
        if self.worker.send(command).is_err() {
            return;
        }
        tracing::debug!(%id, status = %change.status, "status recorded");
        self.status_uppers.insert(status_id, new_upper);
        self.last_statuses.insert(id, change);
        let internal = self.internal_sender.clone();
        tokio::spawn(async move {
            // A failed status write is a background failure, reported by
            // `process`; a dropped reply means the controller is gone.
            if let Ok(Err(err)) = written.await {
                let _ = internal.send(Internal::BackgroundError(err));
            }
        });
    }

    /// The replica of `instance` is lost: each ingestion it ran is stalled
    /// until a replica reports again.
    pub(crate) fn record_replica_lost(&mut self, instance: StorageInstanceId) {
        let ingestions: Vec<GlobalId> = self
            .collections
            .iter()
            .filter(
                |(_, collection)| match &collection.description.data_source {
                    DataSource::Ingestion(ingestion) => ingestion.instance_id == instance,
                    _ => false,
                },
            )
            .map(|(id, _)| *id)
            .collect();
        for id in ingestions {
            let change = StatusChange {
                status: "stalled".to_owned(),
                error: Some("replica disconnected".to_owned()),
            };
            self.record_status(id, change, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_status_text_splits_at_the_first_colon() {
        assert_eq!(
            StatusChange::parse("running"),
            StatusChange::plain("running")
        );
        assert_eq!(
            StatusChange::parse("stalled: disk: full"),
            StatusChange {
                status: "stalled".into(),
                error: Some("disk: full".into()),
            }
        );
    }
}
