//! Snapshots and fetches: answered by one statement when the shard is
//! small, streamed from a server-side cursor or read whole otherwise.
//!
//! Every read begins with one statement on a pooled connection, outside any
//! transaction (`first_snapshot_statement!` / `first_fetch_statement!`):
//! it returns the shard's row (its frontiers, checked against the read
//! here, so argument errors come from the call), counts the stored updates
//! the read could touch, up to a bound, and when they are within it also
//! returns the read's rows, consolidated (`GROUP BY ... HAVING sum(diff) <>
//! 0`) and in the order the read delivers them. One statement sees one
//! snapshot, so frontiers and rows agree: a small read is one round trip.
//! The bound is [`SMALL_READ_MAX_UPDATES`] for the `Vec` forms, and the
//! rows of the cursor's first `FETCH` for a stream (it holds no more than
//! the cursor read would). A larger read goes on to the cursor read:
//!
//! - A `REPEATABLE READ READ ONLY` transaction (with
//!   [`SNAPSHOT_SETTINGS`] for a snapshot) reads the shard's row and checks
//!   the read against its frontiers again, then runs one statement over
//!   both layouts (`updates` rows and the `unnest`ed arrays of
//!   `update_batches`) that consolidates in SQL and orders the result as
//!   the read delivers it (`ORDER BY row_bytes`, or `ORDER BY time,
//!   row_bytes` for a fetch).
//! - **Streamed** ([`snapshot_stream`] / [`fetch_stream`]): the statement
//!   is a `NO SCROLL` cursor declared in the transaction, and the stream
//!   `FETCH`es from it as it is polled, cutting what arrives into chunks
//!   within the read's [`ChunkLimit`]. The transaction's snapshot fixes the
//!   shard's state at the call: appends, compaction and finalization after
//!   it are invisible to the stream. The stream owns the pooled
//!   connection; dropping it drops the transaction, which sqlx rolls back
//!   before the connection goes back to the pool. A statement failure ends
//!   the stream with that error as its last item.
//! - **Whole** (the `Vec` forms): the same cursor read, collected
//!   ([`collect_stream`]) to its end, in larger fetches and without a slot
//!   (it ends on its own). There is no second read path to drift from the
//!   streamed one.
//!
//! A stream answered by its first statement holds its rows (at most one
//! `FETCH`'s worth) and its slot but no connection; its state is fixed at
//! the call as a cursor's is, and a row that does not decode is its last
//! item, after the chunks before it, as in a cursor read. See decision 123.
//!
//! # Open streams are bounded
//!
//! Each open stream holds a connection for as long as its reader takes, so
//! a backend admits at most
//! [`max_open_streams`](crate::PostgresConfig::max_open_streams) at once
//! (half the pool unless configured), leaving the rest of the pool to
//! appends and other reads. One more is refused at the call with
//! `Determinate(Unavailable)` naming the limit, instead of waiting: a
//! reader that holds streams while it opens another would otherwise wait
//! on itself. The `Vec` forms take no slot (they end on their own).

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Arc;

use futures::StreamExt;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, Row as _, Transaction};
use tidemark_storage_types::{
    BackendError, ChunkBuilder, ChunkEntry, ChunkLimit, DeterminateKind, Diff, FetchStream,
    ReadShare, ReadStream, Row, ShardFrontiers, ShardId, SnapshotStream, StorageTimestamp, Update,
    collect_stream, contract, decode_frontier, encode_frontier,
};
use timely::progress::Antichain;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::PostgresBackend;
use crate::errors::{connect_error, statement_error};
use crate::frontier::decode_frontiers;
use crate::read::{context, read_shard_row, unknown_shard};

/// The cursor a snapshot declares (one per transaction). Snapshots and
/// fetches name their cursors apart so that each `FETCH` statement text
/// always reads rows of one shape: the statements are prepared once per
/// connection and keep the columns they were first described with.
const SNAPSHOT_CURSOR: &str = "tidemark_snapshot";

/// The cursor a fetch declares.
const FETCH_CURSOR: &str = "tidemark_fetch";

/// The most rows one `FETCH` of a stream asks for, whatever the chunk limit.
const MAX_FETCH_ROWS: usize = 8192;

/// The rows one `FETCH` of a `Vec` form asks for: it holds everything it
/// reads anyway, so only the round trips count.
const WHOLE_READ_FETCH_ROWS: usize = 65_536;

/// The chunks a `Vec` form cuts: one per `FETCH`, whatever its bytes.
const WHOLE_READ_CHUNKS: ChunkLimit =
    ChunkLimit::entries(NonZeroUsize::new(WHOLE_READ_FETCH_ROWS).expect("nonzero"));

/// The filter that keeps one share of a read: the rows whose hash, modulo
/// the share count (parameter `$count`), is the share index (`$index`).
macro_rules! share_filter {
    ($count:literal, $index:literal) => {
        concat!(
            "WHERE (('x' || left(md5(row_bytes), 8))::bit(32)::BIGINT % $",
            $count,
            "::BIGINT) = $",
            $index,
            "::BIGINT"
        )
    };
}

