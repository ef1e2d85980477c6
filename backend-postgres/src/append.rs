//! `compare_and_append`: the upper check, the data, the new upper and the
//! idempotency token commit together, or nothing does.
//!
//! # Two write paths
//!
//! - **Small batches** (fewer than `copy_threshold` and `batch_threshold`
//!   updates): one statement.
//!   `UPDATE shards SET upper = new WHERE shard_id = $1 AND upper = expected`
//!   takes the shard row's lock; in `READ COMMITTED` a concurrent writer's
//!   committed change makes PostgreSQL re-check the `WHERE` on the newest
//!   row version, so of several racing appends with the same expected upper
//!   only the first matches. The inserts (an `UNNEST` of array parameters),
//!   the token record and the `NOTIFY` are data-modifying CTEs that only act
//!   when that `UPDATE` matched. One round trip.
//! - **Large batches**: a transaction that locks the shard row with `SELECT
//!   ... FOR UPDATE`, checks the upper, writes the updates, then runs the
//!   same statement (with no inline updates) to move the upper and record
//!   the token, and commits. From `batch_threshold` updates on the updates
//!   are `update_batches` rows (parallel arrays, up to 65,536 updates a
//!   row: one index entry each, which is what brings a bulk append near a
//!   raw `COPY` into a bare table); below it, one `updates` row each, sent
//!   with binary `COPY`.
//!
//! # When the upper did not match
//!
//! The statement also requires the write's epoch (if fenced) to be at least
//! the row's `writer_epoch`, and raises it, so the fence is checked under
//! the same row lock as the write.
//!
//! Then nothing was written, and the append re-reads the shard: an applied
//! token with the same bounds answers success (a retry of an append whose
//! first attempt committed but whose answer was lost); a row epoch above
//! the write's answers `Fenced`; otherwise the answer is an
//! [`UpperMismatch`] with the current upper, saying whether the token may
//! have left the remembered window.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use differential_dataflow::consolidation::consolidate_updates;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use tidemark_storage_types::{
    BackendError, IdempotencyToken, InvalidUsage, Row, ShardId, StorageTimestamp, Update,
    UpperMismatch, WriteFence, contract,
};
use timely::progress::Antichain;

use crate::PostgresBackend;
use crate::errors::statement_error;
use crate::read::{check_row_fence, context, epoch_parameter, read_shard_row, unknown_shard};
use crate::schema::{BATCH_MAX_BYTES, BATCH_MAX_UPDATES, TOKENS_KEPT_PER_SHARD};
use tidemark_storage_types::{decode_frontier, encode_frontier};

/// A pooled connection that is closed instead of returned to the pool when
/// it is dropped while a `BEGIN`, a `COPY` or a batch insert is in flight on
/// it.
///
/// Any backend call's future can be dropped at any await (a caller's
/// timeout, a task aborted at shutdown), and sqlx mishandles two such drops:
///
/// - SUBTLE: a `BEGIN` dropped before its answer leaves the server in a
///   transaction that sqlx does not know of (its rollback guard only acts
///   once the transaction is counted, which happens after the answer). The
///   connection's next users then run their statements inside that
///   transaction, which nobody commits: an `open` holds its uncommitted
///   shard row and every other opener of the shard waits on it forever,
///   appends "succeed" but stay invisible to every other connection.
/// - SUBTLE: sqlx's `PgCopyIn`, dropped before `finish`, sends `CopyFail`
///   but does not account for the server's answer to it, so the
///   connection's next user reads that stale answer as its own: a read of
///   the shard then finds no row (an unknown shard), a write fails to
///   decode its result.
///
/// So [`begin`](Self::begin) and [`append_by_copy`]'s `COPY` set a mark
/// while they run, and a connection dropped with the mark set is detached
/// from the pool and closed; the server then rolls its transaction back.
/// Every connection the backend takes from its pool is one of these
/// (`PostgresBackend::acquire`).
pub(crate) struct GuardedConnection {
    conn: Option<PoolConnection<Postgres>>,
    in_flight: InFlightMark,
}

/// Set while a `BEGIN` or a `COPY` is in flight on its
/// [`GuardedConnection`].
#[derive(Clone, Default)]
pub(crate) struct InFlightMark(Arc<AtomicBool>);

impl InFlightMark {
    fn set(&self, in_flight: bool) {
        self.0.store(in_flight, Ordering::SeqCst);
    }
}

