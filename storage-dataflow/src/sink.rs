//! [`ShardSink`]: a differential collection written into a shard, exactly
//! once.

use std::marker::PhantomData;
use std::sync::Arc;
use tidemark_storage_types::WriteFence;

use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate_updates;
use tidemark_storage_types::{
    Diff, IdempotencyToken, PersistBackend, Row, ShardId, StorageTimestamp, Update,
    display_frontier,
};
use timely::PartialOrder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::Antichain;
use tokio::runtime::Handle;

use crate::errors::DataflowError;
use crate::retry::RetryPolicy;
use crate::status::DataflowStatus;
use crate::task::{Mailbox, TaskLink};

/// Writes a collection's updates into a shard.
///
/// # Commit protocol
///
/// - Every worker hands its updates to one **committer** worker (an
///   exchange; worker 0 unless [`with_committer`](Self::with_committer)
///   says otherwise), which buffers them by time.
/// - At start the committer reads the shard's upper `U`. Updates at times
///   before `U` are already in the shard (written by an earlier run of the
///   same dataflow) and are skipped, not appended again.
/// - Whenever the input frontier `F` passes `U`, the committer appends the
///   updates at times in `[U, F)` with one
///   `compare_and_append(expected_upper = U, new_upper = F)` and then
///   `U = F`: the shard's upper follows the input frontier (an empty input
///   frontier seals the shard). One append is in flight at a time.
/// - A failure retrying can fix is retried with the **same idempotency
///   token**, so an append whose response was lost is answered as applied
///   and never written twice.
/// - An upper mismatch means another writer moved the shard's upper: the
///   sink reports [`DataflowError::UpperRaced`] and stops; it never
///   overwrites the other writer.
///
/// # Exactly once across restarts
///
/// A dataflow restarted over the same output shard resumes from the shard's
/// upper `U` and writes nothing twice, provided it computes the same
/// collection: its sources must start at an `as_of` before `U` (for
/// example [`resume_as_of`]), so that its updates at times `>= U` are the
/// same as the first run's.
///
/// # Errors
///
/// Reported through the returned [`DataflowStatus`] (whose frontier is the
/// shard's upper as last written): [`DataflowError::UpperRaced`],
/// [`DataflowError::ShardFinalized`], and [`DataflowError::Backend`] for a
/// failure the [`RetryPolicy`] could not retry away. The sink then writes
/// nothing more.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use differential_dataflow::input::Input;
/// use timely::progress::Antichain;
/// use tidemark_backend_memory::MemoryBackend;
/// use tidemark_storage_dataflow::ShardSink;
/// use tidemark_storage_types::{Datum, PersistBackend, Row, ShardId};
///
/// let runtime = tokio::runtime::Runtime::new().unwrap();
/// let backend = Arc::new(MemoryBackend::open("sink-doc"));
/// let shard = ShardId::new();
/// let (handle, writer) = (runtime.handle().clone(), Arc::clone(&backend));
/// timely::execute_directly(move |worker| {
///     let (mut input, status) = worker.dataflow::<u64, _, _>(|scope| {
///         let (input, collection) = scope.new_collection::<Row, i64>();
///         (input, ShardSink::new(handle, writer, shard).build(collection))
///     });
///     input.update_at(Row::pack([Datum::Int64(1)]), 2, 1);
///     input.advance_to(5);
///     input.flush();
///     while status.frontier() != Antichain::from_elem(5) && status.error().is_none() {
///         worker.step_or_park(Some(std::time::Duration::from_millis(10)));
///     }
///     assert_eq!(status.error(), None);
/// });
/// let contents = runtime.block_on(backend.snapshot(shard, &4)).unwrap();
/// assert_eq!(contents, vec![(Row::pack([Datum::Int64(1)]), 1)]);
/// ```
pub struct ShardSink<T: StorageTimestamp, B> {
    runtime: Handle,
    backend: Arc<B>,
    shard: ShardId,
    committer: Option<usize>,
    retry: RetryPolicy,
    timestamp: PhantomData<fn() -> T>,
}

/// What the committer's task reports.
enum CommitEvent<T> {
    /// The shard's upper, read at start (or reached by an append).
    Upper(Antichain<T>),
    /// The task failed; the sink stops.
    Failed(DataflowError),
}

/// A batch for the committer's task to append.
struct CommitRequest<T> {
    updates: Vec<Update<T>>,
    expected_upper: Antichain<T>,
    new_upper: Antichain<T>,
}

