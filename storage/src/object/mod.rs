//! Object storage: the store of record for partition data.
//!
//! * [`ObjectStore`]: the operations every backend offers (put, multipart
//!   put, ranged get, head, batch delete, list). Every shard owns its own
//!   instance and uses it only on its own glommio executor: the futures are
//!   not `Send`, and no backend may block the core or share a thread with
//!   another shard.
//! * [`local`]: the embedded default, a local directory written with
//!   glommio's file I/O.
//! * [`s3`]: any S3-compatible endpoint (requests signed with `rusty-s3`, sent
//!   with hyper over glommio sockets, one connection pool per shard).
//! * [`mem`]: in memory, with fault injection, for tests.
//! * [`format`]: the stream-set object (data blocks, index, footer).
//! * [`keys`]: where an object id lives in the bucket.
//! * [`reader`]: cold reads: index and block caches, ranged GETs, read-ahead.

/// Objects at least this large go up as multipart uploads. Below it one PUT
/// carries the whole object: the body is in memory anyway, and every part
/// is a billed request (a 64 MiB object in 8 MiB parts costs 10 requests).
/// A full upload (`upload_bytes`, 128 MiB by default, plus the little that
/// arrives while it is cut) stays well below it. S3 takes up to 5 GiB in
/// one PUT.
pub const MULTIPART_THRESHOLD: u64 = 512 << 20;
/// Part size of a multipart upload.
pub const MULTIPART_PART: usize = 64 << 20;

pub mod format;
pub mod keys;
pub mod local;
pub mod mem;
pub mod reader;
pub mod s3;

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;

/// A future of a backend call, local to the shard that made it.
pub type ObjectFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ObjectError>> + 'a>>;

/// The body of a put: chunks written one after another, so an object built
/// from cached batches is never copied into one buffer first.
pub type ObjectBody = Vec<Bytes>;

/// Total length of a body.
pub fn body_len(body: &ObjectBody) -> u64 {
    body.iter().map(|b| b.len() as u64).sum()
}

/// What a list or head tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Milliseconds since the epoch, when the backend reports it.
    pub last_modified_ms: Option<i64>,
}

/// Why a call failed. `is_retriable` decides whether the caller tries again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object store I/O error: {0}")]
    Io(String),
    /// An HTTP answer that is not a success (S3).
    #[error("object store answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("object store request timed out after {0} ms")]
    Timeout(u64),
    /// The bytes came back but do not hold what they should.
    #[error("object store returned bad data: {0}")]
    Invalid(String),
    /// The configuration cannot work (bad endpoint, missing credentials).
    #[error("object store configuration: {0}")]
    Config(String),
}

impl ObjectError {
    /// Worth trying again: throttling, server errors, timeouts, broken
    /// connections. Not found, client errors and configuration are final.
    pub fn is_retriable(&self) -> bool {
        match self {
            ObjectError::Io(_) | ObjectError::Timeout(_) => true,
            ObjectError::Http { status, .. } => matches!(status, 408 | 429 | 500..=599),
            ObjectError::NotFound(_) | ObjectError::Invalid(_) | ObjectError::Config(_) => false,
        }
    }
}

/// Failed object-store attempts by cause, each attempt counted, retried or
/// not: what an operator asks first when uploads slow down (is the store
/// throttling us, failing, unreachable, or refusing our credentials?).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// HTTP 429, or 503 (S3's SlowDown).
    pub throttled: u64,
    /// Any other HTTP 5xx.
    pub server: u64,
    /// HTTP 4xx other than throttling: credentials, a missing bucket, a
    /// request the store refuses.
    pub client: u64,
    /// The object is not there.
    pub not_found: u64,
    pub timeout: u64,
    /// No connection, or one cut off before or during the answer.
    pub io: u64,
    /// An answer that does not hold what it should.
    pub invalid: u64,
    pub config: u64,
}

impl ErrorCounts {
    pub fn record(&mut self, e: &ObjectError) {
        let n = match e {
            ObjectError::Http {
                status: 429 | 503, ..
            } => &mut self.throttled,
            ObjectError::Http {
                status: 500..=599, ..
            } => &mut self.server,
            ObjectError::Http { .. } => &mut self.client,
            ObjectError::NotFound(_) => &mut self.not_found,
            ObjectError::Timeout(_) => &mut self.timeout,
            ObjectError::Io(_) => &mut self.io,
            ObjectError::Invalid(_) => &mut self.invalid,
            ObjectError::Config(_) => &mut self.config,
        };
        *n += 1;
    }

