//! Topic configs: the keys a topic accepts, their defaults and types, and
//! validation of values given in CreateTopics.
//!
//! Pure data, used on every shard. Knows nothing of the wire format.

use std::collections::BTreeMap;

use crate::config::Config;

/// Config value types as DescribeConfigs v3+ reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// One topic config key: its type, its default, and the values it allows.
pub struct TopicConfigKey {
    pub name: &'static str,
    pub kind: ConfigType,
    pub default: &'static str,
    pub allowed: &'static [&'static str],
}

const fn key(name: &'static str, kind: ConfigType, default: &'static str) -> TopicConfigKey {
    TopicConfigKey {
        name,
        kind,
        default,
        allowed: &[],
    }
}

/// The name of the key whose default comes from the broker's `message_max_bytes`.
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
pub const TIMESTAMP_TYPE: &str = "message.timestamp.type";
pub const RETENTION_MS: &str = "retention.ms";
pub const RETENTION_BYTES: &str = "retention.bytes";
pub const CLEANUP_POLICY: &str = "cleanup.policy";
pub const DELETE_RETENTION_MS: &str = "delete.retention.ms";
pub const MIN_COMPACTION_LAG_MS: &str = "min.compaction.lag.ms";
pub const MAX_COMPACTION_LAG_MS: &str = "max.compaction.lag.ms";
pub const MIN_CLEANABLE_DIRTY_RATIO: &str = "min.cleanable.dirty.ratio";

pub const TOPIC_CONFIGS: &[TopicConfigKey] = &[
    TopicConfigKey {
        name: "cleanup.policy",
        kind: ConfigType::List,
        default: "delete",
        allowed: &["delete", "compact", "compact,delete", "delete,compact"],
    },
    TopicConfigKey {
        name: "compression.type",
        kind: ConfigType::String,
        default: "producer",
        allowed: &[
            "producer",
            "uncompressed",
            "none",
            "gzip",
            "snappy",
            "lz4",
            "zstd",
        ],
    },
    key("delete.retention.ms", ConfigType::Long, "86400000"),
    key("file.delete.delay.ms", ConfigType::Long, "60000"),
    key("flush.messages", ConfigType::Long, "9223372036854775807"),
    // Replication throttles: one replica per partition here, so nothing to
    // throttle; kafka-reassign-partitions sets and clears them.
    key(
        "follower.replication.throttled.replicas",
        ConfigType::List,
        "",
    ),
    key("flush.ms", ConfigType::Long, "9223372036854775807"),
    key("index.interval.bytes", ConfigType::Int, "4096"),
    key(
        "max.compaction.lag.ms",
        ConfigType::Long,
        "9223372036854775807",
    ),
    key(
        "leader.replication.throttled.replicas",
        ConfigType::List,
        "",
    ),
    key(MAX_MESSAGE_BYTES, ConfigType::Int, "1048588"),
    key("message.downconversion.enable", ConfigType::Boolean, "true"),
    TopicConfigKey {
        name: TIMESTAMP_TYPE,
        kind: ConfigType::String,
        default: "CreateTime",
        allowed: &["CreateTime", "LogAppendTime"],
    },
    key("min.cleanable.dirty.ratio", ConfigType::Double, "0.5"),
    key("min.compaction.lag.ms", ConfigType::Long, "0"),
    key("min.insync.replicas", ConfigType::Int, "1"),
    key("preallocate", ConfigType::Boolean, "false"),
    key("retention.bytes", ConfigType::Long, "-1"),
    key("retention.ms", ConfigType::Long, "604800000"),
    key("segment.bytes", ConfigType::Int, "1073741824"),
    key("segment.ms", ConfigType::Long, "604800000"),
    key(
        "unclean.leader.election.enable",
        ConfigType::Boolean,
        "false",
    ),
];

pub fn lookup(name: &str) -> Option<&'static TopicConfigKey> {
    TOPIC_CONFIGS.iter().find(|k| k.name == name)
}

