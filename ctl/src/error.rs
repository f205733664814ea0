//! Everything that can make a `brokerctl` command fail, and how it reads.
//!
//! Kafka error codes are shown by their protocol name
//! (`UNKNOWN_TOPIC_OR_PARTITION`), as Kafka's own tools show them. Every
//! variant means exit code 1; this module never prints or exits itself.

use kafka_protocol::error::ResponseError;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("{what}: {}{}", error_name(*.code), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka {
        what: String,
        code: i16,
        message: Option<String>,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Failed(String),
}

pub type Result<T> = std::result::Result<T, CtlError>;

impl CtlError {
    /// `Some(error)` when `code` is not 0; `what` says which request or
    /// resource answered it.
    pub fn check(what: impl FnOnce() -> String, code: i16, message: Option<&str>) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        Err(CtlError::Kafka {
            what: what(),
            code,
            message: message.filter(|m| !m.is_empty()).map(str::to_string),
        })
    }

    /// The Kafka error code, if this is a Kafka error.
    pub fn code(&self) -> Option<i16> {
        match self {
            CtlError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// `NOT_LEADER_OR_FOLLOWER (6)` for code 6: the name Kafka's `Errors` enum
/// gives it, and the number.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE (0)".to_string(),
        Some(ResponseError::Unknown(c)) => format!("UNKNOWN_ERROR_CODE ({c})"),
        Some(e) => format!("{} ({code})", upper_snake(&e.to_string())),
    }
}

/// Whether a partition-level error means "ask Metadata again and retry".
pub fn is_retriable(code: i16) -> bool {
    ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable())
}

/// `NotLeaderOrFollower` -> `NOT_LEADER_OR_FOLLOWER`.
fn upper_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    let mut prev_lower = false;
    for c in camel.chars() {
        if c.is_ascii_uppercase() && prev_lower {
            out.push('_');
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kafkas() {
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER (6)");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION (3)");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR (-1)");
        assert_eq!(error_name(9999), "UNKNOWN_ERROR_CODE (9999)");
    }

    #[test]
    fn check_carries_the_message() {
        let e = CtlError::check(|| "topic t".into(), 36, Some("exists")).unwrap_err();
        assert_eq!(e.to_string(), "topic t: TOPIC_ALREADY_EXISTS (36): exists");
        assert_eq!(e.code(), Some(36));
        assert!(CtlError::check(|| "x".into(), 0, None).is_ok());
    }
}