impl GuardedConnection {
    pub(crate) fn new(conn: PoolConnection<Postgres>) -> Self {
        GuardedConnection {
            conn: Some(conn),
            in_flight: InFlightMark::default(),
        }
    }

    /// The mark [`append_by_copy`] sets on this connection.
    pub(crate) fn in_flight_mark(&self) -> InFlightMark {
        self.in_flight.clone()
    }

    /// Begins a transaction; if this future is dropped before the server
    /// answered, the connection is closed when dropped (see the type).
    pub(crate) async fn begin(&mut self) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
        let mark = self.in_flight.clone();
        mark.set(true);
        let conn = self.conn.as_mut().expect("present until dropped");
        let began = conn.begin().await;
        // An error answer leaves no transaction open.
        mark.set(false);
        began
    }
}

impl Deref for GuardedConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl DerefMut for GuardedConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for GuardedConnection {
    fn drop(&mut self) {
        if self.in_flight.0.load(Ordering::SeqCst)
            && let Some(conn) = self.conn.take()
        {
            // Dropping the detached connection closes its socket.
            drop(conn.detach());
        }
    }
}

/// Advances the upper, records the token, inserts the inline updates and
/// notifies waiters, iff the shard's upper is the expected one. Returns one
/// row when it applied, none otherwise.
const APPEND_STATEMENT: &str = "
WITH advanced AS (
    UPDATE shards SET upper = $3, append_seq = append_seq + 1,
        writer_epoch = greatest(writer_epoch, coalesce($11::BIGINT, writer_epoch))
    WHERE shard_id = $1 AND upper IS NOT DISTINCT FROM $2 AND NOT finalized
        AND ($11::BIGINT IS NULL OR writer_epoch <= $11::BIGINT)
    RETURNING append_seq
),
written AS (
    INSERT INTO updates (shard_id, ts, row_bytes, diff)
    SELECT $1, batch.ts, batch.row_bytes, batch.diff
    FROM unnest($5::BIGINT[], $6::BYTEA[], $7::BIGINT[]) AS batch(ts, row_bytes, diff)
    WHERE EXISTS (SELECT 1 FROM advanced)
),
recorded AS (
    INSERT INTO append_tokens (shard_id, token, expected_upper, new_upper, append_seq)
    SELECT $1, $4, $2, $3, append_seq FROM advanced
    ON CONFLICT (shard_id, token) DO UPDATE
    SET expected_upper = excluded.expected_upper,
        new_upper = excluded.new_upper,
        append_seq = excluded.append_seq
),
pruned AS (
    DELETE FROM append_tokens
    WHERE shard_id = $1 AND append_seq <= (SELECT append_seq FROM advanced) - $8
)
SELECT append_seq, pg_notify($9, $10) FROM advanced";

/// The outcome of one write attempt.
pub(crate) enum Attempt {
    Applied,
    UpperDidNotMatch,
}

/// The updates as parallel columns, the form both write paths send.
pub(crate) struct Columns<'a> {
    pub(crate) times: Vec<i64>,
    pub(crate) rows: Vec<&'a [u8]>,
    pub(crate) diffs: Vec<i64>,
}

/// What one write attempt sends: the shard, the updates, the encoded bounds
/// and the token, and the context its errors name.
#[derive(Clone, Copy)]
pub(crate) struct AttemptArgs<'a> {
    pub(crate) shard: ShardId,
    pub(crate) columns: &'a Columns<'a>,
    pub(crate) expected_code: Option<i64>,
    pub(crate) new_code: Option<i64>,
    pub(crate) token: IdempotencyToken,
    pub(crate) fence: WriteFence,
    pub(crate) epoch: Option<i64>,
    pub(crate) context: &'a str,
}

