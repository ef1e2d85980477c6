//! [`conformance_tests!`](crate::conformance_tests): the property list as
//! named tests.

/// Expands to one `#[tokio::test]` per conformance property, named after the
/// property.
///
/// `$make` is a path to an `async fn() -> Option<F>` where
/// `F: `[`BackendFactory`](crate::BackendFactory). Every test calls it to get
/// its own factory (its own namespace: registry name, schema, prefix), then
/// runs the property on it. `None` means the backend's service is not
/// available: the function has already printed a `SKIPPED` line (see
/// [`service_env`](crate::service_env)) and the test returns.
///
/// Each test runs on a multi-threaded runtime with two workers, which the
/// racing and waiting properties need.
///
/// # Usage
///
/// A backend's `tests/conformance.rs` (with `tokio` as a dev-dependency,
/// features `macros` and `rt-multi-thread`):
///
/// ```ignore
/// use tidemark_backend_conformance::{BackendFactory, conformance_tests, service_env};
///
/// struct PostgresFactory { /* a pool and a fresh schema name */ }
///
/// #[async_trait::async_trait]
/// impl BackendFactory for PostgresFactory {
///     type Backend = PostgresBackend;
///     async fn open_handle(&self) -> PostgresBackend { /* a handle on the schema */ }
/// }
///
/// async fn make_factory() -> Option<PostgresFactory> {
///     let url = service_env("TIDEMARK_TEST_POSTGRES_URL", "postgres conformance")?;
///     Some(PostgresFactory::new(&url).await)
/// }
///
/// conformance_tests!(make_factory);
/// ```
///
/// Run one property with `cargo test -p <backend> --test conformance <name>`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@properties $make;
            open::open_creates_shard_at_minimum_frontiers,
            open::open_is_idempotent,
            open::open_through_another_handle_sees_the_same_shard,
            open::list_shards_lists_opened_shards_sorted,
            open::shards_are_isolated,
            open::open_does_not_unseal_a_sealed_shard,
            unknown::frontiers_of_unknown_shard_is_rejected,
            unknown::append_to_unknown_shard_is_rejected,
            unknown::snapshot_of_unknown_shard_is_rejected,
            unknown::fetch_of_unknown_shard_is_rejected,
            unknown::wait_on_unknown_shard_is_rejected,
            unknown::downgrade_since_of_unknown_shard_is_rejected,
            unknown::compact_of_unknown_shard_is_rejected,
            unknown::usage_of_unknown_shard_is_rejected,
            unknown::finalize_of_unknown_shard_is_rejected,
            datums::null_datums_round_trip,
            datums::bool_datums_round_trip,
            datums::int64_datums_round_trip,
            datums::float64_datums_round_trip,
            datums::string_datums_round_trip,
            datums::bytes_datums_round_trip,
            datums::timestamp_datums_round_trip,
            datums::rows_of_any_arity_round_trip,
            append::append_advances_upper_and_writes,
            append::stale_expected_upper_mismatches_and_writes_nothing,
            append::expected_upper_ahead_of_current_mismatches,
            append::update_before_expected_upper_is_rejected,
            append::update_at_or_beyond_new_upper_is_rejected,
            append::new_upper_behind_expected_is_upper_regression,
            append::empty_append_advances_upper,
            append::append_with_equal_uppers_changes_nothing,
            append::empty_new_upper_seals_the_shard,
            append::sealing_append_accepts_any_later_time,
            append::times_across_the_whole_u64_range_round_trip,
            read::snapshot_before_since_is_not_readable,
            read::snapshot_at_or_after_upper_is_not_readable,
            read::snapshot_is_consolidated_and_sorted,
            read::snapshot_sees_only_updates_at_or_before_as_of,
            read::fetch_returns_range_advanced_by_since,
            read::fetch_with_lower_after_upper_is_rejected,
            read::fetch_beyond_shard_upper_is_rejected,
            read::consecutive_fetches_partition_the_updates,
            read::sealed_shard_fetches_to_the_empty_frontier,
            read::zero_diff_updates_are_invisible,
            read::large_diffs_sum_exactly,
            wait::wait_returns_at_once_when_upper_already_past,
            wait::wait_wakes_when_another_handle_appends,
            wait::wait_past_empty_frontier_is_rejected,
            wait::wait_wakes_when_the_shard_is_sealed,
            wait::cancelled_waits_leave_the_shard_usable,
            wait::wait_on_a_sealed_shard_returns_at_once,
            since::downgrade_since_advances_since,
            since::downgrade_to_earlier_since_returns_current,
            since::since_may_pass_upper,
            since::concurrent_downgrades_join,
            fencing::stale_epoch_append_is_refused_and_writes_nothing,
            fencing::stale_epoch_since_downgrade_is_refused,
            fencing::higher_epoch_fences_the_lower,
            fencing::racing_writers_only_the_new_one_lands_after_the_fence,
            fencing::unfenced_writes_still_work,
            token_window::retry_inside_the_window_resolves,
            token_window::retry_outside_the_window_is_undetermined,
            compaction::snapshot_after_compaction_equals_model_at_every_as_of,
            compaction::compaction_reduces_stored_updates,
            compaction::compaction_is_idempotent,
            compaction::fetch_after_compaction_is_unchanged,
            compaction::appends_after_compaction_accumulate,
            compaction::usage_counts_stored_updates,
            finalize::finalize_seals_and_frees,
            finalize::finalize_is_idempotent,
            finalize::finalized_shard_rejects_appends,
            finalize::finalized_shard_is_not_readable,
            finalize::finalize_wakes_upper_waiters,
            concurrency::racing_writers_exactly_one_wins_each_round,
            concurrency::handles_see_each_others_writes,
            concurrency::concurrent_writers_on_separate_shards_all_succeed,
            concurrency::reads_below_an_observed_upper_see_every_append,
            concurrency::compaction_racing_appends_is_invisible,
            idempotency::retry_with_same_token_after_success_applies_once,
            idempotency::different_token_with_stale_upper_mismatches,
            idempotency::token_is_remembered_across_127_later_appends,
            idempotency::fresh_token_after_retry_appends_normally,
            idempotency::retry_of_a_sealing_append_answers_success,
            share::snapshot_shares_consolidate_to_the_snapshot,
            share::fetch_shares_consolidate_to_the_fetch,
            share::shares_hold_the_same_updates_in_every_read,
            share::invalid_share_is_rejected,
            streamed::snapshot_stream_concatenates_to_the_snapshot,
            streamed::fetch_stream_concatenates_to_the_fetch,
            streamed::stream_chunks_are_non_empty_and_within_the_entry_limit,
            streamed::stream_chunks_are_within_the_byte_limit,
            streamed::snapshot_stream_chunks_come_in_row_order,
            streamed::fetch_stream_chunks_come_in_time_then_row_order,
            streamed::snapshot_stream_is_fixed_at_the_call,
            streamed::fetch_stream_is_fixed_at_the_call,
            streamed::dropping_a_stream_part_way_leaves_the_shard_usable,
            streamed::snapshot_stream_at_an_unreadable_as_of_is_rejected_at_the_call,
            streamed::fetch_stream_with_an_invalid_range_is_rejected_at_the_call,
            streamed::stream_with_an_invalid_share_or_shard_is_rejected_at_the_call,
            size::million_update_append_and_snapshot,
            model::random_operations_match_the_model,
            model::random_operations_with_streamed_reads_match_the_model,
            fault_tolerance::faulty_appends_with_token_retries_lose_and_duplicate_nothing,
            fault_tolerance::racing_faulty_writers_lose_and_duplicate_nothing,
            fault_tolerance::determinate_faults_never_apply,
            fault_tolerance::indeterminate_faults_after_the_call_did_apply,
            fault_tolerance::fault_injection_is_reproducible_from_the_seed,
            atomic_append::append_all_writes_nothing_when_one_shard_mismatches,
            atomic_append::append_all_invalid_part_refuses_the_call,
            atomic_append::append_all_is_never_seen_in_part_by_concurrent_readers,
            atomic_append::append_all_retry_with_same_token_applies_once,
            atomic_append::append_all_stale_fence_on_one_shard_refuses_the_call,
            atomic_append::append_all_duplicate_shard_is_rejected,
            atomic_append::append_all_empty_call_writes_nothing,
            atomic_append::append_all_of_one_shard_equals_compare_and_append,
            atomic_append::append_all_racing_calls_on_a_shared_shard_exactly_one_wins,
            atomic_append::append_all_faulty_calls_with_token_retries_apply_once,
            atomic_model::append_all_random_calls_match_the_model,
        );
    };
    (@properties $make:path; $($module:ident :: $property:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $property() {
                let Some(factory) = $make().await else {
                    return;
                };
                $crate::$module::$property(&factory).await;
            }
        )*
    };
}
