//! A seeded workload on two input shards, the join-and-reduce dataflow the
//! properties run over them, and the model of its output computed
//! directly.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidemark_storage_dataflow::{DataflowStatus, RetryPolicy, ShardSink, ShardSource};
use tidemark_storage_types::{Diff, PersistBackend, Row, ShardId, Update};
use timely::dataflow::Scope;
use tokio::runtime::Handle;

use crate::support::{append, at, key_value, kv_row};

/// The shards of one run: two inputs and the output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JoinShards {
    pub(crate) left: ShardId,
    pub(crate) right: ShardId,
    pub(crate) output: ShardId,
}

/// One batch: the updates of the left input, then of the right.
pub(crate) type InputBatch = (Vec<Update<u64>>, Vec<Update<u64>>);

/// Batches of updates for the two inputs: batch `i` holds times
/// `[2i, 2i + 2)` and moves both uppers to `2i + 2`. Multiplicities never go
/// negative (only present rows are retracted).
#[derive(Clone, Debug)]
pub(crate) struct Workload {
    pub(crate) batches: Vec<InputBatch>,
}

impl Workload {
    /// `batches` batches of up to `per_batch` updates per input, from `seed`.
    pub(crate) fn generate(seed: u64, batches: usize, per_batch: usize) -> Workload {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut present: [Vec<Row>; 2] = [Vec::new(), Vec::new()];
        let mut generated = Vec::new();
        for batch in 0..batches as u64 {
            let mut sides: [Vec<Update<u64>>; 2] = [Vec::new(), Vec::new()];
            for (side, updates) in sides.iter_mut().enumerate() {
                for _ in 0..rng.random_range(0..=per_batch) {
                    let time = batch * 2 + rng.random_range(0..2u64);
                    let rows = &mut present[side];
                    if !rows.is_empty() && rng.random_bool(0.3) {
                        let index = rng.random_range(0..rows.len());
                        updates.push(Update::new(rows.swap_remove(index), time, -1));
                    } else {
                        let row = kv_row(rng.random_range(0..4), rng.random_range(1..4));
                        rows.push(row.clone());
                        updates.push(Update::new(row, time, 1));
                    }
                }
            }
            let [left, right] = sides;
            generated.push((left, right));
        }
        Workload { batches: generated }
    }

    /// The upper after batch `index`.
    pub(crate) fn upper_after(index: usize) -> u64 {
        2 * (index as u64 + 1)
    }

    /// The upper after the last batch.
    pub(crate) fn final_upper(&self) -> u64 {
        Workload::upper_after(self.batches.len() - 1)
    }

    /// Appends batch `index` to both inputs.
    pub(crate) async fn append_batch<B: PersistBackend<u64>>(
        &self,
        backend: &B,
        shards: JoinShards,
        index: usize,
    ) {
        let (left, right) = &self.batches[index];
        let lower = 2 * index as u64;
        let upper = at(Workload::upper_after(index));
        append(backend, shards.left, left.clone(), lower, upper.clone()).await;
        append(backend, shards.right, right.clone(), lower, upper).await;
    }

    /// The model: the output of [`build_join_dataflow`] at `time`, computed
    /// directly from the inputs.
    pub(crate) fn model_output(&self, time: u64) -> Vec<(Row, Diff)> {
        let accumulate = |side: usize| {
            let mut counts: BTreeMap<(i64, i64), Diff> = BTreeMap::new();
            for batch in &self.batches {
                let updates = if side == 0 { &batch.0 } else { &batch.1 };
                for update in updates.iter().filter(|update| update.timestamp <= time) {
                    *counts.entry(key_value(&update.row)).or_default() += update.diff;
                }
            }
            counts.retain(|_, count| *count != 0);
            counts
        };
        let (left, right) = (accumulate(0), accumulate(1));
        let mut totals: BTreeMap<i64, i64> = BTreeMap::new();
        for ((left_key, left_value), left_count) in &left {
            for ((right_key, right_value), right_count) in &right {
                if left_key == right_key {
                    *totals.entry(*left_key).or_default() +=
                        (left_value * 10 + right_value) * left_count * right_count;
                }
            }
        }
        totals
            .into_iter()
            .map(|(key, total)| (kv_row(key, total), 1))
            .collect()
    }
}

/// Builds, on one worker: both inputs read from `as_of`, joined on the key,
/// reduced to `(key, sum of left_value * 10 + right_value)`, written into
/// the output shard. Returns the statuses `[left source, right source,
/// sink]`.
pub(crate) fn build_join_dataflow<B: PersistBackend<u64>>(
    scope: Scope<'_, u64>,
    runtime: &Handle,
    backend: &Arc<B>,
    shards: JoinShards,
    as_of: u64,
    retry: RetryPolicy,
) -> Vec<DataflowStatus<u64>> {
    let source = |shard| {
        ShardSource::new(runtime.clone(), Arc::clone(backend), shard, as_of)
            .with_retry(retry)
            .build(scope)
    };
    let (left, left_status) = source(shards.left);
    let (right, right_status) = source(shards.right);
    let output = join_and_reduce(left, right);
    let sink_status = ShardSink::new(runtime.clone(), Arc::clone(backend), shards.output)
        .with_retry(retry)
        .build(output);
    vec![left_status, right_status, sink_status]
}

/// The differential part of [`build_join_dataflow`].
pub(crate) fn join_and_reduce<'scope>(
    left: VecCollection<'scope, u64, Row, Diff>,
    right: VecCollection<'scope, u64, Row, Diff>,
) -> VecCollection<'scope, u64, Row, Diff> {
    let left = left.map(|row| key_value(&row));
    let right = right.map(|row| key_value(&row));
    left.join(right)
        .map(|(key, (left_value, right_value))| (key, left_value * 10 + right_value))
        .reduce(|_key, input, output: &mut Vec<(i64, Diff)>| {
            let total: i64 = input.iter().map(|(value, count)| **value * *count).sum();
            output.push((total, 1));
        })
        .map(|(key, total)| kv_row(key, total))
}
