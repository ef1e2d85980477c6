//! A PostgreSQL [`PersistBackend`] for tidemark, on sqlx.
//!
//! Shards live in a schema of their own (default `tidemark`), one row per
//! update, so snapshots and compaction are SQL. Any number of handles, in
//! any number of processes, may use one schema at once: every operation is
//! a statement or a transaction that PostgreSQL makes atomic and
//! linearizable.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tidemark_storage_types::BackendError> {
//! use tidemark_backend_postgres::{PostgresBackend, PostgresConfig};
//! // From a URL with tidemark parameters ...
//! let backend =
//!     PostgresBackend::from_url("postgres://postgres@127.0.0.1:5432/test?schema=orders").await?;
//! // ... or from a builder.
//! let backend = PostgresConfig::new("postgres://postgres@127.0.0.1:5432/test")
//!     .with_schema("orders")
//!     .with_pool_size(4)
//!     .build()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # How the contract is kept
//!
//! - `compare_and_append` is one statement (`UPDATE shards ... WHERE upper
//!   = expected` with the inserts and the token record as data-modifying
//!   CTEs) for small batches, and a transaction that locks the shard row
//!   (`SELECT ... FOR UPDATE`) and writes with binary `COPY` for large ones.
//!   Either way the upper check, the fence (the row's `writer_epoch`), the
//!   data and the token commit together.
//! - `compare_and_append_all` is one transaction that locks every shard's
//!   row in shard-id order, checks them all, writes every part and commits
//!   once.
//! - Reads run in a `REPEATABLE READ` transaction, so the frontier check and
//!   the data come from one snapshot.
//! - Upper waits `LISTEN` on a per-schema channel that every append
//!   `NOTIFY`s in its transaction, and poll when the listener is down.
//! - Only bound parameters carry data; the schema name (validated, quoted)
//!   is the one identifier put into SQL text, once, by the migrations.
//!
//! # Errors
//!
//! See [`errors`]: connection failures are determinate
//! (`Unavailable`/`Unauthorized`/`NotFound`), known SQLSTATEs are
//! determinate, everything else (a connection lost mid-commit) is
//! indeterminate.

#![warn(missing_docs)]

mod append;
mod append_all;
pub mod config;
pub mod errors;
mod frontier;
mod maintenance;
mod notify;
mod read;
pub mod schema;
mod stream;

use std::sync::Arc;
use tidemark_storage_types::{ChunkLimit, FetchStream, SnapshotStream};

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use tidemark_storage_types::{
    BackendError, CompactionStats, DeterminateKind, Diff, IdempotencyToken, PersistBackend,
    ReadShare, Row, ShardAppend, ShardFrontiers, ShardId, ShardUsage, StorageTimestamp, Update,
    UpperMismatch, UpperMismatches, WriteFence,
};
use timely::progress::Antichain;

pub use config::{DEFAULT_SCHEMA, PostgresConfig, validate_schema_name};

use crate::errors::connect_error;
use crate::notify::UpperWatch;
use crate::stream::StreamSlots;

/// The oldest PostgreSQL this backend runs on (as `server_version_num`).
pub const MIN_SERVER_VERSION_NUM: i32 = 130_000;

/// A [`PersistBackend`] storing shards in a PostgreSQL schema.
///
/// Cheap to clone: clones share the connection pool and the notification
/// listener. Handles built separately on the same schema (in this process
/// or others) share the shards.
#[derive(Clone)]
pub struct PostgresBackend {
    shared: Arc<Shared>,
}

