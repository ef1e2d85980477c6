//! The shared conformance suite, run on the memory backend. Every test gets
//! a store of its own: a registry name no other test uses.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tidemark_backend_conformance::{BackendFactory, conformance_tests};
use tidemark_backend_memory::MemoryBackend;

/// Opens handles on one registry name.
struct MemoryFactory {
    name: String,
}

#[async_trait]
impl BackendFactory for MemoryFactory {
    type Backend = MemoryBackend;

    async fn open_handle(&self) -> MemoryBackend {
        MemoryBackend::open(&self.name)
    }
}

/// A factory on a registry name unique in this process.
async fn fresh_memory_factory() -> Option<MemoryFactory> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "conformance-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Some(MemoryFactory { name })
}

conformance_tests!(fresh_memory_factory);
