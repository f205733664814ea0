//! KIP-848 consumer groups (`group.protocol=consumer`): the group epoch, the
//! target assignment that the server-side assignor (`assignor`) computes,
//! and each member's reconciliation towards it. A member first revokes the
//! partitions it must give up; a partition is handed to its new member only
//! once its previous owner has released it.
//!
//! Pure: the coordinator (`group/mod.rs`) feeds it heartbeats, the topics
//! of the metadata image and the clock, and persists the epoch. It runs on
//! the shard that coordinates the group and never does I/O.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::assignor;

/// Partitions by topic id.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// A member leaves with this epoch.
pub const LEAVE_EPOCH: i32 = -1;
/// A static member leaves for a while (it keeps its partitions until its
/// session times out) with this epoch.
pub const LEAVE_STATIC_EPOCH: i32 = -2;

/// What the group needs to know of the metadata image.
pub trait Topics {
    /// A topic's id and partition count.
    fn lookup(&self, name: &str) -> Option<(Uuid, i32)>;
    /// The topics a regular expression may match.
    fn names(&self) -> Vec<String>;
}

#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings {
    pub session_timeout_ms: i64,
    pub heartbeat_interval_ms: i32,
    pub max_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Stable,
    /// Waits for the member to revoke `pending_revocation`.
    UnrevokedPartitions,
    /// At the target epoch, but some of its target partitions are still
    /// owned by other members.
    UnreleasedPartitions,
}

#[derive(Debug, Clone)]
pub struct ConsumerMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub epoch: i32,
    pub previous_epoch: i32,
    pub state: MemberState,
    pub rebalance_timeout_ms: i32,
    pub subscribed_names: Vec<String>,
    pub subscribed_regex: Option<String>,
    /// `subscribed_regex` compiled, once, when it is set.
    regex: Option<regex::Regex>,
    pub server_assignor: Option<String>,
    /// The partitions the member owns now.
    pub assigned: Assignment,
    /// Partitions the member must give up; still its own until it says so.
    pub pending_revocation: Assignment,
    pub last_heartbeat: i64,
    /// Revocation must be done by then, or the member is fenced.
    revoke_deadline: Option<i64>,
}

/// A ConsumerGroupHeartbeat, as the coordinator hands it over.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    pub subscribed_names: Option<Vec<String>>,
    pub subscribed_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// The partitions the member owns (`None`: unchanged since the last
    /// heartbeat).
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatOk {
    pub member_id: String,
    pub member_epoch: i32,
    /// Sent when it changed or the request was a full one.
    pub assignment: Option<Assignment>,
}

/// An error code and its message.
pub type HeartbeatError = (ResponseError, String);

fn invalid(msg: &str) -> HeartbeatError {
    (ResponseError::InvalidRequest, msg.to_string())
}

#[derive(Debug, Clone, Default)]
pub struct ConsumerGroup {
    pub epoch: i32,
    pub assignment_epoch: i32,
    /// The assignor of the current target assignment.
    pub assignor: String,
    pub members: BTreeMap<String, ConsumerMember>,
    pub target: BTreeMap<String, Assignment>,
    /// Every topic some member subscribes to (by name or regex), with its
    /// id and partition count, as of the last heartbeat: a change bumps the
    /// epoch.
    subscribed: BTreeMap<String, (Uuid, i32)>,
    /// The epoch changed since the coordinator last stored it.
    pub epoch_dirty: bool,
}

