//! The wall clock in milliseconds since the Unix epoch, as Kafka timestamps
//! and metadata records carry it. Any core; never blocks. Logic that decides
//! on time takes `now_ms` as an argument so tests can pass their own.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