/// Checks one `key = value` from CreateTopics; the error is the message a
/// client sees with `INVALID_CONFIG`.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let Some(k) = lookup(name) else {
        return Err(format!("unknown topic config {name}"));
    };
    let ok = match k.kind {
        ConfigType::Boolean => matches!(value, "true" | "false"),
        ConfigType::Int => value.parse::<i32>().is_ok(),
        ConfigType::Long => value.parse::<i64>().is_ok(),
        ConfigType::Double => value.parse::<f64>().is_ok(),
        ConfigType::String | ConfigType::List => k.allowed.is_empty() || k.allowed.contains(&value),
    };
    if !ok {
        return Err(format!("invalid value {value:?} for topic config {name}"));
    }
    if name == MAX_MESSAGE_BYTES && value.parse::<i32>().is_ok_and(|v| v < 0) {
        return Err(format!("{name} must not be negative"));
    }
    Ok(())
}

/// The largest batch a topic accepts. Read on every produce, so it looks up
/// the one key without building strings.
pub fn max_message_bytes(configs: &BTreeMap<String, String>, broker_default: usize) -> usize {
    configs
        .get(MAX_MESSAGE_BYTES)
        .and_then(|v| v.parse().ok())
        .unwrap_or(broker_default)
}

/// A `max.message.bytes` value as enforced: at most `cap` (what the WAL
/// can hold). Values that are not numbers are left as they are.
pub fn capped(value: &str, cap: usize) -> String {
    match value.parse::<usize>() {
        Ok(v) if v > cap => cap.to_string(),
        _ => value.to_string(),
    }
}

/// Whether a topic stamps batches with the append time. Read on every produce.
pub fn uses_log_append_time(configs: &BTreeMap<String, String>) -> bool {
    configs
        .get(TIMESTAMP_TYPE)
        .is_some_and(|v| v == "LogAppendTime")
}

/// A topic's effective value of `name`: set explicitly, else the broker's
/// default for it (`message_max_bytes`, `log_retention_ms`,
/// `log_retention_bytes`), else Kafka's default.
pub fn effective(configs: &BTreeMap<String, String>, name: &str, cfg: &Config) -> Option<String> {
    if let Some(v) = configs.get(name) {
        return Some(v.clone());
    }
    match name {
        MAX_MESSAGE_BYTES => Some(cfg.message_max_bytes.to_string()),
        RETENTION_MS => Some(cfg.log_retention_ms.to_string()),
        RETENTION_BYTES => Some(cfg.log_retention_bytes.to_string()),
        _ => lookup(name).map(|k| k.default.to_string()),
    }
}

/// What retention keeps of a topic: `(retention.ms, retention.bytes)`, -1
/// for no limit; both -1 unless `cleanup.policy` includes `delete`.
pub fn retention(configs: &BTreeMap<String, String>, cfg: &Config) -> (i64, i64) {
    if !has_cleanup_policy(configs, "delete") {
        return (-1, -1);
    }
    let get = |name: &str| {
        effective(configs, name, cfg)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    (get(RETENTION_MS), get(RETENTION_BYTES))
}

/// Whether `cleanup.policy` includes `compact`. Read on every produce.
pub fn is_compacted(configs: &BTreeMap<String, String>) -> bool {
    has_cleanup_policy(configs, "compact")
}

/// Whether a topic's `cleanup.policy` (default `delete`) lists `policy`.
fn has_cleanup_policy(configs: &BTreeMap<String, String>, policy: &str) -> bool {
    configs
        .get(CLEANUP_POLICY)
        .map_or("delete", |s| s.as_str())
        .split(',')
        .any(|p| p.trim() == policy)
}

/// What log compaction honours for one topic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CleanerSettings {
    /// Tombstones older than this are dropped.
    pub delete_retention_ms: i64,
    /// Records younger than this are not compacted yet.
    pub min_compaction_lag_ms: i64,
    /// A partition is cleaned once its dirty share of bytes reaches this.
    pub min_cleanable_dirty_ratio: f64,
    /// ... or once its oldest dirty records are older than this, whatever
    /// their share.
    pub max_compaction_lag_ms: i64,
}

