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
pub mod pool;
pub mod response;
pub mod retry;

pub use config::S3Config;
pub use pool::PoolStats;
