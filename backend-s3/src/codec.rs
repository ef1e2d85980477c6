//! Batches as part objects: sorted, consolidated updates split into parts of
//! about the configured size, each encoded with the shared batch codec
//! (checksummed, so a corrupted part is reported naming its key). Also the
//! shard state's binary encoding, which every commit of a plain state
//! writes (decision 125).

use std::collections::VecDeque;

use bytes::Bytes;
use differential_dataflow::consolidation::consolidate_updates;
use tidemark_storage_types::{
    BackendError, Batch, BatchEncodeError, Diff, Row, StorageTimestamp, Update,
    decode_batch_shared, encode_batch,
};
use timely::progress::Antichain;
use uuid::Uuid;

use crate::buckets::{BucketSet, bucket_bit, bucket_of, group_count};
use crate::state::{
    AppliedToken, BatchRef, EncodedFrontier, PartRef, RetiredPart, STATE_FORMAT, ShardState,
    encode_frontier,
};

/// Bytes an update takes in the codec besides its row: length, time, diff.
pub(crate) const CODEC_BYTES_PER_UPDATE: usize = 4 + 8 + 8;

/// A part ready to upload.
#[derive(Clone, Debug)]
pub(crate) struct EncodedPart {
    pub part: PartRef,
    pub body: Bytes,
}

/// Sorts and consolidates `updates` and splits them into encoded parts of
/// about `part_size_bytes` each. Returns the batch's state entry and the
/// parts to upload (none if everything cancelled out).
///
/// A batch of more than a quarter of a part is written as one sorted run per bucket
/// group ([`group_count`] groups; group `g` holds the rows whose bucket `b`
/// has `b % groups == g`), so that a read share downloads only the groups
/// that can hold its rows; a smaller batch is one run. Every part records
/// the buckets its rows fall in.
///
/// # Errors
///
/// [`BatchEncodeError`] if a row or frontier does not fit the codec's
/// length fields (callers answer it with
/// [`BatchEncodeError::into_backend_error`]).
pub(crate) fn encode_parts<T: StorageTimestamp>(
    mut updates: Vec<(Row, T, Diff)>,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    since: &Antichain<T>,
    part_size_bytes: usize,
) -> Result<(BatchRef, Vec<EncodedPart>), BatchEncodeError> {
    consolidate_updates(&mut updates);
    let encoded_bytes: usize = updates
        .iter()
        .map(|(row, _, _)| row.byte_len() + CODEC_BYTES_PER_UPDATE)
        .sum();
    let groups = group_count(encoded_bytes, part_size_bytes);
    let mut parts = Vec::new();
    let mut writer = PartWriter {
        lower,
        upper,
        since,
        part_size_bytes,
        parts: &mut parts,
    };
    if groups == 1 {
        writer.write_run(0, updates)?;
    } else {
        // A stable partition of the sorted updates: each group stays sorted.
        let mut by_group: Vec<Vec<(Row, T, Diff)>> = (0..groups).map(|_| Vec::new()).collect();
        for update in updates {
            let group = bucket_of(&update.0) % groups;
            by_group[group as usize].push(update);
        }
        let groups = by_group.into_iter().filter(|group| !group.is_empty());
        for (run, group) in (0..).zip(groups) {
            writer.write_run(run, group)?;
        }
    }
    let batch = BatchRef {
        lower: encode_frontier(lower),
        upper: encode_frontier(upper),
        since: encode_frontier(since),
        parts: parts.iter().map(|encoded| encoded.part.clone()).collect(),
    };
    Ok((batch, parts))
}

/// Encodes sorted runs into parts of about `part_size_bytes`.
struct PartWriter<'a, T> {
    lower: &'a Antichain<T>,
    upper: &'a Antichain<T>,
    since: &'a Antichain<T>,
    part_size_bytes: usize,
    parts: &'a mut Vec<EncodedPart>,
}