/// The consolidated rows of a snapshot over both layouts, unordered, with
/// `$filter` (empty, or a `share_filter!`) applied to the stored updates
/// before they are consolidated: `$1` shard, `$2` as-of.
macro_rules! snapshot_rows {
    ($($filter:tt)*) => {
        concat!(
            "
SELECT row_bytes, sum(diff)::BIGINT AS diff FROM (
    SELECT row_bytes, diff FROM updates WHERE shard_id = $1 AND ts <= $2
    UNION ALL
    SELECT row_bytes, diff FROM (
        SELECT unnest(ts) AS ts, unnest(row_bytes) AS row_bytes, unnest(diffs) AS diff
        FROM update_batches WHERE shard_id = $1 AND min_ts <= $2
    ) batch WHERE ts <= $2
) stored
",
            $($filter)*,
            "
GROUP BY row_bytes HAVING sum(diff) <> 0"
        )
    };
}

/// The snapshot statement of the cursor read: `snapshot_rows!` in row
/// order.
///
/// The updates are consolidated by hashing in a `MATERIALIZED` CTE, and
/// only the consolidated rows are sorted: the planner cannot see how many
/// updates a batch row's arrays hold (it guesses ten), so left to itself it
/// sorts every update before grouping. [`SNAPSHOT_SETTINGS`] keep it from
/// sorting inside the CTE and give the hash table room. See decision 115.
macro_rules! snapshot_statement {
    ($($filter:tt)*) => {
        concat!(
            "WITH consolidated AS MATERIALIZED (",
            snapshot_rows!($($filter)*),
            "
)
SELECT row_bytes, diff FROM consolidated ORDER BY row_bytes"
        )
    };
}

/// The first statement of every snapshot, which answers a small one
/// whole: `$1` shard, `$2` as-of, `$3` the most stored updates it answers,
/// then the share parameters of `$filter`.
///
/// Its first row is the shard's (`since`, `upper` in columns 2 and 3, no
/// row if the shard was never opened) with `rows_follow` (column 4): true
/// when the as-of is readable and the shard holds at most `$3` updates at
/// or before it (counted up to `$3 + 1`, so the count costs no more than a
/// small read). Then, only if it is true, the consolidated rows in row
/// order (columns 0 and 1, as the cursor's). One statement sees one
/// snapshot of the database, so the frontiers and the rows agree without a
/// transaction, and the rows are planned with the server's own settings,
/// which suit a small shard.
macro_rules! first_snapshot_statement {
    ($($filter:tt)*) => {
        concat!(
            "
WITH shard AS (SELECT since, upper FROM shards WHERE shard_id = $1),
answer AS (
    SELECT since, upper, coalesce(
        since <= $2 AND (upper IS NULL OR $2 < upper)
        AND (SELECT count(*) FROM (
                SELECT FROM updates WHERE shard_id = $1 AND ts <= $2 LIMIT $3::BIGINT + 1
            ) counted)
            + (SELECT coalesce(sum(update_count), 0) FROM update_batches
               WHERE shard_id = $1 AND min_ts <= $2) <= $3::BIGINT,
        false) AS rows_follow
    FROM shard
)
SELECT NULL::BYTEA AS row_bytes, NULL::BIGINT AS diff, since, upper, rows_follow FROM answer
UNION ALL
SELECT row_bytes, diff, NULL, NULL, NULL FROM (",
            snapshot_rows!($($filter)*),
            "
) consolidated WHERE (SELECT rows_follow FROM answer)
ORDER BY row_bytes NULLS FIRST"
        )
    };
}

/// The consolidated updates of a fetch over both layouts, unordered, with
/// `$filter` as for `snapshot_rows!`; `$since`, `$lower` and `$upper` are
/// the SQL of the shard's since, the range's lower and its upper (`NULL`
/// for the empty frontier).
///
/// Times are advanced by the since before the range applies, so the answer
/// does not depend on whether physical compaction has run:
/// `advance(t) = max(t, since)` is in `[lower, upper)` iff
/// `(t >= lower or since >= lower) and t < upper and since < upper` (the
/// caller has checked `since < upper`).
macro_rules! fetch_rows {
    ($since:literal, $lower:literal, $upper:literal, $($filter:tt)*) => {
        concat!(
            "
SELECT greatest(ts, ", $since, ") AS advanced, row_bytes, sum(diff)::BIGINT AS diff FROM (",
            fetch_stored!($since, $lower, $upper, "ts, row_bytes, diff"),
            "
) stored
",
            $($filter)*,
            "
GROUP BY advanced, row_bytes HAVING sum(diff) <> 0"
        )
    };
}

