//! The operators against the backend's own calls, on the memory backend:
//!
//! - source: a `ShardSource` reading a 1,000,000-update shard's snapshot
//!   to a probe (1 and 2 workers), against `snapshot` of the same shard;
//! - sink: a `ShardSink` writing 1,000,000 updates (10 times of 100,000)
//!   from a differential input, against direct `compare_and_append` of the
//!   same 10 batches.
//!
//! Prints the medians and the ratios (operator / baseline), measured in
//! the same run. `cargo bench -p tidemark-storage-dataflow --bench dataflow`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::input::Input;
use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_dataflow::{ShardSink, ShardSource};
use tidemark_storage_types::{Datum, IdempotencyToken, PersistBackend, Row, ShardId, Update};
use timely::progress::Antichain;
use tokio::runtime::Runtime;

const UPDATES: usize = 1_000_000;
const TIMES: u64 = 10;
const SAMPLES: usize = 3;

fn row(value: usize) -> Row {
    Row::pack([Datum::Int64(value as i64), Datum::String("bench")])
}

fn batch(time: u64) -> Vec<Update<u64>> {
    let per_time = UPDATES / TIMES as usize;
    (0..per_time)
        .map(|index| Update::new(row(time as usize * per_time + index), time, 1))
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn write_batches(backend: &MemoryBackend, shard: ShardId) {
    PersistBackend::<u64>::open(backend, shard)
        .await
        .expect("open");
    for time in 0..TIMES {
        backend
            .compare_and_append(
                shard,
                batch(time),
                Antichain::from_elem(time),
                Antichain::from_elem(time + 1),
                IdempotencyToken::new(),
            )
            .await
            .expect("append")
            .expect("upper matches");
    }
}

fn source_time(
    runtime: &Runtime,
    backend: &Arc<MemoryBackend>,
    shard: ShardId,
    workers: usize,
) -> Duration {
    let (handle, backend) = (runtime.handle().clone(), Arc::clone(backend));
    let as_of = TIMES - 1;
    let started = Instant::now();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let (collection, _status) =
                ShardSource::new(handle.clone(), Arc::clone(&backend), shard, as_of).build(scope);
            collection.probe().0
        });
        while probe.less_equal(&as_of) {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        for dataflow in worker.installed_dataflows() {
            worker.drop_dataflow(dataflow);
        }
    })
    .expect("timely starts");
    for result in guards.join() {
        result.expect("worker");
    }
    started.elapsed()
}

fn sink_time(runtime: &Runtime, backend: &Arc<MemoryBackend>, shard: ShardId) -> Duration {
    let (handle, backend) = (runtime.handle().clone(), Arc::clone(backend));
    let batches: Vec<Vec<Update<u64>>> = (0..TIMES).map(batch).collect();
    let started = Instant::now();
    timely::execute_directly(move |worker| {
        let (mut input, status) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, collection) = scope.new_collection::<Row, i64>();
            (
                input,
                ShardSink::new(handle, backend, shard).build(collection),
            )
        });
        for (time, updates) in batches.into_iter().enumerate() {
            input.advance_to(time as u64);
            for update in updates {
                input.update(update.row, update.diff);
            }
        }
        input.advance_to(TIMES);
        input.flush();
        while status.frontier() != Antichain::from_elem(TIMES) {
            assert!(
                status.error().is_none(),
                "sink failed: {:?}",
                status.error()
            );
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        for dataflow in worker.installed_dataflows() {
            worker.drop_dataflow(dataflow);
        }
    });
    started.elapsed()
}

fn main() {
    let runtime = Runtime::new().expect("tokio runtime");
    let backend = Arc::new(MemoryBackend::open("dataflow-bench"));
    let shard = ShardId::new();
    runtime.block_on(write_batches(&backend, shard));

    let snapshot = median(
        (0..SAMPLES)
            .map(|_| {
                let started = Instant::now();
                let rows = runtime
                    .block_on(PersistBackend::<u64>::snapshot(
                        &*backend,
                        shard,
                        &(TIMES - 1),
                    ))
                    .expect("snapshot");
                assert_eq!(rows.len(), UPDATES);
                started.elapsed()
            })
            .collect(),
    );
    println!("memory snapshot of {UPDATES} updates: {snapshot:?}");
    for workers in [1, 2] {
        let source = median(
            (0..SAMPLES)
                .map(|_| source_time(&runtime, &backend, shard, workers))
                .collect(),
        );
        println!(
            "memory source, {workers} worker(s), to a probe: {source:?}  ratio source/snapshot = {:.2}",
            source.as_secs_f64() / snapshot.as_secs_f64()
        );
    }

    let direct = median(
        (0..SAMPLES)
            .map(|_| {
                let target = ShardId::new();
                let started = Instant::now();
                runtime.block_on(write_batches(&backend, target));
                started.elapsed()
            })
            .collect(),
    );
    println!("memory compare_and_append of {TIMES} batches ({UPDATES} updates): {direct:?}");
    let sink = median(
        (0..SAMPLES)
            .map(|_| sink_time(&runtime, &backend, ShardId::new()))
            .collect(),
    );
    println!(
        "memory sink of the same updates: {sink:?}  ratio sink/compare_and_append = {:.2}",
        sink.as_secs_f64() / direct.as_secs_f64()
    );
}
