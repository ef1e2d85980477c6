//! The key-value generator: `batch_size` upserts per tick over `keys` keys.
//!
//! Writes are numbered over the whole run: tick `k` makes writes
//! `k * batch_size .. (k + 1) * batch_size`. Write `n` sets key `n % keys`
//! to [`value(seed, n)`](value), and, when `n >= keys`, retracts the value
//! write `n - keys` gave the same key: so each key has at most one live
//! value and a tick's updates need nothing but the tick to compute.

use tidemark_storage_types::{Datum, Diff, RelationDesc, Row, ScalarType};

use super::mix::{hash, mix};
use super::{GeneratorError, int};

/// The generator's name in messages.
pub(super) const NAME: &str = "key-value";
/// Its only output, the primary one.
pub(super) const OUTPUT: &str = "key_value";

/// The largest `value_size` the key-value generator accepts: 1 MiB.
pub const MAX_VALUE_SIZE: u32 = 1 << 20;

/// The largest `batch_size` the key-value generator accepts: 1,048,576
/// writes per tick.
pub const MAX_BATCH_SIZE: u32 = 1 << 20;

/// The most value bytes one tick may write (`batch_size * value_size`):
/// 256 MiB. A tick is built in memory, with a retraction per write.
pub const MAX_TICK_BYTES: u64 = 1 << 28;

/// The characters values are made of.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The key-value relation: `key` (non-null `Int64`) and `value` (non-null
/// `String` of `value_size` ASCII characters).
pub(super) fn relation() -> RelationDesc {
    RelationDesc::empty()
        .with_column("key", ScalarType::Int64.nullable(false))
        .with_column("value", ScalarType::String.nullable(false))
}

/// A key-value generator with its parameters checked.
#[derive(Clone, Debug)]
pub(super) struct KeyValue {
    keys: u64,
    value_size: u32,
    batch_size: u32,
    seed: u64,
}

impl KeyValue {
    pub(super) fn new(
        keys: u64,
        value_size: u32,
        batch_size: u32,
        seed: u64,
    ) -> Result<KeyValue, GeneratorError> {
        let invalid = |parameter, value, expected| GeneratorError::InvalidParameter {
            generator: NAME,
            parameter,
            value,
            expected,
        };
        if keys == 0 {
            return Err(invalid("keys", 0, "at least 1"));
        }
        if i64::try_from(keys).is_err() {
            return Err(invalid("keys", keys, "at most 2^63 - 1"));
        }
        if batch_size == 0 {
            return Err(invalid("batch_size", 0, "at least 1"));
        }
        if batch_size > MAX_BATCH_SIZE {
            return Err(invalid(
                "batch_size",
                u64::from(batch_size),
                "at most 1048576 (MAX_BATCH_SIZE)",
            ));
        }
        if value_size > MAX_VALUE_SIZE {
            return Err(invalid(
                "value_size",
                u64::from(value_size),
                "at most 1048576 (MAX_VALUE_SIZE)",
            ));
        }
        let tick_bytes = u64::from(batch_size) * u64::from(value_size);
        if tick_bytes > MAX_TICK_BYTES {
            return Err(invalid(
                "batch_size * value_size",
                tick_bytes,
                "at most 268435456 (MAX_TICK_BYTES)",
            ));
        }
        Ok(KeyValue {
            keys,
            value_size,
            batch_size,
            seed,
        })
    }

    /// The updates of tick `tick`, not consolidated.
    pub(super) fn tick(&self, tick: u64) -> Vec<(Row, Diff)> {
        let keys = u128::from(self.keys);
        let first = u128::from(tick) * u128::from(self.batch_size);
        let mut updates = Vec::with_capacity(2 * self.batch_size as usize);
        for write in first..first + u128::from(self.batch_size) {
            let key = int(u64::try_from(write % keys).expect("below keys, a u64"));
            updates.push((self.row(key, write), 1));
            if write >= keys {
                updates.push((self.row(key, write - keys), -1));
            }
        }
        updates
    }

    fn row(&self, key: i64, write: u128) -> Row {
        let value = value(self.seed, write, self.value_size);
        Row::pack([Datum::Int64(key), Datum::String(&value)])
    }
}

/// The value write number `write` stores: `value_size` characters of
/// [`ALPHABET`] drawn from a hash of `seed` and `write`.
fn value(seed: u64, write: u128, value_size: u32) -> String {
    let low = write as u64;
    let high = (write >> 64) as u64;
    let mut state = hash(&[seed, low, high]);
    let mut value = String::with_capacity(value_size as usize);
    while value.len() < value_size as usize {
        state = mix(state);
        for byte in state.to_le_bytes() {
            if value.len() == value_size as usize {
                break;
            }
            value.push(char::from(ALPHABET[usize::from(byte % 64)]));
        }
    }
    value
}