pub(crate) async fn compare_and_append<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    updates: Vec<Update<T>>,
    expected_upper: Antichain<T>,
    new_upper: Antichain<T>,
    token: IdempotencyToken,
    fence: WriteFence,
) -> Result<Result<(), UpperMismatch<T>>, BackendError> {
    contract::check_append_bounds(shard, &updates, &expected_upper, &new_upper)?;
    let epoch = epoch_parameter(shard, fence)?;
    let mut consolidated: Vec<(Row, T, i64)> = updates
        .into_iter()
        .map(|update| (update.row, update.timestamp, update.diff))
        .collect();
    consolidate_updates(&mut consolidated);
    let columns = Columns {
        times: consolidated.iter().map(|(_, t, _)| t.encode()).collect(),
        rows: consolidated
            .iter()
            .map(|(row, _, _)| row.as_bytes())
            .collect(),
        diffs: consolidated.iter().map(|(_, _, diff)| *diff).collect(),
    };
    let expected_code = encode_frontier(&expected_upper);
    let new_code = encode_frontier(&new_upper);
    let context = context(backend, shard);
    let mut conn = backend.acquire().await?;
    let copy_mark = conn.in_flight_mark();
    // The upper only moves forward, so this loop runs a second write
    // attempt at most once per time the upper reaches `expected_upper`
    // between an attempt and its re-read: in practice once.
    let args = AttemptArgs {
        shard,
        columns: &columns,
        expected_code,
        new_code,
        token,
        fence,
        epoch,
        context: &context,
    };
    loop {
        let bulk = columns.times.len() >= backend.config().copy_threshold
            || columns.times.len() >= backend.config().batch_threshold;
        let attempt = if bulk {
            append_by_copy(backend, &mut conn, args, &copy_mark).await?
        } else {
            run_append_statement(backend, &mut conn, args).await?
        };
        if let Attempt::Applied = attempt {
            return Ok(Ok(()));
        }
        // Nothing was written. Find out why, from a fresh snapshot.
        let row = read_shard_row(&mut conn, shard, false, &context)
            .await?
            .ok_or_else(|| unknown_shard(shard))?;
        if token_applied(&mut conn, shard, token, expected_code, new_code, &context).await? {
            return Ok(Ok(()));
        }
        check_row_fence(shard, &row, fence)?;
        if row.upper != expected_code {
            let oldest = oldest_remembered_lower(&mut conn, shard, &context).await?;
            let earlier_attempts =
                contract::earlier_attempts(&new_upper, oldest.map(decode_frontier).as_ref());
            return Ok(Err(UpperMismatch {
                expected: expected_upper,
                current: decode_frontier(row.upper),
                earlier_attempts,
            }));
        }
        if row.finalized {
            // Appending nothing to the empty upper of a finalized shard:
            // there is nothing to write, and the upper already is `[]`.
            return Ok(Ok(()));
        }
        // The upper reached `expected_upper` after the attempt: try again.
    }
}

/// Runs [`APPEND_STATEMENT`] with the attempt's columns inline.
pub(crate) async fn run_append_statement(
    backend: &PostgresBackend,
    conn: &mut PgConnection,
    args: AttemptArgs<'_>,
) -> Result<Attempt, BackendError> {
    let applied: Option<(i64, ())> = sqlx::query_as(APPEND_STATEMENT)
        .bind(args.shard.0)
        .bind(args.expected_code)
        .bind(args.new_code)
        .bind(args.token.0)
        .bind(&args.columns.times)
        .bind(&args.columns.rows)
        .bind(&args.columns.diffs)
        .bind(TOKENS_KEPT_PER_SHARD)
        .bind(backend.shared.watch.channel())
        .bind(args.shard.0.to_string())
        .bind(args.epoch)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|err| statement_error(err, args.context))?;
    Ok(match applied {
        Some(_) => Attempt::Applied,
        None => Attempt::UpperDidNotMatch,
    })
}

/// The bulk write path: writes the attempt's columns, as batch rows from
/// `batch_threshold` updates on and with `COPY` into `updates` below it,
/// in a transaction that holds the shard row's lock, then moves the upper.
/// `copy_mark` is the mark of the [`GuardedConnection`] that `conn` is (or
/// runs a transaction on).
pub(crate) async fn append_by_copy(
    backend: &PostgresBackend,
    conn: &mut PgConnection,
    args: AttemptArgs<'_>,
    copy_mark: &InFlightMark,
) -> Result<Attempt, BackendError> {
    // SUBTLE: the whole write is marked, not only the COPY or the batch
    // insert: an append dropped at any await of it (a batch insert of
    // megabytes finishes fast, so a caller's timeout often lands on the
    // statement or the commit after it) was seen to leave a connection
    // whose next user read a stale answer. The mark is cleared only when
    // the write returns normally; after an error the connection is
    // closed too, which costs a reconnect and nothing else.
    copy_mark.set(true);
    let attempt = write_bulk(backend, conn, args).await;
    if attempt.is_ok() {
        copy_mark.set(false);
    }
    attempt
}

