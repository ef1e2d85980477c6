//! Deciding multi-shard appends: intents in shard states, one record per
//! attempt.
//!
//! An attempt of a multi-shard append first writes its part of each shard
//! into that shard's state as a pending [`Intent`], each by the shard's own
//! conditional PUT; then it creates its record `PREFIX/txns/TXN` saying
//! `committed` with `If-None-Match: *`. That PUT is the commit point: the
//! intents apply iff the record says committed. Any handle that needs a
//! shard whose intent is undecided (no record yet) may instead create the
//! record saying `aborted`; of the two creations exactly one succeeds, and a
//! record never changes, so every handle that reads it agrees.
//!
//! - **Readers** fold a pending intent into what they read: applied if its
//!   record says committed, absent otherwise (an undecided intent has not
//!   happened yet, see [`S3Backend::read_view`]).
//! - **Writers** (appends, since downgrades, compaction, finalize, other
//!   multi-shard appends) must decide an intent before they change its
//!   shard: they wait up to the intent timeout for its record, then abort
//!   it, and write their change on the decided state, which also clears the
//!   intent ([`S3Backend::update_state`]).
//! - **The committer** clears its own intents after the commit (rolls them
//!   forward), in the background: the call is applied at the commit point
//!   whether or not that has happened.
//!
//! `SUBTLE:` while an intent is pending, its shard does not change: every
//! writer decides the intent first, and deciding it means the record
//! exists. So what the attempt checked when it wrote the intent (the upper,
//! the fence, the token) still holds when its record is created, for every
//! shard at once.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidemark_storage_types::sync::lock;
use tidemark_storage_types::{BackendError, DeterminateKind, ShardId};
use uuid::Uuid;

use crate::S3Backend;
use crate::state::{Intent, Outcome};
use crate::store::{Condition, ConditionalPut};

/// Decided attempts a handle remembers (records never change, so any
/// number is correct; this only bounds memory).
const REMEMBERED_OUTCOMES: usize = 4096;

/// Record creations refused (409, a concurrent conditional write that then
/// vanished) before giving up.
const MAX_RECORD_ATTEMPTS: usize = 16;

/// Format of a record.
const RECORD_FORMAT: u32 = 1;

/// The decision of one attempt of a multi-shard append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TxnRecord {
    pub format: u32,
    pub outcome: Outcome,
    /// The shards of the attempt (for tooling and `gc`).
    pub shards: Vec<ShardId>,
}

impl TxnRecord {
    fn from_bytes(key: &str, bytes: &[u8]) -> Result<Self, BackendError> {
        let record: TxnRecord = serde_json::from_slice(bytes).map_err(|err| {
            BackendError::determinate(
                DeterminateKind::Corrupted,
                format!("multi-shard append record is not valid: key={key} error={err}"),
            )
            .caused_by(err)
        })?;
        if record.format != RECORD_FORMAT {
            return Err(BackendError::determinate(
                DeterminateKind::Corrupted,
                format!(
                    "multi-shard append record has an unknown format: key={key} format={} supported={RECORD_FORMAT}",
                    record.format
                ),
            ));
        }
        Ok(record)
    }
}

/// The outcomes this handle has seen or decided.
#[derive(Default)]
pub(crate) struct Outcomes {
    known: HashMap<Uuid, Outcome>,
    order: VecDeque<Uuid>,
}

impl Outcomes {
    fn insert(&mut self, txn: Uuid, outcome: Outcome) {
        if self.known.insert(txn, outcome).is_none() {
            self.order.push_back(txn);
            while self.order.len() > REMEMBERED_OUTCOMES {
                if let Some(oldest) = self.order.pop_front() {
                    self.known.remove(&oldest);
                }
            }
        }
    }
}

impl S3Backend {
    /// The outcome of `txn` as this handle already knows it, without a
    /// request.
    pub(crate) fn known_outcome(&self, txn: Uuid) -> Option<Outcome> {
        lock(&self.inner.outcomes).known.get(&txn).copied()
    }

    fn learn_outcome(&self, txn: Uuid, outcome: Outcome) {
        lock(&self.inner.outcomes).insert(txn, outcome);
    }