struct Shared {
    config: PostgresConfig,
    pool: PgPool,
    watch: UpperWatch,
    streams: StreamSlots,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// Connects, checks the server, creates or upgrades the schema, and
    /// returns a backend on it.
    ///
    /// # Errors
    ///
    /// Determinate errors, within `connect_timeout`: `InvalidConfig` for bad
    /// settings, `Unavailable` when the server cannot be reached,
    /// `Unauthorized` for rejected credentials, `NotFound` for a missing
    /// database, `Unsupported` for a server older than PostgreSQL 13 or a
    /// schema migrated by a newer tidemark.
    pub async fn build(self) -> Result<PostgresBackend, BackendError> {
        self.validate()?;
        let options = self.connect_options()?;
        let context = format!(
            "url={} schema={}",
            config::redact_password(&self.url),
            self.schema
        );
        let mut conn = tokio::time::timeout(
            self.connect_timeout,
            sqlx::PgConnection::connect_with(&options),
        )
            .await
            .map_err(|_| {
                BackendError::determinate(
                    DeterminateKind::Unavailable,
                    format!(
                        "cannot connect to postgres within the connect timeout: {context} connect_timeout={:?}",
                        self.connect_timeout
                    ),
                )
            })?
            .map_err(|err| connect_error(err, &context))?;
        check_server_version(&mut conn, &context).await?;
        schema::migrate(&mut conn, &self.schema).await?;
        let _ = conn.close().await;
        let pool = pool_options(&self).connect_lazy_with(options.clone());
        let watch = UpperWatch::new(&self, options);
        let streams = StreamSlots::new(self.max_open_streams());
        Ok(PostgresBackend {
            shared: Arc::new(Shared {
                config: self,
                pool,
                watch,
                streams,
            }),
        })
    }
}

fn pool_options(config: &PostgresConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(config.connect_timeout)
        // A ping before each use would double the round trips of a small
        // append; a dead pooled connection instead fails its statement
        // (indeterminate) and is discarded.
        .test_before_acquire(false)
}

async fn check_server_version(
    conn: &mut sqlx::PgConnection,
    context: &str,
) -> Result<(), BackendError> {
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version_num')")
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| errors::statement_error(err, context))?;
    let version_num = parse_server_version_num(&version, context)?;
    if version_num < MIN_SERVER_VERSION_NUM {
        return Err(BackendError::determinate(
            DeterminateKind::Unsupported,
            format!("postgres 13 or newer is required: {context} server_version_num={version_num}"),
        ));
    }
    Ok(())
}

/// The server's `server_version_num` setting (`170004` for 17.4) as a
/// number.
///
/// # Errors
///
/// `Determinate(Unsupported)` naming the text when it is not a positive
/// number: a server (or proxy) that reports its version so cannot be
/// checked, and is not taken for an old one.
fn parse_server_version_num(text: &str, context: &str) -> Result<i32, BackendError> {
    match text.trim().parse::<i32>() {
        Ok(version_num) if version_num > 0 => Ok(version_num),
        _ => Err(BackendError::determinate(
            DeterminateKind::Unsupported,
            format!(
                "the server reported a version that cannot be parsed (server_version_num must be a positive number): {context} server_version_num={text:?}"
            ),
        )),
    }
}

impl PostgresBackend {
    /// A backend from a `postgres://` URL; see [`PostgresConfig::from_url`]
    /// for its parameters.
    ///
    /// # Errors
    ///
    /// As [`PostgresConfig::from_url`] and [`PostgresConfig::build`].
    pub async fn from_url(url: &str) -> Result<Self, BackendError> {
        PostgresConfig::from_url(url)?.build().await
    }

    /// A backend from the environment; see [`PostgresConfig::from_env`].
    ///
    /// # Errors
    ///
    /// As [`PostgresConfig::from_env`] and [`PostgresConfig::build`].
    pub async fn from_env() -> Result<Self, BackendError> {
        PostgresConfig::from_env()?.build().await
    }

    /// The settings this backend was built with.
    #[must_use]
    pub fn config(&self) -> &PostgresConfig {
        &self.shared.config
    }

    /// The schema holding this backend's tables.
    #[must_use]
    pub fn schema(&self) -> &str {
        &self.shared.config.schema
    }

    /// The connection pool (for diagnostics and tests).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// A pooled connection, closed rather than pooled again if it is
    /// dropped part way through a `BEGIN` or a `COPY`; failing to get one is
    /// determinate.
    async fn acquire(&self) -> Result<append::GuardedConnection, BackendError> {
        self.shared
            .pool
            .acquire()
            .await
            .map(append::GuardedConnection::new)
            .map_err(|err| connect_error(err, &format!("schema={}", self.schema())))
    }
}

#[async_trait]
impl<T: StorageTimestamp> PersistBackend<T> for PostgresBackend {
    async fn open(&self, shard: ShardId) -> Result<ShardFrontiers<T>, BackendError> {
        read::open(self, shard).await
    }

