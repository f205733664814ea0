//! The S3-compatible backend of [`ObjectStore`]: AWS S3, MinIO, CubeFS,
//! Ceph RGW, moto.
//!
//! Every shard builds its own [`S3Store`] inside its glommio executor and
//! uses it only there: requests are signed with `rusty-s3` (SigV4 presigned
//! URLs, no I/O), sent with hyper's HTTP/1 client over glommio's own
//! sockets from the shard's connection pool, and retried by the shard
//! itself. There is no shared client thread and no tokio runtime, so one
//! shard's uploads never queue behind another's. Nothing here may block the
//! core, hold a `RefCell` borrow across an `.await`, or panic on what the
//! network sends.
//!
//! * [`config`]: [`S3Config`], its defaults and validation.
//! * [`retry`]: the backoff policy (pure).
//! * [`pool`]: DNS, TCP/TLS dialing, keep-alive connections, the cap.
//! * [`http`]: one request/answer exchange under a timeout.
//! * [`response`]: reading S3's answers (errors, listings, dates).
//! * [`multipart`]: multipart uploads with several parts in flight.
//!
//! `StoreStats` counts calls (`puts`, `gets`, `heads`, `lists`), objects
//! (`deletes`: keys passed to `delete_many`), every retry, and every call
//! that failed for good.

pub mod config;
pub mod http;
pub mod multipart;
pub mod pool;
pub mod response;
pub mod retry;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use rusty_s3::actions::{CreateMultipartUpload, ObjectIdentifier};
use rusty_s3::{Bucket, Credentials, S3Action};

pub use config::S3Config;
pub use pool::PoolStats;

use self::http::{HttpRequest, HttpResponse};
use self::pool::{Endpoint, Pool};
use self::response::{error_from_answer, parse_error_body};
use self::retry::{RetryPolicy, Verdict};
use crate::object::{
    body_len, ObjectBody, ObjectError, ObjectFuture, ObjectInfo, ObjectStore, StoreStats,
};

/// How long a presigned URL stays valid. Each attempt signs afresh, so
/// this only has to outlast one request (a slow multipart part included).
const PRESIGN_FOR: Duration = Duration::from_secs(3600);

/// Keys per `DeleteObjects` request (S3's limit).
const DELETE_BATCH: usize = 1000;

/// A shard's client of one S3 bucket.
pub struct S3Store {
    cfg: S3Config,
    bucket: Bucket,
    credentials: Credentials,
    policy: RetryPolicy,
    timeout: Duration,
    pool: Pool,
    stats: Cell<StoreStats>,
}

impl S3Store {
    /// Builds the shard's client; call it inside the shard's glommio
    /// executor, which then runs all its I/O. Fails only on a config that
    /// cannot work; the endpoint is not contacted until the first request.
    pub fn new(cfg: S3Config) -> Result<S3Store, ObjectError> {
        let checked = cfg.check()?;
        let endpoint = Endpoint::of_url(checked.bucket.base_url())?;
        let pool = Pool::new(endpoint, cfg.max_connections)?;
        Ok(S3Store {
            bucket: checked.bucket,
            credentials: checked.credentials,
            policy: checked.policy,
            timeout: checked.request_timeout,
            pool,
            stats: Cell::new(StoreStats::default()),
            cfg,
        })
    }

    pub fn stats(&self) -> StoreStats {
        self.stats.get()
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// Creates the bucket, for development setups and tests (production
    /// buckets are made by their owners). One that exists already is fine.
    pub async fn create_bucket(&self) -> Result<(), ObjectError> {
        let name = self.bucket.name().to_string();
        self.retrying("create_bucket", &name, |_| async {
            let action = self.bucket.create_bucket(&self.credentials);
            let url = action.sign(PRESIGN_FOR);
            let body = action.body();
            let mut req = HttpRequest::new(Method::PUT, url);
            if !body.is_empty() {
                req = req.body(vec![Bytes::from(body)]);
            }
            let resp = self.send(req).await?;
            let owned =
                parse_error_body(&resp.body).is_some_and(|e| e.code == "BucketAlreadyOwnedByYou");
            if resp.is_success() || owned {
                return Ok(());
            }
            Err(error_from_answer(resp.status, &resp.body))
        })
        .await
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.cfg.prefix)
    }

    /// One attempt of one request.
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, ObjectError> {
        http::exchange(&self.pool, req, self.timeout).await
    }

