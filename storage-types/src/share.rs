//! [`ReadShare`]: one of `count` disjoint parts of a snapshot or fetch, so
//! that several readers (dataflow workers) can each fetch and decode only
//! their part of a read.

use std::fmt;

use crate::errors::InvalidUsage;
use crate::ids::ShardId;
use crate::row::Row;

/// Share `index` of `count` shares of one read.
///
/// The shares `0..count` of one
/// [`snapshot_share`](crate::PersistBackend::snapshot_share) or
/// [`fetch_share`](crate::PersistBackend::fetch_share), taken together,
/// consolidate to the whole read; each share is itself consolidated. The
/// division depends only on the update, never on how the shard happens to
/// be stored, so a share holds the same updates in every read: readers that
/// each read their share of *different* ranges, at different states of the
/// shard (appends and compactions in between), together read every update
/// exactly once. Backends divide by row ([`holds_row`](Self::holds_row), or
/// a hash the server computes), as early in the read as they can. A share is
/// valid iff `count > 0` and `index < count`; the backends answer an invalid
/// one with [`InvalidUsage::InvalidShare`].
///
/// ```
/// use tidemark_storage_types::{ReadShare, Row, Datum, ShardId};
/// let row = Row::pack([Datum::Int64(7)]);
/// // Exactly one of the shares of a count holds a given row.
/// let holders = (0..3).filter(|index| ReadShare::new(*index, 3).holds_row(&row)).count();
/// assert_eq!(holders, 1);
/// assert!(ReadShare::WHOLE.holds_row(&row));
/// assert!(ReadShare::new(3, 3).check(ShardId::new()).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadShare {
    /// Which share, from 0.
    pub index: u32,
    /// How many shares the read is divided into.
    pub count: u32,
}

impl ReadShare {
    /// The whole read as one share.
    pub const WHOLE: ReadShare = ReadShare { index: 0, count: 1 };

    /// Share `index` of `count` (not checked; see [`check`](Self::check)).
    #[must_use]
    pub const fn new(index: u32, count: u32) -> ReadShare {
        ReadShare { index, count }
    }

    /// The share a dataflow worker reads: its index among its peers.
    ///
    /// # Panics
    ///
    /// If there are more than `u32::MAX` workers (a programming error).
    #[must_use]
    pub fn of_worker(worker_index: usize, peers: usize) -> ReadShare {
        let index = u32::try_from(worker_index).expect("worker index fits in u32");
        let count = u32::try_from(peers).expect("worker count fits in u32");
        ReadShare { index, count }
    }

    /// Checks `count > 0` and `index < count`.
    ///
    /// # Errors
    ///
    /// [`InvalidUsage::InvalidShare`] naming the shard and the share.
    pub fn check(&self, shard: ShardId) -> Result<(), InvalidUsage> {
        if self.count == 0 || self.index >= self.count {
            return Err(InvalidUsage::InvalidShare {
                shard,
                index: self.index,
                count: self.count,
            });
        }
        Ok(())
    }

    /// Whether this share holds `row` when a backend divides by row: a
    /// stable hash (CRC-32 of the row's encoding) modulo `count` equals
    /// `index`. The same on every machine and every run. A share with
    /// `count == 0` holds nothing.
    #[must_use]
    pub fn holds_row(&self, row: &Row) -> bool {
        match self.count {
            0 => false,
            // The whole read: no hash to compute on the common path.
            1 => self.index == 0,
            count => crc32fast::hash(row.as_bytes()) % count == self.index,
        }
    }
}

impl fmt::Display for ReadShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Datum;

    #[test]
    fn every_row_is_in_exactly_one_share() {
        for count in 1..=5 {
            for value in 0..200 {
                let row = Row::pack([Datum::Int64(value)]);
                let holders = (0..count)
                    .filter(|index| ReadShare::new(*index, count).holds_row(&row))
                    .count();
                assert_eq!(holders, 1, "row={value} count={count}");
            }
        }
    }

    #[test]
    fn invalid_shares_are_named() {
        let shard = ShardId::new();
        assert!(ReadShare::new(0, 1).check(shard).is_ok());
        let err = ReadShare::new(0, 0).check(shard).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid read share: index must be below a count above zero: shard={shard} index=0 count=0"
            )
        );
        assert!(ReadShare::new(2, 2).check(shard).is_err());
        assert!(!ReadShare::new(0, 0).holds_row(&Row::pack([Datum::Int64(1)])));
    }
}
