//! Frontier lag: how far a dataflow's committed upper is behind where it
//! should be, as [`StatisticsUpdate::frontier_lag`] defines it (steps of
//! the timestamp's `Codec64` encoding; for a load generator, ticks).
//!
//! [`StatisticsUpdate::frontier_lag`]: tidemark_storage_controller::protocol::StatisticsUpdate::frontier_lag

use std::time::{Duration, Instant};

use tidemark_storage_types::StorageTimestamp;
use timely::progress::Antichain;

use crate::generator::{MAX_TICK, time_tick};

/// Where an ingestion's generator should be: it started emitting tick
/// `first` at `started`, one tick every `interval`, and has emitted every
/// tick before `emitted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pace {
    pub(crate) started: Instant,
    pub(crate) first: u64,
    pub(crate) interval: Duration,
    pub(crate) emitted: u64,
}

impl Pace {
    /// The tick after the last one due at `now`: the upper the generator
    /// would have written by then. With a zero interval every tick is due
    /// as soon as it can be emitted, so it is the tick after those emitted.
    pub(crate) fn due_upper(&self, now: Instant) -> u64 {
        if self.interval.is_zero() {
            return self.emitted;
        }
        let elapsed = now.saturating_duration_since(self.started);
        let due = u64::try_from(elapsed.as_nanos() / self.interval.as_nanos()).unwrap_or(u64::MAX);
        self.first
            .saturating_add(due)
            .saturating_add(1)
            .min(MAX_TICK + 1)
            .max(self.emitted)
    }
}

/// An ingestion's lag at `now`, in ticks: the due upper less the tick of
/// its committed `upper` (an empty upper is never behind).
pub(crate) fn ingestion_lag<T: StorageTimestamp>(
    pace: &Pace,
    now: Instant,
    upper: &Antichain<T>,
) -> u64 {
    let Some(committed) = upper.elements().first() else {
        return 0;
    };
    pace.due_upper(now).saturating_sub(time_tick(committed))
}

/// An export's lag: its source's upper less its committed `upper`, in
/// `Codec64` steps. An empty committed upper is never behind; an empty
/// source upper (sealed) counts as the largest encoding, so a sink that
/// has not committed a sealed source's end is behind by a lot.
pub(crate) fn export_lag<T: StorageTimestamp>(source: &Antichain<T>, upper: &Antichain<T>) -> u64 {
    let Some(committed) = upper.elements().first() else {
        return 0;
    };
    let reference = source.elements().first().map_or(i64::MAX, T::encode);
    let lag = i128::from(reference) - i128::from(committed.encode());
    u64::try_from(lag.max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(interval_ms: u64, first: u64, emitted: u64) -> (Pace, Instant) {
        let started = Instant::now();
        let pace = Pace {
            started,
            first,
            interval: Duration::from_millis(interval_ms),
            emitted,
        };
        (pace, started)
    }

    #[test]
    fn an_ingestion_behind_its_due_ticks_lags_by_the_missing_ticks() {
        let (pace, started) = pace(10, 100, 103);
        // At 45 ms ticks 100..=104 are due: the due upper is 105.
        let now = started + Duration::from_millis(45);
        assert_eq!(pace.due_upper(now), 105);
        assert_eq!(ingestion_lag(&pace, now, &Antichain::from_elem(102u64)), 3);
        assert_eq!(ingestion_lag(&pace, now, &Antichain::from_elem(105u64)), 0);
        assert_eq!(ingestion_lag::<u64>(&pace, now, &Antichain::new()), 0);
    }

    #[test]
    fn an_ingestion_without_an_interval_lags_by_what_it_emitted_but_has_not_made_durable() {
        let (pace, started) = pace(0, 0, 40);
        let later = started + Duration::from_secs(3600);
        assert_eq!(ingestion_lag(&pace, later, &Antichain::from_elem(32u64)), 8);
        assert_eq!(ingestion_lag(&pace, later, &Antichain::from_elem(40u64)), 0);
    }

    #[test]
    fn an_export_lags_by_the_source_times_it_has_not_committed() {
        let source = Antichain::from_elem(30u64);
        assert_eq!(export_lag(&source, &Antichain::from_elem(12u64)), 18);
        assert_eq!(export_lag(&source, &Antichain::from_elem(30u64)), 0);
        assert_eq!(export_lag::<u64>(&source, &Antichain::new()), 0);
        // Sealed source, sink not at its end yet.
        assert!(export_lag::<u64>(&Antichain::new(), &Antichain::from_elem(30u64)) > 0);
    }
}