    async fn frontiers(&self, shard: ShardId) -> Result<ShardFrontiers<T>, BackendError> {
        read::frontiers(self, shard).await
    }

    async fn compare_and_append(
        &self,
        shard: ShardId,
        updates: Vec<Update<T>>,
        expected_upper: Antichain<T>,
        new_upper: Antichain<T>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatch<T>>, BackendError> {
        append::compare_and_append(
            self,
            shard,
            updates,
            expected_upper,
            new_upper,
            token,
            fence,
        )
        .await
    }

    async fn compare_and_append_all(
        &self,
        appends: Vec<ShardAppend<T>>,
        token: IdempotencyToken,
        fence: WriteFence,
    ) -> Result<Result<(), UpperMismatches<T>>, BackendError> {
        append_all::compare_and_append_all(self, appends, token, fence).await
    }

    async fn snapshot(&self, shard: ShardId, as_of: &T) -> Result<Vec<(Row, Diff)>, BackendError> {
        stream::snapshot(self, shard, as_of, ReadShare::WHOLE).await
    }

    async fn fetch(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
    ) -> Result<Vec<Update<T>>, BackendError> {
        stream::fetch(self, shard, lower, upper, ReadShare::WHOLE).await
    }

    async fn snapshot_share(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
    ) -> Result<Vec<(Row, Diff)>, BackendError> {
        stream::snapshot(self, shard, as_of, share).await
    }

    async fn fetch_share(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
    ) -> Result<Vec<Update<T>>, BackendError> {
        stream::fetch(self, shard, lower, upper, share).await
    }

    async fn snapshot_stream(
        &self,
        shard: ShardId,
        as_of: &T,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<SnapshotStream, BackendError> {
        stream::snapshot_stream(self, shard, as_of, share, limit).await
    }

    async fn fetch_stream(
        &self,
        shard: ShardId,
        lower: &Antichain<T>,
        upper: &Antichain<T>,
        share: ReadShare,
        limit: ChunkLimit,
    ) -> Result<FetchStream<T>, BackendError> {
        stream::fetch_stream(self, shard, lower, upper, share, limit).await
    }

    async fn wait_for_upper_past(
        &self,
        shard: ShardId,
        frontier: &Antichain<T>,
    ) -> Result<Antichain<T>, BackendError> {
        notify::wait_for_upper_past(self, shard, frontier).await
    }

    async fn downgrade_since(
        &self,
        shard: ShardId,
        new_since: &Antichain<T>,
        fence: WriteFence,
    ) -> Result<Antichain<T>, BackendError> {
        maintenance::downgrade_since(self, shard, new_since, fence).await
    }

    async fn compact(&self, shard: ShardId) -> Result<CompactionStats, BackendError> {
        maintenance::compact(self, shard).await
    }

    async fn usage(&self, shard: ShardId) -> Result<ShardUsage, BackendError> {
        read::usage(self, shard).await
    }

    async fn finalize(&self, shard: ShardId) -> Result<(), BackendError> {
        maintenance::finalize(self, shard).await
    }

    async fn list_shards(&self) -> Result<Vec<ShardId>, BackendError> {
        read::list_shards(self).await
    }
}

// Building must be `Send` so it can run in spawned tasks; the driver's
// executor bounds make that easy to lose.
const _: fn() = || {
    fn is_send<F: Send>(_: F) {}
    is_send(PostgresConfig::default().build());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_parse_and_garbage_is_named() {
        assert_eq!(parse_server_version_num("170004", "ctx").unwrap(), 170_004);
        assert_eq!(
            parse_server_version_num(" 130000\n", "ctx").unwrap(),
            130_000
        );
        for bad in ["", "17.4", "PostgreSQL 17", "0", "-130000", "99999999999"] {
            let err = parse_server_version_num(bad, "url=x").unwrap_err();
            assert_eq!(
                err.determinate_kind(),
                Some(DeterminateKind::Unsupported),
                "{bad:?}: {err}"
            );
            let message = err.to_string();
            assert!(message.contains("cannot be parsed"), "{message}");
            assert!(
                message.contains(&format!("server_version_num={bad:?}")),
                "{message}"
            );
            assert!(message.contains("url=x"), "{message}");
        }
    }
}