/// The stored updates a fetch reads (`$columns` of each), both layouts,
/// batch rows pruned by their time range before their arrays are read.
macro_rules! fetch_stored {
    ($since:literal, $lower:literal, $upper:literal, $columns:literal) => {
        concat!(
            "
    SELECT ",
            $columns,
            " FROM updates
    WHERE shard_id = $1 AND (ts >= ",
            $lower,
            " OR ",
            $since,
            " >= ",
            $lower,
            ")
        AND (",
            $upper,
            "::BIGINT IS NULL OR ts < ",
            $upper,
            ")
    UNION ALL
    SELECT ",
            $columns,
            " FROM (
        SELECT unnest(ts) AS ts, unnest(row_bytes) AS row_bytes, unnest(diffs) AS diff
        FROM update_batches
        WHERE shard_id = $1 AND (max_ts >= ",
            $lower,
            " OR ",
            $since,
            " >= ",
            $lower,
            ")
            AND (",
            $upper,
            "::BIGINT IS NULL OR min_ts < ",
            $upper,
            ")
    ) batch WHERE (ts >= ",
            $lower,
            " OR ",
            $since,
            " >= ",
            $lower,
            ")
        AND (",
            $upper,
            "::BIGINT IS NULL OR ts < ",
            $upper,
            ")"
        )
    };
}

/// The fetch statement of the cursor read: `$1` shard, `$2` since, `$3`
/// lower, `$4` upper, then the share parameters of `$filter`, in
/// `(time, row)` order.
macro_rules! fetch_statement {
    ($($filter:tt)*) => {
        concat!(
            fetch_rows!("$2", "$3", "$4", $($filter)*),
            "
ORDER BY advanced, row_bytes"
        )
    };
}

/// The first statement of every fetch, which answers a small one whole:
/// `$1` shard, `$2` lower, `$3` upper, `$4` the most stored updates it
/// answers, then the share parameters of `$filter`.
///
/// As `first_snapshot_statement!`: the shard's row first (`since`, `upper`
/// in columns 3 and 4, `rows_follow` in 5), true when the shard's since is
/// not empty and at most `$4` stored updates could fall in the range (the
/// fetch's own pruning of rows and batch rows, rows counted up to
/// `$4 + 1`); then, only if it is true,
/// the consolidated updates in `(time, row)` order (columns 0 to 2, as the
/// cursor's), computed with the since of the same snapshot. The range is
/// checked by the caller, which discards rows it does not take.
macro_rules! first_fetch_statement {
    ($($filter:tt)*) => {
        concat!(
            "
WITH shard AS (SELECT since, upper FROM shards WHERE shard_id = $1),
answer AS (
    SELECT since, upper, coalesce(
        since IS NOT NULL
        AND (SELECT count(*) FROM (
                SELECT FROM updates
                WHERE shard_id = $1 AND (ts >= $2 OR since >= $2)
                    AND ($3::BIGINT IS NULL OR ts < $3)
                LIMIT $4::BIGINT + 1
            ) counted)
            + (SELECT coalesce(sum(update_count), 0) FROM update_batches
               WHERE shard_id = $1 AND (max_ts >= $2 OR since >= $2)
                   AND ($3::BIGINT IS NULL OR min_ts < $3)) <= $4::BIGINT,
        false) AS rows_follow
    FROM shard
)
SELECT NULL::BIGINT AS advanced, NULL::BYTEA AS row_bytes, NULL::BIGINT AS diff,
    since, upper, rows_follow FROM answer
UNION ALL
SELECT advanced, row_bytes, diff, NULL, NULL, NULL FROM (",
            fetch_rows!("(SELECT since FROM shard)", "$2", "$3", $($filter)*),
            "
) consolidated WHERE (SELECT rows_follow FROM answer)
ORDER BY advanced NULLS FIRST, row_bytes"
        )
    };
}

/// What a snapshot's transaction sets before its statement is planned
/// (sent with its `BEGIN`, no round trip of its own).
///
/// - `enable_sort = off`: the consolidation hashes rather than sorting every
///   update (the final `ORDER BY` still sorts; it has no alternative).
/// - `work_mem`: the hash table of the consolidated rows (100,000 rows of
///   about 60 bytes take 32 MB) and their sort stay in memory instead of
///   spilling at the default 4 MB. Larger reads spill, as before.
/// - `jit = off`: compiling expressions costs tens of milliseconds and saves
///   nothing on a plan this simple.
const SNAPSHOT_SETTINGS: &str =
    "SET LOCAL enable_sort = off; SET LOCAL work_mem = '64MB'; SET LOCAL jit = off";

/// The whole snapshot: `$1` shard, `$2` as-of.
const SNAPSHOT_SQL: &str = snapshot_statement!("");

/// One share of the snapshot: also `$3` share count and `$4` index.
const SNAPSHOT_SHARE_SQL: &str = snapshot_statement!(share_filter!(3, 4));

/// The whole fetch: `$1` shard, `$2` since, `$3` lower, `$4` upper.
const FETCH_SQL: &str = fetch_statement!("");

/// One share of the fetch: also `$5` share count and `$6` index.
const FETCH_SHARE_SQL: &str = fetch_statement!(share_filter!(5, 6));

/// The first statement of a whole snapshot: `$1` shard, `$2` as-of, `$3`
/// the most stored updates it answers.
const FIRST_SNAPSHOT_SQL: &str = first_snapshot_statement!("");

/// The first statement of one share of a snapshot: also `$4` share count
/// and `$5` index.
const FIRST_SNAPSHOT_SHARE_SQL: &str = first_snapshot_statement!(share_filter!(4, 5));

/// The first statement of a whole fetch: `$1` shard, `$2` lower, `$3`
/// upper, `$4` the most stored updates it answers.
const FIRST_FETCH_SQL: &str = first_fetch_statement!("");

/// The first statement of one share of a fetch: also `$5` share count and
/// `$6` index.
const FIRST_FETCH_SHARE_SQL: &str = first_fetch_statement!(share_filter!(5, 6));

/// The most stored updates a `Vec` form answers from its first statement;
/// larger shards are read through the cursor, with [`SNAPSHOT_SETTINGS`]
/// for a snapshot. A streamed read answers from its first statement at
/// most the rows its cursor's first `FETCH` would ask for
/// ([`first_fetch_rows`]), so it holds no more than the cursor read would.
const SMALL_READ_MAX_UPDATES: usize = MAX_FETCH_ROWS;

/// The open-stream bound of one backend (shared by its clones).
#[derive(Clone)]
pub(crate) struct StreamSlots {
    slots: Arc<Semaphore>,
    limit: u32,
}

/// A held place among the open streams, given back when dropped.
pub(crate) struct StreamSlot {
    _permit: OwnedSemaphorePermit,
}

impl StreamSlots {
    pub(crate) fn new(limit: u32) -> Self {
        StreamSlots {
            slots: Arc::new(Semaphore::new(limit as usize)),
            limit,
        }
    }

    /// A slot for one more open stream.
    ///
    /// # Errors
    ///
    /// `Determinate(Unavailable)` naming the limit when every slot is held.
    pub(crate) fn take(&self, context: &str) -> Result<StreamSlot, BackendError> {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => Ok(StreamSlot { _permit: permit }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                Err(BackendError::determinate(
                    DeterminateKind::Unavailable,
                    format!(
                        "too many streamed reads are open on this backend (each holds a pooled connection): finish or drop one, or raise max_open_streams: {context} max_open_streams={}",
                        self.limit
                    ),
                ))
            }
        }
    }

    /// How many streams are open now (for diagnostics and tests).
    pub(crate) fn open(&self) -> usize {
        (self.limit as usize).saturating_sub(self.slots.available_permits())
    }
}

/// A statement's parameters, bound in order.
enum Param {
    Uuid(uuid::Uuid),
    Int(i64),
    NullableInt(Option<i64>),
}

/// A read ready to run: its transaction (frontiers checked), its statement
/// and parameters, or nothing to read at all.
enum Prepared {
    Statement {
        tx: Transaction<'static, Postgres>,
        sql: &'static str,
        /// The cursor's name (`SNAPSHOT_CURSOR` or `FETCH_CURSOR`).
        cursor: &'static str,
        params: Vec<Param>,
    },
    Nothing {
        tx: Transaction<'static, Postgres>,
    },
}

/// How every read's transaction begins: one snapshot for the shard row and
/// the statement, no writes.
const READ_BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// Begins the read transaction, with `settings` (`SET LOCAL` statements, or
/// nothing) in the same round trip, and reads the shard's row in it.
async fn begin_read(
    backend: &PostgresBackend,
    shard: ShardId,
    settings: Option<&str>,
    context: &str,
) -> Result<(Transaction<'static, Postgres>, crate::read::ShardRow), BackendError> {
    let conn = backend
        .shared
        .pool
        .acquire()
        .await
        .map_err(|err| connect_error(err, context))?;
    // SUBTLE: a `BEGIN` dropped before its answer would return the
    // connection to the pool inside a transaction sqlx does not know of
    // (see `GuardedConnection`). The `BEGIN` runs in a task of its own, so
    // dropping this future never interrupts it: a transaction begun for a
    // reader that went away is dropped by the task, and sqlx rolls it back.
    let begin = match settings {
        None => READ_BEGIN.to_owned(),
        Some(settings) => format!("{READ_BEGIN}; {settings}"),
    };
    let began = tokio::spawn(Transaction::begin(conn, Some(begin.into())))
        .await
        .map_err(|err| {
            BackendError::determinate(
                DeterminateKind::Unavailable,
                format!("the read's BEGIN did not complete: {err}; {context}"),
            )
        })?;
    let mut tx = began.map_err(|err| statement_error(err, context))?;
    let row = read_shard_row(&mut tx, shard, false, context)
        .await?
        .ok_or_else(|| unknown_shard(shard))?;
    Ok((tx, row))
}

async fn prepare_snapshot<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    as_of: &T,
    share: ReadShare,
    context: &str,
) -> Result<Prepared, BackendError> {
    share.check(shard)?;
    let (tx, row) = begin_read(backend, shard, Some(SNAPSHOT_SETTINGS), context).await?;
    let frontiers: ShardFrontiers<T> = decode_frontiers(row.since, row.upper);
    contract::check_readable(shard, &frontiers.since, &frontiers.upper, as_of)?;
    let mut params = vec![Param::Uuid(shard.0), Param::Int(as_of.encode())];
    let sql = if share == ReadShare::WHOLE {
        SNAPSHOT_SQL
    } else {
        params.push(Param::Int(i64::from(share.count)));
        params.push(Param::Int(i64::from(share.index)));
        SNAPSHOT_SHARE_SQL
    };
    Ok(Prepared::Statement {
        tx,
        sql,
        cursor: SNAPSHOT_CURSOR,
        params,
    })
}

async fn prepare_fetch<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    share: ReadShare,
    context: &str,
) -> Result<Prepared, BackendError> {
    share.check(shard)?;
    let (tx, row) = begin_read(backend, shard, None, context).await?;
    let shard_upper: Antichain<T> = decode_frontier(row.upper);
    contract::check_fetch_range(shard, lower, upper, &shard_upper)?;
    let upper_code = encode_frontier(upper);
    // An empty since: nothing can ever be read again. An empty lower: the
    // range [[], upper) is empty. A since at or past upper: every time
    // advances out of the range.
    let (Some(since_code), Some(lower_code)) = (row.since, encode_frontier(lower)) else {
        return Ok(Prepared::Nothing { tx });
    };
    if upper_code.is_some_and(|upper_code| since_code >= upper_code) {
        return Ok(Prepared::Nothing { tx });
    }
    let mut params = vec![
        Param::Uuid(shard.0),
        Param::Int(since_code),
        Param::Int(lower_code),
        Param::NullableInt(upper_code),
    ];
    let sql = if share == ReadShare::WHOLE {
        FETCH_SQL
    } else {
        params.push(Param::Int(i64::from(share.count)));
        params.push(Param::Int(i64::from(share.index)));
        FETCH_SHARE_SQL
    };
    Ok(Prepared::Statement {
        tx,
        sql,
        cursor: FETCH_CURSOR,
        params,
    })
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    params: &[Param],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for param in params {
        query = match param {
            Param::Uuid(value) => query.bind(*value),
            Param::Int(value) => query.bind(*value),
            Param::NullableInt(value) => query.bind(*value),
        };
    }
    query
}

/// Turns one row of a read's statement into the read's entry.
type EntryDecoder<C> = fn(&PgRow, &str) -> Result<C, BackendError>;

/// A column of a read's row, borrowed from the received message where it
/// can be (`&[u8]`), so a row's bytes are copied once, into its [`Row`].
fn column<'r, V: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>>(
    record: &'r PgRow,
    index: usize,
    context: &str,
) -> Result<V, BackendError> {
    record
        .try_get(index)
        .map_err(|err| statement_error(err, context))
}

/// `(row_bytes, diff)`.
fn snapshot_entry(record: &PgRow, context: &str) -> Result<(Row, Diff), BackendError> {
    let bytes: &[u8] = column(record, 0, context)?;
    Ok((decode_row(bytes, context)?, column(record, 1, context)?))
}

/// `(time, row_bytes, diff)`.
fn fetch_entry<T: StorageTimestamp>(
    record: &PgRow,
    context: &str,
) -> Result<Update<T>, BackendError> {
    let time: i64 = column(record, 0, context)?;
    let bytes: &[u8] = column(record, 1, context)?;
    Ok(Update::new(
        decode_row(bytes, context)?,
        T::decode(time),
        column(record, 2, context)?,
    ))
}

/// A stored row, checked.
pub(crate) fn decode_row(bytes: &[u8], context: &str) -> Result<Row, BackendError> {
    Row::from_bytes(bytes).map_err(|err| {
        BackendError::determinate(
            DeterminateKind::Corrupted,
            format!("stored row is not a valid row encoding: {err}: {context}"),
        )
    })
}

/// An open cursor read: the transaction it runs in, its slot (a `Vec`
/// form takes none), and the chunks cut but not yet delivered.
struct CursorRead<C> {
    tx: Transaction<'static, Postgres>,
    cursor: &'static str,
    _slot: Option<StreamSlot>,
    entry: EntryDecoder<C>,
    builder: ChunkBuilder<C>,
    ready: VecDeque<Vec<C>>,
    limit: ChunkLimit,
    /// The most rows one `FETCH` asks for.
    max_fetch_rows: usize,
    fetch_rows: usize,
    exhausted: bool,
    context: String,
}

/// How a read is delivered: streamed (holding a slot, fetching about a
/// chunk at a time) or whole (a `Vec` form: no slot, large fetches).
enum Delivery {
    Streamed(StreamSlot, ChunkLimit),
    Whole,
}

/// Declares the cursor for a prepared read and returns the stream of its
/// chunks.
async fn open_cursor<C: ChunkEntry>(
    prepared: Prepared,
    delivery: Delivery,
    entry: EntryDecoder<C>,
    context: String,
) -> Result<ReadStream<C>, BackendError> {
    let (mut tx, sql, cursor, params) = match prepared {
        Prepared::Nothing { tx } => {
            tx.commit()
                .await
                .map_err(|err| statement_error(err, &context))?;
            return Ok(futures::stream::empty().boxed());
        }
        Prepared::Statement {
            tx,
            sql,
            cursor,
            params,
        } => (tx, sql, cursor, params),
    };
    // Prepared once per connection (four statement texts in all): an
    // unprepared statement costs a round trip of its own to describe it,
    // which is most of a small read's time. The query is still planned for
    // each read's parameters, when the declaration runs.
    let declare = format!("DECLARE {cursor} NO SCROLL CURSOR FOR {sql}");
    bind_all(sqlx::query(&declare), &params)
        .execute(&mut *tx)
        .await
        .map_err(|err| statement_error(err, &context))?;
    let (slot, limit, max_fetch_rows) = match delivery {
        Delivery::Streamed(slot, limit) => (Some(slot), limit, first_fetch_rows(limit)),
        Delivery::Whole => (None, WHOLE_READ_CHUNKS, WHOLE_READ_FETCH_ROWS),
    };
    let read = CursorRead {
        tx,
        cursor,
        _slot: slot,
        entry,
        builder: ChunkBuilder::new(limit),
        ready: VecDeque::new(),
        limit,
        max_fetch_rows,
        fetch_rows: max_fetch_rows,
        exhausted: false,
        context,
    };
    Ok(futures::stream::unfold(Some(read), next_chunk).boxed())
}

/// The rows a stream's first `FETCH` asks for: the chunk's entries, at
/// most [`MAX_FETCH_ROWS`], as a power of two.
fn first_fetch_rows(limit: ChunkLimit) -> usize {
    power_of_two_at_most(limit.max_entries.get().min(MAX_FETCH_ROWS))
}

/// The largest power of two at most `count` (1 for 0).
fn power_of_two_at_most(count: usize) -> usize {
    if count <= 1 {
        1
    } else {
        1 << (usize::BITS - 1 - count.leading_zeros())
    }
}

/// The stream's step: the next chunk, fetching from the cursor as needed;
/// `None` once everything was delivered (the transaction then ends) or
/// after an error.
async fn next_chunk<C: ChunkEntry>(
    state: Option<CursorRead<C>>,
) -> Option<(Result<Vec<C>, BackendError>, Option<CursorRead<C>>)> {
    let mut read = state?;
    loop {
        if let Some(chunk) = read.ready.pop_front() {
            return Some((Ok(chunk), Some(read)));
        }
        if read.exhausted {
            // Everything is read: the transaction ends here, before the last
            // chunk is delivered, so the connection goes back to the pool
            // outside any transaction whether or not the stream is dropped.
            // Left to the drop, its `ROLLBACK` would wait for a task of the
            // pool; a caller that then blocks on the shard's locks (a
            // `DROP SCHEMA`, say) would wait on it forever. The transaction
            // only read: a failed `COMMIT` loses nothing already delivered,
            // and the pool closes a connection that fails its release ping.
            let last = read.builder.finish();
            let CursorRead {
                tx, _slot: slot, ..
            } = read;
            let _ = tx.commit().await;
            drop(slot);
            return last.map(|chunk| (Ok(chunk), None));
        }
        if let Err(err) = read.fetch_more().await {
            return Some((Err(err), None));
        }
    }
}

impl<C: ChunkEntry> CursorRead<C> {
    /// Fetches the next rows from the cursor into chunks; marks the read
    /// exhausted when the cursor returned fewer than asked for.
    async fn fetch_more(&mut self) -> Result<(), BackendError> {
        // A FETCH count cannot be a parameter; the count is a number this
        // code computed, a power of two, so a connection prepares at most a
        // few FETCH statements per cursor and describes none twice.
        let statement = format!("FETCH {} FROM {}", self.fetch_rows, self.cursor);
        let records: Vec<PgRow> = sqlx::query(&statement)
            .fetch_all(&mut *self.tx as &mut PgConnection)
            .await
            .map_err(|err| statement_error(err, &self.context))?;
        if records.len() < self.fetch_rows {
            self.exhausted = true;
        }
        let mut largest = 1;
        for record in &records {
            let entry = (self.entry)(record, &self.context)?;
            largest = largest.max(entry.chunk_bytes());
            if let Some(chunk) = self.builder.push(entry) {
                self.ready.push_back(chunk);
            }
        }
        // Ask for about a chunk's worth of bytes next time, judged by the
        // largest entry so far, so one fetch never holds much more than a
        // chunk however large rows are.
        self.fetch_rows = power_of_two_at_most(
            (self.limit.max_bytes.get() / largest)
                .clamp(1, self.max_fetch_rows)
                .min(self.fetch_rows.max(1)),
        );
        Ok(())
    }
}

/// A read answered by its first statement: the entries in the read's
/// order, and the failure that ended decoding them, if one did.
struct AnsweredRead<C> {
    entries: Vec<C>,
    /// A stored row that did not decode, or a column that did not: a `Vec`
    /// form fails with it, a stream delivers it after the entries before it.
    failure: Option<BackendError>,
}

impl<C> AnsweredRead<C> {
    fn empty() -> Self {
        AnsweredRead {
            entries: Vec::new(),
            failure: None,
        }
    }

    fn into_result(self) -> Result<Vec<C>, BackendError> {
        match self.failure {
            Some(err) => Err(err),
            None => Ok(self.entries),
        }
    }

    /// The stream of the answer, in chunks within `limit`. It holds `slot`
    /// (but no connection) until its last item is taken or it is dropped,
    /// so an open stream counts against `max_open_streams` whichever way
    /// it was read.
    fn into_stream(self, slot: StreamSlot, limit: ChunkLimit) -> ReadStream<C>
    where
        C: ChunkEntry,
    {
        let mut builder = ChunkBuilder::new(limit);
        let mut items: VecDeque<Result<Vec<C>, BackendError>> = VecDeque::new();
        for entry in self.entries {
            if let Some(chunk) = builder.push(entry) {
                items.push_back(Ok(chunk));
            }
        }
        if let Some(chunk) = builder.finish() {
            items.push_back(Ok(chunk));
        }
        if let Some(err) = self.failure {
            items.push_back(Err(err));
        }
        futures::stream::unfold((items, Some(slot)), |(mut items, mut slot)| async move {
            let item = items.pop_front()?;
            if items.is_empty() {
                slot = None;
            }
            Some((item, (items, slot)))
        })
        .boxed()
    }
}

/// What a read's first statement found: the shard's frontiers as stored,
/// and the whole answer when the shard was small enough for it.
struct FirstAnswer<C> {
    since: Option<i64>,
    upper: Option<i64>,
    answered: Option<AnsweredRead<C>>,
}

/// Runs a read's first statement (`first_snapshot_statement!` or
/// `first_fetch_statement!`) on a pooled connection, outside any
/// transaction: one round trip. The shard's row is the first row, its
/// `since`, `upper` and `rows_follow` from column `header`; the entries
/// follow when `rows_follow`, and are decoded as they arrive.
///
/// # Errors
///
/// `InvalidUsage(UnknownShard)` when there is no shard row; a failed
/// statement as [`statement_error`] says. A row that does not decode is
/// not an error here: it ends the answer ([`AnsweredRead::failure`]).
async fn first_answer<C>(
    backend: &PostgresBackend,
    shard: ShardId,
    sql: &'static str,
    params: &[Param],
    entry: EntryDecoder<C>,
    header: usize,
    context: &str,
) -> Result<FirstAnswer<C>, BackendError> {
    let mut conn = backend.acquire().await?;
    let mut records = bind_all(sqlx::query(sql), params).fetch(&mut *conn as &mut PgConnection);
    let Some(first) = records
        .next()
        .await
        .transpose()
        .map_err(|err| statement_error(err, context))?
    else {
        return Err(unknown_shard(shard));
    };
    let since: Option<i64> = column(&first, header, context)?;
    let upper: Option<i64> = column(&first, header + 1, context)?;
    let rows_follow: bool = column(&first, header + 2, context)?;
    if !rows_follow {
        return Ok(FirstAnswer {
            since,
            upper,
            answered: None,
        });
    }
    let mut answered = AnsweredRead::empty();
    while let Some(record) = records.next().await {
        let record = record.map_err(|err| statement_error(err, context))?;
        if answered.failure.is_some() {
            // Read to its end (it is small) rather than left unread: a
            // server blocked on sending the rest would hold the statement's
            // locks until the connection's next use.
            continue;
        }
        match entry(&record, context) {
            Ok(entry) => answered.entries.push(entry),
            Err(err) => answered.failure = Some(err),
        }
    }
    Ok(FirstAnswer {
        since,
        upper,
        answered: Some(answered),
    })
}

/// A snapshot's first statement: the argument errors, and the whole answer
/// if the shard holds at most `max_updates` updates at or before `as_of`
/// (`None`: read it through the cursor).
async fn first_snapshot<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    as_of: &T,
    share: ReadShare,
    max_updates: usize,
    context: &str,
) -> Result<Option<AnsweredRead<(Row, Diff)>>, BackendError> {
    let mut params = vec![
        Param::Uuid(shard.0),
        Param::Int(as_of.encode()),
        Param::Int(i64::try_from(max_updates).unwrap_or(i64::MAX)),
    ];
    let sql = if share == ReadShare::WHOLE {
        FIRST_SNAPSHOT_SQL
    } else {
        params.push(Param::Int(i64::from(share.count)));
        params.push(Param::Int(i64::from(share.index)));
        FIRST_SNAPSHOT_SHARE_SQL
    };
    let answer = first_answer(backend, shard, sql, &params, snapshot_entry, 2, context).await?;
    let frontiers: ShardFrontiers<T> = decode_frontiers(answer.since, answer.upper);
    // The frontiers decide here, not the statement's own test of them: rows
    // it sent for an as-of that is not readable are never delivered.
    contract::check_readable(shard, &frontiers.since, &frontiers.upper, as_of)?;
    Ok(answer.answered)
}

