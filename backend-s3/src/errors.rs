//! How S3 failures become [`BackendError`]s.
//!
//! | failure | result |
//! |---|---|
//! | 412 Precondition Failed | [`S3Failure::PreconditionFailed`]: a lost race, a value |
//! | 409 Conflict (concurrent conditional write) | [`S3Failure::Conflict`]: not applied, retry |
//! | 404 `NoSuchKey` | [`S3Failure::NoSuchKey`]: the caller decides |
//! | 404 `NoSuchBucket` | `Determinate(NotFound)` |
//! | 403 | `Determinate(Unauthorized)` |
//! | 301/307 redirect | `Determinate(InvalidConfig)`: wrong region or endpoint |
//! | 400, 405, 411, 413, 501 | `Determinate(Other)`: the request was refused |
//! | connection refused, name resolution failed | `Determinate(Unavailable)`: the request never reached the server |
//! | the request could not be built | `Determinate(InvalidConfig)` |
//! | timeouts, 5xx, dropped connections, anything else | `Indeterminate` |
//!
//! A [`BackendError`] made from an SDK error keeps it as its
//! [`source`](std::error::Error::source).

use std::error::Error as StdError;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tidemark_storage_types::{BackendError, DeterminateKind};

/// What a failed S3 request means to the backend.
#[derive(Debug)]
pub(crate) enum S3Failure {
    /// 412: a conditional write's condition did not hold.
    PreconditionFailed,
    /// 409: a concurrent conditional write to the same key; not applied.
    Conflict,
    /// 404 on an object key.
    NoSuchKey,
    /// Anything else.
    Backend(BackendError),
}

impl S3Failure {
    /// The failure as an error, for callers with no special case for it.
    pub(crate) fn into_backend_error(self, operation: &str, key: &str) -> BackendError {
        match self {
            S3Failure::Backend(err) => err,
            S3Failure::PreconditionFailed => BackendError::determinate(
                DeterminateKind::Conflict,
                format!("precondition failed: op={operation} key={key}"),
            ),
            S3Failure::Conflict => BackendError::determinate(
                DeterminateKind::Conflict,
                format!("conflicting concurrent write: op={operation} key={key}"),
            ),
            S3Failure::NoSuchKey => BackendError::determinate(
                DeterminateKind::NotFound,
                format!("object does not exist: op={operation} key={key}"),
            ),
        }
    }
}

/// Where a request went, for messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestContext<'a> {
    pub operation: &'static str,
    pub bucket: &'a str,
    pub key: &'a str,
}

/// Classifies a failed SDK request; an error it becomes keeps the SDK's
/// error as its source.
pub(crate) fn classify<E>(err: SdkError<E, HttpResponse>, context: RequestContext<'_>) -> S3Failure
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match classify_sdk_error(&err, context) {
        S3Failure::Backend(backend) => S3Failure::Backend(backend.caused_by(err)),
        value => value,
    }
}

fn classify_sdk_error<E>(err: &SdkError<E, HttpResponse>, context: RequestContext<'_>) -> S3Failure
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().map(str::to_string);
            classify_response(status, code.as_deref(), context)
        }
        SdkError::ResponseError(response) => {
            let status = response.raw().status().as_u16();
            classify_response(status, None, context)
        }
        SdkError::ConstructionFailure(_) => S3Failure::Backend(BackendError::determinate(
            DeterminateKind::InvalidConfig,
            format!(
                "could not build the s3 request: op={} bucket={} key={} error={}",
                context.operation,
                context.bucket,
                context.key,
                error_chain(err)
            ),
        )),
        SdkError::DispatchFailure(dispatch) if !dispatch.is_timeout() && never_sent(err) => {
            S3Failure::Backend(BackendError::determinate(
                DeterminateKind::Unavailable,
                format!(
                    "s3 endpoint unreachable, the request was not sent: op={} bucket={} error={}",
                    context.operation,
                    context.bucket,
                    error_chain(err)
                ),
            ))
        }
        _ => S3Failure::Backend(BackendError::indeterminate(format!(
            "s3 request outcome unknown: op={} bucket={} key={} error={}",
            context.operation,
            context.bucket,
            context.key,
            error_chain(err)
        ))),
    }
}

