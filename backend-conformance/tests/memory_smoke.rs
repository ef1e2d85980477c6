//! The suite run against the memory backend, to check the suite itself.

use async_trait::async_trait;
use tidemark_backend_conformance::{BackendFactory, conformance_tests};
use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_types::ShardId;

/// Handles on one memory registry name, unique per test.
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

async fn memory_factory() -> Option<MemoryFactory> {
    Some(MemoryFactory {
        name: format!("conformance-smoke-{}", ShardId::new()),
    })
}

conformance_tests!(memory_factory);
