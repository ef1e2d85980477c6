//! Wall-clock time for grace periods, injectable so tests can move it.

use std::fmt::Debug;
use std::sync::Mutex;

use std::time::{Duration, SystemTime};
use tidemark_storage_types::sync::lock;

/// The source of "now" for grace periods (when a replaced batch may be
/// deleted, when an unreferenced object is old enough to collect).
///
/// Clocks of processes sharing a bucket should agree to well within the
/// grace period; see `docs/decisions/031-s3-compaction-and-gc.md`.
pub trait Clock: Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to, for tests.
///
/// ```
/// use std::time::Duration;
/// use tidemark_backend_s3::{Clock, ManualClock};
/// let clock = ManualClock::starting_now();
/// let before = clock.now();
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now().duration_since(before).unwrap(), Duration::from_secs(60));
/// ```
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// A clock that reads the system time once, then stays there until
    /// [`advance`](Self::advance)d.
    #[must_use]
    pub fn starting_now() -> Self {
        ManualClock {
            now: Mutex::new(SystemTime::now()),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = lock(&self.now);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *lock(&self.now)
    }
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub(crate) fn epoch_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|since_epoch| u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The time `millis` milliseconds after the Unix epoch (saturating).
pub(crate) fn from_epoch_millis(millis: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(millis))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}
