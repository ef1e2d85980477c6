//! Subscriptions: a collection's snapshot at an as_of, then every later
//! change, as a [`Stream`]; and [`ResumingRead`], the streamed read the
//! controller's reads go through.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::future::BoxFuture;
use tidemark_storage_types::{
    BackendError, ChunkLimit, GlobalId, PersistBackend, ReadShare, ReadStream, ShardId,
    StorageError, StorageTimestamp, Update, step_back_frontier,
};
use timely::progress::Antichain;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::controller::read_snapshot;
use crate::internal::Internal;
use crate::read_hold::ReadHold;
use crate::retry::{RETRIES_METRIC, RetryPolicy, retry_indeterminate};

/// Opens a streamed read from its beginning (one attempt; the
/// [`ResumingRead`] retries it).
pub(crate) type OpenRead<'a, C> =
    Arc<dyn Fn() -> BoxFuture<'a, Result<ReadStream<C>, BackendError>> + Send + Sync + 'a>;

/// The controller's streamed reads: the shared
/// [`ResumingRead`](tidemark_storage_types::ResumingRead) (restarts after
/// failures part-way, capped backoff), opened by `open` with the
/// controller's retries of indeterminate failures of the call.
pub(crate) struct ResumingRead<'a, C, K> {
    retry: RetryPolicy,
    open: OpenRead<'a, C>,
    read: tidemark_storage_types::ResumingRead<C, K>,
}

impl<'a, C: Send + 'static, K: Ord> ResumingRead<'a, C, K> {
    /// A read opened (and reopened) by `open`, whose entries are ordered by
    /// `key`, retried by `retry` (its retries bound the call's attempts and,
    /// separately, the restarts after failures part-way).
    pub(crate) fn new(retry: RetryPolicy, open: OpenRead<'a, C>, key: fn(&C) -> K) -> Self {
        ResumingRead {
            retry,
            open,
            read: tidemark_storage_types::ResumingRead::new(retry.restarts(), key),
        }
    }

    /// This read, already opened as `stream` (so that the caller sees the
    /// call's own errors first).
    pub(crate) fn with_stream(mut self, stream: ReadStream<C>) -> Self {
        self.read = self.read.with_stream(stream);
        self
    }

    /// The next chunk not yet delivered (never empty), or `None` at the end
    /// of the read.
    ///
    /// # Errors
    ///
    /// The call's error (after retries), a determinate failure part-way, or
    /// an indeterminate one once the restarts are used up.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Vec<C>>, BackendError> {
        let retry = self.retry;
        let open = &self.open;
        self.read
            .next_chunk(
                || {
                    let open = Arc::clone(open);
                    async move { retry_indeterminate(retry, || open()).await }
                },
                |err| err,
                |restart, err| {
                    tracing::debug!(
                        restart,
                        error = %err,
                        "reading again after an indeterminate failure part-way"
                    );
                    metrics::counter!(RETRIES_METRIC).increment(1);
                },
            )
            .await
    }
}

/// The fetch of `[lower, upper)` of `shard`, as a [`ResumingRead`].
fn fetch_resuming<'a, T, B>(
    backend: &'a B,
    retry: RetryPolicy,
    shard: ShardId,
    lower: Antichain<T>,
    upper: Antichain<T>,
) -> ResumingRead<'a, Update<T>, (T, tidemark_storage_types::Row)>
where
    T: StorageTimestamp,
    B: PersistBackend<T> + ?Sized,
{
    let open: OpenRead<'a, Update<T>> = Arc::new(move || {
        let (lower, upper) = (lower.clone(), upper.clone());
        Box::pin(async move {
            backend
                .fetch_stream(shard, &lower, &upper, ReadShare::WHOLE, ChunkLimit::DEFAULT)
                .await
        })
    });
    ResumingRead::new(retry, open, |update| (update.timestamp, update.row.clone()))
}

/// One item of a [`Subscription`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionEvent<T> {
    /// Updates, consolidated and sorted by `(time, row)`. The batches before
    /// the first progress are the snapshot (every update at the as_of), one
    /// batch per read chunk (at most
    /// [`ChunkLimit::DEFAULT`](tidemark_storage_types::ChunkLimit::DEFAULT)),
    /// so a large snapshot comes as several; so does a large change.
    Updates(Vec<Update<T>>),
    /// Every update at a time not `>=` this frontier has been delivered.
    /// An empty frontier ends the stream.
    Progress(Antichain<T>),
}

