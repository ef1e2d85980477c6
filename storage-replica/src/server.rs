//! [`Replica`]: the timely workers of one replica process and the loop
//! that serves the controller's sessions.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tidemark_storage_controller::protocol::StorageCommand;
use tidemark_storage_controller::transport::{AcceptSessions, ReplicaSession};
use tidemark_storage_types::PersistBackend;
use tidemark_storage_types::sync::lock;
use timely::WorkerConfig;
use timely::execute::execute_from;
use tokio::runtime::Handle;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::ReplicaTimestamp;
use crate::config::{ConfigError, ReplicaConfig};
use crate::report::{Reports, WorkerEvent};
use crate::worker::{Context, WorkerCommand, WorkerState};

/// How long a new session may take to send its first command.
const FIRST_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a replica could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The configuration cannot run.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Timely could not start its workers or connect the processes.
    #[error("starting the timely workers failed: {0}")]
    Timely(String),
}

/// A replica process: its timely workers run every ingestion and sink the
/// controller asks for, against a backend the process opened itself.
///
/// - [`start`](Self::start) starts the workers (and, for a replica of
///   several processes, connects them into one timely cluster; it returns
///   once every peer is connected).
/// - [`serve`](Self::serve) takes the controller's sessions from any
///   [`AcceptSessions`]: an in-process
///   [`ReplicaListener`](tidemark_storage_controller::transport::ReplicaListener) or a
///   [`TcpReplicaListener`](tidemark_storage_controller::tcp::TcpReplicaListener).
///   A session's first command must be `CreateTimely` for this process
///   (its index and process count) with an epoch above every earlier one;
///   it then supersedes the previous session. Dataflows live on between
///   sessions: a reconnecting controller replays its history and the
///   replica keeps what still runs (see [`crate::worker`]).
/// - Dropping the replica (or `serve` returning) stops every dataflow and
///   joins the workers.
///
/// The backend calls of the dataflows run on the given tokio runtime,
/// which must be a multi-threaded one.
pub struct Replica<T: ReplicaTimestamp> {
    config: ReplicaConfig,
    commands: Vec<Sender<WorkerCommand<T>>>,
    events: UnboundedReceiver<WorkerEvent<T>>,
    /// In a mutex only to make the replica `Sync` (the guards hold a
    /// `Send`-only box), so that `serve` can run as a spawned task.
    workers: Mutex<Option<timely::communication::WorkerGuards<()>>>,
}

impl<T: ReplicaTimestamp> std::fmt::Debug for Replica<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T: ReplicaTimestamp> Replica<T> {
    /// Starts `config.workers` workers writing to `backend`, their backend
    /// calls on `runtime`. Blocks until the cluster's processes are
    /// connected (call it off the async threads, e.g. in
    /// `spawn_blocking`, for a replica of several processes).
    ///
    /// # Errors
    ///
    /// [`ReplicaError::Config`] for a configuration that cannot run,
    /// [`ReplicaError::Timely`] if the workers or the connections between
    /// processes cannot be set up.
    pub fn start<B: PersistBackend<T>>(
        backend: Arc<B>,
        config: ReplicaConfig,
        runtime: Handle,
    ) -> Result<Replica<T>, ReplicaError> {
        config.validate()?;
        let (builders, others) = config
            .communication()
            .try_build()
            .map_err(ReplicaError::Timely)?;
        let mut commands = Vec::with_capacity(config.workers);
        let mut receivers: Vec<Option<Receiver<WorkerCommand<T>>>> = Vec::new();
        for _ in 0..config.workers {
            let (sender, receiver) = std::sync::mpsc::channel();
            commands.push(sender);
            receivers.push(Some(receiver));
        }
        let receivers = Arc::new(Mutex::new(receivers));
        let (event_sender, events) = unbounded_channel();
        let threads = config.workers;
        let workers = execute_from(builders, others, WorkerConfig::default(), move |worker| {
            let local = worker.index() % threads;
            let receiver = lock(&receivers)[local]
                .take()
                .expect("each local worker takes its own command channel once");
            let context = Context {
                backend: Arc::clone(&backend),
                runtime: runtime.clone(),
            };
            WorkerState::new(context, local, event_sender.clone()).run(worker, &receiver);
        })
        .map_err(ReplicaError::Timely)?;
        Ok(Replica {
            config,
            commands,
            events,
            workers: Mutex::new(Some(workers)),
        })
    }

