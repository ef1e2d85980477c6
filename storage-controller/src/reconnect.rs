//! Reconnecting a replica whose connection was lost.
//!
//! When any process's response channel of an instance's replica closes
//! (the process went away, the TCP connection broke or was refused), the
//! controller connects the whole replica again after a backoff, through
//! the same path as [`connect_replica`](crate::StorageController::connect_replica):
//! a new epoch and the replay of the compacted command history. The
//! backoff doubles with every loss that follows without a response in
//! between, up to a maximum, and starts over once a connection delivers a
//! response.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How soon the controller reconnects a lost replica.
///
/// ```
/// use std::time::Duration;
/// use tidemark_storage_controller::ReconnectPolicy;
/// let policy = ReconnectPolicy {
///     initial_backoff: Duration::from_millis(100),
///     max_backoff: Duration::from_secs(1),
/// };
/// assert_eq!(policy.backoff(0), Duration::from_millis(100));
/// assert_eq!(policy.backoff(3), Duration::from_millis(800));
/// assert_eq!(policy.backoff(4), Duration::from_secs(1));
/// assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectPolicy {
    /// The wait before the first reconnect after a loss.
    pub initial_backoff: Duration,
    /// The longest wait between reconnects.
    pub max_backoff: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl ReconnectPolicy {
    /// The wait before reconnecting after `failures` losses in a row
    /// (0 for the first): `initial_backoff * 2^failures`, at most
    /// `max_backoff`.
    #[must_use]
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// An instance's reconnect bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct ReconnectState {
    /// Losses since the last connection that delivered a response.
    failures: u32,
    /// The epoch whose loss has a reconnect scheduled, if any.
    scheduled: Option<u64>,
}

impl ReconnectState {
    /// The connection of `epoch` (the current one) was lost: the wait
    /// before reconnecting, or `None` if a reconnect for it is already
    /// scheduled (another process of the same replica was lost too).
    pub(crate) fn lost(&mut self, epoch: u64, policy: &ReconnectPolicy) -> Option<Duration> {
        if self.scheduled == Some(epoch) {
            return None;
        }
        self.scheduled = Some(epoch);
        let wait = policy.backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        Some(wait)
    }

    /// Whether the reconnect scheduled for `epoch`'s loss is still to be
    /// made; taking it clears the schedule.
    pub(crate) fn take_due(&mut self, epoch: u64) -> bool {
        if self.scheduled == Some(epoch) {
            self.scheduled = None;
            true
        } else {
            false
        }
    }

    /// The current connection works: the next loss waits the initial
    /// backoff again.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// A connect by the caller replaces whatever was scheduled.
    pub(crate) fn reset(&mut self) {
        *self = ReconnectState::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: ReconnectPolicy = ReconnectPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    };

    #[test]
    fn losses_in_a_row_back_off_until_the_maximum() {
        let mut state = ReconnectState::default();
        let waits: Vec<_> = (1..=5)
            .map(|epoch| {
                let wait = state.lost(epoch, &POLICY).unwrap();
                assert!(state.take_due(epoch));
                wait.as_millis()
            })
            .collect();
        assert_eq!(waits, vec![10, 20, 40, 50, 50]);
        state.succeeded();
        assert_eq!(state.lost(6, &POLICY), Some(Duration::from_millis(10)));
    }

    #[test]
    fn a_second_loss_of_the_same_epoch_schedules_nothing() {
        let mut state = ReconnectState::default();
        assert!(state.lost(1, &POLICY).is_some());
        assert_eq!(state.lost(1, &POLICY), None);
        assert!(!state.take_due(2), "another epoch's reconnect is not due");
        assert!(state.take_due(1));
        assert!(!state.take_due(1), "a reconnect is made once");
    }

    #[test]
    fn a_connect_by_the_caller_cancels_the_scheduled_reconnect() {
        let mut state = ReconnectState::default();
        state.lost(1, &POLICY);
        state.reset();
        assert!(!state.take_due(1));
        assert_eq!(state.lost(2, &POLICY), Some(POLICY.initial_backoff));
    }
}