impl ConsumerGroup {
    /// A group as its stored record left it: its epoch, no members.
    pub fn restored(epoch: i32) -> Self {
        ConsumerGroup {
            epoch,
            assignment_epoch: epoch,
            assignor: assignor::DEFAULT.to_string(),
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kafka's state names for consumer groups.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
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

    /// Checks the member and epoch of an OffsetCommit (`commit`) or an
    /// OffsetFetch v9+. A negative epoch with no members is an admin's or a
    /// standalone consumer's commit.
    pub fn check_member_epoch(
        &self,
        member_id: &str,
        epoch: i32,
        commit: bool,
    ) -> Result<(), ResponseError> {
        if epoch < 0 && (self.members.is_empty() || (!commit && member_id.is_empty())) {
            return Ok(());
        }
        let m = self
            .members
            .get(member_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        if commit && epoch > m.epoch {
            Err(ResponseError::FencedMemberEpoch)
        } else if epoch != m.epoch {
            Err(ResponseError::StaleMemberEpoch)
        } else {
            Ok(())
        }
    }

    /// Every topic some member subscribes to (and which exists).
    pub fn subscribed_topics(&self) -> Vec<String> {
        if self.members.is_empty() {
            return Vec::new();
        }
        self.subscribed.keys().cloned().collect()
    }

    /// The earliest time `tick` has something to do.
    pub fn next_deadline(&self, settings: &ConsumerSettings) -> Option<i64> {
        let times = self
            .members
            .values()
            .map(|m| (m.last_heartbeat, m.revoke_deadline));
        earliest_deadline(times, settings.session_timeout_ms)
    }

    /// Fences members whose session or revocation time is up. Returns the
    /// ids fenced.
    pub fn tick(&mut self, settings: &ConsumerSettings, now: i64) -> Vec<String> {
        let times = self
            .members
            .values()
            .map(|m| (&m.id, m.last_heartbeat, m.revoke_deadline));
        let expired = expired_members(times, settings.session_timeout_ms, now);
        for id in &expired {
            self.remove_member(id);
        }
        expired
    }

    fn remove_member(&mut self, id: &str) {
        if self.members.remove(id).is_some() {
            self.target.remove(id);
            self.bump();
        }
    }

    fn bump(&mut self) {
        self.epoch += 1;
        self.epoch_dirty = true;
    }

    /// Handles one ConsumerGroupHeartbeat.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        topics: &dyn Topics,
        settings: &ConsumerSettings,
        now: i64,
    ) -> Result<HeartbeatOk, HeartbeatError> {
        if hb.member_id.is_empty() {
            return Err(invalid("MemberId can't be empty."));
        }
        if hb.member_epoch < LEAVE_STATIC_EPOCH {
            return Err(invalid("MemberEpoch is invalid."));
        }
        if let Some(name) = &hb.server_assignor {
            if !assignor::NAMES.contains(&name.as_str()) {
                return Err((
                    ResponseError::UnsupportedAssignor,
                    format!("ServerAssignor {name} is not supported. Supported assignors: uniform, range."),
                ));
            }
        }
        if let Some(re) = hb.subscribed_regex.as_deref().filter(|r| !r.is_empty()) {
            if let Err(e) = compile(re) {
                return Err((
                    ResponseError::InvalidRegularExpression,
                    format!("SubscribedTopicRegex `{re}` is not a valid regular expression: {e}"),
                ));
            }
        }
        match hb.member_epoch {
            LEAVE_EPOCH | LEAVE_STATIC_EPOCH => self.leave(&hb),
            0 => self.join(hb, topics, settings, now),
            _ => self.beat(hb, topics, now, false),
        }
    }

    fn leave(&mut self, hb: &Heartbeat) -> Result<HeartbeatOk, HeartbeatError> {
        let Some(m) = self.members.get_mut(&hb.member_id) else {
            return Err(unknown_member(&hb.member_id));
        };
        if hb.member_epoch == LEAVE_STATIC_EPOCH && m.instance_id.is_some() {
            // A static member keeps its partitions until its session ends.
            m.epoch = LEAVE_STATIC_EPOCH;
        } else {
            self.remove_member(&hb.member_id);
        }
        Ok(HeartbeatOk {
            member_id: hb.member_id.clone(),
            member_epoch: hb.member_epoch,
            assignment: None,
        })
    }

    fn join(
        &mut self,
        hb: Heartbeat,
        topics: &dyn Topics,
        settings: &ConsumerSettings,
        now: i64,
    ) -> Result<HeartbeatOk, HeartbeatError> {
        if hb.rebalance_timeout_ms < 0 {
            return Err(invalid(
                "RebalanceTimeoutMs must be provided in first request.",
            ));
        }
        if hb.subscribed_names.is_none() && hb.subscribed_regex.is_none() {
            return Err(invalid(
                "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
            ));
        }
        if hb
            .owned
            .as_ref()
            .is_none_or(|o| o.values().any(|p| !p.is_empty()))
        {
            return Err(invalid("TopicPartitions must be empty when (re-)joining."));
        }
        if let Some(instance) = &hb.instance_id {
            let holder = self
                .members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance) && m.id != hb.member_id)
                .map(|m| (m.id.clone(), m.epoch));
            match holder {
                Some((_, epoch)) if epoch != LEAVE_STATIC_EPOCH => {
                    return Err((
                        ResponseError::UnreleasedInstanceId,
                        format!("Static member with instance id {instance} is still in the group."),
                    ));
                }
                // The static member that left comes back under a new id:
                // its old self goes (and its partitions with it).
                Some((old, _)) => {
                    self.members.remove(&old);
                    self.target.remove(&old);
                }
                None => {}
            }
        }
        let mut joined = false;
        match self.members.get_mut(&hb.member_id) {
            Some(m) => {
                // A known member rejoins: it has let go of everything.
                m.assigned.clear();
                m.pending_revocation.clear();
                m.state = MemberState::Stable;
                m.revoke_deadline = None;
                m.previous_epoch = m.epoch;
                m.epoch = 0;
            }
            None => {
                if self.members.len() >= settings.max_size {
                    return Err((
                        ResponseError::GroupMaxSizeReached,
                        format!(
                            "The consumer group has reached its maximum capacity of {} members.",
                            settings.max_size
                        ),
                    ));
                }
                self.members.insert(
                    hb.member_id.clone(),
                    ConsumerMember {
                        id: hb.member_id.clone(),
                        instance_id: None,
                        rack_id: None,
                        client_id: String::new(),
                        client_host: String::new(),
                        epoch: 0,
                        previous_epoch: -1,
                        state: MemberState::Stable,
                        rebalance_timeout_ms: hb.rebalance_timeout_ms,
                        subscribed_names: Vec::new(),
                        subscribed_regex: None,
                        regex: None,
                        server_assignor: None,
                        assigned: Assignment::new(),
                        pending_revocation: Assignment::new(),
                        last_heartbeat: now,
                        revoke_deadline: None,
                    },
                );
                joined = true;
            }
        }
        self.beat(hb, topics, now, joined)
    }

