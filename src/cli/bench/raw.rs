//! The raw baselines `bench` measures beside tidemark, in the same run:
//! the store's own write and read of the same bytes, without tidemark's
//! protocol.
//!
//! - memory: pushing the batch onto a `Vec` under a lock, and cloning it;
//! - S3: a plain PUT of the batch's bytes as one object, and a GET of it;
//! - PostgreSQL: the batch's rows by one `INSERT ... SELECT unnest(...)`
//!   and by `COPY`, into a table of its own, and a `SELECT` of one
//!   writer's rows.

use std::sync::{Arc, Mutex};

use tidemark_storage_types::sync::lock;

use crate::cli::ToolError;

/// One batch as the raw store writes it: `(time, row bytes, diff)`.
pub type RawBatch = Vec<(i64, Vec<u8>, i64)>;

/// A store's raw operations.
#[derive(Clone)]
pub enum RawStore {
    /// A vector per writer under a lock.
    Memory(Arc<Mutex<Vec<RawBatch>>>),
    /// Objects under a prefix of the bucket.
    #[cfg(feature = "s3")]
    S3 {
        /// The client.
        client: aws_sdk_s3::Client,
        /// The bucket.
        bucket: String,
        /// Where objects go.
        prefix: String,
    },
    /// A table of its own in the schema.
    #[cfg(feature = "postgres")]
    Postgres {
        /// A pool on the database.
        pool: sqlx::PgPool,
        /// The qualified, quoted table name.
        table: String,
    },
}

