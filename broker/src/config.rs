//! The broker's one typed configuration: defaults, then a TOML file
//! (`--config`), then `BROKER_*` environment variables, then flags.
//!
//! Read once on the main thread before any shard starts; shards get an
//! `Arc<Config>` and never change it.

use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

/// Defaults that depend on where objects live. On S3 every request is
/// billed: a shard uploads 256 MiB at a time (one PUT; 3.9 per GB measured), or
/// every 30 s when it is quieter, and the log cache, which holds what is
/// not uploaded yet, is 1 GiB so that half a shard's share holds an upload
/// on two shards. A local directory bills nothing per file but shares its
/// disk with the WAL: shorter, more frequent uploads
/// (32 MiB, 5 s) are shorter bursts in front of the WAL's writes (128 MiB
/// ones raised produce p99 to hundreds of ms next to a catch-up read,
/// `scripts/bench-cold-read`).
pub struct StoreDefaults {
    pub log_cache_bytes: u64,
    pub upload_bytes: u64,
    pub upload_interval_ms: u64,
}

pub const S3_DEFAULTS: StoreDefaults = StoreDefaults {
    log_cache_bytes: 1 << 30,
    upload_bytes: 256 << 20,
    upload_interval_ms: 30_000,
};

pub const LOCAL_DEFAULTS: StoreDefaults = StoreDefaults {
    log_cache_bytes: 256 << 20,
    upload_bytes: 32 << 20,
    upload_interval_ms: 5_000,
};

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
    /// `max.connections`: open client connections per shard (each shard is
    /// its own Kafka node); a connection beyond it is closed at once.
    pub max_connections: usize,
    /// `max.connections.per.ip`: open connections per client address, per
    /// shard; a connection beyond it is closed at once.
    pub max_connections_per_ip: usize,
    /// `connections.max.idle.ms`: a connection that completes no request for
    /// this long is closed.
    pub connections_max_idle_ms: u64,
    /// A request that takes longer than this is logged (warn) and counted
    /// in `broker_slow_requests_total`; 0 turns that off. Fetch, JoinGroup
    /// and SyncGroup wait by design and are not counted.
    pub slow_request_ms: u64,
    /// Address of the admin HTTP API and `/metrics` (`host:port`); empty
    /// turns it off.
    pub admin_listen: String,
    /// `text` (default) or `json` log lines.
    pub log_format: String,
    /// How long a shard with nothing to run polls for I/O completions and
    /// wake-ups before it sleeps (glommio's `spin_before_park`), in µs. A
    /// sleeping shard takes tens of microseconds to wake for each WAL write
    /// and flush completion; spinning trades that for CPU, only while the
    /// shard is busy (an idle one sleeps after this long). 0: never spin.
    pub spin_before_park_us: u64,
    /// The CPU shard 0 is pinned to; shard `s` runs on CPU
    /// `(first_cpu + s) % cpus`. On a VM whose disk interrupt is bound to
    /// one CPU (and cannot be moved), this puts a shard next to it.
    pub first_cpu: usize,
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
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets`
    /// when it is created (on first use). Changing it later has no effect.
    pub offsets_topic_partitions: i32,
    /// `group.initial.rebalance.delay.ms`: how long a new (empty) group
    /// waits for more members before its first rebalance.
    pub group_initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms` / `group.max.session.timeout.ms`.
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// `group.max.size`: members (and pending members) per group.
    pub group_max_size: usize,
    /// `group.consumer.session.timeout.ms`: a KIP-848 member that sends no
    /// heartbeat for this long is removed.
    pub group_consumer_session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms`, told to KIP-848 members.
    pub group_consumer_heartbeat_interval_ms: i32,
    /// `group.share.session.timeout.ms`: a share-group member that sends no
    /// heartbeat for this long is removed.
    pub group_share_session_timeout_ms: i32,
    /// `group.share.heartbeat.interval.ms`, told to share-group members.
    pub group_share_heartbeat_interval_ms: i32,
    /// `group.share.max.size`: members per share group.
    pub group_share_max_size: usize,
    /// `group.streams.session.timeout.ms`: a streams-group member that
    /// sends no heartbeat for this long is removed.
    pub group_streams_session_timeout_ms: i32,
    /// `group.streams.heartbeat.interval.ms`, told to streams-group members.
    pub group_streams_heartbeat_interval_ms: i32,
    /// `group.streams.num.standby.replicas`: standby copies of each task.
    pub group_streams_num_standby_replicas: i32,
    /// `group.streams.initial.rebalance.delay.ms`: a new streams group's
    /// first assignment waits this long for more members.
    pub group_streams_initial_rebalance_delay_ms: i64,
    /// `group.streams.max.size`: members (stream threads) per streams group.
    pub group_streams_max_size: usize,
    /// `group.share.record.lock.duration.ms`: how long a share consumer
    /// holds a record it fetched before it is handed out again.
    pub group_share_record_lock_duration_ms: i32,
    /// `group.share.delivery.count.limit`: deliveries of one record before
    /// it is archived (skipped) instead.
    pub group_share_delivery_count_limit: i16,
    /// `group.share.partition.max.record.locks`: records in flight per
    /// share-partition; bounds its memory.
    pub group_share_partition_max_record_locks: i32,
    /// Largest total size of one member's JoinGroup protocol metadata.
    pub group_max_member_metadata_bytes: usize,
    /// `offset.metadata.max.bytes`: largest OffsetCommit metadata string.
    pub offset_metadata_max_bytes: usize,
    /// Metadata log entries between two metadata snapshots.
    pub metadata_snapshot_entries: u64,
    /// Where objects live: `file:///path` (default `file://<data_dir>/objects`)
    /// or `s3://bucket[/prefix]`.
    pub objects_url: Option<String>,
    /// S3 endpoint, e.g. `http://127.0.0.1:9000` (default: `AWS_ENDPOINT_URL`,
    /// else AWS's regional endpoint).
    pub s3_endpoint: Option<String>,
    /// S3 region (default: `AWS_REGION`, else `us-east-1`).
    pub s3_region: Option<String>,
    /// S3 credentials (default: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`).
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), as MinIO, Ceph RGW and
    /// CubeFS need.
    pub s3_path_style: bool,
    /// Timeout of one S3 request.
    pub s3_request_timeout_ms: u64,
    /// First retry delay of S3 requests (doubles per attempt, capped at 60 s).
    pub s3_retry_base_ms: u64,
    /// Attempts per S3 request before the caller sees the error.
    pub s3_max_attempts: u32,
    /// Log cache of all shards together: tail data in memory. Data not yet
    /// uploaded stays in it, so this also bounds what a shard buffers while
    /// the object store is slow or down. Unset: by store (`StoreDefaults`).
    pub log_cache_bytes: Option<u64>,
    /// Block cache of all shards together: object blocks read back.
    pub block_cache_bytes: u64,
    /// A shard uploads once this much data has gathered (per shard; at most
    /// half of the shard's log cache).
    /// Unset: by store (`StoreDefaults`); see `Config::upload_bytes`.
    pub upload_bytes: Option<u64>,
    /// ...or once its oldest data not in objects is this old.
    pub upload_interval_ms: Option<u64>,
    /// Upload bandwidth budget of all shards together (0: unlimited).
    pub upload_bytes_per_sec: u64,
    /// Bandwidth budget of reads from objects, all shards together
    /// (0: unlimited).
    pub cold_read_bytes_per_sec: u64,
    /// Data block size in stream-set objects.
    pub object_block_bytes: u64,
    /// How long produce waits for WAL or log-cache space before it answers
    /// a retriable error.
    pub wal_full_wait_ms: u64,
    /// Open the WAL `O_DSYNC`: a batch is durable when its write completes
    /// (one I/O: the kernel sends FUA, or a cache flush), so no fdatasync
    /// follows it. `false`: write, then fdatasync. The default, `true`, had
    /// the lower produce latency and CPU in `scripts/bench-latency` runs
    /// (docs/bench/README.md).
    pub wal_dsync: bool,
    /// With `wal_dsync`, how many WAL batches a shard may have in flight
    /// before a new small one waits for the device: 2 lets a produce that
    /// arrives during a write start its own write at once instead of
    /// queueing behind it; 1 waits for the device to be idle (fewer, larger
    /// writes). Large backlogs are written up to 8 writes at once either way.
    pub wal_batches_in_flight: usize,
    /// Upload to object storage (false: the WAL and the log cache hold
    /// everything, as before object storage; for benchmarks).
    pub uploads_enabled: bool,
    /// Objects reserved but never committed are deleted after this long.
    pub object_orphan_grace_ms: u64,
    /// How often shard 0 looks for orphaned objects (0: never).
    pub object_gc_interval_ms: u64,
    /// `log.retention.ms`: default `retention.ms` of topics (-1: forever).
    pub log_retention_ms: i64,
    /// `log.retention.bytes`: default `retention.bytes` of topics (-1: no limit).
    pub log_retention_bytes: i64,
    /// `log.retention.check.interval.ms`: how often shards apply retention.
    pub log_retention_check_interval_ms: u64,
    /// Destroyed objects (no longer referenced) are deleted from the store
    /// after this long, so reads that already hold them finish.
    pub object_delete_delay_ms: u64,
    /// How often shards merge their partitions' small object ranges into
    /// stream objects (0: never).
    pub object_compaction_interval_ms: u64,
    /// Ranges whose newest record is younger than this are left alone.
    pub object_compaction_min_age_ms: u64,
    /// `log.cleaner.backoff.ms`: how often shards look for compacted
    /// topics' partitions due for log compaction (0: never).
    pub log_cleaner_backoff_ms: u64,
    /// Target size of a stream object (the most one compaction holds in
    /// memory).
    pub stream_object_bytes: u64,
    /// A stream-set object at least this large stays as it is while at
    /// least half of its bytes are live; smaller ones (uploads cut short by
    /// `upload_interval_ms`) move out into stream objects (0: all do).
    pub stream_set_keep_bytes: u64,
    /// Compaction read and write bandwidth, all shards together (0: unlimited).
    pub compaction_bytes_per_sec: u64,
    /// `log.cleaner.dedupe.buffer.size`: memory for the key → offset maps of
    /// log compaction, all shards together.
    pub log_cleaner_dedupe_buffer_bytes: u64,
    /// `offsets.retention.minutes`: committed offsets of a group that has
    /// been empty this long are deleted (tombstones).
    pub offsets_retention_minutes: u64,
    /// Overrides `offsets_retention_minutes` with milliseconds (tests).
    pub offsets_retention_ms: Option<u64>,
    /// `offsets.retention.check.interval.ms`: how often groups are checked.
    pub offsets_retention_check_interval_ms: u64,
    /// On SIGTERM, how long shards may take to upload what their WAL holds
    /// before the process exits anyway.
    pub shutdown_timeout_ms: u64,
    /// After a restart with another shard count, how long the old WAL
    /// slices may take to go into objects before the broker exits (leaving
    /// the WAL as it was).
    pub reshard_timeout_ms: u64,
    /// `controller.quorum.voters`: the metadata quorum, `id@host:port,...`
    /// (a voter's id is its broker id). Unset: a one-voter quorum in this
    /// process, talking to nobody.
    pub controller_quorum_voters: Option<String>,
    /// `process.roles`: `broker,controller` (both, the default), `broker`
    /// (follows the quorum's log as a non-voting learner; needs
    /// `controller_listen`) or `controller` (a voter, no shards).
    pub process_roles: String,
    /// A broker-only process: where its learner listens for the quorum's
    /// leader (`host:port`).
    pub controller_listen: Option<String>,
    /// `broker.rack`: new partitions spread over racks first.
    pub rack: Option<String>,
    /// `broker.session.timeout.ms`: a broker the quorum's leader has not
    /// heard from this long is fenced (its nodes leave Metadata); a broker
    /// that has not reached the leader this long stops serving.
    pub broker_session_timeout_ms: u64,
    /// `broker.heartbeat.interval.ms`.
    pub broker_heartbeat_interval_ms: u64,
    /// `producer.id.expiration.ms`: a partition forgets a producer (its
    /// sequences) this long after its last write, unless a transaction of
    /// it is open there.
    pub producer_id_expiration_ms: i64,
    /// `producer.id.expiration.check.interval.ms`.
    pub producer_id_expiration_check_interval_ms: u64,
    /// `transactional.id.expiration.ms`: the transaction coordinator forgets
    /// a transactional id this long after its last transaction ended.
    pub transactional_id_expiration_ms: i64,
    /// `transaction.max.timeout.ms`: largest transaction timeout a producer
    /// may ask for.
    pub transaction_max_timeout_ms: i32,
    /// `transaction.state.log.num.partitions`: partitions of
    /// `__transaction_state`, created on first use. Fixed once it exists.
    pub transaction_state_partitions: i32,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: how
    /// often coordinators look for transactions past their timeout.
    pub transaction_abort_check_interval_ms: u64,
    /// `sasl.enabled.mechanisms`, comma-separated: PLAIN, SCRAM-SHA-256,
    /// SCRAM-SHA-512. Empty (the default): the client listeners are
    /// PLAINTEXT. Otherwise they are SASL_PLAINTEXT: every connection
    /// authenticates with one of these before any other request.
    pub sasl_enabled_mechanisms: String,
    /// PLAIN's users, one `user:password` per line (Kafka's JAAS
    /// `user_NAME="password"` entries). Read once at startup.
    pub sasl_plain_users_file: Option<PathBuf>,
    /// The user (in `sasl_plain_users_file`) brokers authenticate as, with
    /// PLAIN, when they call each other (transaction markers,
    /// reassignments). Needed when SASL is enabled.
    pub sasl_inter_broker_user: Option<String>,
    /// `sasl_plain_users_file` as read at startup.
    #[serde(skip)]
    pub sasl_plain_users: Option<std::sync::Arc<crate::sasl::PlainUsers>>,
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
            max_connections: 2_147_483_647,
            max_connections_per_ip: 2_147_483_647,
            connections_max_idle_ms: 600_000,
            slow_request_ms: 500,
            spin_before_park_us: 0,
            first_cpu: 0,
            admin_listen: "127.0.0.1:9644".into(),
            log_format: "text".into(),
            auto_create_topics: true,
            num_partitions: 1,
            message_max_bytes: 1_048_588,
            cluster_id: "streaming-broker-cluster".into(),
            log_level: "info".into(),
            offsets_topic_partitions: 50,
            group_initial_rebalance_delay_ms: 100,
            group_min_session_timeout_ms: 1000,
            group_max_session_timeout_ms: 1_800_000,
            group_max_size: 10_000,
            group_consumer_session_timeout_ms: 45_000,
            group_consumer_heartbeat_interval_ms: 5_000,
            group_share_session_timeout_ms: 45_000,
            group_share_heartbeat_interval_ms: 5_000,
            group_share_max_size: 200,
            group_streams_session_timeout_ms: 45_000,
            group_streams_heartbeat_interval_ms: 5_000,
            group_streams_num_standby_replicas: 0,
            group_streams_initial_rebalance_delay_ms: 3_000,
            group_streams_max_size: 10_000,
            group_share_record_lock_duration_ms: 30_000,
            group_share_delivery_count_limit: 5,
            group_share_partition_max_record_locks: 2_000,
            group_max_member_metadata_bytes: 1 << 20,
            offset_metadata_max_bytes: 4096,
            metadata_snapshot_entries: 1000,
            objects_url: None,
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_path_style: true,
            s3_request_timeout_ms: 30_000,
            s3_retry_base_ms: 1000,
            s3_max_attempts: 10,
            log_cache_bytes: None,
            block_cache_bytes: 128 << 20,
            upload_bytes: None,
            upload_interval_ms: None,
            upload_bytes_per_sec: 0,
            cold_read_bytes_per_sec: 0,
            object_block_bytes: 512 << 10,
            wal_full_wait_ms: 5000,
            wal_dsync: true,
            wal_batches_in_flight: 2,
            uploads_enabled: true,
            object_orphan_grace_ms: 3_600_000,
            object_gc_interval_ms: 300_000,
            shutdown_timeout_ms: 30_000,
            reshard_timeout_ms: 120_000,
            controller_quorum_voters: None,
            process_roles: "broker,controller".into(),
            controller_listen: None,
            rack: None,
            broker_session_timeout_ms: 9_000,
            broker_heartbeat_interval_ms: 1_000,
            log_retention_ms: 604_800_000,
            log_retention_bytes: -1,
            log_retention_check_interval_ms: 300_000,
            object_delete_delay_ms: 60_000,
            object_compaction_interval_ms: 60_000,
            object_compaction_min_age_ms: 60_000,
            log_cleaner_backoff_ms: 5_000,
            stream_object_bytes: 64 << 20,
            stream_set_keep_bytes: 16 << 20,
            compaction_bytes_per_sec: 64 << 20,
            log_cleaner_dedupe_buffer_bytes: 128 << 20,
            offsets_retention_minutes: 10_080,
            offsets_retention_ms: None,
            offsets_retention_check_interval_ms: 600_000,
            producer_id_expiration_ms: 86_400_000,
            producer_id_expiration_check_interval_ms: 600_000,
            transactional_id_expiration_ms: 604_800_000,
            transaction_max_timeout_ms: 900_000,
            transaction_state_partitions: 50,
            transaction_abort_check_interval_ms: 10_000,
            sasl_enabled_mechanisms: String::new(),
            sasl_plain_users_file: None,
            sasl_inter_broker_user: None,
            sasl_plain_users: None,
        }
    }
}

