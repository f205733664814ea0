//! KIP-1071 streams groups (`group.protocol=streams` in Kafka Streams): the
//! group's topology, resolved against the metadata image into tasks and
//! the internal topics to create; the target assignment of active and
//! standby tasks (`streams_assignor`); each member's reconciliation
//! towards it. A member first revokes the tasks it must give up; an
//! active task goes to its new member only once its previous owner has
//! released it.
//!
//! Pure: the coordinator (`group/mod.rs`) feeds it heartbeats, the topics
//! of the metadata image and the clock, persists the epoch and creates
//! the internal topics it asks for. It runs on the shard that coordinates
//! the group and never does I/O.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;

use super::consumer::{
    earliest_deadline, expired_members, HeartbeatError, Topics, LEAVE_EPOCH, LEAVE_STATIC_EPOCH,
};
use super::streams_assignor;

/// Partitions by subtopology id.
pub type Tasks = BTreeMap<String, BTreeSet<i32>>;

/// A member's tasks of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskSet {
    pub active: Tasks,
    pub standby: Tasks,
    pub warmup: Tasks,
}

impl TaskSet {
    pub fn is_empty(&self) -> bool {
        count(&self.active) + count(&self.standby) + count(&self.warmup) == 0
    }
}

pub fn count(t: &Tasks) -> usize {
    t.values().map(BTreeSet::len).sum()
}

fn has(t: &Tasks, sub: &str, p: i32) -> bool {
    t.get(sub).is_some_and(|ps| ps.contains(&p))
}

fn overlaps(a: &Tasks, b: &Tasks) -> bool {
    a.iter()
        .any(|(s, ps)| b.get(s).is_some_and(|q| ps.iter().any(|p| q.contains(p))))
}

/// A topic of the topology that the coordinator creates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// 0: decided by the coordinator.
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

/// Indexes into a subtopology's source topics, source regexes and
/// repartition source topics that must have equal partition counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopartitionGroup {
    pub source_topics: Vec<i16>,
    pub source_regex: Vec<i16>,
    pub repartition_sources: Vec<i16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subtopology {
    pub id: String,
    pub source_topics: Vec<String>,
    pub source_regex: Vec<String>,
    pub changelogs: Vec<TopicInfo>,
    pub repartition_sinks: Vec<String>,
    pub repartition_sources: Vec<TopicInfo>,
    pub copartition_groups: Vec<CopartitionGroup>,
}

impl Subtopology {
    /// The topics its tasks read: source topics, then repartition sources.
    pub fn inputs(&self) -> impl Iterator<Item = &str> {
        self.source_topics
            .iter()
            .map(String::as_str)
            .chain(self.repartition_sources.iter().map(|r| r.name.as_str()))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub epoch: i32,
    pub subtopologies: Vec<Subtopology>,
}

/// The group's statuses a heartbeat response carries (Kafka's
/// `StreamsGroupHeartbeatResponse.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    StaleTopology = 0,
    MissingSourceTopics = 1,
    IncorrectlyPartitionedTopics = 2,
    MissingInternalTopics = 3,
    ShutdownApplication = 4,
    AssignmentDelayed = 5,
}

/// An internal topic the coordinator must create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
}

/// A topology resolved against the metadata image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configured {
    /// Tasks per subtopology; empty while the topology cannot run.
    pub tasks: BTreeMap<String, i32>,
    /// Each subtopology's input topics (sources and repartition sources),
    /// for the endpoint information.
    pub inputs: BTreeMap<String, Vec<String>>,
    /// Subtopologies with state (changelogs): only their tasks get standbys.
    pub stateful: BTreeSet<String>,
    pub to_create: Vec<NewTopic>,
    pub problem: Option<(Status, String)>,
}

impl Configured {
    fn failed(status: Status, msg: String) -> Self {
        Configured {
            problem: Some((status, msg)),
            ..Default::default()
        }
    }
}

/// Kafka's way of naming topics in a message: the first three, then how
/// many more.
fn listed(names: &[&str]) -> String {
    let head = names.iter().take(3).copied().collect::<Vec<_>>().join(", ");
    match names.len() {
        0..=3 => head,
        n => format!("{head} and {} additional topics", n - 3),
    }
}

/// Java's `Map.toString` of topics and their partition counts.
fn counts(m: &BTreeMap<&str, i32>) -> String {
    let v: Vec<String> = m.iter().map(|(t, n)| format!("{t}={n}")).collect();
    format!("{{{}}}", v.join(", "))
}

fn invalid_topology(msg: String) -> HeartbeatError {
    (ResponseError::StreamsInvalidTopology, msg)
}

