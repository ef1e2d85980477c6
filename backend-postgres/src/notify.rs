//! Waiting for a shard's upper: `LISTEN`/`NOTIFY`, with polling as the
//! fallback.
//!
//! Every append (and finalize) runs `pg_notify(channel, shard_id)` in its
//! transaction, so the notification is delivered only once the new upper is
//! committed. Each backend handle starts, on the first wait, one listener
//! connection on the schema's channel and a task that wakes the waiters of
//! the notified shard through a `tokio::sync::watch`. A waiter re-reads the
//! upper on every wake-up, and also every [`HEALTHY_POLL`] (every
//! [`DEGRADED_POLL`] while the listener connection is down), so a lost
//! notification delays a waiter but never strands it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tidemark_storage_types::sync::lock;
use tidemark_storage_types::{BackendError, ShardId, StorageTimestamp, contract};
use timely::PartialOrder;
use timely::progress::Antichain;
use tokio::sync::{Mutex as AsyncMutex, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::PostgresBackend;
use crate::config::PostgresConfig;

/// How often a waiter re-reads the upper while notifications flow.
pub const HEALTHY_POLL: Duration = Duration::from_millis(500);
/// How often a waiter re-reads the upper while the listener is down.
pub const DEGRADED_POLL: Duration = Duration::from_millis(50);

/// The notification channel of a schema.
pub(crate) fn channel_name(schema: &str) -> String {
    format!("tidemark_upper_{schema}")
}

/// A handle's listener and the waiters it wakes.
pub(crate) struct UpperWatch {
    channel: String,
    listener_pool: PgPool,
    state: Arc<WatchState>,
    /// The listener task, restarted when it is gone (for instance when the
    /// runtime that ran it shut down).
    task: AsyncMutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct WatchState {
    /// A generation counter per shard someone waits on.
    waiters: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    /// Whether the listener connection is up and listening.
    healthy: AtomicBool,
}

impl WatchState {
    fn wake(&self, shard: Uuid) {
        let waiters = lock(&self.waiters);
        if let Some(sender) = waiters.get(&shard) {
            sender.send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    }

    fn wake_all(&self) {
        let waiters = lock(&self.waiters);
        for sender in waiters.values() {
            sender.send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    }

    fn subscribe(&self, shard: Uuid) -> watch::Receiver<u64> {
        let mut waiters = lock(&self.waiters);
        waiters.retain(|_, sender| sender.receiver_count() > 0);
        waiters
            .entry(shard)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

impl UpperWatch {
    pub(crate) fn new(config: &PostgresConfig, options: PgConnectOptions) -> Self {
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.connect_timeout)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with({
                let name = format!(
                    "{}-listener",
                    options.get_application_name().unwrap_or("tidemark")
                );
                options.application_name(&name)
            });
        UpperWatch {
            channel: channel_name(&config.schema),
            listener_pool,
            state: Arc::default(),
            task: AsyncMutex::new(None),
        }
    }

    /// The channel appends notify.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// Starts the listener unless it runs; on failure waiters poll and the
    /// next wait tries again.
    async fn ensure_listening(&self) {
        let mut task = self.task.lock().await;
        if task.as_ref().is_some_and(|running| !running.is_finished()) {
            return;
        }
        self.state.healthy.store(false, Ordering::SeqCst);
        let started = async {
            let mut listener = PgListener::connect_with(&self.listener_pool).await?;
            listener.listen(&self.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match started {
            Ok(listener) => {
                self.state.healthy.store(true, Ordering::SeqCst);
                *task = Some(tokio::spawn(listen(listener, Arc::clone(&self.state))));
            }
            Err(err) => {
                tracing::warn!(channel = %self.channel, %err, "cannot listen for upper notifications, polling");
            }
        }
    }
}

impl Drop for UpperWatch {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().take() {
            task.abort();
        }
    }
}

/// The listener task: wakes the waiters of each notified shard; after a
/// lost connection (notifications may have been missed) wakes everyone.
async fn listen(mut listener: PgListener, state: Arc<WatchState>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if !state.healthy.swap(true, Ordering::SeqCst) {
                    state.wake_all();
                }
                if let Ok(shard) = Uuid::parse_str(notification.payload()) {
                    state.wake(shard);
                }
            }
            Ok(None) => {
                // The connection dropped and was re-established (and
                // re-subscribed); what was sent meanwhile is lost.
                state.wake_all();
            }
            Err(err) => {
                if state.healthy.swap(false, Ordering::SeqCst) {
                    tracing::warn!(%err, "upper notification listener lost, polling");
                }
                state.wake_all();
                tokio::time::sleep(DEGRADED_POLL * 4).await;
            }
        }
    }
}

pub(crate) async fn wait_for_upper_past<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    frontier: &Antichain<T>,
) -> Result<Antichain<T>, BackendError> {
    contract::check_wait_frontier(shard, frontier)?;
    let watch = &backend.shared.watch;
    watch.ensure_listening().await;
    // SUBTLE: listen, then subscribe, then read. A notification is sent only
    // after its append committed; if this read misses the append, the
    // notification reaches the listener after the subscription exists, and
    // wakes this waiter.
    let mut woken = watch.state.subscribe(shard.0);
    loop {
        let frontiers = crate::read::frontiers::<T>(backend, shard).await?;
        if !PartialOrder::less_equal(&frontiers.upper, frontier) {
            return Ok(frontiers.upper);
        }
        let poll = if watch.state.healthy.load(Ordering::SeqCst) {
            HEALTHY_POLL
        } else {
            DEGRADED_POLL
        };
        match tokio::time::timeout(poll, woken.changed()).await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(_)) => {
                // Cannot happen while `woken` is alive (senders are only
                // dropped without receivers); poll regardless.
                tokio::time::sleep(poll).await;
            }
        }
    }
}
