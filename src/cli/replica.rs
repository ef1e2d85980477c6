//! `tidemark replica`: serves a storage replica over TCP, running the
//! ingestions and sinks a controller sends it, against a backend it opens
//! itself.
//!
//! The backend URL is given here, by whoever starts the process, and never
//! travels in a command; it is not logged (only its scheme is printed).
//! The process prints `listening on ADDR` once its listener is bound (so a
//! caller that asked for port 0 learns the port), then starts its timely
//! workers, which for a replica of several processes (`--process I --peers
//! A,B,...`, the peers' timely addresses in the same order in every
//! process) waits until every peer is connected. It serves until Ctrl-C or
//! SIGTERM.

use std::io::Write;
use std::sync::Arc;

use tidemark_storage_controller::tcp::TcpReplicaListener;
use tidemark_storage_replica::{Replica, ReplicaConfig};

use crate::cli::ToolError;

/// What `tidemark replica` was asked to do.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// Where controllers connect (`host:port`; port 0 picks one).
    pub listen: String,
    /// The backend URL, as [`open`](crate::open) takes it.
    pub backend: String,
    /// Worker threads in this process.
    pub workers: usize,
    /// This process's index among `peers`.
    pub process: usize,
    /// The timely addresses of every process of the replica (empty for
    /// one process).
    pub peers: Vec<String>,
}

/// Runs the replica until Ctrl-C or SIGTERM; `out` gets the listening
/// line and the shutdown line.
///
/// # Errors
///
/// [`ToolError::Open`] if the backend does not open, [`ToolError::Io`] if
/// the address does not bind or the output cannot be written, and
/// [`ToolError::Replica`] if the workers cannot start (a bad shape, or the
/// cluster's processes cannot connect).
pub async fn run(options: &ReplicaOptions, out: &mut dyn Write) -> Result<(), ToolError> {
    let config = ReplicaConfig {
        workers: options.workers,
        process: options.process,
        peers: options.peers.clone(),
    };
    config
        .validate()
        .map_err(tidemark_storage_replica::ReplicaError::from)?;
    let backend = crate::open(&options.backend).await?;
    let scheme = options.backend.split(':').next().unwrap_or_default();
    let listener = TcpReplicaListener::<u64>::bind(options.listen.as_str())
        .await
        .map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!("cannot listen on {}: {err}", options.listen),
            )
        })?;
    writeln!(
        out,
        "listening on {} (backend {scheme}://, {} worker(s), process {} of {})",
        listener.local_addr(),
        config.workers,
        config.process,
        config.processes()
    )?;
    out.flush()?;
    let runtime = tokio::runtime::Handle::current();
    let replica = tokio::task::spawn_blocking(move || {
        Replica::<u64>::start(Arc::new(backend), config, runtime)
    })
    .await
    .map_err(|err| ToolError::InvalidArgument(format!("the replica start panicked: {err}")))??;
    tokio::select! {
        () = replica.serve(listener) => {}
        () = shutdown_signal() => {
            writeln!(out, "shutting down")?;
        }
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