/// [`append_by_copy`] without the mark.
async fn write_bulk(
    backend: &PostgresBackend,
    conn: &mut PgConnection,
    args: AttemptArgs<'_>,
) -> Result<Attempt, BackendError> {
    let (shard, context) = (args.shard, args.context);
    let fail = |err| statement_error(err, context);
    // `conn` is the guarded connection or a transaction on it (then this
    // is a savepoint); the caller's mark covers the `BEGIN` too.
    let mut tx = conn.begin().await.map_err(fail)?;
    // SUBTLE: the row lock is taken before the upper is checked and held
    // until commit, so no other append can move the upper between the check
    // and the final statement.
    let Some(row) = read_shard_row(&mut tx, shard, true, context).await? else {
        return Ok(Attempt::UpperDidNotMatch);
    };
    let fenced = check_row_fence(shard, &row, args.fence).is_err();
    if fenced || row.finalized || row.upper != args.expected_code {
        // The caller re-reads the shard to tell which.
        return Ok(Attempt::UpperDidNotMatch);
    }
    if args.columns.times.len() >= backend.config().batch_threshold {
        insert_batches(&mut tx, shard, args.columns, context).await?;
    } else {
        let chunks = encode_copy_binary(shard, args.columns)?;
        let mut copy = tx
            .copy_in_raw("COPY updates (shard_id, ts, row_bytes, diff) FROM STDIN (FORMAT binary)")
            .await
            .map_err(fail)?;
        for chunk in chunks {
            copy.send(chunk).await.map_err(fail)?;
        }
        copy.finish().await.map_err(fail)?;
    }
    let no_inline_updates = Columns {
        times: Vec::new(),
        rows: Vec::new(),
        diffs: Vec::new(),
    };
    let attempt = run_append_statement(
        backend,
        &mut tx,
        AttemptArgs {
            columns: &no_inline_updates,
            ..args
        },
    )
    .await?;
    if let Attempt::UpperDidNotMatch = attempt {
        // Impossible while the row lock is held; roll back rather than
        // commit data without its upper.
        return Err(BackendError::indeterminate(format!(
            "shard upper changed while its row was locked: {context}"
        )));
    }
    tx.commit().await.map_err(fail)?;
    Ok(Attempt::Applied)
}

/// The largest row an `update_batches` array element may be: PostgreSQL
/// refuses values of 1 GiB or more, and the element shares its array with
/// the others' headers.
const MAX_BATCH_ELEMENT_BYTES: usize = (1 << 30) - (1 << 20);

/// Bytes counted for one update's time and diff beside its row, as
/// [`usage`](crate::read::usage) counts them.
pub(crate) const UPDATE_OVERHEAD_BYTES: usize = 16;

