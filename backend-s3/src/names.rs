//! Checks of the names and addresses a configuration gives: the bucket, the
//! key prefix, the region and the endpoint. What passes is confined: every
//! key the backend builds is `PREFIX/` followed by fixed words and UUIDs, so
//! no configured or stored value can make a key leave the prefix, and no
//! value can change the host a request goes to beyond the configured
//! endpoint. What does not pass is refused with `Determinate(InvalidConfig)`
//! naming the setting and the rule, quoting at most [`SHOWN_CHARS`]
//! characters of the value.
//!
//! The rules are stricter than S3's own (which allows any UTF-8 in keys):
//! a prefix that a proxy, a server's path normalisation or a shell could
//! read differently from the backend is refused rather than escaped.

use tidemark_storage_types::{BackendError, DeterminateKind};

/// The longest key prefix accepted, in bytes. S3 keys are at most 1024
/// bytes; the backend's own part of a key is under 100.
pub const MAX_PREFIX_BYTES: usize = 512;

/// The longest bucket name accepted (S3's limit).
pub const MAX_BUCKET_BYTES: usize = 63;

/// The longest region name accepted.
pub const MAX_REGION_BYTES: usize = 64;

/// The longest endpoint URL accepted.
pub const MAX_ENDPOINT_BYTES: usize = 2048;

/// How much of a refused value an error quotes.
pub const SHOWN_CHARS: usize = 64;

fn invalid(message: String) -> BackendError {
    BackendError::determinate(DeterminateKind::InvalidConfig, message)
}

/// `value` for an error message: quoted, at most [`SHOWN_CHARS`]
/// characters, with the full length named when cut.
pub(crate) fn shown(value: &str) -> String {
    if value.chars().count() <= SHOWN_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(SHOWN_CHARS).collect();
        format!("{head:?}... ({} bytes)", value.len())
    }
}

/// A bucket name: 1 to 63 bytes of ASCII letters, digits, `.`, `-` and `_`,
/// starting and ending with a letter or digit, without `..`.
pub(crate) fn validate_bucket(bucket: &str) -> Result<(), BackendError> {
    let problem = if bucket.is_empty() {
        return Err(invalid(
            "s3 bucket is not set: set TIDEMARK_S3_BUCKET or name it in the url".to_string(),
        ));
    } else if bucket.len() > MAX_BUCKET_BYTES {
        Some(format!("is longer than {MAX_BUCKET_BYTES} bytes"))
    } else if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        Some("may only contain ASCII letters, digits, '.', '-' and '_'".to_string())
    } else if !bucket.as_bytes()[0].is_ascii_alphanumeric()
        || !bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric()
    {
        Some("must start and end with a letter or digit".to_string())
    } else if bucket.contains("..") {
        Some("must not contain '..'".to_string())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(invalid(format!(
            "s3 bucket name is not valid: it {problem}: bucket={}",
            shown(bucket)
        ))),
        None => Ok(()),
    }
}

/// A key prefix: empty, or `/`-separated segments of ASCII letters, digits,
/// `.`, `-` and `_`, none of them empty, `.` or `..`, at most
/// [`MAX_PREFIX_BYTES`] in all. Leading and trailing `/` are ignored, as
/// the key layout ignores them.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), BackendError> {
    let trimmed = prefix.trim_matches('/');
    let problem = if trimmed.len() > MAX_PREFIX_BYTES {
        Some(format!("is longer than {MAX_PREFIX_BYTES} bytes"))
    } else if trimmed.is_empty() {
        None
    } else if !trimmed
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/'))
    {
        Some("may only contain ASCII letters, digits, '.', '-', '_' and '/'".to_string())
    } else if trimmed.split('/').any(str::is_empty) {
        Some("must not contain an empty segment ('//')".to_string())
    } else if trimmed
        .split('/')
        .any(|segment| matches!(segment, "." | ".."))
    {
        Some("must not contain a '.' or '..' segment".to_string())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(invalid(format!(
            "s3 prefix is not valid: it {problem}: prefix={}",
            shown(prefix)
        ))),
        None => Ok(()),
    }
}

/// Whether the path of an `s3://` URL's text (before the parser normalises
/// it) has a `.` or `..` segment, plain or percent-encoded: the parser
/// would silently resolve it into another prefix.
pub(crate) fn url_path_has_dot_segment(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let Some(slash) = rest.find('/') else {
        return false;
    };
    let path = &rest[slash..];
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split(['/', '\\']).any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        matches!(decoded.as_str(), "." | "..")
    })
}

/// A region name: 1 to 64 bytes of ASCII letters, digits, `-` and `_` (it
/// becomes part of a host name and of every request signature).
pub(crate) fn validate_region(region: &str) -> Result<(), BackendError> {
    let valid = !region.is_empty()
        && region.len() <= MAX_REGION_BYTES
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "s3 region is not valid: it must be 1 to {MAX_REGION_BYTES} ASCII letters, digits, '-' and '_': region={}",
            shown(region)
        )))
    }
}

