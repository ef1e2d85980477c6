//! Where a backend's objects live in the bucket.
//!
//! ```text
//! PREFIX/conditional-write-probe        marker written at build to test conditional writes
//! PREFIX/live/SHARD                     one empty marker per listed (opened, not finalized) shard
//! PREFIX/shards/SHARD/state             the shard's state, replaced by compare-and-swap
//! PREFIX/shards/SHARD/batches/UUID      write-once, checksummed batch parts
//! PREFIX/txns/UUID                      the decision of one attempt of a multi-shard append
//! PREFIX/log/SEQ                        one commit log entry (SEQ: 20 decimal digits, from 1)
//! ```
//!
//! `PREFIX` may be empty; it never starts or ends with `/`.

use tidemark_storage_types::ShardId;
use uuid::Uuid;

/// Builds object keys under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    /// Empty, or the prefix followed by `/`.
    root: String,
}

impl Keys {
    /// Keys under `prefix` (leading and trailing slashes are ignored).
    pub(crate) fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        let root = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        Keys { root }
    }

    /// The prefix as configured, without a trailing slash.
    pub(crate) fn prefix(&self) -> &str {
        self.root.trim_end_matches('/')
    }

    pub(crate) fn probe(&self) -> String {
        format!("{}conditional-write-probe", self.root)
    }

    pub(crate) fn live_dir(&self) -> String {
        format!("{}live/", self.root)
    }

    pub(crate) fn live(&self, shard: ShardId) -> String {
        format!("{}live/{shard}", self.root)
    }

    pub(crate) fn shards_dir(&self) -> String {
        format!("{}shards/", self.root)
    }

    pub(crate) fn state(&self, shard: ShardId) -> String {
        format!("{}shards/{shard}/state", self.root)
    }

    pub(crate) fn batches_dir(&self, shard: ShardId) -> String {
        format!("{}shards/{shard}/batches/", self.root)
    }

    pub(crate) fn part(&self, shard: ShardId, part: Uuid) -> String {
        format!("{}shards/{shard}/batches/{part}", self.root)
    }

    pub(crate) fn txn(&self, txn: Uuid) -> String {
        format!("{}txns/{txn}", self.root)
    }

    pub(crate) fn log_dir(&self) -> String {
        format!("{}log/", self.root)
    }

    /// The key of log entry `seq`: zero-padded so keys sort as seqs do.
    pub(crate) fn log_entry(&self, seq: u64) -> String {
        format!("{}log/{seq:020}", self.root)
    }

    /// The seq of a key under [`log_dir`](Self::log_dir), if it is one.
    pub(crate) fn log_seq(&self, key: &str) -> Option<u64> {
        let rest = key.strip_prefix(&self.log_dir())?;
        if rest.len() != 20 || !rest.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        rest.parse().ok()
    }

    /// The part id of a key under [`batches_dir`](Self::batches_dir), if it
    /// is one.
    pub(crate) fn part_id(&self, shard: ShardId, key: &str) -> Option<Uuid> {
        let rest = key.strip_prefix(&self.batches_dir(shard))?;
        Uuid::parse_str(rest).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalised() {
        let shard = ShardId::from_bytes([7; 16]);
        assert_eq!(Keys::new("").state(shard), format!("shards/{shard}/state"));
        assert_eq!(
            Keys::new("/a/b/").state(shard),
            format!("a/b/shards/{shard}/state")
        );
        assert_eq!(Keys::new("a").prefix(), "a");
        let keys = Keys::new("p");
        let part = Uuid::from_bytes([1; 16]);
        assert_eq!(keys.part_id(shard, &keys.part(shard, part)), Some(part));
        assert_eq!(keys.part_id(shard, &keys.state(shard)), None);
        assert_eq!(keys.live(shard), format!("p/live/{shard}"));
        assert_eq!(keys.txn(part), format!("p/txns/{part}"));
        assert_eq!(keys.log_entry(42), "p/log/00000000000000000042");
        assert_eq!(keys.log_seq(&keys.log_entry(42)), Some(42));
        assert_eq!(keys.log_seq(&keys.log_entry(u64::MAX)), Some(u64::MAX));
        assert_eq!(keys.log_seq("p/log/42"), None);
        assert_eq!(keys.log_seq(&keys.state(shard)), None);
    }
}
