//! Shared vocabulary of the properties: frontiers, rows, checked calls that
//! name the property's step when they fail, and the reference model
//! (logical compaction of every update ever appended).

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;
use tidemark_storage_types::WriteFence;

use differential_dataflow::consolidation::consolidate;
use timely::progress::Antichain;

use tidemark_storage_types::{
    BackendError, Datum, Diff, IdempotencyToken, InvalidUsage, PersistBackend, Row, ShardFrontiers,
    ShardId, Update, UpperMismatch,
};

/// How long a property waits for something that must happen before it
/// declares the backend hung. A guard against a hang, not an assertion about
/// speed: a correct backend finishes in a small fraction of it.
pub(crate) const HANG_GUARD: Duration = Duration::from_secs(120);

/// The frontier `[time]`.
pub(crate) fn at(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

/// The empty frontier `[]`.
pub(crate) fn sealed() -> Antichain<u64> {
    Antichain::new()
}

/// The frontiers `since`, `upper`.
pub(crate) fn frontiers(since: Antichain<u64>, upper: Antichain<u64>) -> ShardFrontiers<u64> {
    ShardFrontiers { since, upper }
}

/// A one-column row holding an integer.
pub(crate) fn int_row(value: i64) -> Row {
    Row::pack([Datum::Int64(value)])
}

/// A two-column row `(key, label)`.
pub(crate) fn keyed_row(key: i64, label: &str) -> Row {
    Row::pack([Datum::Int64(key), Datum::String(label)])
}

/// An update.
pub(crate) fn update(row: Row, timestamp: u64, diff: Diff) -> Update<u64> {
    Update::new(row, timestamp, diff)
}

/// Awaits `future`, panicking with `what` if it does not finish within
/// [`HANG_GUARD`].
pub(crate) async fn within_guard<O>(what: &str, future: impl Future<Output = O>) -> O {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: did not finish within {HANG_GUARD:?}, the backend looks hung"),
    }
}

/// Opens a fresh shard and checks it starts at `since = upper = [0]`.
pub(crate) async fn open_new_shard<B: PersistBackend<u64>>(backend: &B) -> ShardId {
    let shard = ShardId::new();
    let opened = backend
        .open(shard)
        .await
        .unwrap_or_else(|err| panic!("open of new shard {shard} failed: {err}"));
    assert_eq!(
        opened,
        frontiers(at(0), at(0)),
        "a new shard starts at since = upper = [0]: shard={shard}"
    );
    shard
}

/// Reads the frontiers, panicking on an error.
pub(crate) async fn frontiers_of<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
) -> ShardFrontiers<u64> {
    backend
        .frontiers(shard)
        .await
        .unwrap_or_else(|err| panic!("frontiers of {shard} failed: {err}"))
}

/// Appends with a fresh token and returns the outcome, panicking on an error.
pub(crate) async fn try_append<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    updates: Vec<Update<u64>>,
    expected_upper: Antichain<u64>,
    new_upper: Antichain<u64>,
) -> Result<(), UpperMismatch<u64>> {
    backend
        .compare_and_append(
            shard,
            updates,
            expected_upper.clone(),
            new_upper.clone(),
            IdempotencyToken::new(),
            WriteFence::Unfenced,
        )
        .await
        .unwrap_or_else(|err| {
            panic!(
                "append to {shard} failed: expected_upper={expected_upper:?} new_upper={new_upper:?}: {err}"
            )
        })
}

/// Appends with a fresh token and panics unless it succeeds.
pub(crate) async fn append_ok<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    updates: Vec<Update<u64>>,
    expected_upper: Antichain<u64>,
    new_upper: Antichain<u64>,
) {
    let outcome = try_append(
        backend,
        shard,
        updates,
        expected_upper.clone(),
        new_upper.clone(),
    )
    .await;
    if let Err(mismatch) = outcome {
        panic!(
            "append to {shard} with expected_upper={expected_upper:?} new_upper={new_upper:?} must succeed: {mismatch}"
        );
    }
}

/// Takes a snapshot, panicking on an error.
pub(crate) async fn snapshot_of<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    as_of: u64,
) -> Vec<(Row, Diff)> {
    backend
        .snapshot(shard, &as_of)
        .await
        .unwrap_or_else(|err| panic!("snapshot of {shard} at {as_of} failed: {err}"))
}

