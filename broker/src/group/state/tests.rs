//! The group state machine under a simulated clock: every transition of
//! Kafka's classic protocol and every timeout.

use super::*;

const SESSION: i32 = 1_000;
const REBALANCE: i32 = 5_000;
const DELAY: i64 = 100;

struct Sim {
    g: Group,
    s: GroupSettings,
    now: i64,
}

impl Sim {
    fn new() -> Self {
        let s = GroupSettings {
            initial_rebalance_delay_ms: DELAY,
            ..GroupSettings::default()
        };
        Self {
            g: Group::new("g", 0),
            s,
            now: 0,
        }
    }

    fn advance(&mut self, ms: i64) -> Effects {
        self.now += ms;
        self.g.tick(&self.s, self.now)
    }

    fn join(&mut self, member: &str, protocols: &[&str]) -> (Outcome<JoinResult>, Effects) {
        self.join_with(req(member, None, protocols))
    }

    fn join_with(&mut self, r: JoinRequest) -> (Outcome<JoinResult>, Effects) {
        self.g.join(r, &self.s, self.now)
    }

    /// The member-id-required round trip: returns the id the member joins
    /// with and the outcome of its second JoinGroup.
    fn join_new(&mut self, protocols: &[&str]) -> (String, Outcome<JoinResult>, Effects) {
        let (out, _) = self.join("", protocols);
        let Outcome::Done(r) = out else {
            panic!("first join must answer at once")
        };
        assert_eq!(r.error, Some(ResponseError::MemberIdRequired));
        let id = r.member_id.clone();
        let (out, fx) = self.join(&id, protocols);
        (id, out, fx)
    }

    fn sync(
        &mut self,
        member: &str,
        assignments: &[(&str, &str)],
    ) -> (Outcome<SyncResult>, Effects) {
        let a = assignments
            .iter()
            .map(|(m, v)| (m.to_string(), Bytes::copy_from_slice(v.as_bytes())))
            .collect();
        let generation = self.g.generation;
        self.g
            .sync(member, None, generation, None, None, a, self.now)
    }

    fn hb(&mut self, member: &str) -> Result<(), ResponseError> {
        let generation = self.g.generation;
        self.g.heartbeat(member, None, generation, self.now)
    }

    /// Brings a group to Stable with the given members (fresh ids).
    fn stable_with(&mut self, n: usize) -> Vec<String> {
        let ids: Vec<String> = (0..n).map(|_| self.join_new(&["range"]).0).collect();
        self.advance(DELAY);
        assert_eq!(self.g.state, GroupState::CompletingRebalance);
        let leader = self.g.leader.clone().unwrap();
        for id in &ids {
            if *id != leader {
                self.sync(id, &[]);
            }
        }
        let assign: Vec<(&str, &str)> = ids.iter().map(|i| (i.as_str(), "a")).collect();
        self.sync(&leader, &assign);
        assert_eq!(self.g.state, GroupState::Stable);
        ids
    }
}

fn req(member: &str, instance: Option<&str>, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        member_id: member.to_string(),
        instance_id: instance.map(str::to_string),
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
            .collect(),
        require_known_member_id: true,
    }
}

fn join_replies(fx: &Effects) -> Vec<(String, JoinResult)> {
    fx.replies
        .iter()
        .filter_map(|r| match r {
            Reply::Join(id, r) => Some((id.clone(), r.clone())),
            _ => None,
        })
        .collect()
}

