//! [`ShardSource`]: a shard read into a differential collection.

use std::future::Future;
use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use tidemark_storage_types::{
    BackendError, ChunkLimit, Diff, InvalidUsage, PersistBackend, ReadShare, ReadStream,
    RestartPolicy, ResumingRead, Row, ShardId, StorageTimestamp, Update, display_frontier,
    step_back_frontier,
};
use timely::PartialOrder;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::source;
use timely::progress::Antichain;
use tokio::runtime::Handle;

use crate::errors::DataflowError;
use crate::hold::SharedReadHold;
use crate::retry::RetryPolicy;
use crate::status::DataflowStatus;
use crate::task::{Mailbox, TaskLink};

/// Reads a shard into a differential collection of `(Row, T, Diff)`, from
/// `as_of`, until an optional `until`.
///
/// # What it emits
///
/// - First the snapshot at `as_of`: the shard's contents at `as_of`, every
///   update at time `as_of` (earlier times advanced to it). The source waits
///   for `as_of` to become final (the shard's upper to pass it) first.
/// - Then, as the shard's upper advances, every later batch of updates at
///   their times.
/// - Both are read as streams of bounded chunks ([`ChunkLimit::DEFAULT`]),
///   so a worker holds about one chunk of a large read at a time. A read
///   that fails part-way with an indeterminate error is read again and
///   what was already emitted is skipped, within the [`RetryPolicy`].
/// - Its output capability is downgraded exactly to the shard's upper as it
///   reads it, so downstream frontiers track the shard's upper; an empty
///   (sealed) upper closes the stream.
/// - With `until`, updates at times not before `until` are not emitted, and
///   the stream closes once the shard's upper reaches `until`.
///
/// # Workers
///
/// Every worker runs the source and reads share `index` of `peers` of each
/// snapshot and fetch ([`ReadShare::of_worker`]): the backend divides the
/// data (by row hash, or by stored part), so each worker fetches and
/// decodes only its share. The shares together are the whole read, so the
/// collection is the same for any number of workers; which worker emits an
/// update is the backend's choice (exchange downstream by key as usual).
/// Each worker follows the upper on its own; the dataflow's frontier is the
/// least of theirs.
///
/// # Read hold
///
/// With [`with_read_hold`](Self::with_read_hold) the source downgrades the
/// hold to just before what it has yet to read (the meet over this
/// process's workers), so the collection cannot be compacted past what it
/// still has to read, and is free to compact behind it. Just before, not
/// at: a fetch advances times by the since, and a since at the next fetch's
/// lower would bring every update already emitted into that fetch. Without one the caller keeps
/// the shard readable some other way; if the since passes what the source
/// has to read anyway, it reports [`DataflowError::AsOfNotReadable`] (for
/// the snapshot) or reads updates at their compacted times.
///
/// # Errors
///
/// Reported through the returned [`DataflowStatus`], never by panicking a
/// worker: [`DataflowError::ShardFinalized`],
/// [`DataflowError::AsOfNotReadable`], and [`DataflowError::Backend`] for a
/// failure the [`RetryPolicy`] could not retry away. After an error the
/// source's frontier stays where it was (nothing downstream mistakes the
/// failure for a sealed shard); drop the dataflow.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use timely::dataflow::operators::Inspect;
/// use timely::progress::Antichain;
/// use tidemark_backend_memory::MemoryBackend;
/// use tidemark_storage_dataflow::ShardSource;
/// use tidemark_storage_types::{Datum, IdempotencyToken, PersistBackend, Row, ShardId, Update, WriteFence};
///
/// let runtime = tokio::runtime::Runtime::new().unwrap();
/// let backend = Arc::new(MemoryBackend::open("source-doc"));
/// let shard = ShardId::new();
/// runtime.block_on(async {
///     PersistBackend::<u64>::open(&*backend, shard).await.unwrap();
///     let updates = vec![Update::new(Row::pack([Datum::Int64(1)]), 0, 1)];
///     backend
///         .compare_and_append(
///             shard,
///             updates,
///             Antichain::from_elem(0),
///             Antichain::new(),
///             IdempotencyToken::new(),
///             WriteFence::Unfenced,
///         )
///         .await.unwrap().unwrap();
/// });
/// let handle = runtime.handle().clone();
/// let seen = timely::execute_directly(move |worker| {
///     let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
///     let sink = Arc::clone(&seen);
///     worker.dataflow::<u64, _, _>(|scope| {
///         let (collection, _status) = ShardSource::new(handle, backend, shard, 0).build(scope);
///         collection.inspect(move |update| sink.lock().unwrap().push(update.clone()));
///     });
///     // The shard is sealed, so the dataflow completes on its own.
///     while worker.step_or_park(None) {}
///     let seen = seen.lock().unwrap().clone();
///     seen
/// });
/// assert_eq!(seen, vec![(Row::pack([Datum::Int64(1)]), 0, 1)]);
/// ```
pub struct ShardSource<T: StorageTimestamp, B> {
    runtime: Handle,
    backend: Arc<B>,
    shard: ShardId,
    as_of: T,
    until: Antichain<T>,
    read_hold: Option<SharedReadHold<T>>,
    retry: RetryPolicy,
}