/// A fetch's first statement: the argument errors, and the whole answer
/// if at most `max_updates` stored updates could fall in the range
/// (`None`: read it through the cursor).
async fn first_fetch<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    share: ReadShare,
    max_updates: usize,
    context: &str,
) -> Result<Option<AnsweredRead<Update<T>>>, BackendError> {
    let lower_code = encode_frontier(lower);
    let upper_code = encode_frontier(upper);
    let mut params = vec![
        Param::Uuid(shard.0),
        Param::NullableInt(lower_code),
        Param::NullableInt(upper_code),
        Param::Int(i64::try_from(max_updates).unwrap_or(i64::MAX)),
    ];
    let sql = if share == ReadShare::WHOLE {
        FIRST_FETCH_SQL
    } else {
        params.push(Param::Int(i64::from(share.count)));
        params.push(Param::Int(i64::from(share.index)));
        FIRST_FETCH_SHARE_SQL
    };
    let answer = first_answer(backend, shard, sql, &params, fetch_entry::<T>, 3, context).await?;
    let shard_upper: Antichain<T> = decode_frontier(answer.upper);
    contract::check_fetch_range(shard, lower, upper, &shard_upper)?;
    // As `prepare_fetch`: an empty since or an empty lower, or a since at
    // or past upper, leaves nothing in the range, whatever was stored.
    let (Some(since_code), Some(_)) = (answer.since, lower_code) else {
        return Ok(Some(AnsweredRead::empty()));
    };
    if upper_code.is_some_and(|upper_code| since_code >= upper_code) {
        return Ok(Some(AnsweredRead::empty()));
    }
    Ok(answer.answered)
}