/// The earliest `as_of` a restarted dataflow's sources may use so that its
/// sink, resuming at `output_upper`, writes nothing twice: the time just
/// before the output's upper (the minimum for an empty output), or `None`
/// if the output is sealed (there is nothing left to write). The inputs
/// must still be readable there.
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_dataflow::resume_as_of;
/// assert_eq!(resume_as_of(&Antichain::from_elem(10u64)), Some(9));
/// assert_eq!(resume_as_of(&Antichain::from_elem(0u64)), Some(0));
/// assert_eq!(resume_as_of::<u64>(&Antichain::new()), None);
/// ```
#[must_use]
pub fn resume_as_of<T: StorageTimestamp>(output_upper: &Antichain<T>) -> Option<T> {
    output_upper
        .elements()
        .first()
        .map(StorageTimestamp::step_back)
}

impl<T: StorageTimestamp, B: PersistBackend<T>> ShardSink<T, B> {
    /// A sink into `shard` (opened if it does not exist), whose backend
    /// calls run on `runtime`.
    pub fn new(runtime: Handle, backend: Arc<B>, shard: ShardId) -> ShardSink<T, B> {
        ShardSink {
            runtime,
            backend,
            shard,
            committer: None,
            retry: RetryPolicy::default(),
            timestamp: PhantomData,
        }
    }

    /// Makes worker `index` (modulo the worker count) the committer.
    #[must_use]
    pub fn with_committer(mut self, index: usize) -> ShardSink<T, B> {
        self.committer = Some(index);
        self
    }

    /// Retries failed backend calls by `retry`.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> ShardSink<T, B> {
        self.retry = retry;
        self
    }

    /// Adds the sink for `collection` to its scope (on this worker). The
    /// returned status is the committer's: on other workers it stays at
    /// the minimum frontier with no error.
    pub fn build(self, collection: VecCollection<'_, T, Row, Diff>) -> DataflowStatus<T> {
        let status = DataflowStatus::new();
        let scope = collection.scope();
        let committer = self.committer.unwrap_or(0) % scope.peers();
        let is_committer = scope.index() == committer;
        let mut builder = OperatorBuilder::new("ShardSink".to_string(), scope);
        let info = builder.operator_info();
        let target = committer as u64;
        let mut input = builder.new_input(
            collection.inner,
            Exchange::new(move |_: &(Row, T, Diff)| target),
        );
        let activator = scope.worker().sync_activator_for(info.address.to_vec());
        let ShardSink {
            runtime,
            backend,
            shard,
            retry,
            ..
        } = self;
        let operator_status = status.clone();
        builder.build_reschedule(move |_capabilities| {
            let (requests, link) = if is_committer {
                let (requests, receiver) = tokio::sync::mpsc::unbounded_channel();
                let link = TaskLink::spawn(&runtime, activator, move |mailbox| {
                    commit_loop(backend, shard, retry, receiver, mailbox)
                });
                (Some(requests), Some(link))
            } else {
                (None, None)
            };
            let mut committer = Committer {
                status: operator_status,
                requests,
                link,
                shard_upper: None,
                in_flight: false,
                failed: false,
                pending: Vec::new(),
            };
            move |frontiers| {
                input.for_each(|_capability, data| committer.stage(data));
                committer.step(frontiers[0].frontier().to_owned())
            }
        });
        status
    }
}

/// The committer's state, on the operator's side.
struct Committer<T: StorageTimestamp> {
    status: DataflowStatus<T>,
    requests: Option<tokio::sync::mpsc::UnboundedSender<CommitRequest<T>>>,
    link: Option<TaskLink<CommitEvent<T>>>,
    /// The shard's upper once known: everything before it is durable.
    shard_upper: Option<Antichain<T>>,
    in_flight: bool,
    failed: bool,
    /// Updates not yet appended, all at times `>= shard_upper` once known.
    pending: Vec<(Row, T, Diff)>,
}

impl<T: StorageTimestamp> Committer<T> {
    fn stage(&mut self, data: &mut Vec<(Row, T, Diff)>) {
        if self.failed {
            data.clear();
            return;
        }
        match &self.shard_upper {
            // Updates the shard already has (from an earlier run) are skipped.
            Some(upper) => self
                .pending
                .extend(data.drain(..).filter(|update| upper.less_equal(&update.1))),
            None => self.pending.append(data),
        }
    }

