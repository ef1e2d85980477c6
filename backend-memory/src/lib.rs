//! In-memory PersistBackend for tidemark (the embedded default)
