//! Row buckets: how this backend divides a shard's updates so that a read
//! share downloads only the parts that can hold its rows.
//!
//! Every row falls in one of [`BUCKETS`] buckets, `crc32(row) % BUCKETS`, a
//! function of the row alone. Every part records the set of buckets its rows
//! fall in ([`BucketSet`], a bitmask, in the shard state). Large batches are
//! written as one sorted run per *bucket group* (group `g` of `G` holds the
//! buckets `b` with `b % G == g`), so their parts hold few buckets; small
//! batches stay one run whose parts hold whatever buckets their rows fall in.
//!
//! A read share (`index` of `count`) holds a row by its bucket when
//! `count <= BUCKETS`: share `bucket % count`. It then downloads only the
//! parts whose bucket set meets its own buckets, and keeps every row of a
//! part whose buckets are all its own, filtering rows only in parts that mix
//! its buckets with others. With `count > BUCKETS` a bucket cannot go to one
//! share alone, so a share holds the rows with `crc32(row) % count == index`;
//! since `gcd(count, BUCKETS)` divides both moduli, those rows lie in the
//! buckets `b` with `b % gcd == index % gcd`, and the share downloads the
//! parts meeting those buckets and filters every row.
//!
//! SUBTLE: the division depends only on the row, never on where a part sits
//! in a state, so a share holds the same updates in every read of every
//! state (decision 061: readers follow the upper on their own and read
//! different states).

use tidemark_storage_types::{ReadShare, Row};

/// Buckets per shard. A format constant: changing it changes which rows a
/// stored bucket set names.
pub(crate) const BUCKETS: u32 = 64;

/// A set of buckets, bit `b` for bucket `b`.
pub(crate) type BucketSet = u64;

/// Every bucket: what a part written before parts recorded their buckets
/// holds, as far as a reader can tell.
pub(crate) const ALL_BUCKETS: BucketSet = u64::MAX;

/// The stable hash rows are bucketed and divided by.
fn row_hash(row: &Row) -> u32 {
    crc32fast::hash(row.as_bytes())
}

/// The bucket of a row.
pub(crate) fn bucket_of(row: &Row) -> u32 {
    row_hash(row) % BUCKETS
}

/// The set holding just `bucket`.
pub(crate) fn bucket_bit(bucket: u32) -> BucketSet {
    1 << bucket
}

/// A bucket group holds at least `part_size_bytes / GROUP_FRACTION` bytes.
const GROUP_FRACTION: usize = 8;

/// How many bucket groups a batch of about `encoded_bytes` is written as:
/// one group per `part_size_bytes / 8` (so a group is at least an eighth of
/// a part, and the PUTs of a batch are at most its parts plus its groups),
/// rounded down to a power of two, at most [`BUCKETS`]. One group is one
/// mixed run, as a small batch is written.
pub(crate) fn group_count(encoded_bytes: usize, part_size_bytes: usize) -> u32 {
    let group_bytes = (part_size_bytes / GROUP_FRACTION).max(1);
    let groups = (encoded_bytes / group_bytes).clamp(1, BUCKETS as usize);
    // A power of two, so the groups of the shares of a power-of-two count
    // are whole groups.
    let groups = 1usize << groups.ilog2();
    u32::try_from(groups).expect("at most BUCKETS groups")
}

/// A read share as this backend divides it: which rows it holds and which
/// parts it needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShareBuckets {
    share: ReadShare,
    /// The buckets that can hold the share's rows.
    buckets: BucketSet,
    /// Whether every row of those buckets is the share's
    /// (`count <= BUCKETS`).
    by_bucket: bool,
}