    /// Runs `attempt` until it succeeds, the error is final, or the policy
    /// gives up; sleeps the jittered backoff between attempts. `attempt`
    /// gets the number of attempts made before it.
    async fn retrying<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        mut attempt: F,
    ) -> Result<T, ObjectError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, ObjectError>>,
    {
        let mut made = 0u32;
        loop {
            let result = attempt(made).await;
            made += 1;
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            self.bump(|s| s.errors.record(&err));
            match self.policy.after_failure(made, &err, rand::random::<f64>()) {
                Verdict::RetryAfter(delay) => {
                    tracing::warn!(
                        op,
                        key,
                        attempt = made,
                        error = %err,
                        delay_ms = delay.as_millis() as u64,
                        "S3 request failed; retrying"
                    );
                    self.bump(|s| s.retries += 1);
                    glommio::timer::sleep(delay).await;
                }
                Verdict::GiveUp => {
                    if matches!(err, ObjectError::NotFound(_)) {
                        tracing::debug!(op, key, "S3 object not found");
                    } else {
                        tracing::error!(
                            op,
                            key,
                            attempts = made,
                            error = %err,
                            "S3 request failed; giving up"
                        );
                    }
                    self.bump(|s| s.failures += 1);
                    return Err(err);
                }
            }
        }
    }

    fn bump(&self, f: impl FnOnce(&mut StoreStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    async fn put_object(&self, full: &str, body: ObjectBody) -> Result<(), ObjectError> {
        let len = body_len(&body);
        self.retrying("put", full, |_| {
            // Cloning the chunk list only bumps reference counts. Sending
            // the same bytes again is safe even if an earlier attempt was
            // applied and only its answer was lost: it overwrites itself.
            let body = body.clone();
            async move {
                let url = self
                    .bucket
                    .put_object(Some(&self.credentials), full)
                    .sign(PRESIGN_FOR);
                let resp = self
                    .send(HttpRequest::new(Method::PUT, url).body(body))
                    .await?;
                success(&resp)
            }
        })
        .await?;
        self.bump(|s| {
            s.puts += 1;
            s.bytes_put += len;
        });
        Ok(())
    }

    async fn get_object_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        if range.start > range.end {
            return Err(ObjectError::Invalid(format!(
                "empty range {range:?} of {key}"
            )));
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let full = self.full_key(key);
        let full = full.as_str();
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let data = self
            .retrying("get", full, |_| {
                let (header, range) = (header.clone(), range.clone());
                async move {
                    let url = self
                        .bucket
                        .get_object(Some(&self.credentials), full)
                        .sign(PRESIGN_FOR);
                    let resp = self
                        .send(HttpRequest::new(Method::GET, url).header("range", header))
                        .await?;
                    ranged_body(key, resp, range)
                }
            })
            .await?;
        self.bump(|s| {
            s.gets += 1;
            s.bytes_got += data.len() as u64;
        });
        Ok(data)
    }

    async fn head_object(&self, full: &str) -> Result<Option<ObjectInfo>, ObjectError> {
        let root = self.cfg.prefix.as_str();
        self.retrying("head", full, |_| async move {
            let url = self
                .bucket
                .head_object(Some(&self.credentials), full)
                .sign(PRESIGN_FOR);
            let resp = self.send(HttpRequest::new(Method::HEAD, url)).await?;
            if resp.status == 404 {
                return Ok(None);
            }
            success(&resp)?;
            let size = resp
                .header("content-length")
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ObjectError::Invalid(format!("HEAD {full}: no Content-Length")))?;
            Ok(Some(ObjectInfo {
                key: full.strip_prefix(root).unwrap_or(full).to_string(),
                size,
                last_modified_ms: resp
                    .header("last-modified")
                    .and_then(response::parse_http_date_ms),
            }))
        })
        .await
    }

    async fn delete_keys(&self, keys: &[String]) -> Result<(), ObjectError> {
        for batch in keys.chunks(DELETE_BATCH) {
            self.delete_batch(batch).await?;
            self.bump(|s| s.deletes += batch.len() as u64);
        }
        Ok(())
    }

    /// One `DeleteObjects` request; a retry resends only the keys the
    /// previous answer reported as failed.
    async fn delete_batch(&self, batch: &[String]) -> Result<(), ObjectError> {
        let pending = RefCell::new(batch.iter().map(|k| self.full_key(k)).collect::<Vec<_>>());
        let first = pending.borrow().first().cloned().unwrap_or_default();
        let pending = &pending;
        self.retrying("delete", &first, |_| async move {
            let ids: Vec<ObjectIdentifier> = pending
                .borrow()
                .iter()
                .map(|k| ObjectIdentifier::new(k.clone()))
                .collect();
            let action = self
                .bucket
                .delete_objects(Some(&self.credentials), ids.iter());
            let url = action.sign(PRESIGN_FOR);
            let (body, md5) = action.body_with_md5();
            let req = HttpRequest::new(Method::POST, url)
                .header("content-md5", md5)
                .header("content-type", "application/xml")
                .body(vec![Bytes::from(body)]);
            let resp = self.send(req).await?;
            success(&resp)?;
            let failures = response::parse_delete_failures(&utf8(&resp.body)?)?;
            let Some(f) = failures.first() else {
                return Ok(());
            };
            let err = ObjectError::Http {
                status: response::status_of_code(&f.code),
                message: format!(
                    "DeleteObjects: {} keys not deleted, e.g. {}: {}: {}",
                    failures.len(),
                    f.key,
                    f.code,
                    f.message
                ),
            };
            *pending.borrow_mut() = failures.into_iter().map(|f| f.key).collect();
            Err(err)
        })
        .await
    }

    async fn list_prefix(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        let full = self.full_key(prefix);
        let full = full.as_str();
        let root = self.cfg.prefix.as_str();
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let token_ref = token.as_deref();
            let page = self
                .retrying("list", full, |_| async move {
                    let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
                    action.with_prefix(full);
                    if let Some(t) = token_ref {
                        action.with_continuation_token(t);
                    }
                    let url = action.sign(PRESIGN_FOR);
                    let resp = self.send(HttpRequest::new(Method::GET, url)).await?;
                    success(&resp)?;
                    response::parse_list_page(&utf8(&resp.body)?, root)
                })
                .await?;
            objects.extend(page.objects);
            match page.next_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        self.bump(|s| s.lists += 1);
        Ok(objects)
    }

    async fn create_upload(&self, full: &str) -> Result<String, ObjectError> {
        self.retrying("create_multipart", full, |_| async move {
            let url = self
                .bucket
                .create_multipart_upload(Some(&self.credentials), full)
                .sign(PRESIGN_FOR);
            let resp = self.send(HttpRequest::new(Method::POST, url)).await?;
            success(&resp)?;
            let answer = CreateMultipartUpload::parse_response(&utf8(&resp.body)?)
                .map_err(|e| ObjectError::Invalid(format!("CreateMultipartUpload answer: {e}")))?;
            Ok(answer.upload_id().to_string())
        })
        .await
    }
}

