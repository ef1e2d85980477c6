//! Network faults below the backend: PostgreSQL and the S3 server reached
//! through the seeded fault proxy.
//!
//! - The conformance model property and the racing-writers property run
//!   through a proxy that resets, stalls and delays a few percent of all
//!   exchanges, with handles that retry as the contract tells a caller to
//!   (appends with their idempotency token): every answer still matches the
//!   model, every race still has exactly one winner.
//! - Targeted faults on the commit of an append check the error kind: a
//!   reset after the request reached the server is indeterminate (and the
//!   append did apply); a reset before it leaves nothing written; a retry
//!   with the same token lands the append exactly once either way.

use std::time::Duration;
use tidemark_storage_types::WriteFence;

use tidemark_backend_conformance::{concurrency, model};
use tidemark_storage_types::{
    BackendError, Datum, IdempotencyToken, PersistBackend, Row, ShardId, Update,
};
use tidemark_test_support::services::{ProxiedPostgres, ProxiedS3};
use tidemark_test_support::{FailureCounts, Fault, FaultPlan, FaultProxy};
use timely::progress::Antichain;

/// The chance that one exchange meets a fault in the property runs.
const FAULT_PROBABILITY: f64 = 0.03;

fn plan(seed: u64) -> FaultPlan {
    let mut plan = FaultPlan::seeded(seed, FAULT_PROBABILITY);
    plan.stall = Duration::from_millis(250);
    plan
}

