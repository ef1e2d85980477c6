//! `doctor` for PostgreSQL: settings that decide whether an acknowledged
//! append survives a crash, and the schema version. Only reads.

use std::collections::BTreeMap;

use sqlx::{Connection, PgConnection};

use super::{Check, DoctorReport};
use crate::cli::ToolError;
use crate::postgres::schema::MIGRATIONS;
use crate::postgres::{MIN_SERVER_VERSION_NUM, PostgresConfig};

/// Checks the PostgreSQL store `url` names (its `schema` parameter
/// included).
///
/// # Errors
///
/// A URL the backend does not accept; a server that cannot be reached is
/// a failed check.
pub async fn check(url: &str) -> Result<DoctorReport, ToolError> {
    let config = PostgresConfig::from_url(url)?;
    let mut conn = match PgConnection::connect(config.url()).await {
        Ok(conn) => conn,
        Err(err) => {
            return Ok(DoctorReport::new(
                "postgres",
                vec![Check::fail(
                    "server reachable",
                    format!("cannot connect: {err}"),
                )],
                BTreeMap::new(),
            ));
        }
    };
    let mut checks = vec![Check::pass("server reachable", "connected")];
    checks.push(match setting(&mut conn, "server_version_num").await {
        Ok(number) => {
            let version = setting(&mut conn, "server_version").await.unwrap_or_default();
            match number.parse::<i32>() {
                Ok(number) if number >= MIN_SERVER_VERSION_NUM => {
                    Check::pass("server version", format!("{version} ({number})"))
                }
                _ => Check::fail(
                    "server version",
                    format!(
                        "the backend needs server_version_num >= {MIN_SERVER_VERSION_NUM}: found={number} ({version})"
                    ),
                ),
            }
        }
        Err(err) => Check::fail("server version", err),
    });
    checks.push(match setting(&mut conn, "fsync").await {
        Ok(value) if value == "on" => Check::pass("fsync", "on"),
        Ok(value) => Check::fail(
            "fsync",
            format!("acknowledged commits can be lost or the cluster corrupted by a crash: fsync={value}"),
        ),
        Err(err) => Check::fail("fsync", err),
    });
    checks.push(match setting(&mut conn, "synchronous_commit").await {
        Ok(value) if value == "off" => Check::fail(
            "synchronous_commit",
            "a commit is acknowledged before it is durable, so a crash loses acknowledged appends: synchronous_commit=off",
        ),
        Ok(value) => Check::pass("synchronous_commit", value),
        Err(err) => Check::fail("synchronous_commit", err),
    });
    checks.push(match setting(&mut conn, "default_transaction_isolation").await {
        Ok(value) => Check::pass(
            "default_transaction_isolation",
            format!(
                "{value} (the backend serialises appends with row locks and reads at repeatable read, so any level is safe)"
            ),
        ),
        Err(err) => Check::fail("default_transaction_isolation", err),
    });
    checks.push(schema_check(&mut conn, config.schema()).await);
    let _ = conn.close().await;
    Ok(DoctorReport::new("postgres", checks, BTreeMap::new()))
}

async fn setting(conn: &mut PgConnection, name: &str) -> Result<String, String> {
    sqlx::query_scalar::<_, String>("SELECT current_setting($1)")
        .bind(name)
        .fetch_one(conn)
        .await
        .map_err(|err| format!("cannot read the setting {name}: {err}"))
}

/// The schema's migration versions against [`MIGRATIONS`].
async fn schema_check(conn: &mut PgConnection, schema: &str) -> Check {
    const NAME: &str = "schema version";
    let expected = MIGRATIONS.last().map_or(0, |migration| migration.version);
    let table_exists: Result<bool, _> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'tidemark_migrations')",
    )
    .bind(schema)
    .fetch_one(&mut *conn)
    .await;
    match table_exists {
        Err(err) => return Check::fail(NAME, format!("cannot read the catalog: {err}")),
        Ok(false) => {
            return Check::pass(
                NAME,
                format!(
                    "schema {schema:?} has no tidemark tables yet: the backend creates them at version {expected} when it first opens"
                ),
            );
        }
        Ok(true) => {}
    }
    let quoted = schema.replace('"', "\"\"");
    let versions: Result<Vec<i32>, _> = sqlx::query_scalar(&format!(
        "SELECT version FROM \"{quoted}\".tidemark_migrations ORDER BY version"
    ))
    .fetch_all(&mut *conn)
    .await;
    let versions = match versions {
        Ok(versions) => versions,
        Err(err) => return Check::fail(NAME, format!("cannot read the applied migrations: {err}")),
    };
    let contiguous = versions
        .iter()
        .zip(1..)
        .all(|(version, position)| *version == position);
    let applied = versions.last().copied().unwrap_or(0);
    if !contiguous {
        Check::fail(
            NAME,
            format!(
                "the applied migrations have gaps, so the schema is not one this backend wrote: schema={schema} applied={versions:?}"
            ),
        )
    } else if applied > expected {
        Check::fail(
            NAME,
            format!(
                "the schema is newer than this build understands: schema={schema} found={applied} expected={expected}"
            ),
        )
    } else if applied < expected {
        Check::pass(
            NAME,
            format!(
                "schema {schema:?} is at version {applied}: the backend upgrades it to {expected} when it opens"
            ),
        )
    } else {
        Check::pass(
            NAME,
            format!("schema {schema:?} is at version {applied}, as expected"),
        )
    }
}
