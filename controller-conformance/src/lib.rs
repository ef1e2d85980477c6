//! Generic storage controller tests, run by every backend: the controller
//! counterpart of `tidemark-backend-conformance`.
//!
//! Each test is one `pub async fn name<F: BackendFactory>(factory: &F)`;
//! [`controller_tests!`](crate::controller_tests) expands the list into
//! named `#[tokio::test]`s. Tests marked as panicking check a documented
//! panic of the seed interface; they run on the memory backend when the
//! backend under test is not available (the panic is about the
//! controller's bookkeeping, not about storage).

pub mod appends;
pub mod collections;
pub mod crash;
pub mod drops;
pub mod durable;
pub mod exports;
pub mod fencing;
pub mod group_commit;
pub mod instances;
pub mod lifecycle;
pub mod metadata;
pub mod panics;
pub mod policies;
pub mod statuses;
pub mod subscribe;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tidemark_backend_conformance::BackendFactory;
use tidemark_backend_memory::MemoryBackend;
use tidemark_storage_types::{
    CollectionDescription, DataSource, Datum, GlobalId, IngestionDescription, LoadGenerator,
    PersistBackend, RelationDesc, Row, ScalarType, SourceConnection, StorageInstanceId, Update,
};
use timely::progress::Antichain;
use tokio::sync::mpsc::error::TryRecvError;

use tidemark_storage_controller::transport::ReplicaListener;
use tidemark_storage_controller::{
    Controller, ControllerConfig, InProcessTransport, ReplicaSession, StorageCommand,
    StorageController, StorageResponse,
};

use crate::metadata::{DurableMetadata, StoredRecord};

/// The controller type the tests drive.
pub type TestController<F> = Controller<u64, <F as BackendFactory>::Backend>;

/// A configuration with quick retries.
#[must_use]
pub fn test_config() -> ControllerConfig {
    ControllerConfig {
        backend_retries: 20,
        initial_backoff: Duration::from_millis(1),
        ..ControllerConfig::default()
    }
}

/// A controller on a new handle of the factory's storage.
pub async fn controller<F: BackendFactory>(factory: &F) -> TestController<F> {
    Controller::new(factory.open_handle().await, test_config())
        .await
        .expect("controller starts")
}

/// A controller with its own in-process transport, for replica tests.
pub async fn controller_with_transport<F: BackendFactory>(
    factory: &F,
) -> (TestController<F>, Arc<InProcessTransport<u64>>) {
    let transport = InProcessTransport::new();
    let controller = Controller::with_transport(
        factory.open_handle().await,
        test_config(),
        Arc::clone(&transport) as _,
    )
    .await
    .expect("controller starts");
    (controller, transport)
}

/// `(id int64 not null, name string null)`.
#[must_use]
pub fn relation() -> RelationDesc {
    RelationDesc::empty()
        .with_column("id", ScalarType::Int64.nullable(false))
        .with_column("name", ScalarType::String.nullable(true))
}

/// A table description over [`relation`].
#[must_use]
pub fn table() -> CollectionDescription<u64> {
    CollectionDescription::table(relation())
}

/// A row of [`relation`].
#[must_use]
pub fn row(id: i64, name: &str) -> Row {
    Row::pack([Datum::Int64(id), Datum::String(name)])
}

/// An update of [`row`].
#[must_use]
pub fn update(id: i64, name: &str, time: u64, diff: i64) -> Update<u64> {
    Update::new(row(id, name), time, diff)
}