impl RawStore {
    /// The raw store for the backend `url` names, set up for `writers`.
    ///
    /// # Errors
    ///
    /// The store cannot be reached or set up.
    pub async fn open(url: &str, writers: usize) -> Result<RawStore, ToolError> {
        let scheme = url.split("://").next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "s3")]
            "s3" => {
                let backend = crate::s3::S3Backend::from_url(url).await?;
                let prefix = if backend.config().prefix().is_empty() {
                    String::new()
                } else {
                    format!("{}/", backend.config().prefix())
                };
                Ok(RawStore::S3 {
                    client: backend.client().clone(),
                    bucket: backend.config().bucket().to_string(),
                    prefix: format!("{prefix}bench-raw/{}/", uuid::Uuid::new_v4().simple()),
                })
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let config = crate::postgres::PostgresConfig::from_url(url)?;
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(u32::try_from(writers.max(1) + 2).unwrap_or(u32::MAX))
                    .connect(config.url())
                    .await
                    .map_err(|err| {
                        ToolError::InvalidArgument(format!(
                            "cannot connect for the raw baseline: {err}"
                        ))
                    })?;
                let table = format!(
                    "\"{}\".\"bench_raw_{}\"",
                    config.schema().replace('"', "\"\""),
                    uuid::Uuid::new_v4().simple()
                );
                let create = format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{}\"; CREATE TABLE {table} (writer BIGINT NOT NULL, ts BIGINT NOT NULL, row_bytes BYTEA NOT NULL, diff BIGINT NOT NULL); CREATE INDEX ON {table} (writer, ts)",
                    config.schema().replace('"', "\"\"")
                );
                sqlx::raw_sql(&create).execute(&pool).await.map_err(|err| {
                    ToolError::InvalidArgument(format!(
                        "cannot create the raw baseline table: {err}"
                    ))
                })?;
                Ok(RawStore::Postgres { pool, table })
            }
            _ => Ok(RawStore::Memory(Arc::new(Mutex::new(vec![
                Vec::new();
                writers.max(1)
            ])))),
        }
    }

    /// The names of the raw write operations, in the order measured.
    #[must_use]
    pub fn write_operations(&self) -> &'static [&'static str] {
        match self {
            RawStore::Memory(_) => &["push"],
            #[cfg(feature = "s3")]
            RawStore::S3 { .. } => &["put"],
            #[cfg(feature = "postgres")]
            RawStore::Postgres { .. } => &["insert", "copy"],
        }
    }

    /// The name of the raw read operation.
    #[must_use]
    pub fn read_operation(&self) -> &'static str {
        match self {
            RawStore::Memory(_) => "clone",
            #[cfg(feature = "s3")]
            RawStore::S3 { .. } => "get",
            #[cfg(feature = "postgres")]
            RawStore::Postgres { .. } => "select",
        }
    }

    /// Writes `batch` for `writer` with operation `operation` (one of
    /// [`write_operations`](Self::write_operations)); `sequence` numbers
    /// the writer's batches.
    ///
    /// # Errors
    ///
    /// The store failed, as a message.
    pub async fn write(
        &self,
        operation: &str,
        writer: usize,
        sequence: u64,
        batch: &RawBatch,
    ) -> Result<(), String> {
        match self {
            RawStore::Memory(vectors) => {
                let mut vectors = lock(vectors);
                let slot = writer % vectors.len();
                vectors[slot].extend_from_slice(batch);
                Ok(())
            }
            #[cfg(feature = "s3")]
            RawStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let mut body = Vec::new();
                for (time, row, diff) in batch {
                    body.extend_from_slice(&time.to_le_bytes());
                    body.extend_from_slice(&diff.to_le_bytes());
                    body.extend_from_slice(row);
                }
                client
                    .put_object()
                    .bucket(bucket)
                    .key(format!("{prefix}{writer}/{sequence}"))
                    .body(body.into())
                    .send()
                    .await
                    .map(drop)
                    .map_err(|err| format!("raw put failed: {err}"))
            }
            #[cfg(feature = "postgres")]
            RawStore::Postgres { pool, table } => {
                let _ = sequence;
                let writer = i64::try_from(writer).unwrap_or(i64::MAX);
                if operation == "copy" {
                    let mut data = String::new();
                    for (time, row, diff) in batch {
                        data.push_str(&format!("{writer}\t{time}\t\\\\x"));
                        for byte in row {
                            data.push_str(&format!("{byte:02x}"));
                        }
                        data.push_str(&format!("\t{diff}\n"));
                    }
                    let mut conn = pool
                        .acquire()
                        .await
                        .map_err(|err| format!("raw copy failed: {err}"))?;
                    let mut copy = conn
                        .copy_in_raw(&format!(
                            "COPY {table} (writer, ts, row_bytes, diff) FROM STDIN"
                        ))
                        .await
                        .map_err(|err| format!("raw copy failed: {err}"))?;
                    copy.send(data.as_bytes())
                        .await
                        .map_err(|err| format!("raw copy failed: {err}"))?;
                    copy.finish()
                        .await
                        .map(drop)
                        .map_err(|err| format!("raw copy failed: {err}"))
                } else {
                    let times: Vec<i64> = batch.iter().map(|(time, _, _)| *time).collect();
                    let rows: Vec<Vec<u8>> = batch.iter().map(|(_, row, _)| row.clone()).collect();
                    let diffs: Vec<i64> = batch.iter().map(|(_, _, diff)| *diff).collect();
                    sqlx::query(&format!(
                        "INSERT INTO {table} (writer, ts, row_bytes, diff) SELECT $1, * FROM unnest($2::bigint[], $3::bytea[], $4::bigint[])"
                    ))
                    .bind(writer)
                    .bind(times)
                    .bind(rows)
                    .bind(diffs)
                    .execute(pool)
                    .await
                    .map(drop)
                    .map_err(|err| format!("raw insert failed: {err}"))
                }
            }
        }
    }

    /// Reads back what `writer` wrote (its latest batch on S3); returns
    /// how many bytes came back.
    ///
    /// # Errors
    ///
    /// The store failed, as a message.
    pub async fn read(&self, writer: usize, latest_sequence: u64) -> Result<u64, String> {
        match self {
            RawStore::Memory(vectors) => {
                let copy = {
                    let vectors = lock(vectors);
                    vectors[writer % vectors.len()].clone()
                };
                Ok(copy.iter().map(|(_, row, _)| row.len() as u64).sum())
            }
            #[cfg(feature = "s3")]
            RawStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let output = client
                    .get_object()
                    .bucket(bucket)
                    .key(format!("{prefix}{writer}/{latest_sequence}"))
                    .send()
                    .await
                    .map_err(|err| format!("raw get failed: {err}"))?;
                let bytes = output
                    .body
                    .collect()
                    .await
                    .map_err(|err| format!("raw get failed: {err}"))?;
                Ok(bytes.into_bytes().len() as u64)
            }
            #[cfg(feature = "postgres")]
            RawStore::Postgres { pool, table } => {
                let _ = latest_sequence;
                let rows: Vec<(Vec<u8>,)> =
                    sqlx::query_as(&format!("SELECT row_bytes FROM {table} WHERE writer = $1"))
                        .bind(i64::try_from(writer).unwrap_or(i64::MAX))
                        .fetch_all(pool)
                        .await
                        .map_err(|err| format!("raw select failed: {err}"))?;
                Ok(rows.iter().map(|(row,)| row.len() as u64).sum())
            }
        }
    }

    /// Removes what the raw baseline wrote (best effort).
    pub async fn clean_up(&self) {
        match self {
            RawStore::Memory(_) => {}
            #[cfg(feature = "s3")]
            RawStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let mut token = None;
                loop {
                    let Ok(listed) = client
                        .list_objects_v2()
                        .bucket(bucket)
                        .prefix(prefix)
                        .set_continuation_token(token.clone())
                        .send()
                        .await
                    else {
                        return;
                    };
                    for object in listed.contents() {
                        if let Some(key) = object.key() {
                            let _ = client.delete_object().bucket(bucket).key(key).send().await;
                        }
                    }
                    token = listed.next_continuation_token().map(str::to_string);
                    if token.is_none() {
                        return;
                    }
                }
            }
            #[cfg(feature = "postgres")]
            RawStore::Postgres { pool, table } => {
                let _ = sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {table}"))
                    .execute(pool)
                    .await;
                pool.close().await;
            }
        }
    }
}