/// The log-compaction settings of a compacted topic, `None` otherwise.
pub fn cleaner(configs: &BTreeMap<String, String>, cfg: &Config) -> Option<CleanerSettings> {
    if !is_compacted(configs) {
        return None;
    }
    let long = |name: &str, default: i64| {
        effective(configs, name, cfg)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(default)
    };
    let ratio = effective(configs, MIN_CLEANABLE_DIRTY_RATIO, cfg)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|r| r.is_finite())
        .unwrap_or(0.5);
    Some(CleanerSettings {
        delete_retention_ms: long(DELETE_RETENTION_MS, 86_400_000).max(0),
        min_compaction_lag_ms: long(MIN_COMPACTION_LAG_MS, 0).max(0),
        min_cleanable_dirty_ratio: ratio.clamp(0.0, 1.0),
        max_compaction_lag_ms: long(MAX_COMPACTION_LAG_MS, i64::MAX).max(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate("retention.ms", "1000").is_ok());
        assert!(validate("retention.ms", "abc").is_err());
        assert!(validate("cleanup.policy", "compact").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("no.such.key", "1").is_err());
        assert!(validate(MAX_MESSAGE_BYTES, "-5").is_err());
    }

    #[test]
    fn defaults() {
        let mut c = BTreeMap::new();
        let cfg = Config {
            message_max_bytes: 777,
            log_retention_bytes: 1 << 30,
            ..Config::default()
        };
        assert_eq!(effective(&c, MAX_MESSAGE_BYTES, &cfg).unwrap(), "777");
        assert_eq!(retention(&c, &cfg), (604_800_000, 1 << 30));
        c.insert("retention.ms".to_string(), "5".to_string());
        assert_eq!(effective(&c, "retention.ms", &cfg).unwrap(), "5");
        assert_eq!(effective(&c, "segment.ms", &cfg).unwrap(), "604800000");
        assert_eq!(retention(&c, &cfg), (5, 1 << 30));
        c.insert(CLEANUP_POLICY.to_string(), "compact".to_string());
        assert_eq!(retention(&c, &cfg), (-1, -1));
        c.insert(CLEANUP_POLICY.to_string(), "compact,delete".to_string());
        assert_eq!(retention(&c, &cfg).0, 5);
        c.remove(CLEANUP_POLICY);
        assert_eq!(max_message_bytes(&c, 777), 777);
        assert!(!uses_log_append_time(&c));
        c.insert(MAX_MESSAGE_BYTES.to_string(), "5000".to_string());
        c.insert(TIMESTAMP_TYPE.to_string(), "LogAppendTime".to_string());
        assert_eq!(max_message_bytes(&c, 777), 5000);
        assert!(uses_log_append_time(&c));
    }

    #[test]
    fn cleaner_settings() {
        let cfg = Config::default();
        let mut c = BTreeMap::new();
        assert!(cleaner(&c, &cfg).is_none());
        c.insert(CLEANUP_POLICY.to_string(), "delete,compact".to_string());
        let s = cleaner(&c, &cfg).unwrap();
        assert_eq!(s.delete_retention_ms, 86_400_000);
        assert_eq!(s.min_compaction_lag_ms, 0);
        assert_eq!(s.min_cleanable_dirty_ratio, 0.5);
        c.insert(MIN_CLEANABLE_DIRTY_RATIO.to_string(), "0.01".to_string());
        c.insert(DELETE_RETENTION_MS.to_string(), "1000".to_string());
        let s = cleaner(&c, &cfg).unwrap();
        assert_eq!(
            (s.delete_retention_ms, s.min_cleanable_dirty_ratio),
            (1000, 0.01)
        );
    }

    #[test]
    fn max_message_bytes_is_capped_at_what_the_wal_holds() {
        assert_eq!(capped("64000000", 33_000_000), "33000000");
        assert_eq!(capped("1048588", 33_000_000), "1048588");
        assert_eq!(capped("33000000", 33_000_000), "33000000");
        assert_eq!(capped("junk", 5), "junk");
    }
}
