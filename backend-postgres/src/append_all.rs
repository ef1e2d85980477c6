//! `compare_and_append_all`: one transaction over every shard of the call.
//!
//! The transaction locks the shards' rows (`SELECT ... FOR UPDATE`, in
//! shard-id order, so two calls sharing shards never deadlock), then, with
//! every row locked, checks the tokens, the fences and the uppers. If any
//! check fails it rolls back: nothing was written. Otherwise it runs each
//! part's append statement (inline `UNNEST` inserts, or `COPY` for large
//! parts), which moves the part's upper, raises its epoch, records the
//! token and `NOTIFY`s, and commits once. PostgreSQL makes the commit
//! visible to every later snapshot at once, so no reader sees one shard's
//! part without the others'. A one-part call is the single-shard append. See
//! `docs/decisions/110-atomic-multi-collection-appends.md`.

use std::collections::BTreeMap;

use differential_dataflow::consolidation::consolidate_updates;
use tidemark_storage_types::{
    BackendError, IdempotencyToken, Row, ShardAppend, ShardId, StorageTimestamp, UpperMismatch,
    UpperMismatches, WriteFence, contract, decode_frontier, encode_frontier,
};

use crate::PostgresBackend;
use crate::append::{
    Attempt, AttemptArgs, Columns, append_by_copy, oldest_remembered_lower, run_append_statement,
};
use crate::errors::statement_error;
use crate::read::{ShardRow, check_row_fence, epoch_parameter, unknown_shard};

/// A locked shard row: id, since, upper, finalized, writer epoch.
type LockedRow = (uuid::Uuid, Option<i64>, Option<i64>, bool, i64);

/// One part, consolidated and encoded.
struct Part<T> {
    shard: ShardId,
    updates: Vec<(Row, T, i64)>,
    expected_upper: timely::progress::Antichain<T>,
    new_upper: timely::progress::Antichain<T>,
    expected_code: Option<i64>,
    new_code: Option<i64>,
}