fn sync_replies(fx: &Effects) -> Vec<(String, SyncResult)> {
    fx.replies
        .iter()
        .filter_map(|r| match r {
            Reply::Sync(id, r) => Some((id.clone(), r.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn first_member_waits_out_the_initial_delay_then_leads() {
    let mut sim = Sim::new();
    let (id, out, fx) = sim.join_new(&["range"]);
    assert_eq!(out, Outcome::Wait(id.clone()));
    assert!(fx.replies.is_empty());
    assert_eq!(sim.g.state, GroupState::PreparingRebalance);
    // Nothing happens before the delay passes.
    assert!(sim.advance(DELAY - 1).replies.is_empty());
    let fx = sim.advance(1);
    assert!(fx.persist);
    let replies = join_replies(&fx);
    assert_eq!(replies.len(), 1);
    let r = &replies[0].1;
    assert_eq!((r.generation, r.leader.as_str()), (1, id.as_str()));
    assert_eq!(r.protocol.as_deref(), Some("range"));
    assert_eq!(r.members.len(), 1, "the leader sees every member");
    assert_eq!(sim.g.state, GroupState::CompletingRebalance);

    let (out, fx) = sim.sync(&id, &[(&id, "p0,p1")]);
    assert_eq!(out, Outcome::Wait(id.clone()));
    assert!(
        fx.persist,
        "the assignment is written before it is answered"
    );
    let s = sync_replies(&fx);
    assert_eq!(s[0].1.assignment, Bytes::from_static(b"p0,p1"));
    assert_eq!(sim.g.state, GroupState::Stable);
    // A repeated sync in Stable answers at once.
    let (out, _) = sim.sync(&id, &[]);
    assert!(matches!(out, Outcome::Done(SyncResult { error: None, .. })));
}

#[test]
fn members_joining_within_the_delay_extend_it() {
    let mut sim = Sim::new();
    sim.join_new(&["range"]);
    sim.advance(DELAY - 10);
    sim.join_new(&["range"]);
    assert!(sim.advance(20).replies.is_empty(), "delay restarted");
    let fx = sim.advance(DELAY);
    assert_eq!(join_replies(&fx).len(), 2);
    assert_eq!(sim.g.generation, 1);
}

#[test]
fn new_member_triggers_a_rebalance_of_a_stable_group() {
    let mut sim = Sim::new();
    let ids = sim.stable_with(1);
    let (b, out, _) = sim.join_new(&["range"]);
    assert_eq!(out, Outcome::Wait(b.clone()));
    assert_eq!(sim.g.state, GroupState::PreparingRebalance);
    assert_eq!(sim.hb(&ids[0]), Err(ResponseError::RebalanceInProgress));
    let (out, _) = sim.sync(&ids[0], &[]);
    assert_eq!(
        out,
        Outcome::Done(SyncResult::error(ResponseError::RebalanceInProgress))
    );
    // The old member rejoins: everyone is in, the join completes at once.
    let (_, fx) = sim.join(&ids[0], &["range"]);
    let replies = join_replies(&fx);
    assert_eq!(replies.len(), 2);
    assert_eq!(sim.g.generation, 2);
    assert_eq!(sim.g.state, GroupState::CompletingRebalance);
    let leader = sim.g.leader.clone().unwrap();
    for (id, r) in &replies {
        assert_eq!(r.members.is_empty(), *id != leader);
    }
    // Heartbeats while completing are fine; the old generation is refused.
    assert_eq!(sim.hb(&b), Ok(()));
    assert_eq!(
        sim.g.heartbeat(&b, None, 1, sim.now),
        Err(ResponseError::IllegalGeneration)
    );
    let follower = if leader == b {
        ids[0].clone()
    } else {
        b.clone()
    };
    let (out, fx) = sim.sync(&follower, &[]);
    assert_eq!(out, Outcome::Wait(follower.clone()));
    assert!(fx.replies.is_empty(), "followers wait for the leader");
    let (_, fx) = sim.sync(&leader, &[(&follower, "x"), (&leader, "y")]);
    let s = sync_replies(&fx);
    assert_eq!(s.len(), 2);
    let got: HashMap<_, _> = s.into_iter().map(|(id, r)| (id, r.assignment)).collect();
    assert_eq!(got[&follower], Bytes::from_static(b"x"));
    assert_eq!(got[&leader], Bytes::from_static(b"y"));
}

#[test]
fn session_timeout_removes_a_silent_member() {
    let mut sim = Sim::new();
    let ids = sim.stable_with(2);
    sim.advance(SESSION as i64 / 2);
    assert_eq!(sim.hb(&ids[0]), Ok(()));
    assert!(sim.advance(SESSION as i64 / 2 - 1).replies.is_empty());
    assert_eq!(sim.g.state, GroupState::Stable);
    sim.advance(1);
    // ids[1] has been silent for 1.5 sessions by now: it is gone.
    assert!(!sim.g.members.contains_key(&ids[1]));
    assert_eq!(sim.g.state, GroupState::PreparingRebalance);
    assert_eq!(sim.hb(&ids[1]), Err(ResponseError::UnknownMemberId));
    let (_, fx) = sim.join(&ids[0], &["range"]);
    let r = &join_replies(&fx)[0].1;
    assert_eq!(r.leader, ids[0], "the leader is a current member");
    assert_eq!(r.members.len(), 1);
}

#[test]
fn rebalance_timeout_drops_members_that_do_not_rejoin() {
    let mut sim = Sim::new();
    let ids = sim.stable_with(2);
    let leader = sim.g.leader.clone().unwrap();
    let other = ids.iter().find(|i| **i != leader).unwrap().clone();
    // The follower rejoins with new metadata; the leader keeps heartbeating
    // but never rejoins.
    let (out, _) = sim.join(&other, &["range", "roundrobin"]);
    assert_eq!(out, Outcome::Wait(other.clone()));
    let mut fx = Effects::default();
    let mut waited = 0;
    while waited < REBALANCE as i64 {
        let _ = sim.hb(&leader);
        fx.merge(sim.advance(500));
        waited += 500;
    }
    let replies = join_replies(&fx);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, other);
    assert_eq!(
        replies[0].1.leader, other,
        "leadership moved to a member that rejoined"
    );
    assert!(!sim.g.members.contains_key(&leader));
}

#[test]
fn completing_rebalance_times_out_without_the_leaders_sync() {
    let mut sim = Sim::new();
    let ids = sim.stable_with(2);
    let leader = sim.g.leader.clone().unwrap();
    let follower = ids.iter().find(|i| **i != leader).unwrap().clone();
    sim.join(&follower, &["range", "x"]);
    sim.join(&leader, &["range"]);
    assert_eq!(sim.g.state, GroupState::CompletingRebalance);
    sim.sync(&follower, &[]);
    let mut fx = Effects::default();
    for _ in 0..(REBALANCE / 500) {
        let _ = sim.hb(&leader);
        fx.merge(sim.advance(500));
    }
    assert!(!sim.g.members.contains_key(&leader));
    let s = sync_replies(&fx);
    assert_eq!(s[0].1.error, Some(ResponseError::RebalanceInProgress));
    assert_eq!(sim.g.state, GroupState::PreparingRebalance);
}

#[test]
fn leaving_last_member_empties_the_group() {
    let mut sim = Sim::new();
    let ids = sim.stable_with(2);
    let (r, _) = sim.g.leave(&ids[0], None, &sim.s, sim.now);
    assert_eq!(r, Ok(()));
    assert_eq!(sim.g.state, GroupState::PreparingRebalance);
    let (r, fx) = sim.g.leave(&ids[1], None, &sim.s, sim.now);
    assert_eq!(r, Ok(()));
    assert!(fx.persist);
    assert_eq!(sim.g.state, GroupState::Empty);
    assert_eq!(
        sim.g.generation, 2,
        "one rebalance, ended by the last leave"
    );
    let (r, _) = sim.g.leave(&ids[1], None, &sim.s, sim.now);
    assert_eq!(r, Err(ResponseError::UnknownMemberId));
    assert_eq!(sim.hb(&ids[0]), Err(ResponseError::UnknownMemberId));
}

#[test]
fn leaving_during_the_join_phase_completes_it() {
    let mut sim = Sim::new();
    let ids = sim.stable_with(2);
    sim.join(&ids[0], &["range"]);
    assert_eq!(sim.g.state, GroupState::PreparingRebalance);
    let (_, fx) = sim.g.leave(&ids[1], None, &sim.s, sim.now);
    let r = join_replies(&fx);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1.leader, ids[0]);
}

#[test]
fn pending_member_ids_expire() {
    let mut sim = Sim::new();
    let ids = sim.stable_with(1);
    let (out, _) = sim.join("", &["range"]);
    let Outcome::Done(r) = out else { panic!() };
    assert_eq!(r.error, Some(ResponseError::MemberIdRequired));
    assert_eq!(sim.g.pending_members.len(), 1);
    sim.advance(SESSION as i64 / 2);
    sim.hb(&ids[0]).unwrap();
    sim.advance(SESSION as i64 / 2);
    assert!(sim.g.pending_members.is_empty());
    let (out, _) = sim.join(&r.member_id, &["range"]);
    let Outcome::Done(r2) = out else { panic!() };
    assert_eq!(r2.error, Some(ResponseError::UnknownMemberId));
}

#[test]
fn old_clients_join_without_the_member_id_round() {
    let mut sim = Sim::new();
    let mut r = req("", None, &["range"]);
    r.require_known_member_id = false;
    let (out, _) = sim.join_with(r);
    assert!(matches!(out, Outcome::Wait(_)));
    assert_eq!(sim.g.members.len(), 1);
}

#[test]
fn protocol_is_the_most_voted_common_one() {
    let mut sim = Sim::new();
    sim.join_new(&["range", "roundrobin"]);
    sim.join_new(&["roundrobin", "range"]);
    sim.join_new(&["roundrobin"]);
    sim.advance(DELAY);
    assert_eq!(sim.g.protocol.as_deref(), Some("roundrobin"));
    // A member sharing no protocol, or of another type, is refused.
    let (out, _) = sim.join("", &["sticky"]);
    let Outcome::Done(r) = out else { panic!() };
    assert_eq!(r.error, Some(ResponseError::InconsistentGroupProtocol));
    let mut other = req("", None, &["roundrobin"]);
    other.protocol_type = "connect".into();
    let (out, _) = sim.join_with(other);
    let Outcome::Done(r) = out else { panic!() };
    assert_eq!(r.error, Some(ResponseError::InconsistentGroupProtocol));
}

#[test]
fn bad_joins_get_kafka_errors() {
    let mut sim = Sim::new();
    let mut r = req("", None, &["range"]);
    r.session_timeout_ms = 10;
    let (out, _) = sim.join_with(r);
    let Outcome::Done(res) = out else { panic!() };
    assert_eq!(res.error, Some(ResponseError::InvalidSessionTimeout));
    let (out, _) = sim.join("", &[]);
    let Outcome::Done(res) = out else { panic!() };
    assert_eq!(res.error, Some(ResponseError::InconsistentGroupProtocol));
    let (out, _) = sim.join("nobody", &["range"]);
    let Outcome::Done(res) = out else { panic!() };
    assert_eq!(res.error, Some(ResponseError::UnknownMemberId));
    sim.s.max_size = 1;
    sim.join_new(&["range"]);
    let (out, _) = sim.join("", &["range"]);
    let Outcome::Done(res) = out else { panic!() };
    assert_eq!(res.error, Some(ResponseError::GroupMaxSizeReached));
}

#[test]
fn static_member_rejoining_fences_its_old_id_without_a_rebalance() {
    let mut sim = Sim::new();
    let ids = sim.stable_with(1);
    let (out, _) = sim.join_with(req("", Some("inst-1"), &["range"]));
    let Outcome::Wait(s1) = out else {
        panic!("static members skip MEMBER_ID_REQUIRED")
    };
    sim.join(&ids[0], &["range"]);
    assert_eq!(sim.g.state, GroupState::CompletingRebalance);
    let leader = sim.g.leader.clone().unwrap();
    assert_eq!(leader, ids[0]);
    sim.sync(&s1, &[]);
    sim.sync(&leader, &[(&s1, "mine")]);
    assert_eq!(sim.g.state, GroupState::Stable);
    let generation = sim.g.generation;

    // The static member restarts: new member id, same instance id.
    let (out, fx) = sim.join_with(req("", Some("inst-1"), &["range"]));
    let Outcome::Done(r) = out else {
        panic!("no rebalance for a returning follower")
    };
    assert!(fx.persist);
    assert_eq!(r.generation, generation);
    assert_ne!(r.member_id, s1);
    assert_eq!(sim.g.state, GroupState::Stable);
    assert_eq!(
        sim.g.heartbeat(&s1, Some("inst-1"), generation, sim.now),
        Err(ResponseError::FencedInstanceId)
    );
    let g = sim.g.generation;
    let (out, _) = sim
        .g
        .sync(&r.member_id, Some("inst-1"), g, None, None, vec![], sim.now);
    let Outcome::Done(s) = out else { panic!() };
    assert_eq!(
        s.assignment,
        Bytes::from_static(b"mine"),
        "assignment carried over"
    );
    // Leaving by instance id with the old member id is fenced too.
    let (res, _) = sim.g.leave(&s1, Some("inst-1"), &sim.s, sim.now);
    assert_eq!(res, Err(ResponseError::FencedInstanceId));
    let (res, _) = sim.g.leave("", Some("inst-1"), &sim.s, sim.now);
    assert_eq!(res, Ok(()));
}

#[test]
fn static_leader_rejoining_is_not_told_to_assign() {
    // librdkafka 0102: the group's leader is static and restarts. Kafka
    // keeps the group Stable and answers with the old leader id, so the
    // returning member does not assign.
    let mut sim = Sim::new();
    let (out, _) = sim.join_with(req("", Some("lead"), &["range"]));
    let Outcome::Wait(lead) = out else { panic!() };
    sim.advance(DELAY);
    assert_eq!(sim.g.state, GroupState::CompletingRebalance);
    assert_eq!(sim.g.leader.as_deref(), Some(lead.as_str()));
    sim.sync(&lead, &[(&lead, "all")]);
    assert_eq!(sim.g.state, GroupState::Stable);
    let generation = sim.g.generation;
    let (out, fx) = sim.join_with(req("", Some("lead"), &["range"]));
    let Outcome::Done(r) = out else {
        panic!("a returning static leader must not rebalance the group")
    };
    assert!(fx.persist);
    assert_eq!(
        (r.generation, r.leader.as_str()),
        (generation, lead.as_str())
    );
    assert_ne!(r.member_id, lead);
    assert!(r.members.is_empty(), "not asked to assign");
    assert_eq!(sim.g.leader.as_deref(), Some(r.member_id.as_str()));
    assert_eq!(sim.g.state, GroupState::Stable);
    let (out, _) = sim.g.sync(
        &r.member_id,
        Some("lead"),
        generation,
        None,
        None,
        vec![],
        sim.now,
    );
    let Outcome::Done(s) = out else { panic!() };
    assert_eq!(s.assignment, Bytes::from_static(b"all"));
}

#[test]
fn commits_check_member_and_generation() {
    let mut sim = Sim::new();
    assert_eq!(
        sim.g.check_commit("", None, -1, 0),
        Ok(()),
        "simple commit to an empty group"
    );
    let ids = sim.stable_with(1);
    let g = sim.g.generation;
    assert_eq!(sim.g.check_commit(&ids[0], None, g, 0), Ok(()));
    assert_eq!(
        sim.g.check_commit(&ids[0], None, g - 1, 0),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        sim.g.check_commit("x", None, g, 0),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        sim.g.check_commit("", None, -1, 0),
        Err(ResponseError::UnknownMemberId)
    );
    // During the join phase the current generation may still commit
    // (consumers commit in onPartitionsRevoked); while completing, not.
    sim.join_new(&["range"]);
    assert_eq!(sim.g.check_commit(&ids[0], None, g, 0), Ok(()));
    sim.join(&ids[0], &["range"]);
    let g = sim.g.generation;
    assert_eq!(
        sim.g.check_commit(&ids[0], None, g, 0),
        Err(ResponseError::RebalanceInProgress)
    );
}

#[test]
fn stored_group_restores_as_stable_and_members_expire() {
    let mut sim = Sim::new();
    let ids = sim.stable_with(2);
    let value = sim.g.to_value(sim.now);
    let mut restored = Group::new("g", 0);
    restored.restore(value, 10_000);
    assert_eq!(restored.state, GroupState::Stable);
    assert_eq!(restored.generation, sim.g.generation);
    assert_eq!(restored.members.len(), 2);
    assert_eq!(restored.leader, sim.g.leader);
    let g = restored.generation;
    assert_eq!(restored.heartbeat(&ids[0], None, g, 10_500), Ok(()));
    let (out, _) = restored.sync(&ids[1], None, g, None, None, vec![], 10_500);
    let Outcome::Done(s) = out else { panic!() };
    assert_eq!(s.assignment, Bytes::from_static(b"a"));
    // Nobody heartbeats after the restart: both expire, the group empties.
    restored.tick(&sim.s, 10_500 + SESSION as i64);
    restored.tick(&sim.s, 12_000 + SESSION as i64);
    assert_eq!(restored.state, GroupState::Empty);
}

#[test]
fn subscription_topics_are_read_from_consumer_metadata() {
    let mut sim = Sim::new();
    let mut r = req("", None, &["range"]);
    r.require_known_member_id = false;
    // ConsumerProtocolSubscription v0: topics ["t1", "t2"], no user data.
    let mut meta = vec![0, 0, 0, 0, 0, 2, 0, 2, b't', b'1', 0, 2, b't', b'2'];
    meta.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    r.protocols = vec![("range".into(), Bytes::from(meta))];
    sim.join_with(r);
    sim.advance(DELAY);
    assert_eq!(
        sim.g.subscribed_topics(),
        Some(vec!["t1".to_string(), "t2".to_string()])
    );
}

#[test]
fn an_unwritten_assignment_is_taken_back() {
    let mut sim = Sim::new();
    let ids = sim.stable_with(2);
    let fx = sim.g.assignment_not_persisted(&sim.s, sim.now);
    assert!(fx.replies.is_empty());
    assert_eq!(sim.g.state, GroupState::PreparingRebalance);
    assert!(sim.g.members.values().all(|m| m.assignment.is_empty()));
    assert_eq!(sim.hb(&ids[0]), Err(ResponseError::RebalanceInProgress));
}

fn committed(at: i64) -> OffsetValue {
    OffsetValue {
        offset: 1,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp: at,
    }
}

#[test]
fn offsets_expire_once_the_group_has_been_empty_for_the_retention() {
    let mut sim = Sim::new();
    let ids = sim.stable_with(1);
    sim.g.offsets.insert(("t".into(), 0), committed(sim.now));
    let never = sim.now + 1_000_000;
    assert!(
        sim.g.expired_offsets(10, never).is_empty(),
        "a group with members keeps its offsets"
    );
    let (r, _) = sim.g.leave(&ids[0], None, &sim.s, sim.now);
    assert_eq!(r, Ok(()));
    assert_eq!(sim.g.state, GroupState::Empty);
    let empty_at = sim.now;
    assert!(sim.g.expired_offsets(1000, empty_at + 999).is_empty());
    assert_eq!(
        sim.g.expired_offsets(1000, empty_at + 1000),
        vec![("t".to_string(), 0)]
    );
    // After a restart the group is still empty since the time it was written.
    let mut restored = Group::new("g", 0);
    restored.restore(sim.g.to_value(empty_at), empty_at + 500);
    restored.offsets = sim.g.offsets.clone();
    assert!(restored.expired_offsets(1000, empty_at + 999).is_empty());
    assert_eq!(restored.expired_offsets(1000, empty_at + 1000).len(), 1);
}

#[test]
fn standalone_offsets_expire_one_by_one_after_their_commit() {
    let mut g = Group::new("standalone", 0);
    g.offsets.insert(("t".into(), 0), committed(100));
    g.offsets.insert(("t".into(), 1), committed(5000));
    assert_eq!(g.expired_offsets(1000, 1100), vec![("t".to_string(), 0)]);
    assert_eq!(g.expired_offsets(1000, 6000).len(), 2);
}
