//! How the controller reaches a replica process: a [`ReplicaTransport`]
//! turns an address into a pair of channels. [`InProcessTransport`] connects
//! to replicas served in the same process, [`TcpTransport`](crate::tcp::TcpTransport)
//! to replica processes over TCP. A replica process takes its sessions from
//! any [`AcceptSessions`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tidemark_storage_types::sync::lock;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::protocol::{StorageCommand, StorageResponse};

/// The controller's end of a connection to one replica process.
#[derive(Debug)]
pub struct ReplicaConnection<T> {
    /// Commands to the process.
    pub commands: mpsc::UnboundedSender<StorageCommand<T>>,
    /// Responses from the process; closed when the connection ends.
    pub responses: mpsc::UnboundedReceiver<StorageResponse<T>>,
}

/// The replica's end of a connection from the controller.
#[derive(Debug)]
pub struct ReplicaSession<T> {
    /// Commands from the controller; closed when the controller severs the
    /// connection.
    pub commands: mpsc::UnboundedReceiver<StorageCommand<T>>,
    /// Responses to the controller.
    pub responses: mpsc::UnboundedSender<StorageResponse<T>>,
}

/// Where a replica process takes its connections from: an in-process
/// [`ReplicaListener`] or a [`TcpReplicaListener`](crate::tcp::TcpReplicaListener).
/// Each session's first command is `CreateTimely`.
#[async_trait]
pub trait AcceptSessions<T>: Send {
    /// Waits for the next connection from a controller. `None` once no
    /// more can arrive.
    async fn accept(&mut self) -> Option<ReplicaSession<T>>;
}

/// Connects to replica processes by address.
///
/// # Contract
///
/// `connect` never blocks and never fails: a process that cannot be reached
/// gives a connection whose channels are closed, at once or as soon as the
/// transport finds out (a TCP connect fails in the background). The
/// controller then sees the response channel close and connects again
/// after a backoff ([`ReconnectPolicy`](crate::ReconnectPolicy)); commands
/// sent meanwhile go nowhere, and the reconnect replays them.
pub trait ReplicaTransport<T>: fmt::Debug + Send + Sync + 'static {
    /// Opens a connection to the process at `address`.
    fn connect(&self, address: &str) -> ReplicaConnection<T>;
}

/// Replicas served in this process, found by address.
///
/// ```
/// use tidemark_storage_controller::transport::{InProcessTransport, ReplicaTransport};
/// let transport = InProcessTransport::<u64>::new();
/// let mut listener = transport.listen("replica-1");
/// let connection = transport.connect("replica-1");
/// let session = listener.try_accept().expect("a session per connect");
/// assert!(!connection.commands.is_closed());
/// drop(session);
/// assert!(connection.commands.is_closed());
/// ```
pub struct InProcessTransport<T> {
    listeners: Mutex<BTreeMap<String, mpsc::UnboundedSender<ReplicaSession<T>>>>,
}

impl<T> fmt::Debug for InProcessTransport<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<String> = lock(&self.listeners).keys().cloned().collect();
        f.debug_struct("InProcessTransport")
            .field("addresses", &addresses)
            .finish()
    }
}

impl<T> Default for InProcessTransport<T> {
    fn default() -> Self {
        InProcessTransport {
            listeners: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<T> InProcessTransport<T> {
    /// A transport with no replicas listening.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Serves a replica at `address`: each later `connect` to it yields one
    /// [`ReplicaSession`] from the returned listener. Listening again on the
    /// same address replaces the previous listener.
    pub fn listen(&self, address: &str) -> ReplicaListener<T> {
        let (sender, receiver) = mpsc::unbounded_channel();
        lock(&self.listeners).insert(address.to_string(), sender);
        ReplicaListener { sessions: receiver }
    }
}

impl<T: Send + 'static> ReplicaTransport<T> for InProcessTransport<T> {
    fn connect(&self, address: &str) -> ReplicaConnection<T> {
        let (command_sender, command_receiver) = mpsc::unbounded_channel();
        let (response_sender, response_receiver) = mpsc::unbounded_channel();
        let session = ReplicaSession {
            commands: command_receiver,
            responses: response_sender,
        };
        let listeners = lock(&self.listeners);
        match listeners.get(address) {
            Some(listener) => {
                if listener.send(session).is_err() {
                    tracing::warn!(address, "replica listener is gone; connection is closed");
                }
            }
            None => tracing::warn!(address, "no replica listens at this address"),
        }
        ReplicaConnection {
            commands: command_sender,
            responses: response_receiver,
        }
    }
}

/// Accepts connections to one in-process replica address.
#[derive(Debug)]
pub struct ReplicaListener<T> {
    sessions: mpsc::UnboundedReceiver<ReplicaSession<T>>,
}

impl<T> ReplicaListener<T> {
    /// Waits for the next connection. `None` once the transport is gone.
    pub async fn accept(&mut self) -> Option<ReplicaSession<T>> {
        self.sessions.recv().await
    }

    /// The next connection if one is waiting.
    pub fn try_accept(&mut self) -> Option<ReplicaSession<T>> {
        self.sessions.try_recv().ok()
    }
}

#[async_trait]
impl<T: Send> AcceptSessions<T> for ReplicaListener<T> {
    async fn accept(&mut self) -> Option<ReplicaSession<T>> {
        ReplicaListener::accept(self).await
    }
}