pub(crate) async fn compare_and_append_all<T: StorageTimestamp>(
    backend: &PostgresBackend,
    appends: Vec<ShardAppend<T>>,
    token: IdempotencyToken,
    fence: WriteFence,
) -> Result<Result<(), UpperMismatches<T>>, BackendError> {
    contract::check_append_all(&appends)?;
    if appends.len() == 1 {
        // A one-part call is exactly `compare_and_append` (the contract), so
        // it takes the single-shard statement: one round trip instead of a
        // locking transaction.
        let append = appends.into_iter().next().expect("one part");
        let shard = append.shard;
        let outcome = crate::append::compare_and_append(
            backend,
            shard,
            append.updates,
            append.expected_upper,
            append.new_upper,
            token,
            fence,
        )
        .await?;
        return Ok(outcome.map_err(|mismatch| UpperMismatches {
            mismatches: vec![(shard, mismatch)],
        }));
    }
    let Some(first) = appends.first() else {
        return Ok(Ok(()));
    };
    let epoch = epoch_parameter(first.shard, fence)?;
    let parts: Vec<Part<T>> = appends
        .into_iter()
        .map(|append| {
            let mut updates: Vec<(Row, T, i64)> = append
                .updates
                .into_iter()
                .map(|update| (update.row, update.timestamp, update.diff))
                .collect();
            consolidate_updates(&mut updates);
            Part {
                shard: append.shard,
                updates,
                expected_code: encode_frontier(&append.expected_upper),
                new_code: encode_frontier(&append.new_upper),
                expected_upper: append.expected_upper,
                new_upper: append.new_upper,
            }
        })
        .collect();
    let context = format!(
        "schema={} shards={}",
        backend.schema(),
        parts
            .iter()
            .map(|part| part.shard.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let fail = |err| statement_error(err, &context);
    let mut conn = backend.acquire().await?;
    let copy_mark = conn.in_flight_mark();
    let mut tx = conn.begin().await.map_err(fail)?;

    // SUBTLE: every row is locked, in shard-id order, before anything is
    // checked, and the locks are held until commit, so no other write can
    // move an upper between the checks and the writes.
    let mut ids: Vec<uuid::Uuid> = parts.iter().map(|part| part.shard.0).collect();
    ids.sort_unstable();
    let locked: Vec<LockedRow> = sqlx::query_as(
        "SELECT shard_id, since, upper, finalized, writer_epoch FROM shards
         WHERE shard_id = ANY($1) ORDER BY shard_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(fail)?;
    let rows: BTreeMap<uuid::Uuid, ShardRow> = locked
        .into_iter()
        .map(|(id, since, upper, finalized, writer_epoch)| {
            (
                id,
                ShardRow {
                    since,
                    upper,
                    finalized,
                    writer_epoch,
                },
            )
        })
        .collect();
    if let Some(missing) = parts.iter().find(|part| !rows.contains_key(&part.shard.0)) {
        return Err(unknown_shard(missing.shard));
    }

    // SUBTLE: the tokens are read by a statement after the locks were
    // granted, so its snapshot sees every commit of a writer the locks
    // waited for, an earlier attempt of this call included.
    let recorded: Vec<(uuid::Uuid, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT shard_id, expected_upper, new_upper FROM append_tokens
         WHERE token = $1 AND shard_id = ANY($2)",
    )
    .bind(token.0)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(fail)?;
    // The call applied on every shard or on none: one shard that remembers
    // the token with its part's bounds is proof that it applied.
    let applied = parts.iter().any(|part| {
        recorded.iter().any(|(id, expected, new)| {
            *id == part.shard.0 && *expected == part.expected_code && *new == part.new_code
        })
    });
    if applied {
        tx.rollback().await.map_err(fail)?;
        return Ok(Ok(()));
    }
    for part in &parts {
        check_row_fence(part.shard, &rows[&part.shard.0], fence)?;
    }
    let mut mismatches = Vec::new();
    for part in &parts {
        let row = &rows[&part.shard.0];
        if row.upper != part.expected_code {
            let oldest = oldest_remembered_lower(&mut tx, part.shard, &context).await?;
            let earlier_attempts =
                contract::earlier_attempts(&part.new_upper, oldest.map(decode_frontier).as_ref());
            mismatches.push((
                part.shard,
                UpperMismatch {
                    expected: part.expected_upper.clone(),
                    current: decode_frontier(row.upper),
                    earlier_attempts,
                },
            ));
        }
    }
    if !mismatches.is_empty() {
        tx.rollback().await.map_err(fail)?;
        return Ok(Err(UpperMismatches { mismatches }));
    }

    for part in &parts {
        if rows[&part.shard.0].finalized {
            // Its upper is `[]` and was expected: a part from `[]` holds no
            // update, so there is nothing to write.
            continue;
        }
        let columns = Columns {
            times: part.updates.iter().map(|(_, t, _)| t.encode()).collect(),
            rows: part
                .updates
                .iter()
                .map(|(row, _, _)| row.as_bytes())
                .collect(),
            diffs: part.updates.iter().map(|(_, _, diff)| *diff).collect(),
        };
        let args = AttemptArgs {
            shard: part.shard,
            columns: &columns,
            expected_code: part.expected_code,
            new_code: part.new_code,
            token,
            fence,
            epoch,
            context: &context,
        };
        let attempt = if columns.times.len() >= backend.config().copy_threshold {
            append_by_copy(backend, &mut tx, args, &copy_mark).await?
        } else {
            run_append_statement(backend, &mut tx, args).await?
        };
        if let Attempt::UpperDidNotMatch = attempt {
            // Impossible while the row locks are held; dropping the
            // transaction rolls every part back.
            return Err(BackendError::indeterminate(format!(
                "shard upper changed while its row was locked: shard={} {context}",
                part.shard
            )));
        }
    }
    tx.commit().await.map_err(fail)?;
    Ok(Ok(()))
}
