//! A shard's stored updates: immutable, sorted, consolidated batches merged
//! by size class, like an LSM tree's tiered compaction.
//!
//! # Invariants
//!
//! - Every [`Batch`] is sorted by `(row, time)` and consolidated: no two of
//!   its updates share a row and a time, and no diff is zero.
//! - The [`Spine`] keeps batches oldest first and never stores an empty one.
//!   After every insertion the batches' size classes (`floor(log8(len))`)
//!   do not grow from oldest to newest and each class holds at most
//!   [`BATCHES_PER_CLASS`]` - 1` = 7 batches, so a spine of `n` updates has
//!   at most `7 * (floor(log8(n)) + 1)` batches, and each update is merged
//!   at most about `log8(n)` times over its life (every merge it takes part
//!   in, but for a larger batch taking smaller ones, moves it to a larger
//!   class) (124).
//! - Beside its updates, every batch keeps each row's order key (a prefix
//!   of the row order, see `order_key`), which sorting and merging compare
//!   first.
//!
//! Merging never advances times: that is physical compaction's job
//! ([`Spine::compact_to`]), so that [`usage`](Spine::usage) before a
//! compaction shows what compaction will reclaim.

use std::cmp::Ordering;
use std::sync::Arc;

use differential_dataflow::lattice::Lattice;
use tidemark_storage_types::{Diff, Row};
use timely::progress::{Antichain, Timestamp};

/// Bytes accounted per update on top of its row's encoding: 8 for the time
/// and 8 for the diff.
pub const BYTES_PER_UPDATE: u64 = 16;

/// The most batches of one [`size_class`] a spine holds: an insertion that
/// makes it this many merges them (124).
pub const BATCHES_PER_CLASS: usize = 8;

/// The size class of a batch of `len` updates: `floor(log8(len))`, so a
/// class spans sizes within a factor of [`BATCHES_PER_CLASS`], and merging
/// that many batches of one class gives a batch of a larger class.
fn size_class(len: usize) -> u32 {
    len.max(1).ilog(BATCHES_PER_CLASS)
}

/// The bytes an update with this row is accounted as.
fn update_bytes(row: &Row) -> u64 {
    row.byte_len() as u64 + BYTES_PER_UPDATE
}

/// An immutable run of updates, sorted by `(row, time)` and consolidated.
///
/// Next to each update the batch keeps its row's [`order_key`], so that
/// sorting and merging compare two integers and read a row's bytes only
/// when the keys tie. Without it, every comparison of a merge reads two
/// rows from wherever they were allocated, which for a large batch is a
/// cache miss per update (041, 042).
///
/// Readers share batches by `Arc`, so a snapshot can work on a consistent set
/// of batches without holding the shard's lock.
#[derive(Debug)]
pub struct Batch<T> {
    updates: Vec<(Row, T, Diff)>,
    /// `keys[i]` is the [`order_key`] of `updates[i]`'s row.
    keys: Vec<u64>,
    bytes: u64,
    /// Every time of the batch is in `[earliest, latest]` (`None` when the
    /// batch is empty). May be wider than the times present.
    time_bounds: Option<(T, T)>,
}

/// The first 8 bytes of a row's encoding as a big-endian integer, padded
/// with zeros: a prefix of the row order. If `order_key(a) < order_key(b)`
/// then `a < b`; equal keys say nothing, and the rows' bytes decide.
///
/// For a row that starts with an integer (a tag byte and the value's 7 low
/// bytes) the key decides almost every comparison.
fn order_key(row: &Row) -> u64 {
    let bytes = row.as_bytes();
    // Most rows are at least 8 bytes long: a fixed-size read (a copy of a
    // length known only at run time is a call to `memmove`, 042).
    if let Some(prefix) = bytes.first_chunk::<8>() {
        return u64::from_be_bytes(*prefix);
    }
    let mut prefix = [0u8; 8];
    prefix[..bytes.len()].copy_from_slice(bytes);
    u64::from_be_bytes(prefix)
}

/// The order of a batch: by row, then time. The same order as the derived
/// `Ord` of `(Row, T)` (a row compares as its bytes), compared directly on
/// the bytes rather than through the tuple's and the row's orderings.
fn key_order<T: Ord>(left: &(Row, T, Diff), right: &(Row, T, Diff)) -> Ordering {
    left.0
        .as_bytes()
        .cmp(right.0.as_bytes())
        .then_with(|| left.1.cmp(&right.1))
}

/// [`key_order`] of two updates whose rows have the order keys given: the
/// rows are read only when the keys tie.
fn keyed_order<T: Ord>(
    left_key: u64,
    left: &(Row, T, Diff),
    right_key: u64,
    right: &(Row, T, Diff),
) -> Ordering {
    left_key
        .cmp(&right_key)
        .then_with(|| key_order(left, right))
}

/// Reorders `items` so that position `i` holds what was at
/// `sources[i]`, in place, with one swap per position. `sources` must be a
/// permutation of `0..items.len()`; it is used up (rewritten) on the way.
fn apply_permutation<I>(items: &mut [I], sources: &mut [usize]) {
    for position in 0..items.len() {
        // Earlier swaps moved what was at `source` (if `source` is before
        // `position`) to the position that `source` names in turn: follow
        // the chain to where it is now.
        let mut source = sources[position];
        while source < position {
            source = sources[source];
        }
        sources[position] = source;
        items.swap(position, source);
    }
}

impl<T: Ord + Clone> Batch<T> {
    /// Sorts and consolidates `updates` into a batch. Input already in
    /// batch order (a consolidated collection's output, for instance) is
    /// not sorted again.
    pub fn from_unsorted(mut updates: Vec<(Row, T, Diff)>) -> Self {
        let mut keys: Vec<u64> = updates.iter().map(|(row, _, _)| order_key(row)).collect();
        let sorted = keys
            .iter()
            .zip(&updates)
            .zip(keys.iter().zip(&updates).skip(1))
            .all(|((left_key, left), (right_key, right))| {
                keyed_order(*left_key, left, *right_key, right) != Ordering::Greater
            });
        if !sorted {
            // Sort (key, position) pairs, which compare as two integers,
            // then order each run of equal keys by the rows themselves, and
            // move every update once to where it belongs.
            let mut order: Vec<(u64, usize)> = keys.iter().copied().zip(0..).collect();
            order.sort_unstable();
            for run in order.chunk_by_mut(|left, right| left.0 == right.0) {
                if run.len() > 1 {
                    run.sort_unstable_by(|left, right| {
                        key_order(&updates[left.1], &updates[right.1])
                    });
                }
            }
            let mut sources: Vec<usize> = Vec::with_capacity(order.len());
            for (position, (key, source)) in order.into_iter().enumerate() {
                keys[position] = key;
                sources.push(source);
            }
            apply_permutation(&mut updates, &mut sources);
        }
        Self::from_sorted(updates, keys)
    }