/// What the reading task hands the operator: updates, and the frontier the
/// shard has been read to (empty: the stream is complete).
struct ReadBatch<T> {
    updates: Vec<(Row, T, Diff)>,
    upper: Antichain<T>,
}

impl<T: StorageTimestamp, B: PersistBackend<T>> ShardSource<T, B> {
    /// A source of `shard` from `as_of`, whose backend calls run on
    /// `runtime`.
    pub fn new(runtime: Handle, backend: Arc<B>, shard: ShardId, as_of: T) -> ShardSource<T, B> {
        ShardSource {
            runtime,
            backend,
            shard,
            as_of,
            until: Antichain::new(),
            read_hold: None,
            retry: RetryPolicy::default(),
        }
    }

    /// Stops at `until`: no update at a time `>= until` is emitted, and the
    /// stream closes once the shard's upper reaches `until`.
    #[must_use]
    pub fn with_until(mut self, until: T) -> ShardSource<T, B> {
        self.until = Antichain::from_elem(until);
        self
    }

    /// Downgrades `hold` as the source reads (see the type's docs).
    #[must_use]
    pub fn with_read_hold(mut self, hold: SharedReadHold<T>) -> ShardSource<T, B> {
        self.read_hold = Some(hold);
        self
    }

    /// Retries failed backend calls by `retry`.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> ShardSource<T, B> {
        self.retry = retry;
        self
    }

    /// Adds the source to `scope` (on this worker) and returns its
    /// collection and status.
    pub fn build<'scope>(
        self,
        scope: Scope<'scope, T>,
    ) -> (VecCollection<'scope, T, Row, Diff>, DataflowStatus<T>) {
        let status = DataflowStatus::new();
        // The capability starts at the as_of (downgraded as the operator is
        // built, before anything can run).
        status.set_frontier(Antichain::from_elem(self.as_of));
        let worker = scope.index();
        let share = ReadShare::of_worker(worker, scope.peers());
        let worker_handle = scope.worker();
        let ShardSource {
            runtime,
            backend,
            shard,
            as_of,
            until,
            read_hold,
            retry,
        } = self;
        let operator_status = status.clone();
        let stream = source::<_, CapacityContainerBuilder<Vec<(Row, T, Diff)>>, _, _>(
            scope,
            "ShardSource",
            move |mut capability, info| {
                capability.downgrade(&as_of);
                let mut capability = Some(capability);
                let activator = worker_handle.sync_activator_for(info.address.to_vec());
                let task_status = operator_status.clone();
                let mut link = TaskLink::spawn(&runtime, activator, move |mailbox| async move {
                    let reader = Reader {
                        backend,
                        shard,
                        as_of,
                        until,
                        share,
                        retry,
                    };
                    if let Err(error) = reader.run(&mailbox).await {
                        task_status.fail(error);
                    }
                });
                let status = operator_status;
                move |output| {
                    while let Some(batch) = link.try_next() {
                        let Some(held) = capability.as_mut() else {
                            return;
                        };
                        let mut updates = batch.updates;
                        updates.sort_by_key(|update| update.1);
                        let mut updates = updates.into_iter().peekable();
                        while let Some(first) = updates.next() {
                            let time = first.1;
                            let Some(at_time) = held.try_delayed(&time) else {
                                status.fail(out_of_range(shard, &time, held.time()));
                                return;
                            };
                            let mut session = output.session(&at_time);
                            session.give(first);
                            while let Some(next) = updates.next_if(|update| update.1 == time) {
                                session.give(next);
                            }
                        }
                        match batch.upper.elements().first() {
                            Some(upper) => {
                                if held.try_downgrade(upper).is_err() {
                                    status.fail(out_of_range(shard, upper, held.time()));
                                    return;
                                }
                            }
                            None => capability = None,
                        }
                        status.set_frontier(batch.upper.clone());
                        if let Some(hold) = &read_hold {
                            hold.report(worker, &hold_before(&batch.upper));
                        }
                    }
                }
            },
        );
        (stream.as_collection(), status)
    }
}

