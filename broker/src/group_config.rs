//! Dynamic group configs: the GROUP config resource (type 32) that
//! IncrementalAlterConfigs sets and DescribeConfigs shows, kept in the
//! metadata image (`MetadataImage::group_configs`) for any group id, even
//! one that does not exist yet (as Kafka keeps them).
//!
//! The configs served are those this broker applies: the share-group ones
//! (session and heartbeat, the record lock, the delivery limit, the records
//! in flight, where a new share-partition starts, which records it
//! delivers, lock renewal), the KIP-848 consumer-group session and
//! heartbeat, and the streams-group session, heartbeat, standby replicas
//! and initial rebalance delay. Anything else Kafka 4.4 knows (the streams
//! assignment interval, dead-letter queues, assignor offload) is refused
//! with INVALID_CONFIG, so that nobody believes it took effect.
//!
//! Pure: parsing and lookups, used by the controller (validation), the
//! group coordinator and the share-partition leaders.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::metadata::MetadataImage;
use crate::topic_config::ConfigType;

pub const CONSUMER_SESSION_TIMEOUT_MS: &str = "consumer.session.timeout.ms";
pub const CONSUMER_HEARTBEAT_INTERVAL_MS: &str = "consumer.heartbeat.interval.ms";
pub const STREAMS_SESSION_TIMEOUT_MS: &str = "streams.session.timeout.ms";
pub const STREAMS_HEARTBEAT_INTERVAL_MS: &str = "streams.heartbeat.interval.ms";
pub const STREAMS_NUM_STANDBY_REPLICAS: &str = "streams.num.standby.replicas";
pub const STREAMS_INITIAL_REBALANCE_DELAY_MS: &str = "streams.initial.rebalance.delay.ms";
pub const SHARE_SESSION_TIMEOUT_MS: &str = "share.session.timeout.ms";
pub const SHARE_HEARTBEAT_INTERVAL_MS: &str = "share.heartbeat.interval.ms";
pub const SHARE_RECORD_LOCK_DURATION_MS: &str = "share.record.lock.duration.ms";
pub const SHARE_DELIVERY_COUNT_LIMIT: &str = "share.delivery.count.limit";
pub const SHARE_PARTITION_MAX_RECORD_LOCKS: &str = "share.partition.max.record.locks";
pub const SHARE_AUTO_OFFSET_RESET: &str = "share.auto.offset.reset";
pub const SHARE_ISOLATION_LEVEL: &str = "share.isolation.level";
pub const SHARE_RENEW_ACKNOWLEDGE_ENABLE: &str = "share.renew.acknowledge.enable";

/// Every group config served, with its type.
pub const GROUP_CONFIGS: &[(&str, ConfigType)] = &[
    (CONSUMER_HEARTBEAT_INTERVAL_MS, ConfigType::Int),
    (CONSUMER_SESSION_TIMEOUT_MS, ConfigType::Int),
    (SHARE_AUTO_OFFSET_RESET, ConfigType::String),
    (SHARE_DELIVERY_COUNT_LIMIT, ConfigType::Int),
    (SHARE_HEARTBEAT_INTERVAL_MS, ConfigType::Int),
    (SHARE_ISOLATION_LEVEL, ConfigType::String),
    (SHARE_PARTITION_MAX_RECORD_LOCKS, ConfigType::Int),
    (SHARE_RECORD_LOCK_DURATION_MS, ConfigType::Int),
    (SHARE_RENEW_ACKNOWLEDGE_ENABLE, ConfigType::Boolean),
    (SHARE_SESSION_TIMEOUT_MS, ConfigType::Int),
    (STREAMS_HEARTBEAT_INTERVAL_MS, ConfigType::Int),
    (STREAMS_INITIAL_REBALANCE_DELAY_MS, ConfigType::Int),
    (STREAMS_NUM_STANDBY_REPLICAS, ConfigType::Int),
    (STREAMS_SESSION_TIMEOUT_MS, ConfigType::Int),
];

/// Where a new share-partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoOffsetReset {
    Latest,
    Earliest,
    /// The first record at or after `now - ms`.
    ByDuration(i64),
}