    /// Handles the task's reports and starts the next append; `true` while
    /// the sink has work left (so the worker keeps it scheduled).
    fn step(&mut self, input_frontier: Antichain<T>) -> bool {
        let Some(link) = self.link.as_mut() else {
            // Not the committer: nothing arrives here.
            return false;
        };
        while let Some(event) = link.try_next() {
            match event {
                CommitEvent::Upper(upper) => {
                    self.pending.retain(|update| upper.less_equal(&update.1));
                    self.status.set_frontier(upper.clone());
                    self.shard_upper = Some(upper);
                    self.in_flight = false;
                }
                CommitEvent::Failed(error) => {
                    self.status.fail(error);
                    self.failed = true;
                    self.pending = Vec::new();
                }
            }
        }
        if self.failed {
            return false;
        }
        let Some(shard_upper) = self.shard_upper.clone() else {
            return true;
        };
        if self.in_flight {
            return true;
        }
        if shard_upper.is_empty() {
            // Sealed: nothing can be written again.
            return false;
        }
        if !PartialOrder::less_than(&shard_upper, &input_frontier) {
            // The input has not completed any time past the shard's upper
            // (a restarted dataflow catching up, or an idle input).
            return !input_frontier.is_empty();
        }
        let (complete, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|update| !input_frontier.less_equal(&update.1));
        self.pending = later;
        let mut complete = complete;
        consolidate_updates(&mut complete);
        let request = CommitRequest {
            updates: complete
                .into_iter()
                .map(|(row, time, diff)| Update::new(row, time, diff))
                .collect(),
            expected_upper: shard_upper,
            new_upper: input_frontier,
        };
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|requests| requests.send(request).is_ok());
        if !sent {
            // The task is gone, which only happens after it reported.
            return false;
        }
        self.in_flight = true;
        true
    }
}

/// The committer's task: reads the shard's upper, then appends each
/// request with its own token, retried with that token.
async fn commit_loop<T, B>(
    backend: Arc<B>,
    shard: ShardId,
    retry: RetryPolicy,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<CommitRequest<T>>,
    mailbox: Mailbox<CommitEvent<T>>,
) where
    T: StorageTimestamp,
    B: PersistBackend<T>,
{
    let backend = &*backend;
    let opened = match retry.run(shard, "open", || backend.open(shard)).await {
        Ok(frontiers) => frontiers,
        Err(error) => {
            mailbox.send(CommitEvent::Failed(error)).await;
            return;
        }
    };
    if opened.since.is_empty() && opened.upper.is_empty() {
        mailbox
            .send(CommitEvent::Failed(DataflowError::ShardFinalized { shard }))
            .await;
        return;
    }
    if !mailbox.send(CommitEvent::Upper(opened.upper)).await {
        return;
    }
    while let Some(request) = requests.recv().await {
        let event = match append(backend, shard, retry, request).await {
            Ok(upper) => CommitEvent::Upper(upper),
            Err(error) => CommitEvent::Failed(error),
        };
        let failed = matches!(event, CommitEvent::Failed(_));
        if !mailbox.send(event).await || failed {
            return;
        }
    }
}

/// Appends one request, retrying with one token; the new upper on success.
async fn append<T, B>(
    backend: &B,
    shard: ShardId,
    retry: RetryPolicy,
    request: CommitRequest<T>,
) -> Result<Antichain<T>, DataflowError>
where
    T: StorageTimestamp,
    B: PersistBackend<T>,
{
    let token = IdempotencyToken::new();
    let CommitRequest {
        updates,
        expected_upper,
        new_upper,
    } = request;
    // SUBTLE: every attempt reuses `token`, so an attempt whose response was
    // lost after it applied is answered as applied by the retry instead of
    // being written again (or mistaken for a racing writer).
    let outcome = retry
        .run(shard, "compare_and_append", || {
            backend.compare_and_append(
                shard,
                updates.clone(),
                expected_upper.clone(),
                new_upper.clone(),
                token,
                WriteFence::Unfenced,
            )
        })
        .await?;
    match outcome {
        Ok(()) => Ok(new_upper),
        Err(mismatch) => {
            if mismatch.current.is_empty() {
                let frontiers = retry
                    .run(shard, "frontiers", || backend.frontiers(shard))
                    .await?;
                if frontiers.since.is_empty() {
                    return Err(DataflowError::ShardFinalized { shard });
                }
            }
            Err(DataflowError::UpperRaced {
                shard,
                expected: display_frontier(&mismatch.expected).to_string(),
                current: display_frontier(&mismatch.current).to_string(),
            })
        }
    }
}