/// Where a reader that has yet to read from `lower` holds the since: the
/// time just before `lower` (the empty frontier, done, releases it).
fn hold_before<T: StorageTimestamp>(lower: &Antichain<T>) -> Antichain<T> {
    if lower.is_empty() {
        Antichain::new()
    } else {
        step_back_frontier(lower)
    }
}

/// How the source's streamed reads restart after failures part-way: as
/// often as a call is retried, with the same capped backoff.
fn restart_policy(retry: &RetryPolicy) -> RestartPolicy {
    RestartPolicy {
        restarts: retry.retries,
        initial_backoff: retry.initial_backoff,
        max_backoff: retry.max_backoff,
    }
}

/// The next chunk of `read`, reopened after a failure part-way by the
/// `operation` call `open` (with `retry`'s retries of the call).
async fn next_resumed_chunk<C, K, F, Fut>(
    read: &mut ResumingRead<C, K>,
    retry: &RetryPolicy,
    shard: ShardId,
    operation: &'static str,
    open: F,
) -> Result<Option<Vec<C>>, DataflowError>
where
    C: Send + 'static,
    K: Ord,
    F: Fn() -> Fut + Copy,
    Fut: Future<Output = Result<ReadStream<C>, BackendError>>,
{
    read.next_chunk(
        || retry.run(shard, operation, open),
        |error| DataflowError::Backend {
            shard,
            operation,
            error: Box::new(error),
        },
        |restart, error| {
            tracing::debug!(%shard, operation, restart, %error, "reading again after a failure part-way");
        },
    )
    .await
}

/// A backend answer below what the source has already promised (the
/// backend broke its contract); reported, not a panic.
fn out_of_range<T: StorageTimestamp>(shard: ShardId, time: &T, held: &T) -> DataflowError {
    DataflowError::Backend {
        shard,
        operation: "fetch",
        error: Box::new(BackendError::indeterminate(format!(
            "backend answered a time the source has already passed: time={time} source_frontier={held}"
        ))),
    }
}

/// The reading task of one worker.
struct Reader<T, B> {
    backend: Arc<B>,
    shard: ShardId,
    as_of: T,
    until: Antichain<T>,
    share: ReadShare,
    retry: RetryPolicy,
}

