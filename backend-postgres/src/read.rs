//! Reads: open, frontiers, snapshot, fetch, usage, list.
//!
//! Snapshot and fetch run in one `REPEATABLE READ READ ONLY` transaction:
//! the frontier check and the data come from the same database snapshot, so
//! a concurrent compaction (which moves times up to a newer since) or
//! finalization cannot make a read see a state its check did not allow.

use futures::TryStreamExt;
use sqlx::PgConnection;
use tidemark_storage_types::{
    BackendError, DeterminateKind, Diff, InvalidUsage, ReadShare, Row, ShardFrontiers, ShardId,
    ShardUsage, StorageTimestamp, Update, WriteFence, contract,
};
use timely::progress::Antichain;

use crate::PostgresBackend;
use crate::errors::statement_error;
use crate::frontier::decode_frontiers;
use tidemark_storage_types::{decode_frontier, encode_frontier};

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

/// The snapshot at `as_of` of the rows `share` holds. A share other than
/// the whole is filtered in SQL by a hash of the row bytes, so the server
/// sends only that share.
pub(crate) async fn snapshot<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    as_of: &T,
    share: ReadShare,
) -> Result<Vec<(Row, Diff)>, BackendError> {
    share.check(shard)?;
    let context = context(backend, shard);
    let fail = |err| statement_error(err, &context);
    let mut conn = backend.acquire().await?;
    let mut tx = conn.begin().await.map_err(fail)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    let row = read_shard_row(&mut tx, shard, false, &context)
        .await?
        .ok_or_else(|| unknown_shard(shard))?;
    let frontiers: ShardFrontiers<T> = decode_frontiers(row.since, row.upper);
    contract::check_readable(shard, &frontiers.since, &frontiers.upper, as_of)?;
    let mut contents = Vec::new();
    {
        let statement = if share == ReadShare::WHOLE {
            "SELECT row_bytes, sum(diff)::BIGINT FROM updates
             WHERE shard_id = $1 AND ts <= $2
             GROUP BY row_bytes HAVING sum(diff) <> 0"
        } else {
            "SELECT row_bytes, sum(diff)::BIGINT FROM updates
             WHERE shard_id = $1 AND ts <= $2
               AND (('x' || left(md5(row_bytes), 8))::bit(32)::BIGINT % $3::BIGINT) = $4::BIGINT
             GROUP BY row_bytes HAVING sum(diff) <> 0"
        };
        let mut query = sqlx::query_as::<_, (Vec<u8>, i64)>(statement)
            .bind(shard.0)
            .bind(as_of.encode());
        if share != ReadShare::WHOLE {
            query = query
                .bind(i64::from(share.count))
                .bind(i64::from(share.index));
        }
        let mut rows = query.fetch(&mut *tx);
        while let Some((bytes, diff)) = rows.try_next().await.map_err(fail)? {
            contents.push((decode_row(&bytes, &context)?, diff));
        }
    }
    tx.commit().await.map_err(fail)?;
    contents.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(contents)
}

/// The fetch of `[lower, upper)` of the rows `share` holds (filtered in SQL
/// as [`snapshot`] does).
pub(crate) async fn fetch<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    share: ReadShare,
) -> Result<Vec<Update<T>>, BackendError> {
    share.check(shard)?;
    let context = context(backend, shard);
    let fail = |err| statement_error(err, &context);
    let mut conn = backend.acquire().await?;
    let mut tx = conn.begin().await.map_err(fail)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    let row = read_shard_row(&mut tx, shard, false, &context)
        .await?
        .ok_or_else(|| unknown_shard(shard))?;
    let shard_upper: Antichain<T> = decode_frontier(row.upper);
    contract::check_fetch_range(shard, lower, upper, &shard_upper)?;
    // Times are advanced by the since before the range applies, so the
    // answer does not depend on whether physical compaction has run:
    // advance(t) = max(t, since) is in [lower, upper) iff
    // (t >= lower or since >= lower) and t < upper and since < upper.
    let since = row.since;
    let lower_code = encode_frontier(lower);
    let upper_code = encode_frontier(upper);
    let Some(since_code) = since else {
        // An empty since: nothing can ever be read again.
        tx.commit().await.map_err(fail)?;
        return Ok(Vec::new());
    };
    let Some(lower_code) = lower_code else {
        // An empty lower: the range [[], upper) is empty.
        tx.commit().await.map_err(fail)?;
        return Ok(Vec::new());
    };
    if upper_code.is_some_and(|upper_code| since_code >= upper_code) {
        tx.commit().await.map_err(fail)?;
        return Ok(Vec::new());
    }
    let mut updates = Vec::new();
    {
        let statement = if share == ReadShare::WHOLE {
            "SELECT greatest(ts, $2) AS advanced, row_bytes, sum(diff)::BIGINT FROM updates
             WHERE shard_id = $1
               AND (ts >= $3 OR $2 >= $3)
               AND ($4::BIGINT IS NULL OR ts < $4)
             GROUP BY advanced, row_bytes HAVING sum(diff) <> 0"
        } else {
            "SELECT greatest(ts, $2) AS advanced, row_bytes, sum(diff)::BIGINT FROM updates
             WHERE shard_id = $1
               AND (ts >= $3 OR $2 >= $3)
               AND ($4::BIGINT IS NULL OR ts < $4)
               AND (('x' || left(md5(row_bytes), 8))::bit(32)::BIGINT % $5::BIGINT) = $6::BIGINT
             GROUP BY advanced, row_bytes HAVING sum(diff) <> 0"
        };
        let mut query = sqlx::query_as::<_, (i64, Vec<u8>, i64)>(statement)
            .bind(shard.0)
            .bind(since_code)
            .bind(lower_code)
            .bind(upper_code);
        if share != ReadShare::WHOLE {
            query = query
                .bind(i64::from(share.count))
                .bind(i64::from(share.index));
        }
        let mut rows = query.fetch(&mut *tx);
        while let Some((time, bytes, diff)) = rows.try_next().await.map_err(fail)? {
            updates.push(Update::new(
                decode_row(&bytes, &context)?,
                T::decode(time),
                diff,
            ));
        }
    }
    tx.commit().await.map_err(fail)?;
    updates.sort_unstable_by(|a, b| (a.timestamp, &a.row).cmp(&(b.timestamp, &b.row)));
    Ok(updates)
}

pub(crate) async fn usage(
    backend: &PostgresBackend,
    shard: ShardId,
) -> Result<ShardUsage, BackendError> {
    let context = context(backend, shard);
    let mut conn = backend.acquire().await?;
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT
            (SELECT count(*) FROM updates WHERE shard_id = $1),
            (SELECT coalesce(sum(octet_length(row_bytes) + 16), 0)::BIGINT FROM updates WHERE shard_id = $1)
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

/// A stored row, checked.
fn decode_row(bytes: &[u8], context: &str) -> Result<Row, BackendError> {
    Row::from_bytes(bytes).map_err(|err| {
        BackendError::determinate(
            DeterminateKind::Corrupted,
            format!("stored row is not a valid row encoding: {err}: {context}"),
        )
    })
}
