//! The ingestion dataflow: a load generator's ticks written into the
//! ingestion's output shards.
//!
//! ```text
//! Generator --(output, row)--> filter per output --> ShardSink (one per output shard)
//! Progress: holds its capability at the meet of the sinks' uppers --> probe
//! ```
//!
//! - The **generator** operator runs on one worker (see
//!   [`worker_for`]). It emits tick `k`'s
//!   updates at the tick's time and then downgrades its capability to the
//!   next tick's time, paced by the description's `tick`, and never more
//!   than [`WINDOW`] ticks ahead of what is durable.
//! - Each output shard gets a [`ShardSink`] whose committer is the same
//!   worker: it appends each completed interval with one
//!   `compare_and_append` at exactly that interval, and skips updates the
//!   shard already has. A restarted ingestion starts at its resume upper
//!   (the meet of its outputs' uppers), so an output that is ahead skips
//!   the ticks it has: nothing is written twice and nothing is missed.
//! - The **progress** operator carries the meet of the sinks' uppers as a
//!   timely frontier, so every worker of every process sees what is
//!   durable and reports it.
//!
//! A backend failure stops the sink that met it (its status says why) and
//! the generator stops emitting: the ingestion stalls, it does not panic.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::AsCollection;
use tidemark_storage_controller::protocol::IngestionCommand;
use tidemark_storage_dataflow::{DataflowStatus, ShardSink};
use tidemark_storage_types::{
    DataSource, Diff, GlobalId, PersistBackend, Row, ShardId, StorageTimestamp,
};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::generic::source;
use timely::progress::Antichain;
use timely::worker::Worker;

use crate::ReplicaTimestamp;
use crate::generator::{Generator, tick_time, time_tick};
use crate::lag::Pace;
use crate::monitor::{Built, Monitor};
use crate::placement::worker_for;
use crate::worker::Context;

/// How many ticks the generator may run ahead of what is durable.
pub const WINDOW: u64 = 32;

/// How many ticks the generator emits in one activation before yielding.
const TICKS_PER_ACTIVATION: u64 = 16;

/// How often the progress operator looks at the sinks' uppers.
const PROGRESS_POLL: Duration = Duration::from_millis(5);

/// What an output shard receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// A generator output, by name.
    Named(&'static str),
    /// The progress (remap) collection.
    Progress,
}

/// The generator and where each of its outputs goes.
struct Plan {
    generator: Generator,
    outputs: Vec<(GlobalId, ShardId, Output)>,
}

impl Plan {
    fn new<T>(
        command: &IngestionCommand<T>,
        excluded: &BTreeSet<GlobalId>,
    ) -> Result<Plan, String> {
        let DataSource::Ingestion(description) = &command.description.data_source else {
            return Err(format!(
                "not an ingestion: id={} data_source={:?}",
                command.id, command.description.data_source
            ));
        };
        let generator = Generator::new(description).map_err(|error| error.to_string())?;
        let mut outputs = Vec::new();
        for (id, shard) in &command.data_shards {
            if excluded.contains(id) {
                continue;
            }
            let output = if *id == command.id {
                Output::Named(generator.primary())
            } else if let Some(name) = generator.exports().get(id) {
                Output::Named(name)
            } else if description.remap_collection_id == Some(*id) {
                Output::Progress
            } else {
                return Err(format!(
                    "a data shard for a collection the ingestion does not write: ingestion={} collection={id}",
                    command.id
                ));
            };
            outputs.push((*id, *shard, output));
        }
        Ok(Plan { generator, outputs })
    }
}

/// The ids an ingestion command writes (itself, its source exports and, if
/// its shard is given, its progress collection), less `excluded`.
pub(crate) fn outputs_of<T>(
    command: &IngestionCommand<T>,
    excluded: &BTreeSet<GlobalId>,
) -> Vec<GlobalId> {
    command
        .data_shards
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !excluded.contains(id))
        .collect()
}

