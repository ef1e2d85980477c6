//! Spans: every backend operation from `tidemark::open` (backend,
//! operation, shard, outcome) and every controller command (collections,
//! errors), as the binary's `RUST_LOG` subscriber prints them.

mod support;

use std::sync::{Arc, Mutex};

use tidemark::controller::StorageController;
use tidemark::types::{GlobalId, ShardId};
use tracing_subscriber::fmt::format::FmtSpan;

/// A writer the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn backend_operations_and_controller_commands_have_spans_with_outcomes() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let store = support::memory_store().await;
    let mut controller = support::controller(&store.backend).await;
    support::create_tables(&mut controller, &[GlobalId::User(1)], 1).await;
    assert!(controller.snapshot(GlobalId::User(9), 0).await.is_err());
    let unknown = ShardId::new();
    assert!(store.backend.frontiers(unknown).await.is_err());
    drop(controller);
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for expected in [
        r#"operation="compare_and_append""#,
        r#"backend="memory""#,
        r#"outcome="ok""#,
        "create_collections{collections=[User(1)]}",
        "append{collections=[User(1)]}",
        "snapshot{collection=u9 as_of=0}",
        "error=collection identifier is not present: u9",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    // A failed operation says how it failed.
    let failed = format!(r#"operation="frontiers" shard={unknown} outcome="invalid_usage""#);
    assert!(text.contains(&failed), "{failed} missing from:\n{text}");
}
