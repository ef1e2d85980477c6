//! Shares of snapshots and fetches: each reader walks the spine and keeps
//! only the rows its [`ReadShare`] holds (by a stable hash of the row), so
//! the shares of one read are disjoint by row.

use differential_dataflow::consolidation::{consolidate, consolidate_updates};
use tidemark_storage_types::{
    Diff, InvalidUsage, ReadShare, Row, ShardId, StorageTimestamp, Update, contract,
};
use timely::progress::Antichain;

use crate::shard::ReadView;

/// The rows of the snapshot at `as_of` that `share` holds, consolidated and
/// sorted by row.
///
/// # Errors
///
/// [`InvalidUsage::InvalidShare`] for an invalid share;
/// [`InvalidUsage::AsOfNotReadable`] as [`crate::read::snapshot`].
pub fn snapshot_share<T: StorageTimestamp>(
    shard: ShardId,
    view: &ReadView<T>,
    as_of: &T,
    share: ReadShare,
) -> Result<Vec<(Row, Diff)>, InvalidUsage> {
    share.check(shard)?;
    contract::check_readable(shard, &view.since, &view.upper, as_of)?;
    let mut contents = Vec::new();
    for batch in &view.batches {
        if batch
            .time_bounds()
            .is_none_or(|(earliest, _)| !earliest.less_equal(as_of))
        {
            continue;
        }
        contents.extend(
            batch
                .updates()
                .iter()
                .filter(|(row, time, _)| time.less_equal(as_of) && share.holds_row(row))
                .map(|(row, _, diff)| (row.clone(), *diff)),
        );
    }
    consolidate(&mut contents);
    Ok(contents)
}

/// The updates of the fetch of `[lower, upper)` whose rows `share` holds,
/// times advanced by the since, consolidated and sorted by `(time, row)`.
///
/// # Errors
///
/// [`InvalidUsage::InvalidShare`] for an invalid share;
/// [`InvalidUsage::FetchRangeInvalid`] as [`crate::read::fetch`].
pub fn fetch_share<T: StorageTimestamp>(
    shard: ShardId,
    view: &ReadView<T>,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    share: ReadShare,
) -> Result<Vec<Update<T>>, InvalidUsage> {
    share.check(shard)?;
    contract::check_fetch_range(shard, lower, upper, &view.upper)?;
    if view.since.is_empty() {
        return Ok(Vec::new());
    }
    let mut updates = Vec::new();
    for batch in &view.batches {
        let Some((earliest, latest)) = batch.time_bounds() else {
            continue;
        };
        let (mut earliest, mut latest) = (*earliest, *latest);
        earliest.advance_by(view.since.borrow());
        latest.advance_by(view.since.borrow());
        if upper.less_equal(&earliest) || !lower.less_equal(&latest) {
            continue;
        }
        for (row, time, diff) in batch.updates() {
            if !share.holds_row(row) {
                continue;
            }
            let mut time = *time;
            time.advance_by(view.since.borrow());
            if lower.less_equal(&time) && !upper.less_equal(&time) {
                updates.push((time, row.clone(), *diff));
            }
        }
    }
    consolidate_updates(&mut updates);
    Ok(updates
        .into_iter()
        .map(|(time, row, diff)| Update::new(row, time, diff))
        .collect())
}
