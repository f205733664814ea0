//! Group coordination: the `GroupCoordinator` of a shard owns the consumer
//! groups whose `__consumer_offsets` partition this shard leads (partition
//! `abs(javaHashCode(group_id)) % partitions`, as Kafka computes it).
//!
//! One per shard, on that shard's executor; it never touches another
//! shard's groups. The group state machine (`state`) is pure; this module
//! adds the I/O around it: routing, parking JoinGroup/SyncGroup requests
//! until their reply is due, writing offset commits and group metadata to
//! the partition log (`records`) before answering, replaying that log when a
//! partition is loaded, and a glommio timer that drives the deadlines.
//! Never holds a `RefCell` borrow across an `.await`.

pub mod assignor;
pub mod consumer;
pub mod records;
pub mod share;
pub mod state;
pub mod streams;
pub mod streams_assignor;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use event_listener::Event;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::coordinator_partitions::CoordinatorPartitions;
use crate::metadata::MetadataImage;
use crate::shard::{PartitionKey, Replayed, Shard};
use consumer::{ConsumerGroup, ConsumerSettings, Heartbeat, HeartbeatError, HeartbeatOk, Topics};
use records::{
    decode_batches, encode_batch, encode_kv_batch, GroupRecord, OffsetValue, ShareStateValue,
};
use share::{ShareGroup, ShareHeartbeat, ShareHeartbeatOk, ShareSettings};
use state::{Effects, Group, Outcome, Reply};
pub use state::{GroupSettings, GroupState, JoinRequest, JoinResult, SyncResult};
use streams::{StreamsGroup, StreamsHeartbeat, StreamsHeartbeatOk, StreamsSettings};

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Java's `String.hashCode` (over UTF-16 code units), so that tools that
/// compute a group's coordinator agree with us.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

/// The `__consumer_offsets` partition of a group: Kafka's
/// `Utils.abs(groupId.hashCode) % partitions` (abs is `x & 0x7fffffff`).
pub use crate::clock::now_ms;

pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    (java_hash(group_id) & 0x7fff_ffff) % partitions.max(1)
}

/// A committed offset as OffsetFetch reports it.
pub type Committed = OffsetValue;

/// Partitions asked for, by topic.
pub type WantedOffsets = Vec<(String, Vec<i32>)>;

/// Committed offsets by topic (`None`: nothing committed).
pub type TopicOffsets = Vec<(String, Vec<(i32, Option<Committed>)>)>;

/// The metadata image as a consumer group sees it.
struct ImageTopics<'a>(&'a MetadataImage);

impl Topics for ImageTopics<'_> {
    fn lookup(&self, name: &str) -> Option<(uuid::Uuid, i32)> {
        self.0.topic(name).map(|t| (t.id, t.leaders.len() as i32))
    }

    /// Every topic, internal ones included: Kafka resolves subscription
    /// regexes over all of them (franz-go's Test848RegexBrokerResolves
    /// relies on it).
    fn names(&self) -> Vec<String> {
        self.0.topics.keys().cloned().collect()
    }
}

/// A group as ListGroups shows it.
#[derive(Debug, Clone)]
pub struct ListedGroup {
    pub id: String,
    pub protocol_type: String,
    pub state: String,
    /// "classic" or "consumer".
    pub group_type: &'static str,
}

/// What DescribeGroups shows of a group.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberSummary>,
    /// Why there is no classic group of that id (none, or a consumer
    /// group): DescribeGroups v6+ answers GROUP_ID_NOT_FOUND with it, older
    /// versions a Dead group.
    pub missing: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

type Waiters<T> = RefCell<HashMap<(String, String), oneshot::Sender<T>>>;

