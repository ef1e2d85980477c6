//! The backend's tables, created and upgraded by embedded, versioned
//! migrations.
//!
//! # Layout
//!
//! - `shards (shard_id, since, upper, finalized, append_seq, writer_epoch)`:
//!   one row per
//!   shard; `since`/`upper` are [`Codec64`](tidemark_storage_types::Codec64)
//!   encoded times, `NULL` for the empty frontier. A finalized shard keeps
//!   its row as a sealed tombstone. Every append locks and updates this row,
//!   which is what serialises appends to a shard. `writer_epoch` (version 2)
//!   is the highest epoch of a fenced write, checked and raised by the same
//!   statement that writes.
//! - `updates (shard_id, ts, row_bytes, diff)`: one row per update, indexed
//!   by `(shard_id, ts)`, so snapshots and compaction are SQL. Small appends
//!   land here.
//! - `update_batches (shard_id, batch_id, min_ts, max_ts, update_count,
//!   byte_count, ts[], row_bytes[], diffs[])` (version 3): large appends
//!   and compaction output, up to [`BATCH_MAX_UPDATES`] updates per row as
//!   three parallel arrays, stored out of line without compression
//!   (`STORAGE EXTERNAL`). One row instead of one per update means one
//!   index entry instead of thousands, which is what made bulk appends cost
//!   twice a raw `COPY`; reads and compaction `unnest` the arrays in SQL, so
//!   they stay server-side and consolidate both tables together. See
//!   `docs/decisions/115-postgres-streams-and-batch-layout.md`.
//! - `append_tokens (shard_id, token, expected_upper, new_upper,
//!   append_seq)`: the idempotency tokens of the most recent
//!   [`TOKENS_KEPT_PER_SHARD`] appends of each shard.
//! - `tidemark_migrations (version, description, applied_at)`.
//!
//! # Migrations
//!
//! The schema name is chosen at run time, which sqlx's `migrate!` cannot
//! express, so migrations are embedded here as versioned SQL with
//! unqualified table names and run on a connection whose `search_path` is
//! the schema (see `docs/decisions/021-postgres-schema-and-migrations.md`).
//! The whole run holds a transaction-scoped advisory lock keyed by the
//! schema name, so processes starting at once apply each migration exactly
//! once; DDL is transactional, so a crash leaves the previous version.

use sqlx::{Connection, Executor, PgConnection};
use tidemark_storage_types::{BackendError, DeterminateKind};

use crate::config::quote_identifier;
use crate::errors::statement_error;

/// How many of each shard's most recent idempotency tokens are kept (the
/// contract asks for at least 128).
pub const TOKENS_KEPT_PER_SHARD: i64 = 1024;

/// The most updates one `update_batches` row holds; larger appends are
/// split into several rows (in the same transaction).
pub const BATCH_MAX_UPDATES: usize = 65_536;

/// The most row bytes one `update_batches` row holds (well below the 1 GiB
/// a PostgreSQL value may take).
pub const BATCH_MAX_BYTES: usize = 64 << 20;

/// One schema version.
#[derive(Debug)]
pub struct Migration {
    /// The version it brings the schema to (1, 2, ...).
    pub version: i32,
    /// What it does.
    pub description: &'static str,
    /// The statements, with unqualified names (run under the schema's
    /// search_path).
    pub sql: &'static str,
}

/// Every migration, in version order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "shards, updates and append tokens",
        sql: r"