    /// Consolidates updates sorted in batch order, with their rows' keys:
    /// sums the diffs of equal `(row, time)` neighbours and drops zero sums,
    /// in one pass.
    fn from_sorted(mut updates: Vec<(Row, T, Diff)>, mut keys: Vec<u64>) -> Self {
        debug_assert_eq!(updates.len(), keys.len());
        debug_assert!(
            updates
                .windows(2)
                .all(|pair| key_order(&pair[0], &pair[1]) != Ordering::Greater)
        );
        // `updates[..kept]` is consolidated; a zero sum stays at its end
        // until the next different update replaces it.
        let mut kept = 0;
        for index in 0..updates.len() {
            if kept > 0 {
                let last = kept - 1;
                if keys[last] == keys[index]
                    && updates[last].0 == updates[index].0
                    && updates[last].1 == updates[index].1
                {
                    let diff = updates[index].2;
                    updates[last].2 += diff;
                    continue;
                }
                if updates[last].2 == 0 {
                    kept = last;
                }
            }
            if kept != index {
                updates.swap(kept, index);
                keys[kept] = keys[index];
            }
            kept += 1;
        }
        if kept > 0 && updates[kept - 1].2 == 0 {
            kept -= 1;
        }
        updates.truncate(kept);
        keys.truncate(kept);

        let mut bytes = 0;
        let mut time_bounds: Option<(T, T)> = None;
        for (row, time, _) in &updates {
            bytes += update_bytes(row);
            match &mut time_bounds {
                Some((earliest, latest)) => {
                    if *time < *earliest {
                        *earliest = time.clone();
                    } else if *time > *latest {
                        *latest = time.clone();
                    }
                }
                None => time_bounds = Some((time.clone(), time.clone())),
            }
        }
        Batch {
            updates,
            keys,
            bytes,
            time_bounds,
        }
    }

    /// Bounds of the batch's times: every time is in `[earliest, latest]`.
    /// `None` for an empty batch.
    pub fn time_bounds(&self) -> Option<(&T, &T)> {
        self.time_bounds
            .as_ref()
            .map(|(earliest, latest)| (earliest, latest))
    }

    /// Copies every row into a fresh allocation, in batch order, so that a
    /// read walking the batch touches memory in address order instead of
    /// the order the rows arrived in. Worth it for the one large batch
    /// compaction leaves, which snapshots read in full.
    fn repack_rows(&mut self) {
        let mut previous: Option<Row> = None;
        for (row, _, _) in self.updates.iter_mut() {
            match &previous {
                // The same row at several times keeps one allocation.
                Some(repacked) if repacked == row => *row = repacked.clone(),
                _ => {
                    // The bytes came from a valid row, so this always
                    // succeeds; were it ever to fail, the old row stays.
                    if let Ok(repacked) = Row::from_bytes(row.as_bytes()) {
                        *row = repacked;
                    }
                    previous = Some(row.clone());
                }
            }
        }
    }

    /// The updates, sorted by `(row, time)`.
    pub fn updates(&self) -> &[(Row, T, Diff)] {
        &self.updates
    }

    /// The order key of each update's row, in the order of
    /// [`updates`](Self::updates): comparing two keys first orders most
    /// rows without reading their bytes.
    pub fn keys(&self) -> &[u64] {
        &self.keys
    }

    /// The number of updates.
    pub fn len(&self) -> usize {
        self.updates.len()
    }

    /// Whether the batch holds no update.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    /// The bytes the batch is accounted as (row bytes plus
    /// [`BYTES_PER_UPDATE`] per update).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl<T: Clone> Batch<T> {
    /// The batch itself, copied only if a reader still holds it.
    fn clone_from_shared(batch: Arc<Batch<T>>) -> Batch<T> {
        Arc::try_unwrap(batch).unwrap_or_else(|shared| Batch {
            updates: shared.updates.clone(),
            keys: shared.keys.clone(),
            bytes: shared.bytes,
            time_bounds: shared.time_bounds.clone(),
        })
    }
}

/// The updates and keys of a shared batch, without copying when no reader
/// holds it.
fn take_parts<T: Clone>(batch: Arc<Batch<T>>) -> (Vec<(Row, T, Diff)>, Vec<u64>) {
    match Arc::try_unwrap(batch) {
        Ok(batch) => (batch.updates, batch.keys),
        Err(shared) => (shared.updates.clone(), shared.keys.clone()),
    }
}