/// The snapshot, whole, in row order: one statement for a shard of at
/// most [`SMALL_READ_MAX_UPDATES`] updates, the cursor read collected
/// otherwise.
pub(crate) async fn snapshot<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    as_of: &T,
    share: ReadShare,
) -> Result<Vec<(Row, Diff)>, BackendError> {
    let context = context(backend, shard);
    share.check(shard)?;
    let first = first_snapshot(
        backend,
        shard,
        as_of,
        share,
        SMALL_READ_MAX_UPDATES,
        &context,
    )
    .await?;
    if let Some(answered) = first {
        return answered.into_result();
    }
    let prepared = prepare_snapshot(backend, shard, as_of, share, &context).await?;
    collect_stream(open_cursor(prepared, Delivery::Whole, snapshot_entry, context).await?).await
}

/// The fetch, whole, in `(time, row)` order: one statement when at most
/// [`SMALL_READ_MAX_UPDATES`] stored updates could fall in the range, the
/// cursor read collected otherwise.
pub(crate) async fn fetch<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    share: ReadShare,
) -> Result<Vec<Update<T>>, BackendError> {
    let context = context(backend, shard);
    share.check(shard)?;
    let first = first_fetch(
        backend,
        shard,
        lower,
        upper,
        share,
        SMALL_READ_MAX_UPDATES,
        &context,
    )
    .await?;
    if let Some(answered) = first {
        return answered.into_result();
    }
    let prepared = prepare_fetch(backend, shard, lower, upper, share, &context).await?;
    collect_stream(open_cursor(prepared, Delivery::Whole, fetch_entry::<T>, context).await?).await
}