impl<T: StorageTimestamp> PartWriter<'_, T> {
    /// Writes one sorted run as consecutive parts, numbered `run`.
    fn write_run(
        &mut self,
        run: u32,
        updates: Vec<(Row, T, Diff)>,
    ) -> Result<(), BatchEncodeError> {
        let mut current: Vec<Update<T>> = Vec::new();
        let mut current_bytes = 0;
        let mut buckets: BucketSet = 0;
        for (row, timestamp, diff) in updates {
            current_bytes += row.byte_len() + CODEC_BYTES_PER_UPDATE;
            buckets |= bucket_bit(bucket_of(&row));
            current.push(Update::new(row, timestamp, diff));
            if current_bytes >= self.part_size_bytes {
                self.flush(run, &mut current, buckets)?;
                current_bytes = 0;
                buckets = 0;
            }
        }
        self.flush(run, &mut current, buckets)
    }

    fn flush(
        &mut self,
        run: u32,
        current: &mut Vec<Update<T>>,
        buckets: BucketSet,
    ) -> Result<(), BatchEncodeError> {
        if current.is_empty() {
            return Ok(());
        }
        let batch = Batch {
            lower: self.lower.clone(),
            upper: self.upper.clone(),
            since: self.since.clone(),
            updates: std::mem::take(current),
        };
        let body = encode_batch(&batch)?;
        self.parts.push(EncodedPart {
            part: PartRef {
                id: Uuid::new_v4(),
                updates: batch.updates.len() as u64,
                bytes: body.len() as u64,
                buckets,
                run,
                inline: None,
            },
            body: Bytes::from(body),
        });
        Ok(())
    }
}

/// Decodes a part, checking its checksum; `key` names it in errors.
///
/// # Errors
///
/// `Determinate(Corrupted)` naming the key.
pub(crate) fn decode_part<T: StorageTimestamp>(
    key: &str,
    bytes: Bytes,
) -> Result<Vec<Update<T>>, BackendError> {
    // Rows share the part's buffer: one allocation per part, not per row.
    Ok(decode_batch_shared::<T>(key, bytes)?.updates)
}

/// Advances `time` by an encoded since (the join, for a total order).
pub(crate) fn advance_time<T: StorageTimestamp>(time: T, since: EncodedFrontier) -> T {
    match since {
        Some(since) if time.encode() < since => T::decode(since),
        _ => time,
    }
}

/// The first bytes of a state in the binary encoding (format
/// [`STATE_FORMAT`] and later): never the start of a JSON document, so a
/// reader tells the two encodings apart by them.
pub(crate) const BINARY_STATE_MAGIC: [u8; 4] = *b"TMSB";

/// Bytes of a frontier in the binary state: a tag (0 = empty, 1 = one
/// time) and the encoded time.
const FRONTIER_BYTES: usize = 1 + 8;

/// Bytes of a remembered token in the binary state.
const TOKEN_BYTES: usize = 16 + 2 * FRONTIER_BYTES;

/// Bytes of a part's fixed fields in the binary state: id, updates, bytes,
/// buckets, run and the inline flag (an inline body follows, as its length
/// and bytes).
const PART_BYTES: usize = 16 + 8 + 8 + 8 + 4 + 1;

