//! [`RetryPolicy`]: how operators retry failed backend calls.

use std::future::Future;
use std::time::Duration;

use tidemark_storage_types::{BackendError, DeterminateKind, ShardId};

use crate::errors::DataflowError;

/// How often and how patiently the operators retry a backend call that
/// failed in a way retrying can fix: an indeterminate outcome (a timeout, a
/// lost response), or a determinate `Unavailable` or `Conflict` (nothing
/// happened; the service asks to try again). Other failures are reported at
/// once. Appends are retried with the same idempotency token, so a retry of
/// an append that did apply is answered as a success, never applied twice.
///
/// ```
/// use std::time::Duration;
/// use tidemark_storage_dataflow::RetryPolicy;
/// let policy = RetryPolicy::default().with_retries(3).with_initial_backoff(Duration::from_millis(1));
/// assert_eq!(policy.retries, 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// The wait before the first retry; it doubles with every retry up to
    /// [`max_backoff`](Self::max_backoff).
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 10,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// This policy with `retries` attempts after the first.
    #[must_use]
    pub fn with_retries(mut self, retries: u32) -> RetryPolicy {
        self.retries = retries;
        self
    }

    /// This policy with the first wait `initial_backoff`.
    #[must_use]
    pub fn with_initial_backoff(mut self, initial_backoff: Duration) -> RetryPolicy {
        self.initial_backoff = initial_backoff;
        self
    }

    /// Runs `operation` until it succeeds, fails in a way retrying cannot
    /// fix, or has failed `retries + 1` times; the last failure becomes a
    /// [`DataflowError::Backend`].
    ///
    /// SUBTLE: only for operations that are safe to repeat: reads, waits,
    /// and a `compare_and_append` whose closure reuses one token.
    pub(crate) async fn run<R, F, Fut>(
        &self,
        shard: ShardId,
        operation_name: &'static str,
        mut operation: F,
    ) -> Result<R, DataflowError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<R, BackendError>>,
    {
        let mut backoff = self.initial_backoff;
        let mut attempt = 0;
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(error) if is_retryable(&error) && attempt < self.retries => {
                    tracing::debug!(%shard, operation = operation_name, attempt, %error, "retrying backend call");
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2).min(self.max_backoff);
                }
                Err(error) => {
                    return Err(DataflowError::Backend {
                        shard,
                        operation: operation_name,
                        error: Box::new(error),
                    });
                }
            }
        }
    }
}

/// Whether retrying can fix `error`.
fn is_retryable(error: &BackendError) -> bool {
    match error {
        BackendError::Indeterminate(_) => true,
        BackendError::Determinate(determinate) => matches!(
            determinate.kind,
            DeterminateKind::Unavailable | DeterminateKind::Conflict
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_retrying_can_fix_are_retried() {
        assert!(is_retryable(&BackendError::indeterminate("lost")));
        assert!(is_retryable(&BackendError::determinate(
            DeterminateKind::Unavailable,
            "refused"
        )));
        assert!(!is_retryable(&BackendError::determinate(
            DeterminateKind::Corrupted,
            "bad"
        )));
        assert!(!is_retryable(&BackendError::InvalidUsage(
            tidemark_storage_types::InvalidUsage::UnknownShard {
                shard: ShardId::new()
            }
        )));
    }
}
