//! The batch codec: how backends that store batches as bytes encode them.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic    b"TDMB"
//! version  u16 (currently 1)
//! flags    u16 (0)
//! lower    frontier: u32 element count, then each element as i64 (Codec64)
//! upper    frontier
//! since    frontier
//! count    u64, the number of updates
//! rows     count x (u32 length, row bytes)
//! times    count x i64 (Codec64)
//! diffs    count x i64
//! checksum u32, CRC-32 of every byte before it
//! ```
//!
//! Decoding checks the checksum before anything else and never panics on bad
//! bytes: every problem is a [`BatchDecodeError`] naming the object.

use bytes::Bytes;
use thiserror::Error;
use timely::progress::{Antichain, Timestamp};

use crate::errors::{BackendError, DeterminateKind, InvalidUsage};
use crate::ids::ShardId;
use crate::row::Row;
use crate::time::{Codec64, Update};

const MAGIC: &[u8; 4] = b"TDMB";
const VERSION: u16 = 1;

/// A batch of updates with the bounds it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch<T> {
    /// Every update time is `>= lower`.
    pub lower: Antichain<T>,
    /// Every update time is not `>= upper`.
    pub upper: Antichain<T>,
    /// Times were advanced by this frontier when the batch was written.
    pub since: Antichain<T>,
    /// The updates.
    pub updates: Vec<Update<T>>,
}

/// Bytes that are not a valid encoded batch.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("corrupt batch {object}: {problem}")]
pub struct BatchDecodeError {
    /// The object (key, file, row id) the bytes came from.
    pub object: String,
    /// What was wrong.
    pub problem: String,
}

impl From<BatchDecodeError> for BackendError {
    fn from(err: BatchDecodeError) -> Self {
        BackendError::determinate(DeterminateKind::Corrupted, err.to_string())
    }
}

/// A batch the codec cannot encode: one of its lengths does not fit the
/// `u32` field the layout keeps it in (a row of 4 GiB or more, a frontier of
/// 2^32 elements or more). The batch's total size and update count are not
/// limited: the count is a `u64`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error(
    "batch cannot be encoded: {field} is {size}, the limit is {limit} (a u32 field of the batch codec)"
)]
pub struct BatchEncodeError {
    /// Which length (`row 7 length`, `lower frontier element count`).
    pub field: String,
    /// Its value.
    pub size: u64,
    /// The largest value the field holds.
    pub limit: u64,
}

impl BatchEncodeError {
    /// The error a backend answers for an append whose batch does not
    /// encode: [`InvalidUsage::TooLarge`]
    /// (nothing was written; the same append fails the same way).
    #[must_use]
    pub fn into_backend_error(self, shard: ShardId) -> BackendError {
        BackendError::InvalidUsage(InvalidUsage::TooLarge {
            shard,
            what: format!("{} in the batch codec (u32)", self.field),
            size: self.size,
            limit: self.limit,
        })
    }
}

/// The largest value of a length field of the layout.
const MAX_FIELD: u64 = u32::MAX as u64;

/// Encodes a batch.
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_types::{Batch, Datum, Row, Update, decode_batch, encode_batch};
/// let batch = Batch {
///     lower: Antichain::from_elem(0u64),
///     upper: Antichain::from_elem(10),
///     since: Antichain::from_elem(0),
///     updates: vec![Update::new(Row::pack([Datum::Int64(1)]), 3, 1)],
/// };
/// let bytes = encode_batch(&batch).unwrap();
/// assert_eq!(decode_batch::<u64>("example", &bytes).unwrap(), batch);
/// let mut bad = bytes.clone();
/// bad[20] ^= 1;
/// assert!(decode_batch::<u64>("example", &bad).unwrap_err().to_string().contains("checksum"));
/// ```
///
/// # Errors
///
/// [`BatchEncodeError`] naming the length that does not fit its `u32`
/// field. Rows built with [`Row::try_pack`] are below [`Row::MAX_BYTES`] and
/// always fit; a frontier needs 2^32 elements not to.
pub fn encode_batch<T: Codec64>(batch: &Batch<T>) -> Result<Vec<u8>, BatchEncodeError> {
    encode_batch_within(batch, MAX_FIELD)
}