/// Command line; each flag can also come from its `BROKER_*` variable.
#[derive(Debug, Parser)]
#[command(name = "broker", about = "Kafka-compatible streaming broker")]
pub struct Flags {
    /// A tool to run instead of the broker.
    #[command(subcommand)]
    pub tool: Option<Tool>,
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
    #[arg(long, env = "BROKER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    #[arg(long, env = "BROKER_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    #[arg(long, env = "BROKER_CONNECTIONS_MAX_IDLE_MS")]
    pub connections_max_idle_ms: Option<u64>,
    #[arg(long, env = "BROKER_SLOW_REQUEST_MS")]
    pub slow_request_ms: Option<u64>,
    #[arg(long, env = "BROKER_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    #[arg(long, env = "BROKER_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[arg(long, env = "BROKER_SPIN_BEFORE_PARK_US")]
    pub spin_before_park_us: Option<u64>,
    #[arg(long, env = "BROKER_FIRST_CPU")]
    pub first_cpu: Option<usize>,
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
    #[arg(long, env = "BROKER_OFFSETS_TOPIC_PARTITIONS")]
    pub offsets_topic_partitions: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<i64>,
    #[arg(long, env = "BROKER_GROUP_MIN_SESSION_TIMEOUT_MS")]
    pub group_min_session_timeout_ms: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_MAX_SESSION_TIMEOUT_MS")]
    pub group_max_session_timeout_ms: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_MAX_SIZE")]
    pub group_max_size: Option<usize>,
    #[arg(long, env = "BROKER_GROUP_CONSUMER_SESSION_TIMEOUT_MS")]
    pub group_consumer_session_timeout_ms: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS")]
    pub group_consumer_heartbeat_interval_ms: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_SHARE_SESSION_TIMEOUT_MS")]
    pub group_share_session_timeout_ms: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_SHARE_HEARTBEAT_INTERVAL_MS")]
    pub group_share_heartbeat_interval_ms: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_SHARE_MAX_SIZE")]
    pub group_share_max_size: Option<usize>,
    #[arg(long, env = "BROKER_GROUP_STREAMS_SESSION_TIMEOUT_MS")]
    pub group_streams_session_timeout_ms: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_STREAMS_HEARTBEAT_INTERVAL_MS")]
    pub group_streams_heartbeat_interval_ms: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_STREAMS_NUM_STANDBY_REPLICAS")]
    pub group_streams_num_standby_replicas: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_STREAMS_INITIAL_REBALANCE_DELAY_MS")]
    pub group_streams_initial_rebalance_delay_ms: Option<i64>,
    #[arg(long, env = "BROKER_GROUP_STREAMS_MAX_SIZE")]
    pub group_streams_max_size: Option<usize>,
    #[arg(long, env = "BROKER_GROUP_SHARE_RECORD_LOCK_DURATION_MS")]
    pub group_share_record_lock_duration_ms: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_SHARE_DELIVERY_COUNT_LIMIT")]
    pub group_share_delivery_count_limit: Option<i16>,
    #[arg(long, env = "BROKER_GROUP_SHARE_PARTITION_MAX_RECORD_LOCKS")]
    pub group_share_partition_max_record_locks: Option<i32>,
    #[arg(long, env = "BROKER_GROUP_MAX_MEMBER_METADATA_BYTES")]
    pub group_max_member_metadata_bytes: Option<usize>,
    #[arg(long, env = "BROKER_OFFSET_METADATA_MAX_BYTES")]
    pub offset_metadata_max_bytes: Option<usize>,
    #[arg(long, env = "BROKER_METADATA_SNAPSHOT_ENTRIES")]
    pub metadata_snapshot_entries: Option<u64>,
    #[arg(long, env = "BROKER_OBJECTS_URL")]
    pub objects_url: Option<String>,
    #[arg(long, env = "BROKER_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "BROKER_S3_REGION")]
    pub s3_region: Option<String>,
    #[arg(long, env = "BROKER_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    #[arg(long, env = "BROKER_S3_SECRET_ACCESS_KEY")]
    pub s3_secret_access_key: Option<String>,
    #[arg(long, env = "BROKER_S3_PATH_STYLE")]
    pub s3_path_style: Option<bool>,
    #[arg(long, env = "BROKER_S3_REQUEST_TIMEOUT_MS")]
    pub s3_request_timeout_ms: Option<u64>,
    #[arg(long, env = "BROKER_S3_RETRY_BASE_MS")]
    pub s3_retry_base_ms: Option<u64>,
    #[arg(long, env = "BROKER_S3_MAX_ATTEMPTS")]
    pub s3_max_attempts: Option<u32>,
    #[arg(long, env = "BROKER_LOG_CACHE_BYTES")]
    pub log_cache_bytes: Option<u64>,
    #[arg(long, env = "BROKER_BLOCK_CACHE_BYTES")]
    pub block_cache_bytes: Option<u64>,
    #[arg(long, env = "BROKER_UPLOAD_BYTES")]
    pub upload_bytes: Option<u64>,
    #[arg(long, env = "BROKER_UPLOAD_INTERVAL_MS")]
    pub upload_interval_ms: Option<u64>,
    #[arg(long, env = "BROKER_UPLOAD_BYTES_PER_SEC")]
    pub upload_bytes_per_sec: Option<u64>,
    #[arg(long, env = "BROKER_COLD_READ_BYTES_PER_SEC")]
    pub cold_read_bytes_per_sec: Option<u64>,
    #[arg(long, env = "BROKER_OBJECT_BLOCK_BYTES")]
    pub object_block_bytes: Option<u64>,
    #[arg(long, env = "BROKER_WAL_FULL_WAIT_MS")]
    pub wal_full_wait_ms: Option<u64>,
    #[arg(long, env = "BROKER_WAL_DSYNC")]
    pub wal_dsync: Option<bool>,
    #[arg(long, env = "BROKER_WAL_BATCHES_IN_FLIGHT")]
    pub wal_batches_in_flight: Option<usize>,
    #[arg(long, env = "BROKER_UPLOADS_ENABLED")]
    pub uploads_enabled: Option<bool>,
    #[arg(long, env = "BROKER_OBJECT_ORPHAN_GRACE_MS")]
    pub object_orphan_grace_ms: Option<u64>,
    #[arg(long, env = "BROKER_OBJECT_GC_INTERVAL_MS")]
    pub object_gc_interval_ms: Option<u64>,
    #[arg(long, env = "BROKER_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,
    #[arg(long, env = "BROKER_RESHARD_TIMEOUT_MS")]
    pub reshard_timeout_ms: Option<u64>,
    #[arg(long, env = "BROKER_CONTROLLER_QUORUM_VOTERS")]
    pub controller_quorum_voters: Option<String>,
    #[arg(long, env = "BROKER_PROCESS_ROLES")]
    pub process_roles: Option<String>,
    #[arg(long, env = "BROKER_CONTROLLER_LISTEN")]
    pub controller_listen: Option<String>,
    #[arg(long, env = "BROKER_RACK")]
    pub rack: Option<String>,
    #[arg(long, env = "BROKER_BROKER_SESSION_TIMEOUT_MS")]
    pub broker_session_timeout_ms: Option<u64>,
    #[arg(long, env = "BROKER_BROKER_HEARTBEAT_INTERVAL_MS")]
    pub broker_heartbeat_interval_ms: Option<u64>,
    #[arg(long, env = "BROKER_LOG_RETENTION_MS", allow_hyphen_values = true)]
    pub log_retention_ms: Option<i64>,
    #[arg(long, env = "BROKER_LOG_RETENTION_BYTES", allow_hyphen_values = true)]
    pub log_retention_bytes: Option<i64>,
    #[arg(long, env = "BROKER_LOG_RETENTION_CHECK_INTERVAL_MS")]
    pub log_retention_check_interval_ms: Option<u64>,
    #[arg(long, env = "BROKER_OBJECT_DELETE_DELAY_MS")]
    pub object_delete_delay_ms: Option<u64>,
    #[arg(long, env = "BROKER_OBJECT_COMPACTION_INTERVAL_MS")]
    pub object_compaction_interval_ms: Option<u64>,
    #[arg(long, env = "BROKER_OBJECT_COMPACTION_MIN_AGE_MS")]
    pub object_compaction_min_age_ms: Option<u64>,
    #[arg(long, env = "BROKER_LOG_CLEANER_BACKOFF_MS")]
    pub log_cleaner_backoff_ms: Option<u64>,
    #[arg(long, env = "BROKER_STREAM_OBJECT_BYTES")]
    pub stream_object_bytes: Option<u64>,
    #[arg(long, env = "BROKER_STREAM_SET_KEEP_BYTES")]
    pub stream_set_keep_bytes: Option<u64>,
    #[arg(long, env = "BROKER_COMPACTION_BYTES_PER_SEC")]
    pub compaction_bytes_per_sec: Option<u64>,
    #[arg(long, env = "BROKER_LOG_CLEANER_DEDUPE_BUFFER_BYTES")]
    pub log_cleaner_dedupe_buffer_bytes: Option<u64>,
    #[arg(long, env = "BROKER_OFFSETS_RETENTION_MINUTES")]
    pub offsets_retention_minutes: Option<u64>,
    #[arg(long, env = "BROKER_OFFSETS_RETENTION_MS")]
    pub offsets_retention_ms: Option<u64>,
    #[arg(long, env = "BROKER_OFFSETS_RETENTION_CHECK_INTERVAL_MS")]
    pub offsets_retention_check_interval_ms: Option<u64>,
    #[arg(long, env = "BROKER_PRODUCER_ID_EXPIRATION_MS")]
    pub producer_id_expiration_ms: Option<i64>,
    #[arg(long, env = "BROKER_PRODUCER_ID_EXPIRATION_CHECK_INTERVAL_MS")]
    pub producer_id_expiration_check_interval_ms: Option<u64>,
    #[arg(long, env = "BROKER_TRANSACTIONAL_ID_EXPIRATION_MS")]
    pub transactional_id_expiration_ms: Option<i64>,
    #[arg(long, env = "BROKER_TRANSACTION_MAX_TIMEOUT_MS")]
    pub transaction_max_timeout_ms: Option<i32>,
    #[arg(long, env = "BROKER_TRANSACTION_STATE_PARTITIONS")]
    pub transaction_state_partitions: Option<i32>,
    #[arg(long, env = "BROKER_TRANSACTION_ABORT_CHECK_INTERVAL_MS")]
    pub transaction_abort_check_interval_ms: Option<u64>,
    #[arg(long, env = "BROKER_SASL_ENABLED_MECHANISMS")]
    pub sasl_enabled_mechanisms: Option<String>,
    #[arg(long, env = "BROKER_SASL_PLAIN_USERS_FILE")]
    pub sasl_plain_users_file: Option<PathBuf>,
    #[arg(long, env = "BROKER_SASL_INTER_BROKER_USER")]
    pub sasl_inter_broker_user: Option<String>,
}

