//! Read policies, write frontiers, read capabilities and compaction.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_types::{PersistBackend, ReadPolicy, StorageInstanceId, StorageParameters};
use timely::progress::{Antichain, ChangeBatch};

use super::*;

/// A lag policy moves the since as writes move the upper.
pub async fn lag_policy_advances_since_with_writes<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::lag_writes_by(10, 5))]);
    assert_eq!(since_of(&c, user(1)), frontier(0));
    append_and_settle(&mut c, user(1), vec![update(1, "a", 0, 1)], 27).await;
    assert_eq!(since_of(&c, user(1)), frontier(15));
    assert_eq!(
        c.collection(user(1)).unwrap().implied_capability,
        frontier(15)
    );
    append_and_settle(&mut c, user(1), vec![], 33).await;
    assert_eq!(since_of(&c, user(1)), frontier(20));
}

/// A policy that would move the capability back is stored but not applied.
pub async fn capability_never_moves_back_but_policy_is_stored<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(10)))]);
    c.set_read_policy(vec![
        (user(1), ReadPolicy::ValidFrom(frontier(20))),
        (user(1), ReadPolicy::ValidFrom(frontier(5))),
    ]);
    let state = c.collection(user(1)).unwrap();
    assert_eq!(state.implied_capability, frontier(20));
    assert!(matches!(&state.read_policy, ReadPolicy::ValidFrom(f) if *f == frontier(5)));
    assert_eq!(since_of(&c, user(1)), frontier(20));
}

/// `Multiple` gives the meet of its policies.
pub async fn multiple_policy_is_the_meet<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    c.set_read_policy(vec![(
        user(1),
        ReadPolicy::Multiple(vec![
            ReadPolicy::ValidFrom(frontier(12)),
            ReadPolicy::lag_writes_by(3, 1),
        ]),
    )]);
    append_and_settle(&mut c, user(1), vec![], 10).await;
    assert_eq!(since_of(&c, user(1)), frontier(7));
    append_and_settle(&mut c, user(1), vec![], 40).await;
    assert_eq!(since_of(&c, user(1)), frontier(12));
}

/// `step_back` keeps the since one behind the upper.
pub async fn step_back_policy_trails_the_upper_by_one<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::step_back())]);
    append_and_settle(&mut c, user(1), vec![update(1, "a", 3, 1)], 8).await;
    assert_eq!(since_of(&c, user(1)), frontier(7));
    assert_eq!(
        c.snapshot(user(1), 7).await.unwrap(),
        vec![(row(1, "a"), 1)]
    );
}

/// Reported write frontiers only ever raise the write frontier.
pub async fn write_frontiers_never_move_back<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_instance(StorageInstanceId(1));
    c.create_collections(vec![(user(2), ingestion(StorageInstanceId(1), None))])
        .await
        .unwrap();
    c.set_read_policy(vec![(user(2), ReadPolicy::lag_writes_by(2, 1))]);
    c.update_write_frontiers(&[(user(2), frontier(9))]);
    c.update_write_frontiers(&[(user(2), frontier(4))]);
    let state = c.collection(user(2)).unwrap();
    assert_eq!(state.write_frontier, frontier(9));
    assert_eq!(state.since(), frontier(7));
    c.update_write_frontiers(&[(user(2), Antichain::new())]);
    let state = c.collection(user(2)).unwrap();
    assert!(state.write_frontier.is_empty());
    // A lag policy gives [0] for a sealed collection: the capability stays.
    assert_eq!(state.since(), frontier(7));
}

/// The controller's since reaches the shard (asynchronously).
pub async fn since_downgrade_reaches_the_backend<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(&mut c, user(1), vec![update(1, "a", 0, 1)], 20).await;
    c.set_read_policy(vec![(user(1), ReadPolicy::lag_writes_by(5, 1))]);
    c.flush().await;
    let shard = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    assert_eq!(
        c.backend().frontiers(shard).await.unwrap().since,
        frontier(15)
    );
}