/// Writes a plain state (no pending intent, not in log mode) in the binary
/// encoding: magic, format, the fields in declaration order (integers
/// little-endian, frontiers tagged, sequences counted, inline bodies as
/// they are), then the CRC-32 of everything before it. Inline bodies are
/// copied, not re-encoded, and the buffer is sized before it is written.
///
/// Returns `None` for a state with an intent or a log link (written as
/// JSON in their own formats), or of another format than
/// [`STATE_FORMAT`].
pub(crate) fn encode_state_binary(state: &ShardState) -> Option<Vec<u8>> {
    // Every field is named, so a field added to the state cannot be left
    // out of the encoding unnoticed.
    let ShardState {
        format,
        seqno,
        since,
        upper,
        finalized,
        batches,
        tokens,
        retired,
        writer_epoch,
        pending,
        log,
    } = state;
    if pending.is_some() || log.is_some() || *format != STATE_FORMAT {
        return None;
    }
    let batch_bytes: usize = batches
        .iter()
        .map(|batch| {
            3 * FRONTIER_BYTES
                + 4
                + batch
                    .parts
                    .iter()
                    .map(|part| PART_BYTES + part.inline.as_ref().map_or(0, |body| 4 + body.len()))
                    .sum::<usize>()
        })
        .sum();
    let capacity = 4
        + 4
        + 8
        + 2 * FRONTIER_BYTES
        + 1
        + 8
        + 4
        + batch_bytes
        + 4
        + tokens.len() * TOKEN_BYTES
        + 4
        + retired.len() * (16 + 8)
        + 4;
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(&BINARY_STATE_MAGIC);
    out.extend_from_slice(&format.to_le_bytes());
    out.extend_from_slice(&seqno.to_le_bytes());
    put_frontier(&mut out, *since);
    put_frontier(&mut out, *upper);
    out.push(u8::from(*finalized));
    out.extend_from_slice(&writer_epoch.to_le_bytes());
    put_count(&mut out, batches.len());
    for batch in batches {
        let BatchRef {
            lower,
            upper,
            since,
            parts,
        } = batch;
        put_frontier(&mut out, *lower);
        put_frontier(&mut out, *upper);
        put_frontier(&mut out, *since);
        put_count(&mut out, parts.len());
        for part in parts {
            let PartRef {
                id,
                updates,
                bytes,
                buckets,
                run,
                inline,
            } = part;
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(&updates.to_le_bytes());
            out.extend_from_slice(&bytes.to_le_bytes());
            out.extend_from_slice(&buckets.to_le_bytes());
            out.extend_from_slice(&run.to_le_bytes());
            match inline {
                None => out.push(0),
                Some(body) => {
                    out.push(1);
                    put_count(&mut out, body.len());
                    out.extend_from_slice(body);
                }
            }
        }
    }
    put_count(&mut out, tokens.len());
    for AppliedToken {
        token,
        expected_upper,
        new_upper,
    } in tokens
    {
        out.extend_from_slice(token.as_bytes());
        put_frontier(&mut out, *expected_upper);
        put_frontier(&mut out, *new_upper);
    }
    put_count(&mut out, retired.len());
    for RetiredPart { id, retired_at_ms } in retired {
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&retired_at_ms.to_le_bytes());
    }
    let checksum = crc32fast::hash(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    debug_assert_eq!(out.len(), capacity, "the binary state was sized exactly");
    Some(out)
}

fn put_frontier(out: &mut Vec<u8>, frontier: EncodedFrontier) {
    match frontier {
        None => out.extend_from_slice(&[0; FRONTIER_BYTES]),
        Some(time) => {
            out.push(1);
            out.extend_from_slice(&time.to_le_bytes());
        }
    }
}

fn put_count(out: &mut Vec<u8>, count: usize) {
    let count = u32::try_from(count).expect("a state's sequences and bodies are far below 4 GiB");
    out.extend_from_slice(&count.to_le_bytes());
}

/// The format a binary state names (after its magic), if it is long
/// enough to name one.
pub(crate) fn binary_state_format(bytes: &[u8]) -> Option<u32> {
    let format = bytes.get(BINARY_STATE_MAGIC.len()..BINARY_STATE_MAGIC.len() + 4)?;
    Some(u32::from_le_bytes(format.try_into().expect("four bytes")))
}

/// Why bytes are not a binary state.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BinaryStateError {
    #[error("binary state is truncated: needed={needed} at={at} len={len}")]
    Truncated {
        needed: usize,
        at: usize,
        len: usize,
    },
    #[error("binary state checksum mismatch: stored={stored:#010x} computed={computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("binary state has an invalid {what}: value={value} at={at}")]
    Invalid {
        what: &'static str,
        value: u64,
        at: usize,
    },
    #[error("binary state has {extra} bytes after its last field")]
    Trailing { extra: usize },
}