    /// The configuration the replica runs with.
    #[must_use]
    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// Serves sessions from `listener` until it has no more to give (or
    /// the workers stop), then stops the replica.
    pub async fn serve<A: AcceptSessions<T>>(mut self, mut listener: A) {
        let mut session: Option<ReplicaSession<T>> = None;
        let mut epoch = 0u64;
        let mut reports = Reports::new(self.config.workers);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Some(mut accepted) = accepted else {
                        tracing::info!("replica listener closed; stopping");
                        break;
                    };
                    match self.open_session(&mut accepted, epoch).await {
                        Ok(opened) => {
                            tracing::info!(epoch = opened, "controller connected");
                            epoch = opened;
                            for response in reports.replay() {
                                let _ = accepted.responses.send(response);
                            }
                            session = Some(accepted);
                        }
                        Err(reason) => tracing::warn!(%reason, "refused a controller session"),
                    }
                }
                command = next_command(&mut session) => match command {
                    Some(StorageCommand::CreateTimely { .. }) => {
                        tracing::warn!("ignored a second CreateTimely on one session");
                    }
                    Some(command) => self.broadcast(|| WorkerCommand::Command(command.clone())),
                    None => {
                        tracing::info!(epoch, "controller disconnected");
                        session = None;
                    }
                },
                event = self.events.recv() => {
                    let Some(event) = event else {
                        tracing::warn!("replica workers stopped");
                        break;
                    };
                    if let (Some(response), Some(session)) = (reports.absorb(event), &session) {
                        let _ = session.responses.send(response);
                    }
                }
            }
        }
    }

    /// Checks a new session's `CreateTimely`; the session's epoch.
    async fn open_session(
        &self,
        session: &mut ReplicaSession<T>,
        current: u64,
    ) -> Result<u64, String> {
        let first = tokio::time::timeout(FIRST_COMMAND_TIMEOUT, session.commands.recv())
            .await
            .map_err(|_| format!("no first command within {FIRST_COMMAND_TIMEOUT:?}"))?;
        let Some(StorageCommand::CreateTimely { config, epoch }) = first else {
            return Err(format!(
                "the first command must be CreateTimely: got {}",
                first.as_ref().map_or("nothing", command_name)
            ));
        };
        if config.process != self.config.process
            || config.addresses.len() != self.config.processes()
        {
            return Err(format!(
                "CreateTimely is for another process: asked process={} of {} processes, this is process={} of {}",
                config.process,
                config.addresses.len(),
                self.config.process,
                self.config.processes()
            ));
        }
        if epoch <= current {
            return Err(format!("stale epoch: epoch={epoch} current={current}"));
        }
        self.broadcast(|| WorkerCommand::Epoch(epoch));
        Ok(epoch)
    }

    /// Sends every local worker its copy of a command.
    fn broadcast(&self, make: impl Fn() -> WorkerCommand<T>) {
        for sender in &self.commands {
            if sender.send(make()).is_err() {
                tracing::warn!("a replica worker is gone");
            }
        }
    }
}

/// A command's name, for messages.
fn command_name<T>(command: &StorageCommand<T>) -> &'static str {
    match command {
        StorageCommand::CreateTimely { .. } => "CreateTimely",
        StorageCommand::InitializationComplete => "InitializationComplete",
        StorageCommand::UpdateConfiguration(_) => "UpdateConfiguration",
        StorageCommand::CreateSources(_) => "CreateSources",
        StorageCommand::CreateSinks(_) => "CreateSinks",
        StorageCommand::AllowCompaction(_) => "AllowCompaction",
    }
}

/// The next command of the current session; pending without one.
async fn next_command<T>(session: &mut Option<ReplicaSession<T>>) -> Option<StorageCommand<T>> {
    match session {
        Some(session) => session.commands.recv().await,
        None => std::future::pending().await,
    }
}

impl<T: ReplicaTimestamp> Drop for Replica<T> {
    fn drop(&mut self) {
        // Closing the command channels stops each worker, which drops its
        // dataflows; joining waits for that.
        self.commands.clear();
        let workers = self
            .workers
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(workers) = workers {
            let join = move || {
                for result in workers.join() {
                    if let Err(error) = result {
                        tracing::warn!(%error, "a replica worker failed");
                    }
                }
            };
            // SUBTLE: the replica is usually dropped on a runtime thread
            // (`serve` returning, or its task aborted), and a worker may
            // still be waiting on that runtime (an export being built reads
            // its source's since with `Handle::block_on`). Joining in
            // `block_in_place` hands the thread's other tasks to another
            // thread first, so the join never holds up the tasks the
            // workers wait for. Off a multi-threaded runtime's threads the
            // join runs as it is.
            let on_multi_threaded_runtime =
                tokio::runtime::Handle::try_current().is_ok_and(|handle| {
                    handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
            if on_multi_threaded_runtime {
                tokio::task::block_in_place(join);
            } else {
                join();
            }
        }
    }
}