/// Resolves a topology (Kafka's `InternalTopicManager.configureTopics`):
/// source topics must exist; a repartition topic without a fixed count
/// takes the largest count of the subtopologies writing to it; each
/// copartition group gets one count; a subtopology has as many tasks as
/// its largest input topic; its changelogs have one partition per task.
/// Internal topics that do not exist yet are returned to be created. A
/// topology that can never resolve is an error (STREAMS_INVALID_TOPOLOGY);
/// one the topics do not fit yet is a status.
pub fn configure(topology: &Topology, topics: &dyn Topics) -> Result<Configured, HeartbeatError> {
    let existing = |t: &str| topics.lookup(t).map(|(_, n)| n);
    let missing: BTreeSet<&str> = topology
        .subtopologies
        .iter()
        .flat_map(|s| &s.source_topics)
        .filter(|t| existing(t).is_none())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        let list: Vec<&str> = missing.into_iter().collect();
        return Ok(Configured::failed(
            Status::MissingSourceTopics,
            format!("Source topics {} are missing.", listed(&list)),
        ));
    }
    // Repartition topics: fixed by the topology, else from their writers.
    let fixed: BTreeMap<&str, i32> = topology
        .subtopologies
        .iter()
        .flat_map(|s| &s.repartition_sources)
        .filter(|r| r.partitions > 0)
        .map(|r| (r.name.as_str(), r.partitions))
        .collect();
    let repartition: BTreeSet<&str> = topology
        .subtopologies
        .iter()
        .flat_map(|s| &s.repartition_sources)
        .map(|r| r.name.as_str())
        .collect();
    let mut decided: BTreeMap<String, i32> =
        fixed.iter().map(|(t, n)| (t.to_string(), *n)).collect();
    let count_of = |t: &str, decided: &BTreeMap<String, i32>| {
        if repartition.contains(t) {
            decided.get(t).copied()
        } else {
            existing(t)
        }
    };
    let inputs_of = |s: &Subtopology| -> Vec<String> { s.inputs().map(str::to_string).collect() };
    let writers = |r: &str| -> Vec<&Subtopology> {
        topology
            .subtopologies
            .iter()
            .filter(|u| u.repartition_sinks.iter().any(|k| k == r))
            .collect()
    };
    if repartition
        .iter()
        .any(|r| !fixed.contains_key(r) && writers(r).is_empty())
    {
        return Err(invalid_topology(
            "Failed to compute number of partitions for all repartition topics, because a repartition source topic is never used as a sink topic.".into(),
        ));
    }
    loop {
        let undecided: Vec<&str> = repartition
            .iter()
            .copied()
            .filter(|r| !decided.contains_key(*r))
            .collect();
        if undecided.is_empty() {
            break;
        }
        let mut progress = false;
        for r in undecided {
            let n = writers(r)
                .into_iter()
                .filter_map(|u| {
                    inputs_of(u)
                        .iter()
                        .filter_map(|t| count_of(t, &decided))
                        .max()
                })
                .max();
            if let Some(n) = n {
                decided.insert(r.to_string(), n);
                progress = true;
            }
        }
        if !progress {
            return Err(invalid_topology(
                "Failed to compute number of partitions for all repartition topics. There may be loops in the topology that cannot be resolved.".into(),
            ));
        }
    }
    // Copartitioning (Kafka's `CopartitionedTopicsEnforcer`).
    for s in &topology.subtopologies {
        for g in &s.copartition_groups {
            let mut members: Vec<&str> = Vec::new();
            for &i in &g.source_topics {
                members.extend(s.source_topics.get(i as usize).map(String::as_str));
            }
            for &i in &g.repartition_sources {
                members.extend(
                    s.repartition_sources
                        .get(i as usize)
                        .map(|r| r.name.as_str()),
                );
            }
            let (reps, externals): (Vec<&str>, Vec<&str>) =
                members.into_iter().partition(|t| repartition.contains(t));
            let n = if !externals.is_empty() {
                let ext: BTreeMap<&str, i32> = externals
                    .iter()
                    .filter_map(|t| Some((*t, existing(t)?)))
                    .collect();
                let distinct: BTreeSet<i32> = ext.values().copied().collect();
                if distinct.len() > 1 {
                    return Ok(Configured::failed(
                        Status::IncorrectlyPartitionedTopics,
                        format!(
                            "Following topics do not have the same number of partitions: [{}]",
                            counts(&ext)
                        ),
                    ));
                }
                let n = distinct.into_iter().next().unwrap_or(0);
                for r in &reps {
                    if let Some(&f) = fixed.get(r) {
                        if f != n {
                            return Ok(Configured::failed(
                                Status::IncorrectlyPartitionedTopics,
                                format!("Number of partitions [{f}] of repartition topic [{r}] doesn't match number of partitions [{n}] of the source topic."),
                            ));
                        }
                    }
                }
                n
            } else {
                let fixed_here: BTreeMap<&str, i32> = reps
                    .iter()
                    .filter_map(|r| Some((*r, *fixed.get(r)?)))
                    .collect();
                let distinct: BTreeSet<i32> = fixed_here.values().copied().collect();
                if distinct.len() > 1 {
                    return Ok(Configured::failed(
                        Status::IncorrectlyPartitionedTopics,
                        format!(
                            "Following topics do not have the same number of partitions: [{}]",
                            counts(&fixed_here)
                        ),
                    ));
                }
                match distinct.into_iter().next() {
                    Some(n) => n,
                    None => reps
                        .iter()
                        .filter_map(|r| decided.get(*r).copied())
                        .max()
                        .unwrap_or(0),
                }
            };
            if n <= 0 {
                return Err(invalid_topology(format!(
                    "All topics in the copartition group had undefined partition number: [{}]",
                    reps.join(", ")
                )));
            }
            for r in reps.into_iter().filter(|r| !fixed.contains_key(r)) {
                decided.insert(r.to_string(), n);
            }
        }
    }
    let mut out = Configured::default();
    let mut wanted: BTreeMap<String, NewTopic> = BTreeMap::new();
    for s in &topology.subtopologies {
        let inputs = inputs_of(s);
        if inputs.is_empty() && !s.changelogs.is_empty() {
            return Err(invalid_topology(format!(
                "No source topics found for subtopology {}",
                s.id
            )));
        }
        let n = inputs
            .iter()
            .filter_map(|t| count_of(t, &decided))
            .max()
            .unwrap_or(0);
        out.tasks.insert(s.id.clone(), n);
        out.inputs.insert(s.id.clone(), inputs);
        if !s.changelogs.is_empty() {
            out.stateful.insert(s.id.clone());
        }
        for r in &s.repartition_sources {
            let p = count_of(&r.name, &decided).unwrap_or(n);
            wanted.insert(r.name.clone(), new_topic(r, p));
        }
        for c in &s.changelogs {
            wanted.insert(c.name.clone(), new_topic(c, n));
        }
    }
    for (name, t) in wanted {
        match existing(&name) {
            Some(have) if have != t.partitions => {
                return Ok(Configured::failed(
                    Status::IncorrectlyPartitionedTopics,
                    format!(
                        "Existing topic {name} has different number of partitions: expected {}, found {have}",
                        t.partitions
                    ),
                ));
            }
            Some(_) => {}
            None => out.to_create.push(t),
        }
    }
    if !out.to_create.is_empty() {
        let list: Vec<&str> = out.to_create.iter().map(|t| t.name.as_str()).collect();
        out.problem = Some((
            Status::MissingInternalTopics,
            format!("Internal topics are missing: {}", listed(&list)),
        ));
        out.tasks.clear();
    }
    Ok(out)
}

