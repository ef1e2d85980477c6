//! Batches as part objects: sorted, consolidated updates split into parts of
//! about the configured size, each encoded with the shared batch codec
//! (checksummed, so a corrupted part is reported naming its key).

use bytes::Bytes;
use differential_dataflow::consolidation::consolidate_updates;
use tidemark_storage_types::{
    BackendError, Batch, BatchEncodeError, Diff, Row, StorageTimestamp, Update,
    decode_batch_shared, encode_batch,
};
use timely::progress::Antichain;
use uuid::Uuid;

use crate::buckets::{BucketSet, bucket_bit, bucket_of, group_count};
use crate::state::{BatchRef, EncodedFrontier, PartRef, encode_frontier};

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
