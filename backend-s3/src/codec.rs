//! Batches as part objects: sorted, consolidated updates split into parts of
//! about the configured size, each encoded with the shared batch codec
//! (checksummed, so a corrupted part is reported naming its key).

use bytes::Bytes;
use differential_dataflow::consolidation::consolidate_updates;
use tidemark_storage_types::{
    BackendError, Batch, Diff, Row, StorageTimestamp, Update, decode_batch_shared, encode_batch,
};
use timely::progress::Antichain;
use uuid::Uuid;

use crate::state::{BatchRef, EncodedFrontier, PartRef, encode_frontier};

/// Bytes an update takes in the codec besides its row: length, time, diff.
const CODEC_BYTES_PER_UPDATE: usize = 4 + 8 + 8;

/// A part ready to upload.
#[derive(Clone, Debug)]
pub(crate) struct EncodedPart {
    pub part: PartRef,
    pub body: Bytes,
}

/// Sorts and consolidates `updates` and splits them into encoded parts of
/// about `part_size_bytes` each. Returns the batch's state entry and the
/// parts to upload (none if everything cancelled out).
pub(crate) fn encode_parts<T: StorageTimestamp>(
    mut updates: Vec<(Row, T, Diff)>,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    since: &Antichain<T>,
    part_size_bytes: usize,
) -> (BatchRef, Vec<EncodedPart>) {
    consolidate_updates(&mut updates);
    let mut parts = Vec::new();
    let mut current: Vec<Update<T>> = Vec::new();
    let mut current_bytes = 0;
    let flush = |current: &mut Vec<Update<T>>, parts: &mut Vec<EncodedPart>| {
        if current.is_empty() {
            return;
        }
        let batch = Batch {
            lower: lower.clone(),
            upper: upper.clone(),
            since: since.clone(),
            updates: std::mem::take(current),
        };
        let body = encode_batch(&batch);
        parts.push(EncodedPart {
            part: PartRef {
                id: Uuid::new_v4(),
                updates: batch.updates.len() as u64,
                bytes: body.len() as u64,
            },
            body: Bytes::from(body),
        });
    };
    for (row, timestamp, diff) in updates {
        current_bytes += row.byte_len() + CODEC_BYTES_PER_UPDATE;
        current.push(Update::new(row, timestamp, diff));
        if current_bytes >= part_size_bytes {
            flush(&mut current, &mut parts);
            current_bytes = 0;
        }
    }
    flush(&mut current, &mut parts);
    let batch = BatchRef {
        lower: encode_frontier(lower),
        upper: encode_frontier(upper),
        since: encode_frontier(since),
        parts: parts.iter().map(|encoded| encoded.part.clone()).collect(),
    };
    (batch, parts)
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

#[cfg(test)]
mod tests {
    use tidemark_storage_types::{Codec64, Datum};

    use super::*;

    #[test]
    fn parts_split_by_size_and_round_trip() {
        let updates: Vec<(Row, u64, Diff)> = (0..1000)
            .map(|i| (Row::pack([Datum::Int64(i % 300)]), (i % 7) as u64, 1))
            .collect();
        let mut expected = updates.clone();
        consolidate_updates(&mut expected);
        let frontier = |t| Antichain::from_elem(t);
        let (batch, parts) = encode_parts(updates, &frontier(0), &frontier(10), &frontier(0), 2048);
        assert!(
            parts.len() > 1,
            "expected several parts, got {}",
            parts.len()
        );
        assert_eq!(batch.updates(), expected.len() as u64);
        let mut decoded = Vec::new();
        for part in &parts {
            let updates = decode_part::<u64>("k", part.body.clone()).unwrap();
            assert_eq!(updates.len() as u64, part.part.updates);
            decoded.extend(updates.into_iter().map(|u| (u.row, u.timestamp, u.diff)));
        }
        assert_eq!(decoded, expected, "parts concatenate to the sorted batch");
    }

    #[test]
    fn cancelled_batches_have_no_parts() {
        let row = Row::pack([Datum::Int64(1)]);
        let updates = vec![(row.clone(), 1u64, 1), (row, 1, -1)];
        let frontier = |t| Antichain::from_elem(t);
        let (batch, parts) = encode_parts(updates, &frontier(0), &frontier(2), &frontier(0), 4096);
        assert!(parts.is_empty() && batch.parts.is_empty());
        assert_eq!(advance_time(3u64, Some(5u64.encode())), 5);
        assert_eq!(advance_time(7u64, Some(5u64.encode())), 7);
        assert_eq!(advance_time(7u64, None), 7);
    }
}