CREATE TABLE shards (
    shard_id   UUID PRIMARY KEY,
    since      BIGINT,
    upper      BIGINT,
    finalized  BOOLEAN NOT NULL DEFAULT false,
    append_seq BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE updates (
    shard_id  UUID NOT NULL,
    ts        BIGINT NOT NULL,
    row_bytes BYTEA NOT NULL,
    diff      BIGINT NOT NULL
);
CREATE INDEX updates_shard_ts ON updates (shard_id, ts);
CREATE TABLE append_tokens (
    shard_id       UUID NOT NULL,
    token          UUID NOT NULL,
    expected_upper BIGINT,
    new_upper      BIGINT,
    append_seq     BIGINT NOT NULL,
    PRIMARY KEY (shard_id, token)
);
CREATE INDEX append_tokens_shard_seq ON append_tokens (shard_id, append_seq);
",
    },
    Migration {
        version: 2,
        description: "the shard's writer epoch, for fenced writes",
        sql: "ALTER TABLE shards ADD COLUMN writer_epoch BIGINT NOT NULL DEFAULT 0;",
    },
    Migration {
        version: 3,
        description: "update batches: large appends as one row of parallel arrays",
        sql: r"
CREATE TABLE update_batches (
    shard_id     UUID NOT NULL,
    batch_id     BIGSERIAL NOT NULL,
    min_ts       BIGINT NOT NULL,
    max_ts       BIGINT NOT NULL,
    update_count BIGINT NOT NULL,
    byte_count   BIGINT NOT NULL,
    ts           BIGINT[] NOT NULL,
    row_bytes    BYTEA[] NOT NULL,
    diffs        BIGINT[] NOT NULL,
    PRIMARY KEY (shard_id, batch_id),
    CHECK (cardinality(ts) = update_count
       AND cardinality(row_bytes) = update_count
       AND cardinality(diffs) = update_count)
);
ALTER TABLE update_batches
    ALTER COLUMN ts SET STORAGE EXTERNAL,
    ALTER COLUMN row_bytes SET STORAGE EXTERNAL,
    ALTER COLUMN diffs SET STORAGE EXTERNAL;
",
    },
];

/// The version this build brings a schema to.
#[must_use]
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Creates the schema if needed and applies every pending migration, under
/// an advisory lock. Returns the schema's version afterwards.
///
/// `conn` must have been opened with `search_path` set to `schema`.
pub(crate) async fn migrate(conn: &mut PgConnection, schema: &str) -> Result<i32, BackendError> {
    let context = format!("schema={schema}");
    let fail = |err| statement_error(err, &format!("while migrating: {context}"));
    let mut tx = conn.begin().await.map_err(fail)?;
    // SUBTLE: the lock is taken before anything is read or created, and
    // held until commit, so a second process starting at once waits here
    // and then finds the migrations applied.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("tidemark migrations {schema}"))
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    // The schema name is the one piece of SQL text not fixed at compile
    // time: validated as a plain identifier by the config, and quoted.
    let create_schema = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_identifier(schema));
    (&mut *tx)
        .execute(create_schema.as_str())
        .await
        .map_err(fail)?;
    (&mut *tx)
        .execute(
            "CREATE TABLE IF NOT EXISTS tidemark_migrations (
            version     INT PRIMARY KEY,
            description TEXT NOT NULL,
            applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
        )
        .await
        .map_err(fail)?;
    let current: i32 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM tidemark_migrations")
            .fetch_one(&mut *tx)
            .await
            .map_err(fail)?;
    let latest = latest_version();
    if current > latest {
        return Err(BackendError::determinate(
            DeterminateKind::Unsupported,
            format!(
                "the schema was migrated by a newer tidemark, upgrade this one: schema={schema} schema_version={current} supported_version={latest}"
            ),
        ));
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        (&mut *tx).execute(migration.sql).await.map_err(fail)?;
        sqlx::query("INSERT INTO tidemark_migrations (version, description) VALUES ($1, $2)")
            .bind(migration.version)
            .bind(migration.description)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tracing::info!(
            schema,
            version = migration.version,
            "applied tidemark migration"
        );
    }
    tx.commit().await.map_err(fail)?;
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i32::try_from(index).unwrap() + 1);
            assert!(
                !migration.sql.contains("tidemark."),
                "names are unqualified"
            );
        }
        assert_eq!(latest_version(), MIGRATIONS.len() as i32);
    }
}