/// Classifies an HTTP error response by status and S3 error code.
pub(crate) fn classify_response(
    status: u16,
    code: Option<&str>,
    context: RequestContext<'_>,
) -> S3Failure {
    let RequestContext {
        operation,
        bucket,
        key,
    } = context;
    let code_text = code.unwrap_or("none");
    let determinate = |kind, what: &str| {
        S3Failure::Backend(BackendError::determinate(
            kind,
            format!(
                "{what}: op={operation} bucket={bucket} key={key} status={status} code={code_text}"
            ),
        ))
    };
    match (status, code) {
        (412, _) => S3Failure::PreconditionFailed,
        (409, _) => S3Failure::Conflict,
        (404, Some("NoSuchBucket")) => determinate(
            DeterminateKind::NotFound,
            "bucket does not exist, create it or fix the configuration",
        ),
        (404, Some("NoSuchKey") | None) => S3Failure::NoSuchKey,
        (404, Some(_)) => determinate(DeterminateKind::NotFound, "s3 resource not found"),
        (403, _) => determinate(
            DeterminateKind::Unauthorized,
            "access denied, check the credentials and the bucket policy",
        ),
        (301 | 307, _) => determinate(
            DeterminateKind::InvalidConfig,
            "s3 redirected the request, check the region and endpoint",
        ),
        (400 | 405 | 411 | 413 | 501, _) => {
            determinate(DeterminateKind::Other, "s3 refused the request")
        }
        _ => S3Failure::Backend(BackendError::indeterminate(format!(
            "s3 request outcome unknown: op={operation} bucket={bucket} key={key} status={status} code={code_text}"
        ))),
    }
}

/// Whether a dispatch failure happened before the request reached the
/// server: the connection was refused or the host name did not resolve.
fn never_sent(err: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        let text = error.to_string().to_lowercase();
        if text.contains("connection refused")
            || text.contains("dns error")
            || text.contains("failed to lookup address")
        {
            return true;
        }
        current = error.source();
    }
    false
}

/// An error and its sources, joined with `: `.
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut current = err.source();
    while let Some(source) = current {
        let next = source.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        current = source.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: RequestContext<'static> = RequestContext {
        operation: "put_state",
        bucket: "b",
        key: "p/shards/s1/state",
    };

    fn kind(failure: S3Failure) -> Option<DeterminateKind> {
        match failure {
            S3Failure::Backend(err) => err.determinate_kind(),
            other => panic!("expected a backend error, got {other:?}"),
        }
    }

    #[test]
    fn statuses_map_to_what_the_caller_must_do() {
        assert!(matches!(
            classify_response(412, Some("PreconditionFailed"), CONTEXT),
            S3Failure::PreconditionFailed
        ));
        assert!(matches!(
            classify_response(409, Some("ConditionalRequestConflict"), CONTEXT),
            S3Failure::Conflict
        ));
        assert!(matches!(
            classify_response(404, Some("NoSuchKey"), CONTEXT),
            S3Failure::NoSuchKey
        ));
        assert_eq!(
            kind(classify_response(404, Some("NoSuchBucket"), CONTEXT)),
            Some(DeterminateKind::NotFound)
        );
        assert_eq!(
            kind(classify_response(403, Some("AccessDenied"), CONTEXT)),
            Some(DeterminateKind::Unauthorized)
        );
        assert_eq!(
            kind(classify_response(301, None, CONTEXT)),
            Some(DeterminateKind::InvalidConfig)
        );
        assert_eq!(
            kind(classify_response(400, Some("InvalidRequest"), CONTEXT)),
            Some(DeterminateKind::Other)
        );
        for status in [500, 502, 503, 504, 429] {
            let S3Failure::Backend(err) = classify_response(status, None, CONTEXT) else {
                panic!("status {status} is not a backend error");
            };
            assert!(
                !err.is_determinate(),
                "status {status} must be indeterminate"
            );
            assert!(
                err.to_string().contains(&format!("status={status}")),
                "{err}"
            );
        }
    }

    #[test]
    fn the_sdk_error_is_the_source() {
        use aws_sdk_s3::operation::get_object::GetObjectError;
        use std::error::Error;

        let sdk = SdkError::<GetObjectError, HttpResponse>::construction_failure("no endpoint");
        let S3Failure::Backend(err) = classify(sdk, CONTEXT) else {
            panic!("a construction failure is a backend error");
        };
        assert_eq!(err.determinate_kind(), Some(DeterminateKind::InvalidConfig));
        let cause = err
            .source()
            .and_then(Error::source)
            .expect("the sdk error is kept");
        assert!(
            cause
                .downcast_ref::<SdkError<GetObjectError, HttpResponse>>()
                .is_some(),
            "{cause:?}"
        );
    }

    #[test]
    fn messages_name_the_request() {
        let S3Failure::Backend(err) = classify_response(403, Some("AccessDenied"), CONTEXT) else {
            panic!("403 is a backend error");
        };
        let text = err.to_string();
        assert!(text.contains("access denied"), "{text}");
        assert!(text.contains("key=p/shards/s1/state"), "{text}");
        assert!(text.contains("code=AccessDenied"), "{text}");
    }
}