/// Subcommands: tools that inspect a data directory without serving.
#[derive(Debug, clap::Subcommand)]
pub enum Tool {
    /// Print the metadata snapshot, log and resulting image of a data directory.
    MetadataShell {
        /// Data directory (default: the broker's `data_dir`).
        #[arg(long = "data-dir")]
        dir: Option<PathBuf>,
    },
    /// Inspect the object store the config names (`objects_url`).
    Objects {
        #[command(subcommand)]
        cmd: ObjectsCmd,
    },
}

/// `broker objects ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ObjectsCmd {
    /// List the objects with their size and whether the metadata commits them.
    Ls,
    /// Show one object's index: partitions, offset ranges and blocks.
    Show {
        /// The object's key, as `ls` prints it.
        key: String,
    },
}

/// Where objects are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectsLocation {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
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

/// Parses `controller_quorum_voters`: `id@host:port` entries, comma
/// separated, ids unique.
pub fn parse_voters(text: &str) -> Result<Vec<(u64, String)>, String> {
    let mut out: Vec<(u64, String)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || format!("controller_quorum_voters entry {entry:?} is not id@host:port");
        let (id, addr) = entry.split_once('@').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        if out.iter().any(|(i, _)| *i == id) {
            return Err(format!("controller_quorum_voters names voter {id} twice"));
        }
        out.push((id, addr.to_string()));
    }
    if out.is_empty() {
        return Err("controller_quorum_voters names no voter".into());
    }
    Ok(out)
}

