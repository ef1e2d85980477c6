//! Retrying backend calls whose outcome is unknown.

use std::future::Future;
use std::time::Duration;

use tidemark_storage_types::BackendError;

/// How often and how patiently indeterminate failures are retried.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// Attempts after the first.
    pub(crate) retries: u32,
    /// Wait before the first retry; doubles each time.
    pub(crate) initial_backoff: Duration,
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
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            result => return result,
        }
    }
}
