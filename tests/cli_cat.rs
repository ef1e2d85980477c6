//! `tidemark cat`: prints exactly the snapshot, follows changes and
//! progress, stops cleanly, and names what is wrong.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Store, controller, create_tables, int_row};
use tidemark::cli::ToolError;
use tidemark::cli::cat::{CatOptions, Format, cat_backend};
use tidemark::controller::StorageController;
use tidemark::types::{GlobalId, Update};

const TABLE: GlobalId = GlobalId::User(1);

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

/// The snapshot lines of a table created by `create_tables(.., 3)`, at
/// time 1 (the latest readable time).
fn expected_snapshot() -> Vec<Value> {
    [1, 2, 3, 100]
        .into_iter()
        .map(|n| json!({"event": "row", "time": 1, "diff": 1, "row": [n]}))
        .collect()
}

async fn cat_to_string(
    store: &Store,
    id: GlobalId,
    options: CatOptions,
) -> Result<String, ToolError> {
    let mut out = Vec::new();
    cat_backend(
        &*store.backend,
        id,
        options,
        &mut out,
        std::future::pending(),
    )
    .await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn memory_cat_prints_exactly_the_snapshot() {
    let store = support::memory_store().await;
    let mut controller = controller(&store.backend).await;
    create_tables(&mut controller, &[TABLE], 3).await;
    let json_options = CatOptions {
        format: Format::Json,
        ..CatOptions::default()
    };
    let printed = cat_to_string(&store, TABLE, json_options).await.unwrap();
    assert_eq!(json_lines(&printed), expected_snapshot());
    let at_zero = CatOptions {
        as_of: Some(0),
        ..json_options
    };
    let printed = cat_to_string(&store, TABLE, at_zero).await.unwrap();
    let rows: Vec<Value> = json_lines(&printed)
        .into_iter()
        .map(|v| v["row"].clone())
        .collect();
    assert_eq!(rows, vec![json!([1]), json!([2]), json!([3])]);
    let csv = CatOptions {
        format: Format::Csv,
        ..CatOptions::default()
    };
    let printed = cat_to_string(&store, TABLE, csv).await.unwrap();
    assert_eq!(
        printed,
        "event,time,diff,values\nrow,1,1,1\nrow,1,1,2\nrow,1,1,3\nrow,1,1,100\n"
    );
    let printed = cat_to_string(&store, TABLE, CatOptions::default())
        .await
        .unwrap();
    assert_eq!(printed.lines().count(), 5, "{printed}");
}

#[tokio::test]
async fn cat_names_what_is_wrong() {
    let store = support::memory_store().await;
    let mut controller = controller(&store.backend).await;
    create_tables(&mut controller, &[TABLE], 1).await;
    let err = cat_to_string(&store, GlobalId::User(9), CatOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ToolError::UnknownCollection { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "unknown collection: the controller metadata records no collection u9"
    );
    let beyond = CatOptions {
        as_of: Some(5),
        ..CatOptions::default()
    };
    let err = cat_to_string(&store, TABLE, beyond).await.unwrap_err();
    assert!(matches!(err, ToolError::Backend(_)), "{err}");
    // A table with nothing written yet has no readable time.
    let empty = GlobalId::User(2);
    controller
        .create_collections(vec![(
            empty,
            tidemark::types::CollectionDescription::table(tidemark::types::RelationDesc::empty()),
        )])
        .await
        .unwrap();
    let err = cat_to_string(&store, empty, CatOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "collection has no readable time: since=[0] upper=[0]"
    );
    let err = tidemark::cli::parse_collection_id("x1").unwrap_err();
    assert!(matches!(err, ToolError::InvalidId { .. }), "{err}");
}

/// A writer whose contents the test can read while `cat` writes.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    async fn wait_for(&self, needle: &str) {
        for _ in 0..500 {
            if self.text().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never printed {needle:?}: {}", self.text());
    }
}

#[tokio::test]
async fn follow_prints_later_changes_and_progress_until_stopped() {
    let store = support::memory_store().await;
    let mut controller = controller(&store.backend).await;
    create_tables(&mut controller, &[TABLE], 1).await;
    let buffer = SharedBuffer::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = CatOptions {
        as_of: Some(0),
        follow: true,
        format: Format::Json,
    };
    let mut out = buffer.clone();
    let cat = cat_backend(&*store.backend, TABLE, options, &mut out, async {
        let _ = stopped.await;
    });
    let driver = async {
        buffer.wait_for(r#""upper":[2]"#).await;
        controller
            .append(vec![(
                TABLE,
                vec![
                    Update::new(int_row(5), 2, -1),
                    Update::new(int_row(6), 3, 1),
                ],
                4,
            )])
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        buffer.wait_for(r#""upper":[4]"#).await;
        stop.send(()).unwrap();
    };
    let (summary, ()) = tokio::join!(cat, driver);
    let summary = summary.unwrap();
    assert_eq!(summary.snapshot_rows, 1);
    assert_eq!(summary.updates, 3);
    assert_eq!(
        json_lines(&buffer.text()),
        vec![
            json!({"event": "row", "time": 0, "diff": 1, "row": [1]}),
            json!({"event": "update", "time": 1, "diff": 1, "row": [100]}),
            json!({"event": "progress", "upper": [2]}),
            json!({"event": "update", "time": 2, "diff": -1, "row": [5]}),
            json!({"event": "update", "time": 3, "diff": 1, "row": [6]}),
            json!({"event": "progress", "upper": [4]}),
        ]
    );
}

async fn binary_prints_exactly_the_snapshot(store: Store) {
    let mut controller = controller(&store.backend).await;
    create_tables(&mut controller, &[TABLE], 3).await;
    drop(controller);
    let url = store.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        support::run_binary(
            &["cat", &url, "u1", "--format", "json"],
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        json_lines(&String::from_utf8(output.stdout).unwrap()),
        expected_snapshot()
    );
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_cat_prints_exactly_the_snapshot() {
    let Some(store) = support::postgres_store("postgres_cat").await else {
        return;
    };
    binary_prints_exactly_the_snapshot(store).await;
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread")]
async fn s3_cat_prints_exactly_the_snapshot() {
    let Some(store) = support::s3_store("s3_cat").await else {
        return;
    };
    binary_prints_exactly_the_snapshot(store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_cat_follow_sees_a_running_controllers_appends_and_stops_on_ctrl_c() {
    let Some(store) = support::postgres_store("postgres_cat_follow").await else {
        return;
    };
    let mut controller = controller(&store.backend).await;
    create_tables(&mut controller, &[TABLE], 1).await;
    let mut running =
        support::Running::start(&["cat", &store.url, "u1", "--follow", "--format", "json"]);
    let limit = Duration::from_secs(30);
    let seen =
        tokio::task::block_in_place(|| running.read_until(limit, |line| line.contains("progress")));
    assert_eq!(seen.len(), 3, "{seen:?}");
    // The controller kept running beside cat: it was not fenced.
    controller
        .append(vec![(TABLE, vec![Update::new(int_row(42), 2, 1)], 3)])
        .unwrap()
        .await
        .unwrap()
        .expect("the running controller is not fenced");
    let seen =
        tokio::task::block_in_place(|| running.read_until(limit, |line| line.contains("progress")));
    assert_eq!(
        json_lines(&seen.join("\n")),
        vec![
            json!({"event": "update", "time": 2, "diff": 1, "row": [42]}),
            json!({"event": "progress", "upper": [3]}),
        ]
    );
    let status = tokio::task::block_in_place(|| running.interrupt_and_wait(limit));
    assert!(
        status.success(),
        "cat did not stop cleanly on SIGINT: {status}"
    );
}