impl Config {
    /// True when this process is a voter of the metadata quorum.
    pub fn is_controller(&self) -> bool {
        self.process_roles.contains("controller")
    }

    /// True when this process has shards and serves Kafka clients.
    pub fn is_broker(&self) -> bool {
        self.process_roles.contains("broker")
    }

    /// The quorum's voters (`controller_quorum_voters`), if configured.
    pub fn voters(&self) -> Option<Vec<(u64, String)>> {
        self.controller_quorum_voters
            .as_deref()
            .and_then(|v| parse_voters(v).ok())
    }

    /// How long committed offsets of an empty group are kept, in ms.
    pub fn offsets_retention_ms(&self) -> i64 {
        let ms = self
            .offsets_retention_ms
            .unwrap_or(self.offsets_retention_minutes.saturating_mul(60_000));
        i64::try_from(ms).unwrap_or(i64::MAX)
    }

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
            max_connections,
            max_connections_per_ip,
            connections_max_idle_ms,
            slow_request_ms,
            spin_before_park_us,
            first_cpu,
            admin_listen,
            log_format,
            auto_create_topics,
            num_partitions,
            message_max_bytes,
            cluster_id,
            log_level,
            offsets_topic_partitions,
            group_initial_rebalance_delay_ms,
            group_min_session_timeout_ms,
            group_max_session_timeout_ms,
            group_max_size,
            group_consumer_session_timeout_ms,
            group_consumer_heartbeat_interval_ms,
            group_share_session_timeout_ms,
            group_share_heartbeat_interval_ms,
            group_share_max_size,
            group_streams_session_timeout_ms,
            group_streams_heartbeat_interval_ms,
            group_streams_num_standby_replicas,
            group_streams_initial_rebalance_delay_ms,
            group_streams_max_size,
            group_share_record_lock_duration_ms,
            group_share_delivery_count_limit,
            group_share_partition_max_record_locks,
            group_max_member_metadata_bytes,
            offset_metadata_max_bytes,
            metadata_snapshot_entries,
            s3_path_style,
            s3_request_timeout_ms,
            s3_retry_base_ms,
            s3_max_attempts,
            block_cache_bytes,
            upload_bytes_per_sec,
            cold_read_bytes_per_sec,
            object_block_bytes,
            wal_full_wait_ms,
            wal_dsync,
            wal_batches_in_flight,
            uploads_enabled,
            object_orphan_grace_ms,
            object_gc_interval_ms,
            shutdown_timeout_ms,
            reshard_timeout_ms,
            broker_session_timeout_ms,
            broker_heartbeat_interval_ms,
            process_roles,
            log_retention_ms,
            log_retention_bytes,
            log_retention_check_interval_ms,
            object_delete_delay_ms,
            object_compaction_interval_ms,
            object_compaction_min_age_ms,
            log_cleaner_backoff_ms,
            stream_object_bytes,
            stream_set_keep_bytes,
            compaction_bytes_per_sec,
            log_cleaner_dedupe_buffer_bytes,
            offsets_retention_minutes,
            offsets_retention_check_interval_ms,
            producer_id_expiration_ms,
            producer_id_expiration_check_interval_ms,
            transactional_id_expiration_ms,
            transaction_max_timeout_ms,
            transaction_state_partitions,
            transaction_abort_check_interval_ms,
            sasl_enabled_mechanisms
        );
        macro_rules! over_opt {
            ($($f:ident),*) => { $( if flags.$f.is_some() { cfg.$f = flags.$f; } )* };
        }
        over_opt!(
            offsets_retention_ms,
            log_cache_bytes,
            upload_bytes,
            upload_interval_ms,
            objects_url,
            s3_endpoint,
            s3_region,
            s3_access_key_id,
            s3_secret_access_key,
            controller_quorum_voters,
            controller_listen,
            rack,
            sasl_plain_users_file,
            sasl_inter_broker_user
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
        // Settled once here, so the hot path (the append's log-cache
        // budget) never parses `objects_url` again.
        let d = cfg.store_defaults();
        cfg.log_cache_bytes.get_or_insert(d.log_cache_bytes);
        cfg.upload_bytes.get_or_insert(d.upload_bytes);
        cfg.upload_interval_ms.get_or_insert(d.upload_interval_ms);
        cfg.validate()?;
        cfg.load_sasl_users()?;
        Ok(cfg)
    }

    /// The enabled SASL mechanisms (empty: PLAINTEXT listeners).
    pub fn sasl_mechanisms(&self) -> Vec<String> {
        self.sasl_enabled_mechanisms
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The inter-broker user and its password, when SASL is enabled
    /// (`validate` and `load_sasl_users` have checked they exist).
    pub fn inter_broker_credentials(&self) -> Option<(String, String)> {
        let user = self.sasl_inter_broker_user.clone()?;
        let password = self.sasl_plain_users.as_ref()?.password(&user)?.to_string();
        Some((user, password))
    }

    /// Reads PLAIN's users file, once, on the main thread.
    fn load_sasl_users(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.sasl_plain_users_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Invalid(format!(
                "cannot read sasl_plain_users_file {}: {e}",
                path.display()
            ))
        })?;
        let users = crate::sasl::PlainUsers::parse(&text).map_err(|e| {
            ConfigError::Invalid(format!("sasl_plain_users_file {}: {e}", path.display()))
        })?;
        if let Some(user) = &self.sasl_inter_broker_user {
            if users.password(user).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "sasl_inter_broker_user {user} is not in sasl_plain_users_file {}",
                    path.display()
                )));
            }
        }
        self.sasl_plain_users = Some(std::sync::Arc::new(users));
        Ok(())
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
        if !(1..=8).contains(&self.wal_batches_in_flight) {
            return Err(ConfigError::Invalid(
                "wal_batches_in_flight must be in 1..=8".into(),
            ));
        }
        if self.num_partitions < 1 {
            return Err(ConfigError::Invalid(
                "num_partitions must be at least 1".into(),
            ));
        }
        if !(1..=100_000).contains(&self.offsets_topic_partitions) {
            return Err(ConfigError::Invalid(
                "offsets_topic_partitions must be in 1..=100000".into(),
            ));
        }
        if self.group_initial_rebalance_delay_ms < 0
            || self.group_min_session_timeout_ms < 1
            || self.group_max_session_timeout_ms < self.group_min_session_timeout_ms
            || self.group_max_size < 1
        {
            return Err(ConfigError::Invalid(
                "group settings: delay >= 0, 1 <= min session timeout <= max, max size >= 1".into(),
            ));
        }
        if self.group_consumer_heartbeat_interval_ms < 1
            || self.group_consumer_session_timeout_ms <= self.group_consumer_heartbeat_interval_ms
        {
            return Err(ConfigError::Invalid(
                "group_consumer_heartbeat_interval_ms must be at least 1 and below group_consumer_session_timeout_ms".into(),
            ));
        }
        if self.group_streams_heartbeat_interval_ms < 1
            || self.group_streams_session_timeout_ms <= self.group_streams_heartbeat_interval_ms
            || !(0..=2).contains(&self.group_streams_num_standby_replicas)
            || self.group_streams_initial_rebalance_delay_ms < 0
            || self.group_streams_max_size < 1
        {
            return Err(ConfigError::Invalid(
                "streams group settings: heartbeat interval >= 1 and below the session timeout, standby replicas in 0..=2 (Kafka's group.streams.max.standby.replicas), initial rebalance delay >= 0, max size >= 1".into(),
            ));
        }
        if self.group_share_heartbeat_interval_ms < 1
            || self.group_share_session_timeout_ms <= self.group_share_heartbeat_interval_ms
            || self.group_share_max_size < 1
            || self.group_share_record_lock_duration_ms < 1
            || !(2..=10).contains(&self.group_share_delivery_count_limit)
            || !(100..=10_000).contains(&self.group_share_partition_max_record_locks)
        {
            return Err(ConfigError::Invalid(
                "share group settings: heartbeat interval >= 1 and below the session timeout, max size >= 1, lock duration >= 1, delivery count limit in 2..=10 (Kafka's range), max record locks in 100..=10000".into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log_format must be text or json, not {:?}",
                self.log_format
            )));
        }
        if !self.admin_listen.is_empty()
            && self.admin_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "admin_listen must be ip:port (or empty to turn it off), not {:?}",
                self.admin_listen
            )));
        }
        if self.connections_max_idle_ms == 0 {
            return Err(ConfigError::Invalid(
                "connections_max_idle_ms must be at least 1".into(),
            ));
        }
        if !matches!(
            self.process_roles.replace(' ', "").as_str(),
            "broker,controller" | "controller,broker" | "broker" | "controller"
        ) {
            return Err(ConfigError::Invalid(format!(
                "process_roles must be broker, controller or broker,controller, not {:?}",
                self.process_roles
            )));
        }
        match &self.controller_quorum_voters {
            Some(v) => {
                let voters = parse_voters(v).map_err(ConfigError::Invalid)?;
                let voter = voters.iter().any(|(id, _)| *id == self.broker_id as u64);
                if self.is_controller() && !voter {
                    return Err(ConfigError::Invalid(format!(
                        "this process is a controller, so its id {} must be one of \
                         controller_quorum_voters ({v})",
                        self.broker_id
                    )));
                }
                if !self.is_controller() {
                    if voter {
                        return Err(ConfigError::Invalid(format!(
                            "a broker-only process must not be a voter, but {} is one of \
                             controller_quorum_voters ({v})",
                            self.broker_id
                        )));
                    }
                    if self.controller_listen.is_none() {
                        return Err(ConfigError::Invalid(
                            "a broker-only process needs controller_listen (host:port where \
                             it follows the metadata log)"
                                .into(),
                        ));
                    }
                }
            }
            None if self.process_roles.replace(' ', "") != "broker,controller"
                && self.process_roles.replace(' ', "") != "controller,broker" =>
            {
                return Err(ConfigError::Invalid(
                    "process_roles other than broker,controller needs controller_quorum_voters"
                        .into(),
                ));
            }
            None => {}
        }
        if self.broker_heartbeat_interval_ms == 0
            || self.broker_session_timeout_ms <= self.broker_heartbeat_interval_ms
        {
            return Err(ConfigError::Invalid(
                "broker_heartbeat_interval_ms must be at least 1 and below broker_session_timeout_ms"
                    .into(),
            ));
        }
        if self.metadata_snapshot_entries < 2 {
            return Err(ConfigError::Invalid(
                "metadata_snapshot_entries must be at least 2".into(),
            ));
        }
        if self.broker_id < 0 || self.broker_id > 2_000_000 {
            return Err(ConfigError::Invalid(
                "broker_id must be in 0..=2000000".into(),
            ));
        }
        self.objects()?;
        let per_shard = |v: u64| v / self.shards.max(1) as u64;
        if per_shard(self.log_cache_bytes()) < 8 << 20 {
            return Err(ConfigError::Invalid(format!(
                "log_cache_bytes must give every shard at least 8 MiB ({} shards)",
                self.shards
            )));
        }
        if self.upload_bytes() < 1 << 20 {
            return Err(ConfigError::Invalid(
                "upload_bytes must be at least 1 MiB".into(),
            ));
        }
        if !(4096..=64 << 20).contains(&self.object_block_bytes) {
            return Err(ConfigError::Invalid(
                "object_block_bytes must be in 4096..=67108864".into(),
            ));
        }
        if self.producer_id_expiration_ms < 1
            || self.producer_id_expiration_check_interval_ms == 0
            || self.transactional_id_expiration_ms < 1
            || self.transaction_max_timeout_ms < 1
            || self.transaction_abort_check_interval_ms == 0
        {
            return Err(ConfigError::Invalid(
                "producer and transaction expirations, timeouts and intervals must be positive"
                    .into(),
            ));
        }
        if !(1..=100_000).contains(&self.transaction_state_partitions) {
            return Err(ConfigError::Invalid(
                "transaction_state_partitions must be in 1..=100000".into(),
            ));
        }
        let mechanisms = self.sasl_mechanisms();
        if let Some(m) = mechanisms
            .iter()
            .find(|m| !crate::sasl::MECHANISMS.contains(&m.as_str()))
        {
            return Err(ConfigError::Invalid(format!(
                "sasl_enabled_mechanisms: {m} is not one of {}",
                crate::sasl::MECHANISMS.join(", ")
            )));
        }
        if !mechanisms.is_empty() {
            // Brokers call each other on the client listeners, so they
            // must authenticate too: with PLAIN, as a user of the file.
            if !mechanisms.iter().any(|m| m == crate::sasl::PLAIN)
                || self.sasl_plain_users_file.is_none()
                || self.sasl_inter_broker_user.is_none()
            {
                return Err(ConfigError::Invalid(
                    "with sasl_enabled_mechanisms set, PLAIN must be among them, and \
                     sasl_plain_users_file and sasl_inter_broker_user must be set: brokers \
                     authenticate to each other with PLAIN as that user"
                        .into(),
                ));
            }
        }
        if self.upload_interval_ms() == 0 || self.s3_max_attempts == 0 {
            return Err(ConfigError::Invalid(
                "upload_interval_ms and s3_max_attempts must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The defaults of the configured store (S3's if `objects_url` does
    /// not parse; `validate` reports that).
    pub fn store_defaults(&self) -> &'static StoreDefaults {
        match self.objects() {
            Ok(ObjectsLocation::Local(_)) => &LOCAL_DEFAULTS,
            _ => &S3_DEFAULTS,
        }
    }

    /// The log cache of all shards together.
    pub fn log_cache_bytes(&self) -> u64 {
        self.log_cache_bytes
            .unwrap_or_else(|| self.store_defaults().log_cache_bytes)
    }

    /// A shard uploads once this much has gathered (before the cap at half
    /// its log cache).
    pub fn upload_bytes(&self) -> u64 {
        self.upload_bytes
            .unwrap_or_else(|| self.store_defaults().upload_bytes)
    }

    pub fn upload_interval_ms(&self) -> u64 {
        self.upload_interval_ms
            .unwrap_or_else(|| self.store_defaults().upload_interval_ms)
    }

    /// Where objects go, parsed from `objects_url`.
    pub fn objects(&self) -> Result<ObjectsLocation, ConfigError> {
        let Some(url) = &self.objects_url else {
            return Ok(ObjectsLocation::Local(self.data_dir.join("objects")));
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(ConfigError::Invalid(format!(
                    "objects_url {url}: a file URL needs an absolute path (file:///...)"
                )));
            }
            return Ok(ObjectsLocation::Local(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "objects_url {url}: no bucket name"
                )));
            }
            let prefix = prefix.trim_matches('/');
            return Ok(ObjectsLocation::S3 {
                bucket: bucket.to_string(),
                prefix: if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                },
            });
        }
        Err(ConfigError::Invalid(format!(
            "objects_url {url}: must start with file:// or s3://"
        )))
    }

    /// Key prefix of objects as the broker names them. The S3 client puts
    /// the URL's prefix in front itself, so this is empty for every store.
    pub fn object_key_prefix(&self) -> String {
        String::new()
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
    fn upload_defaults_follow_the_store() {
        let local = Config::default();
        assert_eq!(
            (local.upload_bytes(), local.upload_interval_ms()),
            (32 << 20, 5_000)
        );
        assert_eq!(local.log_cache_bytes(), 256 << 20);
        let s3: Config = toml::from_str("objects_url = \"s3://bucket/prefix\"").unwrap();
        assert_eq!(
            (s3.upload_bytes(), s3.upload_interval_ms()),
            (256 << 20, 30_000)
        );
        assert_eq!(s3.log_cache_bytes(), 1 << 30);
        let set: Config = toml::from_str(
            "objects_url = \"s3://b\"\nupload_bytes = 2097152\nupload_interval_ms = 7",
        )
        .unwrap();
        assert_eq!((set.upload_bytes(), set.upload_interval_ms()), (2 << 20, 7));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<Config, _> = toml::from_str("no_such_key = 1");
        assert!(r.is_err());
    }
}
