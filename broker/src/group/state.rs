//! The classic consumer-group state machine, as Kafka defines it: Empty,
//! PreparingRebalance, CompletingRebalance, Stable, Dead; generations,
//! protocol selection, the member-id-required first join, static
//! membership, session / rebalance timeouts and the initial rebalance delay.
//!
//! Pure logic: no I/O, no timers, no await. Every call takes `now` (ms) from
//! the caller, so tests drive it with a simulated clock; the coordinator
//! calls `tick` when `next_deadline` passes. Calls return the replies owed
//! to members whose JoinGroup/SyncGroup is parked, and whether the group
//! must be written to `__consumer_offsets` before those replies go out.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::ResponseError;

use super::consumer::ConsumerGroup;
use super::records::{GroupValue, OffsetValue, ShareStateValue, StoredMember};
use super::share::ShareGroup;
use super::streams::StreamsGroup;

/// Limits and timings from the broker config.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub initial_rebalance_delay_ms: i64,
    pub max_size: usize,
    /// Largest total of a member's protocol metadata.
    pub max_member_metadata_bytes: usize,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            min_session_timeout_ms: 1000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 100,
            max_size: 10_000,
            max_member_metadata_bytes: 1 << 20,
        }
    }
}

/// How long a brand-new member that never completed a join is kept while
/// the group waits for it (Kafka's `NewMemberJoinTimeoutMs`).
const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka tools print.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// `(protocol name, metadata)` in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub awaiting_join: bool,
    pub awaiting_sync: bool,
    /// Joined but never completed a rebalance.
    pub is_new: bool,
    pub last_heartbeat: i64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, other: &[(String, Bytes)]) -> bool {
        self.protocols == other
    }

    /// Kafka's `shouldKeepAlive`: parked joins and syncs keep a member.
    fn alive_at(&self, now: i64) -> bool {
        if self.awaiting_join {
            return !self.is_new || self.last_heartbeat + NEW_MEMBER_JOIN_TIMEOUT_MS > now;
        }
        self.awaiting_sync || self.last_heartbeat + self.session_timeout_ms as i64 > now
    }
}

/// A JoinGroup as the state machine sees it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: an unknown member first gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinMember>,
}

impl JoinResult {
    pub fn error(err: ResponseError, member_id: &str) -> Self {
        Self {
            error: Some(err),
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(err: ResponseError) -> Self {
        Self {
            error: Some(err),
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }
    }
}

/// A reply owed to a member whose request is parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Join(String, JoinResult),
    Sync(String, SyncResult),
}

/// What a call did besides its own answer.
#[derive(Debug, Default)]
pub struct Effects {
    pub replies: Vec<Reply>,
    /// The group changed in a way that must be written (and made durable)
    /// before `replies` are sent.
    pub persist: bool,
}

impl Effects {
    fn merge(&mut self, other: Effects) {
        self.replies.extend(other.replies);
        self.persist |= other.persist;
    }
}

/// The answer to a JoinGroup or SyncGroup: now, or when the member's reply
/// shows up in some later `Effects` (the caller parks on its member id).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    Done(T),
    Wait(String),
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub state_since: i64,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// Members in join order (the first is the default leader).
    pub members: BTreeMap<String, Member>,
    join_order: Vec<String>,
    pub static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with their deadline.
    pub pending_members: HashMap<String, i64>,
    join_deadline: Option<i64>,
    /// The initial delay may extend the join phase up to this point.
    join_deadline_max: Option<i64>,
    initial_delay: bool,
    sync_deadline: Option<i64>,
    pub offsets: BTreeMap<(String, i32), OffsetValue>,
    /// Set when the group uses the KIP-848 consumer protocol: its members
    /// live there, and the classic fields stay empty.
    pub consumer: Option<ConsumerGroup>,
    /// Set when the group is a KIP-932 share group: its members live
    /// there, and the classic fields stay empty.
    pub share: Option<ShareGroup>,
    /// Set when the group is a KIP-1071 streams group: its members live
    /// there, and the classic fields stay empty.
    pub streams: Option<StreamsGroup>,
    /// A share group's partition states (start offset, record states), by
    /// topic id and partition, as their leaders last wrote them.
    pub share_states: BTreeMap<(uuid::Uuid, i32), ShareStateValue>,
}