    /// A heartbeat of a member that is in the group (`joined`: it is new):
    /// updates it, bumps the epoch once if anything changed, moves the
    /// target if needed, reconciles the member.
    fn beat(
        &mut self,
        hb: Heartbeat,
        topics: &dyn Topics,
        now: i64,
        joined: bool,
    ) -> Result<HeartbeatOk, HeartbeatError> {
        let full_request = hb.member_epoch == 0
            || (hb.rebalance_timeout_ms != -1
                && (hb.subscribed_names.is_some() || hb.subscribed_regex.is_some())
                && hb.owned.is_some());
        let Some(m) = self.members.get_mut(&hb.member_id) else {
            return Err(unknown_member(&hb.member_id));
        };
        if hb.member_epoch > m.epoch {
            return Err(fenced(&hb.member_id, hb.member_epoch, m.epoch));
        }
        if hb.member_epoch < m.epoch {
            // The response that moved the member on may have been lost: the
            // previous epoch is fine if the member owns no more than it has.
            let subset = hb.owned.as_ref().is_some_and(|o| is_subset(o, &m.assigned));
            if hb.member_epoch != m.previous_epoch || !subset {
                return Err(fenced(&hb.member_id, hb.member_epoch, m.epoch));
            }
        }
        let mut changed = joined;
        m.last_heartbeat = now;
        if hb.rebalance_timeout_ms >= 0 {
            m.rebalance_timeout_ms = hb.rebalance_timeout_ms;
        }
        if hb.instance_id.is_some() {
            m.instance_id = hb.instance_id;
        }
        if hb.rack_id.is_some() {
            m.rack_id = hb.rack_id;
        }
        m.client_id = hb.client_id;
        m.client_host = hb.client_host;
        if let Some(names) = hb.subscribed_names {
            let mut names = names;
            names.sort();
            names.dedup();
            if names != m.subscribed_names {
                m.subscribed_names = names;
                changed = true;
            }
        }
        if let Some(re) = hb.subscribed_regex {
            let re = (!re.is_empty()).then_some(re);
            if re != m.subscribed_regex {
                // Checked by `heartbeat` before: it compiles.
                m.regex = re.as_deref().and_then(|r| compile(r).ok());
                m.subscribed_regex = re;
                changed = true;
            }
        }
        if let Some(a) = hb.server_assignor {
            if m.server_assignor.as_deref() != Some(a.as_str()) {
                m.server_assignor = Some(a);
                changed = true;
            }
        }
        let subscribed = self.subscription_metadata(topics);
        if subscribed != self.subscribed {
            self.subscribed = subscribed;
            changed = true;
        }
        if changed {
            self.bump();
        }
        if self.epoch != self.assignment_epoch || changed {
            self.compute_target();
        }
        let before = self.members[&hb.member_id].assigned.clone();
        self.reconcile(&hb.member_id, hb.owned.as_ref(), now);
        let m = &self.members[&hb.member_id];
        Ok(HeartbeatOk {
            member_id: m.id.clone(),
            member_epoch: m.epoch,
            assignment: (full_request || m.assigned != before).then(|| m.assigned.clone()),
        })
    }