/// Merges two batches into one sorted, consolidated batch, in one linear
/// pass: both inputs are sorted by `(row, time)` and consolidated, so equal
/// keys meet at the heads of the two runs. (Sorting the concatenation and
/// calling `consolidate_updates` gives the same batch, which the tests
/// check, at two to three times the cost.)
fn merge<T: Ord + Clone>(older: Arc<Batch<T>>, newer: Arc<Batch<T>>) -> Batch<T> {
    let capacity = older.len() + newer.len();
    let mut updates = Vec::with_capacity(capacity);
    let mut keys = Vec::with_capacity(capacity);
    let mut bytes = older.bytes() + newer.bytes();
    // Conservative: updates that cancel out may leave the bounds wider than
    // the times present, which only costs a read a batch it could skip.
    let time_bounds = match (older.time_bounds.clone(), newer.time_bounds.clone()) {
        (Some((older_earliest, older_latest)), Some((newer_earliest, newer_latest))) => Some((
            older_earliest.min(newer_earliest),
            older_latest.max(newer_latest),
        )),
        (bounds, None) | (None, bounds) => bounds,
    };
    let (older_updates, older_keys) = take_parts(older);
    let (newer_updates, newer_keys) = take_parts(newer);
    // The two runs, as `[older, newer]`: which one gives the next update
    // is an index computed from a comparison, not a branch, so random keys
    // (where the branch would go either way at random) cost no
    // mispredictions. Positions in `keys` follow the iterators.
    let mut runs = [older_updates.into_iter(), newer_updates.into_iter()];
    let mut positions = [0usize, 0usize];
    while let (Some(&older_key), Some(&newer_key)) =
        (older_keys.get(positions[0]), newer_keys.get(positions[1]))
    {
        if older_key != newer_key {
            let run = usize::from(newer_key < older_key);
            if let Some(update) = runs[run].next() {
                updates.push(update);
                keys.push(older_key.min(newer_key));
            }
            positions[run] += 1;
            continue;
        }
        // The keys tie (equal rows, or rows sharing their first 8 bytes):
        // the rows and times decide.
        let [older_run, newer_run] = &mut runs;
        let order = match (older_run.as_slice().first(), newer_run.as_slice().first()) {
            (Some(older_update), Some(newer_update)) => key_order(older_update, newer_update),
            _ => break,
        };
        match order {
            Ordering::Less | Ordering::Greater => {
                let run = usize::from(order == Ordering::Greater);
                if let Some(update) = runs[run].next() {
                    updates.push(update);
                    keys.push(older_key);
                }
                positions[run] += 1;
            }
            Ordering::Equal => {
                positions[0] += 1;
                positions[1] += 1;
                if let (Some((row, time, older_diff)), Some((_, _, newer_diff))) =
                    (older_run.next(), newer_run.next())
                {
                    let diff = older_diff + newer_diff;
                    if diff == 0 {
                        bytes -= 2 * update_bytes(&row);
                    } else {
                        bytes -= update_bytes(&row);
                        updates.push((row, time, diff));
                        keys.push(older_key);
                    }
                }
            }
        }
    }
    // One side is used up: the rest of the other follows in order.
    let [older_rest, newer_rest] = runs;
    keys.extend_from_slice(&older_keys[positions[0]..]);
    updates.extend(older_rest);
    keys.extend_from_slice(&newer_keys[positions[1]..]);
    updates.extend(newer_rest);
    let time_bounds = if updates.is_empty() {
        None
    } else {
        time_bounds
    };
    Batch {
        updates,
        keys,
        bytes,
        time_bounds,
    }
}

/// One input of [`merge_runs`]: a batch's order keys, its updates not yet
/// merged, and the position in `keys` of the first of them.
struct Run<T> {
    keys: Vec<u64>,
    updates: std::vec::IntoIter<(Row, T, Diff)>,
    position: usize,
}

/// A tournament (loser) tree over the head keys of `k` runs: the run with
/// the least head, and after that run's head changes, the next least in
/// about `log2(k)` comparisons along one path, each a select rather than a
/// branch (random keys would mispredict one).
///
/// Node `i` (`1 <= i < k`) holds the run that lost the match played there;
/// the leaves are `k..2k` (leaf `k + r` is run `r`), and `winner` is the run
/// that won every match on its path.
struct LoserTree {
    heads: Vec<u64>,
    losers: Vec<usize>,
    winner: usize,
}

impl LoserTree {
    fn new(heads: Vec<u64>) -> Self {
        let runs = heads.len();
        // `winners[i]` is the run that won at node `i` (or is leaf `i`).
        let mut winners = vec![0; 2 * runs];
        for run in 0..runs {
            winners[runs + run] = run;
        }
        let mut losers = vec![0; runs];
        for node in (1..runs).rev() {
            let (left, right) = (winners[2 * node], winners[2 * node + 1]);
            let right_wins = heads[right] < heads[left];
            winners[node] = if right_wins { right } else { left };
            losers[node] = if right_wins { left } else { right };
        }
        let winner = if runs > 1 { winners[1] } else { 0 };
        LoserTree {
            heads,
            losers,
            winner,
        }
    }

    /// Sets the winner's head to `head` and replays its path to the root.
    #[inline]
    fn replace_winner(&mut self, head: u64) {
        let mut winner = self.winner;
        let mut winner_head = head;
        self.heads[winner] = head;
        let mut node = (winner + self.heads.len()) / 2;
        while node > 0 {
            let other = self.losers[node];
            let other_head = self.heads[other];
            let other_wins = other_head < winner_head;
            self.losers[node] = if other_wins { winner } else { other };
            winner = if other_wins { other } else { winner };
            winner_head = winner_head.min(other_head);
            node /= 2;
        }
        self.winner = winner;
    }
}