/// Reads a state in the binary encoding (after checking its magic and
/// checksum). The format is returned as stored: the caller checks it.
pub(crate) fn decode_state_binary(bytes: &[u8]) -> Result<ShardState, BinaryStateError> {
    let Some(body_len) = bytes.len().checked_sub(4).filter(|len| *len >= 4) else {
        return Err(BinaryStateError::Truncated {
            needed: 8,
            at: 0,
            len: bytes.len(),
        });
    };
    let (body, stored) = bytes.split_at(body_len);
    let stored = u32::from_le_bytes(stored.try_into().expect("four bytes"));
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(BinaryStateError::Checksum { stored, computed });
    }
    let mut reader = Reader { body, at: 0 };
    if reader.take(BINARY_STATE_MAGIC.len())? != BINARY_STATE_MAGIC.as_slice() {
        return Err(BinaryStateError::Invalid {
            what: "magic",
            value: 0,
            at: 0,
        });
    }
    let format = reader.u32()?;
    let seqno = reader.u64()?;
    let since = reader.frontier()?;
    let upper = reader.frontier()?;
    let finalized = reader.flag("finalized flag")?;
    let writer_epoch = reader.u64()?;
    let batch_count = reader.count(3 * FRONTIER_BYTES + 4)?;
    let mut batches = Vec::with_capacity(batch_count);
    for _ in 0..batch_count {
        let lower = reader.frontier()?;
        let upper = reader.frontier()?;
        let since = reader.frontier()?;
        let part_count = reader.count(PART_BYTES)?;
        let mut parts = Vec::with_capacity(part_count);
        for _ in 0..part_count {
            let id = reader.uuid()?;
            let updates = reader.u64()?;
            let bytes = reader.u64()?;
            let buckets = reader.u64()?;
            let run = reader.u32()?;
            let inline = if reader.flag("inline flag")? {
                let len = reader.count(1)?;
                Some(Bytes::copy_from_slice(reader.take(len)?))
            } else {
                None
            };
            parts.push(PartRef {
                id,
                updates,
                bytes,
                buckets,
                run,
                inline,
            });
        }
        batches.push(BatchRef {
            lower,
            upper,
            since,
            parts,
        });
    }
    let token_count = reader.count(TOKEN_BYTES)?;
    let mut tokens = VecDeque::with_capacity(token_count);
    for _ in 0..token_count {
        tokens.push_back(AppliedToken {
            token: reader.uuid()?,
            expected_upper: reader.frontier()?,
            new_upper: reader.frontier()?,
        });
    }
    let retired_count = reader.count(16 + 8)?;
    let mut retired = Vec::with_capacity(retired_count);
    for _ in 0..retired_count {
        retired.push(RetiredPart {
            id: reader.uuid()?,
            retired_at_ms: reader.u64()?,
        });
    }
    if reader.at != body.len() {
        return Err(BinaryStateError::Trailing {
            extra: body.len() - reader.at,
        });
    }
    Ok(ShardState {
        format,
        seqno,
        since,
        upper,
        finalized,
        batches,
        tokens,
        retired,
        writer_epoch,
        pending: None,
        log: None,
    })
}

