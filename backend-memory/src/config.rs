//! The memory backend's URL: `memory://NAME`.
//!
//! `NAME` is any non-empty text without `?` or `#`; it names a store in the
//! process-wide registry. The memory backend takes no parameters, so any
//! query is rejected naming the first parameter, and a fragment is rejected
//! too. The scheme is matched without regard to case, as URL schemes are.

use tidemark_storage_types::{BackendError, DeterminateKind};

/// The URL scheme of the memory backend.
pub const SCHEME: &str = "memory";

fn invalid(message: String) -> BackendError {
    BackendError::determinate(DeterminateKind::InvalidConfig, message)
}

/// The store name a `memory://NAME` URL denotes.
///
/// # Errors
///
/// [`DeterminateKind::InvalidConfig`] naming what was wrong: no scheme,
/// another scheme, an empty name, a query parameter, a fragment.
pub fn parse_url(url: &str) -> Result<&str, BackendError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(format!(
            "not a memory backend url, expected memory://NAME: {url:?}"
        )));
    };
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return Err(invalid(format!(
            "unsupported scheme for memory backend, expected memory://NAME: {scheme:?} in {url}"
        )));
    }
    if let Some((_, fragment)) = rest.split_once('#') {
        return Err(invalid(format!(
            "memory backend url must not have a fragment: {fragment:?} in {url}"
        )));
    }
    let (name, query) = match rest.split_once('?') {
        Some((name, query)) => (name, Some(query)),
        None => (rest, None),
    };
    if let Some(query) = query {
        let first = query.split('&').next().unwrap_or_default();
        let parameter = first.split_once('=').map_or(first, |(key, _)| key);
        return Err(invalid(format!(
            "unknown parameter for memory backend: {parameter:?} in {url}"
        )));
    }
    if name.is_empty() {
        return Err(invalid(format!(
            "memory backend url has an empty name, expected memory://NAME: {url}"
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(url: &str) -> String {
        let err = parse_url(url).unwrap_err();
        assert_eq!(
            err.determinate_kind(),
            Some(DeterminateKind::InvalidConfig),
            "{url}: {err}"
        );
        match err {
            BackendError::Determinate(err) => err.message,
            other => panic!("{url}: expected a determinate error, got {other}"),
        }
    }

    #[test]
    fn accepts_memory_names() {
        assert_eq!(parse_url("memory://example").unwrap(), "example");
        assert_eq!(parse_url("MEMORY://Example").unwrap(), "Example");
        assert_eq!(parse_url("memory://tests/one").unwrap(), "tests/one");
    }

    #[test]
    fn rejects_other_schemes() {
        assert_eq!(
            error_of("postgres://localhost/db"),
            "unsupported scheme for memory backend, expected memory://NAME: \"postgres\" in postgres://localhost/db"
        );
        assert_eq!(
            error_of("example"),
            "not a memory backend url, expected memory://NAME: \"example\""
        );
        assert!(error_of("memory:example").contains("not a memory backend url"));
    }

    #[test]
    fn rejects_an_empty_name() {
        assert_eq!(
            error_of("memory://"),
            "memory backend url has an empty name, expected memory://NAME: memory://"
        );
    }

    #[test]
    fn rejects_any_parameter() {
        assert_eq!(
            error_of("memory://x?foo=1"),
            "unknown parameter for memory backend: \"foo\" in memory://x?foo=1"
        );
        assert_eq!(
            error_of("memory://x?flag&other=2"),
            "unknown parameter for memory backend: \"flag\" in memory://x?flag&other=2"
        );
        assert_eq!(
            error_of("memory://x?"),
            "unknown parameter for memory backend: \"\" in memory://x?"
        );
        assert!(error_of("memory://?foo=1").contains("\"foo\""));
    }

    #[test]
    fn rejects_a_fragment() {
        assert_eq!(
            error_of("memory://x#part"),
            "memory backend url must not have a fragment: \"part\" in memory://x#part"
        );
    }
}
