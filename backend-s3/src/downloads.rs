//! Counts of the part objects a backend handle downloads and of the PUTs it
//! makes: what a read share saves and what a write costs are visible to
//! tests and tooling without a proxy in between.

use std::sync::atomic::{AtomicU64, Ordering};

/// Part objects downloaded by a handle and its clones since it was built
/// (every read, share read and compaction; the state objects not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartDownloads {
    /// Part objects fetched.
    pub parts: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// The most entry bytes (counted as [`tidemark_storage_types::ChunkEntry::chunk_bytes`])
    /// one window of a windowed read has held at once: what bounds the
    /// memory of a snapshot of many runs (decision 119).
    pub peak_window_bytes: u64,
}

/// The running counts behind [`PartDownloads`].
#[derive(Debug, Default)]
pub(crate) struct DownloadCounters {
    parts: AtomicU64,
    bytes: AtomicU64,
    peak_window_bytes: AtomicU64,
}

impl DownloadCounters {
    /// Records one downloaded part of `bytes` bytes.
    pub(crate) fn record(&self, bytes: usize) {
        self.parts.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records that a read's window holds `bytes` entry bytes.
    pub(crate) fn record_window(&self, bytes: usize) {
        self.peak_window_bytes
            .fetch_max(bytes as u64, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(crate) fn totals(&self) -> PartDownloads {
        PartDownloads {
            parts: self.parts.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            peak_window_bytes: self.peak_window_bytes.load(Ordering::Relaxed),
        }
    }
}

/// PUT requests made by a handle and its clones since it was built, by
/// kind (each attempt counted, whatever its outcome).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectPuts {
    /// Conditional PUTs (state commits and creations, build-time checks).
    pub conditional: u64,
    /// Unconditional PUTs (part objects, markers).
    pub unconditional: u64,
}

/// The running counts behind [`ObjectPuts`].
#[derive(Debug, Default)]
pub(crate) struct PutCounters {
    conditional: AtomicU64,
    unconditional: AtomicU64,
}

impl PutCounters {
    /// Records one PUT request.
    pub(crate) fn record(&self, conditional: bool) {
        let counter = if conditional {
            &self.conditional
        } else {
            &self.unconditional
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(crate) fn totals(&self) -> ObjectPuts {
        ObjectPuts {
            conditional: self.conditional.load(Ordering::Relaxed),
            unconditional: self.unconditional.load(Ordering::Relaxed),
        }
    }
}
