//! KIP-932 share groups' membership: members join and leave with
//! ShareGroupHeartbeat, the group epoch counts the changes, and the
//! `simple` assignor hands each subscribed partition to one member or more
//! (a partition is shared when members outnumber partitions). There is no
//! revocation: records, not partitions, are what members own, and those
//! are the partition leader's business (`crate::share`).
//!
//! Pure: the coordinator (`group/mod.rs`) feeds it heartbeats, the topics
//! of the metadata image and the clock, and persists the epoch. It runs on
//! the shard that coordinates the group and never does I/O.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;

use super::consumer::{Assignment, HeartbeatError, Topics, LEAVE_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct ShareSettings {
    pub session_timeout_ms: i64,
    pub heartbeat_interval_ms: i32,
    pub max_size: usize,
}

#[derive(Debug, Clone)]
pub struct ShareMember {
    pub id: String,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The epoch the member was last told.
    pub epoch: i32,
    pub subscribed_names: Vec<String>,
    pub assigned: Assignment,
    pub last_heartbeat: i64,
}

/// A ShareGroupHeartbeat, as the coordinator hands it over.
#[derive(Debug, Clone, Default)]
pub struct ShareHeartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub rack_id: Option<String>,
    /// `None`: unchanged since the last heartbeat.
    pub subscribed_names: Option<Vec<String>>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareHeartbeatOk {
    pub member_id: String,
    pub member_epoch: i32,
    /// Sent when the member's epoch moved (its assignment may have).
    pub assignment: Option<Assignment>,
}

#[derive(Debug, Clone, Default)]
pub struct ShareGroup {
    pub epoch: i32,
    pub members: BTreeMap<String, ShareMember>,
    /// The subscribed topics (id, partition count) the assignment was
    /// computed from: a change (a new topic, more partitions) reassigns.
    topics: BTreeMap<String, (uuid::Uuid, i32)>,
    /// The epoch changed and is not yet written.
    pub epoch_dirty: bool,
}

fn invalid(msg: &str) -> HeartbeatError {
    (ResponseError::InvalidRequest, msg.to_string())
}

impl ShareGroup {
    /// A group read back from its log: the epoch, no members.
    pub fn restored(epoch: i32) -> Self {
        ShareGroup {
            epoch,
            ..Default::default()
        }
    }

    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else {
            "Stable"
        }
    }

    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.subscribed_names.iter().cloned())
            .collect()
    }

    /// Handles one ShareGroupHeartbeat.
    pub fn heartbeat(
        &mut self,
        hb: ShareHeartbeat,
        topics: &dyn Topics,
        settings: &ShareSettings,
        now: i64,
    ) -> Result<ShareHeartbeatOk, HeartbeatError> {
        if hb.member_id.is_empty() {
            return Err(invalid("MemberId can't be empty."));
        }
        if hb.member_epoch == LEAVE_EPOCH {
            if self.members.remove(&hb.member_id).is_some() {
                self.reassign(topics, true);
            }
            return Ok(ShareHeartbeatOk {
                member_id: hb.member_id,
                member_epoch: LEAVE_EPOCH,
                assignment: None,
            });
        }
        if hb.member_epoch < 0 {
            return Err(invalid("MemberEpoch is invalid."));
        }
        let mut changed = false;
        if hb.member_epoch == 0 {
            let names = match hb.subscribed_names {
                Some(n) if !n.is_empty() => n,
                _ => {
                    return Err(invalid(
                        "SubscribedTopicNames must be set in first request.",
                    ))
                }
            };
            if !self.members.contains_key(&hb.member_id) && self.members.len() >= settings.max_size
            {
                return Err((
                    ResponseError::GroupMaxSizeReached,
                    format!(
                        "The share group has reached its maximum capacity of {} members.",
                        settings.max_size
                    ),
                ));
            }
            // A rejoin (epoch 0 again) replaces the member.
            self.members.insert(
                hb.member_id.clone(),
                ShareMember {
                    id: hb.member_id.clone(),
                    rack_id: hb.rack_id,
                    client_id: hb.client_id,
                    client_host: hb.client_host,
                    epoch: 0,
                    subscribed_names: sorted(names),
                    assigned: Assignment::new(),
                    last_heartbeat: now,
                },
            );
            changed = true;
        } else {
            let m = self.members.get_mut(&hb.member_id).ok_or_else(|| {
                (
                    ResponseError::UnknownMemberId,
                    format!("Member {} is not a member of the group.", hb.member_id),
                )
            })?;
            if hb.member_epoch != m.epoch {
                return Err((
                    ResponseError::FencedMemberEpoch,
                    format!(
                        "The share group member has a different epoch ({} instead of {}).",
                        hb.member_epoch, m.epoch
                    ),
                ));
            }
            m.last_heartbeat = now;
            if let Some(names) = hb.subscribed_names {
                let names = sorted(names);
                if names != m.subscribed_names {
                    m.subscribed_names = names;
                    changed = true;
                }
            }
            if hb.rack_id.is_some() {
                m.rack_id = hb.rack_id;
            }
        }
        self.reassign(topics, changed);
        let epoch = self.epoch;
        let m = self.members.get_mut(&hb.member_id).expect("present");
        let moved = m.epoch != epoch;
        m.epoch = epoch;
        Ok(ShareHeartbeatOk {
            member_id: hb.member_id,
            member_epoch: epoch,
            assignment: moved.then(|| m.assigned.clone()),
        })
    }

    /// Recomputes the assignment if membership changed (`changed`) or the
    /// subscribed topics did, bumping the group epoch.
    fn reassign(&mut self, topics: &dyn Topics, changed: bool) {
        let resolved: BTreeMap<String, (uuid::Uuid, i32)> = self
            .subscribed_topics()
            .into_iter()
            .filter_map(|n| topics.lookup(&n).map(|t| (n, t)))
            .collect();
        if !changed && resolved == self.topics {
            return;
        }
        self.topics = resolved;
        let target = simple_assign(&self.members, &self.topics);
        for (id, m) in self.members.iter_mut() {
            m.assigned = target.get(id).cloned().unwrap_or_default();
        }
        self.epoch += 1;
        self.epoch_dirty = true;
    }

    pub fn next_deadline(&self, settings: &ShareSettings) -> Option<i64> {
        self.members
            .values()
            .map(|m| m.last_heartbeat + settings.session_timeout_ms)
            .min()
    }

    /// Removes members whose session is up; returns their ids.
    pub fn tick(&mut self, topics: &dyn Topics, settings: &ShareSettings, now: i64) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.last_heartbeat + settings.session_timeout_ms <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
        }
        if !expired.is_empty() {
            self.reassign(topics, true);
        }
        expired
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// The `simple` assignor: per topic, over the members subscribed to it in
/// id order, partition `p` goes to member `p % members` when there are at
/// least as many partitions as members; otherwise member `i` gets
/// partition `i % partitions`, so every partition has a member and every
/// member a partition.
pub fn simple_assign(
    members: &BTreeMap<String, ShareMember>,
    topics: &BTreeMap<String, (uuid::Uuid, i32)>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = BTreeMap::new();
    for (name, (id, partitions)) in topics {
        let subscribed: Vec<&String> = members
            .values()
            .filter(|m| m.subscribed_names.contains(name))
            .map(|m| &m.id)
            .collect();
        let (n, p) = (subscribed.len(), (*partitions).max(0) as usize);
        if n == 0 || p == 0 {
            continue;
        }
        if n <= p {
            for part in 0..p {
                out.entry(subscribed[part % n].clone())
                    .or_default()
                    .entry(*id)
                    .or_default()
                    .insert(part as i32);
            }
        } else {
            for (i, m) in subscribed.iter().enumerate() {
                out.entry((*m).clone())
                    .or_default()
                    .entry(*id)
                    .or_default()
                    .insert((i % p) as i32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    struct Fixed(BTreeMap<String, (Uuid, i32)>);
    impl Topics for Fixed {
        fn lookup(&self, name: &str) -> Option<(Uuid, i32)> {
            self.0.get(name).copied()
        }
        fn names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
    }

    const T: Uuid = Uuid::from_u128(7);
    const SETTINGS: ShareSettings = ShareSettings {
        session_timeout_ms: 45_000,
        heartbeat_interval_ms: 5_000,
        max_size: 3,
    };

    fn topics(partitions: i32) -> Fixed {
        Fixed(BTreeMap::from([("t".to_string(), (T, partitions))]))
    }

    fn join(id: &str) -> ShareHeartbeat {
        ShareHeartbeat {
            member_id: id.into(),
            member_epoch: 0,
            subscribed_names: Some(vec!["t".into()]),
            ..Default::default()
        }
    }

    fn beat(id: &str, epoch: i32) -> ShareHeartbeat {
        ShareHeartbeat {
            member_id: id.into(),
            member_epoch: epoch,
            ..Default::default()
        }
    }

    fn parts(a: &Assignment) -> Vec<i32> {
        a.get(&T)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    #[test]
    fn members_split_partitions_and_share_them_when_more_members() {
        let mut g = ShareGroup::default();
        let t = topics(2);
        let a = g.heartbeat(join("a"), &t, &SETTINGS, 0).unwrap();
        assert_eq!(a.member_epoch, 1);
        assert_eq!(parts(a.assignment.as_ref().unwrap()), vec![0, 1]);
        let b = g.heartbeat(join("b"), &t, &SETTINGS, 0).unwrap();
        assert_eq!(b.member_epoch, 2);
        assert_eq!(parts(b.assignment.as_ref().unwrap()), vec![1]);
        // a learns the new epoch and its smaller share on its next beat.
        let a = g.heartbeat(beat("a", 1), &t, &SETTINGS, 1).unwrap();
        assert_eq!(
            (a.member_epoch, parts(a.assignment.as_ref().unwrap())),
            (2, vec![0])
        );
        // Nothing changed: no assignment sent.
        assert_eq!(
            g.heartbeat(beat("a", 2), &t, &SETTINGS, 2)
                .unwrap()
                .assignment,
            None
        );
        // A third member shares partition 0 with a.
        let c = g.heartbeat(join("c"), &t, &SETTINGS, 2).unwrap();
        assert_eq!(parts(c.assignment.as_ref().unwrap()), vec![0]);
    }

    #[test]
    fn stale_epochs_unknown_members_and_a_full_group_are_refused() {
        let mut g = ShareGroup::default();
        let t = topics(1);
        g.heartbeat(join("a"), &t, &SETTINGS, 0).unwrap();
        let e = g.heartbeat(beat("a", 7), &t, &SETTINGS, 0).unwrap_err();
        assert_eq!(e.0, ResponseError::FencedMemberEpoch);
        let e = g.heartbeat(beat("zz", 1), &t, &SETTINGS, 0).unwrap_err();
        assert_eq!(e.0, ResponseError::UnknownMemberId);
        let e = g.heartbeat(beat("", 0), &t, &SETTINGS, 0).unwrap_err();
        assert_eq!(e.0, ResponseError::InvalidRequest);
        let e = g.heartbeat(beat("b", 0), &t, &SETTINGS, 0).unwrap_err();
        assert_eq!(e.0, ResponseError::InvalidRequest, "no subscription");
        g.heartbeat(join("b"), &t, &SETTINGS, 0).unwrap();
        g.heartbeat(join("c"), &t, &SETTINGS, 0).unwrap();
        let e = g.heartbeat(join("d"), &t, &SETTINGS, 0).unwrap_err();
        assert_eq!(e.0, ResponseError::GroupMaxSizeReached);
    }

    #[test]
    fn leaving_expiry_and_new_partitions_reassign() {
        let mut g = ShareGroup::default();
        g.heartbeat(join("a"), &topics(2), &SETTINGS, 0).unwrap();
        g.heartbeat(join("b"), &topics(2), &SETTINGS, 10_000)
            .unwrap();
        // a's session ends; b takes both partitions.
        assert_eq!(g.tick(&topics(2), &SETTINGS, 45_000), vec!["a".to_string()]);
        let b = g
            .heartbeat(beat("b", 2), &topics(2), &SETTINGS, 45_000)
            .unwrap();
        assert_eq!(parts(b.assignment.as_ref().unwrap()), vec![0, 1]);
        // Partitions added to the topic reach the member.
        let b = g
            .heartbeat(beat("b", 3), &topics(3), &SETTINGS, 46_000)
            .unwrap();
        assert_eq!(parts(b.assignment.as_ref().unwrap()), vec![0, 1, 2]);
        let left = g
            .heartbeat(beat("b", LEAVE_EPOCH), &topics(3), &SETTINGS, 0)
            .unwrap();
        assert_eq!(left.member_epoch, LEAVE_EPOCH);
        assert_eq!(g.state_name(), "Empty");
        assert!(g.epoch_dirty);
    }
}
