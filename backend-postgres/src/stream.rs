//! Snapshots and fetches, streamed from a server-side cursor or read whole.
//!
//! A read opens a `REPEATABLE READ READ ONLY` transaction, reads the
//! shard's row and checks the read against its frontiers in that
//! transaction, then runs one statement over both layouts (`updates` rows
//! and the `unnest`ed arrays of `update_batches`) that consolidates in SQL
//! (`GROUP BY ... HAVING sum(diff) <> 0`) and orders the result as the read
//! delivers it (`ORDER BY row_bytes`, or `ORDER BY time, row_bytes` for a
//! fetch). Every check happens before the first row, so argument errors
//! come from the call, never part-way.
//!
//! - **Streamed** ([`open_snapshot`] / [`open_fetch`] with a
//!   [`StreamSlot`]): the statement is a `NO SCROLL` cursor declared in the
//!   transaction, and the stream `FETCH`es from it as it is polled, cutting
//!   what arrives into chunks within the read's [`ChunkLimit`]. The
//!   transaction's snapshot fixes the shard's state at the call: appends,
//!   compaction and finalization after it are invisible to the stream. The
//!   stream owns the pooled connection; dropping it drops the transaction,
//!   which sqlx rolls back before the connection goes back to the pool. A
//!   statement failure ends the stream with that error as its last item.
//! - **Whole** (the `Vec` forms): the same cursor read, collected
//!   ([`collect_stream`]) to its end, in larger fetches and without a slot
//!   (it ends on its own). There is no second read path to drift from the
//!   streamed one.
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

/// The snapshot statement over both layouts, with `$filter` (empty, or a
/// `share_filter!`) applied to the stored updates before they are
/// consolidated: `$1` shard, `$2` as-of.
///
/// The updates are consolidated by hashing in a `MATERIALIZED` CTE, and
/// only the consolidated rows are sorted: the planner cannot see how many
/// updates a batch row's arrays hold (it guesses ten), so left to itself it
/// sorts every update before grouping. [`SNAPSHOT_SETTINGS`] keep it from
/// sorting inside the CTE and give the hash table room. See decision 115.
macro_rules! snapshot_statement {
    ($($filter:tt)*) => {
        concat!(
            "
WITH consolidated AS MATERIALIZED (
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
GROUP BY row_bytes HAVING sum(diff) <> 0
)
SELECT row_bytes, diff FROM consolidated ORDER BY row_bytes"
        )
    };
}

/// The fetch statement over both layouts, with `$filter` as for
/// `snapshot_statement!`: `$1` shard, `$2` since, `$3` lower, `$4` upper
/// (`NULL` for the empty frontier).
///
/// Times are advanced by the since before the range applies, so the answer
/// does not depend on whether physical compaction has run:
/// `advance(t) = max(t, since)` is in `[lower, upper)` iff
/// `(t >= lower or since >= lower) and t < upper and since < upper` (the
/// caller has checked `since < upper`).
macro_rules! fetch_statement {
    ($($filter:tt)*) => {
        concat!(
            "
SELECT greatest(ts, $2) AS advanced, row_bytes, sum(diff)::BIGINT FROM (
    SELECT ts, row_bytes, diff FROM updates
    WHERE shard_id = $1 AND (ts >= $3 OR $2 >= $3) AND ($4::BIGINT IS NULL OR ts < $4)
    UNION ALL
    SELECT ts, row_bytes, diff FROM (
        SELECT unnest(ts) AS ts, unnest(row_bytes) AS row_bytes, unnest(diffs) AS diff
        FROM update_batches
        WHERE shard_id = $1 AND (max_ts >= $3 OR $2 >= $3) AND ($4::BIGINT IS NULL OR min_ts < $4)
    ) batch WHERE (ts >= $3 OR $2 >= $3) AND ($4::BIGINT IS NULL OR ts < $4)
) stored
",
            $($filter)*,
            "
GROUP BY advanced, row_bytes HAVING sum(diff) <> 0
ORDER BY advanced, row_bytes"
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
        Delivery::Streamed(slot, limit) => (
            Some(slot),
            limit,
            power_of_two_at_most(limit.max_entries.get().min(MAX_FETCH_ROWS)),
        ),
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

/// The snapshot, whole, in row order.
pub(crate) async fn snapshot<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    as_of: &T,
    share: ReadShare,
) -> Result<Vec<(Row, Diff)>, BackendError> {
    let context = context(backend, shard);
    let prepared = prepare_snapshot(backend, shard, as_of, share, &context).await?;
    collect_stream(open_cursor(prepared, Delivery::Whole, snapshot_entry, context).await?).await
}

/// The fetch, whole, in `(time, row)` order.
pub(crate) async fn fetch<T: StorageTimestamp>(
    backend: &PostgresBackend,
    shard: ShardId,
    lower: &Antichain<T>,
    upper: &Antichain<T>,
    share: ReadShare,
) -> Result<Vec<Update<T>>, BackendError> {
    let context = context(backend, shard);
    let prepared = prepare_fetch(backend, shard, lower, upper, share, &context).await?;
    collect_stream(open_cursor(prepared, Delivery::Whole, fetch_entry::<T>, context).await?).await
}

/// The snapshot as a stream of chunks from a cursor.
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
    let prepared = prepare_snapshot(backend, shard, as_of, share, &context).await?;
    open_cursor(
        prepared,
        Delivery::Streamed(slot, limit),
        snapshot_entry,
        context,
    )
    .await
}

/// The fetch as a stream of chunks from a cursor.
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
