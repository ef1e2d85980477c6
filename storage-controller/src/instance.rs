//! Storage instances: a compacted command history per instance, replayed to
//! every (re)connected replica, the filtering of replica responses, and
//! reconnecting a replica whose connection was lost (`crate::reconnect`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tidemark_storage_types::{GlobalId, StorageInstanceId, StorageParameters, StorageTimestamp};
use timely::progress::Antichain;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::internal::Internal;
use crate::protocol::{
    ClusterReplicaLocation, ExportCommand, IngestionCommand, StorageCommand, StorageResponse,
    TimelyConfig,
};
use crate::reconnect::{ReconnectPolicy, ReconnectState};
use crate::transport::ReplicaTransport;

/// What a newly connected replica must be told, compacted: the latest
/// configuration, live sources and sinks, their latest compaction
/// frontiers, the dropped ids whose `DroppedIds` has not arrived yet, and
/// whether initialization is complete.
#[derive(Debug)]
struct CommandHistory<T> {
    config: StorageParameters,
    initialized: bool,
    sources: BTreeMap<GlobalId, IngestionCommand<T>>,
    sinks: BTreeMap<GlobalId, ExportCommand<T>>,
    compaction: BTreeMap<GlobalId, Antichain<T>>,
    /// Dropped ids (told `AllowCompaction(id, [])`) not yet confirmed by
    /// `DroppedIds`: told again on every connect, so that a replica that
    /// still runs one stops it and any replica confirms it.
    stopping: BTreeSet<GlobalId>,
}

impl<T: StorageTimestamp> CommandHistory<T> {
    fn absorb(&mut self, command: &StorageCommand<T>) {
        match command {
            StorageCommand::CreateTimely { .. } => {}
            StorageCommand::InitializationComplete => self.initialized = true,
            StorageCommand::UpdateConfiguration(config) => self.config = config.clone(),
            StorageCommand::CreateSources(sources) => {
                for source in sources {
                    self.sources.insert(source.id, source.clone());
                }
            }
            StorageCommand::CreateSinks(sinks) => {
                for sink in sinks {
                    self.sinks.insert(sink.id, sink.clone());
                }
            }
            StorageCommand::AllowCompaction(frontiers) => {
                for (id, frontier) in frontiers {
                    if frontier.is_empty() {
                        // Dropped: a new replica is never told to run it,
                        // only to confirm it stopped.
                        self.forget(*id);
                        self.stopping.insert(*id);
                    } else {
                        self.compaction.insert(*id, frontier.clone());
                    }
                }
            }
        }
    }

    fn forget(&mut self, id: GlobalId) {
        self.sources.remove(&id);
        self.sinks.remove(&id);
        self.compaction.remove(&id);
    }

    /// The commands that bring a fresh replica up to date, after
    /// `CreateTimely`.
    fn replay(&self) -> Vec<StorageCommand<T>> {
        let mut commands = vec![StorageCommand::UpdateConfiguration(self.config.clone())];
        if !self.sources.is_empty() {
            commands.push(StorageCommand::CreateSources(
                self.sources.values().cloned().collect(),
            ));
        }
        if !self.sinks.is_empty() {
            commands.push(StorageCommand::CreateSinks(
                self.sinks.values().cloned().collect(),
            ));
        }
        if !self.compaction.is_empty() || !self.stopping.is_empty() {
            let stopping = self.stopping.iter().map(|id| (*id, Antichain::new()));
            commands.push(StorageCommand::AllowCompaction(
                self.compaction
                    .iter()
                    .map(|(id, frontier)| (*id, frontier.clone()))
                    .chain(stopping)
                    .collect(),
            ));
        }
        if self.initialized {
            commands.push(StorageCommand::InitializationComplete);
        }
        commands
    }
}

/// One process of a connected replica.
#[derive(Debug)]
struct ProcessLink<T> {
    commands: mpsc::UnboundedSender<StorageCommand<T>>,
    forwarder: JoinHandle<()>,
    /// The uppers this process reported.
    uppers: BTreeMap<GlobalId, Antichain<T>>,
}

/// A storage instance.
#[derive(Debug)]
pub(crate) struct Instance<T> {
    id: StorageInstanceId,
    history: CommandHistory<T>,
    epoch: u64,
    processes: Vec<ProcessLink<T>>,
    /// The uppers forwarded to the controller (the meet over processes).
    reported_uppers: BTreeMap<GlobalId, Antichain<T>>,
    /// Where the replica is, once connected (to reconnect it).
    location: Option<ClusterReplicaLocation>,
    reconnect: ReconnectState,
}

impl<T: StorageTimestamp> Instance<T> {
    pub(crate) fn new(id: StorageInstanceId, config: StorageParameters, initialized: bool) -> Self {
        Instance {
            id,
            history: CommandHistory {
                config,
                initialized,
                sources: BTreeMap::new(),
                sinks: BTreeMap::new(),
                compaction: BTreeMap::new(),
                stopping: BTreeSet::new(),
            },
            epoch: 0,
            processes: Vec::new(),
            reported_uppers: BTreeMap::new(),
            location: None,
            reconnect: ReconnectState::default(),
        }
    }

    /// Records `command` in the history and sends it to the replica, if
    /// one is connected.
    pub(crate) fn send(&mut self, command: StorageCommand<T>) {
        if matches!(command, StorageCommand::InitializationComplete) && self.history.initialized {
            return;
        }
        self.history.absorb(&command);
        for process in &self.processes {
            // A closed connection is not an error: the next connect replays.
            let _ = process.commands.send(command.clone());
        }
    }

