//! One timely worker of a replica: applies the controller's commands in
//! order (every worker of the cluster sees the same commands in the same
//! order, so each builds and drops the same dataflows at the same points),
//! steps its dataflows, and reports what they did.
//!
//! # Commands
//!
//! - `CreateSources` / `CreateSinks`: builds the dataflow, unless one with
//!   the same description already runs (a reconnecting controller replays
//!   its history; a dataflow that is already running is kept, not
//!   restarted).
//! - `AllowCompaction` with an empty frontier: the dataflow is dropped
//!   (`Worker::drop_dataflow`, which drops its operators and so aborts
//!   their backend tasks) and reported dropped. For a source export of a
//!   running ingestion, the ingestion is rebuilt without that output.
//!   A non-empty frontier needs nothing: the replica holds no read hold of
//!   its own (the controller's holds keep what its dataflows read).
//! - A new epoch (a new connection) starts a reconciliation: when the
//!   replayed history ends (`InitializationComplete`), every dataflow the
//!   replay did not name is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use tidemark_storage_controller::protocol::{ExportCommand, IngestionCommand, StorageCommand};
use tidemark_storage_types::{GlobalId, PersistBackend, StorageParameters, StorageTimestamp};
use timely::progress::Antichain;
use timely::worker::Worker;
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedSender;

use crate::ReplicaTimestamp;
use crate::monitor::Built;
use crate::report::WorkerEvent;
use crate::{export, ingestion};

/// How long an idle worker parks before looking for commands again.
const PARK: Duration = Duration::from_millis(5);

/// What every dataflow of a process needs.
pub(crate) struct Context<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) runtime: Handle,
}

/// What the session loop sends each worker.
#[derive(Debug)]
pub(crate) enum WorkerCommand<T> {
    /// A new connection, of this epoch, supersedes the previous one.
    Epoch(u64),
    /// A command from the controller.
    Command(StorageCommand<T>),
}

/// What a dataflow was built from.
enum Definition<T> {
    Ingestion {
        command: IngestionCommand<T>,
        /// Outputs dropped while the ingestion runs on.
        excluded: BTreeSet<GlobalId>,
    },
    Export(ExportCommand<T>),
}

/// A dataflow running on this worker.
struct Running<T: StorageTimestamp> {
    index: usize,
    definition: Definition<T>,
    built: Built<T>,
    /// The ids whose upper the probe is.
    outputs: Vec<GlobalId>,
    /// The upper last reported (and, for an ingestion, where a rebuild
    /// resumes).
    reported: Option<Antichain<T>>,
    /// The status last reported.
    status: Option<String>,
}

/// A worker's state.
pub(crate) struct WorkerState<T: StorageTimestamp, B> {
    context: Context<B>,
    /// This worker's index within its process.
    local: usize,
    events: UnboundedSender<WorkerEvent<T>>,
    running: BTreeMap<GlobalId, Running<T>>,
    /// The ids named since the latest epoch began, until its replay ends.
    reconciling: Option<BTreeSet<GlobalId>>,
    parameters: StorageParameters,
    last_statistics: Instant,
}