/// Churned updates of one row: once the since passes them and enough are
/// stored, physical compaction shrinks the shard, reads unchanged.
pub async fn physical_compaction_shrinks_storage<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.update_configuration(StorageParameters {
        compaction_min_updates: Some(8),
        ..Default::default()
    });
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    for time in 0..40u64 {
        let diff = if time % 2 == 0 { 1 } else { -1 };
        append_and_settle(
            &mut c,
            user(1),
            vec![update(1, "churn", time, diff)],
            time + 1,
        )
        .await;
    }
    let shard = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    let before = c.backend().usage(shard).await.unwrap();
    assert!(before.updates >= 8, "{before:?}");
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(39)))]);
    c.flush().await;
    let after = c.backend().usage(shard).await.unwrap();
    assert!(after.updates < before.updates, "{before:?} -> {after:?}");
    assert_eq!(c.snapshot(user(1), 39).await.unwrap(), vec![]);
}

/// With physical compaction off, only the since moves.
pub async fn disabled_physical_compaction_keeps_storage<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.update_configuration(StorageParameters {
        physical_compaction: Some(false),
        compaction_min_updates: Some(1),
        ..Default::default()
    });
    assert!(!c.parameters().physical_compaction());
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    for time in 0..10u64 {
        let diff = if time % 2 == 0 { 1 } else { -1 };
        append_and_settle(
            &mut c,
            user(1),
            vec![update(1, "churn", time, diff)],
            time + 1,
        )
        .await;
    }
    let shard = c
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    let before = c.backend().usage(shard).await.unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(9)))]);
    c.flush().await;
    let frontiers = c.backend().frontiers(shard).await.unwrap();
    assert_eq!(frontiers.since, frontier(9));
    assert_eq!(c.backend().usage(shard).await.unwrap(), before);
}

/// A hold taken through `update_read_capabilities` keeps the since until
/// released.
pub async fn external_read_holds_keep_the_since<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    let mut hold = BTreeMap::from([(user(1), ChangeBatch::new_from(3u64, 1))]);
    c.update_read_capabilities(&mut hold);
    assert!(hold.is_empty(), "the map is drained");
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(8)))]);
    assert_eq!(since_of(&c, user(1)), frontier(3));
    let mut release = BTreeMap::from([(user(1), ChangeBatch::new_from(3u64, -1))]);
    c.update_read_capabilities(&mut release);
    assert_eq!(since_of(&c, user(1)), frontier(8));
}

/// A collection's since changes move its hold on its dependency.
pub async fn since_changes_propagate_to_dependencies<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_instance(StorageInstanceId(1));
    c.create_collections(vec![
        (user(1), progress_collection()),
        (user(2), ingestion(StorageInstanceId(1), Some(user(1)))),
    ])
    .await
    .unwrap();
    c.set_read_policy(vec![(user(1), ReadPolicy::ValidFrom(frontier(100)))]);
    c.set_read_policy(vec![(user(2), ReadPolicy::lag_writes_by(1, 1))]);
    c.update_write_frontiers(&[(user(2), frontier(6))]);
    assert_eq!(since_of(&c, user(2)), frontier(5));
    assert_eq!(since_of(&c, user(1)), frontier(5));
    c.update_write_frontiers(&[(user(2), frontier(60))]);
    assert_eq!(since_of(&c, user(1)), frontier(59));
    let remap = c.collection(user(1)).unwrap();
    assert_eq!(remap.read_capabilities.count_for(&5), 0);
    assert_eq!(remap.read_capabilities.count_for(&59), 1);
}

/// One step of the policy model.
#[derive(Clone, Debug)]
enum Step {
    ValidFrom(u64),
    Lag { lag: u64, granularity: u64 },
    TrailByOne,
    MultipleOfValidFromAndLag { valid_from: u64, lag: u64 },
    AdvanceUpper(u64),
    TakeHold(u64),
    ReleaseHold(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..60u64).prop_map(Step::ValidFrom),
        (0..15u64, 0..6u64).prop_map(|(lag, granularity)| Step::Lag { lag, granularity }),
        Just(Step::TrailByOne),
        (0..60u64, 0..15u64)
            .prop_map(|(valid_from, lag)| Step::MultipleOfValidFromAndLag { valid_from, lag }),
        (0..10u64).prop_map(Step::AdvanceUpper),
        (0..60u64).prop_map(Step::TakeHold),
        (0..4usize).prop_map(Step::ReleaseHold),
    ]
}

