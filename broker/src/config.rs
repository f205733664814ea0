//! The broker's one typed configuration: defaults, then a TOML file
//! (`--config`), then `BROKER_*` environment variables, then flags.
//!
//! Read once on the main thread before any shard starts; shards get an
//! `Arc<Config>` and never change it.

use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

/// Every key, with its default. The README's configuration table lists the
/// same keys; keep them in step.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Broker id; shard `s` is advertised as node `broker_id * 1000 + s`.
    pub broker_id: i32,
    /// Address the shard listeners bind to.
    pub listen_host: String,
    /// Host advertised in Metadata (defaults to `listen_host`).
    pub advertised_host: Option<String>,
    /// Shard `s` listens on `base_port + s`.
    pub base_port: u16,
    /// Number of shards (cores); 0 means one per available core.
    pub shards: usize,
    /// Directory for the WAL file and metadata.
    pub data_dir: PathBuf,
    /// WAL: a raw block device or a file (default `data_dir/wal`).
    pub wal_path: Option<PathBuf>,
    /// Size of a new WAL file (ignored for block devices and existing files).
    pub wal_size_bytes: u64,
    /// Largest request frame accepted; larger frames close the connection.
    pub max_frame_bytes: usize,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of auto-created topics and of CreateTopics with -1.
    pub num_partitions: i32,
    /// `message.max.bytes`: default `max.message.bytes` of topics.
    pub message_max_bytes: usize,
    /// Cluster id reported in Metadata and DescribeCluster.
    pub cluster_id: String,
    /// tracing filter, e.g. `info` or `broker=debug`.
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            broker_id: 0,
            listen_host: "127.0.0.1".into(),
            advertised_host: None,
            base_port: 9092,
            shards: 0,
            data_dir: PathBuf::from("./data"),
            wal_path: None,
            wal_size_bytes: 1 << 30,
            max_frame_bytes: 100 * 1024 * 1024,
            auto_create_topics: true,
            num_partitions: 1,
            message_max_bytes: 1_048_588,
            cluster_id: "streaming-broker-cluster".into(),
            log_level: "info".into(),
        }
    }
}

/// Command line; each flag can also come from its `BROKER_*` variable.
#[derive(Debug, Parser)]
#[command(name = "broker", about = "Kafka-compatible streaming broker")]
pub struct Flags {
    /// TOML file with any of the keys below (snake_case).
    #[arg(long, env = "BROKER_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "BROKER_BROKER_ID")]
    pub broker_id: Option<i32>,
    #[arg(long, env = "BROKER_LISTEN_HOST")]
    pub listen_host: Option<String>,
    #[arg(long, env = "BROKER_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    #[arg(long, env = "BROKER_BASE_PORT")]
    pub base_port: Option<u16>,
    #[arg(long, env = "BROKER_SHARDS")]
    pub shards: Option<usize>,
    #[arg(long, env = "BROKER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "BROKER_WAL_PATH")]
    pub wal_path: Option<PathBuf>,
    #[arg(long, env = "BROKER_WAL_SIZE_BYTES")]
    pub wal_size_bytes: Option<u64>,
    #[arg(long, env = "BROKER_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    #[arg(long, env = "BROKER_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    #[arg(long, env = "BROKER_NUM_PARTITIONS")]
    pub num_partitions: Option<i32>,
    #[arg(long, env = "BROKER_MESSAGE_MAX_BYTES")]
    pub message_max_bytes: Option<usize>,
    #[arg(long, env = "BROKER_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    #[arg(long, env = "BROKER_LOG_LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Builds the config from a file (if any) and the flags/environment.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let mut cfg = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => Config::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = flags.$f { cfg.$f = v; } )* };
        }
        over!(
            broker_id,
            listen_host,
            base_port,
            shards,
            data_dir,
            wal_size_bytes,
            max_frame_bytes,
            auto_create_topics,
            num_partitions,
            message_max_bytes,
            cluster_id,
            log_level
        );
        if flags.wal_path.is_some() {
            cfg.wal_path = flags.wal_path;
        }
        if flags.advertised_host.is_some() {
            cfg.advertised_host = flags.advertised_host;
        }
        if cfg.shards == 0 {
            cfg.shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.shards > 999 {
            return Err(ConfigError::Invalid("shards must be below 1000".into()));
        }
        if self.base_port as usize + self.shards > 65536 {
            return Err(ConfigError::Invalid(
                "base_port + shards exceeds 65535".into(),
            ));
        }
        if self.num_partitions < 1 {
            return Err(ConfigError::Invalid(
                "num_partitions must be at least 1".into(),
            ));
        }
        if self.broker_id < 0 || self.broker_id > 2_000_000 {
            return Err(ConfigError::Invalid(
                "broker_id must be in 0..=2000000".into(),
            ));
        }
        Ok(())
    }

    /// The node id shard `shard` is advertised as.
    pub fn node_id(&self, shard: usize) -> i32 {
        self.broker_id * 1000 + shard as i32
    }

    /// The shard behind `node_id`, if it is one of ours.
    pub fn shard_of_node(&self, node_id: i32) -> Option<usize> {
        let shard = node_id - self.broker_id * 1000;
        (0..self.shards as i32)
            .contains(&shard)
            .then_some(shard as usize)
    }

    pub fn wal_path(&self) -> PathBuf {
        self.wal_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("wal"))
    }

    pub fn port(&self, shard: usize) -> u16 {
        self.base_port + shard as u16
    }

    pub fn advertised_host(&self) -> &str {
        self.advertised_host.as_deref().unwrap_or(&self.listen_host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("broker-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.toml");
        std::fs::write(&path, "base_port = 19000\nshards = 3\nnum_partitions = 4\n").unwrap();
        let flags = Flags::parse_from([
            "broker",
            "--config",
            path.to_str().unwrap(),
            "--shards",
            "2",
        ]);
        let cfg = Config::load(flags).unwrap();
        assert_eq!(
            (cfg.base_port, cfg.shards, cfg.num_partitions),
            (19000, 2, 4)
        );
        assert_eq!(cfg.node_id(1), 1);
        assert_eq!(cfg.shard_of_node(1), Some(1));
        assert_eq!(cfg.shard_of_node(2), None);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<Config, _> = toml::from_str("no_such_key = 1");
        assert!(r.is_err());
    }
}
