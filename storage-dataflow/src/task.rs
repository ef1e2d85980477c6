//! Running an operator's backend calls as a tokio task and handing the
//! results to the operator: the task sends messages through a bounded
//! channel and wakes the operator with a [`SyncActivator`]; the operator
//! drains the channel when it is scheduled and never waits on a future.
//! Dropping the operator (the dataflow was dropped or finished) aborts the
//! task.

use std::future::Future;

use timely::scheduling::SyncActivator;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How many messages a task may send before the operator has drained them:
/// a reader ahead of its dataflow waits instead of buffering without bound.
const MAILBOX_CAPACITY: usize = 4;

/// The task's side: sends a message and wakes the operator.
pub(crate) struct Mailbox<M> {
    sender: mpsc::Sender<M>,
    activator: SyncActivator,
}

impl<M> Mailbox<M> {
    /// Sends `message` and wakes the operator. `false` if the operator is
    /// gone (the task should stop).
    pub(crate) async fn send(&self, message: M) -> bool {
        if self.sender.send(message).await.is_err() {
            return false;
        }
        self.activator.activate().is_ok()
    }
}

/// The operator's side: the messages, and the task, aborted on drop.
pub(crate) struct TaskLink<M> {
    receiver: mpsc::Receiver<M>,
    task: JoinHandle<()>,
}

impl<M: Send + 'static> TaskLink<M> {
    /// Spawns `make(mailbox)` on `runtime`.
    pub(crate) fn spawn<F, Fut>(runtime: &Handle, activator: SyncActivator, make: F) -> TaskLink<M>
    where
        F: FnOnce(Mailbox<M>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel(MAILBOX_CAPACITY);
        let task = runtime.spawn(make(Mailbox { sender, activator }));
        TaskLink { receiver, task }
    }

    /// The next message the task has sent, if any (never waits).
    pub(crate) fn try_next(&mut self) -> Option<M> {
        self.receiver.try_recv().ok()
    }
}

impl<M> Drop for TaskLink<M> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
