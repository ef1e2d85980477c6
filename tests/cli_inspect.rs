//! `tidemark inspect`: lists exactly the collections created, every shard
//! with its frontiers and usage, the unclaimed shards, and fences nothing.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::{Store, controller, create_tables};
use tidemark::cli::inspect::{InspectReport, inspect_backend};
use tidemark::controller::StorageController;
use tidemark::types::{GlobalId, ShardId, Update};

const TABLES: [GlobalId; 2] = [GlobalId::User(1), GlobalId::User(2)];

/// Checks a report of a store holding `TABLES` (3 rows at time 0, one at
/// time 1) and one unclaimed shard.
fn check_report(report: &Value, unclaimed: ShardId) {
    let collections = report["collections"].as_array().expect("collections");
    let ids: BTreeSet<&str> = collections
        .iter()
        .map(|entry| entry["id"].as_str().expect("an id"))
        .collect();
    assert_eq!(ids, BTreeSet::from(["u1", "u2"]), "{report:#}");
    for entry in collections {
        assert_eq!(entry["kind"], "collection");
        assert_eq!(entry["upper"], serde_json::json!([2]), "{entry}");
        assert_eq!(entry["since"], serde_json::json!([0]), "{entry}");
        let shard = entry["shard"].as_str().expect("a shard");
        let stored = report["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .find(|s| s["shard"] == shard)
            .unwrap_or_else(|| panic!("shard {shard} is listed: {report:#}"));
        assert_eq!(stored["claimed_by"], entry["id"]);
        assert_eq!(stored["updates"], 4, "{stored}");
        assert!(stored["bytes"].as_u64().expect("bytes") > 0, "{stored}");
    }
    assert_eq!(
        report["unclaimed_shards"],
        serde_json::json!([unclaimed.to_string()]),
        "{report:#}"
    );
    assert!(report["controller_epoch"].as_i64().expect("an epoch") >= 1);
}

/// Creates the tables through a controller (then dropped) and one shard
/// no collection claims.
async fn populate(store: &Store) -> ShardId {
    let mut controller = controller(&store.backend).await;
    create_tables(&mut controller, &TABLES, 3).await;
    drop(controller);
    let unclaimed = ShardId::new();
    store.backend.open(unclaimed).await.expect("a shard opens");
    unclaimed
}

#[tokio::test]
async fn memory_inspect_lists_exactly_the_created_collections() {
    let store = support::memory_store().await;
    let unclaimed = populate(&store).await;
    let report = inspect_backend(&*store.backend).await.unwrap();
    check_report(&serde_json::to_value(&report).unwrap(), unclaimed);
    let mut table = Vec::new();
    tidemark::cli::inspect::write_table(&report, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("collections (2):"), "{table}");
    assert!(table.contains("unclaimed shards (1):"), "{table}");
}

#[tokio::test]
async fn inspect_does_not_fence_a_running_controller() {
    let store = support::memory_store().await;
    let mut running = controller(&store.backend).await;
    create_tables(&mut running, &TABLES, 1).await;
    let before = inspect_backend(&*store.backend).await.unwrap();
    let after = inspect_backend(&*store.backend).await.unwrap();
    assert_eq!(before, after, "inspecting changed the store");
    // The controller still writes: it was not fenced.
    running
        .append(vec![(
            TABLES[0],
            vec![Update::new(support::int_row(7), 2, 1)],
            3,
        )])
        .unwrap()
        .await
        .unwrap()
        .expect("the running controller is not fenced");
}

#[tokio::test]
async fn an_empty_store_has_no_metadata_and_gets_none() {
    let store = support::memory_store().await;
    let report: InspectReport = inspect_backend(&*store.backend).await.unwrap();
    assert_eq!(report.controller_epoch, None);
    assert!(report.collections.is_empty() && report.shards.is_empty());
    // Inspecting created nothing, not even the metadata shard.
    assert!(store.backend.list_shards().await.unwrap().is_empty());
}

#[test]
fn a_bad_url_is_a_clear_failure() {
    let output = support::run_binary(&["inspect", "ftp://x"], std::time::Duration::from_secs(30));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown backend scheme \"ftp\""),
        "{stderr}"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_inspect_lists_exactly_the_created_collections() {
    let Some(store) = support::postgres_store("postgres_inspect").await else {
        return;
    };
    let unclaimed = populate(&store).await;
    let url = store.url.clone();
    let report =
        tokio::task::spawn_blocking(move || support::run_json(&["inspect", &url, "--json"]))
            .await
            .unwrap();
    check_report(&report, unclaimed);
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread")]
async fn s3_inspect_lists_exactly_the_created_collections_and_their_parts() {
    let Some(store) = support::s3_store("s3_inspect").await else {
        return;
    };
    let unclaimed = populate(&store).await;
    let url = store.url.clone();
    let report =
        tokio::task::spawn_blocking(move || support::run_json(&["inspect", &url, "--json"]))
            .await
            .unwrap();
    check_report(&report, unclaimed);
    for entry in report["collections"].as_array().unwrap() {
        let shard = &report["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["shard"] == entry["shard"])
            .unwrap();
        assert!(
            shard["parts"].as_u64().expect("s3 counts parts") >= 1,
            "{shard}"
        );
    }
}
