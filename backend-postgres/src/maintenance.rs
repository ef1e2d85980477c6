//! Logical compaction (`downgrade_since`), physical compaction (`compact`)
//! and `finalize`.

use sqlx::PgConnection;
use tidemark_storage_types::{
    BackendError, CompactionStats, ShardId, StorageTimestamp, WriteFence,
};
use timely::progress::Antichain;

use crate::PostgresBackend;
use crate::errors::statement_error;
use crate::read::{check_row_fence, context, epoch_parameter, read_shard_row, unknown_shard};
use crate::schema::BATCH_MAX_UPDATES;
use tidemark_storage_types::{decode_frontier, encode_frontier};

pub(crate) async fn downgrade_since<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    new_since: &Antichain<T>,
    fence: WriteFence,
) -> Result<Antichain<T>, BackendError> {
    let context = context(backend, shard);
    let epoch = epoch_parameter(shard, fence)?;
    let mut conn = backend.acquire().await?;
    // The join of two totally ordered frontiers is the later one; the empty
    // frontier (NULL) is the latest of all.
    let since: Option<Option<i64>> = sqlx::query_scalar(
        "UPDATE shards
         SET since = CASE WHEN since IS NULL OR $2::BIGINT IS NULL THEN NULL ELSE greatest(since, $2) END,
             writer_epoch = greatest(writer_epoch, coalesce($3::BIGINT, writer_epoch))
         WHERE shard_id = $1 AND ($3::BIGINT IS NULL OR writer_epoch <= $3::BIGINT)
         RETURNING since",
    )
    .bind(shard.0)
    .bind(encode_frontier(new_since))
    .bind(epoch)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|err| statement_error(err, &context))?;
    if let Some(since) = since {
        return Ok(decode_frontier(since));
    }
    // No row matched: a fenced write (the epoch only rises, so the re-read
    // refuses it too), or a shard that did not exist when the statement ran.
    let row = read_shard_row(&mut conn, shard, false, &context)
        .await?
        .ok_or_else(|| unknown_shard(shard))?;
    check_row_fence(shard, &row, fence)?;
    Err(unknown_shard(shard))
}

/// Stored updates and bytes of a shard, as [`usage`](crate::read::usage)
/// counts them.
async fn stored(
    conn: &mut PgConnection,
    shard: ShardId,
    context: &str,
) -> Result<(u64, u64), BackendError> {
    let (updates, bytes): (i64, i64) = sqlx::query_as(
        "SELECT
            (SELECT count(*) FROM updates WHERE shard_id = $1)
                + (SELECT coalesce(sum(update_count), 0) FROM update_batches WHERE shard_id = $1)::BIGINT,
            (SELECT coalesce(sum(octet_length(row_bytes) + 16), 0)::BIGINT FROM updates WHERE shard_id = $1)
                + (SELECT coalesce(sum(byte_count), 0) FROM update_batches WHERE shard_id = $1)::BIGINT",
    )
    .bind(shard.0)
    .fetch_one(&mut *conn)
    .await
    .map_err(|err| statement_error(err, context))?;
    Ok((
        u64::try_from(updates).unwrap_or(0),
        u64::try_from(bytes).unwrap_or(0),
    ))
}

/// Physical compaction to the since `$2` of shard `$1`, in one statement:
/// every `updates` row at a time not after the since and every
/// `update_batches` row are deleted, and what they held is written back
/// consolidated, times advanced by the since, as batch rows of at most `$3`
/// updates each. Updates at times after the since keep their times; rows
/// of `updates` after the since are left in place.
///
/// The output goes to `update_batches` because it is written in bulk: one
/// index entry per batch instead of one per update, as for large appends.
const COMPACT_STATEMENT: &str = "
WITH removed_rows AS (
    DELETE FROM updates WHERE shard_id = $1 AND ts <= $2
    RETURNING ts, row_bytes, diff
),
removed_batches AS (
    DELETE FROM update_batches WHERE shard_id = $1
    RETURNING ts, row_bytes, diffs
),
consolidated AS (
    SELECT advanced, row_bytes, sum(diff)::BIGINT AS diff FROM (
        SELECT greatest(ts, $2) AS advanced, row_bytes, diff FROM removed_rows
        UNION ALL
        SELECT greatest(ts, $2), row_bytes, diff FROM (
            SELECT unnest(ts) AS ts, unnest(row_bytes) AS row_bytes, unnest(diffs) AS diff
            FROM removed_batches
        ) unnested
    ) stored
    GROUP BY advanced, row_bytes HAVING sum(diff) <> 0
),
numbered AS (
    SELECT advanced, row_bytes, diff,
        (row_number() OVER (ORDER BY advanced, row_bytes) - 1) / $3 AS piece
    FROM consolidated
)
INSERT INTO update_batches
    (shard_id, min_ts, max_ts, update_count, byte_count, ts, row_bytes, diffs)