/// Merges any number of batches into one sorted, consolidated batch in one
/// pass, each update moved once. Two batches go to [`merge`]; more are
/// merged through a [`LoserTree`] on their order keys, which gives the
/// updates in key order. Updates whose keys tie (equal rows, or rows that
/// share their first 8 bytes) come out next to each other, each batch's in
/// its own order: a run of equal keys taken from more than one batch is
/// then sorted by row and time and consolidated in place (equal
/// `(row, time)` updates always share their key).
///
/// The spine uses it for every merge of a full size class (eight batches)
/// and of a large batch with the smaller ones before it: merging them two
/// at a time would move each update `log2` of the batch count times.
fn merge_runs<T: Ord + Clone>(batches: Vec<Arc<Batch<T>>>) -> Batch<T> {
    let mut batches = batches.into_iter();
    let (first, second, rest) = match (batches.next(), batches.next()) {
        (None, _) => return Batch::from_sorted(Vec::new(), Vec::new()),
        (Some(only), None) => return Batch::clone_from_shared(only),
        (Some(first), Some(second)) => (first, second, batches.as_slice()),
    };
    if rest.is_empty() {
        return merge(first, second);
    }
    let batches: Vec<Arc<Batch<T>>> = [first, second].into_iter().chain(batches).collect();
    let capacity = batches.iter().map(|batch| batch.len()).sum();
    let mut bytes: u64 = batches.iter().map(|batch| batch.bytes()).sum();
    // Conservative, as in `merge`.
    let time_bounds = batches
        .iter()
        .filter_map(|batch| batch.time_bounds.clone())
        .reduce(|(earliest, latest), (other_earliest, other_latest)| {
            (earliest.min(other_earliest), latest.max(other_latest))
        });
    let mut runs: Vec<Run<T>> = Vec::with_capacity(batches.len());
    for batch in batches {
        let (updates, keys) = take_parts(batch);
        runs.push(Run {
            keys,
            updates: updates.into_iter(),
            position: 0,
        });
    }
    let heads = |runs: &[Run<T>]| runs.iter().map(|run| run.keys[run.position]).collect();
    runs.retain(|run| !run.keys.is_empty());
    let mut tree = LoserTree::new(heads(&runs));
    let mut updates: Vec<(Row, T, Diff)> = Vec::with_capacity(capacity);
    let mut keys: Vec<u64> = Vec::with_capacity(capacity);
    // The updates from `group_start` on share their key; `mixed` says
    // whether they came from more than one run.
    let mut group_start = 0;
    let mut group_run = 0;
    let mut mixed = false;
    while runs.len() > 1 {
        let winner = tree.winner;
        let run = &mut runs[winner];
        let key = run.keys[run.position];
        let Some(update) = run.updates.next() else {
            // Cannot happen: a run in the tree has an update left.
            break;
        };
        run.position += 1;
        if keys.last() != Some(&key) {
            if mixed {
                bytes -= order_tied_group(&mut updates, group_start);
                keys.truncate(updates.len());
            }
            group_start = updates.len();
            group_run = winner;
            mixed = false;
        } else {
            mixed |= winner != group_run;
        }
        updates.push(update);
        keys.push(key);
        match run.keys.get(run.position) {
            Some(&next) => tree.replace_winner(next),
            None => {
                // A run used up leaves the tree, which is built anew on
                // the others (once per run, so at most as often as the merge has runs).
                runs.swap_remove(winner);
                // The group's first run may have moved to `winner`.
                if group_run == runs.len() {
                    group_run = winner;
                } else if group_run == winner {
                    group_run = usize::MAX;
                }
                tree = LoserTree::new(heads(&runs));
            }
        }
    }
    // One run is left: the rest of it follows in order, the first of its
    // updates perhaps tied with the group before it.
    if let Some(run) = runs.pop() {
        let rest = &run.keys[run.position..];
        if let (Some(first), Some(last)) = (rest.first(), keys.last()) {
            if first == last {
                let tied = rest.iter().take_while(|key| *key == first).count();
                keys.extend_from_slice(&rest[..tied]);
                let mut rest_updates = run.updates;
                updates.extend(rest_updates.by_ref().take(tied));
                bytes -= order_tied_group(&mut updates, group_start);
                keys.truncate(updates.len());
                mixed = false;
                keys.extend_from_slice(&run.keys[run.position + tied..]);
                updates.extend(rest_updates);
            } else {
                if mixed {
                    bytes -= order_tied_group(&mut updates, group_start);
                    keys.truncate(updates.len());
                    mixed = false;
                }
                keys.extend_from_slice(rest);
                updates.extend(run.updates);
            }
        } else {
            keys.extend_from_slice(rest);
            updates.extend(run.updates);
        }
    }
    if mixed {
        bytes -= order_tied_group(&mut updates, group_start);
        keys.truncate(updates.len());
    }
    let time_bounds = if updates.is_empty() {
        None
    } else {
        time_bounds
    };
    Batch {
        updates,
        keys,
        bytes,
        time_bounds,
    }
}

/// Orders `updates[start..]`, updates of equal order keys taken from
/// several runs (each run's in its own order), by row and time, and
/// consolidates them in place: sums equal neighbours and drops zero sums.
/// Returns the bytes (as [`update_bytes`] counts them) of the updates
/// removed.
fn order_tied_group<T: Ord>(updates: &mut Vec<(Row, T, Diff)>, start: usize) -> u64 {
    // Stable: within a run the tied updates are already in order.
    updates[start..].sort_by(key_order);
    let mut removed = 0;
    // `updates[start..kept]` is consolidated but for its last diff, which
    // may still be zero.
    let mut kept = start;
    for index in start..updates.len() {
        if kept > start {
            let last = kept - 1;
            if updates[last].0 == updates[index].0 && updates[last].1 == updates[index].1 {
                let diff = updates[index].2;
                updates[last].2 += diff;
                removed += update_bytes(&updates[index].0);
                continue;
            }
            if updates[last].2 == 0 {
                removed += update_bytes(&updates[last].0);
                kept = last;
            }
        }
        if kept != index {
            updates.swap(kept, index);
        }
        kept += 1;
    }
    if kept > start && updates[kept - 1].2 == 0 {
        removed += update_bytes(&updates[kept - 1].0);
        kept -= 1;
    }
    updates.truncate(kept);
    removed
}

/// Advances every time of `batches` by `since` and consolidates them into
/// one batch with freshly allocated rows. An empty `since` means nothing can
/// be read again: the result is empty.
pub fn compact_batches<T: Timestamp + Lattice>(
    batches: Vec<Arc<Batch<T>>>,
    since: &Antichain<T>,
) -> Batch<T> {
    if since.is_empty() {
        return Batch::from_unsorted(Vec::new());
    }
    let mut updates = Vec::with_capacity(batches.iter().map(|batch| batch.len()).sum());
    for batch in batches {
        updates.extend(take_parts(batch).0);
    }
    for (_, time, _) in updates.iter_mut() {
        time.advance_by(since.borrow());
    }
    let mut compacted = Batch::from_unsorted(updates);
    compacted.repack_rows();
    compacted
}

/// What a spine stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpineUsage {
    /// Stored updates.
    pub updates: u64,
    /// Stored bytes (row bytes plus [`BYTES_PER_UPDATE`] per update).
    pub bytes: u64,
}

/// Batches of a shard, oldest (and largest) first.
#[derive(Debug)]
pub struct Spine<T> {
    batches: Vec<Arc<Batch<T>>>,
}

impl<T> Default for Spine<T> {
    fn default() -> Self {
        Spine {
            batches: Vec::new(),
        }
    }
}

