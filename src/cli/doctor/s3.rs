//! `doctor` for S3: are conditional writes enforced, and atomic under a
//! race? Do ETags come back? How slow are PUT, GET and conditional PUT?
//!
//! The S3 backend commits every shard change with a conditional PUT of the
//! shard's state object (`docs/decisions/030-s3-state-protocol.md`). A
//! server that accepts the condition headers but ignores them, or checks
//! them and writes in two steps, lets two appends with the same expected
//! upper both "succeed": one of them is silently lost. The race checks
//! send 8 conditional PUTs at once on one key, `rounds` times, and require
//! exactly one winner each round, whose body is then what a GET returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::ByteStream;
use futures::future::join_all;

use super::{Check, DoctorOptions, DoctorReport};
use crate::cli::ToolError;
use crate::cli::stats::summarize;
use crate::s3::S3Config;

/// Writers in each race round.
pub const RACE_WRITERS: usize = 8;

/// What a single PUT came to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PutOutcome {
    /// Written, with the ETag returned (empty if none came back).
    Written(String),
    /// Refused by its condition (412, or 409 for a concurrent conditional
    /// write in flight).
    Refused(u16),
    /// Anything else.
    Failed(String),
}

#[derive(Clone, Copy)]
enum Condition<'a> {
    None,
    IfNoneMatch,
    IfMatch(&'a str),
}

struct Probe {
    client: Client,
    bucket: String,
    prefix: String,
    written: Vec<String>,
    put: Vec<Duration>,
    get: Vec<Duration>,
    conditional_put: Vec<Duration>,
}

impl Probe {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn put(&mut self, key: &str, body: &str, condition: Condition<'_>) -> PutOutcome {
        let started = Instant::now();
        let outcome = put_object(&self.client, &self.bucket, key, body, condition).await;
        match condition {
            Condition::None => self.put.push(started.elapsed()),
            _ => self.conditional_put.push(started.elapsed()),
        }
        self.written.push(key.to_string());
        outcome
    }

    async fn get(&mut self, key: &str) -> Result<(Vec<u8>, String), String> {
        let started = Instant::now();
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| format!("get failed: {}", describe(&err)));
        let result = match result {
            Ok(output) => {
                let etag = output.e_tag().unwrap_or_default().to_string();
                output
                    .body
                    .collect()
                    .await
                    .map(|bytes| (bytes.into_bytes().to_vec(), etag))
                    .map_err(|err| format!("reading the body failed: {err}"))
            }
            Err(err) => Err(err),
        };
        self.get.push(started.elapsed());
        result
    }

    /// Runs `rounds` races of [`RACE_WRITERS`] conditional PUTs on a fresh
    /// key (`If-None-Match: *`) or on an existing one (`If-Match`).
    async fn race(&mut self, name: &str, rounds: usize, if_match: bool) -> Check {
        for round in 0..rounds {
            let key = self.key(&format!(
                "race-{}-{round}",
                if if_match { "match" } else { "none" }
            ));
            let mut current_etag = String::new();
            if if_match {
                match self.put(&key, "initial", Condition::None).await {
                    PutOutcome::Written(etag) if !etag.is_empty() => current_etag = etag,
                    other => {
                        return Check::fail(
                            name,
                            format!("could not write the object to race on: {other:?}"),
                        );
                    }
                }
            }
            let bodies: Vec<String> = (0..RACE_WRITERS)
                .map(|writer| format!("round {round} writer {writer}"))
                .collect();
            let condition = if if_match {
                Condition::IfMatch(&current_etag)
            } else {
                Condition::IfNoneMatch
            };
            let started = Instant::now();
            let outcomes = join_all(
                bodies
                    .iter()
                    .map(|body| put_object(&self.client, &self.bucket, &key, body, condition)),
            )
            .await;
            let elapsed = started.elapsed();
            self.conditional_put
                .extend(std::iter::repeat_n(elapsed, RACE_WRITERS));
            self.written.push(key.clone());
            let mut winners = Vec::new();
            for (writer, outcome) in outcomes.iter().enumerate() {
                match outcome {
                    PutOutcome::Written(_) => winners.push(writer),
                    PutOutcome::Refused(_) => {}
                    PutOutcome::Failed(err) => {
                        return Check::fail(
                            name,
                            format!("round {round}: writer {writer} failed: {err}"),
                        );
                    }
                }
            }
            if winners.len() != 1 {
                return Check::fail(
                    name,
                    format!(
                        "conditional writes are not atomic: {} of {RACE_WRITERS} concurrent writers succeeded, so concurrent appends can both be acknowledged and one lost: round={round} winners={winners:?}",
                        winners.len()
                    ),
                );
            }
            match self.get(&key).await {
                Ok((body, _)) if body == bodies[winners[0]].as_bytes() => {}
                Ok((body, _)) => {
                    return Check::fail(
                        name,
                        format!(
                            "the object does not hold the winner's write: round={round} winner={} stored={:?}",
                            winners[0],
                            String::from_utf8_lossy(&body)
                        ),
                    );
                }
                Err(err) => return Check::fail(name, format!("round {round}: {err}")),
            }
        }
        Check::pass(
            name,
            format!(
                "{rounds} rounds of {RACE_WRITERS} concurrent writers: exactly one won each round"
            ),
        )
    }

    async fn clean_up(&self) {
        let mut keys = self.written.clone();
        keys.sort();
        keys.dedup();
        for key in keys {
            let _ = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await;
        }
    }
}