/// `Ok` for a 2xx answer, the answer's error otherwise.
fn success(resp: &HttpResponse) -> Result<(), ObjectError> {
    if resp.is_success() {
        Ok(())
    } else {
        Err(error_from_answer(resp.status, &resp.body))
    }
}

fn utf8(body: &Bytes) -> Result<std::borrow::Cow<'_, str>, ObjectError> {
    std::str::from_utf8(body)
        .map(std::borrow::Cow::Borrowed)
        .map_err(|e| ObjectError::Invalid(format!("answer is not UTF-8: {e}")))
}

/// The bytes of `range` from a GET answer, checked against what was asked.
fn ranged_body(key: &str, resp: HttpResponse, range: Range<u64>) -> Result<Bytes, ObjectError> {
    let want = range.end - range.start;
    match resp.status {
        206 => {
            let served = resp
                .header("content-range")
                .and_then(response::parse_content_range)
                .ok_or_else(|| {
                    ObjectError::Invalid(format!("GET {key}: 206 without a valid Content-Range"))
                })?;
            if served.range() != range {
                return Err(past_end(key, &range, served.total));
            }
            if resp.body.len() as u64 != want {
                // hyper checks Content-Length; this catches a server that
                // announced less than the range it claims.
                return Err(ObjectError::Io(format!(
                    "GET {key}: {} of {want} bytes arrived",
                    resp.body.len()
                )));
            }
            Ok(resp.body)
        }
        // A server that ignores Range sends the whole object.
        200 => {
            let total = resp.body.len() as u64;
            if total < range.end {
                return Err(past_end(key, &range, Some(total)));
            }
            Ok(resp.body.slice(range.start as usize..range.end as usize))
        }
        404 => {
            let code = parse_error_body(&resp.body).map(|e| e.code);
            match code.as_deref() {
                None | Some("NoSuchKey") => Err(ObjectError::NotFound(key.to_string())),
                Some(_) => Err(error_from_answer(404, &resp.body)),
            }
        }
        _ => {
            success(&resp)?;
            Err(ObjectError::Invalid(format!(
                "GET {key}: unexpected status {}",
                resp.status
            )))
        }
    }
}