    /// The outcome of `txn`: `None` while it is undecided (no record).
    pub(crate) async fn txn_outcome(&self, txn: Uuid) -> Result<Option<Outcome>, BackendError> {
        if let Some(outcome) = self.known_outcome(txn) {
            return Ok(Some(outcome));
        }
        let store = self.store();
        let key = store.keys.txn(txn);
        let Some(bytes) = store.get("get_txn_record", &key).await? else {
            return Ok(None);
        };
        let outcome = TxnRecord::from_bytes(&key, &bytes)?.outcome;
        self.learn_outcome(txn, outcome);
        Ok(Some(outcome))
    }

    /// Decides `txn` as `outcome` unless it is decided already; returns the
    /// outcome that holds.
    ///
    /// # Errors
    ///
    /// S3 failures; an indeterminate one leaves it unknown whether this
    /// decision was recorded.
    pub(crate) async fn decide_txn(
        &self,
        txn: Uuid,
        outcome: Outcome,
        shards: &[ShardId],
    ) -> Result<Outcome, BackendError> {
        let store = self.store();
        let key = store.keys.txn(txn);
        let record = TxnRecord {
            format: RECORD_FORMAT,
            outcome,
            shards: shards.to_vec(),
        };
        let body = serde_json::to_vec(&record).expect("a record serializes");
        for _ in 0..MAX_RECORD_ATTEMPTS {
            match store
                .put_conditional("put_txn_record", &key, body.clone(), Condition::Absent)
                .await?
            {
                ConditionalPut::Written(_) => {
                    self.learn_outcome(txn, outcome);
                    return Ok(outcome);
                }
                // Decided by someone else (412), or a concurrent creation was
                // in flight (409): read what holds.
                ConditionalPut::Refused => {
                    if let Some(decided) = self.txn_outcome(txn).await? {
                        return Ok(decided);
                    }
                }
            }
        }
        Err(BackendError::determinate(
            DeterminateKind::Conflict,
            format!(
                "could not record the decision of a multi-shard append: key={key} attempts={MAX_RECORD_ATTEMPTS}"
            ),
        ))
    }

    /// The outcome of a pending intent a writer found on `shard`: its
    /// record's, once there is one; after waiting [`intent_timeout`] for it,
    /// this handle aborts the attempt (the attempt's own commit then fails).
    ///
    /// [`intent_timeout`]: crate::S3Config::intent_timeout
    pub(crate) async fn resolve_for_write(
        &self,
        shard: ShardId,
        intent: &Intent,
    ) -> Result<Outcome, BackendError> {
        let started = tokio::time::Instant::now();
        let timeout = self.config().intent_timeout;
        let mut delay = Duration::from_millis(5);
        loop {
            if let Some(outcome) = self.txn_outcome(intent.txn).await? {
                return Ok(outcome);
            }
            let waited = started.elapsed();
            if waited >= timeout {
                tracing::debug!(%shard, txn = %intent.txn, "aborting an undecided multi-shard append");
                return self
                    .decide_txn(intent.txn, Outcome::Aborted, &[shard])
                    .await;
            }
            tokio::time::sleep(delay.min(timeout - waited)).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_corruption_names_the_key() {
        let record = TxnRecord {
            format: RECORD_FORMAT,
            outcome: Outcome::Committed,
            shards: vec![ShardId::from_bytes([1; 16])],
        };
        let bytes = serde_json::to_vec(&record).unwrap();
        assert_eq!(TxnRecord::from_bytes("k", &bytes).unwrap(), record);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"committed\""), "{text}");
        let err = TxnRecord::from_bytes("txns/x", b"{").unwrap_err();
        assert_eq!(err.determinate_kind(), Some(DeterminateKind::Corrupted));
        assert!(err.to_string().contains("txns/x"), "{err}");
        let future = text.replace("\"format\":1", "\"format\":7");
        let err = TxnRecord::from_bytes("k", future.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("unknown format"), "{err}");
    }

    #[test]
    fn outcomes_are_bounded() {
        let mut outcomes = Outcomes::default();
        let first = Uuid::new_v4();
        outcomes.insert(first, Outcome::Aborted);
        for _ in 0..REMEMBERED_OUTCOMES {
            outcomes.insert(Uuid::new_v4(), Outcome::Committed);
        }
        assert_eq!(outcomes.known.len(), REMEMBERED_OUTCOMES);
        assert!(!outcomes.known.contains_key(&first));
    }
}