/// A share group's effective settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareConfig {
    pub session_timeout_ms: i64,
    pub heartbeat_interval_ms: i32,
    pub lock_ms: i64,
    pub delivery_count_limit: i16,
    pub max_record_locks: i64,
    pub auto_offset_reset: AutoOffsetReset,
    pub read_committed: bool,
    pub renew_enabled: bool,
}

/// Checks a value to set (`None`: a removal, always fine for a known name).
pub fn validate(name: &str, value: Option<&str>) -> Result<(), String> {
    if !GROUP_CONFIGS.iter().any(|(n, _)| *n == name) {
        return Err(format!(
            "group config {name} is not supported by this broker (supported: {})",
            GROUP_CONFIGS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let Some(v) = value else { return Ok(()) };
    let int = |lo: i64, hi: i64| -> Result<(), String> {
        match v.parse::<i64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(()),
            _ => Err(format!(
                "{name} must be an integer in [{lo}, {hi}], not {v:?}"
            )),
        }
    };
    match name {
        CONSUMER_SESSION_TIMEOUT_MS | SHARE_SESSION_TIMEOUT_MS => int(1_000, 3_600_000),
        CONSUMER_HEARTBEAT_INTERVAL_MS | SHARE_HEARTBEAT_INTERVAL_MS => int(100, 3_600_000),
        // Kafka 4.4's group.streams.{min,max}.session.timeout.ms and
        // max.heartbeat.interval.ms / min.heartbeat.interval.ms defaults.
        STREAMS_SESSION_TIMEOUT_MS => int(45_000, 60_000),
        STREAMS_HEARTBEAT_INTERVAL_MS => int(5_000, 15_000),
        STREAMS_NUM_STANDBY_REPLICAS => int(0, 2),
        STREAMS_INITIAL_REBALANCE_DELAY_MS => int(0, i64::from(i32::MAX)),
        SHARE_RECORD_LOCK_DURATION_MS => int(1_000, 3_600_000),
        SHARE_DELIVERY_COUNT_LIMIT => int(2, 10),
        SHARE_PARTITION_MAX_RECORD_LOCKS => int(100, 10_000),
        SHARE_AUTO_OFFSET_RESET => parse_reset(v).map(|_| ()).ok_or_else(|| {
            format!("{name} must be latest, earliest or by_duration:<ISO-8601 duration>, not {v:?}")
        }),
        SHARE_ISOLATION_LEVEL => match v {
            "read_committed" | "read_uncommitted" => Ok(()),
            _ => Err(format!(
                "{name} must be read_committed or read_uncommitted, not {v:?}"
            )),
        },
        SHARE_RENEW_ACKNOWLEDGE_ENABLE => match v {
            "true" | "false" => Ok(()),
            _ => Err(format!("{name} must be true or false, not {v:?}")),
        },
        _ => Ok(()),
    }
}

/// The broker's value of a group config (what applies when the group sets
/// none).
pub fn default_value(name: &str, cfg: &Config) -> String {
    match name {
        CONSUMER_SESSION_TIMEOUT_MS => cfg.group_consumer_session_timeout_ms.to_string(),
        CONSUMER_HEARTBEAT_INTERVAL_MS => cfg.group_consumer_heartbeat_interval_ms.to_string(),
        STREAMS_SESSION_TIMEOUT_MS => cfg.group_streams_session_timeout_ms.to_string(),
        STREAMS_HEARTBEAT_INTERVAL_MS => cfg.group_streams_heartbeat_interval_ms.to_string(),
        STREAMS_NUM_STANDBY_REPLICAS => cfg.group_streams_num_standby_replicas.to_string(),
        STREAMS_INITIAL_REBALANCE_DELAY_MS => {
            cfg.group_streams_initial_rebalance_delay_ms.to_string()
        }
        SHARE_SESSION_TIMEOUT_MS => cfg.group_share_session_timeout_ms.to_string(),
        SHARE_HEARTBEAT_INTERVAL_MS => cfg.group_share_heartbeat_interval_ms.to_string(),
        SHARE_RECORD_LOCK_DURATION_MS => cfg.group_share_record_lock_duration_ms.to_string(),
        SHARE_DELIVERY_COUNT_LIMIT => cfg.group_share_delivery_count_limit.to_string(),
        SHARE_PARTITION_MAX_RECORD_LOCKS => cfg.group_share_partition_max_record_locks.to_string(),
        SHARE_AUTO_OFFSET_RESET => "latest".into(),
        SHARE_ISOLATION_LEVEL => "read_uncommitted".into(),
        SHARE_RENEW_ACKNOWLEDGE_ENABLE => "true".into(),
        _ => String::new(),
    }
}

/// A group's configs as set (empty when none).
pub fn set_for<'a>(image: &'a MetadataImage, group: &str) -> Option<&'a BTreeMap<String, String>> {
    image.group_configs.get(group)
}

