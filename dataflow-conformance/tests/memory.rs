//! The dataflow test list on the memory backend: every test on its own
//! registry name.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_memory::MemoryBackend;

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

async fn make() -> Option<MemoryFactory> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "dataflow-tests-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Some(MemoryFactory { name })
}

tidemark_dataflow_conformance::dataflow_tests!(make);
