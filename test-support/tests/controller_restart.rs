//! The controller's restart scenario through the fault proxy, on PostgreSQL
//! and S3, written against the public `Controller` API: a controller
//! appends groups of rows while the network resets, stalls and delays its
//! connections; after a failure (or a few appends) it is dropped and a new
//! one is started on the same storage. At the end a fresh controller, with
//! the network healthy, finds every acknowledged append exactly once,
//! every group whole, and none of the appends reported as definitely
//! failed.

use std::collections::BTreeMap;
use std::time::Duration;

use tidemark_storage_controller::ControllerConfig;
use tidemark_storage_types::{BackendError, PersistBackend, StorageError};
use tidemark_test_support::FaultPlan;
use tidemark_test_support::ledger::{Append, Ledger, verify};
use tidemark_test_support::services::{ProxiedPostgres, ProxiedS3};
use tidemark_test_support::writer::{
    COLLECTIONS, append_group, attach_with_retries, contents, uppers,
};

/// Controller lifetimes (each ends in a drop and a restart).
const SESSIONS: usize = 12;
/// Appends a controller makes before it is restarted (fewer if one fails).
const APPENDS_PER_SESSION: usize = 8;
/// Rows per append.
const ROWS: i64 = 3;

/// No retries, so that appends meeting a fault do fail and their error kinds are
/// checked.
fn config() -> ControllerConfig {
    ControllerConfig {
        backend_retries: 0,
        initial_backoff: Duration::from_millis(5),
        ..ControllerConfig::default()
    }
}

fn plan(seed: u64) -> FaultPlan {
    let mut plan = FaultPlan::seeded(seed, 0.04);
    plan.stall = Duration::from_millis(200);
    plan
}

/// Runs the scenario on backends from `make_backend` (each a new handle
/// through the proxy, as a restarted process would open).
async fn restart_scenario<B, F, Fut>(
    backend_name: &str,
    proxy: &tidemark_test_support::FaultProxy,
    mut make_backend: F,
) where
    B: PersistBackend<u64>,
    F: FnMut() -> Fut,
    Fut: Future<Output = B>,
{
    let mut ledger = Ledger::default();
    let mut failures: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut determinately_failed = Vec::new();
    let mut seq = 0;
    for session in 0..SESSIONS {
        let mut controller = attach_with_retries(&mut make_backend, config()).await;
        let mut upper_of = uppers(&controller);
        for step in 0..APPENDS_PER_SESSION {
            let collection = COLLECTIONS[step % COLLECTIONS.len()];
            let lower = upper_of[&collection];
            let append = Append {
                collection,
                run: session as i64,
                seq,
                parts: ROWS,
                lower,
                upper: lower + 1,
            };
            seq += 1;
            ledger.attempted.insert(append);
            match append_group(&mut controller, &append).await {
                Ok(()) => {
                    ledger.acknowledged.insert(append);
                    upper_of.insert(collection, append.upper);
                    continue;
                }
                Err(StorageError::Backend(err @ BackendError::Determinate(_))) => {
                    println!("{backend_name}: append failed determinately: {err}");
                    *failures.entry("determinate").or_insert(0) += 1;
                    determinately_failed.push(append);
                }
                Err(StorageError::Backend(err @ BackendError::Indeterminate(_))) => {
                    println!("{backend_name}: append failed indeterminately: {err}");
                    *failures.entry("indeterminate").or_insert(0) += 1;
                }
                Err(other) => panic!(
                    "{backend_name}: a network fault must surface as a backend error, got {other:?} for {append}"
                ),
            }
            // After a failure, a real user restarts: the controller's view
            // of the upper is no longer known to be right.
            break;
        }
        drop(controller);
    }

    proxy.set_random_faults(false);
    let mut checker = attach_with_retries(&mut make_backend, ControllerConfig::default()).await;
    let mut acknowledged = 0;
    let mut unacknowledged_present = 0;
    for collection in COLLECTIONS {
        let found = contents(&mut checker, collection)
            .await
            .expect("the checker reads every collection");
        let verdict = verify(collection, &found, &ledger)
            .unwrap_or_else(|problems| panic!("{backend_name}: {problems}"));
        acknowledged += verdict.acknowledged_present;
        unacknowledged_present += verdict.unacknowledged_present;
        for append in determinately_failed
            .iter()
            .filter(|append| append.collection == collection)
        {
            let rows: Vec<_> = append.updates().into_iter().map(|u| u.row).collect();
            assert!(
                !found.iter().any(|(row, _)| rows.contains(row)),
                "{backend_name}: an append reported as definitely failed is present: {append}"
            );
        }
    }
    println!(
        "{backend_name} restart scenario: sessions={SESSIONS} attempted={} acknowledged={acknowledged} \
         unacknowledged_present={unacknowledged_present} lost=0 duplicated=0 failures={failures:?} {}",
        ledger.attempted.len(),
        proxy.report()
    );
    assert_eq!(acknowledged, ledger.acknowledged.len());
    assert!(
        acknowledged > 0,
        "{backend_name}: no append was acknowledged"
    );
    let resets: u64 = proxy
        .injected()
        .iter()
        .filter(|(fault, _)| fault.resets())
        .map(|(_, count)| count)
        .sum();
    assert!(resets > 0, "{backend_name}: no reset was injected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_controller_restarts_lose_and_duplicate_nothing() {
    let Some(factory) = ProxiedPostgres::start("postgres controller restarts", plan(31)).await
    else {
        return;
    };
    restart_scenario("postgres", &factory.proxy, || factory.raw_handle()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_controller_restarts_lose_and_duplicate_nothing() {
    let Some(factory) = ProxiedS3::start("s3 controller restarts", plan(41)).await else {
        return;
    };
    restart_scenario("s3", &factory.proxy, || factory.raw_handle()).await;
}