/// Prints what the proxy injected and the failures the handles met, and
/// checks that faults really were injected and that no determinate
/// failure hid an applied append.
fn report(test: &str, proxy: &FaultProxy, counts: &FailureCounts) {
    println!("{test}: {} {counts}", proxy.report());
    let resets: u64 = proxy
        .injected()
        .iter()
        .filter(|(fault, _)| fault.resets())
        .map(|(_, count)| count)
        .sum();
    assert!(
        resets > 0,
        "{test}: the proxy injected no reset: {}",
        proxy.report()
    );
    assert_eq!(
        counts.determinate_but_applied(),
        0,
        "{test}: an append reported as definitely failed had applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_model_holds_through_network_faults() {
    let Some(mut factory) = ProxiedPostgres::start("postgres model through faults", plan(11)).await
    else {
        return;
    };
    factory.single_writer = true;
    model::random_operations_match_the_model(&factory).await;
    report("postgres model", &factory.proxy, &factory.counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_racing_writers_hold_through_network_faults() {
    let Some(factory) = ProxiedPostgres::start("postgres racing through faults", plan(12)).await
    else {
        return;
    };
    concurrency::racing_writers_exactly_one_wins_each_round(&factory).await;
    report("postgres racing writers", &factory.proxy, &factory.counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_model_holds_through_network_faults() {
    let Some(mut factory) = ProxiedS3::start("s3 model through faults", plan(21)).await else {
        return;
    };
    factory.single_writer = true;
    model::random_operations_match_the_model(&factory).await;
    report("s3 model", &factory.proxy, &factory.counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_racing_writers_hold_through_network_faults() {
    let Some(factory) = ProxiedS3::start("s3 racing through faults", plan(22)).await else {
        return;
    };
    concurrency::racing_writers_exactly_one_wins_each_round(&factory).await;
    report("s3 racing writers", &factory.proxy, &factory.counts);
}

// ------------------------------------------------------------ error kinds

fn rows(label: &str) -> Vec<Update<u64>> {
    (0..3)
        .map(|index| Update::new(Row::pack([Datum::Int64(index), Datum::String(label)]), 0, 1))
        .collect()
}

fn at(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

/// What one armed fault on an append's commit did.
#[derive(Debug)]
struct Outcome {
    error: BackendError,
    applied: bool,
}

/// Which request of an append the armed fault hits.
#[derive(Clone, Copy, Debug)]
enum Commit<'a> {
    /// The first request that carries the append's rows (a one-statement
    /// append sends rows, upper and token together).
    CarryingTheRows,
    /// The first request containing these bytes.
    Containing(&'a [u8]),
}

/// Arms `fault` on the append's commit request, appends through `backend`,
/// and reports the error and whether the append applied; then retries with
/// the same token and checks the rows are there exactly once.
async fn append_meeting<B: PersistBackend<u64>>(
    backend: &B,
    proxy: &FaultProxy,
    commit: Commit<'_>,
    fault: Fault,
) -> Outcome {
    proxy.set_random_faults(false);
    let shard = ShardId::new();
    backend.open(shard).await.expect("open without faults");
    let label = format!("{fault} {shard}");
    let updates = rows(&label);
    let token = IdempotencyToken::new();
    let needle = match commit {
        Commit::CarryingTheRows => label.as_bytes(),
        Commit::Containing(bytes) => bytes,
    };
    proxy.arm(needle, fault);
    let result = backend
        .compare_and_append(
            shard,
            updates.clone(),
            at(0),
            at(1),
            token,
            WriteFence::Unfenced,
        )
        .await;
    assert!(
        !proxy.is_armed(),
        "the append never sent a request with {needle:?}"
    );
    let error = match result {
        Err(error) => error,
        Ok(answer) => panic!("{fault} on the commit still answered {answer:?}"),
    };
    let applied = backend.frontiers(shard).await.expect("frontiers").upper == at(1);
    // The caller's retry with the same token resolves it: exactly once.
    assert_eq!(
        backend
            .compare_and_append(
                shard,
                updates.clone(),
                at(0),
                at(1),
                token,
                WriteFence::Unfenced
            )
            .await,
        Ok(Ok(())),
        "the retry with the same token after {fault}"
    );
    let snapshot = backend.snapshot(shard, &0).await.expect("snapshot");
    let expected: Vec<(Row, i64)> = updates.into_iter().map(|u| (u.row, u.diff)).collect();
    assert_eq!(
        snapshot, expected,
        "after {fault} and a retry the rows are there once"
    );
    Outcome { error, applied }
}

/// The kinds each reset must surface as.
fn check_kinds(backend: &str, after: &Outcome, mid: &Outcome, before: &Outcome) {
    println!(
        "{backend}: reset after request: applied={} error={}",
        after.applied, after.error
    );
    println!(
        "{backend}: reset mid response: applied={} error={}",
        mid.applied, mid.error
    );
    println!(
        "{backend}: reset before request: applied={} error={}",
        before.applied, before.error
    );
    for (name, outcome) in [("after request", after), ("mid response", mid)] {
        assert!(
            outcome.applied,
            "{backend}: the server acted on the commit before the reset {name}"
        );
        assert!(
            matches!(outcome.error, BackendError::Indeterminate(_)),
            "{backend}: a reset {name} must be indeterminate: {}",
            outcome.error
        );
    }
    assert!(
        !before.applied,
        "{backend}: the server never saw the commit"
    );
    // The client cannot know the request was not sent: indeterminate is
    // right; a determinate answer would also be true here, but never
    // InvalidUsage.
    assert!(
        !matches!(before.error, BackendError::InvalidUsage(_)),
        "{backend}: a reset is not a usage error: {}",
        before.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_resets_surface_as_the_right_error_kind() {
    let Some(factory) = ProxiedPostgres::start("postgres error kinds", FaultPlan::quiet()).await
    else {
        return;
    };
    let proxy = &factory.proxy;
    // Small appends are one statement: rows, upper and token in one request.
    let backend = factory.raw_handle().await;
    let commit = Commit::CarryingTheRows;
    let after = append_meeting(&backend, proxy, commit, Fault::ResetAfterRequest).await;
    let mid = append_meeting(&backend, proxy, commit, Fault::ResetMidResponse).await;
    let before = append_meeting(&backend, proxy, commit, Fault::ResetBeforeRequest).await;
    check_kinds("postgres one-statement append", &after, &mid, &before);

    // Large appends stream rows by COPY in a transaction, then COMMIT.
    let backend = factory
        .config
        .clone()
        .with_copy_threshold(1)
        .build()
        .await
        .expect("a copying handle");
    let commit = Commit::Containing(b"COMMIT");
    let after = append_meeting(&backend, proxy, commit, Fault::ResetAfterRequest).await;
    let mid = append_meeting(&backend, proxy, commit, Fault::ResetMidResponse).await;
    let before = append_meeting(&backend, proxy, commit, Fault::ResetBeforeRequest).await;
    check_kinds("postgres copy append", &after, &mid, &before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_resets_surface_as_the_right_error_kind() {
    let Some(factory) = ProxiedS3::start("s3 error kinds", FaultPlan::quiet()).await else {
        return;
    };
    let backend = factory.raw_handle().await;
    let proxy = &factory.proxy;
    // The state commit of an append is the PUT with `If-Match`.
    let commit = Commit::Containing(b"if-match:");
    let after = append_meeting(&backend, proxy, commit, Fault::ResetAfterRequest).await;
    let mid = append_meeting(&backend, proxy, commit, Fault::ResetMidResponse).await;
    let before = append_meeting(&backend, proxy, commit, Fault::ResetBeforeRequest).await;
    check_kinds("s3", &after, &mid, &before);
}