    /// The topics of a member's subscription that exist.
    fn member_topics(&self, m: &ConsumerMember) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = m
            .subscribed_names
            .iter()
            .filter(|n| self.subscribed.contains_key(*n))
            .cloned()
            .collect();
        if let Some(re) = &m.regex {
            out.extend(self.subscribed.keys().filter(|n| re.is_match(n)).cloned());
        }
        out
    }

    fn subscription_metadata(&self, topics: &dyn Topics) -> BTreeMap<String, (Uuid, i32)> {
        let mut out = BTreeMap::new();
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut regexes: Vec<&regex::Regex> = Vec::new();
        for m in self.members.values() {
            names.extend(m.subscribed_names.iter().cloned());
            regexes.extend(&m.regex);
        }
        if !regexes.is_empty() {
            names.extend(
                topics
                    .names()
                    .into_iter()
                    .filter(|n| regexes.iter().any(|re| re.is_match(n))),
            );
        }
        for n in names {
            if let Some(meta) = topics.lookup(&n) {
                out.insert(n, meta);
            }
        }
        out
    }

    /// The assignor the members ask for most (ties: the default order).
    fn pick_assignor(&self) -> &'static str {
        let votes = |name: &str| {
            self.members
                .values()
                .filter(|m| m.server_assignor.as_deref() == Some(name))
                .count()
        };
        let mut best = assignor::DEFAULT;
        for name in assignor::NAMES {
            if votes(name) > votes(best) {
                best = name;
            }
        }
        best
    }

    fn compute_target(&mut self) {
        let name = self.pick_assignor();
        let subscriptions: BTreeMap<String, BTreeSet<String>> = self
            .members
            .values()
            .map(|m| (m.id.clone(), self.member_topics(m)))
            .collect();
        self.target = assignor::assign(name, &subscriptions, &self.subscribed, &self.target);
        self.assignor = name.to_string();
        self.assignment_epoch = self.epoch;
    }

    /// Partitions other members own or have yet to revoke.
    fn owned_by_others(&self, member_id: &str) -> HashSet<(Uuid, i32)> {
        let mut out = HashSet::new();
        for m in self.members.values().filter(|m| m.id != member_id) {
            for a in [&m.assigned, &m.pending_revocation] {
                for (t, ps) in a {
                    out.extend(ps.iter().map(|p| (*t, *p)));
                }
            }
        }
        out
    }

    /// Moves a member towards its target assignment (Kafka's
    /// CurrentAssignmentBuilder).
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now: i64) {
        let target_epoch = self.assignment_epoch;
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let others = self.owned_by_others(member_id);
        let subscribed_ids: HashSet<Uuid> = {
            let m = &self.members[member_id];
            self.member_topics(m)
                .iter()
                .filter_map(|n| self.subscribed.get(n).map(|(id, _)| *id))
                .collect()
        };
        let m = self
            .members
            .get_mut(member_id)
            .expect("reconciled member exists");
        if m.epoch == LEAVE_STATIC_EPOCH {
            return;
        }
        let owns = |pending: &Assignment| match owned {
            None => true,
            Some(o) => pending
                .iter()
                .any(|(t, ps)| o.get(t).is_some_and(|op| ps.iter().any(|p| op.contains(p)))),
        };
        let progress = match m.state {
            MemberState::Stable => m.epoch != target_epoch,
            MemberState::UnrevokedPartitions => !owns(&m.pending_revocation),
            MemberState::UnreleasedPartitions => true,
        };
        if !progress {
            return;
        }
        let mut assigned = Assignment::new();
        let mut revoking = Assignment::new();
        let mut adding = Assignment::new();
        let mut unreleased = false;
        let topics: BTreeSet<Uuid> = target.keys().chain(m.assigned.keys()).copied().collect();
        for t in topics {
            let empty = BTreeSet::new();
            let want = if subscribed_ids.contains(&t) {
                target.get(&t).unwrap_or(&empty)
            } else {
                &empty
            };
            let have = m.assigned.get(&t).unwrap_or(&empty);
            let keep: BTreeSet<i32> = have.intersection(want).copied().collect();
            let give: BTreeSet<i32> = have.difference(want).copied().collect();
            let mut take = BTreeSet::new();
            for &p in want.difference(have) {
                let mine_pending = m.pending_revocation.get(&t).is_some_and(|s| s.contains(&p));
                if others.contains(&(t, p)) && !mine_pending {
                    unreleased = true;
                } else {
                    take.insert(p);
                }
            }
            if !keep.is_empty() {
                assigned.insert(t, keep);
            }
            if !give.is_empty() {
                revoking.insert(t, give);
            }
            if !take.is_empty() {
                adding.insert(t, take);
            }
        }
        if !revoking.is_empty() && owns(&revoking) {
            // Revoke first, at the current epoch.
            m.state = MemberState::UnrevokedPartitions;
            m.assigned = assigned;
            m.pending_revocation = revoking;
            if m.revoke_deadline.is_none() {
                m.revoke_deadline = Some(now + m.rebalance_timeout_ms.max(0) as i64);
            }
            return;
        }
        for (t, ps) in adding {
            assigned.entry(t).or_default().extend(ps);
        }
        m.state = if unreleased {
            MemberState::UnreleasedPartitions
        } else {
            MemberState::Stable
        };
        m.assigned = assigned;
        m.pending_revocation.clear();
        m.revoke_deadline = None;
        if m.epoch != target_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = target_epoch;
        }
    }
}

