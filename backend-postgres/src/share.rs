//! Shares of snapshots and fetches, divided by the server: the query keeps
//! only the rows whose hash (the first 32 bits of the MD5 of the row's
//! bytes) modulo the share count is the share index, so each reader
//! receives and decodes only its share. The shares of one read are disjoint
//! by row. The index and count are bound parameters like every other value.
//!
//! Like the whole reads (see `read.rs`), each runs in one
//! `REPEATABLE READ READ ONLY` transaction.

use futures::TryStreamExt;
use sqlx::Connection;
use tidemark_storage_types::{
    BackendError, DeterminateKind, Diff, ReadShare, Row, ShardFrontiers, ShardId, StorageTimestamp,
    Update, contract,
};
use timely::progress::Antichain;

use crate::PostgresBackend;
use crate::errors::statement_error;
use crate::frontier::decode_frontiers;
use crate::read::{context, read_shard_row, unknown_shard};
use tidemark_storage_types::{decode_frontier, encode_frontier};

pub(crate) async fn snapshot_share<T: StorageTimestamp>(
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
        let mut rows = sqlx::query_as::<_, (Vec<u8>, i64)>(
            "SELECT row_bytes, sum(diff)::BIGINT FROM updates
             WHERE shard_id = $1 AND ts <= $2
               AND ($3::BIGINT = 1
                    OR (('x' || left(md5(row_bytes), 8))::bit(32)::BIGINT % $3::BIGINT) = $4::BIGINT)
             GROUP BY row_bytes HAVING sum(diff) <> 0",
        )
        .bind(shard.0)
        .bind(as_of.encode())
        .bind(i64::from(share.count))
        .bind(i64::from(share.index))
        .fetch(&mut *tx);
        while let Some((bytes, diff)) = rows.try_next().await.map_err(fail)? {
            contents.push((decode_row(&bytes, &context)?, diff));
        }
    }
    tx.commit().await.map_err(fail)?;
    contents.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(contents)
}

pub(crate) async fn fetch_share<T: StorageTimestamp>(
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
    // The same range condition as the whole fetch (times advanced by the
    // since before the range applies), plus the share's row filter.
    let (Some(since_code), Some(lower_code)) = (row.since, encode_frontier(lower)) else {
        tx.commit().await.map_err(fail)?;
        return Ok(Vec::new());
    };
    let upper_code = encode_frontier(upper);
    if upper_code.is_some_and(|upper_code| since_code >= upper_code) {
        tx.commit().await.map_err(fail)?;
        return Ok(Vec::new());
    }
    let mut updates = Vec::new();
    {
        let mut rows = sqlx::query_as::<_, (i64, Vec<u8>, i64)>(
            "SELECT greatest(ts, $2) AS advanced, row_bytes, sum(diff)::BIGINT FROM updates
             WHERE shard_id = $1
               AND (ts >= $3 OR $2 >= $3)
               AND ($4::BIGINT IS NULL OR ts < $4)
               AND ($5::BIGINT = 1
                    OR (('x' || left(md5(row_bytes), 8))::bit(32)::BIGINT % $5::BIGINT) = $6::BIGINT)
             GROUP BY advanced, row_bytes HAVING sum(diff) <> 0",
        )
        .bind(shard.0)
        .bind(since_code)
        .bind(lower_code)
        .bind(upper_code)
        .bind(i64::from(share.count))
        .bind(i64::from(share.index))
        .fetch(&mut *tx);
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

/// A stored row, checked.
fn decode_row(bytes: &[u8], context: &str) -> Result<Row, BackendError> {
    Row::from_bytes(bytes).map_err(|err| {
        BackendError::determinate(
            DeterminateKind::Corrupted,
            format!("stored row is not a valid row encoding: {err}: {context}"),
        )
    })
}
