//! Reads of shard metadata: open, frontiers, usage, list, and the shard
//! row the other operations read or lock. Snapshots and fetches are in
//! [`stream`](crate::stream).

use sqlx::PgConnection;
use tidemark_storage_types::{
    BackendError, DeterminateKind, InvalidUsage, ShardFrontiers, ShardId, ShardUsage,
    StorageTimestamp, WriteFence, contract,
};

use crate::PostgresBackend;
use crate::errors::statement_error;
use crate::frontier::decode_frontiers;

/// A shard's row: since, upper (stored form) and whether it is finalized.
pub(crate) struct ShardRow {
    pub since: Option<i64>,
    pub upper: Option<i64>,
    pub finalized: bool,
    /// The highest writer epoch a fenced write brought.
    pub writer_epoch: i64,
}

pub(crate) fn context(backend: &PostgresBackend, shard: ShardId) -> String {
    format!("schema={} shard={shard}", backend.schema())
}

pub(crate) fn unknown_shard(shard: ShardId) -> BackendError {
    BackendError::InvalidUsage(InvalidUsage::UnknownShard { shard })
}

/// Reads the shard's row (`FOR UPDATE` when `lock`), or `None` if the shard
/// was never opened.
pub(crate) async fn read_shard_row(
    conn: &mut PgConnection,
    shard: ShardId,
    lock: bool,
    context: &str,
) -> Result<Option<ShardRow>, BackendError> {
    let sql = if lock {
        "SELECT since, upper, finalized, writer_epoch FROM shards WHERE shard_id = $1 FOR UPDATE"
    } else {
        "SELECT since, upper, finalized, writer_epoch FROM shards WHERE shard_id = $1"
    };
    let row: Option<(Option<i64>, Option<i64>, bool, i64)> = sqlx::query_as(sql)
        .bind(shard.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|err| statement_error(err, context))?;
    Ok(row.map(|(since, upper, finalized, writer_epoch)| ShardRow {
        since,
        upper,
        finalized,
        writer_epoch,
    }))
}

/// A write fence as the epoch parameter the statements take: `NULL` for
/// [`WriteFence::Unfenced`].
///
/// # Errors
///
/// `Determinate(Unsupported)` for an epoch beyond `i64::MAX`, which the
/// `BIGINT` column cannot hold.
pub(crate) fn epoch_parameter(
    shard: ShardId,
    fence: WriteFence,
) -> Result<Option<i64>, BackendError> {
    match fence {
        WriteFence::Unfenced => Ok(None),
        WriteFence::Epoch(epoch) => i64::try_from(epoch).map(Some).map_err(|_| {
            BackendError::determinate(
                DeterminateKind::Unsupported,
                format!("writer epoch is beyond what PostgreSQL stores (i64::MAX): shard={shard} epoch={epoch}"),
            )
        }),
    }
}

/// Refuses a fenced write whose epoch is below the shard row's.
pub(crate) fn check_row_fence(
    shard: ShardId,
    row: &ShardRow,
    fence: WriteFence,
) -> Result<(), BackendError> {
    contract::check_fence(shard, u64::try_from(row.writer_epoch).unwrap_or(0), fence).map(|_| ())
}

pub(crate) async fn open<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
) -> Result<ShardFrontiers<T>, BackendError> {
    let context = context(backend, shard);
    let mut conn = backend.acquire().await?;
    let minimum = T::minimum().encode();
    sqlx::query(
        "INSERT INTO shards (shard_id, since, upper) VALUES ($1, $2, $2) ON CONFLICT (shard_id) DO NOTHING",
    )
    .bind(shard.0)
    .bind(minimum)
    .execute(&mut *conn)
    .await
    .map_err(|err| statement_error(err, &context))?;
    // A concurrent opener's insert has committed by now (ON CONFLICT waits
    // for it), and this statement takes a new snapshot that sees it.
    let row = read_shard_row(&mut conn, shard, false, &context)
        .await?
        .ok_or_else(|| {
            BackendError::indeterminate(format!("shard row vanished after open: {context}"))
        })?;
    Ok(decode_frontiers(row.since, row.upper))
}

pub(crate) async fn frontiers<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
) -> Result<ShardFrontiers<T>, BackendError> {
    let context = context(backend, shard);
    let mut conn = backend.acquire().await?;
    let row = read_shard_row(&mut conn, shard, false, &context)
        .await?
        .ok_or_else(|| unknown_shard(shard))?;
    Ok(decode_frontiers(row.since, row.upper))
}

pub(crate) async fn usage(
    backend: &PostgresBackend,
    shard: ShardId,
) -> Result<ShardUsage, BackendError> {
    let context = context(backend, shard);
    let mut conn = backend.acquire().await?;
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT
            (SELECT count(*) FROM updates WHERE shard_id = $1)
                + (SELECT coalesce(sum(update_count), 0) FROM update_batches WHERE shard_id = $1)::BIGINT,
            (SELECT coalesce(sum(octet_length(row_bytes) + 16), 0)::BIGINT FROM updates WHERE shard_id = $1)
                + (SELECT coalesce(sum(byte_count), 0) FROM update_batches WHERE shard_id = $1)::BIGINT
         FROM shards WHERE shard_id = $1",
    )
    .bind(shard.0)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|err| statement_error(err, &context))?;
    let (updates, bytes) = row.ok_or_else(|| unknown_shard(shard))?;
    Ok(ShardUsage {
        updates: u64::try_from(updates).unwrap_or(0),
        bytes: u64::try_from(bytes).unwrap_or(0),
    })
}

pub(crate) async fn list_shards(backend: &PostgresBackend) -> Result<Vec<ShardId>, BackendError> {
    let context = format!("schema={}", backend.schema());
    let mut conn = backend.acquire().await?;
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT shard_id FROM shards WHERE NOT finalized")
            .fetch_all(&mut *conn)
            .await
            .map_err(|err| statement_error(err, &context))?;
    let mut shards: Vec<ShardId> = ids.into_iter().map(ShardId).collect();
    shards.sort_unstable();
    Ok(shards)
}