/// Stores the columns as `update_batches` rows, each of at most
/// [`BATCH_MAX_UPDATES`] updates and [`BATCH_MAX_BYTES`] row bytes (a
/// single larger row is a batch of its own), on `conn`, which must be in
/// the append's transaction. Nothing is written for no updates.
///
/// # Errors
///
/// `InvalidUsage(TooLarge)` for a row too large for an array element,
/// before anything is sent; statement errors as
/// [`statement_error`] classifies them.
async fn insert_batches(
    conn: &mut PgConnection,
    shard: ShardId,
    columns: &Columns<'_>,
    context: &str,
) -> Result<(), BackendError> {
    for (index, row) in columns.rows.iter().enumerate() {
        if row.len() > MAX_BATCH_ELEMENT_BYTES {
            return Err(BackendError::InvalidUsage(InvalidUsage::TooLarge {
                shard,
                what: format!("row {index} as a postgres batch array element"),
                size: row.len() as u64,
                limit: MAX_BATCH_ELEMENT_BYTES as u64,
            }));
        }
    }
    for range in batch_ranges(&columns.rows) {
        let times = &columns.times[range.clone()];
        let (Some(min_ts), Some(max_ts)) = (times.iter().min(), times.iter().max()) else {
            continue;
        };
        let rows = &columns.rows[range.clone()];
        let byte_count: usize = rows
            .iter()
            .map(|row| row.len() + UPDATE_OVERHEAD_BYTES)
            .sum();
        sqlx::query(
            "INSERT INTO update_batches
                (shard_id, min_ts, max_ts, update_count, byte_count, ts, row_bytes, diffs)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(shard.0)
        .bind(min_ts)
        .bind(max_ts)
        .bind(i64::try_from(times.len()).unwrap_or(i64::MAX))
        .bind(i64::try_from(byte_count).unwrap_or(i64::MAX))
        .bind(times)
        .bind(rows)
        .bind(&columns.diffs[range])
        .execute(&mut *conn)
        .await
        .map_err(|err| statement_error(err, context))?;
    }
    Ok(())
}

/// Cuts `rows` into consecutive index ranges of at most
/// [`BATCH_MAX_UPDATES`] rows and [`BATCH_MAX_BYTES`] row bytes each (a
/// range always takes at least one row).
fn batch_ranges(rows: &[&[u8]]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (index, row) in rows.iter().enumerate() {
        let full = index - start >= BATCH_MAX_UPDATES
            || (index > start && bytes.saturating_add(row.len()) > BATCH_MAX_BYTES);
        if full {
            ranges.push(start..index);
            (start, bytes) = (index, 0);
        }
        bytes = bytes.saturating_add(row.len());
    }
    if start < rows.len() {
        ranges.push(start..rows.len());
    }
    ranges
}

/// The largest field the binary `COPY` format can carry: its length is an
/// `i32`.
const MAX_COPY_FIELD_BYTES: usize = i32::MAX as usize;

/// A `COPY` field's length, refused with `InvalidUsage(TooLarge)` naming the
/// limit when it does not fit `limit` (at most [`MAX_COPY_FIELD_BYTES`]);
/// `index` is the row's place in the append.
fn copy_field_length(
    shard: ShardId,
    index: usize,
    len: usize,
    limit: usize,
) -> Result<i32, BackendError> {
    let limit = limit.min(MAX_COPY_FIELD_BYTES);
    match i32::try_from(len) {
        Ok(field) if len <= limit => Ok(field),
        _ => Err(BackendError::InvalidUsage(InvalidUsage::TooLarge {
            shard,
            what: format!("row {index} as a postgres COPY field (i32 length)"),
            size: len as u64,
            limit: limit as u64,
        })),
    }
}

/// The binary `COPY` stream for `(shard_id, ts, row_bytes, diff)`, in
/// chunks of about 1 MiB.
///
/// # Errors
///
/// `InvalidUsage(TooLarge)` for a row whose length does not fit a `COPY`
/// field, before anything is sent.
fn encode_copy_binary(shard: ShardId, columns: &Columns<'_>) -> Result<Vec<Vec<u8>>, BackendError> {
    const CHUNK: usize = 1 << 20;
    let row_lengths = columns
        .rows
        .iter()
        .enumerate()
        .map(|(index, row)| copy_field_length(shard, index, row.len(), MAX_COPY_FIELD_BYTES))
        .collect::<Result<Vec<i32>, BackendError>>()?;
    let mut chunks = Vec::new();
    let mut buffer = Vec::with_capacity(CHUNK + 1024);
    buffer.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buffer.extend_from_slice(&0i32.to_be_bytes()); // flags
    buffer.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    let shard_bytes = shard.0.as_bytes();
    let rows = columns.rows.iter().zip(row_lengths);
    for ((time, (row, row_len)), diff) in columns.times.iter().zip(rows).zip(&columns.diffs) {
        buffer.extend_from_slice(&4i16.to_be_bytes());
        buffer.extend_from_slice(&16i32.to_be_bytes());
        buffer.extend_from_slice(shard_bytes);
        buffer.extend_from_slice(&8i32.to_be_bytes());
        buffer.extend_from_slice(&time.to_be_bytes());
        buffer.extend_from_slice(&row_len.to_be_bytes());
        buffer.extend_from_slice(row);
        buffer.extend_from_slice(&8i32.to_be_bytes());
        buffer.extend_from_slice(&diff.to_be_bytes());
        if buffer.len() >= CHUNK {
            chunks.push(std::mem::replace(
                &mut buffer,
                Vec::with_capacity(CHUNK + 1024),
            ));
        }
    }
    buffer.extend_from_slice(&(-1i16).to_be_bytes());
    chunks.push(buffer);
    Ok(chunks)
}

/// Whether `token` was applied with these bounds (a committed append).
async fn token_applied(
    conn: &mut PgConnection,
    shard: ShardId,
    token: IdempotencyToken,
    expected_code: Option<i64>,
    new_code: Option<i64>,
    context: &str,
) -> Result<bool, BackendError> {
    let recorded: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT expected_upper, new_upper FROM append_tokens WHERE shard_id = $1 AND token = $2",
    )
    .bind(shard.0)
    .bind(token.0)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|err| statement_error(err, context))?;
    Ok(recorded == Some((expected_code, new_code)))
}

