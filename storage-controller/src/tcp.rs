//! The replica protocol over TCP: [`TcpTransport`] for the controller,
//! [`TcpReplicaListener`] for a replica process.
//!
//! Each connection speaks the [`wire`] format: both sides send
//! the handshake, then the controller sends its commands (the first is
//! always `CreateTimely`) and the replica its responses. A failed handshake,
//! a malformed or oversized frame, a cut connection or a timeout closes the
//! connection; the controller then sees its response channel close and
//! reconnects with backoff (see [`ReconnectPolicy`](crate::ReconnectPolicy)).
//!
//! Nothing on the connection is secret: commands carry no backend URL and
//! no credential (a replica is told where its backend is when it is
//! started). The connection is neither encrypted nor authenticated; bind
//! replicas to loopback or a private network.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tidemark_storage_controller::protocol::{StorageCommand, StorageResponse, TimelyConfig};
//! use tidemark_storage_controller::tcp::{TcpReplicaListener, TcpTransport};
//! use tidemark_storage_controller::transport::ReplicaTransport;
//! use timely::progress::Antichain;
//! use tidemark_storage_types::GlobalId;
//!
//! let mut listener = TcpReplicaListener::<u64>::bind("127.0.0.1:0").await.unwrap();
//! let address = listener.local_addr().to_string();
//!
//! let transport = TcpTransport::<u64>::new(Default::default());
//! let mut connection = transport.connect(&address); // never blocks
//! let config = TimelyConfig { process: 0, addresses: vec![address.clone()] };
//! connection.commands.send(StorageCommand::CreateTimely { config, epoch: 1 }).unwrap();
//!
//! let mut session = listener.accept().await.unwrap();
//! assert!(matches!(session.commands.recv().await, Some(StorageCommand::CreateTimely { epoch: 1, .. })));
//! let upper = StorageResponse::FrontierUppers(vec![(GlobalId::User(1), Antichain::from_elem(5))]);
//! session.responses.send(upper.clone()).unwrap();
//! assert_eq!(connection.responses.recv().await, Some(upper));
//!
//! drop(session); // the replica goes away: the controller's channel closes
//! assert_eq!(connection.responses.recv().await, None);
//! # });
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::PartialOrder;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::protocol::{StorageCommand, StorageResponse};
use crate::transport::{AcceptSessions, ReplicaConnection, ReplicaSession, ReplicaTransport};
use crate::wire::{self, WireError};

/// Frames queued together are written together up to about this many
/// bytes (one system call instead of one per frame).
const WRITE_BATCH_BYTES: usize = 64 << 10;

/// Limits of a TCP connection, on either side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// How long the controller waits for the TCP connection to open.
    pub connect_timeout: Duration,
    /// How long either side waits for the peer's handshake (and the
    /// replica, for the first command).
    pub handshake_timeout: Duration,
    /// The largest frame payload read or written; a larger one closes the
    /// connection.
    pub max_frame_bytes: u32,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// Connects to replica processes over TCP, by `host:port` address.
///
/// `connect` returns at once: a background task opens the connection,
/// sends and checks the handshake and then moves commands and responses.
/// Commands sent before the connection is open are queued. When the
/// connection fails or ends the task stops and the response channel
/// closes; the reason is logged (`tracing`, warn).
pub struct TcpTransport<T> {
    config: TcpConfig,
    timestamp: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TcpTransport<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("config", &self.config)
            .finish()
    }
}

impl<T> TcpTransport<T> {
    /// A transport with the given limits.
    #[must_use]
    pub fn new(config: TcpConfig) -> Arc<Self> {
        Arc::new(TcpTransport {
            config,
            timestamp: PhantomData,
        })
    }
}

impl<T> ReplicaTransport<T> for TcpTransport<T>
where
    T: Serialize + DeserializeOwned + PartialOrder + Send + Sync + 'static,
{
    fn connect(&self, address: &str) -> ReplicaConnection<T> {
        let (command_sender, commands) = mpsc::unbounded_channel();
        let (responses, response_receiver) = mpsc::unbounded_channel();
        let connection = ReplicaConnection {
            commands: command_sender,
            responses: response_receiver,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                address,
                "no tokio runtime to connect in; connection is closed"
            );
            return connection;
        };
        let (address, config) = (address.to_string(), self.config);
        runtime.spawn(async move {
            let task = connect_and_serve(&address, config, commands, &responses);
            // SUBTLE: stop as soon as the controller lets go of the
            // connection, even while still connecting.
            let result = tokio::select! {
                result = task => result,
                () = responses.closed() => Ok(()),
            };
            match result {
                Ok(()) => tracing::debug!(address, "replica connection closed"),
                Err(err) => tracing::warn!(address, error = %err, "replica connection ended"),
            }
        });
        connection
    }
}

