//! Identifiers: collections ([`GlobalId`]), shards ([`ShardId`]), storage
//! instances ([`StorageInstanceId`]) and append attempts
//! ([`IdempotencyToken`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::errors::IdParseError;

/// The identifier of a collection or export known to the controller.
///
/// Shown as `s1` (system), `u1` (user) or `t1` (transient), and parsed back
/// from that form.
///
/// ```
/// use tidemark_storage_types::GlobalId;
/// let id: GlobalId = "u42".parse().unwrap();
/// assert_eq!(id, GlobalId::User(42));
/// assert_eq!(id.to_string(), "u42");
/// assert!("x1".parse::<GlobalId>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GlobalId {
    /// A collection owned by the system.
    System(u64),
    /// A collection created by a user.
    User(u64),
    /// A collection that does not outlive the process.
    Transient(u64),
}

impl fmt::Display for GlobalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GlobalId::System(n) => write!(f, "s{n}"),
            GlobalId::User(n) => write!(f, "u{n}"),
            GlobalId::Transient(n) => write!(f, "t{n}"),
        }
    }
}

impl FromStr for GlobalId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdParseError {
            kind: "global id",
            input: s.to_string(),
            expected: "s<N>, u<N> or t<N>",
        };
        let mut chars = s.chars();
        let prefix = chars.next().ok_or_else(err)?;
        let number: u64 = chars.as_str().parse().map_err(|_| err())?;
        match prefix {
            's' => Ok(GlobalId::System(number)),
            'u' => Ok(GlobalId::User(number)),
            't' => Ok(GlobalId::Transient(number)),
            _ => Err(err()),
        }
    }
}

/// The identifier of a shard: the durable unit of storage of a backend.
///
/// Shown as `s` followed by a UUID (`s3f2b...`), and parsed back from it.
///
/// ```
/// use tidemark_storage_types::ShardId;
/// let shard = ShardId::new();
/// let parsed: ShardId = shard.to_string().parse().unwrap();
/// assert_eq!(shard, parsed);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub Uuid);

impl ShardId {
    /// A fresh, random shard id.
    #[must_use]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        ShardId(Uuid::new_v4())
    }

    /// The shard id with the given UUID bytes (deterministic ids for tests
    /// and the reserved metadata shard).
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        ShardId(Uuid::from_bytes(bytes))
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl FromStr for ShardId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdParseError {
            kind: "shard id",
            input: s.to_string(),
            expected: "s<UUID>",
        };
        let rest = s.strip_prefix('s').ok_or_else(err)?;
        Uuid::parse_str(rest).map(ShardId).map_err(|_| err())
    }
}

/// The identifier of a storage instance (a cluster that runs ingestions and
/// sinks). Shown as `si1` and parsed back.
///
/// ```
/// use tidemark_storage_types::StorageInstanceId;
/// let id: StorageInstanceId = "si7".parse().unwrap();
/// assert_eq!(id, StorageInstanceId(7));
/// assert_eq!(id.to_string(), "si7");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StorageInstanceId(pub u64);

impl fmt::Display for StorageInstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "si{}", self.0)
    }
}

impl FromStr for StorageInstanceId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdParseError {
            kind: "storage instance id",
            input: s.to_string(),
            expected: "si<N>",
        };
        let rest = s.strip_prefix("si").ok_or_else(err)?;
        rest.parse().map(StorageInstanceId).map_err(|_| err())
    }
}

/// Names one logical append attempt, so that a retry after an
/// indeterminate outcome is recognised and applied at most once.
///
/// Create one token per logical write and reuse it for every retry of that
/// write; never reuse it for a different write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdempotencyToken(pub Uuid);

impl IdempotencyToken {
    /// A fresh, random token.
    #[must_use]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        IdempotencyToken(Uuid::new_v4())
    }

    /// The token with the given UUID bytes: a deterministic token, for a
    /// caller that derives it from its own record of the write.
    ///
    /// ```
    /// use tidemark_storage_types::IdempotencyToken;
    /// let token = IdempotencyToken::from_bytes([7; 16]);
    /// assert_eq!(token, IdempotencyToken::from_bytes([7; 16]));
    /// assert_ne!(token, IdempotencyToken::from_bytes([8; 16]));
    /// ```
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        IdempotencyToken(Uuid::from_bytes(bytes))
    }

    /// The token whose UUID is `value` (big-endian): a deterministic token
    /// from a number, such as a write's sequence number.
    ///
    /// ```
    /// use tidemark_storage_types::IdempotencyToken;
    /// assert_eq!(IdempotencyToken::from_u128(1), IdempotencyToken::from_bytes(1u128.to_be_bytes()));
    /// ```
    #[must_use]
    pub const fn from_u128(value: u128) -> Self {
        IdempotencyToken(Uuid::from_u128(value))
    }
}

impl fmt::Display for IdempotencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_ids_round_trip() {
        for id in [
            GlobalId::System(1),
            GlobalId::User(0),
            GlobalId::Transient(u64::MAX),
        ] {
            assert_eq!(id.to_string().parse::<GlobalId>().unwrap(), id);
        }
    }

    #[test]
    fn bad_global_ids_name_the_input() {
        for bad in ["", "u", "x1", "u-1", "u1x", "U1"] {
            let err = bad.parse::<GlobalId>().unwrap_err();
            assert!(err.to_string().contains("global id"), "{err}");
            assert_eq!(err.input, bad);
        }
    }

    #[test]
    fn shard_and_instance_ids_round_trip() {
        let shard = ShardId::new();
        assert_eq!(shard.to_string().parse::<ShardId>().unwrap(), shard);
        assert!("not-a-shard".parse::<ShardId>().is_err());
        assert!("s1234".parse::<ShardId>().is_err());
        assert_eq!(
            "si3".parse::<StorageInstanceId>().unwrap(),
            StorageInstanceId(3)
        );
        assert!("s3".parse::<StorageInstanceId>().is_err());
    }

    #[test]
    fn deterministic_tokens() {
        let token = IdempotencyToken::from_u128(0x0102);
        let mut bytes = [0; 16];
        bytes[14] = 1;
        bytes[15] = 2;
        assert_eq!(token, IdempotencyToken::from_bytes(bytes));
        assert_ne!(token, IdempotencyToken::from_u128(0x0103));
        assert_eq!(token.0.as_u128(), 0x0102);
    }
}
