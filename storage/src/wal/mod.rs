//! The per-shard write-ahead log.
//!
//! One raw block device or one preallocated file holds the WAL of a broker
//! process. [`open_or_create`] runs once on the main thread before the shards
//! start (plain blocking I/O is fine there): it formats a new WAL or checks the
//! header of an existing one and returns the [`WalLayout`]. Each shard then
//! opens its own slice with [`WalSlice::open`] inside its glommio executor;
//! from then on the slice is owned by that shard's core alone, does all its
//! I/O through io_uring (glommio `DmaFile`, `O_DIRECT`) and never blocks the
//! core. Nothing in this module is shared between cores.
//!
//! * [`format`](mod@format): the on-disk format (pure, `nom`-parsed, property-tested).
//! * [`device`]: the [`BlockDevice`] seam and its glommio implementation.
//! * [`mem_device`]: an in-memory device for tests that fails, tears, delays
//!   and records I/O (crash images come from its record).
//! * [`layout`]: configuration, device header, format and validation.
//! * [`slice`](mod@slice): a shard's ring: recovery, group-committed appends,
//!   backpressure, trim, failure and re-open.

pub mod device;
pub mod format;
pub mod layout;
pub mod mem_device;
pub mod slice;

pub use device::{BlockDevice, DmaDevice, IoBuf};
pub use layout::{format_wal, lock_wal, open_or_create, WalConfig, WalLayout};
pub use mem_device::{IoEvent, MemDevice};
pub use slice::{
    recover_records, AppendFuture, RecoveredRecord, WalSlice, WalStages, WalStats, WalTuning,
};

/// Everything that can go wrong in the WAL. Appends that fail because the
/// slice failed carry the reason as text so the error can be cloned to every
/// waiter.
///
/// Two kinds must not be confused (see [`WalError::is_device_failure`]): a
/// failure of the device or slice (I/O, corruption, a failed slice), after
/// which the slice must be recovered, and a refusal of one request
/// ([`WalError::RecordTooLarge`]), which says nothing about the device and
/// is answered to that request alone.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("WAL data is corrupt: {what}")]
    Corrupt { what: &'static str },
    #[error("WAL configuration problem: {0}")]
    Config(String),
    #[error("WAL at {path} does not match the configuration and was left untouched: {reason}")]
    LayoutMismatch { path: String, reason: String },
    #[error("WAL slice {slice} failed ({reason}); re-open the slice to recover")]
    SliceFailed { slice: u32, reason: String },
    #[error("WAL slice is closed")]
    Closed,
    #[error("WAL record of {len} bytes is larger than the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },
    #[error("WAL is in use: {0}")]
    Locked(#[from] crate::file_lock::LockError),
}

impl WalError {
    /// True when the device or the slice failed, so what the slice acknowledges
    /// can no longer be trusted until it is recovered. False for a record
    /// refused because of its size, for a slice closed on purpose, and for
    /// problems found at open (configuration, layout, lock).
    pub fn is_device_failure(&self) -> bool {
        match self {
            WalError::Io { .. } | WalError::Corrupt { .. } | WalError::SliceFailed { .. } => true,
            WalError::RecordTooLarge { .. }
            | WalError::Closed
            | WalError::Config(_)
            | WalError::LayoutMismatch { .. }
            | WalError::Locked(_) => false,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl std::fmt::Display,
        source: std::io::Error,
    ) -> Self {
        WalError::Io {
            op,
            path: path.to_string(),
            source,
        }
    }

    /// A copy for handing the same failure to many waiters.
    pub(crate) fn duplicate(&self) -> WalError {
        match self {
            WalError::SliceFailed { slice, reason } => WalError::SliceFailed {
                slice: *slice,
                reason: reason.clone(),
            },
            WalError::Closed => WalError::Closed,
            WalError::RecordTooLarge { len, max } => WalError::RecordTooLarge {
                len: *len,
                max: *max,
            },
            other => WalError::SliceFailed {
                slice: u32::MAX,
                reason: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_device_failures_call_for_recovery() {
        let io = WalError::io("write", "wal", std::io::Error::other("EIO"));
        assert!(io.is_device_failure());
        assert!(io.duplicate().is_device_failure());
        assert!(WalError::Corrupt { what: "crc" }.is_device_failure());
        let too_large = WalError::RecordTooLarge { len: 10, max: 5 };
        assert!(!too_large.is_device_failure());
        // Handed to many waiters, it stays a refusal of the request.
        assert!(matches!(
            too_large.duplicate(),
            WalError::RecordTooLarge { len: 10, max: 5 }
        ));
        assert!(!WalError::Closed.is_device_failure());
        assert!(!WalError::Config("x".into()).is_device_failure());
    }
}
