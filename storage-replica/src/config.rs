//! How a replica process runs: its worker threads and its place in a
//! timely cluster of several processes.

use thiserror::Error;
use timely::CommunicationConfig;

/// The shape of one replica process.
///
/// A replica of one process has `peers` empty (or naming only itself). A
/// replica of several processes names every process's timely address in
/// `peers` (the same list, in the same order, in every process) and this
/// process's index in it; each process runs `workers` worker threads, so
/// the cluster has `workers * peers.len()` workers.
///
/// The peer addresses are where the processes' timely workers talk to each
/// other; they are not the addresses the controller connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Worker threads in this process (at least 1).
    pub workers: usize,
    /// This process's index among `peers`.
    pub process: usize,
    /// Every process's timely address, this one's included; empty for a
    /// replica of one process.
    pub peers: Vec<String>,
}

/// A [`ReplicaConfig`] that cannot run.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No worker threads.
    #[error("a replica needs at least one worker thread: workers=0")]
    NoWorkers,
    /// The process index does not name a peer.
    #[error("process index out of range: process={process} peers={peers}")]
    ProcessOutOfRange {
        /// The index given.
        process: usize,
        /// How many peers there are.
        peers: usize,
    },
}

impl ReplicaConfig {
    /// A replica of one process with `workers` worker threads.
    #[must_use]
    pub fn single(workers: usize) -> ReplicaConfig {
        ReplicaConfig {
            workers,
            process: 0,
            peers: Vec::new(),
        }
    }

    /// How many processes the replica has.
    #[must_use]
    pub fn processes(&self) -> usize {
        self.peers.len().max(1)
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 {
            return Err(ConfigError::NoWorkers);
        }
        if self.process >= self.processes() {
            return Err(ConfigError::ProcessOutOfRange {
                process: self.process,
                peers: self.processes(),
            });
        }
        Ok(())
    }

    /// The timely communication configuration: threads of one process,
    /// or a cluster over the peers.
    pub(crate) fn communication(&self) -> CommunicationConfig {
        if self.peers.len() <= 1 {
            CommunicationConfig::Process(self.workers)
        } else {
            CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.peers.clone(),
                report: false,
                zerocopy: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_shapes_are_refused_by_name() {
        assert_eq!(
            ReplicaConfig::single(0).validate(),
            Err(ConfigError::NoWorkers)
        );
        let config = ReplicaConfig {
            workers: 1,
            process: 2,
            peers: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
        };
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("process=2 peers=2"), "{err}");
        assert_eq!(ReplicaConfig::single(3).processes(), 1);
        assert!(ReplicaConfig::single(3).validate().is_ok());
    }
}