impl<T, B> WorkerState<T, B>
where
    T: ReplicaTimestamp,
    B: PersistBackend<T>,
{
    pub(crate) fn new(
        context: Context<B>,
        local: usize,
        events: UnboundedSender<WorkerEvent<T>>,
    ) -> Self {
        WorkerState {
            context,
            local,
            events,
            running: BTreeMap::new(),
            reconciling: None,
            parameters: StorageParameters::default(),
            last_statistics: Instant::now(),
        }
    }

    /// Runs until the session loop goes away, then drops every dataflow.
    pub(crate) fn run(mut self, worker: &mut Worker, commands: &Receiver<WorkerCommand<T>>) {
        loop {
            loop {
                match commands.try_recv() {
                    Ok(command) => self.apply(worker, command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        for running in std::mem::take(&mut self.running).into_values() {
                            worker.drop_dataflow(running.index);
                        }
                        return;
                    }
                }
            }
            worker.step_or_park(Some(PARK));
            self.observe();
        }
    }

    fn apply(&mut self, worker: &mut Worker, command: WorkerCommand<T>) {
        let command = match command {
            WorkerCommand::Epoch(epoch) => {
                tracing::debug!(epoch, worker = self.local, "a new connection: reconciling");
                self.reconciling = Some(BTreeSet::new());
                return;
            }
            WorkerCommand::Command(command) => command,
        };
        match command {
            StorageCommand::CreateTimely { .. } => {}
            StorageCommand::UpdateConfiguration(parameters) => self.parameters = parameters,
            StorageCommand::CreateSources(sources) => {
                for source in sources {
                    self.create_source(worker, source);
                }
            }
            StorageCommand::CreateSinks(sinks) => {
                for sink in sinks {
                    self.create_sink(worker, sink);
                }
            }
            StorageCommand::AllowCompaction(frontiers) => {
                for (id, frontier) in frontiers {
                    if frontier.is_empty() {
                        self.drop_id(worker, id);
                    }
                }
            }
            StorageCommand::InitializationComplete => {
                if let Some(named) = self.reconciling.take() {
                    let stale: Vec<GlobalId> = self
                        .running
                        .keys()
                        .filter(|id| !named.contains(id))
                        .copied()
                        .collect();
                    for id in stale {
                        self.drop_id(worker, id);
                    }
                }
            }
        }
    }

    fn create_source(&mut self, worker: &mut Worker, command: IngestionCommand<T>) {
        if let Some(named) = &mut self.reconciling {
            named.insert(command.id);
        }
        if let Some(running) = self.running.get(&command.id) {
            if let Definition::Ingestion {
                command: current, ..
            } = &running.definition
                && current.description == command.description
                && current.data_shards == command.data_shards
            {
                return;
            }
            self.drop_id(worker, command.id);
        }
        let resume = command.resume_upper.clone();
        self.start_ingestion(worker, command, BTreeSet::new(), &resume);
    }

    fn start_ingestion(
        &mut self,
        worker: &mut Worker,
        command: IngestionCommand<T>,
        excluded: BTreeSet<GlobalId>,
        resume: &Antichain<T>,
    ) {
        let index = worker.next_dataflow_index();
        let built = ingestion::build(worker, &self.context, &command, &excluded, resume);
        let outputs = ingestion::outputs_of(&command, &excluded);
        self.install(
            command.id,
            index,
            Definition::Ingestion { command, excluded },
            built,
            outputs,
        );
    }

    fn create_sink(&mut self, worker: &mut Worker, command: ExportCommand<T>) {
        if let Some(named) = &mut self.reconciling {
            named.insert(command.id);
        }
        if let Some(running) = self.running.get(&command.id) {
            if let Definition::Export(current) = &running.definition
                && current.description == command.description
                && current.from_shard == command.from_shard
            {
                return;
            }
            self.drop_id(worker, command.id);
        }
        let index = worker.next_dataflow_index();
        let built = export::build(worker, &self.context, &command);
        let id = command.id;
        self.install(id, index, Definition::Export(command), built, vec![id]);
    }

    fn install(
        &mut self,
        id: GlobalId,
        index: usize,
        definition: Definition<T>,
        built: Built<T>,
        outputs: Vec<GlobalId>,
    ) {
        let mut running = Running {
            index,
            definition,
            built,
            outputs,
            reported: None,
            status: None,
        };
        if running.built.placed {
            self.report_status(id, &mut running, "starting".to_string());
        }
        self.running.insert(id, running);
    }

    /// Stops whatever writes `id` and reports it dropped.
    fn drop_id(&mut self, worker: &mut Worker, id: GlobalId) {
        if let Some(running) = self.running.remove(&id) {
            worker.drop_dataflow(running.index);
            if running.built.placed {
                let _ = self
                    .events
                    .send(WorkerEvent::Status(id, "dropped".to_string()));
            }
            let mut ids = running.outputs.clone();
            if !ids.contains(&id) {
                ids.push(id);
            }
            let _ = self.events.send(WorkerEvent::Dropped {
                worker: self.local,
                ids,
            });
            return;
        }
        // A source export of a running ingestion: rebuild it without.
        let owner = self.running.iter().find_map(|(owner, running)| {
            matches!(running.definition, Definition::Ingestion { .. })
                .then_some(*owner)
                .filter(|_| running.outputs.contains(&id) && *owner != id)
        });
        if let Some(owner) = owner {
            let running = self.running.remove(&owner).expect("found above");
            worker.drop_dataflow(running.index);
            if let Definition::Ingestion {
                command,
                mut excluded,
            } = running.definition
            {
                excluded.insert(id);
                let resume = running
                    .reported
                    .clone()
                    .unwrap_or_else(|| command.resume_upper.clone());
                self.start_ingestion(worker, command, excluded, &resume);
            }
        }
        // Dropped now, or never running here: either way it is stopped.
        let _ = self.events.send(WorkerEvent::Dropped {
            worker: self.local,
            ids: vec![id],
        });
    }

    /// Reports uppers, status changes and, every statistics interval,
    /// counters and frontier lags (each against the upper it probes: what
    /// is durable).
    fn observe(&mut self) {
        let mut changes = Vec::new();
        for (id, running) in &mut self.running {
            let upper = running
                .built
                .probe
                .with_frontier(|frontier| frontier.to_owned());
            if running.reported.as_ref() != Some(&upper) {
                let advanced = running.reported.is_some();
                running.reported = Some(upper.clone());
                let _ = self.events.send(WorkerEvent::Upper {
                    worker: self.local,
                    ids: running.outputs.clone(),
                    upper: upper.clone(),
                });
                if advanced && running.built.placed && running.status.as_deref() == Some("starting")
                {
                    changes.push((*id, "running".to_string()));
                }
            }
            if let Some(error) = running.built.monitor.error() {
                let stalled = format!("stalled: {error}");
                if running.status.as_deref() != Some(stalled.as_str()) {
                    changes.push((*id, stalled));
                }
            }
        }
        for (id, status) in changes {
            if let Some(mut running) = self.running.remove(&id) {
                self.report_status(id, &mut running, status);
                self.running.insert(id, running);
            }
        }
        if self.last_statistics.elapsed() >= self.parameters.statistics_interval() {
            self.last_statistics = Instant::now();
            let now = Instant::now();
            let statistics: Vec<_> = self
                .running
                .iter()
                .filter(|(_, running)| running.built.placed)
                .map(|(id, running)| {
                    let upper = running
                        .built
                        .probe
                        .with_frontier(|frontier| frontier.to_owned());
                    (*id, running.built.monitor.statistics(&upper, now))
                })
                .collect();
            if !statistics.is_empty() {
                let _ = self.events.send(WorkerEvent::Statistics(statistics));
            }
        }
    }

    fn report_status(&self, id: GlobalId, running: &mut Running<T>, status: String) {
        running.status = Some(status.clone());
        let _ = self.events.send(WorkerEvent::Status(id, status));
    }
}