/// A stream of a collection's contents at an as_of followed by every later
/// change. Made by [`Controller::subscribe`](crate::Controller::subscribe).
///
/// While it lives it holds a read capability on the collection just before
/// the earliest time it has yet to read (at the as_of until the snapshot is
/// delivered), so the collection's since cannot pass it, nor bring updates
/// it has delivered back into its next read; dropping it releases the hold
/// (at the controller's next
/// [`process`](crate::StorageController::process)). Reads that fail
/// part-way are read again without delivering anything twice. After an
/// error item the stream ends.
pub struct Subscription<T: StorageTimestamp> {
    id: GlobalId,
    events: mpsc::Receiver<Result<SubscriptionEvent<T>, StorageError>>,
    task: JoinHandle<()>,
    hold: Arc<ReadHold<T>>,
}

impl<T: StorageTimestamp> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("hold", &*self.hold)
            .finish_non_exhaustive()
    }
}

impl<T: StorageTimestamp> Subscription<T> {
    /// Starts following `shard` of collection `id`; the caller has taken a
    /// +1 hold at `as_of`.
    pub(crate) fn start<B: PersistBackend<T>>(
        backend: Arc<B>,
        retry: RetryPolicy,
        id: GlobalId,
        shard: ShardId,
        as_of: T,
        internal: mpsc::UnboundedSender<Internal<T>>,
    ) -> Self {
        let hold = Arc::new(ReadHold::new(id, as_of, internal));
        let task_hold = Arc::clone(&hold);
        let (sender, events) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            if let Err(err) = follow(&*backend, retry, shard, as_of, &task_hold, &sender).await {
                let _ = sender.send(Err(err)).await;
            }
        });
        Subscription {
            id,
            events,
            task,
            hold,
        }
    }

    /// The collection followed.
    #[must_use]
    pub fn id(&self) -> GlobalId {
        self.id
    }

    /// The next event, or `None` once the stream has ended (after the
    /// empty-frontier progress or an error). The same as
    /// [`StreamExt::next`](futures::StreamExt::next), without needing the
    /// trait. Cancellation safe.
    pub async fn recv(&mut self) -> Option<Result<SubscriptionEvent<T>, StorageError>> {
        self.events.recv().await
    }
}

type EventSender<T> = mpsc::Sender<Result<SubscriptionEvent<T>, StorageError>>;

async fn follow<T, B>(
    backend: &B,
    retry: RetryPolicy,
    shard: ShardId,
    as_of: T,
    hold: &ReadHold<T>,
    sender: &EventSender<T>,
) -> Result<(), StorageError>
where
    T: StorageTimestamp,
    B: PersistBackend<T>,
{
    // The snapshot, a chunk per event; the hold stays at the as_of until it
    // has all been delivered.
    // No upper is known here: the read waits for the upper first.
    let no_known_upper = Antichain::from_elem(T::minimum());
    let mut snapshot = read_snapshot(
        backend,
        retry,
        hold.id(),
        shard,
        as_of,
        &no_known_upper,
        ChunkLimit::DEFAULT,
    )
    .await?;
    while let Some(rows) = snapshot.next_chunk().await? {
        let updates = rows
            .into_iter()
            .map(|(row, diff)| Update::new(row, as_of, diff))
            .collect();
        if sender
            .send(Ok(SubscriptionEvent::Updates(updates)))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    drop(snapshot);
    let Some(next) = as_of.checked_step_forward() else {
        hold.release();
        let _ = sender
            .send(Ok(SubscriptionEvent::Progress(Antichain::new())))
            .await;
        return Ok(());
    };
    let mut lower = Antichain::from_elem(next);
    if sender
        .send(Ok(SubscriptionEvent::Progress(lower.clone())))
        .await
        .is_err()
    {
        return Ok(());
    }
    loop {
        let upper =
            retry_indeterminate(retry, || backend.wait_for_upper_past(shard, &lower)).await?;
        if upper.is_empty()
            && retry_indeterminate(retry, || backend.frontiers(shard))
                .await?
                .since
                .is_empty()
        {
            // Finalized (by a newer controller), not sealed: the data is gone.
            return Err(StorageError::CollectionDropped(hold.id()));
        }
        let mut fetch = fetch_resuming(backend, retry, shard, lower.clone(), upper.clone());
        while let Some(updates) = fetch.next_chunk().await? {
            if sender
                .send(Ok(SubscriptionEvent::Updates(updates)))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        // SUBTLE: held just before the new lower, not at it. A fetch
        // advances every time by the since, so with the since at `upper`
        // the next fetch of `[upper, ..)` would bring every earlier update
        // (already delivered) into its range at time `upper`.
        hold.downgrade(&hold_before(&upper));
        let done = upper.is_empty();
        if sender
            .send(Ok(SubscriptionEvent::Progress(upper.clone())))
            .await
            .is_err()
            || done
        {
            return Ok(());
        }
        lower = upper;
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

impl<T: StorageTimestamp> Stream for Subscription<T> {
    type Item = Result<SubscriptionEvent<T>, StorageError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl<T: StorageTimestamp> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.task.abort();
        // The aborted task may still own a reference for a moment: release
        // the hold now rather than when the last reference goes.
        self.hold.release();
    }
}