/// A bounds-checked cursor over a binary state's body.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], BinaryStateError> {
        let truncated = || BinaryStateError::Truncated {
            needed: len,
            at: self.at,
            len: self.body.len(),
        };
        let body: &'a [u8] = self.body;
        let end = self.at.checked_add(len).ok_or_else(truncated)?;
        let taken = body.get(self.at..end).ok_or_else(truncated)?;
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BinaryStateError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self) -> Result<u32, BinaryStateError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, BinaryStateError> {
        self.array().map(u64::from_le_bytes)
    }

    fn uuid(&mut self) -> Result<Uuid, BinaryStateError> {
        self.array().map(Uuid::from_bytes)
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, BinaryStateError> {
        let at = self.at;
        match self.array::<1>()? {
            [0] => Ok(false),
            [1] => Ok(true),
            [value] => Err(BinaryStateError::Invalid {
                what,
                value: value.into(),
                at,
            }),
        }
    }

    fn frontier(&mut self) -> Result<EncodedFrontier, BinaryStateError> {
        let at = self.at;
        let [tag] = self.array::<1>()?;
        let time = i64::from_le_bytes(self.array()?);
        match (tag, time) {
            (0, 0) => Ok(None),
            (1, time) => Ok(Some(time)),
            (tag, _) => Err(BinaryStateError::Invalid {
                what: "frontier tag",
                value: tag.into(),
                at,
            }),
        }
    }

    /// A count of items of at least `min_item_bytes` each, refused if the
    /// rest of the body cannot hold that many (so a corrupted count cannot
    /// ask for a huge allocation).
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, BinaryStateError> {
        let at = self.at;
        let count = self.u32()? as usize;
        let left = self.body.len() - self.at;
        if count.saturating_mul(min_item_bytes) > left {
            return Err(BinaryStateError::Invalid {
                what: "count",
                value: count as u64,
                at,
            });
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use tidemark_storage_types::{Codec64, Datum};

    use super::*;

    #[test]
    fn parts_split_by_size_and_round_trip() {
        // Small enough for one run (under a quarter of a 1 MiB part).
        let updates: Vec<(Row, u64, Diff)> = (0..1000)
            .map(|i| (Row::pack([Datum::Int64(i % 300)]), (i % 7) as u64, 1))
            .collect();
        let frontier = |t| Antichain::from_elem(t);
        let (batch, parts) =
            encode_parts(updates, &frontier(0), &frontier(10), &frontier(0), 1 << 20).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(batch.runs().count(), 1);
        // Larger: one run per bucket group, each split into parts by size.
        let updates: Vec<(Row, u64, Diff)> = (0..20_000)
            .map(|i| (Row::pack([Datum::Int64(i)]), (i % 7) as u64, 1))
            .collect();
        let mut expected = updates.clone();
        consolidate_updates(&mut expected);
        let (batch, parts) =
            encode_parts(updates, &frontier(0), &frontier(10), &frontier(0), 8192).unwrap();
        let groups = group_count(
            expected
                .iter()
                .map(|(row, _, _)| row.byte_len() + CODEC_BYTES_PER_UPDATE)
                .sum(),
            8192,
        );
        assert!(groups > 1, "expected several groups, got {groups}");
        assert_eq!(batch.runs().count(), groups as usize);
        assert!(parts.len() > groups as usize, "groups split into parts");
        assert_eq!(batch.updates(), expected.len() as u64);
        let mut decoded = Vec::new();
        for (run, run_parts) in batch.runs().enumerate() {
            let mut run_updates = Vec::new();
            for part_ref in run_parts {
                assert_eq!(part_ref.run as usize, run);
                let part = parts
                    .iter()
                    .find(|part| part.part.id == part_ref.id)
                    .unwrap();
                let updates = decode_part::<u64>("k", part.body.clone()).unwrap();
                assert_eq!(updates.len() as u64, part.part.updates);
                let mut buckets = 0;
                for update in &updates {
                    let bucket = bucket_of(&update.row);
                    assert_eq!(bucket % groups, run as u32 % groups);
                    buckets |= bucket_bit(bucket);
                }
                assert_eq!(buckets, part.part.buckets, "parts record their buckets");
                run_updates.extend(updates.into_iter().map(|u| (u.row, u.timestamp, u.diff)));
            }
            assert!(run_updates.is_sorted(), "a run's parts concatenate sorted");
            decoded.extend(run_updates);
        }
        decoded.sort();
        assert_eq!(decoded, expected, "the runs hold the batch");
    }

    #[test]
    fn cancelled_batches_have_no_parts() {
        let row = Row::pack([Datum::Int64(1)]);
        let updates = vec![(row.clone(), 1u64, 1), (row, 1, -1)];
        let frontier = |t| Antichain::from_elem(t);
        let (batch, parts) =
            encode_parts(updates, &frontier(0), &frontier(2), &frontier(0), 4096).unwrap();
        assert!(parts.is_empty() && batch.parts.is_empty());
        assert_eq!(advance_time(3u64, Some(5u64.encode())), 5);
        assert_eq!(advance_time(7u64, Some(5u64.encode())), 7);
        assert_eq!(advance_time(7u64, None), 7);
    }
}