impl Group {
    pub fn new(id: &str, now: i64) -> Self {
        Self {
            id: id.to_string(),
            state: GroupState::Empty,
            state_since: now,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            join_order: Vec::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            join_deadline: None,
            join_deadline_max: None,
            initial_delay: false,
            sync_deadline: None,
            offsets: BTreeMap::new(),
            consumer: None,
            share: None,
            streams: None,
            share_states: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
            && self.pending_members.is_empty()
            && self.consumer.as_ref().is_none_or(ConsumerGroup::is_empty)
            && self.share.as_ref().is_none_or(|s| s.members.is_empty())
            && self.streams.as_ref().is_none_or(|s| s.members.is_empty())
    }

    /// Keeps the classic state in step with the members of a group of the
    /// newer protocols (`empty`: whether it has none; `None`: the group is
    /// not of that type), which is what offset expiry and ListGroups
    /// filters read: Stable while it has members, Empty (since `now`) once
    /// it has none.
    fn sync_typed_state(&mut self, protocol: &str, empty: Option<bool>, now: i64) {
        let Some(empty) = empty else { return };
        self.protocol_type = Some(protocol.to_string());
        let state = if empty {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        if self.state != state {
            self.transition(state, now);
        }
    }

    /// `sync_typed_state` for a KIP-848 consumer group.
    pub fn sync_consumer_state(&mut self, now: i64) {
        let empty = self.consumer.as_ref().map(ConsumerGroup::is_empty);
        self.sync_typed_state("consumer", empty, now);
    }

    /// `sync_typed_state` for a share group.
    pub fn sync_share_state(&mut self, now: i64) {
        let empty = self.share.as_ref().map(|s| s.members.is_empty());
        self.sync_typed_state("share", empty, now);
    }

    /// `sync_typed_state` for a streams group.
    pub fn sync_streams_state(&mut self, now: i64) {
        let empty = self.streams.as_ref().map(|s| s.members.is_empty());
        self.sync_typed_state("streams", empty, now);
    }

    /// The committed offsets `offsets.retention` expires at `now` (Kafka's
    /// KIP-211): those of a group that uses the group protocol once it has
    /// been Empty for `retention_ms`; those of a standalone group (offsets
    /// committed without joining) each `retention_ms` after its commit.
    /// A group with members keeps every offset.
    pub fn expired_offsets(&self, retention_ms: i64, now: i64) -> Vec<(String, i32)> {
        if !self.is_empty() || self.state != GroupState::Empty {
            return Vec::new();
        }
        let limit = now.saturating_sub(retention_ms);
        let group_expired = self.protocol_type.is_some() && self.state_since <= limit;
        self.offsets
            .iter()
            .filter(|(_, v)| {
                group_expired || (self.protocol_type.is_none() && v.commit_timestamp <= limit)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn transition(&mut self, state: GroupState, now: i64) {
        self.state = state;
        self.state_since = now;
    }

    /// The earliest time `tick` has something to do.
    pub fn next_deadline(&self) -> Option<i64> {
        let members = self.members.values().filter_map(|m| {
            if m.awaiting_sync {
                None
            } else if m.awaiting_join {
                m.is_new
                    .then_some(m.last_heartbeat + NEW_MEMBER_JOIN_TIMEOUT_MS)
            } else {
                Some(m.last_heartbeat + m.session_timeout_ms as i64)
            }
        });
        members
            .chain(self.pending_members.values().copied())
            .chain(self.join_deadline)
            .chain(self.sync_deadline)
            .min()
    }

    fn max_rebalance_timeout(&self) -> i64 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms as i64)
            .max()
            .unwrap_or(0)
    }

    /// Protocols every member supports, in the first member's preference.
    fn candidate_protocols(&self) -> Vec<String> {
        let Some(first) = self.join_order.first().and_then(|id| self.members.get(id)) else {
            return Vec::new();
        };
        first
            .protocols
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == n))
            })
            .collect()
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && self
                .candidate_protocols()
                .iter()
                .any(|c| protocols.iter().any(|(p, _)| p == c))
    }

    /// Kafka's vote: each member picks its most preferred candidate; the
    /// candidate with most votes wins (ties: the first member's preference).
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((p, _)) = m.protocols.iter().find(|(p, _)| candidates.contains(p)) {
                *votes.entry(p.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        candidates
            .into_iter()
            .find(|c| votes.get(c.as_str()) == Some(&best))
    }

    // ---- JoinGroup ----

    pub fn join(
        &mut self,
        req: JoinRequest,
        settings: &GroupSettings,
        now: i64,
    ) -> (Outcome<JoinResult>, Effects) {
        let member_id = req.member_id.clone();
        let fail = |e| {
            (
                Outcome::Done(JoinResult::error(e, &member_id)),
                Effects::default(),
            )
        };
        if req.session_timeout_ms < settings.min_session_timeout_ms
            || req.session_timeout_ms > settings.max_session_timeout_ms
        {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        let metadata_bytes: usize = req.protocols.iter().map(|(n, m)| n.len() + m.len()).sum();
        if metadata_bytes > settings.max_member_metadata_bytes {
            return fail(ResponseError::InvalidRequest);
        }
        if self.state == GroupState::Dead {
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        if !self.supports(&req.protocol_type, &req.protocols) {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        if req.member_id.is_empty() {
            return self.join_unknown(req, settings, now);
        }
        self.join_known(req, settings, now)
    }

    fn join_unknown(
        &mut self,
        req: JoinRequest,
        settings: &GroupSettings,
        now: i64,
    ) -> (Outcome<JoinResult>, Effects) {
        if let Some(instance) = req.instance_id.clone() {
            if let Some(old) = self.static_members.get(&instance).cloned() {
                return self.replace_static_member(&old, req, settings, now);
            }
        }
        if self.members.len() + self.pending_members.len() >= settings.max_size {
            let r = JoinResult::error(ResponseError::GroupMaxSizeReached, "");
            return (Outcome::Done(r), Effects::default());
        }
        let prefix = req.instance_id.as_deref().unwrap_or(&req.client_id);
        let new_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
        if req.require_known_member_id && req.instance_id.is_none() {
            self.pending_members
                .insert(new_id.clone(), now + req.session_timeout_ms as i64);
            let r = JoinResult::error(ResponseError::MemberIdRequired, &new_id);
            return (Outcome::Done(r), Effects::default());
        }
        self.add_member_and_rebalance(new_id, req, settings, now)
    }

    fn join_known(
        &mut self,
        req: JoinRequest,
        settings: &GroupSettings,
        now: i64,
    ) -> (Outcome<JoinResult>, Effects) {
        let id = req.member_id.clone();
        if self.pending_members.remove(&id).is_some() {
            return self.add_member_and_rebalance(id, req, settings, now);
        }
        if let Err(e) = self.check_member(&id, req.instance_id.as_deref()) {
            return (Outcome::Done(JoinResult::error(e, &id)), Effects::default());
        }
        let (is_leader, same) = {
            let m = &self.members[&id];
            (
                self.leader.as_deref() == Some(id.as_str()),
                m.same_protocols(&req.protocols),
            )
        };
        match self.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(req, settings, now),
            GroupState::CompletingRebalance if same => {
                // The member lost our answer: send it again.
                let r = self.join_result_for(&id);
                (Outcome::Done(r), Effects::default())
            }
            GroupState::Stable if same && !is_leader => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.last_heartbeat = now;
                }
                let r = self.join_result_for(&id);
                (Outcome::Done(r), Effects::default())
            }
            _ => self.update_member_and_rebalance(req, settings, now),
        }
    }

    /// A static member came back with a new member id: the old id is fenced
    /// and its assignment carries over to the new one.
    fn replace_static_member(
        &mut self,
        old_id: &str,
        req: JoinRequest,
        settings: &GroupSettings,
        now: i64,
    ) -> (Outcome<JoinResult>, Effects) {
        let instance = req.instance_id.clone().unwrap_or_default();
        let new_id = format!("{instance}-{}", uuid::Uuid::new_v4());
        let Some(mut m) = self.members.remove(old_id) else {
            self.static_members.remove(&instance);
            return self.add_member_and_rebalance(new_id, req, settings, now);
        };
        let mut fx = Effects::default();
        if m.awaiting_join {
            let r = JoinResult::error(ResponseError::FencedInstanceId, old_id);
            fx.replies.push(Reply::Join(old_id.to_string(), r));
        }
        if m.awaiting_sync {
            let r = SyncResult::error(ResponseError::FencedInstanceId);
            fx.replies.push(Reply::Sync(old_id.to_string(), r));
        }
        let old_protocols = std::mem::replace(&mut m.protocols, req.protocols.clone());
        m.id = new_id.clone();
        m.awaiting_join = false;
        m.awaiting_sync = false;
        m.last_heartbeat = now;
        if let Some(pos) = self.join_order.iter().position(|x| x == old_id) {
            self.join_order[pos] = new_id.clone();
        }
        let old_leader = self.leader.clone();
        if old_leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.clone());
        }
        self.static_members.insert(instance, new_id.clone());
        self.members.insert(new_id.clone(), m);
        let mut req = req;
        req.member_id = new_id.clone();
        if self.state == GroupState::Stable {
            if self.select_protocol() == self.protocol {
                // Kafka: no rebalance when the group would keep its
                // protocol. The answer names the old leader id, so that a
                // returning leader does not take itself for the leader and
                // assign (a Stable group would not pass that assignment on).
                fx.persist = true;
                let mut r = self.join_result_for(&new_id);
                r.leader = old_leader.unwrap_or_default();
                r.members.clear();
                return (Outcome::Done(r), fx);
            }
            if let Some(m) = self.members.get_mut(&new_id) {
                m.protocols = old_protocols;
            }
        }
        let (out, more) = self.update_member_and_rebalance(req, settings, now);
        fx.merge(more);
        (out, fx)
    }

    fn add_member_and_rebalance(
        &mut self,
        id: String,
        req: JoinRequest,
        settings: &GroupSettings,
        now: i64,
    ) -> (Outcome<JoinResult>, Effects) {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(instance) = &req.instance_id {
            self.static_members.insert(instance.clone(), id.clone());
        }
        let member = Member {
            id: id.clone(),
            instance_id: req.instance_id,
            client_id: req.client_id,
            client_host: req.client_host,
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocols: req.protocols,
            assignment: Bytes::new(),
            awaiting_join: true,
            awaiting_sync: false,
            is_new: true,
            last_heartbeat: now,
        };
        self.members.insert(id.clone(), member);
        self.join_order.push(id.clone());
        let fx = self.maybe_prepare_rebalance(settings, now);
        self.extend_initial_delay(settings, now);
        let fx2 = self.try_complete_join(now);
        (Outcome::Wait(id), merged(fx, fx2))
    }

    fn update_member_and_rebalance(
        &mut self,
        req: JoinRequest,
        settings: &GroupSettings,
        now: i64,
    ) -> (Outcome<JoinResult>, Effects) {
        let id = req.member_id.clone();
        if let Some(m) = self.members.get_mut(&id) {
            m.protocols = req.protocols;
            m.session_timeout_ms = req.session_timeout_ms;
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            m.client_id = req.client_id;
            m.client_host = req.client_host;
            m.awaiting_join = true;
            m.last_heartbeat = now;
        }
        let fx = self.maybe_prepare_rebalance(settings, now);
        let fx2 = self.try_complete_join(now);
        (Outcome::Wait(id), merged(fx, fx2))
    }

    fn maybe_prepare_rebalance(&mut self, settings: &GroupSettings, now: i64) -> Effects {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty => {
                self.prepare_rebalance(settings, now)
            }
            _ => Effects::default(),
        }
    }

    fn prepare_rebalance(&mut self, settings: &GroupSettings, now: i64) -> Effects {
        let mut fx = Effects::default();
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if m.awaiting_sync {
                    m.awaiting_sync = false;
                    let r = SyncResult::error(ResponseError::RebalanceInProgress);
                    fx.replies.push(Reply::Sync(m.id.clone(), r));
                }
            }
        }
        let was_empty = self.state == GroupState::Empty;
        self.sync_deadline = None;
        self.transition(GroupState::PreparingRebalance, now);
        let timeout = self.max_rebalance_timeout();
        if was_empty && settings.initial_rebalance_delay_ms > 0 {
            self.initial_delay = true;
            self.join_deadline = Some(now + settings.initial_rebalance_delay_ms.min(timeout));
            self.join_deadline_max = Some(now + timeout);
        } else {
            self.initial_delay = false;
            self.join_deadline = Some(now + timeout);
            self.join_deadline_max = None;
        }
        fx
    }

    /// During the initial delay every new member pushes the end of the join
    /// phase out by the delay, up to the rebalance timeout.
    fn extend_initial_delay(&mut self, settings: &GroupSettings, now: i64) {
        if !self.initial_delay || self.state != GroupState::PreparingRebalance {
            return;
        }
        let max = self.join_deadline_max.unwrap_or(now);
        self.join_deadline = Some((now + settings.initial_rebalance_delay_ms).min(max));
    }

    fn all_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.awaiting_join)
    }

    fn try_complete_join(&mut self, now: i64) -> Effects {
        if self.state != GroupState::PreparingRebalance || self.initial_delay || !self.all_joined()
        {
            return Effects::default();
        }
        self.complete_join(now)
    }

    /// Ends the join phase: members that did not rejoin are dropped, a new
    /// generation starts, and every waiting member gets its JoinGroup answer.
    fn complete_join(&mut self, now: i64) -> Effects {
        let mut fx = Effects::default();
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join)
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.join_deadline = None;
        self.join_deadline_max = None;
        self.initial_delay = false;
        self.generation += 1;
        fx.persist = true;
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.transition(GroupState::Empty, now);
            return fx;
        }
        self.protocol = self.select_protocol();
        // The leader must be a current member (DESIGN.md section 10).
        let leader_ok = self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l));
        if !leader_ok {
            self.leader = self.join_order.first().cloned();
        }
        self.transition(GroupState::CompletingRebalance, now);
        self.sync_deadline = Some(now + self.max_rebalance_timeout());
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let r = self.join_result_for(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.awaiting_join = false;
                m.is_new = false;
                m.last_heartbeat = now;
            }
            fx.replies.push(Reply::Join(id, r));
        }
        fx
    }

    fn join_result_for(&self, id: &str) -> JoinResult {
        let is_leader = self.leader.as_deref() == Some(id);
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if is_leader {
            self.join_order
                .iter()
                .filter_map(|mid| self.members.get(mid))
                .map(|m| JoinMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: id.to_string(),
            members,
        }
    }

    fn remove_member(&mut self, id: &str) -> Option<Member> {
        let m = self.members.remove(id)?;
        self.join_order.retain(|x| x != id);
        if let Some(instance) = &m.instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(id) {
                self.static_members.remove(instance);
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = self.join_order.first().cloned();
        }
        Some(m)
    }

    /// The member exists and, for static members, the instance id maps to it.
    fn check_member(&self, id: &str, instance_id: Option<&str>) -> Result<(), ResponseError> {
        if let Some(instance) = instance_id {
            match self.static_members.get(instance) {
                Some(current) if current != id => return Err(ResponseError::FencedInstanceId),
                None if self.members.contains_key(id) => {}
                None => return Err(ResponseError::UnknownMemberId),
                _ => {}
            }
        }
        if !self.members.contains_key(id) {
            return Err(ResponseError::UnknownMemberId);
        }
        Ok(())
    }

    // ---- SyncGroup ----

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now: i64,
    ) -> (Outcome<SyncResult>, Effects) {
        let fail = |e| (Outcome::Done(SyncResult::error(e)), Effects::default());
        if self.state == GroupState::Dead {
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        if let Err(e) = self.check_member(member_id, instance_id) {
            return fail(e);
        }
        if generation != self.generation {
            return fail(ResponseError::IllegalGeneration);
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol.is_some_and(|p| Some(p) != self.protocol.as_deref())
        {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        match self.state {
            GroupState::Empty => fail(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                if let Some(m) = self.members.get_mut(member_id) {
                    m.last_heartbeat = now;
                }
                (
                    Outcome::Done(self.sync_result(member_id)),
                    Effects::default(),
                )
            }
            GroupState::CompletingRebalance => {
                if let Some(m) = self.members.get_mut(member_id) {
                    m.awaiting_sync = true;
                    m.last_heartbeat = now;
                }
                let mut fx = Effects::default();
                if self.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    fx = self.complete_sync(now);
                }
                (Outcome::Wait(member_id.to_string()), fx)
            }
            GroupState::Dead => fail(ResponseError::CoordinatorNotAvailable),
        }
    }

    fn complete_sync(&mut self, now: i64) -> Effects {
        let mut fx = Effects {
            persist: true,
            ..Effects::default()
        };
        self.sync_deadline = None;
        self.transition(GroupState::Stable, now);
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let waiting = self.members.get(&id).is_some_and(|m| m.awaiting_sync);
            if waiting {
                let r = self.sync_result(&id);
                if let Some(m) = self.members.get_mut(&id) {
                    m.awaiting_sync = false;
                    m.last_heartbeat = now;
                }
                fx.replies.push(Reply::Sync(id, r));
            }
        }
        fx
    }

    fn sync_result(&self, id: &str) -> SyncResult {
        SyncResult {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: self
                .members
                .get(id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    // ---- Heartbeat, LeaveGroup ----

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: i64,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if self.state == GroupState::Empty {
            return Err(ResponseError::UnknownMemberId);
        }
        self.check_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat = now;
        }
        if self.state == GroupState::PreparingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Removes one member (by member id, or by instance id for static
    /// members) and rebalances the rest.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        settings: &GroupSettings,
        now: i64,
    ) -> (Result<(), ResponseError>, Effects) {
        if self.state == GroupState::Dead {
            return (
                Err(ResponseError::CoordinatorNotAvailable),
                Effects::default(),
            );
        }
        let id = match instance_id {
            Some(instance) => match self.static_members.get(instance) {
                Some(current) if !member_id.is_empty() && current != member_id => {
                    return (Err(ResponseError::FencedInstanceId), Effects::default())
                }
                Some(current) => current.clone(),
                None => return (Err(ResponseError::UnknownMemberId), Effects::default()),
            },
            None => member_id.to_string(),
        };
        if self.pending_members.remove(&id).is_some() {
            let fx = self.try_complete_join(now);
            return (Ok(()), fx);
        }
        if !self.members.contains_key(&id) {
            return (Err(ResponseError::UnknownMemberId), Effects::default());
        }
        (Ok(()), self.drop_member(&id, settings, now))
    }

    /// A member left or expired: answer its parked request and rebalance.
    fn drop_member(&mut self, id: &str, settings: &GroupSettings, now: i64) -> Effects {
        let mut fx = Effects::default();
        let Some(m) = self.remove_member(id) else {
            return fx;
        };
        if m.awaiting_join {
            let r = JoinResult::error(ResponseError::UnknownMemberId, id);
            fx.replies.push(Reply::Join(id.to_string(), r));
        }
        if m.awaiting_sync {
            let r = SyncResult::error(ResponseError::UnknownMemberId);
            fx.replies.push(Reply::Sync(id.to_string(), r));
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                fx.merge(self.prepare_rebalance(settings, now));
                if self.members.is_empty() {
                    fx.merge(self.complete_join(now));
                }
            }
            GroupState::PreparingRebalance => fx.merge(self.try_complete_join(now)),
            _ => {}
        }
        fx
    }

    /// The assignment just handed out could not be written: members get
    /// the error instead (see the coordinator) and the group rebalances,
    /// as Kafka does.
    pub fn assignment_not_persisted(&mut self, settings: &GroupSettings, now: i64) -> Effects {
        if self.state != GroupState::Stable {
            return Effects::default();
        }
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
        }
        self.prepare_rebalance(settings, now)
    }

    // ---- timers ----

    /// Applies every deadline that has passed by `now`.
    pub fn tick(&mut self, settings: &GroupSettings, now: i64) -> Effects {
        let mut fx = Effects::default();
        let expired: Vec<String> = self
            .pending_members
            .iter()
            .filter(|(_, &d)| d <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.pending_members.remove(&id);
            fx.merge(self.try_complete_join(now));
        }
        let dead: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.alive_at(now))
            .map(|m| m.id.clone())
            .collect();
        for id in dead {
            fx.merge(self.drop_member(&id, settings, now));
        }
        if self.state == GroupState::PreparingRebalance
            && self.join_deadline.is_some_and(|d| d <= now)
        {
            fx.merge(self.complete_join(now));
        }
        if self.state == GroupState::CompletingRebalance
            && self.sync_deadline.is_some_and(|d| d <= now)
        {
            // Members that never sent SyncGroup are dropped (Kafka's pending
            // sync timeout), and the rest rebalance.
            let lazy: Vec<String> = self
                .members
                .values()
                .filter(|m| !m.awaiting_sync)
                .map(|m| m.id.clone())
                .collect();
            for id in lazy {
                fx.merge(self.drop_member(&id, settings, now));
            }
        }
        fx
    }

    // ---- offsets ----

    /// May this member commit offsets for this generation? Generation -1
    /// with no member id is a simple (standalone or admin) commit, allowed
    /// only while the group has no members.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: i64,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if let Some(c) = &self.consumer {
            return c.check_member_epoch(member_id, generation, true);
        }
        if generation < 0 && member_id.is_empty() {
            if self.members.is_empty() {
                return Ok(());
            }
            return Err(ResponseError::UnknownMemberId);
        }
        if self.state == GroupState::Empty {
            // Kafka lets a group with no members take commits from anyone
            // only as simple commits.
            return Err(ResponseError::UnknownMemberId);
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        self.check_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat = now;
        }
        Ok(())
    }

    /// Topics the members subscribe to, when the protocol is "consumer"
    /// (for OffsetDelete); `None` when they cannot be told.
    pub fn subscribed_topics(&self) -> Option<Vec<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.as_deref()?;
        let mut topics = Vec::new();
        for m in self.members.values() {
            topics.extend(parse_subscription(&m.metadata_for(protocol))?);
        }
        Some(topics)
    }

    // ---- persistence ----

    pub fn to_value(&self, now: i64) -> GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp: now,
            members: self
                .join_order
                .iter()
                .filter_map(|id| self.members.get(id))
                .map(|m| StoredMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Rebuilds a group from its stored record: Stable with its members
    /// (who must heartbeat within their session timeout from `now`), or
    /// Empty when it had none.
    pub fn restore(&mut self, v: GroupValue, now: i64) {
        // A classic group's record written after a consumer group's: the
        // group was converted back.
        self.consumer = None;
        self.generation = v.generation;
        self.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type);
        self.protocol = v.protocol.clone();
        self.leader = v.leader;
        self.members.clear();
        self.join_order.clear();
        self.static_members.clear();
        self.pending_members.clear();
        self.join_deadline = None;
        self.join_deadline_max = None;
        self.sync_deadline = None;
        self.initial_delay = false;
        let protocol = v.protocol.unwrap_or_default();
        for sm in v.members {
            if let Some(i) = &sm.instance_id {
                self.static_members.insert(i.clone(), sm.member_id.clone());
            }
            self.join_order.push(sm.member_id.clone());
            self.members.insert(
                sm.member_id.clone(),
                Member {
                    id: sm.member_id,
                    instance_id: sm.instance_id,
                    client_id: sm.client_id,
                    client_host: sm.client_host,
                    session_timeout_ms: sm.session_timeout_ms,
                    rebalance_timeout_ms: sm.rebalance_timeout_ms,
                    protocols: vec![(protocol.clone(), sm.subscription)],
                    assignment: sm.assignment,
                    awaiting_join: false,
                    awaiting_sync: false,
                    is_new: false,
                    last_heartbeat: now,
                },
            );
        }
        let state = if self.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        self.transition(state, now);
        // An empty group has been empty since it was last written (offset
        // expiry counts from there, across restarts).
        if state == GroupState::Empty && v.state_timestamp >= 0 {
            self.state_since = v.state_timestamp.min(now);
        }
    }
}

fn merged(mut a: Effects, b: Effects) -> Effects {
    a.merge(b);
    a
}

/// The topics of a ConsumerProtocolSubscription (version, topics, ...).
fn parse_subscription(mut b: &[u8]) -> Option<Vec<String>> {
    use bytes::Buf;
    if b.len() < 6 {
        return None;
    }
    let _version = b.get_i16();
    let n = b.get_i32();
    let mut topics = Vec::new();
    for _ in 0..n.max(0) {
        if b.len() < 2 {
            return None;
        }
        let len = b.get_i16();
        let len = usize::try_from(len).ok()?;
        if b.len() < len {
            return None;
        }
        topics.push(String::from_utf8(b[..len].to_vec()).ok()?);
        b.advance(len);
    }
    Some(topics)
}

#[cfg(test)]
mod tests;
