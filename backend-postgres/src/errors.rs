//! Mapping driver errors to [`BackendError`]s.
//!
//! A failure says whether the operation **definitely did not happen**. Two
//! moments are told apart:
//!
//! - **Getting a connection**: nothing was sent, so every
//!   failure is determinate: an unreachable server is `Unavailable`, rejected
//!   credentials (SQLSTATE class 28) `Unauthorized`, a missing database
//!   (`3D000`) `NotFound`.
//! - **Running a statement**: only SQLSTATEs known to
//!   abort the statement and its transaction are determinate (serialization
//!   failure `40001`, deadlock `40P01`, integrity violations class 23:
//!   `Conflict`; ...). A lost connection, a terminated backend and anything
//!   unknown are `Indeterminate`: a commit may have happened before the
//!   answer was lost.
//!
//! Either way the driver's error is kept as the
//! [`source`](std::error::Error::source) of the one returned.

use sqlx::error::DatabaseError;
use tidemark_storage_types::{BackendError, DeterminateKind};

/// The determinate kind for a SQLSTATE, if it is one known to mean the
/// statement (and its transaction) did not apply.
#[must_use]
pub fn determinate_kind_for_sqlstate(code: &str) -> Option<DeterminateKind> {
    let kind = match code {
        // Serialization failure, deadlock, and the other transaction
        // rollback codes: the transaction was rolled back.
        "40001" | "40P01" | "40002" | "40003" => DeterminateKind::Conflict,
        // Integrity constraint violations (unique, foreign key, check, ...).
        _ if code.starts_with("23") => DeterminateKind::Conflict,
        // Invalid authorization specification, invalid password.
        "28000" | "28P01" => DeterminateKind::Unauthorized,
        // Insufficient privilege.
        "42501" => DeterminateKind::Unauthorized,
        // Invalid catalog name (missing database), invalid schema name,
        // undefined table (schema not migrated).
        "3D000" | "3F000" | "42P01" => DeterminateKind::NotFound,
        // Insufficient resources (too many connections, disk full, ...),
        // cannot connect now (server starting up).
        _ if code.starts_with("53") => DeterminateKind::Unavailable,
        "57P03" => DeterminateKind::Unavailable,
        // Feature not supported.
        "0A000" => DeterminateKind::Unsupported,
        // Data exceptions and syntax errors: the statement was rejected.
        _ if code.starts_with("22") => DeterminateKind::Other,
        "42601" | "42703" | "42883" => DeterminateKind::Other,
        _ => return None,
    };
    Some(kind)
}

/// A failure to get a connection (connect, or wait for one from the pool).
/// Nothing was sent, so the result is always determinate.
pub(crate) fn connect_error(err: sqlx::Error, context: &str) -> BackendError {
    let kind = match &err {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| determinate_kind_for_sqlstate(&code))
            .unwrap_or(DeterminateKind::Unavailable),
        sqlx::Error::Configuration(_) => DeterminateKind::InvalidConfig,
        sqlx::Error::Tls(tls) if tls.to_string().contains("without TLS support") => {
            DeterminateKind::Unsupported
        }
        _ => DeterminateKind::Unavailable,
    };
    let hint = match kind {
        DeterminateKind::Unavailable => ": is the server running and reachable?",
        DeterminateKind::Unauthorized => ": check the user and password in the url",
        DeterminateKind::NotFound => ": create the database or fix the url",
        DeterminateKind::Unsupported => ": this build has no tls support, use sslmode=disable",
        _ => "",
    };
    let message = format!(
        "cannot connect to postgres{hint}: {}: {context}",
        describe(&err)
    );
    BackendError::determinate_caused_by(kind, message, err)
}

/// A failure while running a statement: determinate only for SQLSTATEs
/// known to mean nothing applied.
pub(crate) fn statement_error(err: sqlx::Error, context: &str) -> BackendError {
    match &err {
        sqlx::Error::Database(db) => {
            if let Some(kind) = db
                .code()
                .and_then(|code| determinate_kind_for_sqlstate(&code))
            {
                let message = format!(
                    "postgres rejected the statement: {}: {context}",
                    describe(&err)
                );
                return BackendError::determinate_caused_by(kind, message, err);
            }
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            return connect_error(err, context);
        }
        _ => {}
    }
    let message = format!(
        "postgres statement outcome unknown: {}: {context}",
        describe(&err)
    );
    BackendError::indeterminate_caused_by(message, err)
}

/// The error's message with its SQLSTATE, lowercase first word.
fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => describe_database(db.as_ref()),
        other => other.to_string(),
    }
}

fn describe_database(db: &dyn DatabaseError) -> String {
    match db.code() {
        Some(code) => format!("{} (sqlstate {code})", db.message()),
        None => db.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    /// The driver's error under the tidemark one.
    fn driver_cause(err: &BackendError) -> Option<&sqlx::Error> {
        err.source()?.source()?.downcast_ref::<sqlx::Error>()
    }

    #[test]
    fn the_driver_error_is_the_source() {
        let lost = statement_error(sqlx::Error::Protocol("frame cut short".into()), "ctx");
        assert!(!lost.is_determinate());
        let cause = driver_cause(&lost).expect("the sqlx error is kept");
        assert!(cause.to_string().contains("frame cut short"), "{cause}");

        let refused = connect_error(sqlx::Error::PoolTimedOut, "ctx");
        assert_eq!(
            refused.determinate_kind(),
            Some(DeterminateKind::Unavailable)
        );
        assert!(matches!(
            driver_cause(&refused),
            Some(sqlx::Error::PoolTimedOut)
        ));
    }

    #[test]
    fn known_sqlstates_are_determinate() {
        assert_eq!(
            determinate_kind_for_sqlstate("40001"),
            Some(DeterminateKind::Conflict)
        );
        assert_eq!(
            determinate_kind_for_sqlstate("40P01"),
            Some(DeterminateKind::Conflict)
        );
        assert_eq!(
            determinate_kind_for_sqlstate("23505"),
            Some(DeterminateKind::Conflict)
        );
        assert_eq!(
            determinate_kind_for_sqlstate("28P01"),
            Some(DeterminateKind::Unauthorized)
        );
        assert_eq!(
            determinate_kind_for_sqlstate("3D000"),
            Some(DeterminateKind::NotFound)
        );
        assert_eq!(
            determinate_kind_for_sqlstate("53300"),
            Some(DeterminateKind::Unavailable)
        );
        // A terminated backend or a lost connection may have committed.
        assert_eq!(determinate_kind_for_sqlstate("57P01"), None);
        assert_eq!(determinate_kind_for_sqlstate("08006"), None);
        assert_eq!(determinate_kind_for_sqlstate("XX000"), None);
    }

    #[test]
    fn io_errors_mid_statement_are_indeterminate() {
        let err = statement_error(
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            "shard=s1",
        );
        assert!(!err.is_determinate(), "{err}");
        let err = connect_error(
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            "schema=x",
        );
        assert_eq!(err.determinate_kind(), Some(DeterminateKind::Unavailable));
        let err = statement_error(sqlx::Error::PoolTimedOut, "shard=s1");
        assert_eq!(err.determinate_kind(), Some(DeterminateKind::Unavailable));
    }
}