/// The earliest session end or revocation deadline of members given as
/// (last heartbeat, revocation deadline): when a KIP-848-style group
/// (consumer or streams) next has a member to fence.
pub fn earliest_deadline(
    members: impl Iterator<Item = (i64, Option<i64>)>,
    session_timeout_ms: i64,
) -> Option<i64> {
    members
        .flat_map(|(heartbeat, revoke)| [Some(heartbeat + session_timeout_ms), revoke])
        .flatten()
        .min()
}

/// The members, given as (id, last heartbeat, revocation deadline), whose
/// session or revocation time is up at `now`.
pub fn expired_members<'a>(
    members: impl Iterator<Item = (&'a String, i64, Option<i64>)>,
    session_timeout_ms: i64,
    now: i64,
) -> Vec<String> {
    members
        .filter(|(_, heartbeat, revoke)| {
            heartbeat + session_timeout_ms <= now || revoke.is_some_and(|d| d <= now)
        })
        .map(|(id, _, _)| id.clone())
        .collect()
}

fn unknown_member(id: &str) -> HeartbeatError {
    (
        ResponseError::UnknownMemberId,
        format!("Member {id} is not a member of the group."),
    )
}

fn fenced(id: &str, got: i32, expected: i32) -> HeartbeatError {
    (
        ResponseError::FencedMemberEpoch,
        format!(
            "The consumer group member {id} has epoch {got}, expected {expected}: it must rejoin."
        ),
    )
}

fn is_subset(small: &Assignment, big: &Assignment) -> bool {
    small
        .iter()
        .all(|(t, ps)| ps.is_empty() || big.get(t).is_some_and(|b| ps.is_subset(b)))
}