fn new_topic(t: &TopicInfo, partitions: i32) -> NewTopic {
    NewTopic {
        name: t.name.clone(),
        partitions,
        configs: t.configs.iter().cloned().collect(),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StreamsSettings {
    pub session_timeout_ms: i64,
    pub heartbeat_interval_ms: i32,
    pub num_standby_replicas: i32,
    /// A new group's first assignment waits this long for more members.
    pub initial_rebalance_delay_ms: i64,
    pub max_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Stable,
    /// Waits for the member to revoke `pending_revocation`.
    UnrevokedTasks,
    /// At the target epoch, but some of its target tasks are still held
    /// by other members.
    UnreleasedTasks,
}

#[derive(Debug, Clone)]
pub struct StreamsMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub process_id: String,
    pub user_endpoint: Option<(String, u16)>,
    pub client_tags: BTreeMap<String, String>,
    pub topology_epoch: i32,
    pub epoch: i32,
    pub previous_epoch: i32,
    pub state: MemberState,
    pub rebalance_timeout_ms: i32,
    /// The tasks the member owns now.
    pub assigned: TaskSet,
    /// Tasks the member must give up; still its own until it says so.
    pub pending_revocation: TaskSet,
    /// The epoch at which each active task was given to the member: an
    /// offset commit from an older epoch is fine for a task it had then.
    active_epochs: BTreeMap<(String, i32), i32>,
    /// Changelog offsets the member last reported, by (subtopology,
    /// partition).
    pub task_offsets: BTreeMap<(String, i32), i64>,
    pub task_end_offsets: BTreeMap<(String, i32), i64>,
    pub last_heartbeat: i64,
    /// Revocation must be done by then, or the member is fenced.
    revoke_deadline: Option<i64>,
}

impl StreamsMember {
    fn new(id: &str) -> Self {
        StreamsMember {
            id: id.to_string(),
            instance_id: None,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            process_id: String::new(),
            user_endpoint: None,
            client_tags: BTreeMap::new(),
            topology_epoch: -1,
            epoch: 0,
            previous_epoch: -1,
            state: MemberState::Stable,
            rebalance_timeout_ms: -1,
            assigned: TaskSet::default(),
            pending_revocation: TaskSet::default(),
            active_epochs: BTreeMap::new(),
            task_offsets: BTreeMap::new(),
            task_end_offsets: BTreeMap::new(),
            last_heartbeat: 0,
            revoke_deadline: None,
        }
    }
}

/// A StreamsGroupHeartbeat, as the coordinator hands it over. `None`:
/// unchanged since the member's last heartbeat.
#[derive(Debug, Clone, Default)]
pub struct StreamsHeartbeat {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub endpoint_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub topology: Option<Topology>,
    pub active: Option<Tasks>,
    pub standby: Option<Tasks>,
    pub warmup: Option<Tasks>,
    pub process_id: Option<String>,
    pub user_endpoint: Option<(String, u16)>,
    pub client_tags: Option<Vec<(String, String)>>,
    pub task_offsets: Option<Vec<(String, i32, i64)>>,
    pub task_end_offsets: Option<Vec<(String, i32, i64)>>,
    pub shutdown_application: bool,
    pub client_id: String,
    pub client_host: String,
}

/// One member's endpoint and the input partitions of its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPartitions {
    pub host: String,
    pub port: u16,
    pub active: Vec<(String, Vec<i32>)>,
    pub standby: Vec<(String, Vec<i32>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamsHeartbeatOk {
    pub member_id: String,
    pub member_epoch: i32,
    /// Sent when it changed or the member joined.
    pub assignment: Option<TaskSet>,
    pub status: Vec<(Status, String)>,
    pub endpoint_epoch: i32,
    /// Sent when the member's endpoint epoch is not the group's.
    pub endpoints: Option<Vec<EndpointPartitions>>,
    /// Internal topics the coordinator must create.
    pub to_create: Vec<NewTopic>,
}

fn invalid(msg: &str) -> HeartbeatError {
    (ResponseError::InvalidRequest, msg.to_string())
}

#[derive(Debug, Clone, Default)]
pub struct StreamsGroup {
    pub epoch: i32,
    pub assignment_epoch: i32,
    /// Set by the first member; kept until the group is deleted.
    pub topology: Option<Topology>,
    /// The topology resolved at the last epoch change.
    pub configured: Configured,
    /// Partition counts of the topology's topics that exist, as of the
    /// last heartbeat: a change bumps the epoch.
    partition_metadata: BTreeMap<String, i32>,
    pub members: BTreeMap<String, StreamsMember>,
    pub target: BTreeMap<String, TaskSet>,
    /// Bumped when a member with an endpoint changes tasks or endpoint:
    /// members whose epoch differs get the endpoint information again.
    pub endpoint_epoch: i32,
    /// A member asked the whole application to shut down; cleared when
    /// the group is empty.
    shutdown_requested_by: Option<String>,
    /// The standby replicas the target was computed with: a change bumps
    /// the epoch.
    standby_replicas: Option<i32>,
    /// The first assignment of a new group waits until then.
    delay_until: Option<i64>,
    /// The epoch changed since the coordinator last stored it.
    pub epoch_dirty: bool,
}

impl StreamsGroup {
    /// A new group: Kafka 4.4 starts it at epoch 1, so that a member held
    /// back by the initial rebalance delay reconciles to a real epoch.
    pub fn new() -> Self {
        Self::restored(1)
    }

    /// A group as its stored record left it: its epoch, no members.
    pub fn restored(epoch: i32) -> Self {
        StreamsGroup {
            epoch,
            assignment_epoch: epoch,
            ..Default::default()
        }
    }

    /// Kafka's state names for streams groups.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.topology.is_none() || self.configured.problem.is_some() {
            "NotReady"
        } else if self.epoch != self.assignment_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// Checks an OffsetCommit or TxnOffsetCommit (Kafka's
    /// `StreamsGroup.validateOffsetCommit`): a commit from the member's
    /// epoch is fine; from an older one only for partitions of tasks the
    /// member had since then; a newer one is stale.
    pub fn check_offset_commit(
        &self,
        member_id: &str,
        epoch: i32,
        partitions: &[(&str, i32)],
        transactional: bool,
    ) -> Result<(), ResponseError> {
        if epoch < 0 && self.members.is_empty() {
            return Ok(());
        }
        if transactional && epoch == -1 && member_id.is_empty() {
            return Ok(());
        }
        let m = self
            .members
            .get(member_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        if epoch == m.epoch {
            return Ok(());
        }
        if epoch > m.epoch {
            return Err(ResponseError::StaleMemberEpoch);
        }
        let subs: Vec<&Subtopology> = self
            .topology
            .iter()
            .flat_map(|t| &t.subtopologies)
            .collect();
        for (topic, p) in partitions {
            let held = subs.iter().any(|s| {
                let reads = s.inputs().any(|t| t == *topic);
                let key = (s.id.clone(), *p);
                reads
                    && (has(&m.assigned.active, &s.id, *p)
                        || has(&m.pending_revocation.active, &s.id, *p))
                    && m.active_epochs.get(&key).is_some_and(|e| *e <= epoch)
            });
            if !held {
                return Err(ResponseError::StaleMemberEpoch);
            }
        }
        Ok(())
    }

    /// Checks an OffsetFetch v9+: a named member at its exact epoch.
    pub fn check_offset_fetch(&self, member_id: &str, epoch: i32) -> Result<(), ResponseError> {
        if epoch < 0 && member_id.is_empty() {
            return Ok(());
        }
        let m = self
            .members
            .get(member_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        if epoch != m.epoch {
            return Err(ResponseError::StaleMemberEpoch);
        }
        Ok(())
    }

    /// The input topics of the topology (OffsetDelete refuses them while
    /// the group has members).
    pub fn subscribed_topics(&self) -> Vec<String> {
        if self.members.is_empty() {
            return Vec::new();
        }
        let mut out: BTreeSet<String> = BTreeSet::new();
        if let Some(t) = &self.topology {
            for s in &t.subtopologies {
                out.extend(s.inputs().map(str::to_string));
            }
        }
        out.into_iter().collect()
    }

    /// The earliest time `tick` has something to do.
    pub fn next_deadline(&self, settings: &StreamsSettings) -> Option<i64> {
        let times = self
            .members
            .values()
            .map(|m| (m.last_heartbeat, m.revoke_deadline));
        earliest_deadline(times, settings.session_timeout_ms)
            .into_iter()
            .chain(self.delay_until)
            .min()
    }

    /// Fences members whose session or revocation time is up, and ends
    /// the initial rebalance delay. Returns the ids fenced.
    pub fn tick(&mut self, settings: &StreamsSettings, now: i64) -> Vec<String> {
        let times = self
            .members
            .values()
            .map(|m| (&m.id, m.last_heartbeat, m.revoke_deadline));
        let expired = expired_members(times, settings.session_timeout_ms, now);
        for id in &expired {
            self.remove_member(id);
        }
        if self.delay_until.is_some_and(|d| d <= now) {
            self.delay_until = None;
            if self.epoch != self.assignment_epoch {
                self.compute_target(settings);
            }
        }
        expired
    }

    fn remove_member(&mut self, id: &str) {
        if self.members.remove(id).is_some() {
            self.target.remove(id);
            if self.members.is_empty() {
                self.shutdown_requested_by = None;
                self.delay_until = None;
            }
            self.bump();
        }
    }

    fn bump(&mut self) {
        self.epoch += 1;
        self.epoch_dirty = true;
    }

    /// Handles one StreamsGroupHeartbeat.
    pub fn heartbeat(
        &mut self,
        hb: StreamsHeartbeat,
        topics: &dyn Topics,
        settings: &StreamsSettings,
        now: i64,
    ) -> Result<StreamsHeartbeatOk, HeartbeatError> {
        validate(&hb)?;
        match hb.member_epoch {
            LEAVE_EPOCH | LEAVE_STATIC_EPOCH => self.leave(&hb),
            0 => self.join(hb, topics, settings, now),
            _ => self.beat(hb, topics, settings, now, false),
        }
    }

    fn leave(&mut self, hb: &StreamsHeartbeat) -> Result<StreamsHeartbeatOk, HeartbeatError> {
        if hb.shutdown_application && !self.members.is_empty() {
            self.shutdown_requested_by
                .get_or_insert_with(|| hb.member_id.clone());
        }
        if let Some(instance) = &hb.instance_id {
            let Some(m) = self
                .members
                .values_mut()
                .find(|m| m.instance_id.as_ref() == Some(instance))
            else {
                return Err((
                    ResponseError::UnknownMemberId,
                    format!("Instance id {instance} is unknown."),
                ));
            };
            if m.id != hb.member_id {
                return Err((
                    ResponseError::FencedInstanceId,
                    format!(
                        "Static member {} with instance id {instance} was fenced by member {}.",
                        hb.member_id, m.id
                    ),
                ));
            }
            if hb.member_epoch == LEAVE_STATIC_EPOCH {
                // A static member keeps its tasks until its session ends
                // or it comes back.
                m.epoch = LEAVE_STATIC_EPOCH;
                m.pending_revocation = TaskSet::default();
                m.revoke_deadline = None;
            } else {
                self.remove_member(&hb.member_id);
            }
        } else if self.members.contains_key(&hb.member_id) {
            self.remove_member(&hb.member_id);
        } else {
            return Err(unknown_member(&hb.group_id, &hb.member_id));
        }
        Ok(StreamsHeartbeatOk {
            member_id: hb.member_id.clone(),
            member_epoch: hb.member_epoch,
            assignment: None,
            status: Vec::new(),
            endpoint_epoch: self.endpoint_epoch,
            endpoints: None,
            to_create: Vec::new(),
        })
    }

    fn join(
        &mut self,
        hb: StreamsHeartbeat,
        topics: &dyn Topics,
        settings: &StreamsSettings,
        now: i64,
    ) -> Result<StreamsHeartbeatOk, HeartbeatError> {
        let topology = hb.topology.as_ref().expect("validated: set on join");
        match &self.topology {
            // Kafka keeps a group's topology until the group goes: an
            // older one is stale (STALE_TOPOLOGY), any other difference an
            // error.
            Some(cur) if cur.epoch <= topology.epoch && cur != topology => {
                return Err(invalid("Topology updates are not supported yet."));
            }
            Some(_) => {}
            // A topology that can never resolve is refused before it is
            // kept.
            None => {
                configure(topology, topics)?;
            }
        }
        let mut inherited = None;
        if let Some(instance) = &hb.instance_id {
            let holder = self
                .members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance) && m.id != hb.member_id)
                .map(|m| (m.id.clone(), m.epoch));
            match holder {
                Some((old, epoch)) if epoch != LEAVE_STATIC_EPOCH => {
                    return Err((
                        ResponseError::UnreleasedInstanceId,
                        format!(
                            "Static member {} with instance id {instance} cannot join the group because the instance id is owned by {old} member.",
                            hb.member_id
                        ),
                    ));
                }
                // The static member comes back under a new id: it takes
                // over its old self's tasks and target.
                Some((old, _)) => {
                    inherited = self.members.remove(&old);
                    if let Some(t) = self.target.remove(&old) {
                        self.target.insert(hb.member_id.clone(), t);
                    }
                }
                None => {}
            }
        }
        let was_empty = self.members.is_empty();
        match self.members.get_mut(&hb.member_id) {
            Some(m) => {
                // A known member rejoins: it has let go of everything.
                m.assigned = TaskSet::default();
                m.pending_revocation = TaskSet::default();
                m.active_epochs.clear();
                m.state = MemberState::Stable;
                m.revoke_deadline = None;
                m.previous_epoch = m.epoch;
                m.epoch = 0;
            }
            None => {
                let m = match inherited {
                    Some(mut old) => {
                        old.id = hb.member_id.clone();
                        old.previous_epoch = old.epoch;
                        old.epoch = 0;
                        old.state = MemberState::Stable;
                        old
                    }
                    None => {
                        if self.members.len() >= settings.max_size {
                            return Err((
                                ResponseError::GroupMaxSizeReached,
                                format!(
                                    "The streams group has reached its maximum capacity of {} members.",
                                    settings.max_size
                                ),
                            ));
                        }
                        StreamsMember::new(&hb.member_id)
                    }
                };
                self.members.insert(hb.member_id.clone(), m);
            }
        }
        if was_empty && settings.initial_rebalance_delay_ms > 0 && self.delay_until.is_none() {
            self.delay_until = Some(now + settings.initial_rebalance_delay_ms);
        }
        self.beat(hb, topics, settings, now, true)
    }

    /// A heartbeat of a member that is in the group (`joined`: it just
    /// joined): updates it, bumps the epoch once if anything changed, moves
    /// the target if needed, reconciles the member.
    fn beat(
        &mut self,
        hb: StreamsHeartbeat,
        topics: &dyn Topics,
        settings: &StreamsSettings,
        now: i64,
        joined: bool,
    ) -> Result<StreamsHeartbeatOk, HeartbeatError> {
        let Some(m) = self.members.get_mut(&hb.member_id) else {
            return Err(unknown_member(&hb.group_id, &hb.member_id));
        };
        if hb.member_epoch > m.epoch {
            return Err(fenced("greater", hb.member_epoch, m.epoch));
        }
        if hb.member_epoch < m.epoch {
            // The response that moved the member on may have been lost: the
            // previous epoch is fine if the member owns no more than it has.
            let within = |owned: &Option<Tasks>, have: &Tasks| {
                owned.as_ref().is_some_and(|o| is_subset(o, have))
            };
            let subset = within(&hb.active, &m.assigned.active)
                && within(&hb.standby, &m.assigned.standby)
                && within(&hb.warmup, &m.assigned.warmup);
            if hb.member_epoch != m.previous_epoch || !subset {
                return Err(fenced("smaller", hb.member_epoch, m.epoch));
            }
        }
        let mut changed = joined;
        let mut endpoint_changed = false;
        m.last_heartbeat = now;
        if hb.rebalance_timeout_ms != -1 {
            m.rebalance_timeout_ms = hb.rebalance_timeout_ms;
        }
        if hb.instance_id.is_some() {
            m.instance_id = hb.instance_id;
        }
        if hb.rack_id.is_some() && hb.rack_id != m.rack_id {
            m.rack_id = hb.rack_id;
            changed = true;
        }
        m.client_id = hb.client_id;
        m.client_host = hb.client_host;
        if let Some(p) = hb.process_id {
            if p != m.process_id {
                m.process_id = p;
                changed = true;
            }
        }
        // On a join the endpoint is set (none clears it); later only a
        // new one changes it.
        if (joined || hb.user_endpoint.is_some()) && hb.user_endpoint != m.user_endpoint {
            m.user_endpoint = hb.user_endpoint;
            changed = true;
            endpoint_changed = true;
        }
        if let Some(tags) = hb.client_tags {
            let tags: BTreeMap<String, String> = tags.into_iter().collect();
            if tags != m.client_tags {
                m.client_tags = tags;
                changed = true;
            }
        }
        if let Some(offsets) = hb.task_offsets {
            m.task_offsets = offsets.into_iter().map(|(s, p, o)| ((s, p), o)).collect();
        }
        if let Some(offsets) = hb.task_end_offsets {
            m.task_end_offsets = offsets.into_iter().map(|(s, p, o)| ((s, p), o)).collect();
        }
        if let Some(t) = hb.topology {
            if t.epoch != m.topology_epoch {
                m.topology_epoch = t.epoch;
                changed = true;
            }
            if self.topology.is_none() {
                self.topology = Some(t);
                self.partition_metadata.clear();
                changed = true;
            }
        }
        if hb.shutdown_application {
            self.shutdown_requested_by
                .get_or_insert_with(|| hb.member_id.clone());
        }
        if self.standby_replicas != Some(settings.num_standby_replicas) {
            self.standby_replicas = Some(settings.num_standby_replicas);
            changed = true;
        }
        let metadata = self.partition_metadata(topics);
        if metadata != self.partition_metadata {
            self.partition_metadata = metadata;
            changed = true;
        }
        if changed {
            self.bump();
            self.configured = match &self.topology {
                Some(t) => configure(t, topics)?,
                None => Configured::default(),
            };
        }
        if self.configured.problem.is_none() {
            for owned in [&hb.active, &hb.standby, &hb.warmup].into_iter().flatten() {
                self.check_tasks_exist(owned)?;
            }
        }
        if self.delay_until.is_some_and(|d| d <= now) {
            self.delay_until = None;
        }
        let delayed = self.delay_until.is_some();
        if !delayed && self.epoch != self.assignment_epoch {
            self.compute_target(settings);
        }
        let before = self.members[&hb.member_id].assigned.clone();
        self.reconcile(&hb.member_id, &hb.active, &hb.standby, &hb.warmup, now);
        let m = &self.members[&hb.member_id];
        let moved = m.assigned != before;
        if endpoint_changed || (moved && m.user_endpoint.is_some()) {
            self.endpoint_epoch += 1;
        }
        let mut status = Vec::new();
        if let Some(t) = &self.topology {
            if m.topology_epoch < t.epoch {
                status.push((
                    Status::StaleTopology,
                    format!(
                        "The member's topology epoch {} is behind the group's topology epoch {}.",
                        m.topology_epoch, t.epoch
                    ),
                ));
            }
        }
        if delayed {
            status.push((
                Status::AssignmentDelayed,
                "Assignment delayed due to the configured initial rebalance delay.".to_string(),
            ));
        }
        if let Some(p) = &self.configured.problem {
            status.push(p.clone());
        }
        if let Some(by) = &self.shutdown_requested_by {
            status.push((
                Status::ShutdownApplication,
                format!("Streams group member {by} encountered a fatal error and requested a shutdown for the entire application."),
            ));
        }
        let endpoints = (hb.endpoint_epoch != self.endpoint_epoch).then(|| self.endpoints());
        Ok(StreamsHeartbeatOk {
            member_id: m.id.clone(),
            member_epoch: m.epoch,
            assignment: (joined || moved).then(|| m.assigned.clone()),
            status,
            endpoint_epoch: self.endpoint_epoch,
            endpoints,
            to_create: self.configured.to_create.clone(),
        })
    }

    /// Tasks a member says it owns must exist in the configured topology.
    fn check_tasks_exist(&self, owned: &Tasks) -> Result<(), HeartbeatError> {
        for (s, ps) in owned {
            let Some(&n) = self.configured.tasks.get(s) else {
                return Err(invalid(&format!(
                    "Subtopology {s} does not exist in the topology."
                )));
            };
            if let Some(p) = ps.iter().find(|p| **p < 0 || **p >= n) {
                return Err(invalid(&format!(
                    "Task {p} for subtopology {s} is invalid. Number of tasks for this subtopology: {n}"
                )));
            }
        }
        Ok(())
    }

    /// Partition counts of every topic the topology names that exists.
    fn partition_metadata(&self, topics: &dyn Topics) -> BTreeMap<String, i32> {
        let Some(t) = &self.topology else {
            return BTreeMap::new();
        };
        let mut names: BTreeSet<&str> = BTreeSet::new();
        for s in &t.subtopologies {
            names.extend(s.inputs());
            names.extend(s.changelogs.iter().map(|r| r.name.as_str()));
        }
        names
            .into_iter()
            .filter_map(|n| {
                let (_, p) = topics.lookup(n)?;
                Some((n.to_string(), p))
            })
            .collect()
    }

    fn compute_target(&mut self, settings: &StreamsSettings) {
        let members: BTreeMap<String, String> = self
            .members
            .values()
            .map(|m| (m.id.clone(), m.process_id.clone()))
            .collect();
        // What members own now is what stickiness keeps.
        let current: BTreeMap<String, TaskSet> = self
            .members
            .values()
            .map(|m| (m.id.clone(), m.assigned.clone()))
            .collect();
        self.target = streams_assignor::assign(
            &members,
            &self.configured.tasks,
            &self.configured.stateful,
            &current,
            settings.num_standby_replicas.max(0) as usize,
        );
        self.assignment_epoch = self.epoch;
    }

    /// What keeps a task from a member of `process` (Kafka's streams
    /// `CurrentAssignmentBuilder`): an active task while any other member
    /// owns it as active, or another member of the process holds it at
    /// all; a standby or warm-up task while another member of the process
    /// holds it at all.
    fn held_by_others(&self, member_id: &str, process: &str) -> (Tasks, Tasks) {
        let mut active = Tasks::new();
        let mut standby = Tasks::new();
        let add = |into: &mut Tasks, t: &Tasks| {
            for (s, ps) in t {
                into.entry(s.clone()).or_default().extend(ps);
            }
        };
        for m in self.members.values().filter(|m| m.id != member_id) {
            for a in [&m.assigned, &m.pending_revocation] {
                add(&mut active, &a.active);
                if m.process_id == process {
                    for t in [&a.active, &a.standby, &a.warmup] {
                        add(&mut active, t);
                        add(&mut standby, t);
                    }
                }
            }
        }
        (active, standby)
    }

    /// Moves a member towards its target assignment. `None` owned tasks:
    /// unchanged since the last heartbeat.
    fn reconcile(
        &mut self,
        member_id: &str,
        owned_active: &Option<Tasks>,
        owned_standby: &Option<Tasks>,
        owned_warmup: &Option<Tasks>,
        now: i64,
    ) {
        let target_epoch = self.assignment_epoch;
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let process = self.members[member_id].process_id.clone();
        let (blocked_active, blocked_standby) = self.held_by_others(member_id, &process);
        let m = self
            .members
            .get_mut(member_id)
            .expect("reconciled member exists");
        if m.epoch == LEAVE_STATIC_EPOCH {
            return;
        }
        let still_owns = |pending: &TaskSet| {
            [
                (owned_active, &pending.active),
                (owned_standby, &pending.standby),
                (owned_warmup, &pending.warmup),
            ]
            .iter()
            .any(|(owned, p)| match owned {
                None => count(p) > 0,
                Some(o) => overlaps(o, p),
            })
        };
        let progress = match m.state {
            MemberState::Stable => m.epoch != target_epoch,
            MemberState::UnrevokedTasks => !still_owns(&m.pending_revocation),
            MemberState::UnreleasedTasks => true,
        };
        if !progress {
            return;
        }
        let mut keep = TaskSet::default();
        let mut revoke = TaskSet::default();
        let mut add = TaskSet::default();
        let mut unreleased = false;
        let kinds = [
            (
                &m.assigned.active,
                &target.active,
                &mut keep.active,
                &mut revoke.active,
                &mut add.active,
                &blocked_active,
            ),
            (
                &m.assigned.standby,
                &target.standby,
                &mut keep.standby,
                &mut revoke.standby,
                &mut add.standby,
                &blocked_standby,
            ),
            (
                &m.assigned.warmup,
                &target.warmup,
                &mut keep.warmup,
                &mut revoke.warmup,
                &mut add.warmup,
                &blocked_standby,
            ),
        ];
        for (have, want, keep, revoke, add, blocked) in kinds {
            let subs: BTreeSet<&String> = have.keys().chain(want.keys()).collect();
            for s in subs {
                let empty = BTreeSet::new();
                let h = have.get(s).unwrap_or(&empty);
                let w = want.get(s).unwrap_or(&empty);
                for &p in h {
                    let slot = if w.contains(&p) {
                        &mut *keep
                    } else {
                        &mut *revoke
                    };
                    slot.entry(s.clone()).or_default().insert(p);
                }
                for &p in w.difference(h) {
                    if has(blocked, s, p) {
                        unreleased = true;
                    } else {
                        add.entry(s.clone()).or_default().insert(p);
                    }
                }
            }
        }
        if !revoke.is_empty() && still_owns(&revoke) {
            // Revoke first, at the current epoch.
            m.state = MemberState::UnrevokedTasks;
            m.assigned = keep;
            m.pending_revocation = revoke;
            if m.revoke_deadline.is_none() {
                m.revoke_deadline = Some(now + i64::from(m.rebalance_timeout_ms.max(0)));
            }
            return;
        }
        for (s, ps) in &add.active {
            for p in ps {
                m.active_epochs.insert((s.clone(), *p), target_epoch);
            }
        }
        for (k, a) in [
            (&mut keep.active, add.active),
            (&mut keep.standby, add.standby),
            (&mut keep.warmup, add.warmup),
        ] {
            for (s, ps) in a {
                k.entry(s).or_default().extend(ps);
            }
        }
        m.state = if unreleased {
            MemberState::UnreleasedTasks
        } else {
            MemberState::Stable
        };
        m.active_epochs.retain(|(s, p), _| has(&keep.active, s, *p));
        m.assigned = keep;
        m.pending_revocation = TaskSet::default();
        m.revoke_deadline = None;
        if m.epoch != target_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = target_epoch;
        }
    }

    /// Every member with an endpoint, and the input partitions of its
    /// active and standby (and warm-up) tasks.
    fn endpoints(&self) -> Vec<EndpointPartitions> {
        let partitions_of = |tasks: &[&Tasks]| -> Vec<(String, Vec<i32>)> {
            let mut by_topic: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
            for t in tasks {
                for (s, ps) in *t {
                    for topic in self.configured.inputs.get(s).into_iter().flatten() {
                        let n = self.partition_metadata.get(topic).copied().unwrap_or(0);
                        by_topic
                            .entry(topic.clone())
                            .or_default()
                            .extend(ps.iter().filter(|p| **p < n));
                    }
                }
            }
            by_topic
                .into_iter()
                .map(|(t, ps)| (t, ps.into_iter().collect()))
                .collect()
        };
        self.members
            .values()
            .filter_map(|m| {
                let (host, port) = m.user_endpoint.clone()?;
                Some(EndpointPartitions {
                    host,
                    port,
                    active: partitions_of(&[&m.assigned.active]),
                    standby: partitions_of(&[&m.assigned.standby, &m.assigned.warmup]),
                })
            })
            .collect()
    }
}