fn describe<E: std::error::Error + 'static>(
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    let status = err
        .raw_response()
        .map(|response| response.status().as_u16());
    let mut text = error_chain(err);
    if let Some(status) = status {
        text = format!("status {status}: {text}");
    }
    text
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn put_object(
    client: &Client,
    bucket: &str,
    key: &str,
    body: &str,
    condition: Condition<'_>,
) -> PutOutcome {
    let mut request = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.as_bytes().to_vec()));
    request = match condition {
        Condition::None => request,
        Condition::IfNoneMatch => request.if_none_match("*"),
        Condition::IfMatch(etag) => request.if_match(etag),
    };
    match request.send().await {
        Ok(output) => PutOutcome::Written(output.e_tag().unwrap_or_default().to_string()),
        Err(err) => match err
            .raw_response()
            .map(|response| response.status().as_u16())
        {
            Some(status @ (409 | 412)) => PutOutcome::Refused(status),
            _ => PutOutcome::Failed(describe(&err)),
        },
    }
}

/// A client for `config` with retries off (a retried conditional PUT would
/// blur who won) and plain request bodies (no trailing checksums, which
/// some S3-compatible servers reject).
async fn client_for(config: &S3Config) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = config.region() {
        loader = loader.region(Region::new(region.to_string()));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(config.path_style())
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        );
    if shared.region().is_none() {
        builder = builder.region(Region::new("us-east-1"));
    }
    if let Some(endpoint) = config.endpoint() {
        builder = builder.endpoint_url(endpoint);
    }
    Client::from_conf(builder.build())
}

/// Checks the S3 store `url` names. Writes only under
/// `PREFIX/doctor/RUN/`, and deletes what it wrote.
///
/// # Errors
///
/// A URL the backend does not accept; a store that cannot be reached is a
/// failed check.
pub async fn check(url: &str, options: DoctorOptions) -> Result<DoctorReport, ToolError> {
    let config = S3Config::from_url(url)?;
    let prefix = if config.prefix().is_empty() {
        String::new()
    } else {
        format!("{}/", config.prefix())
    };
    let mut probe = Probe {
        client: client_for(&config).await,
        bucket: config.bucket().to_string(),
        prefix: format!("{prefix}doctor/{}/", uuid::Uuid::new_v4().simple()),
        written: Vec::new(),
        put: Vec::new(),
        get: Vec::new(),
        conditional_put: Vec::new(),
    };
    let checks = run_checks(&mut probe, options).await;
    probe.clean_up().await;
    let latency = BTreeMap::from([
        ("put".to_string(), summarize(&probe.put)),
        ("get".to_string(), summarize(&probe.get)),
        (
            "conditional_put".to_string(),
            summarize(&probe.conditional_put),
        ),
    ]);
    Ok(DoctorReport::new("s3", checks, latency))
}