/// The snapshot as a stream of chunks: answered by the first statement
/// when the shard holds no more updates than the cursor's first `FETCH`
/// would read, from a cursor otherwise.
pub(crate) async fn snapshot_stream<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    as_of: &T,
    share: ReadShare,
    limit: ChunkLimit,
) -> Result<SnapshotStream, BackendError> {
    let context = context(backend, shard);
    share.check(shard)?;
    let slot = backend.shared.streams.take(&context)?;
    let first = first_snapshot(
        backend,
        shard,
        as_of,
        share,
        first_fetch_rows(limit),
        &context,
    )
    .await?;
    if let Some(answered) = first {
        return Ok(answered.into_stream(slot, limit));
    }
    let prepared = prepare_snapshot(backend, shard, as_of, share, &context).await?;
    open_cursor(
        prepared,
        Delivery::Streamed(slot, limit),
        snapshot_entry,
        context,
    )
    .await
}

/// The fetch as a stream of chunks: answered by the first statement when
/// no more stored updates could fall in the range than the cursor's first
/// `FETCH` would read, from a cursor otherwise.
pub(crate) async fn fetch_stream<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    share: ReadShare,
    limit: ChunkLimit,
) -> Result<FetchStream<T>, BackendError> {
    let context = context(backend, shard);
    share.check(shard)?;
    let slot = backend.shared.streams.take(&context)?;
    let first = first_fetch(
        backend,
        shard,
        lower,
        upper,
        share,
        first_fetch_rows(limit),
        &context,
    )
    .await?;
    if let Some(answered) = first {
        return Ok(answered.into_stream(slot, limit));
    }
    let prepared = prepare_fetch(backend, shard, lower, upper, share, &context).await?;
    open_cursor(
        prepared,
        Delivery::Streamed(slot, limit),
        fetch_entry::<T>,
        context,
    )
    .await
}

impl PostgresBackend {
    /// How many streamed reads of this backend (and its clones) are open
    /// now: each holds a pooled connection until it ends or is dropped.
    #[must_use]
    pub fn open_streams(&self) -> usize {
        self.shared.streams.open()
    }
}