/// Kafka's topics that a topology may not use.
const INTERNAL_TOPICS: [&str; 3] = [
    "__consumer_offsets",
    "__transaction_state",
    "__share_group_state",
];

/// Kafka's request checks (`GroupCoordinatorService` and
/// `KafkaApis.handleStreamsGroupHeartbeat`), with their messages.
fn validate(hb: &StreamsHeartbeat) -> Result<(), HeartbeatError> {
    if let Some(t) = &hb.topology {
        if t.subtopologies.iter().any(|s| !s.source_regex.is_empty()) {
            return Err(invalid(
                "Regular expressions for source topics are not supported yet.",
            ));
        }
    }
    let blank = |s: &str| s.trim().is_empty();
    if blank(&hb.member_id) {
        return Err(invalid("MemberId can't be empty."));
    }
    if hb.instance_id.as_deref().is_some_and(blank) {
        return Err(invalid("InstanceId can't be empty."));
    }
    if hb.rack_id.as_deref().is_some_and(blank) {
        return Err(invalid("RackId can't be empty."));
    }
    if hb.member_epoch == 0 {
        if hb.rebalance_timeout_ms == -1 {
            return Err(invalid(
                "RebalanceTimeoutMs must be provided in first request.",
            ));
        }
        for (name, tasks) in [
            ("ActiveTasks", &hb.active),
            ("StandbyTasks", &hb.standby),
            ("WarmupTasks", &hb.warmup),
        ] {
            if tasks.as_ref().is_none_or(|t| count(t) > 0) {
                return Err(invalid(&format!("{name} must be empty when (re-)joining.")));
            }
        }
        let Some(t) = &hb.topology else {
            return Err(invalid("Topology must be non-null when (re-)joining."));
        };
        for s in &t.subtopologies {
            if let Some(c) = s.changelogs.iter().find(|c| c.partitions != 0) {
                return Err(invalid_topology(format!(
                    "Changelog topic {} must have an undefined partition count, but it is set to {}.",
                    c.name, c.partitions
                )));
            }
        }
    } else if hb.member_epoch == LEAVE_STATIC_EPOCH && hb.instance_id.is_none() {
        return Err(invalid("InstanceId can't be null."));
    } else if hb.member_epoch < LEAVE_STATIC_EPOCH {
        return Err(invalid(&format!(
            "MemberEpoch is {}, but must be greater than or equal to -2.",
            hb.member_epoch
        )));
    }
    let nulls = [&hb.active, &hb.standby, &hb.warmup]
        .iter()
        .filter(|t| t.is_none())
        .count();
    if nulls != 0 && nulls != 3 {
        return Err(invalid(
            "If one task-type is non-null, all must be non-null.",
        ));
    }
    if hb.member_epoch != 0 && hb.topology.is_some() {
        return Err(invalid("Topology can only be provided when (re-)joining."));
    }
    if let Some(t) = &hb.topology {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        for s in &t.subtopologies {
            names.extend(s.source_topics.iter().map(String::as_str));
            names.extend(s.repartition_sinks.iter().map(String::as_str));
            names.extend(s.repartition_sources.iter().map(|r| r.name.as_str()));
            names.extend(s.changelogs.iter().map(|r| r.name.as_str()));
        }
        let internal: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| INTERNAL_TOPICS.contains(n))
            .collect();
        if !internal.is_empty() {
            return Err(invalid_topology(format!(
                "Use of Kafka internal topics {} in a Kafka Streams topology is prohibited.",
                internal.join(",")
            )));
        }
        let bad: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| crate::metadata::validate_topic_name(n).is_err())
            .collect();
        if !bad.is_empty() {
            return Err(invalid_topology(format!(
                "Topic names {} are not valid topic names.",
                bad.join(",")
            )));
        }
        let mut ids = BTreeSet::new();
        for s in &t.subtopologies {
            if !ids.insert(&s.id) {
                return Err(invalid(&format!(
                    "Topology contains subtopology {} more than once.",
                    s.id
                )));
            }
            for g in &s.copartition_groups {
                let ok = g
                    .source_topics
                    .iter()
                    .all(|&i| (i as usize) < s.source_topics.len())
                    && g.source_regex.is_empty()
                    && g.repartition_sources
                        .iter()
                        .all(|&i| (i as usize) < s.repartition_sources.len());
                if !ok {
                    return Err(invalid(&format!(
                        "Copartition group of subtopology {} refers to a topic index out of range.",
                        s.id
                    )));
                }
            }
        }
    }
    Ok(())
}

fn unknown_member(group: &str, id: &str) -> HeartbeatError {
    (
        ResponseError::UnknownMemberId,
        format!("Member {id} is not a member of group {group}."),
    )
}

fn fenced(which: &str, got: i32, expected: i32) -> HeartbeatError {
    (
        ResponseError::FencedMemberEpoch,
        format!(
            "The streams group member has a {which} member epoch ({got}) than the one known by the group coordinator ({expected}). The member must abandon all its partitions and rejoin."
        ),
    )
}

fn is_subset(small: &Tasks, big: &Tasks) -> bool {
    small
        .iter()
        .all(|(s, ps)| ps.is_empty() || big.get(s).is_some_and(|b| ps.is_subset(b)))
}

#[cfg(test)]
mod tests;