fn get<T: std::str::FromStr>(set: Option<&BTreeMap<String, String>>, name: &str, default: T) -> T {
    set.and_then(|s| s.get(name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A share group's effective settings: its own configs over the broker's.
pub fn share(image: &MetadataImage, group: &str, cfg: &Config) -> ShareConfig {
    let set = set_for(image, group);
    ShareConfig {
        session_timeout_ms: get(
            set,
            SHARE_SESSION_TIMEOUT_MS,
            i64::from(cfg.group_share_session_timeout_ms),
        ),
        heartbeat_interval_ms: get(
            set,
            SHARE_HEARTBEAT_INTERVAL_MS,
            cfg.group_share_heartbeat_interval_ms,
        ),
        lock_ms: get(
            set,
            SHARE_RECORD_LOCK_DURATION_MS,
            i64::from(cfg.group_share_record_lock_duration_ms),
        ),
        delivery_count_limit: get(
            set,
            SHARE_DELIVERY_COUNT_LIMIT,
            cfg.group_share_delivery_count_limit,
        ),
        max_record_locks: get(
            set,
            SHARE_PARTITION_MAX_RECORD_LOCKS,
            i64::from(cfg.group_share_partition_max_record_locks),
        ),
        auto_offset_reset: set
            .and_then(|s| s.get(SHARE_AUTO_OFFSET_RESET))
            .and_then(|v| parse_reset(v))
            .unwrap_or(AutoOffsetReset::Latest),
        read_committed: set
            .and_then(|s| s.get(SHARE_ISOLATION_LEVEL))
            .is_some_and(|v| v == "read_committed"),
        renew_enabled: get(set, SHARE_RENEW_ACKNOWLEDGE_ENABLE, true),
    }
}

/// A consumer (KIP-848) group's session timeout and heartbeat interval.
pub fn consumer(image: &MetadataImage, group: &str, cfg: &Config) -> (i64, i32) {
    let set = set_for(image, group);
    (
        get(
            set,
            CONSUMER_SESSION_TIMEOUT_MS,
            i64::from(cfg.group_consumer_session_timeout_ms),
        ),
        get(
            set,
            CONSUMER_HEARTBEAT_INTERVAL_MS,
            cfg.group_consumer_heartbeat_interval_ms,
        ),
    )
}

/// A streams group's effective settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamsConfig {
    pub session_timeout_ms: i64,
    pub heartbeat_interval_ms: i32,
    pub num_standby_replicas: i32,
    pub initial_rebalance_delay_ms: i64,
}

/// A streams group's settings: its own configs over the broker's.
pub fn streams(image: &MetadataImage, group: &str, cfg: &Config) -> StreamsConfig {
    let set = set_for(image, group);
    StreamsConfig {
        session_timeout_ms: get(
            set,
            STREAMS_SESSION_TIMEOUT_MS,
            i64::from(cfg.group_streams_session_timeout_ms),
        ),
        heartbeat_interval_ms: get(
            set,
            STREAMS_HEARTBEAT_INTERVAL_MS,
            cfg.group_streams_heartbeat_interval_ms,
        ),
        num_standby_replicas: get(
            set,
            STREAMS_NUM_STANDBY_REPLICAS,
            cfg.group_streams_num_standby_replicas,
        ),
        initial_rebalance_delay_ms: get(
            set,
            STREAMS_INITIAL_REBALANCE_DELAY_MS,
            cfg.group_streams_initial_rebalance_delay_ms,
        ),
    }
}

fn parse_reset(v: &str) -> Option<AutoOffsetReset> {
    match v {
        "latest" => Some(AutoOffsetReset::Latest),
        "earliest" => Some(AutoOffsetReset::Earliest),
        _ => v
            .strip_prefix("by_duration:")
            .and_then(parse_duration_ms)
            .map(AutoOffsetReset::ByDuration),
    }
}

/// An ISO-8601 duration as Java's `Duration.parse` reads it (`PnDTnHnMn.nS`,
/// each part optional, at least one), in milliseconds; negative ones are
/// refused, as Kafka refuses them here.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let rest = s.strip_prefix('P').or_else(|| s.strip_prefix('p'))?;
    let (days, time) = match rest.find(['T', 't']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut ms: i64 = 0;
    let mut parts = 0;
    if !days.is_empty() {
        let n = days.strip_suffix(['D', 'd'])?;
        ms = ms.checked_add(n.parse::<i64>().ok()?.checked_mul(86_400_000)?)?;
        parts += 1;
    }
    if let Some(mut t) = time {
        if t.is_empty() {
            return None;
        }
        for (unit, scale) in [('H', 3_600_000i64), ('M', 60_000)] {
            if let Some(i) = t.find([unit, unit.to_ascii_lowercase()]) {
                let n: i64 = t[..i].parse().ok()?;
                ms = ms.checked_add(n.checked_mul(scale)?)?;
                t = &t[i + 1..];
                parts += 1;
            }
        }
        if !t.is_empty() {
            let n = t.strip_suffix(['S', 's'])?;
            let secs: f64 = n.parse().ok()?;
            if !secs.is_finite() {
                return None;
            }
            ms = ms.checked_add((secs * 1000.0).round() as i64)?;
            parts += 1;
        }
    }
    (parts > 0 && ms >= 0).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_java_reads_them() {
        assert_eq!(parse_duration_ms("PT1H"), Some(3_600_000));
        assert_eq!(parse_duration_ms("P1DT2H3M4.5S"), Some(93_784_500));
        assert_eq!(parse_duration_ms("PT0.25S"), Some(250));
        assert_eq!(parse_duration_ms("P2D"), Some(172_800_000));
        for bad in ["", "P", "PT", "1H", "PT-1H", "PTxS", "P1H", "PT1H2"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_are_checked_and_unknown_names_refused() {
        assert!(validate(SHARE_AUTO_OFFSET_RESET, Some("earliest")).is_ok());
        assert!(validate(SHARE_AUTO_OFFSET_RESET, Some("by_duration:PT10M")).is_ok());
        assert!(validate(SHARE_AUTO_OFFSET_RESET, Some("none")).is_err());
        assert!(validate(SHARE_RECORD_LOCK_DURATION_MS, Some("15000")).is_ok());
        assert!(validate(SHARE_RECORD_LOCK_DURATION_MS, Some("10")).is_err());
        assert!(validate(SHARE_ISOLATION_LEVEL, Some("read_committed")).is_ok());
        assert!(validate(STREAMS_NUM_STANDBY_REPLICAS, Some("1")).is_ok());
        assert!(validate(STREAMS_NUM_STANDBY_REPLICAS, Some("3")).is_err());
        assert!(validate(STREAMS_INITIAL_REBALANCE_DELAY_MS, Some("0")).is_ok());
        assert!(validate(STREAMS_SESSION_TIMEOUT_MS, Some("10000")).is_err());
        assert!(validate("streams.assignment.interval.ms", Some("0")).is_err());
        assert!(validate("nope", None).is_err());
        assert!(validate(SHARE_DELIVERY_COUNT_LIMIT, None).is_ok());
    }

    #[test]
    fn a_groups_settings_override_the_brokers() {
        let cfg = Config::default();
        let mut image = MetadataImage::default();
        let base = share(&image, "g", &cfg);
        assert_eq!(base.auto_offset_reset, AutoOffsetReset::Latest);
        assert_eq!(base.lock_ms, 30_000);
        image.group_configs.insert(
            "g".into(),
            BTreeMap::from([
                (SHARE_AUTO_OFFSET_RESET.into(), "earliest".into()),
                (SHARE_RECORD_LOCK_DURATION_MS.into(), "15000".into()),
                (SHARE_ISOLATION_LEVEL.into(), "read_committed".into()),
            ]),
        );
        let g = share(&image, "g", &cfg);
        assert_eq!(
            (g.auto_offset_reset, g.lock_ms, g.read_committed),
            (AutoOffsetReset::Earliest, 15_000, true)
        );
        assert_eq!(share(&image, "other", &cfg), base);
    }
}