impl ShareBuckets {
    /// The division of a valid share (checked by the caller).
    pub(crate) fn new(share: ReadShare) -> Self {
        let count = share.count.max(1);
        let by_bucket = count <= BUCKETS;
        // With `count <= BUCKETS` the share's buckets are those `b` with
        // `b % count == index`; beyond, `b % gcd == index % gcd`.
        let modulus = if by_bucket {
            count
        } else {
            gcd(count, BUCKETS)
        };
        let residue = share.index % modulus;
        let buckets = (0..BUCKETS)
            .filter(|bucket| bucket % modulus == residue)
            .fold(0, |set, bucket| set | bucket_bit(bucket));
        ShareBuckets {
            share,
            buckets,
            by_bucket,
        }
    }

    /// Whether the share holds `row`.
    pub(crate) fn holds_row(&self, row: &Row) -> bool {
        match self.share.count {
            0 => false,
            1 => true,
            count if self.by_bucket => bucket_of(row) % count == self.share.index,
            count => row_hash(row) % count == self.share.index,
        }
    }

    /// Whether a part holding `part_buckets` may hold rows of the share.
    pub(crate) fn needs_part(&self, part_buckets: BucketSet) -> bool {
        part_buckets & self.buckets != 0
    }

    /// Whether every row of a part holding `part_buckets` is the share's, so
    /// the part's rows need no filtering.
    pub(crate) fn holds_whole_part(&self, part_buckets: BucketSet) -> bool {
        self.by_bucket && part_buckets & !self.buckets == 0
    }
}

fn gcd(mut left: u32, mut right: u32) -> u32 {
    while right != 0 {
        (left, right) = (right, left % right);
    }
    left
}

#[cfg(test)]
mod tests {
    use tidemark_storage_types::Datum;

    use super::*;

    fn rows() -> Vec<Row> {
        (0..2000)
            .map(|value| Row::pack([Datum::Int64(value), Datum::String("bucket")]))
            .collect()
    }

    #[test]
    fn every_row_is_in_exactly_one_share_and_in_its_buckets() {
        for count in [1, 2, 3, 4, 5, 8, 63, 64, 65, 96, 128, 200] {
            let shares: Vec<ShareBuckets> = (0..count)
                .map(|index| ShareBuckets::new(ReadShare::new(index, count)))
                .collect();
            for row in rows() {
                let holders: Vec<&ShareBuckets> = shares
                    .iter()
                    .filter(|share| share.holds_row(&row))
                    .collect();
                assert_eq!(holders.len(), 1, "count={count}");
                let bit = bucket_bit(bucket_of(&row));
                assert!(holders[0].needs_part(bit), "count={count}");
            }
        }
    }

    #[test]
    fn whole_parts_are_whole_only_when_the_division_is_by_bucket() {
        let share = ShareBuckets::new(ReadShare::new(1, 4));
        let own = bucket_bit(1) | bucket_bit(5) | bucket_bit(61);
        assert!(share.needs_part(own) && share.holds_whole_part(own));
        let mixed = own | bucket_bit(2);
        assert!(share.needs_part(mixed) && !share.holds_whole_part(mixed));
        assert!(!share.needs_part(bucket_bit(2) | bucket_bit(3)));
        assert!(share.needs_part(ALL_BUCKETS) && !share.holds_whole_part(ALL_BUCKETS));
        let whole = ShareBuckets::new(ReadShare::WHOLE);
        assert!(whole.holds_whole_part(ALL_BUCKETS));
        // Beyond BUCKETS shares, rows are always filtered.
        let wide = ShareBuckets::new(ReadShare::new(3, 128));
        assert!(wide.needs_part(bucket_bit(3)) && !wide.holds_whole_part(bucket_bit(3)));
        assert!(!wide.needs_part(bucket_bit(4)));
    }

    #[test]
    fn group_counts_are_powers_of_two_up_to_the_bucket_count() {
        assert_eq!(group_count(0, 1024), 1);
        assert_eq!(group_count(255, 1024), 1);
        assert_eq!(group_count(256, 1024), 2);
        assert_eq!(group_count(3 * 128, 1024), 2);
        assert_eq!(group_count(4 * 128, 1024), 4);
        assert_eq!(group_count(usize::MAX, 1024), BUCKETS);
    }
}
