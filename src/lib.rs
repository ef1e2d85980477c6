//! tidemark: durable, versioned collections with frontier semantics for
//! streaming and incremental dataflow engines.
//!
//! This facade re-exports the crates a user needs and picks a
//! [`PersistBackend`] by URL:
//!
//! | URL | backend | Cargo feature |
//! |---|---|---|
//! | `memory://NAME` | in memory; handles on one name share state | `memory` (default) |
//! | `postgres://USER@HOST:PORT/DB?schema=...` | PostgreSQL | `postgres` |
//! | `s3://BUCKET/PREFIX?endpoint=...&region=...` | S3-compatible object storage | `s3` |
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use timely::progress::Antichain;
//! use tidemark::types::{IdempotencyToken, PersistBackend, ShardId};
//! let backend = tidemark::open("memory://doc").await.unwrap();
//! let shard = ShardId::new();
//! let frontiers = backend.open(shard).await.unwrap();
//! assert_eq!(frontiers.upper, Antichain::from_elem(0));
//! assert!(tidemark::open("memory://doc?bogus=1").await.is_err());
//! assert!(tidemark::open("ftp://x").await.is_err());
//! # });
//! ```

#![warn(missing_docs)]

pub mod cli;
pub mod observe;

use std::sync::Arc;

use thiserror::Error;

pub use tidemark_storage_controller as controller;
pub use tidemark_storage_dataflow as dataflow;
pub use tidemark_storage_replica as replica;
pub use tidemark_storage_types as types;
pub use tidemark_storage_types::{BackendError, PersistBackend};

#[cfg(feature = "memory")]
pub use tidemark_backend_memory as memory;
#[cfg(feature = "postgres")]
pub use tidemark_backend_postgres as postgres;
#[cfg(feature = "s3")]
pub use tidemark_backend_s3 as s3;

/// A backend chosen at run time.
pub type DynBackend = Arc<dyn PersistBackend<u64>>;

/// Why [`open`] could not give a backend.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The text is not a URL.
    #[error("invalid backend url: {reason}: {url}")]
    InvalidUrl {
        /// The URL, with any password removed.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// No backend has this scheme.
    #[error("unknown backend scheme {scheme:?}: expected memory://, postgres:// or s3://")]
    UnknownScheme {
        /// The scheme given.
        scheme: String,
    },
    /// The backend exists but this build does not include it.
    #[error("the {scheme}:// backend is not compiled in: enable the tidemark feature {feature:?}")]
    BackendNotEnabled {
        /// The scheme given.
        scheme: String,
        /// The Cargo feature that adds it.
        feature: &'static str,
    },
    /// The backend rejected its configuration or could not connect.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Opens the backend a URL names (see the [crate docs](crate) for the
/// forms). Handles opened on the same URL share storage. The backend is
/// wrapped in [`observe::InstrumentedBackend`]: every operation gets a
/// `tracing` span and metrics.
///
/// # Errors
///
/// [`OpenError`] naming what was wrong: not a URL, an unknown scheme, a
/// backend this build lacks, or the backend's own configuration or
/// connection error (unknown parameters included).
pub async fn open(url: &str) -> Result<DynBackend, OpenError> {
    let parsed = url::Url::parse(url).map_err(|err| OpenError::InvalidUrl {
        url: redact(url),
        reason: err.to_string(),
    })?;
    match parsed.scheme() {
        "memory" => open_memory(url).await,
        "postgres" | "postgresql" => open_postgres(url).await,
        "s3" => open_s3(url).await,
        other => Err(OpenError::UnknownScheme {
            scheme: other.to_string(),
        }),
    }
}

#[cfg(feature = "memory")]
async fn open_memory(url: &str) -> Result<DynBackend, OpenError> {
    Ok(Arc::new(observe::InstrumentedBackend::new(
        "memory",
        memory::MemoryBackend::from_url(url)?,
    )))
}

#[cfg(not(feature = "memory"))]
async fn open_memory(_url: &str) -> Result<DynBackend, OpenError> {
    Err(OpenError::BackendNotEnabled {
        scheme: "memory".into(),
        feature: "memory",
    })
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str) -> Result<DynBackend, OpenError> {
    Ok(Arc::new(observe::InstrumentedBackend::new(
        "postgres",
        postgres::PostgresBackend::from_url(url).await?,
    )))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_url: &str) -> Result<DynBackend, OpenError> {
    Err(OpenError::BackendNotEnabled {
        scheme: "postgres".into(),
        feature: "postgres",
    })
}

#[cfg(feature = "s3")]
async fn open_s3(url: &str) -> Result<DynBackend, OpenError> {
    Ok(Arc::new(observe::InstrumentedBackend::new(
        "s3",
        s3::S3Backend::from_url(url).await?,
    )))
}

#[cfg(not(feature = "s3"))]
async fn open_s3(_url: &str) -> Result<DynBackend, OpenError> {
    Err(OpenError::BackendNotEnabled {
        scheme: "s3".into(),
        feature: "s3",
    })
}

/// The URL with any password replaced, for messages: the user info's, and
/// every query parameter's value of a URL that does not parse (its
/// parameters cannot be told apart reliably, and one may be a password).
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => {
            let (base, query) = match url.split_once('?') {
                Some((base, _)) => (base, "?REDACTED"),
                None => (url, ""),
            };
            match (base.find("://"), base.rfind('@')) {
                (Some(start), Some(at)) if at > start => {
                    format!("{}://REDACTED@{}{query}", &base[..start], &base[at + 1..])
                }
                _ => format!("{base}{query}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_name_what_was_wrong() {
        let err = open("not a url").await.unwrap_err();
        assert!(matches!(err, OpenError::InvalidUrl { .. }), "{err}");
        let err = open("ftp://host/x").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown backend scheme \"ftp\": expected memory://, postgres:// or s3://"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h/db"),
            "postgres://u:REDACTED@h/db"
        );
        assert_eq!(redact("memory://x"), "memory://x");
        assert!(!redact("post gres://u:secret@h/db").contains("secret"));
        assert_eq!(
            redact("postgres://h:notaport/db?password=secret&x=1"),
            "postgres://h:notaport/db?REDACTED"
        );
        assert_eq!(
            redact("post gres://u:secret@h/db?password=secret"),
            "post gres://REDACTED@h/db?REDACTED"
        );
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn missing_features_are_named() {
        let err = open("postgres://localhost/db").await.unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::BackendNotEnabled {
                    feature: "postgres",
                    ..
                }
            ),
            "{err}"
        );
    }
}