pub struct GroupCoordinator {
    shard: Weak<Shard>,
    pub settings: GroupSettings,
    pub consumer_settings: ConsumerSettings,
    pub share_settings: ShareSettings,
    pub streams_settings: StreamsSettings,
    offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes`, in ms.
    offsets_retention_ms: i64,
    /// How often offsets expire (0: never).
    offsets_retention_check_ms: u64,
    groups: RefCell<HashMap<String, Group>>,
    /// `__consumer_offsets` partitions this shard leads, and which of them
    /// it has replayed.
    partitions: CoordinatorPartitions,
    join_waiters: Waiters<JoinResult>,
    sync_waiters: Waiters<SyncResult>,
    /// Notified when a deadline may have moved earlier.
    timers_changed: Event,
    timer_started: Cell<bool>,
    /// Offset commits of each group written but not yet acknowledged
    /// (their values reach `groups` only once durable): offset expiry
    /// leaves such a group for its next round, so that its tombstones can
    /// never follow a commit in the log.
    commits_in_flight: RefCell<HashMap<String, u32>>,
    /// Offsets committed inside open transactions (TxnOffsetCommit), by
    /// producer id: written to the log, applied when the transaction's
    /// commit marker is, dropped on abort.
    pending_txn: RefCell<HashMap<i64, Vec<TxnOffset>>>,
}

/// An offset committed inside a transaction.
#[derive(Debug, Clone)]
struct TxnOffset {
    group: String,
    topic: String,
    partition: i32,
    value: OffsetValue,
}

impl TxnOffset {
    fn of(rec: GroupRecord) -> Option<TxnOffset> {
        match rec {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                value: Some(value),
            } => Some(TxnOffset {
                group,
                topic,
                partition,
                value,
            }),
            _ => None,
        }
    }
}

fn apply_txn_offset(groups: &mut HashMap<String, Group>, o: TxnOffset, now: i64) {
    groups
        .entry(o.group.clone())
        .or_insert_with(|| Group::new(&o.group, now))
        .offsets
        .insert((o.topic, o.partition), o.value);
}

/// Counts one in-flight commit of a group while it lives (also when the
/// commit's future is dropped).
struct CommitInFlight<'a> {
    counts: &'a RefCell<HashMap<String, u32>>,
    group: String,
}

impl<'a> CommitInFlight<'a> {
    fn start(counts: &'a RefCell<HashMap<String, u32>>, group: &str) -> Self {
        *counts.borrow_mut().entry(group.to_string()).or_insert(0) += 1;
        CommitInFlight {
            counts,
            group: group.to_string(),
        }
    }
}

impl Drop for CommitInFlight<'_> {
    fn drop(&mut self) {
        let mut counts = self.counts.borrow_mut();
        if let Some(n) = counts.get_mut(&self.group) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.group);
            }
        }
    }
}

impl GroupCoordinator {
    pub fn new(shard: Weak<Shard>, config: &Config) -> Self {
        Self {
            shard,
            settings: GroupSettings {
                min_session_timeout_ms: config.group_min_session_timeout_ms,
                max_session_timeout_ms: config.group_max_session_timeout_ms,
                initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
                max_size: config.group_max_size,
                max_member_metadata_bytes: config.group_max_member_metadata_bytes,
            },
            consumer_settings: ConsumerSettings {
                session_timeout_ms: config.group_consumer_session_timeout_ms as i64,
                heartbeat_interval_ms: config.group_consumer_heartbeat_interval_ms,
                max_size: config.group_max_size,
            },
            share_settings: ShareSettings {
                session_timeout_ms: config.group_share_session_timeout_ms as i64,
                heartbeat_interval_ms: config.group_share_heartbeat_interval_ms,
                max_size: config.group_share_max_size,
            },
            streams_settings: StreamsSettings {
                session_timeout_ms: config.group_streams_session_timeout_ms as i64,
                heartbeat_interval_ms: config.group_streams_heartbeat_interval_ms,
                num_standby_replicas: config.group_streams_num_standby_replicas,
                initial_rebalance_delay_ms: config.group_streams_initial_rebalance_delay_ms,
                max_size: config.group_streams_max_size,
            },
            offset_metadata_max_bytes: config.offset_metadata_max_bytes,
            offsets_retention_ms: config.offsets_retention_ms(),
            offsets_retention_check_ms: config.offsets_retention_check_interval_ms,
            groups: RefCell::new(HashMap::new()),
            partitions: CoordinatorPartitions::new(OFFSETS_TOPIC),
            join_waiters: RefCell::new(HashMap::new()),
            sync_waiters: RefCell::new(HashMap::new()),
            timers_changed: Event::new(),
            timer_started: Cell::new(false),
            commits_in_flight: RefCell::new(HashMap::new()),
            pending_txn: RefCell::new(HashMap::new()),
        }
    }

    fn shard(&self) -> Result<Rc<Shard>, ResponseError> {
        self.shard
            .upgrade()
            .ok_or(ResponseError::CoordinatorNotAvailable)
    }

    /// A consumer group's settings: its group configs over the broker's.
    pub fn consumer_settings_for(&self, group_id: &str, image: &MetadataImage) -> ConsumerSettings {
        match self.shard.upgrade() {
            Some(shard) => {
                let (session, heartbeat) =
                    crate::group_config::consumer(image, group_id, &shard.config);
                ConsumerSettings {
                    session_timeout_ms: session,
                    heartbeat_interval_ms: heartbeat,
                    ..self.consumer_settings
                }
            }
            None => self.consumer_settings,
        }
    }

    /// A share group's settings: its group configs over the broker's.
    pub fn share_settings_for(&self, group_id: &str, image: &MetadataImage) -> ShareSettings {
        match self.shard.upgrade() {
            Some(shard) => {
                let c = crate::group_config::share(image, group_id, &shard.config);
                ShareSettings {
                    session_timeout_ms: c.session_timeout_ms,
                    heartbeat_interval_ms: c.heartbeat_interval_ms,
                    ..self.share_settings
                }
            }
            None => self.share_settings,
        }
    }

    /// A streams group's settings: its group configs over the broker's.
    pub fn streams_settings_for(&self, group_id: &str, image: &MetadataImage) -> StreamsSettings {
        match self.shard.upgrade() {
            Some(shard) => {
                let c = crate::group_config::streams(image, group_id, &shard.config);
                StreamsSettings {
                    session_timeout_ms: c.session_timeout_ms,
                    heartbeat_interval_ms: c.heartbeat_interval_ms,
                    num_standby_replicas: c.num_standby_replicas,
                    initial_rebalance_delay_ms: c.initial_rebalance_delay_ms,
                    ..self.streams_settings
                }
            }
            None => self.streams_settings,
        }
    }

    // ---- routing and loading ----

    /// The `__consumer_offsets` partition of `group_id` if this shard is its
    /// coordinator and has loaded it; else the error the client expects.
    pub fn route(&self, group_id: &str) -> Result<PartitionKey, ResponseError> {
        let shard = self.shard()?;
        let image = shard.image();
        let Some(topic) = image.topic(OFFSETS_TOPIC) else {
            return Err(ResponseError::CoordinatorNotAvailable);
        };
        let p = partition_for(group_id, topic.leaders.len() as i32);
        if topic.leader_nodes.get(p as usize) != Some(&shard.node_id()) {
            return Err(ResponseError::NotCoordinator);
        }
        self.partitions.check_loaded(p)?;
        Ok((topic.id, p))
    }

    /// Called after each metadata image: loads `__consumer_offsets`
    /// partitions this shard now leads, forgets those it no longer leads.
    pub fn on_image(&self, image: &MetadataImage, node_id: i32) {
        let changes = self.partitions.on_image(image, node_id);
        for &p in &changes.unload {
            self.unload_partition(p, image);
        }
        let Some(shard) = self.shard.upgrade() else {
            return;
        };
        for p in changes.load {
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.groups.load_partition(&shard, p).await })
                .detach();
        }
        if changes.leads_any {
            self.start_timer();
        }
    }

    fn unload_partition(&self, p: i32, image: &MetadataImage) {
        let n = image
            .topic(OFFSETS_TOPIC)
            .map_or(0, |t| t.leaders.len() as i32);
        self.groups
            .borrow_mut()
            .retain(|g, _| n > 0 && partition_for(g, n) != p);
        let mut pending = self.pending_txn.borrow_mut();
        for list in pending.values_mut() {
            list.retain(|o| n > 0 && partition_for(&o.group, n) != p);
        }
        pending.retain(|_, l| !l.is_empty());
        info!("no longer coordinator for {OFFSETS_TOPIC} partition {p}");
    }

    /// Rebuilds the groups of one `__consumer_offsets` partition from its
    /// log. Called when the partition becomes led by this shard and again
    /// after WAL recovery has refilled the log; until it returns, requests
    /// for those groups get COORDINATOR_LOAD_IN_PROGRESS.
    pub async fn load_partition(&self, shard: &Rc<Shard>, p: i32) {
        let image = shard.image();
        let Some(topic) = image.topic(OFFSETS_TOPIC).cloned() else {
            return;
        };
        let n = topic.leaders.len() as i32;
        let token = self.partitions.begin_load(p);
        let superseded = || self.partitions.superseded(p, token);
        self.groups
            .borrow_mut()
            .retain(|g, _| partition_for(g, n) != p);
        let key = (topic.id, p);
        let now = now_ms();
        let mut count = 0usize;
        // Offsets committed inside transactions, by producer id, until
        // their marker says commit (apply) or abort (drop).
        let mut pending: HashMap<i64, Vec<TxnOffset>> = HashMap::new();
        let label = format!("{OFFSETS_TOPIC}-{p}");
        let replayed = shard
            .replay_log(key, &label, &superseded, |h, b| {
                // Batches read before a newer load began are not applied:
                // that load replays into the same groups.
                if superseded() {
                    return;
                }
                if h.is_control() {
                    if let Some(m) = storage::batch::end_txn_marker(&b) {
                        let offsets = pending.remove(&h.producer_id).unwrap_or_default();
                        if m.commit {
                            let mut groups = self.groups.borrow_mut();
                            for o in offsets {
                                apply_txn_offset(&mut groups, o, now);
                            }
                        }
                    }
                    return;
                }
                match decode_batches(b) {
                    Ok(recs) => {
                        count += recs.len();
                        if h.is_transactional() {
                            let mine = pending.entry(h.producer_id).or_default();
                            mine.extend(recs.into_iter().filter_map(TxnOffset::of));
                            return;
                        }
                        let mut groups = self.groups.borrow_mut();
                        for r in recs {
                            replay(&mut groups, r, now);
                        }
                    }
                    Err(e) => warn!("{label}: skipping undecodable batch: {e}"),
                }
            })
            .await;
        if replayed == Replayed::Stopped {
            if !superseded() {
                self.partitions.end_load(p, false);
            }
            return;
        }
        if superseded() {
            // A newer load of `p` began during the last read: it owns the
            // partition's state now.
            return;
        }
        {
            let mut open = self.pending_txn.borrow_mut();
            for list in open.values_mut() {
                list.retain(|o| partition_for(&o.group, n) != p);
            }
            for (pid, list) in pending {
                open.entry(pid).or_default().extend(list);
            }
            open.retain(|_, l| !l.is_empty());
        }
        self.partitions.end_load(p, true);
        self.timers_changed.notify(usize::MAX);
        debug!(
            shard = shard.id,
            "loaded {OFFSETS_TOPIC}-{p}: {count} records"
        );
    }

    /// Replays every `__consumer_offsets` partition this shard leads: the
    /// entry point after WAL recovery has refilled the partition logs
    /// (`Shard::rebuild_from`). The partitions answer
    /// COORDINATOR_LOAD_IN_PROGRESS from this call until replayed.
    pub fn reload(&self) {
        let Some(shard) = self.shard.upgrade() else {
            return;
        };
        let led = self.partitions.reload(&shard.image(), shard.node_id());
        if led.is_empty() {
            return;
        }
        glommio::spawn_local(async move {
            for p in led {
                shard.groups.load_partition(&shard, p).await;
            }
        })
        .detach();
        self.start_timer();
    }

    // ---- timers ----

    fn start_timer(&self) {
        if self.timer_started.replace(true) {
            return;
        }
        let weak = self.shard.clone();
        glommio::spawn_local(async move {
            loop {
                let Some(shard) = weak.upgrade() else { return };
                let listener = shard.groups.timers_changed.listen();
                let next = shard.groups.next_deadline();
                drop(shard);
                let wait = next.map_or(1000, |d| (d - now_ms()).clamp(0, 1000)) as u64;
                let sleep = glommio::timer::sleep(Duration::from_millis(wait));
                futures_lite::future::or(sleep, listener).await;
                let Some(shard) = weak.upgrade() else { return };
                shard.groups.tick(&shard).await;
            }
        })
        .detach();
        let every = self.offsets_retention_check_ms;
        if every == 0 {
            return;
        }
        let weak = self.shard.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(every)).await;
                let Some(shard) = weak.upgrade() else { return };
                shard.groups.expire_offsets(&shard).await;
            }
        })
        .detach();
    }

    /// Deletes (with tombstones) the committed offsets that
    /// `offsets.retention.minutes` expires, and the groups left with
    /// neither members nor offsets.
    ///
    /// Races with commits: a group with a commit in flight waits for the
    /// next round, and its expiry is decided again right before its
    /// tombstones are appended (with no await in between: appends keep the
    /// order of their calls, waiting ones too), so a commit is either before
    /// the decision, and seen by it, or after the tombstones in the log.
    /// Afterwards only offsets still as they were are dropped from memory:
    /// a commit acknowledged meanwhile stays.
    async fn expire_offsets(&self, shard: &Rc<Shard>) {
        let candidates: Vec<String> = {
            let now = now_ms();
            self.groups
                .borrow()
                .iter()
                .filter(|(_, g)| !g.expired_offsets(self.offsets_retention_ms, now).is_empty())
                .map(|(id, _)| id.clone())
                .collect()
        };
        for group_id in candidates {
            let Ok(key) = self.route(&group_id) else {
                continue;
            };
            if self.commits_in_flight.borrow().contains_key(&group_id) {
                continue;
            }
            // (key, value as expired), and whether that is all of them.
            let (expired, gone, consumer) = {
                let groups = self.groups.borrow();
                let Some(g) = groups.get(&group_id) else {
                    continue;
                };
                let keys = g.expired_offsets(self.offsets_retention_ms, now_ms());
                let gone = keys.len() == g.offsets.len();
                let expired: Vec<((String, i32), OffsetValue)> = keys
                    .into_iter()
                    .filter_map(|k| g.offsets.get(&k).cloned().map(|v| (k, v)))
                    .collect();
                (expired, gone, g.consumer.is_some())
            };
            if expired.is_empty() {
                continue;
            }
            let mut records: Vec<GroupRecord> = expired
                .iter()
                .map(|((t, p), _)| GroupRecord::Offset {
                    group: group_id.clone(),
                    topic: t.clone(),
                    partition: *p,
                    value: None,
                })
                .collect();
            if gone {
                records.push(GroupRecord::Group {
                    group: group_id.clone(),
                    value: None,
                });
                if consumer {
                    records.push(GroupRecord::ConsumerGroup {
                        group: group_id.clone(),
                        epoch: None,
                    });
                }
            }
            if let Err(e) = write(shard, key, records).await {
                warn!(group = group_id, "cannot expire committed offsets: {e:?}");
                continue;
            }
            let mut groups = self.groups.borrow_mut();
            if let Some(g) = groups.get_mut(&group_id) {
                for (k, v) in &expired {
                    if g.offsets.get(k) == Some(v) {
                        g.offsets.remove(k);
                    }
                }
                if gone && g.offsets.is_empty() && g.is_empty() {
                    groups.remove(&group_id);
                }
            }
            info!(
                group = group_id,
                offsets = expired.len(),
                group_deleted = gone,
                "committed offsets expired (offsets.retention.minutes)"
            );
        }
    }

    fn deadline_of(&self, g: &Group, image: &MetadataImage) -> Option<i64> {
        let consumer = g
            .consumer
            .as_ref()
            .and_then(|c| c.next_deadline(&self.consumer_settings_for(&g.id, image)));
        let share = g
            .share
            .as_ref()
            .and_then(|s| s.next_deadline(&self.share_settings_for(&g.id, image)));
        let streams = g
            .streams
            .as_ref()
            .and_then(|s| s.next_deadline(&self.streams_settings_for(&g.id, image)));
        g.next_deadline()
            .into_iter()
            .chain(consumer)
            .chain(share)
            .chain(streams)
            .min()
    }

    fn next_deadline(&self) -> Option<i64> {
        let image = self.shard.upgrade()?.image();
        self.groups
            .borrow()
            .values()
            .filter_map(|g| self.deadline_of(g, &image))
            .min()
    }

    async fn tick(&self, shard: &Rc<Shard>) {
        let now = now_ms();
        let image = shard.image();
        let topics = ImageTopics(&image);
        let due: Vec<(String, Effects, Option<i32>)> = {
            let mut groups = self.groups.borrow_mut();
            groups
                .iter_mut()
                .filter(|(_, g)| self.deadline_of(g, &image).is_some_and(|d| d <= now))
                .map(|(id, g)| {
                    let fx = g.tick(&self.settings, now);
                    let mut epoch = None;
                    if let Some(c) = g.consumer.as_mut() {
                        let fenced = c.tick(&self.consumer_settings_for(id, &image), now);
                        if !fenced.is_empty() {
                            info!(
                                group = id,
                                members = ?fenced,
                                "consumer group members removed: no heartbeat within the session timeout, or no revocation within the rebalance timeout"
                            );
                        }
                        epoch = std::mem::take(&mut c.epoch_dirty).then_some(c.epoch);
                        g.sync_consumer_state(now);
                    }
                    if let Some(s) = g.share.as_mut() {
                        let gone = s.tick(&topics, &self.share_settings_for(id, &image), now);
                        if !gone.is_empty() {
                            info!(
                                group = id,
                                members = ?gone,
                                "share group members removed: no heartbeat within the session timeout"
                            );
                        }
                        epoch = std::mem::take(&mut s.epoch_dirty).then_some(s.epoch);
                        g.sync_share_state(now);
                    }
                    if let Some(s) = g.streams.as_mut() {
                        let gone = s.tick(&self.streams_settings_for(id, &image), now);
                        if !gone.is_empty() {
                            info!(
                                group = id,
                                members = ?gone,
                                "streams group members removed: no heartbeat within the session timeout, or no revocation within the rebalance timeout"
                            );
                        }
                        epoch = std::mem::take(&mut s.epoch_dirty).then_some(s.epoch);
                        g.sync_streams_state(now);
                    }
                    (id.clone(), fx, epoch)
                })
                .collect()
        };
        for (id, fx, epoch) in due {
            if let Ok(key) = self.route(&id) {
                self.apply(shard, &id, key, fx).await;
                if let Some(epoch) = epoch {
                    self.persist_group_epoch(shard, &id, key, epoch).await;
                }
            }
        }
    }

    /// Stores a consumer, share or streams group's new epoch (its type and epoch survive a
    /// coordinator change; its members rejoin). A failed write is retried
    /// with the group's next change.
    async fn persist_group_epoch(
        &self,
        shard: &Rc<Shard>,
        group_id: &str,
        key: PartitionKey,
        epoch: i32,
    ) {
        let (share, streams) = self
            .groups
            .borrow()
            .get(group_id)
            .map_or((false, false), |g| (g.share.is_some(), g.streams.is_some()));
        let rec = if share {
            GroupRecord::ShareGroup {
                group: group_id.to_string(),
                epoch: Some(epoch),
            }
        } else if streams {
            GroupRecord::StreamsGroup {
                group: group_id.to_string(),
                epoch: Some(epoch),
            }
        } else {
            GroupRecord::ConsumerGroup {
                group: group_id.to_string(),
                epoch: Some(epoch),
            }
        };
        if let Err(e) = write(shard, key, vec![rec]).await {
            warn!(
                group = group_id,
                "cannot write the consumer group's epoch: {e:?}"
            );
            let mut groups = self.groups.borrow_mut();
            if let Some(g) = groups.get_mut(group_id) {
                if let Some(c) = g.consumer.as_mut() {
                    c.epoch_dirty = true;
                }
                if let Some(s) = g.share.as_mut() {
                    s.epoch_dirty = true;
                }
                if let Some(s) = g.streams.as_mut() {
                    s.epoch_dirty = true;
                }
            }
        }
    }

    // ---- effects ----

    /// Writes the group if `fx` asks for it, then sends the parked replies.
    async fn apply(&self, shard: &Rc<Shard>, group_id: &str, key: PartitionKey, fx: Effects) {
        let mut replies = fx.replies;
        if fx.persist {
            let value = self
                .groups
                .borrow()
                .get(group_id)
                .map(|g| g.to_value(now_ms()));
            if let Some(value) = value {
                let rec = GroupRecord::Group {
                    group: group_id.to_string(),
                    value: Some(value),
                };
                if let Err(e) = write(shard, key, vec![rec]).await {
                    warn!(group = group_id, "cannot write group metadata: {e:?}");
                    replies = self.assignment_failed(group_id, replies, e);
                }
            }
        }
        self.deliver(group_id, replies);
        self.timers_changed.notify(usize::MAX);
    }

    /// An assignment that was not written is not handed out: SyncGroup
    /// answers carry the error and the group rebalances.
    fn assignment_failed(
        &self,
        group_id: &str,
        replies: Vec<Reply>,
        e: ResponseError,
    ) -> Vec<Reply> {
        let mut out: Vec<Reply> = replies
            .into_iter()
            .map(|r| match r {
                Reply::Sync(id, _) => Reply::Sync(id, SyncResult::error(e)),
                other => other,
            })
            .collect();
        if let Some(g) = self.groups.borrow_mut().get_mut(group_id) {
            out.extend(g.assignment_not_persisted(&self.settings, now_ms()).replies);
        }
        out
    }

    fn deliver(&self, group_id: &str, replies: Vec<Reply>) {
        for reply in replies {
            match reply {
                Reply::Join(member, r) => {
                    let k = (group_id.to_string(), member);
                    if let Some(tx) = self.join_waiters.borrow_mut().remove(&k) {
                        let _ = tx.send(r);
                    }
                }
                Reply::Sync(member, r) => {
                    let k = (group_id.to_string(), member);
                    if let Some(tx) = self.sync_waiters.borrow_mut().remove(&k) {
                        let _ = tx.send(r);
                    }
                }
            }
        }
    }

    fn park<T>(
        waiters: &Waiters<T>,
        group_id: &str,
        member: &str,
        superseded: T,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let old = waiters
            .borrow_mut()
            .insert((group_id.to_string(), member.to_string()), tx);
        if let Some(old) = old {
            // The client sent the request again; the older one is answered.
            let _ = old.send(superseded);
        }
        rx
    }

    // ---- the APIs ----

    /// What ConsumerGroupHeartbeat, ShareGroupHeartbeat and
    /// StreamsGroupHeartbeat share: the group's coordinator, a group
    /// created by a join (and dropped again if that join fails), the
    /// group's new epoch stored before the answer. `run` checks the
    /// group's type and runs the heartbeat; it returns the answer and the
    /// epoch to store.
    async fn typed_heartbeat<T>(
        &self,
        group_id: &str,
        joining: bool,
        what: &str,
        empty_id: ResponseError,
        run: impl FnOnce(
            &mut Group,
            &MetadataImage,
            bool,
            i64,
        ) -> (Result<T, HeartbeatError>, Option<i32>),
    ) -> Result<T, HeartbeatError> {
        if group_id.is_empty() {
            return Err((empty_id, "GroupId can't be empty.".into()));
        }
        let plain = |e: ResponseError| (e, String::new());
        let shard = self.shard().map_err(plain)?;
        let key = self.route(group_id).map_err(plain)?;
        let image = shard.image();
        let now = now_ms();
        let (result, epoch) = {
            let mut groups = self.groups.borrow_mut();
            let fresh = !groups.contains_key(group_id);
            if fresh && !joining {
                return Err((
                    ResponseError::GroupIdNotFound,
                    format!("{what} {group_id} not found."),
                ));
            }
            let g = groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new(group_id, now));
            let out = run(g, &image, fresh, now);
            if out.0.is_err() && fresh {
                groups.remove(group_id);
            }
            out
        };
        if let Some(epoch) = epoch {
            self.persist_group_epoch(&shard, group_id, key, epoch).await;
        }
        self.timers_changed.notify(usize::MAX);
        result
    }

    /// ConsumerGroupHeartbeat (KIP-848): joins, heartbeats, leaves.
    pub async fn consumer_heartbeat(
        &self,
        group_id: &str,
        hb: Heartbeat,
    ) -> Result<HeartbeatOk, HeartbeatError> {
        let joining = hb.member_epoch == 0;
        let not_consumer = || {
            (
                ResponseError::GroupIdNotFound,
                format!("Group {group_id} is not a consumer group."),
            )
        };
        let run = |g: &mut Group, image: &MetadataImage, _fresh: bool, now: i64| {
            if g.share.is_some() || g.streams.is_some() {
                return (Err(not_consumer()), None);
            }
            let converted = g.consumer.is_none();
            if converted {
                // An empty classic group becomes a consumer group (its
                // offsets stay); one with members cannot.
                if !g.is_empty() || !joining {
                    return (Err(not_consumer()), None);
                }
                g.consumer = Some(ConsumerGroup::restored(0));
            }
            let c = g.consumer.as_mut().expect("set above");
            let settings = self.consumer_settings_for(group_id, image);
            let result = c.heartbeat(hb, &ImageTopics(image), &settings, now);
            let epoch = std::mem::take(&mut c.epoch_dirty).then_some(c.epoch);
            if result.is_err() && converted {
                g.consumer = None;
            } else {
                g.sync_consumer_state(now);
            }
            (result, epoch)
        };
        self.typed_heartbeat(
            group_id,
            joining,
            "Consumer group",
            ResponseError::InvalidGroupId,
            run,
        )
        .await
    }

    /// ShareGroupHeartbeat (KIP-932): joins, heartbeats, leaves.
    pub async fn share_heartbeat(
        &self,
        group_id: &str,
        hb: ShareHeartbeat,
    ) -> Result<ShareHeartbeatOk, HeartbeatError> {
        let joining = hb.member_epoch == 0;
        let run = |g: &mut Group, image: &MetadataImage, fresh: bool, now: i64| {
            if g.share.is_none() {
                // Only a group id nobody uses becomes a share group.
                if g.consumer.is_some()
                    || g.streams.is_some()
                    || !g.is_empty()
                    || !g.offsets.is_empty()
                    || !fresh
                {
                    let e = (
                        ResponseError::GroupIdNotFound,
                        format!("Group {group_id} is not a share group."),
                    );
                    return (Err(e), None);
                }
                g.share = Some(ShareGroup::default());
            }
            let sg = g.share.as_mut().expect("set above");
            let settings = self.share_settings_for(group_id, image);
            let result = sg.heartbeat(hb, &ImageTopics(image), &settings, now);
            let epoch = std::mem::take(&mut sg.epoch_dirty).then_some(sg.epoch);
            g.sync_share_state(now);
            (result, epoch)
        };
        self.typed_heartbeat(
            group_id,
            joining,
            "Share group",
            ResponseError::InvalidGroupId,
            run,
        )
        .await
    }

    /// StreamsGroupHeartbeat (KIP-1071): joins, heartbeats, leaves. The
    /// internal topics the group lacks come back in the answer for the
    /// caller to create.
    pub async fn streams_heartbeat(
        &self,
        group_id: &str,
        hb: StreamsHeartbeat,
    ) -> Result<StreamsHeartbeatOk, HeartbeatError> {
        let joining = hb.member_epoch == 0;
        let run = |g: &mut Group, image: &MetadataImage, _fresh: bool, now: i64| {
            let converted = g.streams.is_none();
            if converted {
                // An empty classic group (offsets only, as a reset leaves
                // it) becomes a streams group; nothing else does.
                if g.consumer.is_some() || g.share.is_some() || !g.is_empty() {
                    let e = (
                        ResponseError::GroupIdNotFound,
                        format!("Group {group_id} is not a streams group."),
                    );
                    return (Err(e), None);
                }
                g.streams = Some(StreamsGroup::new());
            }
            let sg = g.streams.as_mut().expect("set above");
            let settings = self.streams_settings_for(group_id, image);
            let result = sg.heartbeat(hb, &ImageTopics(image), &settings, now);
            let epoch = std::mem::take(&mut sg.epoch_dirty).then_some(sg.epoch);
            if result.is_err() && converted {
                g.streams = None;
            } else {
                g.sync_streams_state(now);
            }
            (result, epoch)
        };
        // Kafka answers an empty streams group id with INVALID_REQUEST.
        self.typed_heartbeat(
            group_id,
            joining,
            "Streams group",
            ResponseError::InvalidRequest,
            run,
        )
        .await
    }

    /// A group of one type as its Describe API shows it: GROUP_ID_NOT_FOUND
    /// for a group of another type and for an unknown one.
    fn describe_typed<T: Clone>(
        &self,
        group_id: &str,
        kind: &str,
        pick: impl Fn(&Group) -> Option<&T>,
    ) -> Result<T, HeartbeatError> {
        self.route(group_id).map_err(|e| (e, String::new()))?;
        let groups = self.groups.borrow();
        match groups.get(group_id) {
            Some(g) => pick(g).cloned().ok_or_else(|| {
                (
                    ResponseError::GroupIdNotFound,
                    format!("Group {group_id} is not a {kind} group."),
                )
            }),
            None => Err((
                ResponseError::GroupIdNotFound,
                format!("Group {group_id} not found."),
            )),
        }
    }

    /// A share group as ShareGroupDescribe shows it.
    pub fn describe_share(&self, group_id: &str) -> Result<ShareGroup, HeartbeatError> {
        self.describe_typed(group_id, "share", |g| g.share.as_ref())
    }

    /// ReadShareGroupState: a share-partition's stored state (`None`: never
    /// written, the leader initializes it).
    pub fn read_share_state(
        &self,
        group_id: &str,
        topic_id: uuid::Uuid,
        partition: i32,
    ) -> Result<Option<ShareStateValue>, ResponseError> {
        self.route(group_id)?;
        let groups = self.groups.borrow();
        Ok(groups
            .get(group_id)
            .and_then(|g| g.share_states.get(&(topic_id, partition)).cloned()))
    }

    /// WriteShareGroupState: stores a share-partition's state once durable.
    /// A write from a leader that loaded an older state epoch (an admin
    /// reset the start offset since) is FENCED_STATE_EPOCH.
    pub async fn write_share_state(
        &self,
        group_id: &str,
        topic_id: uuid::Uuid,
        partition: i32,
        value: ShareStateValue,
    ) -> Result<(), ResponseError> {
        let shard = self.shard()?;
        let key = self.route(group_id)?;
        {
            let groups = self.groups.borrow();
            let g = groups.get(group_id);
            if g.is_some_and(|g| g.share.is_none()) {
                return Err(ResponseError::GroupIdNotFound);
            }
            let stored = g.and_then(|g| g.share_states.get(&(topic_id, partition)));
            if stored.is_some_and(|s| s.state_epoch > value.state_epoch) {
                return Err(ResponseError::FencedStateEpoch);
            }
        }
        let rec = GroupRecord::ShareState {
            group: group_id.to_string(),
            topic_id,
            partition,
            value: Some(value.clone()),
        };
        write(&shard, key, vec![rec]).await?;
        let now = now_ms();
        let mut groups = self.groups.borrow_mut();
        let g = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id, now));
        if g.share.is_none() {
            g.share = Some(ShareGroup::default());
            g.sync_share_state(now);
        }
        let slot = g.share_states.entry((topic_id, partition));
        match slot {
            std::collections::btree_map::Entry::Occupied(mut o) => {
                // Fenced meanwhile by a reset: the reset stays.
                if o.get().state_epoch <= value.state_epoch {
                    o.insert(value);
                }
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(value);
            }
        }
        Ok(())
    }

    /// The share group's stored start offsets, by topic id and partition;
    /// GROUP_ID_NOT_FOUND if it is not a share group.
    pub fn share_offsets(
        &self,
        group_id: &str,
    ) -> Result<BTreeMap<(uuid::Uuid, i32), ShareStateValue>, ResponseError> {
        self.route(group_id)?;
        let groups = self.groups.borrow();
        match groups.get(group_id) {
            Some(g) if g.share.is_some() => Ok(g.share_states.clone()),
            _ => Err(ResponseError::GroupIdNotFound),
        }
    }

    /// AlterShareGroupOffsets / DeleteShareGroupOffsets: sets (or, with
    /// `None`, deletes) the start offsets of an empty share group's
    /// partitions, bumping each one's state epoch so that a leader still
    /// holding the old state is fenced and reloads it. Setting them on a
    /// group id nobody uses creates the (empty) share group, as Kafka does.
    pub async fn reset_share_offsets(
        &self,
        group_id: &str,
        resets: Vec<(uuid::Uuid, i32, Option<i64>)>,
    ) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let shard = self.shard()?;
        let key = self.route(group_id)?;
        let creates = resets.iter().any(|r| r.2.is_some());
        let records: Vec<GroupRecord> = {
            let groups = self.groups.borrow();
            let fresh = Group::new(group_id, now_ms());
            let g = match groups.get(group_id) {
                Some(g) if g.share.is_some() => g,
                None if creates => &fresh,
                _ => return Err(ResponseError::GroupIdNotFound),
            };
            if !g.is_empty() {
                return Err(ResponseError::NonEmptyGroup);
            }
            resets
                .iter()
                .map(|&(topic_id, partition, offset)| {
                    let epoch = g
                        .share_states
                        .get(&(topic_id, partition))
                        .map_or(0, |s| s.state_epoch);
                    GroupRecord::ShareState {
                        group: group_id.to_string(),
                        topic_id,
                        partition,
                        value: offset.map(|start_offset| ShareStateValue {
                            state_epoch: epoch + 1,
                            leader_epoch: -1,
                            start_offset,
                            batches: Vec::new(),
                        }),
                    }
                })
                .collect()
        };
        if records.is_empty() {
            return Ok(());
        }
        let mut all = records.clone();
        let known = self.groups.borrow().contains_key(group_id);
        if !known {
            all.push(GroupRecord::ShareGroup {
                group: group_id.to_string(),
                epoch: Some(0),
            });
        }
        write(&shard, key, all).await?;
        let mut groups = self.groups.borrow_mut();
        if !groups.contains_key(group_id) {
            let now = now_ms();
            let mut g = Group::new(group_id, now);
            g.share = Some(ShareGroup::default());
            g.sync_share_state(now);
            groups.insert(group_id.to_string(), g);
        }
        if let Some(g) = groups.get_mut(group_id).filter(|g| g.share.is_some()) {
            for r in records {
                if let GroupRecord::ShareState {
                    topic_id,
                    partition,
                    value,
                    ..
                } = r
                {
                    match value {
                        Some(v) => {
                            g.share_states.insert((topic_id, partition), v);
                        }
                        None => {
                            g.share_states.remove(&(topic_id, partition));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A streams group as StreamsGroupDescribe shows it.
    pub fn describe_streams(&self, group_id: &str) -> Result<StreamsGroup, HeartbeatError> {
        self.describe_typed(group_id, "streams", |g| g.streams.as_ref())
    }

    /// A consumer group as ConsumerGroupDescribe shows it; GROUP_ID_NOT_FOUND
    /// for classic groups and unknown ones.
    pub fn describe_consumer(&self, group_id: &str) -> Result<ConsumerGroup, HeartbeatError> {
        self.describe_typed(group_id, "consumer", |g| g.consumer.as_ref())
    }

    /// OffsetFetch v9+ names the member asking: it must be in the group at
    /// that epoch.
    pub fn check_fetch_member(
        &self,
        group_id: &str,
        member_id: &str,
        epoch: i32,
    ) -> Result<(), ResponseError> {
        let groups = self.groups.borrow();
        match groups.get(group_id) {
            Some(Group {
                consumer: Some(c), ..
            }) => c.check_member_epoch(member_id, epoch, false),
            Some(Group {
                streams: Some(s), ..
            }) => s.check_offset_fetch(member_id, epoch),
            _ => Ok(()),
        }
    }

    pub async fn join(&self, group_id: &str, req: JoinRequest) -> JoinResult {
        let member_id = req.member_id.clone();
        if group_id.is_empty() {
            return JoinResult::error(ResponseError::InvalidGroupId, &member_id);
        }
        let (shard, key) = match self.shard().and_then(|s| Ok((s, self.route(group_id)?))) {
            Ok(pair) => pair,
            Err(e) => return JoinResult::error(e, &member_id),
        };
        let now = now_ms();
        let (outcome, fx) = {
            let mut groups = self.groups.borrow_mut();
            if !groups.contains_key(group_id) && !member_id.is_empty() {
                return JoinResult::error(ResponseError::UnknownMemberId, &member_id);
            }
            let g = groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new(group_id, now));
            if g.share.is_some() {
                return JoinResult::error(ResponseError::InconsistentGroupProtocol, &member_id);
            }
            if g.streams.is_some() {
                if !g.is_empty() {
                    return JoinResult::error(ResponseError::InconsistentGroupProtocol, &member_id);
                }
                // An empty streams group becomes a classic one, as in Kafka.
                g.streams = None;
            }
            if g.consumer.is_some() {
                if !g.is_empty() {
                    return JoinResult::error(ResponseError::InconsistentGroupProtocol, &member_id);
                }
                // An empty consumer group becomes a classic one.
                g.consumer = None;
            }
            let result = g.join(req, &self.settings, now);
            // A refused first join must not leave an empty group behind
            // (ListGroups would show it).
            if g.is_empty() && g.offsets.is_empty() && g.generation == 0 {
                groups.remove(group_id);
            }
            result
        };
        let rx = match &outcome {
            Outcome::Wait(id) => Some(Self::park(
                &self.join_waiters,
                group_id,
                id,
                JoinResult::error(ResponseError::RebalanceInProgress, id),
            )),
            Outcome::Done(_) => None,
        };
        self.apply(&shard, group_id, key, fx).await;
        match (outcome, rx) {
            (Outcome::Done(r), _) => r,
            (Outcome::Wait(id), Some(rx)) => rx
                .await
                .unwrap_or_else(|_| JoinResult::error(ResponseError::RebalanceInProgress, &id)),
            (Outcome::Wait(id), None) => JoinResult::error(ResponseError::UnknownServerError, &id),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResult {
        if group_id.is_empty() {
            return SyncResult::error(ResponseError::InvalidGroupId);
        }
        let (shard, key) = match self.shard().and_then(|s| Ok((s, self.route(group_id)?))) {
            Ok(pair) => pair,
            Err(e) => return SyncResult::error(e),
        };
        let now = now_ms();
        let (outcome, fx) = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(group_id) else {
                return SyncResult::error(ResponseError::UnknownMemberId);
            };
            g.sync(
                member_id,
                instance_id,
                generation,
                protocol_type,
                protocol,
                assignments,
                now,
            )
        };
        let rx = match &outcome {
            Outcome::Wait(id) => Some(Self::park(
                &self.sync_waiters,
                group_id,
                id,
                SyncResult::error(ResponseError::RebalanceInProgress),
            )),
            Outcome::Done(_) => None,
        };
        self.apply(&shard, group_id, key, fx).await;
        match (outcome, rx) {
            (Outcome::Done(r), _) => r,
            (Outcome::Wait(_), Some(rx)) => rx
                .await
                .unwrap_or_else(|_| SyncResult::error(ResponseError::RebalanceInProgress)),
            (Outcome::Wait(_), None) => SyncResult::error(ResponseError::UnknownServerError),
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        self.route(group_id)?;
        let mut groups = self.groups.borrow_mut();
        let g = groups
            .get_mut(group_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        g.heartbeat(member_id, instance_id, generation, now_ms())
    }

    /// Removes members; the group error, then one result per member.
    pub async fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let shard = self.shard()?;
        let key = self.route(group_id)?;
        let now = now_ms();
        let (results, fx) = {
            let mut groups = self.groups.borrow_mut();
            let g = groups
                .get_mut(group_id)
                .ok_or(ResponseError::UnknownMemberId)?;
            let mut fx = Effects::default();
            let mut results = Vec::new();
            for (member, instance) in members {
                let (r, more) = g.leave(member, instance.as_deref(), &self.settings, now);
                fx.replies.extend(more.replies);
                fx.persist |= more.persist;
                results.push(r);
            }
            (results, fx)
        };
        self.apply(&shard, group_id, key, fx).await;
        Ok(results)
    }

    /// Commits offsets: checks the member and generation, writes the
    /// records, and updates the cache once they are durable. Returns one
    /// result per `(topic, partition)` in request order.
    ///
    /// With `txn` (TxnOffsetCommit: the producer's id and epoch) the
    /// records are a transactional batch of the producer's open
    /// transaction, and the offsets stay pending until its marker reaches
    /// this partition (`complete_txn`).
    pub async fn commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<(String, i32, OffsetValue)>,
        txn: Option<(i64, i16)>,
    ) -> Vec<Result<(), ResponseError>> {
        let n = offsets.len();
        let all = |e: ResponseError| vec![Err(e); n];
        if group_id.is_empty() {
            return all(ResponseError::InvalidGroupId);
        }
        let (shard, key) = match self.shard().and_then(|s| Ok((s, self.route(group_id)?))) {
            Ok(pair) => pair,
            Err(e) => return all(e),
        };
        let now = now_ms();
        {
            let mut groups = self.groups.borrow_mut();
            if !groups.contains_key(group_id) {
                if generation >= 0 || !member_id.is_empty() {
                    return all(ResponseError::IllegalGeneration);
                }
                groups.insert(group_id.to_string(), Group::new(group_id, now));
            }
            let g = groups.get_mut(group_id).expect("inserted above");
            let checked = match &g.streams {
                Some(s) => {
                    let parts: Vec<(&str, i32)> =
                        offsets.iter().map(|(t, p, _)| (t.as_str(), *p)).collect();
                    s.check_offset_commit(member_id, generation, &parts, txn.is_some())
                }
                None => g.check_commit(member_id, instance_id, generation, now),
            };
            if let Err(e) = checked {
                return all(e);
            }
        }
        let mut results = Vec::with_capacity(n);
        let mut records = Vec::new();
        let mut accepted = Vec::new();
        for (topic, partition, value) in offsets {
            if value.metadata.len() > self.offset_metadata_max_bytes {
                results.push(Err(ResponseError::OffsetMetadataTooLarge));
                continue;
            }
            results.push(Ok(()));
            records.push(GroupRecord::Offset {
                group: group_id.to_string(),
                topic: topic.clone(),
                partition,
                value: Some(value.clone()),
            });
            accepted.push((topic, partition, value));
        }
        if records.is_empty() {
            return results;
        }
        let _in_flight = CommitInFlight::start(&self.commits_in_flight, group_id);
        let written = match txn {
            None => write(&shard, key, records).await,
            Some(producer) => {
                let pairs: Vec<_> = records.iter().map(|r| (r.key(), r.value())).collect();
                match encode_kv_batch(&pairs, now_ms(), Some(producer)) {
                    Ok(bytes) => append_encoded(&shard, key, bytes).await,
                    Err(e) => {
                        warn!("cannot encode transactional offsets: {e}");
                        Err(ResponseError::UnknownServerError)
                    }
                }
            }
        };
        if let Err(e) = written {
            return results.into_iter().map(|r| r.and(Err(e))).collect();
        }
        if let Some((producer_id, _)) = txn {
            let pending = accepted
                .into_iter()
                .map(|(topic, partition, value)| TxnOffset {
                    group: group_id.to_string(),
                    topic,
                    partition,
                    value,
                });
            self.pending_txn
                .borrow_mut()
                .entry(producer_id)
                .or_default()
                .extend(pending);
            return results;
        }
        // Expiry may have deleted the (then empty) group while this commit
        // was being written after its tombstones: the commit brings it back,
        // as replaying the log would.
        let mut groups = self.groups.borrow_mut();
        let g = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id, now_ms()));
        for (topic, partition, value) in accepted {
            g.offsets.insert((topic, partition), value);
        }
        results
    }

    /// A transaction marker of `producer_id` is durable in
    /// `__consumer_offsets` partition `p`: its offsets there take effect
    /// (commit) or go (abort).
    pub fn complete_txn(&self, p: i32, producer_id: i64, commit: bool) {
        let Ok(shard) = self.shard() else { return };
        let n = shard
            .image()
            .topic(OFFSETS_TOPIC)
            .map_or(0, |t| t.leaders.len() as i32);
        let mut pending = self.pending_txn.borrow_mut();
        let Some(list) = pending.get_mut(&producer_id) else {
            return;
        };
        let (done, open): (Vec<_>, Vec<_>) = std::mem::take(list)
            .into_iter()
            .partition(|o| partition_for(&o.group, n) == p);
        *list = open;
        if list.is_empty() {
            pending.remove(&producer_id);
        }
        drop(pending);
        if commit {
            let now = now_ms();
            let mut groups = self.groups.borrow_mut();
            for o in done {
                apply_txn_offset(&mut groups, o, now);
            }
        }
    }

    /// Whether an open transaction has committed an offset for this
    /// partition of the group (OffsetFetch with `require_stable` answers
    /// UNSTABLE_OFFSET_COMMIT then).
    pub fn has_pending_txn_offset(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        self.pending_txn.borrow().values().any(|l| {
            l.iter()
                .any(|o| o.group == group_id && o.topic == topic && o.partition == partition)
        })
    }

    /// Committed offsets of a group: the named partitions, or all of them.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<WantedOffsets>,
    ) -> Result<TopicOffsets, ResponseError> {
        self.route(group_id)?;
        let groups = self.groups.borrow();
        let g = groups.get(group_id);
        let out = match wanted {
            Some(topics) => topics
                .into_iter()
                .map(|(t, ps)| {
                    let parts = ps
                        .into_iter()
                        .map(|p| (p, g.and_then(|g| g.offsets.get(&(t.clone(), p)).cloned())))
                        .collect();
                    (t, parts)
                })
                .collect(),
            None => {
                let mut by_topic: TopicOffsets = Vec::new();
                for ((t, p), v) in g.map(|g| g.offsets.iter()).into_iter().flatten() {
                    match by_topic.last_mut() {
                        Some((last, parts)) if last == t => parts.push((*p, Some(v.clone()))),
                        _ => by_topic.push((t.clone(), vec![(*p, Some(v.clone()))])),
                    }
                }
                by_topic
            }
        };
        Ok(out)
    }

    /// Every group this shard coordinates, with its members and committed
    /// offsets (for metrics and the admin API).
    pub fn report(&self) -> Vec<crate::metrics::report::GroupReport> {
        let listed = self.list();
        let groups = self.groups.borrow();
        listed
            .into_iter()
            .filter_map(|l| {
                let g = groups.get(&l.id)?;
                let (members, generation) = match (&g.consumer, &g.share, &g.streams) {
                    (Some(c), _, _) => (c.members.len(), c.epoch),
                    (None, Some(s), _) => (s.members.len(), s.epoch),
                    (None, None, Some(s)) => (s.members.len(), s.epoch),
                    (None, None, None) => (g.members.len(), g.generation),
                };
                Some(crate::metrics::report::GroupReport {
                    id: l.id,
                    group_type: l.group_type,
                    state: l.state,
                    protocol_type: l.protocol_type,
                    members,
                    generation,
                    committed: g
                        .offsets
                        .iter()
                        .map(|((t, p), v)| (t.clone(), *p, v.offset))
                        .collect(),
                })
            })
            .collect()
    }

    /// Every group this shard coordinates.
    pub fn list(&self) -> Vec<ListedGroup> {
        let Ok(shard) = self.shard() else {
            return Vec::new();
        };
        let n = shard
            .image()
            .topic(OFFSETS_TOPIC)
            .map_or(1, |t| t.leaders.len() as i32);
        let mut out: Vec<_> = self
            .groups
            .borrow()
            .values()
            .filter(|g| self.partitions.is_loaded(partition_for(&g.id, n)))
            .map(|g| match (&g.consumer, &g.share, &g.streams) {
                (Some(c), _, _) => ListedGroup {
                    id: g.id.clone(),
                    protocol_type: "consumer".into(),
                    state: c.state_name().into(),
                    group_type: "consumer",
                },
                (None, Some(s), _) => ListedGroup {
                    id: g.id.clone(),
                    protocol_type: "share".into(),
                    state: s.state_name().into(),
                    group_type: "share",
                },
                (None, None, Some(s)) => ListedGroup {
                    id: g.id.clone(),
                    protocol_type: "streams".into(),
                    state: s.state_name().into(),
                    group_type: "streams",
                },
                (None, None, None) => ListedGroup {
                    id: g.id.clone(),
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    state: g.state.name().into(),
                    group_type: "classic",
                },
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn describe(&self, group_id: &str) -> Result<GroupSummary, ResponseError> {
        self.route(group_id)?;
        let groups = self.groups.borrow();
        // A consumer group is not a classic group: DescribeGroups before v6
        // shows it as Dead, as Kafka does.
        let Some(g) = groups
            .get(group_id)
            .filter(|g| g.consumer.is_none() && g.share.is_none() && g.streams.is_none())
        else {
            let missing = if groups.contains_key(group_id) {
                format!("Group {group_id} is not a classic group.")
            } else {
                format!("Group {group_id} not found.")
            };
            return Ok(GroupSummary {
                state: GroupState::Dead,
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
                missing: Some(missing),
            });
        };
        let stable = g.state == GroupState::Stable;
        let protocol = g.protocol.clone().unwrap_or_default();
        let members = g
            .members
            .values()
            .map(|m| MemberSummary {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable {
                    m.protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default()
                } else {
                    Bytes::new()
                },
                assignment: if stable {
                    m.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect();
        Ok(GroupSummary {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if stable { protocol } else { String::new() },
            members,
            missing: None,
        })
    }

    /// Deletes a group with no members, and its offsets (tombstones).
    pub async fn delete(&self, group_id: &str) -> Result<(), ResponseError> {
        let shard = self.shard()?;
        let key = self.route(group_id)?;
        let records = {
            let groups = self.groups.borrow();
            let g = groups.get(group_id).ok_or(ResponseError::GroupIdNotFound)?;
            if !g.is_empty() {
                return Err(ResponseError::NonEmptyGroup);
            }
            let mut recs: Vec<GroupRecord> = g
                .offsets
                .keys()
                .map(|(t, p)| GroupRecord::Offset {
                    group: group_id.to_string(),
                    topic: t.clone(),
                    partition: *p,
                    value: None,
                })
                .collect();
            recs.push(GroupRecord::Group {
                group: group_id.to_string(),
                value: None,
            });
            if g.consumer.is_some() {
                recs.push(GroupRecord::ConsumerGroup {
                    group: group_id.to_string(),
                    epoch: None,
                });
            }
            for &(topic_id, partition) in g.share_states.keys() {
                recs.push(GroupRecord::ShareState {
                    group: group_id.to_string(),
                    topic_id,
                    partition,
                    value: None,
                });
            }
            if g.share.is_some() {
                recs.push(GroupRecord::ShareGroup {
                    group: group_id.to_string(),
                    epoch: None,
                });
            }
            if g.streams.is_some() {
                recs.push(GroupRecord::StreamsGroup {
                    group: group_id.to_string(),
                    epoch: None,
                });
            }
            recs
        };
        write(&shard, key, records).await?;
        self.groups.borrow_mut().remove(group_id);
        Ok(())
    }

    /// Deletes committed offsets of partitions the group does not consume.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let shard = self.shard()?;
        let key = self.route(group_id)?;
        let (results, records) = {
            let groups = self.groups.borrow();
            let g = groups.get(group_id).ok_or(ResponseError::GroupIdNotFound)?;
            let subscribed = match (&g.consumer, &g.streams) {
                (Some(c), _) => Some(c.subscribed_topics()),
                (None, Some(s)) => Some(s.subscribed_topics()),
                (None, None) if g.members.is_empty() => Some(Vec::new()),
                (None, None) => g.subscribed_topics(),
            };
            let Some(subscribed) = subscribed else {
                return Err(ResponseError::NonEmptyGroup);
            };
            let mut results = Vec::new();
            let mut records = Vec::new();
            for (t, p) in partitions {
                if subscribed.contains(&t) {
                    results.push(Err(ResponseError::GroupSubscribedToTopic));
                    continue;
                }
                results.push(Ok(()));
                if g.offsets.contains_key(&(t.clone(), p)) {
                    records.push(GroupRecord::Offset {
                        group: group_id.to_string(),
                        topic: t,
                        partition: p,
                        value: None,
                    });
                }
            }
            (results, records)
        };
        if !records.is_empty() {
            write(&shard, key, records.clone()).await?;
            if let Some(g) = self.groups.borrow_mut().get_mut(group_id) {
                for r in records {
                    if let GroupRecord::Offset {
                        topic, partition, ..
                    } = r
                    {
                        g.offsets.remove(&(topic, partition));
                    }
                }
            }
        }
        Ok(results)
    }
}

/// Appends records to a `__consumer_offsets` partition and waits until
/// they are durable.
async fn write(
    shard: &Rc<Shard>,
    key: PartitionKey,
    records: Vec<GroupRecord>,
) -> Result<(), ResponseError> {
    let bytes = encode_batch(&records, now_ms()).map_err(|e| {
        warn!("cannot encode group records: {e}");
        ResponseError::UnknownServerError
    })?;
    append_encoded(shard, key, bytes).await
}

/// Appends an encoded batch to a `__consumer_offsets` partition and waits
/// until it is durable.
pub(crate) async fn append_encoded(
    shard: &Rc<Shard>,
    key: PartitionKey,
    bytes: bytes::Bytes,
) -> Result<(), ResponseError> {
    let batches = storage::batch::validate_batches(&bytes, usize::MAX).map_err(|e| {
        warn!("group records failed validation: {e}");
        ResponseError::UnknownServerError
    })?;
    shard
        .append(key, &batches, None)
        .await
        .map_err(|e| match e {
            ResponseError::UnknownTopicOrPartition | ResponseError::NotLeaderOrFollower => {
                ResponseError::NotCoordinator
            }
            other => other,
        })?;
    Ok(())
}

/// Applies one replayed record to the groups being rebuilt.
fn replay(groups: &mut HashMap<String, Group>, rec: GroupRecord, now: i64) {
    match rec {
        GroupRecord::Offset {
            group,
            topic,
            partition,
            value: Some(v),
        } => {
            groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group, now))
                .offsets
                .insert((topic, partition), v);
        }
        GroupRecord::Offset {
            group,
            topic,
            partition,
            value: None,
        } => {
            if let Some(g) = groups.get_mut(&group) {
                g.offsets.remove(&(topic, partition));
            }
        }
        GroupRecord::Group {
            group,
            value: Some(v),
        } => {
            groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group, now))
                .restore(v, now);
        }
        GroupRecord::Group { group, value: None } => {
            groups.remove(&group);
        }
        GroupRecord::ConsumerGroup {
            group,
            epoch: Some(epoch),
        } => {
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group, now));
            g.consumer = Some(ConsumerGroup::restored(epoch));
            g.sync_consumer_state(now);
        }
        GroupRecord::ShareGroup {
            group,
            epoch: Some(epoch),
        } => {
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group, now));
            match g.share.as_mut() {
                Some(s) => s.epoch = epoch,
                None => g.share = Some(ShareGroup::restored(epoch)),
            }
            g.sync_share_state(now);
        }
        GroupRecord::ShareGroup { group, epoch: None } => {
            groups.remove(&group);
        }
        GroupRecord::StreamsGroup {
            group,
            epoch: Some(epoch),
        } => {
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group, now));
            g.streams = Some(StreamsGroup::restored(epoch));
            g.sync_streams_state(now);
        }
        GroupRecord::ShareState {
            group,
            topic_id,
            partition,
            value: Some(v),
        } => {
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group, now));
            if g.share.is_none() {
                g.share = Some(ShareGroup::restored(0));
                g.sync_share_state(now);
            }
            g.share_states.insert((topic_id, partition), v);
        }
        GroupRecord::ShareState {
            group,
            topic_id,
            partition,
            value: None,
        } => {
            // A tombstone never brings a deleted group back.
            if let Some(g) = groups.get_mut(&group) {
                g.share_states.remove(&(topic_id, partition));
            }
        }
        // A consumer or streams group's tombstone (the group was deleted;
        // a group is only ever of one type).
        GroupRecord::ConsumerGroup { group, epoch: None }
        | GroupRecord::StreamsGroup { group, epoch: None } => {
            if let Some(g) = groups.get_mut(&group) {
                g.consumer = None;
                g.streams = None;
                if g.offsets.is_empty() {
                    groups.remove(&group);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_partition_matches_kafka() {
        // Values from Java's String.hashCode.
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("my-group"), -1_906_497_762);
        assert_eq!(
            partition_for("my-group", 50),
            (-1_906_497_762i32 & 0x7fff_ffff) % 50
        );
        // A negative hash is masked, not negated (Kafka's Utils.abs).
        let h = java_hash("polygenelubricants");
        assert_eq!(h, i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        assert!((0..50).contains(&partition_for("console-consumer-1234", 50)));
    }

    fn offset(group: &str, p: i32, value: Option<i64>) -> GroupRecord {
        GroupRecord::Offset {
            group: group.into(),
            topic: "t".into(),
            partition: p,
            value: value.map(|offset| OffsetValue {
                offset,
                leader_epoch: -1,
                metadata: format!("m{offset}"),
                commit_timestamp: 0,
            }),
        }
    }

    #[test]
    fn replay_rebuilds_share_groups_and_a_deleted_one_stays_deleted() {
        let t = uuid::Uuid::from_u128(5);
        let state = |start| {
            Some(ShareStateValue {
                state_epoch: 0,
                leader_epoch: 0,
                start_offset: start,
                batches: Vec::new(),
            })
        };
        let share_state = |g: &str, p, value| GroupRecord::ShareState {
            group: g.into(),
            topic_id: t,
            partition: p,
            value,
        };
        let log = vec![
            GroupRecord::ShareGroup {
                group: "s".into(),
                epoch: Some(3),
            },
            share_state("s", 0, state(10)),
            share_state("s", 1, state(4)),
            share_state("s", 0, state(12)),
            share_state("s", 1, None),
            // "d" is deleted as `delete` writes it: states, then the group.
            share_state("d", 0, state(1)),
            GroupRecord::Group {
                group: "d".into(),
                value: None,
            },
            share_state("d", 0, None),
            GroupRecord::ShareGroup {
                group: "d".into(),
                epoch: None,
            },
        ];
        let mut groups = HashMap::new();
        for r in decode_batches(encode_batch(&log, 0).unwrap()).unwrap() {
            replay(&mut groups, r, 100);
        }
        assert!(!groups.contains_key("d"));
        let s = &groups["s"];
        assert_eq!(s.share.as_ref().map(|g| g.epoch), Some(3));
        assert_eq!(s.protocol_type.as_deref(), Some("share"));
        assert_eq!(
            s.share_states.keys().copied().collect::<Vec<_>>(),
            vec![(t, 0)]
        );
        assert_eq!(s.share_states[&(t, 0)].start_offset, 12);
    }

    #[test]
    fn replay_rebuilds_offsets_and_groups_and_honours_tombstones() {
        let mut stable = Group::new("a", 0);
        let settings = GroupSettings {
            initial_rebalance_delay_ms: 0,
            ..GroupSettings::default()
        };
        let join = JoinRequest {
            member_id: String::new(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/h".into(),
            session_timeout_ms: 1000,
            rebalance_timeout_ms: 1000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"x"))],
            require_known_member_id: false,
        };
        let _ = stable.join(join, &settings, 0);
        let value = stable.to_value(0);
        let log = vec![
            offset("a", 0, Some(5)),
            offset("a", 1, Some(6)),
            offset("a", 0, Some(7)),
            offset("a", 1, None),
            GroupRecord::Group {
                group: "a".into(),
                value: Some(value),
            },
            offset("b", 0, Some(1)),
            GroupRecord::Group {
                group: "b".into(),
                value: None,
            },
            offset("c", 0, Some(2)),
        ];
        let batch = encode_batch(&log, 0).unwrap();
        let mut groups = HashMap::new();
        for r in decode_batches(batch).unwrap() {
            replay(&mut groups, r, 100);
        }
        let a = &groups["a"];
        assert_eq!(a.offsets.len(), 1);
        let committed = &a.offsets[&("t".to_string(), 0)];
        assert_eq!((committed.offset, committed.metadata.as_str()), (7, "m7"));
        assert_eq!(a.generation, 1);
        assert_eq!(a.members.len(), 1);
        assert!(!groups.contains_key("b"), "deleted group stays deleted");
        assert_eq!(groups["c"].state, GroupState::Empty);
    }
}
