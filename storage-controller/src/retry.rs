//! Retrying backend calls whose outcome is unknown.

use std::future::Future;
use std::time::Duration;

use tidemark_storage_types::{BackendError, RestartPolicy};

/// The counter of the controller's retries of indeterminate backend
/// failures (through the `metrics` crate).
pub const RETRIES_METRIC: &str = "tidemark_controller_retries_total";

/// How often and how patiently indeterminate failures are retried.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// Attempts after the first.
    pub(crate) retries: u32,
    /// Wait before the first retry; doubles each time.
    pub(crate) initial_backoff: Duration,
}

/// The longest wait between two restarts of a streamed read after
/// failures part-way (as the dataflow's default).
pub(crate) const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(2);

impl RetryPolicy {
    /// No retries: the first failure is returned.
    pub(crate) const NONE: RetryPolicy = RetryPolicy {
        retries: 0,
        initial_backoff: Duration::ZERO,
    };

    /// How a streamed read restarts after failures part-way: as often as
    /// a call is retried, from the same first wait, doubling up to
    /// [`MAX_RESTART_BACKOFF`].
    pub(crate) fn restarts(self) -> RestartPolicy {
        RestartPolicy {
            restarts: self.retries,
            initial_backoff: self.initial_backoff,
            max_backoff: MAX_RESTART_BACKOFF.max(self.initial_backoff),
        }
    }
}

/// Runs `operation` until it succeeds, fails determinately, or has failed
/// indeterminately `policy.retries + 1` times (the last error is returned).
///
/// SUBTLE: only use this for operations that are safe to repeat:
/// idempotent ones (since downgrades, finalization, reads) or a
/// `compare_and_append` whose closure reuses one idempotency token.
pub(crate) async fn retry_indeterminate<R, F, Fut>(
    policy: RetryPolicy,
    mut operation: F,
) -> Result<R, BackendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<R, BackendError>>,
{
    let mut backoff = policy.initial_backoff;
    let mut attempt = 0;
    loop {
        match operation().await {
            Err(err) if !err.is_determinate() && attempt < policy.retries => {
                tracing::debug!(attempt, error = %err, "retrying indeterminate backend failure");
                attempt += 1;
                metrics::counter!(RETRIES_METRIC).increment(1);
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            result => return result,
        }
    }
}