    /// Severs any current replica and connects to `location`, replaying the
    /// history under a new epoch. A reconnect scheduled for the previous
    /// replica is cancelled.
    pub(crate) fn connect(
        &mut self,
        location: &ClusterReplicaLocation,
        transport: &dyn ReplicaTransport<T>,
        internal: &mpsc::UnboundedSender<Internal<T>>,
    ) {
        self.reconnect.reset();
        self.open(location, transport, internal);
    }

    /// The connection of `epoch` lost a process: the wait before
    /// reconnecting, or `None` if that epoch is no longer current or a
    /// reconnect is already scheduled for it.
    pub(crate) fn connection_lost(
        &mut self,
        epoch: u64,
        policy: &ReconnectPolicy,
    ) -> Option<Duration> {
        if epoch != self.epoch || self.location.is_none() {
            return None;
        }
        self.reconnect.lost(epoch, policy)
    }

    /// Reconnects the replica lost at `epoch`, unless it was connected
    /// again meanwhile. Whether it reconnected.
    pub(crate) fn reconnect_due(
        &mut self,
        epoch: u64,
        transport: &dyn ReplicaTransport<T>,
        internal: &mpsc::UnboundedSender<Internal<T>>,
    ) -> bool {
        if epoch != self.epoch || !self.reconnect.take_due(epoch) {
            return false;
        }
        let Some(location) = self.location.clone() else {
            return false;
        };
        self.open(&location, transport, internal);
        true
    }

    /// Connects to `location` under the next epoch and replays the
    /// history: the one path of both `connect` and reconnects.
    fn open(
        &mut self,
        location: &ClusterReplicaLocation,
        transport: &dyn ReplicaTransport<T>,
        internal: &mpsc::UnboundedSender<Internal<T>>,
    ) {
        self.sever();
        self.location = Some(location.clone());
        self.epoch += 1;
        self.reported_uppers.clear();
        let replay = self.history.replay();
        for (process, address) in location.addresses.iter().enumerate() {
            let mut connection = transport.connect(address);
            let internal = internal.clone();
            let (instance, epoch) = (self.id, self.epoch);
            let forwarder = tokio::spawn(async move {
                while let Some(response) = connection.responses.recv().await {
                    let message = Internal::Replica {
                        instance,
                        epoch,
                        process,
                        response,
                    };
                    if internal.send(message).is_err() {
                        return;
                    }
                }
                // The connection is gone (a severed one's forwarder is
                // aborted before it gets here).
                let _ = internal.send(Internal::ReplicaDisconnected {
                    instance,
                    epoch,
                    process,
                });
            });
            let _ = connection.commands.send(StorageCommand::CreateTimely {
                config: TimelyConfig {
                    process,
                    addresses: location.addresses.clone(),
                },
                epoch: self.epoch,
            });
            for command in &replay {
                let _ = connection.commands.send(command.clone());
            }
            self.processes.push(ProcessLink {
                commands: connection.commands,
                forwarder,
                uppers: BTreeMap::new(),
            });
        }
    }

    /// Closes the connection to the current replica, if any.
    pub(crate) fn sever(&mut self) {
        for process in self.processes.drain(..) {
            process.forwarder.abort();
        }
    }

    /// Filters a response from process `process` of the replica connected
    /// at `epoch`: stale epochs are dropped, an upper is forwarded only when
    /// it advanced on every process, `DroppedIds` purges the history.
    pub(crate) fn absorb_response(
        &mut self,
        epoch: u64,
        process: usize,
        response: StorageResponse<T>,
    ) -> Option<StorageResponse<T>> {
        if epoch != self.epoch || process >= self.processes.len() {
            return None;
        }
        self.reconnect.succeeded();
        match response {
            StorageResponse::FrontierUppers(uppers) => {
                let mut advanced = Vec::new();
                for (id, upper) in uppers {
                    let reported = &mut self.processes[process].uppers;
                    let entry = reported
                        .entry(id)
                        .or_insert_with(|| Antichain::from_elem(T::minimum()));
                    if !timely::PartialOrder::less_than(entry, &upper) {
                        continue;
                    }
                    *entry = upper;
                    let Some(meet) = self.meet_over_processes(id) else {
                        continue;
                    };
                    let previous = self.reported_uppers.get(&id);
                    if previous
                        .is_none_or(|previous| timely::PartialOrder::less_than(previous, &meet))
                    {
                        self.reported_uppers.insert(id, meet.clone());
                        advanced.push((id, meet));
                    }
                }
                (!advanced.is_empty()).then_some(StorageResponse::FrontierUppers(advanced))
            }
            StorageResponse::DroppedIds(ids) => {
                for id in &ids {
                    self.history.forget(*id);
                    self.history.stopping.remove(id);
                    self.reported_uppers.remove(id);
                    for process in &mut self.processes {
                        process.uppers.remove(id);
                    }
                }
                Some(StorageResponse::DroppedIds(ids))
            }
            other => Some(other),
        }
    }

    /// The meet of the uppers every process reported for `id`, if every
    /// process reported one.
    fn meet_over_processes(&self, id: GlobalId) -> Option<Antichain<T>> {
        let mut meet = Antichain::new();
        for process in &self.processes {
            for time in process.uppers.get(&id)?.elements() {
                meet.insert(*time);
            }
        }
        Some(meet)
    }
}

impl<T> Drop for Instance<T> {
    fn drop(&mut self) {
        for process in self.processes.drain(..) {
            process.forwarder.abort();
        }
    }
}