/// A subscription regex, matched against whole topic names as Java's
/// `Pattern.matches` does (Kafka uses RE2J, whose syntax this crate shares).
pub fn compile(re: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Image(BTreeMap<String, (Uuid, i32)>);

    impl Topics for Image {
        fn lookup(&self, name: &str) -> Option<(Uuid, i32)> {
            self.0.get(name).copied()
        }
        fn names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
    }

    fn image(topics: &[(&str, i32)]) -> Image {
        Image(
            topics
                .iter()
                .enumerate()
                .map(|(i, (n, p))| (n.to_string(), (Uuid::from_u128(i as u128 + 1), *p)))
                .collect(),
        )
    }

    const SETTINGS: ConsumerSettings = ConsumerSettings {
        session_timeout_ms: 45_000,
        heartbeat_interval_ms: 5_000,
        max_size: 10,
    };

    fn join(id: &str, topics: &[&str]) -> Heartbeat {
        Heartbeat {
            member_id: id.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 30_000,
            subscribed_names: Some(topics.iter().map(|s| s.to_string()).collect()),
            owned: Some(Assignment::new()),
            ..Default::default()
        }
    }

    fn beat(id: &str, epoch: i32, owned: &Assignment) -> Heartbeat {
        Heartbeat {
            member_id: id.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned: Some(owned.clone()),
            ..Default::default()
        }
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    /// Plays a client: heartbeats until nothing changes, applying each
    /// assignment it is given.
    fn settle(g: &mut ConsumerGroup, img: &Image, owned: &mut BTreeMap<String, (i32, Assignment)>) {
        for _ in 0..10 {
            let mut moved = false;
            let ids: Vec<String> = owned.keys().cloned().collect();
            for id in ids {
                let (epoch, have) = owned[&id].clone();
                let r = g
                    .heartbeat(beat(&id, epoch, &have), img, &SETTINGS, 0)
                    .unwrap();
                let next = r.assignment.unwrap_or(have.clone());
                if r.member_epoch != epoch || next != have {
                    moved = true;
                }
                owned.insert(id, (r.member_epoch, next));
            }
            if !moved {
                return;
            }
        }
        panic!("the group did not settle");
    }

    #[test]
    fn one_member_gets_everything_at_epoch_one() {
        let img = image(&[("a", 3), ("b", 2)]);
        let mut g = ConsumerGroup::default();
        let r = g
            .heartbeat(join("m1", &["a", "b"]), &img, &SETTINGS, 0)
            .unwrap();
        assert_eq!(r.member_epoch, 1);
        assert_eq!(count(&r.assignment.unwrap()), 5);
        assert_eq!(g.state_name(), "Stable");
        // An unchanged heartbeat gets no assignment.
        let owned = g.members["m1"].assigned.clone();
        let r = g
            .heartbeat(beat("m1", 1, &owned), &img, &SETTINGS, 0)
            .unwrap();
        assert_eq!((r.member_epoch, r.assignment), (1, None));
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_revoked_it() {
        let img = image(&[("a", 4)]);
        let mut g = ConsumerGroup::default();
        let r1 = g.heartbeat(join("m1", &["a"]), &img, &SETTINGS, 0).unwrap();
        let m1_all = r1.assignment.unwrap();
        assert_eq!(count(&m1_all), 4);
        // m2 joins: epoch 2, but everything is still m1's.
        let r2 = g.heartbeat(join("m2", &["a"]), &img, &SETTINGS, 0).unwrap();
        assert_eq!(r2.member_epoch, 2);
        assert_eq!(count(&r2.assignment.clone().unwrap()), 0);
        assert_eq!(g.members["m2"].state, MemberState::UnreleasedPartitions);
        // m1 is told to keep two, at its old epoch.
        let r = g
            .heartbeat(beat("m1", 1, &m1_all), &img, &SETTINGS, 0)
            .unwrap();
        assert_eq!(r.member_epoch, 1);
        let kept = r.assignment.unwrap();
        assert_eq!(count(&kept), 2);
        assert_eq!(g.members["m1"].state, MemberState::UnrevokedPartitions);
        // Still owning everything: no progress.
        let r = g
            .heartbeat(beat("m1", 1, &m1_all), &img, &SETTINGS, 0)
            .unwrap();
        assert_eq!(r.member_epoch, 1);
        // m2 cannot have them yet.
        let r = g
            .heartbeat(beat("m2", 2, &Assignment::new()), &img, &SETTINGS, 0)
            .unwrap();
        assert_eq!(r.assignment, None);
        // m1 revokes, moves to epoch 2.
        let r = g
            .heartbeat(beat("m1", 1, &kept), &img, &SETTINGS, 0)
            .unwrap();
        assert_eq!(r.member_epoch, 2);
        assert_eq!(g.members["m1"].state, MemberState::Stable);
        // Now m2 gets the released two.
        let r = g
            .heartbeat(beat("m2", 2, &Assignment::new()), &img, &SETTINGS, 0)
            .unwrap();
        let m2 = r.assignment.unwrap();
        assert_eq!(count(&m2), 2);
        let t = Uuid::from_u128(1);
        assert!(m2[&t].is_disjoint(&kept[&t]));
        assert_eq!(g.state_name(), "Stable");
    }

    #[test]
    fn members_settle_on_disjoint_balanced_assignments() {
        let img = image(&[("a", 7), ("b", 5)]);
        let mut g = ConsumerGroup::default();
        let mut owned = BTreeMap::new();
        for id in ["m1", "m2", "m3"] {
            let r = g
                .heartbeat(join(id, &["a", "b"]), &img, &SETTINGS, 0)
                .unwrap();
            owned.insert(id.to_string(), (r.member_epoch, r.assignment.unwrap()));
            settle(&mut g, &img, &mut owned);
        }
        let mut seen = HashSet::new();
        for (_, a) in owned.values() {
            assert_eq!(count(a), 4);
            for (t, ps) in a {
                for p in ps {
                    assert!(seen.insert((*t, *p)), "partition owned twice");
                }
            }
        }
        assert_eq!(seen.len(), 12);
        assert_eq!(g.state_name(), "Stable");
        // One leaves: the other two take all twelve.
        let r = g
            .heartbeat(
                Heartbeat {
                    member_epoch: LEAVE_EPOCH,
                    ..beat("m2", 0, &Assignment::new())
                },
                &img,
                &SETTINGS,
                0,
            )
            .unwrap();
        assert_eq!(r.member_epoch, LEAVE_EPOCH);
        owned.remove("m2");
        settle(&mut g, &img, &mut owned);
        assert_eq!(owned.values().map(|(_, a)| count(a)).sum::<usize>(), 12);
    }

    #[test]
    fn epochs_are_checked() {
        let img = image(&[("a", 2)]);
        let mut g = ConsumerGroup::default();
        g.heartbeat(join("m1", &["a"]), &img, &SETTINGS, 0).unwrap();
        let owned = g.members["m1"].assigned.clone();
        let e = g
            .heartbeat(beat("m1", 5, &owned), &img, &SETTINGS, 0)
            .unwrap_err();
        assert_eq!(e.0, ResponseError::FencedMemberEpoch);
        let e = g
            .heartbeat(beat("nobody", 1, &owned), &img, &SETTINGS, 0)
            .unwrap_err();
        assert_eq!(e.0, ResponseError::UnknownMemberId);
        // A lost response: the previous epoch with a subset is accepted.
        g.heartbeat(join("m2", &["a"]), &img, &SETTINGS, 0).unwrap();
        let r = g
            .heartbeat(beat("m1", 1, &owned), &img, &SETTINGS, 0)
            .unwrap();
        let kept = r.assignment.unwrap();
        let r = g
            .heartbeat(beat("m1", 1, &kept), &img, &SETTINGS, 0)
            .unwrap();
        assert_eq!(r.member_epoch, 2);
        let r = g
            .heartbeat(beat("m1", 1, &kept), &img, &SETTINGS, 0)
            .unwrap();
        assert_eq!(r.member_epoch, 2);
        // ... but not with more than it has.
        let e = g
            .heartbeat(beat("m1", 1, &owned), &img, &SETTINGS, 0)
            .unwrap_err();
        assert_eq!(e.0, ResponseError::FencedMemberEpoch);
    }

    #[test]
    fn bad_requests_are_refused() {
        let img = image(&[("a", 2)]);
        let mut g = ConsumerGroup::default();
        let mut refused = |hb: Heartbeat| g.heartbeat(hb, &img, &SETTINGS, 0).unwrap_err().0;
        let no_subscription = Heartbeat {
            subscribed_names: None,
            ..join("m", &[])
        };
        assert_eq!(refused(no_subscription), ResponseError::InvalidRequest);
        let sticky = Heartbeat {
            server_assignor: Some("sticky".into()),
            ..join("m", &["a"])
        };
        assert_eq!(refused(sticky), ResponseError::UnsupportedAssignor);
        let bad_regex = Heartbeat {
            subscribed_regex: Some("a(".into()),
            ..join("m", &[])
        };
        assert_eq!(refused(bad_regex), ResponseError::InvalidRegularExpression);
        assert!(g.members.is_empty());
    }

    #[test]
    fn regex_subscriptions_follow_new_topics() {
        let mut img = image(&[("orders-1", 2), ("other", 2)]);
        let mut g = ConsumerGroup::default();
        let hb = Heartbeat {
            subscribed_names: None,
            subscribed_regex: Some("orders-.*".into()),
            ..join("m1", &[])
        };
        let r = g.heartbeat(hb, &img, &SETTINGS, 0).unwrap();
        let a = r.assignment.unwrap();
        assert_eq!(count(&a), 2);
        img.0.insert("orders-2".into(), (Uuid::from_u128(99), 3));
        let r = g
            .heartbeat(beat("m1", r.member_epoch, &a), &img, &SETTINGS, 0)
            .unwrap();
        assert_eq!(r.member_epoch, 2);
        assert_eq!(count(&r.assignment.unwrap()), 5);
    }

    #[test]
    fn silent_members_and_slow_revokers_are_fenced() {
        let img = image(&[("a", 2)]);
        let mut g = ConsumerGroup::default();
        g.heartbeat(join("m1", &["a"]), &img, &SETTINGS, 0).unwrap();
        g.heartbeat(join("m2", &["a"]), &img, &SETTINGS, 0).unwrap();
        let all = g.members["m1"].assigned.clone();
        // m1 is asked to revoke one partition within 30 s and never does.
        g.heartbeat(beat("m1", 1, &all), &img, &SETTINGS, 1000)
            .unwrap();
        assert_eq!(g.next_deadline(&SETTINGS), Some(31_000));
        assert!(g.tick(&SETTINGS, 30_999).is_empty());
        assert_eq!(g.tick(&SETTINGS, 31_000), vec!["m1".to_string()]);
        // m2 then gets both.
        let r = g
            .heartbeat(beat("m2", 2, &Assignment::new()), &img, &SETTINGS, 32_000)
            .unwrap();
        assert_eq!(count(&r.assignment.unwrap()), 2);
        // And goes when its session ends.
        assert_eq!(g.tick(&SETTINGS, 32_000 + 45_000), vec!["m2".to_string()]);
        assert_eq!(g.state_name(), "Empty");
    }

    #[test]
    fn static_members_come_back_under_a_new_id() {
        let img = image(&[("a", 2)]);
        let mut g = ConsumerGroup::default();
        let hb = Heartbeat {
            instance_id: Some("i1".into()),
            ..join("m1", &["a"])
        };
        g.heartbeat(hb.clone(), &img, &SETTINGS, 0).unwrap();
        let e = g
            .heartbeat(
                Heartbeat {
                    member_id: "m2".into(),
                    ..hb.clone()
                },
                &img,
                &SETTINGS,
                0,
            )
            .unwrap_err();
        assert_eq!(e.0, ResponseError::UnreleasedInstanceId);
        let left = Heartbeat {
            member_epoch: LEAVE_STATIC_EPOCH,
            ..beat("m1", 0, &Assignment::new())
        };
        assert_eq!(
            g.heartbeat(left, &img, &SETTINGS, 0).unwrap().member_epoch,
            -2
        );
        let r = g
            .heartbeat(
                Heartbeat {
                    member_id: "m2".into(),
                    ..hb
                },
                &img,
                &SETTINGS,
                0,
            )
            .unwrap();
        assert_eq!(count(&r.assignment.unwrap()), 2);
        assert!(!g.members.contains_key("m1"));
    }
}