async fn connect_and_serve<T>(
    address: &str,
    config: TcpConfig,
    commands: mpsc::UnboundedReceiver<StorageCommand<T>>,
    responses: &mpsc::UnboundedSender<StorageResponse<T>>,
) -> Result<(), WireError>
where
    T: Serialize + DeserializeOwned + PartialOrder + Send + Sync,
{
    let stream = within(config.connect_timeout, "connect", async {
        Ok(TcpStream::connect(address).await?)
    })
    .await?;
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    wire::write_handshake(&mut writer).await?;
    within(
        config.handshake_timeout,
        "handshake",
        wire::read_handshake(&mut reader),
    )
    .await?;
    pump(reader, writer, commands, responses, config.max_frame_bytes).await
}

/// Runs `step`, or fails with [`WireError::Timeout`] after `limit`.
async fn within<R>(
    limit: Duration,
    during: &'static str,
    step: impl Future<Output = Result<R, WireError>>,
) -> Result<R, WireError> {
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| WireError::Timeout {
            during,
            after: limit,
        })?
}

/// Moves `outgoing` messages to the socket and frames from the socket to
/// `incoming` until either direction ends: the peer closes or sends
/// something wrong, `outgoing` closes, or `incoming`'s receiver is gone.
/// Returning drops both halves, which closes the connection.
async fn pump<In, Out>(
    reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    mut outgoing: mpsc::UnboundedReceiver<Out>,
    incoming: &mpsc::UnboundedSender<In>,
    max_frame_bytes: u32,
) -> Result<(), WireError>
where
    In: DeserializeOwned,
    Out: Serialize,
{
    // SUBTLE: both loops live for the whole connection and are dropped
    // together when one of them ends, so no partly read frame is ever
    // abandoned on a connection that is kept.
    let mut reader = BufReader::new(reader);
    let read_loop = async {
        while let Some(message) = wire::read_frame(&mut reader, max_frame_bytes).await? {
            if incoming.send(message).is_err() {
                break;
            }
        }
        Ok(())
    };
    let write_loop = async {
        while let Some(message) = outgoing.recv().await {
            // Messages already queued go out in the same write.
            let mut batch = wire::encode_frame(&message, max_frame_bytes)?;
            while batch.len() < WRITE_BATCH_BYTES {
                let Ok(message) = outgoing.try_recv() else {
                    break;
                };
                batch.extend(wire::encode_frame(&message, max_frame_bytes)?);
            }
            writer.write_all(&batch).await?;
        }
        writer.shutdown().await?;
        Ok(())
    };
    tokio::select! {
        result = read_loop => result,
        result = write_loop => result,
        () = incoming.closed() => Ok(()),
    }
}

/// A connection the listener refused, and why.
#[derive(Debug, thiserror::Error)]
#[error("refused connection: peer={peer} error={error}")]
pub struct RefusedConnection {
    /// The peer's address.
    pub peer: SocketAddr,
    /// What was wrong.
    pub error: WireError,
}

/// Accepts controller connections to a replica process over TCP: each
/// connection whose handshake succeeds becomes a [`ReplicaSession`], exactly
/// as [`InProcessTransport`](crate::InProcessTransport)'s listener yields
/// them, its first command `CreateTimely`.
///
/// Handshakes run concurrently in the background, each within the
/// configured handshake timeout; a connection that fails it is refused
/// (logged, and seen by [`next_attempt`](Self::next_attempt)) and closed.
/// Dropping a session closes its connection; dropping the listener stops
/// accepting (sessions already handed out live on).
#[derive(Debug)]
pub struct TcpReplicaListener<T> {
    local_addr: SocketAddr,
    attempts: mpsc::UnboundedReceiver<Result<ReplicaSession<T>, RefusedConnection>>,
    acceptor: JoinHandle<()>,
}