fn past_end(key: &str, range: &Range<u64>, total: Option<u64>) -> ObjectError {
    let size = total.map_or_else(|| "unknown".to_string(), |t| t.to_string());
    ObjectError::Invalid(format!(
        "range {range:?} of {key} is past the end of the object ({size} bytes)"
    ))
}

impl ObjectStore for S3Store {
    fn put<'a>(&'a self, key: &'a str, body: ObjectBody) -> ObjectFuture<'a, ()> {
        Box::pin(async move { self.put_object(&self.full_key(key), body).await })
    }

    fn put_multipart<'a>(
        &'a self,
        key: &'a str,
        body: ObjectBody,
        part_size: usize,
    ) -> ObjectFuture<'a, ()> {
        Box::pin(self.multipart_put(key, body, part_size))
    }

    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> ObjectFuture<'a, Bytes> {
        Box::pin(self.get_object_range(key, range))
    }

    fn head<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, Option<ObjectInfo>> {
        Box::pin(async move {
            let info = self.head_object(&self.full_key(key)).await?;
            self.bump(|s| s.heads += 1);
            Ok(info)
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> ObjectFuture<'a, ()> {
        Box::pin(self.delete_keys(keys))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> ObjectFuture<'a, Vec<ObjectInfo>> {
        Box::pin(self.list_prefix(prefix))
    }

    fn stats(&self) -> StoreStats {
        S3Store::stats(self)
    }

    fn describe(&self) -> String {
        format!(
            "s3://{}/{} at {}",
            self.bucket.name(),
            self.cfg.prefix,
            self.cfg.endpoint
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderMap;

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &'static [u8]) -> HttpResponse {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        HttpResponse {
            status,
            headers: map,
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn ranged_answers_are_checked() {
        let ok = answer(206, &[("content-range", "bytes 2-4/10")], b"cde");
        assert_eq!(
            ranged_body("k", ok, 2..5).unwrap(),
            Bytes::from_static(b"cde")
        );

        let past = answer(206, &[("content-range", "bytes 8-9/10")], b"ij");
        assert!(matches!(
            ranged_body("k", past, 8..12),
            Err(ObjectError::Invalid(_))
        ));

        let short = answer(206, &[("content-range", "bytes 2-4/10")], b"cd");
        let err = ranged_body("k", short, 2..5).unwrap_err();
        assert!(matches!(err, ObjectError::Io(_)) && retry::worth_retrying(&err));

        let whole = answer(200, &[], b"abcdefghij");
        assert_eq!(
            ranged_body("k", whole, 2..5).unwrap(),
            Bytes::from_static(b"cde")
        );
        let small = answer(200, &[], b"abc");
        assert!(matches!(
            ranged_body("k", small, 2..5),
            Err(ObjectError::Invalid(_))
        ));

        let missing = answer(404, &[], b"<Error><Code>NoSuchKey</Code></Error>");
        assert_eq!(
            ranged_body("k", missing, 0..1),
            Err(ObjectError::NotFound("k".into()))
        );
        let no_bucket = answer(404, &[], b"<Error><Code>NoSuchBucket</Code></Error>");
        assert!(matches!(
            ranged_body("k", no_bucket, 0..1),
            Err(ObjectError::Http { status: 404, .. })
        ));
        let slow = answer(
            503,
            &[],
            b"<Error><Code>SlowDown</Code><Message>m</Message></Error>",
        );
        let err = ranged_body("k", slow, 0..1).unwrap_err();
        assert!(retry::worth_retrying(&err));
    }

    #[test]
    fn new_refuses_bad_configs_without_io() {
        let err = S3Store::new(S3Config::default()).err().unwrap();
        assert!(matches!(err, ObjectError::Config(_)));
    }
}
