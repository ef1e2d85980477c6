//! Subscriptions: a collection's snapshot at an as_of, then every later
//! change, as a [`Stream`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tidemark_storage_types::{
    GlobalId, PersistBackend, ShardId, StorageError, StorageTimestamp, Update,
};
use timely::progress::Antichain;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::controller::read_snapshot;
use crate::internal::Internal;
use crate::read_hold::ReadHold;
use crate::retry::{RetryPolicy, retry_indeterminate};

/// One item of a [`Subscription`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionEvent<T> {
    /// Updates (the first batch is the snapshot, every update at the
    /// as_of), consolidated and sorted by `(time, row)`.
    Updates(Vec<Update<T>>),
    /// Every update at a time not `>=` this frontier has been delivered.
    /// An empty frontier ends the stream.
    Progress(Antichain<T>),
}

/// A stream of a collection's contents at an as_of followed by every later
/// change. Made by [`Controller::subscribe`](crate::Controller::subscribe).
///
/// While it lives it holds a read capability on the collection at the
/// earliest time it has yet to read, so the collection's since cannot pass
/// it; dropping it releases the hold (at the controller's next
/// [`process`](crate::StorageController::process)). After an error item the
/// stream ends.
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
    let rows = read_snapshot(backend, retry, hold.id(), shard, as_of).await?;
    let snapshot = rows
        .into_iter()
        .map(|(row, diff)| Update::new(row, as_of, diff))
        .collect();
    if sender
        .send(Ok(SubscriptionEvent::Updates(snapshot)))
        .await
        .is_err()
    {
        return Ok(());
    }
    let Some(next) = as_of.checked_step_forward() else {
        hold.release();
        let _ = sender
            .send(Ok(SubscriptionEvent::Progress(Antichain::new())))
            .await;
        return Ok(());
    };
    let mut lower = Antichain::from_elem(next);
    hold.downgrade(&lower);
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
        let updates = retry_indeterminate(retry, || backend.fetch(shard, &lower, &upper)).await?;
        if !updates.is_empty()
            && sender
                .send(Ok(SubscriptionEvent::Updates(updates)))
                .await
                .is_err()
        {
            return Ok(());
        }
        hold.downgrade(&upper);
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