SELECT $1, min(advanced), max(advanced), count(*), sum(octet_length(row_bytes) + 16)::BIGINT,
    array_agg(advanced ORDER BY advanced, row_bytes),
    array_agg(row_bytes ORDER BY advanced, row_bytes),
    array_agg(diff ORDER BY advanced, row_bytes)
FROM numbered GROUP BY piece";

/// Deletes every stored update of the shard, in both layouts.
async fn delete_data(
    conn: &mut PgConnection,
    shard: ShardId,
    context: &str,
) -> Result<(), BackendError> {
    for statement in [
        "DELETE FROM updates WHERE shard_id = $1",
        "DELETE FROM update_batches WHERE shard_id = $1",
    ] {
        sqlx::query(statement)
            .bind(shard.0)
            .execute(&mut *conn)
            .await
            .map_err(|err| statement_error(err, context))?;
    }
    Ok(())
}

pub(crate) async fn compact(
    backend: &PostgresBackend,
    shard: ShardId,
) -> Result<CompactionStats, BackendError> {
    let context = context(backend, shard);
    let fail = |err| statement_error(err, &context);
    let mut conn = backend.acquire().await?;
    let mut tx = conn.begin().await.map_err(fail)?;
    // SUBTLE: the shard row lock keeps appends out while the rewrite runs:
    // with since ahead of upper, an append may add updates at times not
    // beyond since, which this transaction must either see whole or not at
    // all.
    let row = read_shard_row(&mut tx, shard, true, &context)
        .await?
        .ok_or_else(|| unknown_shard(shard))?;
    let (updates_before, bytes_before) = stored(&mut tx, shard, &context).await?;
    match row.since {
        Some(since) => {
            // One statement: the deletes and the consolidated insert read
            // the same snapshot, and nothing passes through this process.
            sqlx::query(COMPACT_STATEMENT)
                .bind(shard.0)
                .bind(since)
                .bind(i64::try_from(BATCH_MAX_UPDATES).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
        }
        None => {
            // An empty since: no read is valid ever again, so nothing stored
            // can be observed.
            delete_data(&mut tx, shard, &context).await?;
        }
    }
    let (updates_after, bytes_after) = stored(&mut tx, shard, &context).await?;
    tx.commit().await.map_err(fail)?;
    Ok(CompactionStats {
        updates_before,
        updates_after,
        bytes_before,
        bytes_after,
    })
}

pub(crate) async fn finalize(
    backend: &PostgresBackend,
    shard: ShardId,
) -> Result<(), BackendError> {
    let context = context(backend, shard);
    let fail = |err| statement_error(err, &context);
    let mut conn = backend.acquire().await?;
    let mut tx = conn.begin().await.map_err(fail)?;
    let row = read_shard_row(&mut tx, shard, true, &context)
        .await?
        .ok_or_else(|| unknown_shard(shard))?;
    if row.finalized {
        return Ok(());
    }
    delete_data(&mut tx, shard, &context).await?;
    sqlx::query("DELETE FROM append_tokens WHERE shard_id = $1")
        .bind(shard.0)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    // The row stays as a sealed tombstone: opening the shard again reports
    // since = upper = [] instead of creating a fresh, writable shard.
    sqlx::query(
        "UPDATE shards SET since = NULL, upper = NULL, finalized = true WHERE shard_id = $1",
    )
    .bind(shard.0)
    .execute(&mut *tx)
    .await
    .map_err(fail)?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(backend.shared.watch.channel())
        .bind(shard.0.to_string())
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    Ok(())
}
