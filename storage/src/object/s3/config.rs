//! The S3 backend's configuration: one typed struct with defaults, and its
//! validation into what a shard's client needs (bucket URL, credentials,
//! retry policy, timeouts).
//!
//! Pure: runs wherever the config is built (any thread). Must never do I/O;
//! in particular it never resolves the endpoint's host name (that happens on
//! the shard, off the core, when the first connection is dialed).

use std::time::Duration;

use rusty_s3::{Bucket, Credentials, UrlStyle};

use super::retry::RetryPolicy;
use crate::object::ObjectError;

/// S3 parts are at least 5 MiB (except the last) and at most 10 000.
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;
pub const MAX_PARTS: usize = 10_000;

/// Where and how a shard talks to an S3-compatible endpoint. Every shard
/// builds its own client from the same config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `http://host:port` or `https://host[:port]`, without the bucket.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Prepended to every key (e.g. `cluster-1/`); empty for the bucket root.
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `endpoint/bucket/key` (MinIO, CubeFS, Ceph, moto) rather than
    /// `bucket.endpoint/key` (AWS virtual-hosted style).
    pub path_style: bool,
    /// Every attempt (connect, send, whole answer) must finish in this time.
    pub request_timeout_ms: u64,
    /// Backoff between attempts: a random wait in `[0, min(cap, base * 2^n)]`.
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Open connections per shard, idle ones included.
    pub max_connections: usize,
    /// Part size of multipart uploads when the caller gives none.
    pub multipart_part_bytes: usize,
    /// Parts of one multipart upload in flight at once.
    pub multipart_concurrency: usize,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: "http://127.0.0.1:9000".to_string(),
            region: "us-east-1".to_string(),
            bucket: String::new(),
            prefix: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            path_style: true,
            request_timeout_ms: 30_000,
            retry_base_ms: 1_000,
            retry_cap_ms: 60_000,
            max_attempts: 10,
            max_connections: 16,
            multipart_part_bytes: 16 * 1024 * 1024,
            multipart_concurrency: 4,
        }
    }
}

/// A config checked and turned into the pieces the client uses.
#[derive(Debug, Clone)]
pub struct Checked {
    pub bucket: Bucket,
    pub credentials: Credentials,
    pub policy: RetryPolicy,
    pub request_timeout: Duration,
}

impl S3Config {
    /// Checks everything that can be checked without the network.
    pub fn check(&self) -> Result<Checked, ObjectError> {
        let bad = |what: String| Err(ObjectError::Config(what));
        let endpoint: url::Url = match self.endpoint.parse() {
            Ok(url) => url,
            Err(e) => return bad(format!("endpoint {:?}: {e}", self.endpoint)),
        };
        if self.bucket.is_empty() {
            return bad("bucket is empty".into());
        }
        if self.access_key_id.is_empty() || self.secret_access_key.is_empty() {
            return bad("access_key_id and secret_access_key must both be set".into());
        }
        if self.prefix.starts_with('/') {
            return bad(format!("prefix {:?} must not start with '/'", self.prefix));
        }
        for (name, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("max_attempts", u64::from(self.max_attempts)),
            ("max_connections", self.max_connections as u64),
            ("multipart_concurrency", self.multipart_concurrency as u64),
        ] {
            if value == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.retry_cap_ms < self.retry_base_ms {
            return bad(format!(
                "retry_cap_ms ({}) is below retry_base_ms ({})",
                self.retry_cap_ms, self.retry_base_ms
            ));
        }
        let style = if self.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, self.bucket.clone(), self.region.clone())
            .map_err(|e| ObjectError::Config(format!("endpoint {:?}: {e}", self.endpoint)))?;
        Ok(Checked {
            bucket,
            credentials: Credentials::new(&self.access_key_id, &self.secret_access_key),
            policy: RetryPolicy {
                base: Duration::from_millis(self.retry_base_ms),
                cap: Duration::from_millis(self.retry_cap_ms),
                max_attempts: self.max_attempts,
            },
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        })
    }
}

/// The part size a multipart upload of `total` bytes really uses: the
/// requested one (or the configured default for 0), raised to S3's 5 MiB
/// minimum and so far that no more than 10 000 parts are needed.
pub fn effective_part_size(requested: usize, default: usize, total: u64) -> usize {
    let wanted = if requested == 0 { default } else { requested };
    let for_max_parts = total.div_ceil(MAX_PARTS as u64);
    let for_max_parts = usize::try_from(for_max_parts).unwrap_or(usize::MAX);
    wanted.max(MIN_PART_BYTES).max(for_max_parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> S3Config {
        S3Config {
            bucket: "b".into(),
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            ..S3Config::default()
        }
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = S3Config::default();
        assert!(c.path_style);
        assert_eq!(c.request_timeout_ms, 30_000);
        assert_eq!(
            (c.retry_base_ms, c.retry_cap_ms, c.max_attempts),
            (1000, 60_000, 10)
        );
        assert_eq!(c.max_connections, 16);
        assert_eq!(c.multipart_part_bytes, 16 << 20);
        assert_eq!(c.multipart_concurrency, 4);
    }

    #[test]
    fn path_and_virtual_host_urls() {
        let checked = good().check().unwrap();
        assert_eq!(
            checked.bucket.object_url("a/b c").as_str(),
            "http://127.0.0.1:9000/b/a/b%20c"
        );
        let vh = S3Config {
            endpoint: "https://s3.eu-west-1.amazonaws.com".into(),
            path_style: false,
            ..good()
        };
        assert_eq!(
            vh.check().unwrap().bucket.object_url("k").as_str(),
            "https://b.s3.eu-west-1.amazonaws.com/k"
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        let cases = [
            S3Config {
                endpoint: "not a url".into(),
                ..good()
            },
            S3Config {
                endpoint: "ftp://host/".into(),
                ..good()
            },
            S3Config {
                bucket: String::new(),
                ..good()
            },
            S3Config {
                secret_access_key: String::new(),
                ..good()
            },
            S3Config {
                max_connections: 0,
                ..good()
            },
            S3Config {
                retry_cap_ms: 10,
                retry_base_ms: 20,
                ..good()
            },
            S3Config {
                prefix: "/abs".into(),
                ..good()
            },
        ];
        for c in cases {
            assert!(matches!(c.check(), Err(ObjectError::Config(_))), "{c:?}");
        }
    }

    #[test]
    fn part_size_respects_s3_limits() {
        assert_eq!(effective_part_size(0, 16 << 20, 100 << 20), 16 << 20);
        assert_eq!(
            effective_part_size(1 << 20, 16 << 20, 100 << 20),
            MIN_PART_BYTES
        );
        assert_eq!(effective_part_size(8 << 20, 16 << 20, 100 << 20), 8 << 20);
        // 100 GiB in 5 MiB parts would be 20 480 parts: grown to fit 10 000.
        let total = 100u64 << 30;
        let size = effective_part_size(MIN_PART_BYTES, 16 << 20, total);
        assert!(total.div_ceil(size as u64) <= MAX_PARTS as u64);
    }
}