async fn run_checks(probe: &mut Probe, options: DoctorOptions) -> Vec<Check> {
    let mut checks = Vec::new();
    // PUT and GET round trip, with ETags.
    let key = probe.key("plain");
    let body = "tidemark doctor";
    let mut put_etag = String::new();
    let puts = 5;
    for _ in 0..puts {
        match probe.put(&key, body, Condition::None).await {
            PutOutcome::Written(etag) => put_etag = etag,
            other => {
                checks.push(Check::fail(
                    "put and get",
                    format!(
                        "cannot write to the bucket, so nothing else can be checked: {other:?}"
                    ),
                ));
                return checks;
            }
        }
    }
    let mut read_back = probe.get(&key).await;
    for _ in 0..4 {
        read_back = probe.get(&key).await;
    }
    match &read_back {
        Ok((stored, _)) if stored == body.as_bytes() => checks.push(Check::pass(
            "put and get",
            format!("{puts} puts and 5 gets; the object reads back as written"),
        )),
        Ok((stored, _)) => checks.push(Check::fail(
            "put and get",
            format!(
                "the object does not read back as written: stored={:?}",
                String::from_utf8_lossy(stored)
            ),
        )),
        Err(err) => checks.push(Check::fail("put and get", err.clone())),
    }
    let get_etag = read_back.map(|(_, etag)| etag).unwrap_or_default();
    checks.push(if put_etag.is_empty() || get_etag.is_empty() {
        Check::fail(
            "etags returned",
            format!("the backend's compare-and-swap needs ETags on PUT and GET: put={put_etag:?} get={get_etag:?}"),
        )
    } else if put_etag != get_etag {
        Check::fail(
            "etags returned",
            format!("a GET does not return the ETag of the PUT it reads: put={put_etag} get={get_etag}"),
        )
    } else {
        Check::pass("etags returned", format!("put and get agree: {put_etag}"))
    });
    checks.push(if_none_match_enforced(probe).await);
    checks.push(if_match_enforced(probe).await);
    checks.push(
        probe
            .race("if-none-match atomic under a race", options.rounds, false)
            .await,
    );
    checks.push(
        probe
            .race("if-match atomic under a race", options.rounds, true)
            .await,
    );
    checks
}

async fn if_none_match_enforced(probe: &mut Probe) -> Check {
    const NAME: &str = "if-none-match enforced";
    let key = probe.key("if-none-match");
    match probe.put(&key, "first", Condition::IfNoneMatch).await {
        PutOutcome::Written(_) => {}
        other => {
            return Check::fail(
                NAME,
                format!("a create of a new key was not accepted: {other:?}"),
            );
        }
    }
    match probe.put(&key, "second", Condition::IfNoneMatch).await {
        PutOutcome::Refused(status) => {
            Check::pass(NAME, format!("a second create was refused with {status}"))
        }
        PutOutcome::Written(_) => Check::fail(
            NAME,
            "a PUT with If-None-Match: * replaced an existing object: the store ignores the condition",
        ),
        PutOutcome::Failed(err) => {
            Check::fail(NAME, format!("a second create failed oddly: {err}"))
        }
    }
}

async fn if_match_enforced(probe: &mut Probe) -> Check {
    const NAME: &str = "if-match enforced";
    let key = probe.key("if-match");
    let etag = match probe.put(&key, "first", Condition::None).await {
        PutOutcome::Written(etag) => etag,
        other => return Check::fail(NAME, format!("could not write the object: {other:?}")),
    };
    match probe
        .put(
            &key,
            "stale",
            Condition::IfMatch("\"not-the-current-etag\""),
        )
        .await
    {
        PutOutcome::Refused(_) => {}
        PutOutcome::Written(_) => {
            return Check::fail(
                NAME,
                "a PUT with a stale If-Match ETag replaced the object: the store ignores the condition",
            );
        }
        PutOutcome::Failed(err) => {
            return Check::fail(NAME, format!("a stale If-Match failed oddly: {err}"));
        }
    }
    match probe.put(&key, "second", Condition::IfMatch(&etag)).await {
        PutOutcome::Written(new_etag) if new_etag != etag => {
            Check::pass(NAME, "a stale ETag was refused, the current one accepted")
        }
        PutOutcome::Written(new_etag) => Check::fail(
            NAME,
            format!(
                "the ETag did not change with the content, so a stale writer cannot be told apart: etag={new_etag}"
            ),
        ),
        other => Check::fail(
            NAME,
            format!("a PUT with the current ETag was not accepted: {other:?}"),
        ),
    }
}
