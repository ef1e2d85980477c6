//! The generic controller tests on the memory backend. Every test gets a
//! store of its own (a registry name no other test uses).

use tidemark_controller_conformance::MemoryFactory;

async fn fresh_memory_factory() -> Option<MemoryFactory> {
    Some(MemoryFactory::fresh())
}

tidemark_controller_conformance::controller_tests!(fresh_memory_factory);
