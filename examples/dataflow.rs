//! A differential dataflow over tidemark collections, maintained
//! incrementally and written back exactly once.
//!
//! Two tables written through the controller (`orders` and `customers`)
//! are read by `ShardSource`s, joined on the customer and reduced to the
//! revenue of each region; a `ShardSink` writes the result into a third
//! collection. Half-way the dataflow is stopped and restarted: the new run
//! resumes at the output's upper (its sources at the time just before), and
//! the output ends up equal to the join computed directly from the tables
//! at every time, with no update written twice.
//!
//! `cargo run --example dataflow` (memory), or pass a backend URL:
//! `cargo run --example dataflow --features postgres -- postgres://...`.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tidemark::DynBackend;
use tidemark::controller::{Controller, ControllerConfig, StorageController};
use tidemark::dataflow::{DataflowStatus, ShardSink, ShardSource, SharedReadHold, resume_as_of};
use tidemark::types::reexports::differential_dataflow::consolidation::consolidate;
use tidemark::types::{
    CollectionDescription, DataSource, Datum, Diff, GlobalId, PersistBackend, RelationDesc, Row,
    ScalarType, ShardId, Update, display_frontier,
};
use timely::progress::Antichain;
use tokio::runtime::Runtime;

const ORDERS: GlobalId = GlobalId::User(1);
const CUSTOMERS: GlobalId = GlobalId::User(2);
const REVENUE: GlobalId = GlobalId::User(3);
const WORKERS: usize = 2;

fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://dataflow-example".into());
    // The runtime drives the controller and the operators' backend calls;
    // the timely workers run on threads of their own.
    let runtime = Runtime::new()?;
    let backend: DynBackend = runtime.block_on(tidemark::open(&url))?;
    let mut controller = runtime.block_on(Controller::new(
        Arc::clone(&backend),
        ControllerConfig::default(),
    ))?;
    let ints = |names: &[&str]| {
        names.iter().fold(RelationDesc::empty(), |desc, name| {
            desc.with_column(*name, ScalarType::Int64.nullable(false))
        })
    };
    runtime.block_on(controller.create_collections(vec![
        (
            ORDERS,
            CollectionDescription::table(ints(&["customer", "amount"])),
        ),
        (
            CUSTOMERS,
            CollectionDescription::table(ints(&["customer", "region"])),
        ),
        // Written by the dataflow's sink, not by the controller.
        (
            REVENUE,
            CollectionDescription::new(ints(&["region", "revenue"]), DataSource::Other),
        ),
    ]))?;
    let shard_of =
        |controller: &Controller<u64, DynBackend>, id| -> Result<ShardId, Box<dyn Error>> {
            Ok(controller.collection(id)?.collection_metadata.data_shard)
        };
    let shards = Shards {
        orders: shard_of(&controller, ORDERS)?,
        customers: shard_of(&controller, CUSTOMERS)?,
        revenue: shard_of(&controller, REVENUE)?,
    };
    let start = controller.collection(ORDERS)?.write_frontier.elements()[0];

    // First half: three rounds of writes, then the dataflow catches up.
    for round in 0..3 {
        runtime.block_on(write_round(&mut controller, start, round))?;
    }
    let first = Dataflow::start(&runtime, &backend, &mut controller, shards)?;
    runtime.block_on(first.wait_for_output(&backend, shards))?;
    first.stop();
    let halfway = runtime.block_on(backend.frontiers(shards.revenue))?.upper;
    println!(
        "stopped the dataflow with the output written up to {}",
        display_frontier(&halfway)
    );

    // Second half: more writes (and a retraction) while nothing runs, then
    // a new dataflow resumes where the output's upper says.
    for round in 3..6 {
        runtime.block_on(write_round(&mut controller, start, round))?;
    }
    let second = Dataflow::start(&runtime, &backend, &mut controller, shards)?;
    runtime.block_on(second.wait_for_output(&backend, shards))?;
    second.stop();
    let upper = runtime.block_on(backend.frontiers(shards.revenue))?.upper;
    controller.update_write_frontiers(&[(REVENUE, upper.clone())]);
    println!(
        "restarted dataflow wrote the output up to {}",
        display_frontier(&upper)
    );

    // The output equals the join computed directly, at every time.
    let last = upper.elements()[0] - 1;
    for time in start..=last {
        let written = runtime.block_on(controller.snapshot(REVENUE, time))?;
        let orders = runtime.block_on(controller.snapshot(ORDERS, time))?;
        let customers = runtime.block_on(controller.snapshot(CUSTOMERS, time))?;
        let expected = revenue_by_region(&orders, &customers);
        if written != expected {
            return Err(format!(
                "output at {time} differs from the join: written={written:?} expected={expected:?}"
            )
            .into());
        }
        if written.iter().any(|(_, diff)| *diff != 1) {
            return Err(format!("a region was written twice at {time}: {written:?}").into());
        }
    }
    println!(
        "revenue by region at {last} (equal to the join computed directly at every time from {start}):"
    );
    for (row, _) in runtime.block_on(controller.snapshot(REVENUE, last))? {
        let values = ints_of(&row);
        println!("  region {} revenue {}", values[0], values[1]);
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Shards {
    orders: ShardId,
    customers: ShardId,
    revenue: ShardId,
}

fn int_row(values: &[i64]) -> Row {
    Row::pack(values.iter().map(|value| Datum::Int64(*value)))
}

fn ints_of(row: &Row) -> Vec<i64> {
    row.iter()
        .map(|datum| match datum {
            Datum::Int64(value) => value,
            _ => 0,
        })
        .collect()
}

/// Round `round`: a new customer in region `round % 3` and orders from two
/// customers; from round 3 on, an earlier order is cancelled.
async fn write_round(
    controller: &mut Controller<u64, DynBackend>,
    start: u64,
    round: i64,
) -> Result<(), Box<dyn Error>> {
    let time = start + round as u64;
    let mut orders = vec![
        Update::new(int_row(&[round, 10 * (round + 1)]), time, 1),
        Update::new(int_row(&[round / 2, 5]), time, 1),
    ];
    if round >= 3 {
        orders.push(Update::new(
            int_row(&[round - 3, 10 * (round - 2)]),
            time,
            -1,
        ));
    }
    let customers = vec![Update::new(int_row(&[round, round % 3]), time, 1)];
    let written = controller.append(vec![
        (ORDERS, orders, time + 1),
        (CUSTOMERS, customers, time + 1),
    ])?;
    written.await??;
    Ok(())
}

/// The model: revenue per region, from the tables' contents.
fn revenue_by_region(orders: &[(Row, Diff)], customers: &[(Row, Diff)]) -> Vec<(Row, Diff)> {
    let mut totals: Vec<((i64, i64), Diff)> = Vec::new();
    for (order, order_count) in orders {
        let order = ints_of(order);
        for (customer, customer_count) in customers {
            let customer = ints_of(customer);
            if order[0] == customer[0] {
                totals.push(((customer[1], order[1] * order_count * customer_count), 1));
            }
        }
    }
    // Sum per region, then one output row per region.
    let mut per_region: std::collections::BTreeMap<i64, i64> = Default::default();
    for ((region, amount), _) in totals {
        *per_region.entry(region).or_default() += amount;
    }
    let mut rows: Vec<(Row, Diff)> = per_region
        .into_iter()
        .map(|(region, revenue)| (int_row(&[region, revenue]), 1))
        .collect();
    consolidate(&mut rows);
    rows
}

/// One run of the dataflow on `WORKERS` timely workers.
struct Dataflow {
    stop: Arc<AtomicBool>,
    statuses: Arc<std::sync::Mutex<Vec<DataflowStatus<u64>>>>,
    workers: JoinHandle<()>,
}

impl Dataflow {
    fn start(
        runtime: &Runtime,
        backend: &DynBackend,
        controller: &mut Controller<u64, DynBackend>,
        shards: Shards,
    ) -> Result<Dataflow, Box<dyn Error>> {
        // Resume at the output's upper: the sources start just before it,
        // so the sink's updates at times it has not written are exactly the
        // first run's.
        let output_upper = runtime.block_on(backend.frontiers(shards.revenue))?.upper;
        let since = controller
            .collection(ORDERS)?
            .read_capabilities
            .frontier()
            .to_owned();
        let as_of = resume_as_of(&output_upper)
            .ok_or("the output is sealed")?
            .max(since.elements()[0]);
        // Holds keep the tables readable from the as_of while the sources run.
        let holds = [ORDERS, CUSTOMERS].map(|id| {
            controller
                .acquire_read_hold(id, as_of)
                .map(|hold| SharedReadHold::new(hold, WORKERS))
        });
        let [orders_hold, customers_hold] = holds;
        let (orders_hold, customers_hold) = (orders_hold?, customers_hold?);
        println!("starting the dataflow on {WORKERS} workers from as_of {as_of}");
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (handle, backend) = (runtime.handle().clone(), Arc::new(Arc::clone(backend)));
        let (worker_stop, worker_statuses) = (Arc::clone(&stop), Arc::clone(&statuses));
        let workers = std::thread::spawn(move || {
            let guards = timely::execute(timely::Config::process(WORKERS), move |worker| {
                let built = worker.dataflow::<u64, _, _>(|scope| {
                    let source = |shard, hold: &SharedReadHold<u64>| {
                        ShardSource::new(handle.clone(), Arc::clone(&backend), shard, as_of)
                            .with_read_hold(hold.clone())
                            .build(scope)
                    };
                    let (orders, orders_status) = source(shards.orders, &orders_hold);
                    let (customers, customers_status) = source(shards.customers, &customers_hold);
                    let orders = orders.map(|row| {
                        let values = ints_of(&row);
                        (values[0], values[1])
                    });
                    let customers = customers.map(|row| {
                        let values = ints_of(&row);
                        (values[0], values[1])
                    });
                    let revenue = orders
                        .join(customers)
                        .map(|(_customer, (amount, region))| (region, amount))
                        .reduce(|_region, amounts, output: &mut Vec<(i64, Diff)>| {
                            let total = amounts
                                .iter()
                                .map(|(amount, count)| **amount * *count)
                                .sum();
                            output.push((total, 1));
                        })
                        .map(|(region, total)| int_row(&[region, total]));
                    let sink_status =
                        ShardSink::new(handle.clone(), Arc::clone(&backend), shards.revenue)
                            .build(revenue);
                    vec![orders_status, customers_status, sink_status]
                });
                worker_statuses.lock().expect("statuses").extend(built);
                while !worker_stop.load(Ordering::SeqCst) {
                    worker.step_or_park(Some(Duration::from_millis(10)));
                }
                for dataflow in worker.installed_dataflows() {
                    worker.drop_dataflow(dataflow);
                }
            });
            match guards {
                Ok(guards) => {
                    for result in guards.join() {
                        if let Err(panic) = result {
                            eprintln!("a worker panicked: {panic}");
                        }
                    }
                }
                Err(error) => eprintln!("timely did not start: {error}"),
            }
        });
        Ok(Dataflow {
            stop,
            statuses,
            workers,
        })
    }

    /// Waits until the output's upper reaches the inputs' upper.
    async fn wait_for_output(
        &self,
        backend: &DynBackend,
        shards: Shards,
    ) -> Result<(), Box<dyn Error>> {
        let inputs = backend.frontiers(shards.orders).await?.upper;
        let mut output: Antichain<u64> = backend.frontiers(shards.revenue).await?.upper;
        while output != inputs {
            let failed = self
                .statuses
                .lock()
                .expect("statuses")
                .iter()
                .find_map(DataflowStatus::error);
            if let Some(error) = failed {
                return Err(error.into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            output = backend.frontiers(shards.revenue).await?.upper;
        }
        Ok(())
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.workers.join();
    }
}