impl<T> TcpReplicaListener<T>
where
    T: Serialize + DeserializeOwned + PartialOrder + Send + Sync + 'static,
{
    /// Listens at `address` (port 0 picks a free port; see
    /// [`local_addr`](Self::local_addr)) with the default [`TcpConfig`].
    ///
    /// # Errors
    ///
    /// If the address cannot be bound.
    pub async fn bind(address: impl ToSocketAddrs) -> std::io::Result<Self> {
        Self::bind_with(address, TcpConfig::default()).await
    }

    /// As [`bind`](Self::bind), with the given limits.
    ///
    /// # Errors
    ///
    /// If the address cannot be bound.
    pub async fn bind_with(
        address: impl ToSocketAddrs,
        config: TcpConfig,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let local_addr = listener.local_addr()?;
        let (sender, attempts) = mpsc::unbounded_channel();
        let acceptor = tokio::spawn(accept_loop(listener, config, sender));
        Ok(TcpReplicaListener {
            local_addr,
            attempts,
            acceptor,
        })
    }

    /// The address bound (with the port chosen if 0 was asked for).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the next connection that passed its handshake; refused
    /// ones are logged and skipped.
    pub async fn accept(&mut self) -> Option<ReplicaSession<T>> {
        loop {
            match self.next_attempt().await? {
                Ok(session) => return Some(session),
                Err(refused) => tracing::warn!(%refused, "replica listener refused a connection"),
            }
        }
    }

    /// The next connection that passed its handshake, if one is waiting;
    /// refused ones are logged and skipped.
    pub fn try_accept(&mut self) -> Option<ReplicaSession<T>> {
        loop {
            match self.attempts.try_recv().ok()? {
                Ok(session) => return Some(session),
                Err(refused) => tracing::warn!(%refused, "replica listener refused a connection"),
            }
        }
    }

    /// Waits for the outcome of the next connection attempt: a session, or
    /// the refusal of a peer that failed its handshake.
    pub async fn next_attempt(&mut self) -> Option<Result<ReplicaSession<T>, RefusedConnection>> {
        self.attempts.recv().await
    }
}

impl<T> Drop for TcpReplicaListener<T> {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

#[async_trait::async_trait]
impl<T> AcceptSessions<T> for TcpReplicaListener<T>
where
    T: Serialize + DeserializeOwned + PartialOrder + Send + Sync + 'static,
{
    async fn accept(&mut self) -> Option<ReplicaSession<T>> {
        TcpReplicaListener::accept(self).await
    }
}

type Attempts<T> = mpsc::UnboundedSender<Result<ReplicaSession<T>, RefusedConnection>>;

async fn accept_loop<T>(listener: TcpListener, config: TcpConfig, attempts: Attempts<T>)
where
    T: Serialize + DeserializeOwned + PartialOrder + Send + Sync + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait, then go on.
                tracing::warn!(error = %err, "replica listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let attempts = attempts.clone();
        tokio::spawn(async move {
            let outcome = within(
                config.handshake_timeout,
                "handshake",
                open_session(stream, config),
            )
            .await
            .map_err(|error| RefusedConnection { peer, error });
            // The listener may be gone; the session then closes.
            let _ = attempts.send(outcome);
        });
    }
}

/// The replica's side of the handshake; on success the session's first
/// command is the controller's `CreateTimely`.
async fn open_session<T>(
    stream: TcpStream,
    config: TcpConfig,
) -> Result<ReplicaSession<T>, WireError>
where
    T: Serialize + DeserializeOwned + PartialOrder + Send + Sync + 'static,
{
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    wire::write_handshake(&mut writer).await?;
    wire::read_handshake(&mut reader).await?;
    let first: StorageCommand<T> = wire::read_frame(&mut reader, config.max_frame_bytes)
        .await?
        .ok_or(WireError::NoFirstCommand)?;
    if !matches!(first, StorageCommand::CreateTimely { .. }) {
        return Err(WireError::UnexpectedFirstCommand(
            wire::command_kind(&first).to_string(),
        ));
    }
    let (command_sender, commands) = mpsc::unbounded_channel();
    let (responses, response_receiver) = mpsc::unbounded_channel();
    command_sender
        .send(first)
        .expect("the receiver is held here");
    tokio::spawn(async move {
        let result = pump(
            reader,
            writer,
            response_receiver,
            &command_sender,
            config.max_frame_bytes,
        )
        .await;
        match result {
            Ok(()) => tracing::debug!("controller connection closed"),
            Err(err) => tracing::warn!(error = %err, "controller connection ended"),
        }
    });
    Ok(ReplicaSession {
        commands,
        responses,
    })
}

#[cfg(test)]
mod tests;
