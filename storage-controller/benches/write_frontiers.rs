//! Cost of `update_write_frontiers` for 10,000 collections with lag read
//! policies, per collection, against a raw baseline in the same run: the
//! same policy frontiers and `MutableAntichain` updates computed by hand.
//!
//! `cargo bench -p tidemark-storage-controller --bench write_frontiers`
//!
//! The controller's queued backend work (since downgrades) is drained
//! between measured calls so that it does not compete with them.
//!
//! `TIDEMARK_BENCH_ROUNDS=N` runs N rounds instead of 15. Each side of a
//! round is one function that is never inlined (`raw_round` and
//! `controller_round`), so an instruction count of one side is one
//! `valgrind --tool=callgrind --toggle-collect='*raw_round*'` (or
//! `'*controller_round*'`) run of the bench binary away, repeatable on a
//! loaded machine where the wall-clock ratio is not.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_controller::{Controller, ControllerConfig, StorageController};
use tidemark_storage_types::{
    CollectionDescription, DataSource, GlobalId, ReadPolicy, RelationDesc, ScalarType,
    StorageParameters,
};
use timely::progress::frontier::MutableAntichain;
use timely::progress::{Antichain, ChangeBatch};

const COLLECTIONS: u64 = 10_000;
const DEFAULT_ROUNDS: u64 = 15;
const LAG: u64 = 10;
const GRANULARITY: u64 = 5;

/// One collection as the baseline tracks it.
struct RawCollection {
    write_frontier: Antichain<u64>,
    implied: Antichain<u64>,
    policy: ReadPolicy<u64>,
    read_capabilities: MutableAntichain<u64>,
}

/// The same work by hand: raise the write frontier, compute the policy's
/// frontier, move the implied capability, apply it to the read
/// capabilities, collect the since changes.
#[inline(never)]
fn raw_round(collections: &mut [RawCollection], upper: &Antichain<u64>) -> usize {
    let mut since_changes = 0;
    for collection in collections.iter_mut() {
        if timely::PartialOrder::less_than(&collection.write_frontier, upper) {
            collection.write_frontier.clone_from(upper);
        }
        let proposed = collection
            .policy
            .frontier(collection.write_frontier.borrow());
        if proposed != collection.implied
            && timely::PartialOrder::less_equal(&collection.implied, &proposed)
        {
            let mut changes: ChangeBatch<u64> = ChangeBatch::new();
            changes.extend(proposed.iter().map(|time| (*time, 1)));
            changes.extend(collection.implied.iter().map(|time| (*time, -1)));
            collection.implied = proposed;
            since_changes += collection
                .read_capabilities
                .update_iter(changes.drain())
                .count();
        }
    }
    since_changes
}

/// The measured controller call of one round.
#[inline(never)]
fn controller_round(
    controller: &mut Controller<u64, MemoryBackend>,
    updates: &[(GlobalId, Antichain<u64>)],
) {
    controller.update_write_frontiers(updates);
}

/// How many rounds to run: `TIDEMARK_BENCH_ROUNDS`, 15 when unset.
fn rounds() -> Result<u64, String> {
    match std::env::var("TIDEMARK_BENCH_ROUNDS") {
        Ok(text) => match text.parse::<u64>() {
            Ok(rounds) if rounds > 0 => Ok(rounds),
            _ => Err(format!(
                "TIDEMARK_BENCH_ROUNDS must be a positive integer: got {text:?}"
            )),
        },
        Err(_) => Ok(DEFAULT_ROUNDS),
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let rounds = match rounds() {
        Ok(rounds) => rounds,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime starts");
    runtime.block_on(async {
        let config = ControllerConfig {
            parameters: StorageParameters {
                physical_compaction: Some(false),
                ..StorageParameters::default()
            },
            ..ControllerConfig::default()
        };
        let backend = MemoryBackend::open(&format!("bench-write-frontiers-{}", std::process::id()));
        let mut controller = Controller::<u64, _>::new(backend, config)
            .await
            .expect("controller starts");
        let relation = RelationDesc::empty().with_column("x", ScalarType::Int64.nullable(false));
        let ids: Vec<GlobalId> = (0..COLLECTIONS).map(GlobalId::User).collect();
        controller
            .create_collections(
                ids.iter()
                    .map(|id| (*id, CollectionDescription::new(relation.clone(), DataSource::Other)))
                    .collect(),
            )
            .await
            .expect("collections created");
        controller.set_read_policy(
            ids.iter()
                .map(|id| (*id, ReadPolicy::lag_writes_by(LAG, GRANULARITY)))
                .collect(),
        );
        controller.flush().await;

        let mut raw: Vec<RawCollection> = (0..COLLECTIONS)
            .map(|_| {
                let mut read_capabilities = MutableAntichain::new();
                read_capabilities.update_iter([(0u64, 1)]);
                RawCollection {
                    write_frontier: Antichain::from_elem(0),
                    implied: Antichain::from_elem(0),
                    policy: ReadPolicy::lag_writes_by(LAG, GRANULARITY),
                    read_capabilities,
                }
            })
            .collect();

        let mut controller_samples = Vec::new();
        let mut raw_samples = Vec::new();
        for round in 1..=rounds {
            // Each round moves every upper by one granule: every
            // collection's since moves.
            let upper = Antichain::from_elem(LAG + round * GRANULARITY);
            let updates: Vec<(GlobalId, Antichain<u64>)> =
                ids.iter().map(|id| (*id, upper.clone())).collect();

            let started = Instant::now();
            black_box(raw_round(&mut raw, &upper));
            raw_samples.push(started.elapsed());

            let started = Instant::now();
            controller_round(&mut controller, black_box(&updates));
            controller_samples.push(started.elapsed());
            controller.flush().await;
        }
        // Both computed the same sinces.
        let expected = Antichain::from_elem(rounds * GRANULARITY);
        for (id, state) in controller.collections() {
            assert_eq!(state.since(), expected, "since of {id}");
        }
        assert!(raw.iter().all(|c| c.read_capabilities.frontier().to_owned() == expected));

        let per_collection = |d: Duration| d.as_nanos() as f64 / COLLECTIONS as f64;
        let controller_ns = per_collection(median(controller_samples));
        let raw_ns = per_collection(median(raw_samples));
        println!(
            "update_write_frontiers, {COLLECTIONS} collections with lag policies (median of {rounds} rounds):"
        );
        println!("  controller: {controller_ns:>9.1} ns per collection");
        println!("  raw:        {raw_ns:>9.1} ns per collection");
        println!("  ratio controller/raw: {:.2}", controller_ns / raw_ns);
    });
}