/// A frontier of one time.
#[must_use]
pub fn frontier(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

/// A user id.
#[must_use]
pub fn user(n: u64) -> GlobalId {
    GlobalId::User(n)
}

/// An ingestion on `instance` with an optional remap collection.
#[must_use]
pub fn ingestion(
    instance: StorageInstanceId,
    remap: Option<GlobalId>,
) -> CollectionDescription<u64> {
    CollectionDescription::new(
        relation(),
        DataSource::Ingestion(IngestionDescription {
            instance_id: instance,
            connection: SourceConnection::LoadGenerator {
                generator: LoadGenerator::Counter {
                    max_cardinality: None,
                },
                tick: Duration::from_millis(100),
            },
            remap_collection_id: remap,
            source_exports: Default::default(),
        }),
    )
}

/// A progress (remap) collection description.
#[must_use]
pub fn progress_collection() -> CollectionDescription<u64> {
    CollectionDescription::new(relation(), DataSource::Progress)
}

/// Runs `ready` + `process` until `done` holds. Fails (rather than hang)
/// if it does not within a minute.
pub async fn process_until<B, P>(controller: &mut Controller<u64, B>, mut done: P)
where
    B: PersistBackend<u64>,
    P: FnMut(&Controller<u64, B>) -> bool,
{
    let drive = async {
        while !done(controller) {
            controller.ready().await;
            controller.process().await.expect("process succeeds");
        }
    };
    within_a_minute(drive, "the controller never reached the expected state").await;
}

/// Awaits `future`, panicking with `what` if it takes a minute (a hang
/// guard, not a timing assertion).
pub async fn within_a_minute<R>(future: impl Future<Output = R>, what: &str) -> R {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
}

/// Drives `ready`/`process` until `process` reports a failure, and returns
/// it; panics with `what` if none comes within a minute.
pub async fn next_process_failure<B: PersistBackend<u64>>(
    controller: &mut Controller<u64, B>,
    what: &str,
) -> tidemark_storage_types::StorageError {
    let drive = async {
        loop {
            controller.ready().await;
            if let Err(err) = controller.process().await {
                return err;
            }
        }
    };
    within_a_minute(drive, what).await
}

/// Appends and waits until the write is durable and the controller's write
/// frontier reflects it.
pub async fn append_and_settle<B: PersistBackend<u64>>(
    controller: &mut Controller<u64, B>,
    id: GlobalId,
    updates: Vec<Update<u64>>,
    upper: u64,
) {
    let receiver = controller
        .append(vec![(id, updates, upper)])
        .expect("append accepted");
    within_a_minute(receiver, "append never resolved")
        .await
        .expect("append channel open")
        .expect("append succeeds");
    process_until(controller, |c| {
        c.collection(id)
            .is_ok_and(|state| state.write_frontier == frontier(upper))
    })
    .await;
}

/// The since of collection `id`.
pub fn since_of<B: PersistBackend<u64>>(
    controller: &Controller<u64, B>,
    id: GlobalId,
) -> Antichain<u64> {
    controller
        .collection(id)
        .expect("collection exists")
        .since()
}

/// The durable metadata record on the factory's storage, decoded.
pub async fn durable_state<F: BackendFactory>(factory: &F) -> (StoredRecord, DurableMetadata) {
    let backend = factory.open_handle().await;
    let (_, record) = metadata::read_record(&backend).await;
    let record = record.expect("a record exists");
    let metadata = DurableMetadata::decode(&record);
    (record, metadata)
}

/// A replica served on an in-process transport that records what it is
/// told and answers what the test says.
#[derive(Debug)]
pub struct ScriptedReplica {
    listener: ReplicaListener<u64>,
    session: Option<ReplicaSession<u64>>,
}

impl ScriptedReplica {
    /// Serves a replica at `address`.
    #[must_use]
    pub fn serve(transport: &InProcessTransport<u64>, address: &str) -> Self {
        ScriptedReplica {
            listener: transport.listen(address),
            session: None,
        }
    }

    /// Takes the next connection (after `connect_replica`), replacing the
    /// current one; returns the previous session, if any.
    pub async fn accept(&mut self) -> Option<ReplicaSession<u64>> {
        let session = within_a_minute(self.listener.accept(), "no connection arrived")
            .await
            .expect("transport alive");
        self.session.replace(session)
    }

    /// Every command received so far on the current connection.
    pub fn received(&mut self) -> Vec<StorageCommand<u64>> {
        let session = self.session.as_mut().expect("a connection was accepted");
        let mut commands = Vec::new();
        loop {
            match session.commands.try_recv() {
                Ok(command) => commands.push(command),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return commands,
            }
        }
    }

    /// Whether the controller closed the current connection.
    pub fn is_severed(&mut self) -> bool {
        let session = self.session.as_mut().expect("a connection was accepted");
        session.commands.is_closed() && session.commands.is_empty()
    }

    /// Closes the current connection from the replica's side, as a replica
    /// that died would.
    pub fn disconnect(&mut self) {
        self.session = None;
    }

    /// Sends a response on the current connection.
    pub fn respond(&self, response: StorageResponse<u64>) {
        let session = self.session.as_ref().expect("a connection was accepted");
        session
            .responses
            .send(response)
            .expect("controller listens");
    }
}

/// A memory-backed factory for panic tests whose backend is unavailable.
#[derive(Debug)]
pub struct MemoryFactory {
    name: String,
}

impl MemoryFactory {
    /// A factory on a registry name unique in this process.
    #[must_use]
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        MemoryFactory {
            name: format!(
                "controller-tests-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }
}

#[async_trait]
impl BackendFactory for MemoryFactory {
    type Backend = MemoryBackend;

    async fn open_handle(&self) -> MemoryBackend {
        MemoryBackend::open(&self.name)
    }
}

/// Expands to one `#[tokio::test]` per generic controller test.
///
/// `$make` is a path to an `async fn() -> Option<F>` where
/// `F: BackendFactory`; `None` means the backend's service is unavailable
/// (the test says it skipped and returns). Tests of documented panics run
/// on the memory backend in that case.
///
/// ```ignore
/// tidemark_controller_conformance::controller_tests!(make_factory);
/// ```
#[macro_export]
macro_rules! controller_tests {
    ($make:path) => {
        $crate::controller_tests!(@tests $make;
            collections::create_table_starts_at_minimum_frontiers,
            collections::create_collections_is_idempotent_for_identical_descriptions,
            collections::create_collections_collapses_exact_duplicates,
            collections::conflicting_duplicates_in_a_batch_are_source_id_reused,
            collections::existing_id_with_another_description_is_source_id_reused,
            collections::a_rejected_batch_changes_nothing,
            collections::description_since_is_honoured,
            collections::missing_dependency_is_identifier_missing,
            collections::ingestion_on_missing_instance_is_rejected,
            collections::dependency_cycle_is_invalid_usage,
            collections::ingestion_holds_its_remap_collection,
            collections::collection_lookups_of_unknown_ids_fail,
            collections::collections_iterate_in_id_order,
            appends::append_then_snapshot_reads_back,
            appends::empty_append_resolves_at_once,
            appends::append_to_unknown_id_is_identifier_missing,
            appends::append_to_ingestion_is_invalid_usage,
            appends::append_naming_a_collection_twice_is_invalid_usage,
            appends::update_at_upper_is_update_beyond_upper,
            appends::row_not_matching_relation_is_invalid_row,
            appends::stale_upper_resolves_invalid_uppers,
            appends::racing_writer_resolves_invalid_uppers_then_recovers,
            appends::appends_pipeline_in_submission_order,
            appends::appends_to_several_tables_in_one_call,
            appends::interleaved_appends_keep_per_table_order,
            appends::indeterminate_failures_are_retried_without_duplicates,
            appends::failing_backend_is_reported,
            appends::snapshot_of_unknown_id_is_identifier_missing,
            appends::snapshot_before_since_is_read_before_since,
            appends::snapshot_waits_for_the_upper,
            appends::atomic_append_with_one_bad_expectation_lands_nothing,
            appends::snapshots_of_tables_in_one_call_reflect_the_same_calls,
            group_commit::queued_calls_commit_as_one_store_commit,
            group_commit::a_call_that_cannot_follow_its_group_fails_alone,
            group_commit::a_group_the_store_refuses_answers_each_call_alone,
            group_commit::a_group_closes_at_its_update_bound,
            group_commit::disjoint_calls_commit_side_by_side_unless_joined,
            group_commit::readers_never_see_part_of_a_grouped_call,
            group_commit::grouped_calls_under_faults_are_all_or_nothing,
            policies::lag_policy_advances_since_with_writes,
            policies::capability_never_moves_back_but_policy_is_stored,
            policies::multiple_policy_is_the_meet,
            policies::step_back_policy_trails_the_upper_by_one,
            policies::write_frontiers_never_move_back,
            policies::since_downgrade_reaches_the_backend,
            policies::physical_compaction_shrinks_storage,
            policies::disabled_physical_compaction_keeps_storage,
            policies::external_read_holds_keep_the_since,
            policies::since_changes_propagate_to_dependencies,
            policies::random_policies_and_holds_match_the_model,
            drops::drop_sources_with_unknown_id_drops_nothing,
            drops::dropped_collection_is_finalized_and_forgotten,
            drops::dropped_collection_waits_for_other_holds,
            drops::drop_sources_unvalidated_skips_unknown_ids,
            drops::dropped_ingestion_is_told_to_stop,
            drops::recreated_id_gets_a_fresh_shard,
            exports::prepare_export_holds_the_since,
            exports::prepare_export_for_existing_export_is_sink_id_reused,
            exports::prepare_export_of_unknown_collection_is_identifier_missing,
            exports::prepare_export_of_dropped_collection_is_collection_dropped,
            exports::cancel_prepare_export_releases_the_hold,
            exports::create_exports_takes_over_the_hold_with_step_back,
            exports::duplicate_export_in_a_batch_is_sink_id_reused,
            exports::export_reading_another_collection_is_invalid_usage,
            exports::export_on_missing_instance_is_export_instance_missing,
            exports::export_as_of_before_the_hold_is_read_before_since,
            exports::existing_export_with_another_description_is_sink_id_reused,
            exports::identical_export_recreate_is_a_no_op,
            exports::create_exports_sends_create_sinks_and_records_as_of,
            exports::drop_sinks_of_unknown_id_is_identifier_missing,
            exports::dropped_sink_keeps_its_hold_until_the_replica_confirms,
            exports::export_lookups_of_unknown_ids_fail,
            instances::connect_replays_the_command_history_with_a_new_epoch,
            instances::initialization_complete_is_sent_once,
            instances::configuration_is_merged_and_forwarded,
            instances::uppers_are_forwarded_only_when_they_advance,
            instances::responses_of_a_severed_replica_are_ignored,
            instances::multi_process_replica_reports_the_meet,
            instances::statistics_and_statuses_are_stored,
            instances::instance_created_late_is_initialized_on_connect,
            instances::ingestion_is_sent_with_its_resume_upper,
            instances::connect_to_unreachable_replica_is_not_fatal,
            instances::ready_is_cancellation_safe,
            lifecycle::dropped_ingestion_is_finalized_only_after_dropped_ids,
            lifecycle::dropped_ids_of_another_id_finalizes_nothing,
            lifecycle::restart_between_drop_and_dropped_ids_asks_again,
            lifecycle::reconnected_replica_is_asked_to_confirm_a_drop,
            lifecycle::dropping_the_instance_finalizes_awaiting_shards,
            lifecycle::dropping_the_instance_releases_dropped_exports,
            lifecycle::allow_compaction_reaches_source_exports_and_progress,
            lifecycle::allow_compaction_reaches_exports,
            lifecycle::ingestion_is_sent_with_its_progress_shard,
            lifecycle::table_as_source_export_is_refused,
            lifecycle::source_export_of_another_ingestion_is_source_id_reused,
            lifecycle::statistics_are_queryable_per_process_until_dropped,
            statuses::status_changes_are_written_once_each,
            statuses::status_rows_survive_a_restart,
            statuses::status_rows_are_readable_by_subscribe,
            statuses::lost_replica_is_recorded_as_stalled,
            statuses::status_collection_id_naming_a_table_is_refused,
            statuses::status_history_with_another_relation_is_refused,
            durable::restart_reattaches_reclaims_and_fences,
            durable::fenced_controller_refuses_work,
            fencing::old_controller_appends_do_not_land_after_a_new_one_opens,
            durable::reconcile_failure_is_reported_by_process,
            durable::fenced_background_work_is_reported_by_process,
            durable::migrate_upgrades_version_1_and_can_run_again,
            durable::newer_metadata_format_is_refused,
            durable::corrupted_metadata_is_reported,
            durable::reconcile_finishes_interrupted_finalizations,
            durable::sink_as_of_is_recorded_once,
            durable::snapshot_of_a_shard_finalized_meanwhile_is_collection_dropped,
            durable::failed_since_downgrade_is_reported_by_process,
            durable::indeterminate_faults_everywhere_lose_and_duplicate_nothing,
            subscribe::subscription_streams_snapshot_then_changes,
            subscribe::subscription_holds_the_since_until_dropped,
            subscribe::subscription_rejects_bad_requests,
            subscribe::subscription_reports_a_shard_reclaimed_meanwhile,
            subscribe::subscription_delivers_a_large_snapshot_in_several_events,
            subscribe::subscription_never_redelivers_what_the_since_advances_into_its_range,
            subscribe::subscription_resumes_failed_reads_without_redelivering,
        );
        $crate::controller_tests!(@panics $make;
            panics::create_instance_twice_panics => "storage instance already exists: si1",
            panics::drop_unknown_instance_panics => "storage instance does not exist: si9",
            panics::connect_unknown_instance_panics => "storage instance does not exist: si9",
            panics::cancel_foreign_token_panics => "read capability count of collection u1 would become negative",
            panics::set_read_policy_of_unknown_id_panics => "set_read_policy: unknown collection or export u9",
            panics::update_write_frontiers_of_unknown_id_panics => "update_write_frontiers: unknown collection or export u9",
            panics::update_read_capabilities_of_unknown_id_panics => "update_read_capabilities: unknown collection u9",
            panics::negative_read_capability_panics => "read capability count of collection u1 would become negative",
        );
    };
    (@tests $make:path; $($module:ident :: $test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let Some(factory) = $make().await else {
                    return;
                };
                $crate::$module::$test(&factory).await;
            }
        )*
    };
    (@panics $make:path; $($module:ident :: $test:ident => $expected:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[should_panic(expected = $expected)]
            async fn $test() {
                match $make().await {
                    Some(factory) => $crate::$module::$test(&factory).await,
                    None => {
                        let factory = $crate::MemoryFactory::fresh();
                        $crate::$module::$test(&factory).await
                    }
                }
            }
        )*
    };
}
