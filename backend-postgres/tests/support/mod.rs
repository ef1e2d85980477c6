//! Test support: handles on a fresh schema per test, dropped afterwards.

#![allow(dead_code)]

use async_trait::async_trait;
use tidemark_backend_conformance::{BackendFactory, service_env};
use tidemark_backend_postgres::{PostgresBackend, PostgresConfig};
use uuid::Uuid;

pub mod reads;

/// The test server's URL, or `None` (after a loud SKIPPED line) when it is
/// not configured outside CI.
pub fn test_url(test_name: &str) -> Option<String> {
    service_env("TIDEMARK_TEST_POSTGRES_URL", test_name)
}

/// A schema name no other test uses.
pub fn unique_schema(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..16])
}

/// Opens handles (each with its own pool) on one fresh schema, and drops the
/// schema when the factory is dropped.
pub struct PostgresFactory {
    pub config: PostgresConfig,
}

impl PostgresFactory {
    pub fn new(url: &str, prefix: &str) -> Self {
        PostgresFactory {
            config: PostgresConfig::from_url(url)
                .expect("TIDEMARK_TEST_POSTGRES_URL is a valid postgres url")
                .with_schema(unique_schema(prefix))
                .with_pool_size(4),
        }
    }

    pub async fn handle(&self) -> PostgresBackend {
        self.config
            .clone()
            .build()
            .await
            .unwrap_or_else(|err| panic!("cannot open a postgres backend: {err}"))
    }
}

#[async_trait]
impl BackendFactory for PostgresFactory {
    type Backend = PostgresBackend;

    async fn open_handle(&self) -> PostgresBackend {
        self.handle().await
    }
}

impl Drop for PostgresFactory {
    fn drop(&mut self) {
        let config = self.config.clone();
        // Dropping the schema needs a runtime of its own: this may run on a
        // runtime thread, which must not block on async work.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for schema cleanup");
            runtime.block_on(drop_schema(config.url(), config.schema()))
        })
        .join();
        if let Ok(Err(err)) = dropped {
            eprintln!("could not drop test schema {}: {err}", self.config.schema());
        }
    }
}

/// Drops a test schema and everything in it.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    tidemark_backend_postgres::validate_schema_name(schema).expect("a valid schema");
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await?;
    conn.close().await
}