/// Fetches, panicking on an error.
pub(crate) async fn fetch_of<B: PersistBackend<u64>>(
    backend: &B,
    shard: ShardId,
    lower: &Antichain<u64>,
    upper: &Antichain<u64>,
) -> Vec<Update<u64>> {
    backend
        .fetch(shard, lower, upper)
        .await
        .unwrap_or_else(|err| panic!("fetch of {shard} [{lower:?}, {upper:?}) failed: {err}"))
}

/// The [`InvalidUsage`] of a call that must be rejected as invalid usage.
pub(crate) fn expect_invalid_usage<V: Debug>(
    result: Result<V, BackendError>,
    call: &str,
) -> InvalidUsage {
    match result {
        Err(BackendError::InvalidUsage(usage)) => usage,
        other => panic!("{call}: expected an InvalidUsage error, got {other:?}"),
    }
}

/// Checks that a call was rejected with `UnknownShard` naming `shard`.
pub(crate) fn expect_unknown_shard<V: Debug>(
    result: Result<V, BackendError>,
    shard: ShardId,
    call: &str,
) {
    match expect_invalid_usage(result, call) {
        InvalidUsage::UnknownShard { shard: named } => {
            assert_eq!(named, shard, "{call}: UnknownShard names the wrong shard");
        }
        other => panic!("{call}: expected UnknownShard for {shard}, got {other:?}"),
    }
}

/// Checks that a snapshot was rejected with `AsOfNotReadable`.
pub(crate) fn expect_not_readable<V: Debug>(result: Result<V, BackendError>, call: &str) {
    match expect_invalid_usage(result, call) {
        InvalidUsage::AsOfNotReadable { .. } => {}
        other => panic!("{call}: expected AsOfNotReadable, got {other:?}"),
    }
}

/// Checks that a fetch was rejected with `FetchRangeInvalid`.
pub(crate) fn expect_fetch_range_invalid<V: Debug>(result: Result<V, BackendError>, call: &str) {
    match expect_invalid_usage(result, call) {
        InvalidUsage::FetchRangeInvalid { .. } => {}
        other => panic!("{call}: expected FetchRangeInvalid, got {other:?}"),
    }
}

/// A time advanced by a since: the least time `>= time` that is also `>=`
/// every element of `since` (for a totally ordered time, the larger one).
pub(crate) fn advance_by(time: u64, since: &Antichain<u64>) -> u64 {
    since
        .as_option()
        .map_or(time, |since_time| time.max(*since_time))
}

/// The reference snapshot: every update at a time `<= as_of`, summed per
/// row, zero sums omitted, sorted by row.
pub(crate) fn model_snapshot(updates: &[Update<u64>], as_of: u64) -> Vec<(Row, Diff)> {
    let mut rows: Vec<(Row, Diff)> = updates
        .iter()
        .filter(|update| update.timestamp <= as_of)
        .map(|update| (update.row.clone(), update.diff))
        .collect();
    consolidate(&mut rows);
    rows
}

/// The reference fetch: every time advanced by `since`, then the updates
/// whose advanced time is in `[lower, upper)`, consolidated and sorted by
/// `(time, row)`.
///
/// SUBTLE: advancing before filtering is what makes a fetch independent of
/// physical compaction, which may already have rewritten times to the
/// since (see docs/decisions/050-fetch-advances-before-filtering.md).
pub(crate) fn model_fetch(
    updates: &[Update<u64>],
    since: &Antichain<u64>,
    lower: &Antichain<u64>,
    upper: &Antichain<u64>,
) -> Vec<Update<u64>> {
    let mut advanced: Vec<((u64, Row), Diff)> = updates
        .iter()
        .filter_map(|update| {
            let time = advance_by(update.timestamp, since);
            (lower.less_equal(&time) && !upper.less_equal(&time))
                .then(|| ((time, update.row.clone()), update.diff))
        })
        .collect();
    consolidate(&mut advanced);
    advanced
        .into_iter()
        .map(|((time, row), diff)| Update::new(row, time, diff))
        .collect()
}

/// Checks that `rows` is strictly sorted by row (so consolidated: no row
/// twice) and has no zero diff.
pub(crate) fn assert_consolidated_rows(rows: &[(Row, Diff)], call: &str) {
    for pair in rows.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "{call}: rows are not strictly sorted: {:?} then {:?}",
            pair[0].0,
            pair[1].0
        );
    }
    if let Some((row, _)) = rows.iter().find(|(_, diff)| *diff == 0) {
        panic!("{call}: row {row:?} has a zero diff and must be omitted");
    }
}