/// An endpoint: an `http` or `https` URL with a host, no user name or
/// password (credentials are never part of a setting that is shown), no
/// query or fragment, no control characters or spaces, at most
/// [`MAX_ENDPOINT_BYTES`].
pub(crate) fn validate_endpoint(endpoint: &str) -> Result<(), BackendError> {
    // SUBTLE: an endpoint with an '@' may carry a password, so it is never
    // quoted, whatever else is wrong with it.
    let fail = |problem: &str, show: bool| {
        let value = if show && !endpoint.contains('@') {
            shown(endpoint)
        } else {
            "<not shown>".to_string()
        };
        Err(invalid(format!(
            "s3 endpoint is not valid: it {problem}: endpoint={value}"
        )))
    };
    if endpoint.len() > MAX_ENDPOINT_BYTES {
        return fail(&format!("is longer than {MAX_ENDPOINT_BYTES} bytes"), true);
    }
    // SUBTLE: checked on the text, before parsing: the URL parser drops tabs
    // and newlines silently.
    if endpoint
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return fail("must not contain control characters or spaces", true);
    }
    let parsed = match url::Url::parse(endpoint) {
        Ok(parsed) => parsed,
        Err(err) => return fail(&format!("is not a url ({err})"), true),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return fail(
            "must not carry a user name or password (give credentials with S3Config::with_credentials or the standard chain)",
            false,
        );
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return fail("must be an http:// or https:// url", true);
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return fail("names no host", true);
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return fail("must not have a query or fragment", true);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(result: Result<(), BackendError>, expected: &str) {
        let err = result.unwrap_err();
        assert_eq!(
            err.determinate_kind(),
            Some(DeterminateKind::InvalidConfig),
            "{err}"
        );
        assert!(err.to_string().contains(expected), "{err}");
    }

    #[test]
    fn buckets() {
        for good in ["b", "my-bucket", "a.b_c-1", &"a".repeat(63), "Legacy"] {
            validate_bucket(good).unwrap();
        }
        refused(validate_bucket(""), "not set");
        refused(validate_bucket(&"a".repeat(64)), "longer than 63");
        for bad in ["a/b", "a b", "b\0", "b'", "b\"", "é", "a?b", "a#b", "a:1"] {
            refused(validate_bucket(bad), "may only contain");
        }
        for bad in [".b", "b.", "-b", "..", "."] {
            refused(validate_bucket(bad), "start and end");
        }
        refused(validate_bucket("a..b"), "'..'");
    }

    #[test]
    fn prefixes() {
        for good in [
            "",
            "/",
            "p",
            "a/b",
            "/a/b/",
            "team-1/env_2/v1.0",
            &"a".repeat(512),
        ] {
            validate_prefix(good).unwrap();
        }
        refused(validate_prefix(&"a".repeat(513)), "longer than 512");
        for bad in [
            "a\0b", "a b", "a'b", "a\"b", "é", "a\\b", "a%2e", "a?b", "a#b", "~x",
        ] {
            refused(validate_prefix(bad), "may only contain");
        }
        refused(validate_prefix("a//b"), "empty segment");
        for bad in ["..", "a/..", "../b", "a/./b", "./a", "a/../../b"] {
            refused(validate_prefix(bad), "'..' segment");
        }
        // Dots inside a segment are plain characters.
        validate_prefix("a..b/...").unwrap();
    }

    #[test]
    fn dot_segments_in_url_paths() {
        for bad in [
            "s3://b/..",
            "s3://b/a/../c",
            "s3://b/./a",
            "s3://b/a/%2e%2E/c",
            "s3://b/a/.%2e?x=1",
            "s3://b/a\\..\\c",
        ] {
            assert!(url_path_has_dot_segment(bad), "{bad}");
        }
        for good in ["s3://b", "s3://b/", "s3://b/a.b/..c?x=..", "s3://b/a#.."] {
            assert!(!url_path_has_dot_segment(good), "{good}");
        }
    }

    #[test]
    fn regions() {
        for good in ["us-east-1", "garage", "eu_west"] {
            validate_region(good).unwrap();
        }
        for bad in [
            "",
            "us-east-1.evil.example",
            "a/b",
            "a\0",
            "é",
            &"a".repeat(65),
        ] {
            refused(validate_region(bad), "s3 region is not valid");
        }
    }

    #[test]
    fn endpoints() {
        for good in [
            "http://127.0.0.1:9000",
            "https://s3.example.com",
            "http://[::1]:80/",
        ] {
            validate_endpoint(good).unwrap();
        }
        refused(validate_endpoint("ftp://h"), "http:// or https://");
        refused(
            validate_endpoint("not a url"),
            "control characters or spaces",
        );
        refused(validate_endpoint("http://h\n"), "control characters");
        refused(validate_endpoint("http://h/?x=1"), "query or fragment");
        refused(validate_endpoint("127.0.0.1:9000"), "is not a url");
        refused(validate_endpoint("localhost:9000"), "http:// or https://");
        refused(
            validate_endpoint(&format!("http://h/{}", "a".repeat(2048))),
            "longer",
        );
        let err = validate_endpoint("http://user:hunter2@h").unwrap_err();
        assert!(err.to_string().contains("user name or password"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = validate_endpoint("http://user:hunter2@h/\n").unwrap_err();
        assert!(err.to_string().contains("control characters"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(10_000);
        let text = shown(&long);
        assert!(text.len() < 100, "{text}");
        assert!(text.ends_with("(10000 bytes)"), "{text}");
        assert_eq!(shown("ab"), "\"ab\"");
    }
}