/// The encoded `expected_upper` of the oldest remembered append once the
/// shard has forgotten some (more appends than [`TOKENS_KEPT_PER_SHARD`]),
/// else `None`: see [`contract::earlier_attempts`].
pub(crate) async fn oldest_remembered_lower(
    conn: &mut PgConnection,
    shard: ShardId,
    context: &str,
) -> Result<Option<Option<i64>>, BackendError> {
    // SUBTLE: with no remembered token at all the bound is NULL, the empty
    // frontier, which bounds every append: "cannot be determined".
    let row: Option<(i64, Option<i64>)> = sqlx::query_as(
        "SELECT s.append_seq, oldest.expected_upper FROM shards s
         LEFT JOIN LATERAL (
             SELECT expected_upper FROM append_tokens
             WHERE shard_id = s.shard_id ORDER BY append_seq LIMIT 1
         ) oldest ON true
         WHERE s.shard_id = $1",
    )
    .bind(shard.0)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|err| statement_error(err, context))?;
    Ok(match row {
        Some((append_seq, oldest)) if append_seq > TOKENS_KEPT_PER_SHARD => Some(oldest),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_field_lengths_beyond_the_limit_are_refused_naming_it() {
        let shard = ShardId::from_bytes([5; 16]);
        assert_eq!(copy_field_length(shard, 0, 10, 10).unwrap(), 10);
        let err = copy_field_length(shard, 3, 11, 10).unwrap_err();
        let BackendError::InvalidUsage(InvalidUsage::TooLarge {
            shard: named,
            what,
            size,
            limit,
        }) = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!((*named, *size, *limit), (shard, 11, 10));
        assert!(what.contains("row 3") && what.contains("COPY"), "{what}");
        // The format's own limit: a length of 2 GiB or more never fits,
        // whatever limit is asked for.
        assert_eq!(
            copy_field_length(shard, 0, MAX_COPY_FIELD_BYTES, usize::MAX).unwrap(),
            i32::MAX
        );
        let err = copy_field_length(shard, 0, MAX_COPY_FIELD_BYTES + 1, usize::MAX).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("size={} limit={}", 1u64 << 31, i32::MAX)),
            "{err}"
        );
    }

    #[test]
    fn batch_ranges_cut_by_count_and_bytes_and_cover_every_row() {
        let small = [0u8; 10];
        let rows: Vec<&[u8]> = vec![&small; BATCH_MAX_UPDATES * 2 + 1];
        let ranges = batch_ranges(&rows);
        assert_eq!(
            ranges,
            vec![
                0..BATCH_MAX_UPDATES,
                BATCH_MAX_UPDATES..BATCH_MAX_UPDATES * 2,
                BATCH_MAX_UPDATES * 2..BATCH_MAX_UPDATES * 2 + 1
            ]
        );
        let big = vec![0u8; BATCH_MAX_BYTES / 2 + 1];
        let rows: Vec<&[u8]> = vec![&big, &big, &small, &big];
        assert_eq!(batch_ranges(&rows), vec![0..1, 1..3, 3..4]);
        assert!(batch_ranges(&[]).is_empty());
    }

    #[test]
    fn the_copy_stream_frames_each_row_with_its_length() {
        let shard = ShardId::from_bytes([6; 16]);
        let rows: [&[u8]; 2] = [b"abc", b""];
        let columns = Columns {
            times: vec![1, 2],
            rows: rows.to_vec(),
            diffs: vec![1, -1],
        };
        let stream = encode_copy_binary(shard, &columns).unwrap().concat();
        // Header (11 + 4 + 4), then per tuple: field count, shard (4 + 16),
        // time (4 + 8), row (4 + len), diff (4 + 8); then the trailer.
        assert_eq!(
            stream.len(),
            19 + (2 + 20 + 12 + 4 + 3 + 12) + (2 + 20 + 12 + 4 + 12) + 2
        );
        let first_row_len = 19 + 2 + 20 + 12;
        assert_eq!(&stream[first_row_len..first_row_len + 7], b"\0\0\0\x03abc");
    }
}
