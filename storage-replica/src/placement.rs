//! Which worker of the cluster runs an ingestion's writes or a sink's
//! commits.

use tidemark_storage_types::GlobalId;

/// The worker (index in the whole cluster, of `peers` workers) that runs
/// the dataflow of `id`: the same answer in every process, and
/// consecutive ids on consecutive workers, so that dataflows spread over
/// the cluster.
///
/// ```
/// use tidemark_storage_replica::placement::worker_for;
/// use tidemark_storage_types::GlobalId;
/// assert_eq!(worker_for(GlobalId::User(5), 4), 1);
/// assert_eq!(worker_for(GlobalId::User(6), 4), 2);
/// assert_eq!(worker_for(GlobalId::System(6), 1), 0);
/// ```
#[must_use]
pub fn worker_for(id: GlobalId, peers: usize) -> usize {
    let (GlobalId::System(number) | GlobalId::User(number) | GlobalId::Transient(number)) = id;
    let peers = peers.max(1) as u64;
    usize::try_from(number % peers).expect("below the worker count")
}