impl<T: StorageTimestamp, B: PersistBackend<T>> Reader<T, B> {
    async fn run(&self, mailbox: &Mailbox<ReadBatch<T>>) -> Result<(), DataflowError> {
        let (backend, shard, as_of, share) = (&*self.backend, self.shard, self.as_of, self.share);
        let frontiers = self
            .retry
            .run(shard, "frontiers", || backend.frontiers(shard))
            .await?;
        self.check_readable(&frontiers.since)?;
        if frontiers.upper.less_equal(&as_of) {
            let as_of_frontier = Antichain::from_elem(as_of);
            let upper = self
                .retry
                .run(shard, "wait_for_upper_past", || {
                    backend.wait_for_upper_past(shard, &as_of_frontier)
                })
                .await?;
            if upper.is_empty() {
                self.check_not_finalized().await?;
            }
        }
        let open_snapshot = || backend.snapshot_stream(shard, &as_of, share, ChunkLimit::DEFAULT);
        let snapshot = match self
            .retry
            .run(shard, "snapshot_stream", open_snapshot)
            .await
        {
            Err(DataflowError::Backend { error, .. })
                if matches!(
                    *error,
                    BackendError::InvalidUsage(InvalidUsage::AsOfNotReadable { .. })
                ) =>
            {
                // The since passed the as_of meanwhile (or the shard was
                // finalized): say which.
                let frontiers = self
                    .retry
                    .run(shard, "frontiers", || backend.frontiers(shard))
                    .await?;
                self.check_readable(&frontiers.since)?;
                return Err(self.not_readable(&frontiers.since));
            }
            other => other?,
        };
        // Each chunk goes out as it comes, at the as_of; the last one waits
        // to go with the progress past the as_of.
        let mut updates: Vec<(Row, T, Diff)> = Vec::new();
        if !self.until.less_equal(&as_of) {
            let at_as_of = Antichain::from_elem(as_of);
            let mut snapshot =
                ResumingRead::new(restart_policy(&self.retry), |(row, _): &(Row, Diff)| {
                    row.clone()
                })
                .with_stream(snapshot);
            while let Some(rows) = next_resumed_chunk(
                &mut snapshot,
                &self.retry,
                shard,
                "snapshot_stream",
                open_snapshot,
            )
            .await?
            {
                let previous = std::mem::replace(
                    &mut updates,
                    rows.into_iter()
                        .map(|(row, diff)| (row, as_of, diff))
                        .collect(),
                );
                if !previous.is_empty()
                    && !mailbox
                        .send(ReadBatch {
                            updates: previous,
                            upper: at_as_of.clone(),
                        })
                        .await
                {
                    return Ok(());
                }
            }
        }
        let mut lower: Antichain<T> = as_of.checked_step_forward().into_iter().collect();
        loop {
            let closes = lower.is_empty()
                || (!self.until.is_empty() && PartialOrder::less_equal(&self.until, &lower));
            let upper = if closes {
                Antichain::new()
            } else {
                lower.clone()
            };
            if !mailbox.send(ReadBatch { updates, upper }).await || closes {
                return Ok(());
            }
            let new_upper = self
                .retry
                .run(shard, "wait_for_upper_past", || {
                    backend.wait_for_upper_past(shard, &lower)
                })
                .await?;
            let open_fetch =
                || backend.fetch_stream(shard, &lower, &new_upper, share, ChunkLimit::DEFAULT);
            let fetched = self.retry.run(shard, "fetch_stream", open_fetch).await?;
            let mut fetch = ResumingRead::new(restart_policy(&self.retry), |update: &Update<T>| {
                (update.timestamp, update.row.clone())
            })
            .with_stream(fetched);
            updates = Vec::new();
            let mut fetched_any = false;
            while let Some(chunk) =
                next_resumed_chunk(&mut fetch, &self.retry, shard, "fetch_stream", open_fetch)
                    .await?
            {
                fetched_any = true;
                let previous = std::mem::replace(
                    &mut updates,
                    chunk
                        .into_iter()
                        .filter(|update| !self.until.less_equal(&update.timestamp))
                        .map(|update| (update.row, update.timestamp, update.diff))
                        .collect(),
                );
                if !previous.is_empty()
                    && !mailbox
                        .send(ReadBatch {
                            updates: previous,
                            upper: lower.clone(),
                        })
                        .await
                {
                    return Ok(());
                }
            }
            if new_upper.is_empty() || !fetched_any {
                // A finalized shard is sealed and reads as empty: tell it
                // apart from a sealed or quiet one before reporting progress.
                self.check_not_finalized().await?;
            }
            lower = new_upper;
        }
    }

    fn check_readable(&self, since: &Antichain<T>) -> Result<(), DataflowError> {
        if since.is_empty() {
            return Err(DataflowError::ShardFinalized { shard: self.shard });
        }
        if !since.less_equal(&self.as_of) {
            return Err(self.not_readable(since));
        }
        Ok(())
    }

    fn not_readable(&self, since: &Antichain<T>) -> DataflowError {
        DataflowError::AsOfNotReadable {
            shard: self.shard,
            as_of: self.as_of.to_string(),
            since: display_frontier(since).to_string(),
        }
    }

    async fn check_not_finalized(&self) -> Result<(), DataflowError> {
        let (backend, shard) = (&*self.backend, self.shard);
        let frontiers = self
            .retry
            .run(shard, "frontiers", || backend.frontiers(shard))
            .await?;
        if frontiers.since.is_empty() {
            return Err(DataflowError::ShardFinalized { shard });
        }
        Ok(())
    }
}