    /// Each count with its `cause` label.
    pub fn by_cause(&self) -> [(&'static str, u64); 8] {
        [
            ("throttled", self.throttled),
            ("server", self.server),
            ("client", self.client),
            ("not_found", self.not_found),
            ("timeout", self.timeout),
            ("io", self.io),
            ("invalid", self.invalid),
            ("config", self.config),
        ]
    }
}

/// The operations the broker needs from object storage. Keys are
/// `/`-separated paths relative to the store's root (bucket and prefix, or
/// directory). Implementations retry transient failures themselves, log and
/// count what fails for good, and never panic.
pub trait ObjectStore {
    /// Writes the whole object; it becomes visible atomically (readers see
    /// the old state or all of it).
    fn put<'a>(&'a self, key: &'a str, body: ObjectBody) -> ObjectFuture<'a, ()>;

    /// Like `put`, for large objects: sent in parts of about `part_size`
    /// bytes where the backend supports it (S3 multipart upload), and still
    /// visible only once complete. Backends without parts just put.
    fn put_multipart<'a>(
        &'a self,
        key: &'a str,
        body: ObjectBody,
        part_size: usize,
    ) -> ObjectFuture<'a, ()> {
        let _ = part_size;
        self.put(key, body)
    }

    /// Reads bytes `range` of the object. A range past the end is an error.
    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> ObjectFuture<'a, Bytes>;

    /// Reads bytes `range` of the object as pieces: `lens` are the pieces'
    /// lengths, in order, and add up to the range's. Each piece is its own
    /// allocation, so a cache that keeps one piece does not pin the rest.
    /// The default cuts `get_range`'s buffer with one copy per piece (none
    /// for a single piece); backends that read into a buffer of their own copy straight out of
    /// it instead.
    fn get_pieces<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        lens: &'a [usize],
    ) -> ObjectFuture<'a, Vec<Bytes>> {
        Box::pin(async move {
            let whole = self.get_range(key, range).await?;
            match lens {
                // One piece is the buffer itself: no copy.
                [n] if *n == whole.len() => Ok(vec![whole]),
                _ => cut_pieces(&whole, lens),
            }
        })
    }

    /// Size and age of an object, or `None` if it does not exist.
    fn head<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, Option<ObjectInfo>>;

    /// Deletes the objects; keys that do not exist are not an error.
    fn delete_many<'a>(&'a self, keys: &'a [String]) -> ObjectFuture<'a, ()>;

    /// Every object whose key starts with `prefix`, in key order.
    fn list<'a>(&'a self, prefix: &'a str) -> ObjectFuture<'a, Vec<ObjectInfo>>;

    /// Where the objects go, for logs (`file:///...`, `s3://bucket`).
    fn describe(&self) -> String;

    /// The requests this instance made so far.
    fn stats(&self) -> StoreStats;
}

/// Copies `whole` out in pieces of `lens` bytes, which must add up to its
/// length.
pub fn cut_pieces(whole: &[u8], lens: &[usize]) -> Result<Vec<Bytes>, ObjectError> {
    if lens.iter().sum::<usize>() != whole.len() {
        return Err(ObjectError::Invalid(format!(
            "{} bytes cannot be cut into pieces of {lens:?}",
            whole.len()
        )));
    }
    let mut at = 0;
    Ok(lens
        .iter()
        .map(|&n| {
            let piece = Bytes::copy_from_slice(&whole[at..at + n]);
            at += n;
            piece
        })
        .collect())
}

/// A shard's handle on its store.
pub type SharedStore = Rc<dyn ObjectStore>;

/// Runs a test body on a fresh glommio executor (the stores need one).
#[cfg(test)]
pub(crate) fn run_local<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

/// Counters a backend keeps (per shard), for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub puts: u64,
    pub gets: u64,
    pub heads: u64,
    pub deletes: u64,
    pub lists: u64,
    pub retries: u64,
    pub failures: u64,
    /// Every failed attempt by cause (`failures` counts requests that
    /// failed for good, after their retries).
    pub errors: ErrorCounts,
    pub bytes_put: u64,
    pub bytes_got: u64,
}