impl<T: Timestamp + Lattice> Spine<T> {
    /// Adds a batch and merges as the size classes require (see
    /// [`restore_classes`](Self::restore_classes)). An empty batch is not
    /// stored.
    pub fn insert(&mut self, batch: Batch<T>) {
        if batch.is_empty() {
            return;
        }
        self.batches.push(Arc::new(batch));
        self.restore_classes();
    }

    /// Merges the newest batches until the spine's [`size_class`]es do not
    /// grow from oldest to newest and no class holds
    /// [`BATCHES_PER_CLASS`] batches:
    ///
    /// - a newest batch of a larger class than the batches before it is
    ///   merged with every one of them of a smaller class (they are
    ///   smaller than it);
    /// - otherwise, once the newest class holds `BATCHES_PER_CLASS`
    ///   batches, they are merged into one (of a larger class, unless
    ///   updates cancel out).
    ///
    /// Each merge is one pass over all its batches (`merge_runs`), and may
    /// fill the next class, which is then merged in turn.
    fn restore_classes(&mut self) {
        loop {
            let count = self.batches.len();
            let Some(newest) = self.batches.last() else {
                return;
            };
            let class = size_class(newest.len());
            let older = &self.batches[..count - 1];
            let smaller = older
                .iter()
                .rev()
                .take_while(|batch| size_class(batch.len()) < class)
                .count();
            let merging = if smaller > 0 {
                smaller + 1
            } else {
                let same = 1 + older
                    .iter()
                    .rev()
                    .take_while(|batch| size_class(batch.len()) == class)
                    .count();
                if same < BATCHES_PER_CLASS {
                    return;
                }
                same
            };
            let inputs = self.batches.split_off(count - merging);
            let merged = merge_runs(inputs);
            if !merged.is_empty() {
                self.batches.push(Arc::new(merged));
            }
        }
    }

    /// The batches, shared, for a read that runs without the shard's lock.
    pub fn batches(&self) -> Vec<Arc<Batch<T>>> {
        self.batches.clone()
    }

    /// The number of batches.
    #[cfg(test)]
    pub fn batch_count(&self) -> usize {
        self.batches.len()
    }

    /// What the spine stores.
    pub fn usage(&self) -> SpineUsage {
        self.batches
            .iter()
            .fold(SpineUsage::default(), |usage, batch| SpineUsage {
                updates: usage.updates + batch.len() as u64,
                bytes: usage.bytes + batch.bytes(),
            })
    }

    /// Physical compaction: advances every time by `since`, consolidates,
    /// and keeps the result as one batch. An empty `since` means nothing can
    /// be read again, so every update is dropped.
    pub fn compact_to(&mut self, since: &Antichain<T>) {
        let batches = std::mem::take(&mut self.batches);
        let compacted = compact_batches(batches, since);
        if !compacted.is_empty() {
            self.batches.push(Arc::new(compacted));
        }
    }

    /// Replaces `input`, if it is still the oldest part of the spine, by
    /// `compacted` (made from it by [`compact_batches`]), keeping every
    /// batch added since. Returns `false`, changing nothing, if a merge
    /// rewrote any batch of `input` meanwhile.
    pub fn replace_compacted(&mut self, input: &[Arc<Batch<T>>], compacted: Batch<T>) -> bool {
        let unchanged = self.batches.len() >= input.len()
            && input
                .iter()
                .zip(&self.batches)
                .all(|(taken, current)| Arc::ptr_eq(taken, current));
        if !unchanged {
            return false;
        }
        let newer = self.batches.split_off(input.len());
        self.batches.clear();
        if !compacted.is_empty() {
            self.batches.push(Arc::new(compacted));
        }
        // The compacted batch may be smaller than what it replaced: merge
        // newer batches into it as the tiers require.
        for batch in newer {
            self.batches.push(batch);
            self.restore_classes();
        }
        true
    }

    /// Drops every update.
    pub fn clear(&mut self) {
        self.batches.clear();
    }
}

#[cfg(test)]
mod tests {
    use differential_dataflow::consolidation::consolidate_updates;
    use proptest::prelude::*;
    use tidemark_storage_types::Datum;

    use super::*;

    fn row(value: i64) -> Row {
        Row::pack([Datum::Int64(value)])
    }

    fn batch(updates: &[(i64, u64, Diff)]) -> Batch<u64> {
        Batch::from_unsorted(
            updates
                .iter()
                .map(|&(value, time, diff)| (row(value), time, diff))
                .collect(),
        )
    }

    /// Every update of the spine, consolidated, as plain values.
    fn contents(spine: &Spine<u64>) -> Vec<(Row, u64, Diff)> {
        let mut all: Vec<_> = spine
            .batches()
            .iter()
            .flat_map(|batch| batch.updates().to_vec())
            .collect();
        consolidate_updates(&mut all);
        all
    }

    /// The spine's invariants: size classes do not grow from oldest to
    /// newest, fewer than `BATCHES_PER_CLASS` batches per class, every
    /// batch non-empty, sorted and consolidated.
    fn assert_tiers(spine: &Spine<u64>) {
        let classes: Vec<u32> = spine
            .batches()
            .iter()
            .map(|batch| size_class(batch.len()))
            .collect();
        for pair in classes.windows(2) {
            assert!(pair[0] >= pair[1], "classes grow: {classes:?}");
        }
        for run in classes.chunk_by(|left, right| left == right) {
            assert!(
                run.len() < BATCHES_PER_CLASS,
                "{} batches of class {}: {classes:?}",
                run.len(),
                run[0]
            );
        }
        for batch in spine.batches() {
            assert!(!batch.is_empty(), "spine stores an empty batch");
            let mut sorted = batch.updates().to_vec();
            consolidate_updates(&mut sorted);
            assert_eq!(
                sorted,
                batch.updates(),
                "batch is not sorted and consolidated"
            );
        }
    }

