//! The S3 requests the backend makes, with failures classified.

use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;
use futures::StreamExt;
use tidemark_storage_types::{BackendError, ShardId};

use crate::downloads::PutCounters;
use crate::errors::{RequestContext, S3Failure, classify, error_chain};
use crate::keys::Keys;
use crate::state::ShardState;

/// Keys per `DeleteObjects` request (the S3 limit).
const DELETE_BATCH: usize = 1000;

/// The outcome of a conditional write.
#[derive(Debug)]
pub(crate) enum ConditionalPut {
    /// Written; the new ETag.
    Written(String),
    /// Refused: 412 (the condition did not hold) or 409 (a concurrent
    /// conditional write). Nothing was written.
    Refused,
}

/// An object found by a listing.
#[derive(Clone, Debug)]
pub(crate) struct ListedObject {
    pub key: String,
    pub last_modified: Option<SystemTime>,
}

/// A client bound to one bucket and prefix.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    pub client: Client,
    pub bucket: String,
    pub keys: Keys,
    /// PUTs made through this store and its clones.
    pub puts: Arc<PutCounters>,
}

impl Store {
    fn context<'a>(&'a self, operation: &'static str, key: &'a str) -> RequestContext<'a> {
        RequestContext {
            operation,
            bucket: &self.bucket,
            key,
        }
    }

    /// Reads a shard's state and its ETag; `None` if the shard has no state.
    pub(crate) async fn get_state(
        &self,
        shard: ShardId,
    ) -> Result<Option<(ShardState, String)>, BackendError> {
        let key = self.keys.state(shard);
        match self.get_object_with_etag("get_state", &key).await? {
            None => Ok(None),
            Some((bytes, etag)) => Ok(Some((ShardState::from_bytes(&key, &bytes)?, etag))),
        }
    }

    /// Writes a shard's state iff it has none (`If-None-Match: *`).
    pub(crate) async fn create_state(
        &self,
        shard: ShardId,
        state: &ShardState,
    ) -> Result<ConditionalPut, BackendError> {
        let key = self.keys.state(shard);
        self.put_conditional("create_state", &key, state.to_bytes(), Condition::Absent)
            .await
    }

    /// Replaces a shard's state iff its ETag is still `etag` (`If-Match`).
    pub(crate) async fn replace_state(
        &self,
        shard: ShardId,
        state: &ShardState,
        etag: &str,
    ) -> Result<ConditionalPut, BackendError> {
        let key = self.keys.state(shard);
        self.put_conditional(
            "replace_state",
            &key,
            state.to_bytes(),
            Condition::Matches(etag),
        )
        .await
    }

    /// A conditional PUT.
    pub(crate) async fn put_conditional(
        &self,
        operation: &'static str,
        key: &str,
        body: Vec<u8>,
        condition: Condition<'_>,
    ) -> Result<ConditionalPut, BackendError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body));
        self.puts.record(true);
        let request = match condition {
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(etag) => request.if_match(etag),
        };
        match request.send().await {
            Ok(output) => Ok(ConditionalPut::Written(
                output.e_tag().unwrap_or_default().to_string(),
            )),
            Err(err) => match classify(err, self.context(operation, key)) {
                S3Failure::PreconditionFailed | S3Failure::Conflict => Ok(ConditionalPut::Refused),
                other => Err(other.into_backend_error(operation, key)),
            },
        }
    }

    /// An unconditional PUT (write-once objects under fresh keys).
    pub(crate) async fn put(
        &self,
        operation: &'static str,
        key: &str,
        body: Bytes,
    ) -> Result<(), BackendError> {
        self.puts.record(false);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|err| {
                classify(err, self.context(operation, key)).into_backend_error(operation, key)
            })
    }

    /// Reads an object; `None` if it does not exist.
    pub(crate) async fn get(
        &self,
        operation: &'static str,
        key: &str,
    ) -> Result<Option<Bytes>, BackendError> {
        Ok(self
            .get_object_with_etag(operation, key)
            .await?
            .map(|(bytes, _)| bytes))
    }

    /// Reads an object and its ETag (empty if the store sent none); `None`
    /// if it does not exist.
    pub(crate) async fn get_object_with_etag(
        &self,
        operation: &'static str,
        key: &str,
    ) -> Result<Option<(Bytes, String)>, BackendError> {
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(err) => {
                return match classify(err, self.context(operation, key)) {
                    S3Failure::NoSuchKey => Ok(None),
                    other => Err(other.into_backend_error(operation, key)),
                };
            }
        };
        let etag = output.e_tag().unwrap_or_default().to_string();
        let body = output.body.collect().await.map_err(|err| {
            let message = format!(
                "reading an s3 object body failed: op={operation} bucket={} key={key} error={}",
                self.bucket,
                error_chain(&err)
            );
            BackendError::indeterminate_caused_by(message, err)
        })?;
        Ok(Some((body.into_bytes(), etag)))
    }

    /// Deletes an object (deleting a missing object succeeds).
    pub(crate) async fn delete(
        &self,
        operation: &'static str,
        key: &str,
    ) -> Result<(), BackendError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| {
                classify(err, self.context(operation, key)).into_backend_error(operation, key)
            })
    }

    /// Deletes objects, a thousand per request.
    pub(crate) async fn delete_many(
        &self,
        operation: &'static str,
        keys: Vec<String>,
    ) -> Result<(), BackendError> {
        for chunk in keys.chunks(DELETE_BATCH) {
            let first = chunk.first().map(String::as_str).unwrap_or_default();
            let objects = chunk
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| {
                    BackendError::determinate(
                        tidemark_storage_types::DeterminateKind::Other,
                        format!("could not build a delete request: key={first} error={err}"),
                    )
                })?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|err| {
                    BackendError::determinate(
                        tidemark_storage_types::DeterminateKind::Other,
                        format!("could not build a delete request: key={first} error={err}"),
                    )
                })?;
            let output = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|err| {
                    classify(err, self.context(operation, first))
                        .into_backend_error(operation, first)
                })?;
            if let Some(failed) = output.errors().first() {
                return Err(BackendError::indeterminate(format!(
                    "s3 did not delete every object: op={operation} bucket={} key={} code={} message={}",
                    self.bucket,
                    failed.key().unwrap_or_default(),
                    failed.code().unwrap_or_default(),
                    failed.message().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// Every object under `prefix`.
    pub(crate) async fn list(
        &self,
        operation: &'static str,
        prefix: &str,
    ) -> Result<Vec<ListedObject>, BackendError> {
        let pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let pages = pages.try_collect().await.map_err(|err| {
            classify(err, self.context(operation, prefix)).into_backend_error(operation, prefix)
        })?;
        Ok(pages
            .iter()
            .flat_map(|page| page.contents())
            .filter_map(|object| {
                Some(ListedObject {
                    key: object.key()?.to_string(),
                    last_modified: object
                        .last_modified()
                        .and_then(|time| SystemTime::try_from(*time).ok()),
                })
            })
            .collect())
    }

    /// The keys under `prefix` that sort after `start_after`, in order.
    pub(crate) async fn list_keys_after(
        &self,
        operation: &'static str,
        prefix: &str,
        start_after: &str,
    ) -> Result<Vec<String>, BackendError> {
        let pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .start_after(start_after)
            .into_paginator()
            .send();
        let pages = pages.try_collect().await.map_err(|err| {
            classify(err, self.context(operation, prefix)).into_backend_error(operation, prefix)
        })?;
        Ok(pages
            .iter()
            .flat_map(|page| page.contents())
            .filter_map(|object| object.key().map(str::to_string))
            .collect())
    }

    /// The keys of every object under `prefix`, for callers that only need
    /// names.
    pub(crate) async fn list_keys(
        &self,
        operation: &'static str,
        prefix: &str,
    ) -> Result<Vec<String>, BackendError> {
        Ok(self
            .list(operation, prefix)
            .await?
            .into_iter()
            .map(|object| object.key)
            .collect())
    }
}

/// The condition of a conditional PUT.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Condition<'a> {
    /// `If-None-Match: *`: only if the key does not exist.
    Absent,
    /// `If-Match: ETAG`: only if the object's ETag is this one.
    Matches(&'a str),
}

/// Runs futures with at most `limit` in flight, keeping their order.
pub(crate) async fn bounded_in_order<F, O>(futures: Vec<F>, limit: usize) -> Vec<O>
where
    F: Future<Output = O>,
{
    futures::stream::iter(futures)
        .buffered(limit.max(1))
        .collect()
        .await
}
