//! A store under `s3://BUCKET/PREFIX`, through Apache Arrow's `object_store`.
//!
//! Configured by the standard variables (`AmazonS3Builder::from_env`):
//! `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP`. New objects are put with `PutMode::Create` (`If-None-Match: *`):
//! a name is never overwritten by accident, and a put is atomic (whole or absent).
//! The API is synchronous: a current-thread tokio runtime drives each call.

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig};
use std::time::Duration;

use crate::backend::{Backend, BackendError};

pub struct S3 {
    store: AmazonS3,
    prefix: String,
    target: String,
    runtime: tokio::runtime::Runtime,
}

fn remote(what: String, e: object_store::Error) -> BackendError {
    match e {
        object_store::Error::NotFound { .. } => BackendError::NotFound(what),
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            BackendError::Exists(what)
        }
        e => BackendError::Remote(format!("{what}: {e}")),
    }
}

/// A few quick retries of a failed request (object_store's default tries for up to 3
/// minutes): a caller that cannot reach the store hears of it within seconds, and the
/// callers that wait for it (`follow`, the recorder) retry on their own schedule.
fn retry_config() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

impl S3 {
    /// `target` is `s3://BUCKET` or `s3://BUCKET/PREFIX`.
    pub fn open(target: &str) -> Result<S3, BackendError> {
        let rest = target.strip_prefix("s3://").unwrap_or(target);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BackendError::Refused(format!(
                "{target}: no bucket (write s3://BUCKET/PREFIX)"
            )));
        }
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry_config())
            .build()
            .map_err(|e| BackendError::Remote(format!("{target}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BackendError::Io {
                what: "cannot start the S3 client's runtime".into(),
                source: e,
            })?;
        Ok(S3 {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            target: target.to_string(),
            runtime,
        })
    }

    fn path(&self, name: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(name)
        } else {
            ObjPath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn shown(&self, name: &str) -> String {
        format!("{}/{name}", self.target.trim_end_matches('/'))
    }

    fn put(&self, name: &str, bytes: &[u8], mode: PutMode) -> Result<(), BackendError> {
        let path = self.path(name);
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        let payload = PutPayload::from(bytes.to_vec());
        self.runtime
            .block_on(self.store.put_opts(&path, payload, opts))
            .map(|_| ())
            .map_err(|e| remote(self.shown(name), e))
    }
}

impl Backend for S3 {
    fn get(&self, name: &str) -> Result<Vec<u8>, BackendError> {
        let path = self.path(name);
        self.runtime
            .block_on(async {
                let r = self.store.get(&path).await?;
                r.bytes().await
            })
            .map(|b| b.to_vec())
            .map_err(|e| remote(self.shown(name), e))
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let path = self.path(name);
        let b = self
            .runtime
            .block_on(self.store.get_range(&path, offset..offset + len))
            .map_err(|e| remote(self.shown(name), e))?;
        if b.len() as u64 != len {
            return Err(BackendError::Remote(format!(
                "{}: asked for {len} bytes at {offset}, got {}",
                self.shown(name),
                b.len()
            )));
        }
        Ok(b.to_vec())
    }

    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.put(name, bytes, PutMode::Create)
    }

    fn put_replace(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.put(name, bytes, PutMode::Overwrite)
    }

    fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, BackendError> {
        let prefix = self.path(dir);
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let metas: Vec<_> = self
            .runtime
            .block_on(self.store.list(Some(&prefix)).try_collect())
            .map_err(|e| remote(self.shown(dir), e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                let name = full.strip_prefix(&strip)?.to_string();
                Some((name, m.size))
            })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<(), BackendError> {
        let path = self.path(name);
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote(self.shown(name), e)),
        }
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}