    #[test]
    fn batches_are_sorted_and_consolidated() {
        let batch = batch(&[(3, 1, 1), (1, 2, 1), (3, 1, 2), (2, 0, 1), (2, 0, -1)]);
        assert_eq!(
            batch.updates(),
            &[(row(1), 2, 1), (row(3), 1, 3)],
            "sorted by row then time, equal (row, time) summed, zeros dropped"
        );
        assert_eq!(
            batch.bytes(),
            2 * (row(1).byte_len() as u64 + BYTES_PER_UPDATE)
        );
    }

    #[test]
    fn sorted_input_is_consolidated_without_a_sort() {
        // In batch order already, with equal neighbours and a zero sum.
        let batch = batch(&[
            (1, 0, 1),
            (1, 0, 2),
            (1, 3, 1),
            (2, 1, 1),
            (2, 1, -1),
            (4, 0, -2),
        ]);
        assert_eq!(
            batch.updates(),
            &[(row(1), 0, 3), (row(1), 3, 1), (row(4), 0, -2)]
        );
        assert_eq!(batch.time_bounds(), Some((&0, &3)));
        assert_eq!(
            batch.bytes(),
            3 * (row(1).byte_len() as u64 + BYTES_PER_UPDATE)
        );
    }

    #[test]
    fn batch_count_stays_logarithmic_and_contents_are_kept() {
        let mut spine = Spine::default();
        let mut model = Vec::new();
        for time in 0..1000u64 {
            let value = (time % 37) as i64;
            let diff = if time % 3 == 0 { -1 } else { 1 };
            spine.insert(batch(&[(value, time, diff), (value + 100, time, 1)]));
            model.push((row(value), time, diff));
            model.push((row(value + 100), time, 1));
            assert_tiers(&spine);
            let updates = spine.usage().updates as usize;
            let bound = (BATCHES_PER_CLASS - 1) * (size_class(updates) as usize + 1);
            assert!(
                spine.batch_count() <= bound,
                "{} batches for {updates} updates",
                spine.batch_count()
            );
        }
        consolidate_updates(&mut model);
        assert_eq!(contents(&spine), model);
    }