/// Builds the ingestion's dataflow on this worker, starting at `resume`.
pub(crate) fn build<T, B>(
    worker: &mut Worker,
    context: &Context<B>,
    command: &IngestionCommand<T>,
    excluded: &BTreeSet<GlobalId>,
    resume: &Antichain<T>,
) -> Built<T>
where
    T: ReplicaTimestamp,
    B: PersistBackend<T>,
{
    let monitor = Monitor::new();
    let placed = worker_for(command.id, worker.peers()) == worker.index();
    let plan = match Plan::new(command, excluded) {
        Ok(plan) => Some(plan),
        Err(error) => {
            monitor.fail(error);
            None
        }
    };
    let start = resume.elements().first().map(time_tick);
    let probe = worker.dataflow::<T, _, _>(|scope| {
        let worker_handle = scope.worker().clone();
        if let Some(plan) = plan {
            let generated = {
                let monitor = Rc::clone(&monitor);
                let generator = plan.generator;
                let kinds: Vec<Output> = plan.outputs.iter().map(|(_, _, kind)| *kind).collect();
                let activations = worker_handle.clone();
                source::<_, CapacityContainerBuilder<Vec<((usize, Row), T, Diff)>>, _, _>(
                    scope,
                    "Generator",
                    move |capability, info| {
                        let activator = activations.activator_for(info.address.clone());
                        let mut ticking =
                            Ticking::new(generator, kinds, start, placed, capability, monitor);
                        move |output| {
                            if let Some(wait) = ticking.step(output) {
                                activator.activate_after(wait);
                            }
                        }
                    },
                )
                .as_collection()
            };
            for (index, (_, shard, _)) in plan.outputs.iter().enumerate() {
                let status = ShardSink::new(
                    context.runtime.clone(),
                    Arc::clone(&context.backend),
                    *shard,
                )
                .with_committer(worker_for(command.id, worker_handle.peers()))
                .build(
                    generated
                        .clone()
                        .filter(move |(output, _)| *output == index)
                        .map(|(_, row)| row),
                );
                if placed {
                    monitor.watch(status);
                }
            }
        }
        // Without a plan nothing is written: the progress stream holds at
        // the resume upper, so nothing reads as durable.
        let monitor_for_progress = Rc::clone(&monitor);
        let progress = source::<_, CapacityContainerBuilder<Vec<()>>, _, _>(
            scope,
            "IngestionProgress",
            move |mut capability, info| {
                let activator = worker_handle.activator_for(info.address.clone());
                if let Some(time) = resume.elements().first() {
                    capability.downgrade(time);
                }
                let mut capability = placed.then_some(capability);
                let monitor = monitor_for_progress;
                move |_output| {
                    let Some(held) = capability.as_mut() else {
                        return;
                    };
                    activator.activate_after(PROGRESS_POLL);
                    if monitor.error().is_some() {
                        return;
                    }
                    let parts = monitor.parts();
                    if parts.is_empty() {
                        return;
                    }
                    let durable = durable_upper(&parts);
                    match durable.elements().first() {
                        Some(time) => {
                            if held.time() < time {
                                held.downgrade(time);
                            }
                        }
                        None => capability = None,
                    }
                }
            },
        );
        progress.probe().0
    });
    Built {
        probe,
        monitor,
        placed,
    }
}

/// The meet of the sinks' uppers: what is durable in every output.
fn durable_upper<T: StorageTimestamp>(parts: &[DataflowStatus<T>]) -> Antichain<T> {
    let mut meet = Antichain::new();
    for part in parts {
        for time in part.frontier().elements() {
            meet.insert(*time);
        }
    }
    meet
}

/// The generator operator's output: `(output index, row)` updates.
type GeneratorOutput<'a, T> = timely::dataflow::operators::generic::OutputBuilderSession<
    'a,
    T,
    CapacityContainerBuilder<Vec<((usize, Row), T, Diff)>>,
>;