/// The model: frontiers as plain numbers, the policy as the last policy
/// step.
#[derive(Debug, Default)]
struct Model {
    upper: u64,
    implied: u64,
    holds: Vec<u64>,
    policy: Option<Step>,
}

impl Model {
    fn lag(&self, lag: u64, granularity: u64) -> u64 {
        if lag == 0 {
            return self.upper;
        }
        let lagged = self.upper.saturating_sub(lag);
        if granularity == 0 {
            lagged
        } else {
            lagged - lagged % granularity
        }
    }

    /// The frontier the current policy computes (`None`: no policy yet).
    fn policy_frontier(&self) -> Option<u64> {
        match self.policy.as_ref()? {
            Step::ValidFrom(time) => Some(*time),
            Step::Lag { lag, granularity } => Some(self.lag(*lag, *granularity)),
            Step::TrailByOne => Some(self.upper.saturating_sub(1)),
            Step::MultipleOfValidFromAndLag { valid_from, lag } => {
                Some((*valid_from).min(self.lag(*lag, 1)))
            }
            _ => None,
        }
    }

    fn since(&self) -> u64 {
        self.holds.iter().copied().fold(self.implied, u64::min)
    }
}

fn policy_of(step: &Step) -> Option<ReadPolicy<u64>> {
    match step {
        Step::ValidFrom(time) => Some(ReadPolicy::ValidFrom(frontier(*time))),
        Step::Lag { lag, granularity } => Some(ReadPolicy::lag_writes_by(*lag, *granularity)),
        Step::TrailByOne => Some(ReadPolicy::step_back()),
        Step::MultipleOfValidFromAndLag { valid_from, lag } => Some(ReadPolicy::Multiple(vec![
            ReadPolicy::ValidFrom(frontier(*valid_from)),
            ReadPolicy::lag_writes_by(*lag, 1),
        ])),
        _ => None,
    }
}

/// Random policies, upper advances and holds, against a model of the since.
pub async fn random_policies_and_holds_match_the_model<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    let mut runner = TestRunner::deterministic();
    let strategy = proptest::collection::vec(step(), 1..40);
    for case in 0..48u64 {
        let steps = strategy
            .new_tree(&mut runner)
            .expect("strategy generates")
            .current();
        let id = GlobalId::Transient(case);
        c.create_collections(vec![(
            id,
            CollectionDescription::new(relation(), DataSource::Other),
        )])
        .await
        .unwrap();
        let mut model = Model::default();
        for (index, step) in steps.iter().enumerate() {
            if let Some(policy) = policy_of(step) {
                c.set_read_policy(vec![(id, policy)]);
                model.policy = Some(step.clone());
            }
            match step {
                Step::AdvanceUpper(delta) => {
                    model.upper += delta;
                    c.update_write_frontiers(&[(id, frontier(model.upper))]);
                }
                Step::TakeHold(time) if *time >= model.since() => {
                    let mut hold = BTreeMap::from([(id, ChangeBatch::new_from(*time, 1))]);
                    c.update_read_capabilities(&mut hold);
                    model.holds.push(*time);
                }
                Step::ReleaseHold(index) if *index < model.holds.len() => {
                    let time = model.holds.remove(*index);
                    let mut release = BTreeMap::from([(id, ChangeBatch::new_from(time, -1))]);
                    c.update_read_capabilities(&mut release);
                }
                _ => {}
            }
            if let Some(candidate) = model.policy_frontier()
                && candidate >= model.implied
            {
                model.implied = candidate;
            }
            let context = format!("case {case} step {index} {step:?} in {steps:?}: {model:?}");
            let state = c.collection(id).unwrap();
            assert_eq!(
                state.implied_capability,
                frontier(model.implied),
                "{context}"
            );
            assert_eq!(state.since(), frontier(model.since()), "{context}");
            assert_eq!(state.write_frontier, frontier(model.upper), "{context}");
        }
    }
    c.flush().await;
    // Every downgrade reached the backend: its since is the controller's.
    for (id, state) in c.collections() {
        let shard = state.collection_metadata.data_shard;
        let backend_since = c.backend().frontiers(shard).await.unwrap().since;
        assert_eq!(backend_since, state.since(), "backend since of {id}");
    }
}