    #[test]
    fn merging_equals_consolidating_the_concatenation() {
        let mut state = 1u64;
        let mut next = |bound: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) % bound
        };
        for _ in 0..200 {
            let mut random_updates = |count| -> Vec<(i64, u64, Diff)> {
                (0..count)
                    .map(|_| (next(6) as i64, next(4), next(5) as i64 - 2))
                    .collect()
            };
            let older = random_updates(12);
            let newer = random_updates(7);
            let merged = merge(Arc::new(batch(&older)), Arc::new(batch(&newer)));
            let expected = batch(&[older, newer].concat());
            assert_eq!(merged.updates(), expected.updates());
            assert_eq!(merged.bytes(), expected.bytes());
            if let Some((earliest, latest)) = merged.time_bounds() {
                assert!(
                    merged
                        .updates()
                        .iter()
                        .all(|(_, t, _)| earliest <= t && t <= latest)
                );
            } else {
                assert!(merged.is_empty());
            }
        }
    }

    /// Rows whose order keys tie (shorter than 8 bytes, sharing their first
    /// 8 bytes, ending in zero bytes) still sort, consolidate and merge in
    /// row order.
    #[test]
    fn rows_with_equal_order_keys_are_ordered_by_their_bytes() {
        let rows = [
            Row::pack([]),
            Row::pack([Datum::Null]),
            Row::pack([Datum::Null, Datum::Null]),
            Row::pack([Datum::String("")]),
            Row::pack([Datum::String("abc")]),
            Row::pack([Datum::String("abcd")]),
            Row::pack([Datum::String("abce")]),
            Row::pack([Datum::String("abc"), Datum::Null]),
            Row::pack([Datum::Bytes(&[0, 0, 0])]),
            Row::pack([Datum::Bytes(&[0, 0, 0, 0])]),
            Row::pack([Datum::Int64(0)]),
            Row::pack([Datum::Int64(0), Datum::Int64(1)]),
            Row::pack([Datum::Int64(1 << 60)]),
            Row::pack([Datum::Int64(2 << 60)]),
        ];
        assert!(
            rows.iter()
                .zip(&rows[1..])
                .any(|(left, right)| order_key(left) == order_key(right)),
            "some keys tie"
        );
        let mut state = 7u64;
        let mut next = |bound: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) % bound
        };
        for _ in 0..200 {
            let mut random_updates = |count| -> Vec<(Row, u64, Diff)> {
                (0..count)
                    .map(|_| {
                        let row = rows[next(rows.len() as u64) as usize].clone();
                        (row, next(3), next(5) as i64 - 2)
                    })
                    .collect()
            };
            let older = random_updates(20);
            let newer = random_updates(9);
            let mut expected = [older.clone(), newer.clone()].concat();
            consolidate_updates(&mut expected);
            let older = Batch::from_unsorted(older);
            let newer = Batch::from_unsorted(newer);
            for batch in [&older, &newer] {
                let mut consolidated = batch.updates().to_vec();
                consolidate_updates(&mut consolidated);
                assert_eq!(batch.updates(), consolidated);
                let keys: Vec<u64> = batch
                    .updates()
                    .iter()
                    .map(|(row, _, _)| order_key(row))
                    .collect();
                assert_eq!(batch.keys, keys);
            }
            let merged = merge(Arc::new(older), Arc::new(newer));
            assert_eq!(merged.updates(), expected);
            assert_eq!(merged.keys.len(), merged.len());
        }
    }

    #[test]
    fn order_keys_are_a_prefix_of_the_row_order() {
        let rows = [
            Row::pack([]),
            Row::pack([Datum::Null]),
            Row::pack([Datum::Bool(true)]),
            Row::pack([Datum::String("a")]),
            Row::pack([Datum::String("ab")]),
            Row::pack([Datum::String("abcdefgh")]),
            Row::pack([Datum::Int64(-1)]),
            Row::pack([Datum::Int64(255)]),
            Row::pack([Datum::Int64(256)]),
        ];
        for left in &rows {
            for right in &rows {
                if order_key(left) < order_key(right) {
                    assert!(left < right, "{left} before {right} by key only");
                }
            }
        }
    }

    #[test]
    fn merging_several_batches_equals_consolidating_their_concatenation() {
        let rows = [
            Row::pack([Datum::String("abc")]),
            Row::pack([Datum::String("abcd")]),
            Row::pack([Datum::String("abce")]),
            Row::pack([Datum::Int64(1)]),
            Row::pack([Datum::Int64(2)]),
            Row::pack([Datum::Int64(3)]),
        ];
        let mut state = 11u64;
        let mut next = |bound: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) % bound
        };
        for round in 0..300 {
            let count = 3 + round % 4;
            let inputs: Vec<Vec<(Row, u64, Diff)>> = (0..count)
                .map(|_| {
                    let len = next(12);
                    (0..len)
                        .map(|_| {
                            let row = rows[next(rows.len() as u64) as usize].clone();
                            (row, next(3), next(5) as i64 - 2)
                        })
                        .collect()
                })
                .collect();
            let mut expected = inputs.concat();
            consolidate_updates(&mut expected);
            let batches: Vec<Arc<Batch<u64>>> = inputs
                .into_iter()
                .map(|updates| Arc::new(Batch::from_unsorted(updates)))
                .collect();
            let held = batches[0].clone();
            let merged = merge_runs(batches);
            assert_eq!(merged.updates(), expected, "round {round}");
            let keys: Vec<u64> = expected.iter().map(|(row, _, _)| order_key(row)).collect();
            assert_eq!(merged.keys(), keys);
            let bytes: u64 = expected.iter().map(|(row, _, _)| update_bytes(row)).sum();
            assert_eq!(merged.bytes(), bytes);
            match merged.time_bounds() {
                Some((earliest, latest)) => assert!(
                    expected
                        .iter()
                        .all(|(_, time, _)| earliest <= time && time <= latest)
                ),
                None => assert!(expected.is_empty()),
            }
            drop(held);
        }
    }

    /// Equal appends fill a size class before they are merged, and the
    /// merge of a full class can fill the next one.
    #[test]
    fn a_full_size_class_is_merged_into_the_next() {
        let mut spine = Spine::default();
        let append = |spine: &mut Spine<u64>, time: u64| {
            let updates: Vec<(i64, u64, Diff)> = (0..10)
                .map(|value| (value + 10 * time as i64, time, 1))
                .collect();
            spine.insert(batch(&updates));
        };
        for time in 0..7 {
            append(&mut spine, time);
        }
        let lens = |spine: &Spine<u64>| -> Vec<usize> {
            spine.batches().iter().map(|batch| batch.len()).collect()
        };
        assert_eq!(lens(&spine), vec![10; 7], "class 1 holds 7 batches");
        append(&mut spine, 7);
        assert_eq!(lens(&spine), vec![80], "the eighth merges them");
        for time in 8..64 {
            append(&mut spine, time);
            assert_tiers(&spine);
        }
        assert_eq!(lens(&spine), vec![640], "eight of class 2 make class 3");
        // A larger newest batch takes the smaller ones before it.
        append(&mut spine, 64);
        let large: Vec<(i64, u64, Diff)> = (0..100).map(|value| (-value - 1, 65, 1)).collect();
        spine.insert(batch(&large));
        assert_eq!(lens(&spine), vec![640, 110]);
        assert_tiers(&spine);
    }

    /// Random batch sizes, with updates that cancel out, keep the
    /// invariants and the contents.
    #[test]
    fn random_appends_keep_the_size_classes() {
        let mut state = 3u64;
        let mut next = |bound: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) % bound
        };
        let mut spine = Spine::default();
        let mut model = Vec::new();
        for time in 0..400u64 {
            let len = if next(10) == 0 { next(300) } else { next(12) };
            let updates: Vec<(i64, u64, Diff)> = (0..len)
                .map(|_| (next(50) as i64, next(3) + time, next(3) as i64 - 1))
                .collect();
            model.extend(
                updates
                    .iter()
                    .map(|&(value, time, diff)| (row(value), time, diff)),
            );
            spine.insert(batch(&updates));
            assert_tiers(&spine);
        }
        consolidate_updates(&mut model);
        assert_eq!(contents(&spine), model);
    }

    /// Rows for the property tests: short ones whose order keys tie, rows
    /// sharing their first 8 bytes, and integer rows.
    fn property_rows() -> Vec<Row> {
        vec![
            Row::pack([]),
            Row::pack([Datum::Null]),
            Row::pack([Datum::String("abc")]),
            Row::pack([Datum::String("abcd")]),
            Row::pack([Datum::String("abce")]),
            Row::pack([Datum::String("abcdefgh")]),
            Row::pack([Datum::String("abcdefgi")]),
            Row::pack([Datum::Int64(1)]),
            Row::pack([Datum::Int64(2)]),
            Row::pack([Datum::Int64(1 << 60)]),
        ]
    }

    /// Batches as `(row index, time, diff)` triples.
    fn property_batches(
        max_batches: usize,
        max_len: usize,
    ) -> impl Strategy<Value = Vec<Vec<(usize, u64, Diff)>>> {
        proptest::collection::vec(
            proptest::collection::vec((0..10usize, 0..4u64, -2..3i64), 0..max_len),
            0..max_batches,
        )
    }

    fn with_rows(updates: &[(usize, u64, Diff)], rows: &[Row]) -> Vec<(Row, u64, Diff)> {
        updates
            .iter()
            .map(|&(index, time, diff)| (rows[index].clone(), time, diff))
            .collect()
    }

    proptest! {
        /// The many-batch merge (the loser tree and its tied groups) gives
        /// what consolidating every update does, with the keys and bytes
        /// of that result.
        #[test]
        fn merging_batches_equals_consolidating_them(
            inputs in property_batches(12, 40),
            hold in any::<bool>(),
        ) {
            let rows = property_rows();
            let mut expected: Vec<(Row, u64, Diff)> = inputs
                .iter()
                .flat_map(|updates| with_rows(updates, &rows))
                .collect();
            consolidate_updates(&mut expected);
            let batches: Vec<Arc<Batch<u64>>> = inputs
                .iter()
                .map(|updates| Arc::new(Batch::from_unsorted(with_rows(updates, &rows))))
                .collect();
            // A batch a reader holds is copied, not taken.
            let held = if hold { batches.clone() } else { Vec::new() };
            let merged = merge_runs(batches);
            prop_assert_eq!(merged.updates(), &expected[..]);
            let keys: Vec<u64> = expected.iter().map(|(row, _, _)| order_key(row)).collect();
            prop_assert_eq!(merged.keys(), &keys[..]);
            let bytes: u64 = expected.iter().map(|(row, _, _)| update_bytes(row)).sum();
            prop_assert_eq!(merged.bytes(), bytes);
            if let Some((earliest, latest)) = merged.time_bounds() {
                prop_assert!(expected.iter().all(|(_, time, _)| earliest <= time && time <= latest));
            } else {
                prop_assert!(expected.is_empty());
            }
            for (batch, updates) in held.iter().zip(&inputs) {
                let mut own = with_rows(updates, &rows);
                consolidate_updates(&mut own);
                prop_assert_eq!(batch.updates(), &own[..]);
            }
        }

        /// Any sequence of appends keeps the size classes and the contents.
        #[test]
        fn appends_keep_the_classes_and_the_contents(inputs in property_batches(60, 30)) {
            let rows = property_rows();
            let mut spine = Spine::default();
            let mut model = Vec::new();
            for updates in &inputs {
                let updates = with_rows(updates, &rows);
                model.extend(updates.iter().cloned());
                spine.insert(Batch::from_unsorted(updates));
                assert_tiers(&spine);
            }
            consolidate_updates(&mut model);
            prop_assert_eq!(contents(&spine), model);
        }
    }

    #[test]
    fn permutations_apply_in_place() {
        let mut items = vec!['a', 'b', 'c', 'd', 'e'];
        let mut sources = vec![3, 0, 4, 1, 2];
        apply_permutation(&mut items, &mut sources);
        assert_eq!(items, vec!['d', 'a', 'e', 'b', 'c']);
    }

    #[test]
    fn merges_that_cancel_out_leave_no_empty_batch() {
        let mut spine = Spine::default();
        for diff in [1, 1, 1, 1, -1, -1, -1] {
            spine.insert(batch(&[(1, 5, diff), (2, 5, diff)]));
        }
        assert_eq!(spine.batch_count(), BATCHES_PER_CLASS - 1);
        // The eighth batch of the class merges them all, and they cancel.
        spine.insert(batch(&[(1, 5, -1), (2, 5, -1)]));
        assert_eq!(spine.batch_count(), 0);
        assert_eq!(spine.usage(), SpineUsage::default());
        spine.insert(batch(&[]));
        assert_eq!(spine.batch_count(), 0);
    }

    #[test]
    fn merging_keeps_batches_other_readers_hold() {
        let mut spine = Spine::default();
        spine.insert(batch(&[(1, 0, 1), (2, 0, 1)]));
        let held = spine.batches();
        for time in 1..BATCHES_PER_CLASS as u64 {
            spine.insert(batch(&[(1, time, 1), (3, time, 1)]));
        }
        assert_eq!(spine.batch_count(), 1, "a full class merges");
        assert_eq!(held[0].updates(), &[(row(1), 0, 1), (row(2), 0, 1)]);
        assert_eq!(spine.usage().updates, 2 * BATCHES_PER_CLASS as u64);
    }

    #[test]
    fn compaction_advances_times_and_leaves_one_batch() {
        let mut spine = Spine::default();
        for time in 0..64u64 {
            spine.insert(batch(&[(1, time, 1), ((time % 4) as i64, time, 1)]));
            spine.insert(batch(&[((time % 4) as i64, time, -1)]));
        }
        spine.insert(batch(&[(9, 70, 1)]));
        let before = spine.usage();
        spine.compact_to(&Antichain::from_elem(60));
        let after = spine.usage();
        assert_eq!(spine.batch_count(), 1);
        assert!(after.updates < before.updates, "{before:?} -> {after:?}");
        assert_eq!(
            contents(&spine),
            [
                vec![(row(1), 60, 61)],
                (61..64).map(|time| (row(1), time, 1)).collect(),
                vec![(row(9), 70, 1)],
            ]
            .concat()
        );
    }

    #[test]
    fn a_compaction_done_aside_keeps_batches_added_meanwhile() {
        let mut spine = Spine::default();
        for time in 0..8u64 {
            spine.insert(batch(&[(1, time, 1), (time as i64, time, 1)]));
        }
        let input = spine.batches();
        let compacted = compact_batches(input.clone(), &Antichain::from_elem(8));
        // An append that does not touch the taken batches: a batch of one
        // update next to batches of at least two.
        spine.insert(batch(&[(5, 9, 1)]));
        assert!(spine.replace_compacted(&input, compacted));
        assert_tiers(&spine);
        let mut expected = vec![(row(1), 8, 9), (row(5), 9, 1)];
        expected.extend((0..8).filter(|v| *v != 1).map(|v| (row(v), 8, 1)));
        consolidate_updates(&mut expected);
        assert_eq!(contents(&spine), expected);
    }

    #[test]
    fn a_compaction_done_aside_is_dropped_when_a_merge_rewrote_its_input() {
        let mut spine = Spine::default();
        spine.insert(batch(&[(1, 0, 1), (2, 0, 1)]));
        for time in 1..BATCHES_PER_CLASS as u64 - 1 {
            spine.insert(batch(&[(1, time, 1)]));
        }
        assert_eq!(spine.batch_count(), BATCHES_PER_CLASS - 1);
        let input = spine.batches();
        let compacted = compact_batches(input.clone(), &Antichain::from_elem(1));
        spine.insert(batch(&[(2, 9, 1)]));
        assert_eq!(
            spine.batch_count(),
            1,
            "the append merged the taken batches"
        );
        let before = contents(&spine);
        assert!(!spine.replace_compacted(&input, compacted));
        assert_eq!(contents(&spine), before, "nothing changed");
    }

    #[test]
    fn compaction_to_the_empty_since_drops_everything() {
        let mut spine = Spine::default();
        spine.insert(batch(&[(1, 0, 1)]));
        spine.compact_to(&Antichain::new());
        assert_eq!(spine.batch_count(), 0);
        assert_eq!(spine.usage(), SpineUsage::default());
    }
}