/// [`encode_batch`] with `limit` as the largest value of a length field, so
/// that tests can check the limit without 4 GiB rows.
fn encode_batch_within<T: Codec64>(
    batch: &Batch<T>,
    limit: u64,
) -> Result<Vec<u8>, BatchEncodeError> {
    let limit = limit.min(MAX_FIELD);
    let field_len = |field: &dyn Fn() -> String, len: usize| -> Result<u32, BatchEncodeError> {
        let size = len as u64;
        match u32::try_from(len) {
            Ok(len) if size <= limit => Ok(len),
            _ => Err(BatchEncodeError {
                field: field(),
                size,
                limit,
            }),
        }
    };
    // Check every length before allocating the output.
    let names = ["lower", "upper", "since"];
    let mut frontier_lens = [0u32; 3];
    for (index, frontier) in [&batch.lower, &batch.upper, &batch.since]
        .iter()
        .enumerate()
    {
        frontier_lens[index] = field_len(
            &|| format!("{} frontier element count", names[index]),
            frontier.len(),
        )?;
    }
    let mut row_bytes: usize = 0;
    for (index, update) in batch.updates.iter().enumerate() {
        field_len(&|| format!("row {index} length"), update.row.byte_len())?;
        row_bytes = row_bytes.saturating_add(4 + update.row.byte_len());
    }
    let capacity = row_bytes.saturating_add(batch.updates.len().saturating_mul(16));
    let mut out = Vec::with_capacity(capacity.saturating_add(64));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    for (frontier, len) in [&batch.lower, &batch.upper, &batch.since]
        .into_iter()
        .zip(frontier_lens)
    {
        out.extend_from_slice(&len.to_le_bytes());
        for time in frontier.elements() {
            out.extend_from_slice(&time.encode().to_le_bytes());
        }
    }
    out.extend_from_slice(&(batch.updates.len() as u64).to_le_bytes());
    for update in &batch.updates {
        // Checked above: every row length fits.
        let len = update.row.byte_len() as u32;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(update.row.as_bytes());
    }
    for update in &batch.updates {
        out.extend_from_slice(&update.timestamp.encode().to_le_bytes());
    }
    for update in &batch.updates {
        out.extend_from_slice(&update.diff.to_le_bytes());
    }
    let checksum = crc32fast::hash(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    Ok(out)
}

/// Decodes a batch that [`encode_batch`] wrote; `object` names where the
/// bytes came from, for the error.
///
/// # Errors
///
/// [`BatchDecodeError`] if the checksum does not match, the magic or version
/// is unknown, or the contents are malformed.
pub fn decode_batch<T: Codec64 + Timestamp>(
    object: &str,
    bytes: &[u8],
) -> Result<Batch<T>, BatchDecodeError> {
    decode_batch_shared(object, Bytes::copy_from_slice(bytes))
}

/// Decodes a batch without copying its rows: every decoded [`Row`] is a
/// slice of `bytes`, so decoding allocates once per column instead of once
/// per row. The rows keep `bytes` alive while any of them lives; copy the
/// few rows you keep for long out of a large batch with [`Row::from_bytes`].
///
/// # Errors
///
/// As [`decode_batch`].
pub fn decode_batch_shared<T: Codec64 + Timestamp>(
    object: &str,
    shared: Bytes,
) -> Result<Batch<T>, BatchDecodeError> {
    let bytes: &[u8] = &shared;
    let fail = |problem: String| BatchDecodeError {
        object: object.to_string(),
        problem,
    };
    if bytes.len() < MAGIC.len() + 4 + 4 {
        return Err(fail(format!(
            "too short to be a batch: {} bytes",
            bytes.len()
        )));
    }
    let (body, checksum_bytes) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(checksum_bytes.try_into().expect("4 bytes"));
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(fail(format!(
            "checksum mismatch: stored={stored:08x} computed={computed:08x}"
        )));
    }
    let mut reader = Reader {
        bytes: body,
        offset: 0,
    };
    let magic = reader.take(4).map_err(&fail)?;
    if magic != MAGIC {
        return Err(fail(format!("bad magic: {magic:?}")));
    }
    let version = u16::from_le_bytes(reader.array().map_err(&fail)?);
    if version != VERSION {
        return Err(fail(format!("unsupported format version: {version}")));
    }
    let _flags = u16::from_le_bytes(reader.array().map_err(&fail)?);
    let lower = reader.frontier::<T>().map_err(&fail)?;
    let upper = reader.frontier::<T>().map_err(&fail)?;
    let since = reader.frontier::<T>().map_err(&fail)?;
    let count = u64::from_le_bytes(reader.array().map_err(&fail)?);
    // Each update needs at least 4 + 8 + 8 bytes; reject absurd counts
    // before allocating.
    let remaining = (body.len() - reader.offset) as u64;
    if count
        .checked_mul(20)
        .is_none_or(|needed| needed > remaining)
    {
        return Err(fail(format!(
            "update count {count} does not fit in {remaining} bytes"
        )));
    }
    let count = count as usize;
    let mut rows = Vec::with_capacity(count);
    for index in 0..count {
        let len = u32::from_le_bytes(reader.array().map_err(&fail)?) as usize;
        let start = reader.offset;
        reader.take(len).map_err(&fail)?;
        let row = Row::from_shared(shared.slice(start..start + len))
            .map_err(|err| fail(format!("row {index}: {err}")))?;
        rows.push(row);
    }
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        times.push(T::decode(i64::from_le_bytes(
            reader.array().map_err(&fail)?,
        )));
    }
    let mut updates = Vec::with_capacity(count);
    for (row, timestamp) in rows.into_iter().zip(times) {
        let diff = i64::from_le_bytes(reader.array().map_err(&fail)?);
        updates.push(Update {
            row,
            timestamp,
            diff,
        });
    }
    if reader.offset != body.len() {
        return Err(fail(format!(
            "{} trailing bytes",
            body.len() - reader.offset
        )));
    }
    Ok(Batch {
        lower,
        upper,
        since,
        updates,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .offset
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.offset))?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn frontier<T: Codec64 + Timestamp>(&mut self) -> Result<Antichain<T>, String> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        if len > (self.bytes.len() - self.offset) / 8 {
            return Err(format!("frontier length {len} exceeds the batch"));
        }
        let mut frontier = Antichain::new();
        for _ in 0..len {
            frontier.insert(T::decode(i64::from_le_bytes(self.array()?)));
        }
        Ok(frontier)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::row::Datum;

    fn sample(n: usize) -> Batch<u64> {
        Batch {
            lower: Antichain::from_elem(2),
            upper: Antichain::new(),
            since: Antichain::from_elem(1),
            updates: (0..n)
                .map(|i| {
                    let row = Row::pack([Datum::Int64(i as i64), Datum::String("x")]);
                    Update::new(row, 2 + i as u64, if i % 2 == 0 { 1 } else { -3 })
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_and_empty() {
        for n in [0, 1, 100] {
            let batch = sample(n);
            let bytes = encode_batch(&batch).unwrap();
            assert_eq!(decode_batch::<u64>("b", &bytes).unwrap(), batch);
            let shared = decode_batch_shared::<u64>("b", Bytes::from(bytes)).unwrap();
            assert_eq!(shared, batch);
        }
    }

    #[test]
    fn shared_decode_rejects_bad_rows() {
        let mut batch = sample(1);
        batch.updates[0].row = Row::pack([Datum::String("ok")]);
        let bytes = encode_batch(&batch).unwrap();
        // The row is a string datum: tag 5, then its length 2 as u32.
        let tag = bytes
            .windows(5)
            .position(|w| w == [5, 2, 0, 0, 0])
            .expect("string tag");
        let mut body = bytes[..bytes.len() - 4].to_vec();
        body[tag] = 99;
        let err = decode_batch_shared::<u64>("k9", Bytes::from(reseal(body))).unwrap_err();
        assert!(err.problem.contains("row 0: invalid row encoding"), "{err}");
        assert_eq!(err.object, "k9");
    }

    fn reseal(mut body: Vec<u8>) -> Vec<u8> {
        let checksum = crc32fast::hash(&body);
        body.extend_from_slice(&checksum.to_le_bytes());
        body
    }

    #[test]
    fn structural_errors_with_valid_checksum() {
        let bytes = encode_batch(&sample(3)).unwrap();
        let body = bytes[..bytes.len() - 4].to_vec();

        let mut bad_magic = body.clone();
        bad_magic[0] = b'X';
        let err = decode_batch::<u64>("k1", &reseal(bad_magic)).unwrap_err();
        assert!(err.problem.contains("bad magic"), "{err}");
        assert_eq!(err.object, "k1");

        let mut bad_version = body.clone();
        bad_version[4] = 9;
        let err = decode_batch::<u64>("k", &reseal(bad_version)).unwrap_err();
        assert!(err.problem.contains("version"), "{err}");

        let mut trailing = body.clone();
        trailing.push(0);
        let err = decode_batch::<u64>("k", &reseal(trailing)).unwrap_err();
        assert!(err.problem.contains("trailing"), "{err}");

        let truncated = body[..body.len() - 3].to_vec();
        let err = decode_batch::<u64>("k", &reseal(truncated)).unwrap_err();
        assert!(err.problem.contains("truncated"), "{err}");

        let err = decode_batch::<u64>("k", &[1, 2]).unwrap_err();
        assert!(err.problem.contains("too short"), "{err}");

        let err: BackendError = err.into();
        assert_eq!(err.determinate_kind(), Some(DeterminateKind::Corrupted));
    }

    #[test]
    fn lengths_beyond_their_field_are_refused_naming_the_limit() {
        let batch = sample(3);
        let row_len = batch.updates[1].row.byte_len() as u64;
        // Every row fits a limit of its own length; one byte less does not.
        let longest = batch
            .updates
            .iter()
            .map(|u| u.row.byte_len() as u64)
            .max()
            .unwrap();
        assert_eq!(
            encode_batch_within(&batch, longest).unwrap(),
            encode_batch(&batch).unwrap()
        );
        let err = encode_batch_within(&batch, row_len - 1).unwrap_err();
        assert_eq!(err.field, "row 0 length");
        assert_eq!((err.size, err.limit), (row_len, row_len - 1));
        assert!(
            err.to_string()
                .contains(&format!("is {row_len}, the limit is {}", row_len - 1)),
            "{err}"
        );

        let err = encode_batch_within(&sample(0), 0).unwrap_err();
        assert_eq!(err.field, "lower frontier element count");
        assert_eq!((err.size, err.limit), (1, 0));

        let shard = ShardId::from_bytes([3; 16]);
        let backend = err.into_backend_error(shard);
        let BackendError::InvalidUsage(InvalidUsage::TooLarge {
            shard: named,
            what,
            size,
            limit,
        }) = &backend
        else {
            panic!("{backend:?}");
        };
        assert_eq!((*named, *size, *limit), (shard, 1, 0));
        assert!(what.contains("lower frontier element count"), "{what}");
        assert!(
            backend.to_string().contains("is too large to store"),
            "{backend}"
        );
    }

    #[test]
    fn the_field_limit_is_u32_and_the_total_is_not_limited() {
        // A limit above u32::MAX is clamped: the layout cannot hold more.
        let batch = sample(2);
        assert_eq!(
            encode_batch_within(&batch, u64::MAX).unwrap(),
            encode_batch(&batch).unwrap()
        );
        // Many small rows whose lengths add up past a limit still encode:
        // only each length is limited, not their sum.
        let longest = batch
            .updates
            .iter()
            .map(|u| u.row.byte_len() as u64)
            .max()
            .unwrap();
        let many = sample(100);
        let total: u64 = many.updates.iter().map(|u| u.row.byte_len() as u64).sum();
        assert!(total > longest);
        assert!(encode_batch_within(&many, longest + 2).is_ok());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_batch::<u64>("fuzz", &bytes);
            let _ = decode_batch::<u64>("fuzz", &reseal(bytes));
        }

        #[test]
        fn mutations_are_detected_or_harmless(n in 0usize..20, position in any::<usize>(), value in any::<u8>()) {
            let batch = sample(n);
            let bytes = encode_batch(&batch).unwrap();
            let body_len = bytes.len() - 4;
            let mut body = bytes[..body_len].to_vec();
            let position = position % body_len;
            let changed = body[position] != value;
            body[position] = value;
            // A flipped byte with the old checksum is always caught.
            let mut unsealed = body.clone();
            unsealed.extend_from_slice(&bytes[body_len..]);
            if changed {
                prop_assert!(decode_batch::<u64>("fuzz", &unsealed).is_err());
            }
            // With a fresh checksum decoding may succeed, but never panics.
            let _ = decode_batch::<u64>("fuzz", &reseal(body));
        }
    }
}
