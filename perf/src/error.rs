//! The one error type of the `perf` crate.
//!
//! Every failure a run can meet ends up here with enough context (which
//! broker, which topic, which request) for a person to act on it; `main`
//! prints it and exits non-zero.

use std::io;

/// Everything that can go wrong in a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    /// A TCP connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    /// A connection failed or was closed while requests were outstanding.
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost { addr: String, reason: String },
    /// The broker sent bytes that are not a valid response.
    #[error("bad response from {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    /// Encoding a request or a record batch failed.
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// The broker answered but does not support an API we need.
    #[error("broker {addr} does not support {api} (need versions {min}..{max})")]
    Unsupported {
        addr: String,
        api: &'static str,
        min: i16,
        max: i16,
    },
    /// The broker rejected a request with a Kafka error code.
    #[error("{request} rejected by broker: {code_name} (code {code}){detail}")]
    Rejected {
        request: &'static str,
        code: i16,
        code_name: String,
        detail: String,
    },
    /// The topic does not exist and was not to be created.
    #[error("topic '{0}' does not exist")]
    MissingTopic(String),
    /// Metadata names a partition leader we know no address for.
    #[error("no leader for {topic}-{partition}")]
    NoLeader { topic: String, partition: i32 },
    /// A request got no answer in time.
    #[error("{request} to {addr} timed out after {secs} s")]
    Timeout {
        request: &'static str,
        addr: String,
        secs: u64,
    },
    /// Command-line settings that cannot work together.
    #[error("invalid settings: {0}")]
    Config(String),
    /// Reading or writing a result file failed.
    #[error("{path}: {source}")]
    File { path: String, source: io::Error },
    /// A JSON result file could not be written or read.
    #[error("{path}: {reason}")]
    Json { path: String, reason: String },
    /// Drawing a plot failed.
    #[error("cannot draw {path}: {reason}")]
    Plot { path: String, reason: String },
    /// The run finished but some sends or fetches failed.
    #[error("run finished with errors: {0}")]
    RunFailed(String),
}

impl PerfError {
    /// A broker error code as a readable error, `None` for code 0.
    pub fn from_code(request: &'static str, code: i16, message: Option<&str>) -> Option<Self> {
        if code == 0 {
            return None;
        }
        let detail = match message {
            Some(m) if !m.is_empty() => format!(": {m}"),
            _ => String::new(),
        };
        Some(PerfError::Rejected {
            request,
            code,
            code_name: code_name(code),
            detail,
        })
    }
}

/// The Kafka name of an error code (`NOT_LEADER_OR_FOLLOWER`, ...).
pub fn code_name(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        Some(e) => e.to_string(),
        None => "NONE".to_string(),
    }
}

pub type Result<T> = std::result::Result<T, PerfError>;
