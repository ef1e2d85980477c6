//! PostgreSQL PersistBackend for tidemark (sqlx)