/// The generator operator's state on its worker.
struct Ticking<T: StorageTimestamp> {
    generator: Generator,
    /// Per output index, what it receives.
    kinds: Vec<Output>,
    /// Output indexes by generator output name.
    by_name: BTreeMap<&'static str, Vec<usize>>,
    /// The next tick to emit.
    next: u64,
    /// The tick emitted first, and when.
    first: u64,
    started: Instant,
    capability: Option<timely::dataflow::operators::Capability<T>>,
    monitor: Rc<Monitor<T>>,
}

impl<T: StorageTimestamp> Ticking<T> {
    fn new(
        generator: Generator,
        kinds: Vec<Output>,
        start: Option<u64>,
        placed: bool,
        mut capability: timely::dataflow::operators::Capability<T>,
        monitor: Rc<Monitor<T>>,
    ) -> Ticking<T> {
        let mut by_name: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
        for (index, kind) in kinds.iter().enumerate() {
            if let Output::Named(name) = kind {
                by_name.entry(name).or_default().push(index);
            }
        }
        let first = start.unwrap_or(0);
        // An empty resume upper: every output is sealed, nothing to write.
        let time = start.and_then(tick_time::<T>);
        let capability = match (placed, time) {
            (true, Some(time)) => {
                capability.downgrade(&time);
                Some(capability)
            }
            _ => None,
        };
        let ticking = Ticking {
            generator,
            kinds,
            by_name,
            next: first,
            first,
            started: Instant::now(),
            capability,
            monitor,
        };
        if ticking.capability.is_some() {
            ticking.report_pace();
        }
        ticking
    }

    /// Tells the monitor where the generator is, for its frontier lag.
    fn report_pace(&self) {
        self.monitor.pace(Pace {
            started: self.started,
            first: self.first,
            interval: self.generator.tick_interval(),
            emitted: self.next,
        });
    }

    /// Emits the ticks that are due; how long until it should run again
    /// (`None`: never, the generator is done or not on this worker).
    fn step(&mut self, output: &mut GeneratorOutput<'_, T>) -> Option<Duration> {
        let capability = self.capability.as_mut()?;
        if self.monitor.error().is_some() {
            // Stalled: hold where we are, look again later.
            return Some(Duration::from_millis(100));
        }
        let durable = durable_upper(&self.monitor.parts());
        let committed = durable.elements().first().map_or(u64::MAX, time_tick);
        let interval = self.generator.tick_interval();
        for _ in 0..TICKS_PER_ACTIVATION {
            if self.next >= committed.saturating_add(WINDOW) {
                return Some(PROGRESS_POLL);
            }
            let offset = u32::try_from(self.next - self.first).unwrap_or(u32::MAX);
            let due = self.started + interval.saturating_mul(offset);
            let now = Instant::now();
            if now < due {
                return Some(due - now);
            }
            let Some(time) = tick_time::<T>(self.next) else {
                self.capability = None;
                return None;
            };
            let mut session = output.session(&*capability);
            let (mut updates, mut bytes) = (0u64, 0u64);
            for (name, rows) in self.generator.tick(self.next) {
                for index in self.by_name.get(name).into_iter().flatten() {
                    for (row, diff) in &rows {
                        updates += 1;
                        bytes += row.byte_len() as u64;
                        session.give(((*index, row.clone()), time, *diff));
                    }
                }
            }
            for (index, kind) in self.kinds.iter().enumerate() {
                if *kind == Output::Progress {
                    for (row, diff) in Generator::progress(self.next) {
                        updates += 1;
                        bytes += row.byte_len() as u64;
                        session.give(((index, row), time, diff));
                    }
                }
            }
            drop(session);
            self.monitor.count(updates, bytes);
            self.next += 1;
            self.monitor.pace(Pace {
                started: self.started,
                first: self.first,
                interval,
                emitted: self.next,
            });
            match tick_time::<T>(self.next) {
                Some(next) => capability.downgrade(&next),
                None => {
                    self.capability = None;
                    return None;
                }
            }
        }
        Some(Duration::ZERO)
    }
}
