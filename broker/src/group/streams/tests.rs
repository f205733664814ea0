use std::collections::BTreeMap;

use super::*;

#[derive(Default)]
struct FakeTopics(BTreeMap<String, i32>);

impl Topics for FakeTopics {
    fn lookup(&self, name: &str) -> Option<(uuid::Uuid, i32)> {
        self.0.get(name).map(|n| (uuid::Uuid::nil(), *n))
    }
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

fn topics(spec: &[(&str, i32)]) -> FakeTopics {
    FakeTopics(spec.iter().map(|(t, n)| (t.to_string(), *n)).collect())
}

fn info(name: &str, partitions: i32) -> TopicInfo {
    TopicInfo {
        name: name.into(),
        partitions,
        replication_factor: 0,
        configs: vec![("cleanup.policy".into(), "compact".into())],
    }
}

/// The word count's topology: 0 reads `in` and writes the repartition
/// topic; 1 reads it and keeps a changelog.
fn word_count() -> Topology {
    Topology {
        epoch: 0,
        subtopologies: vec![
            Subtopology {
                id: "0".into(),
                source_topics: vec!["in".into()],
                repartition_sinks: vec!["app-rep".into()],
                ..Default::default()
            },
            Subtopology {
                id: "1".into(),
                repartition_sources: vec![info("app-rep", 0)],
                changelogs: vec![info("app-log", 0)],
                ..Default::default()
            },
        ],
    }
}

const SETTINGS: StreamsSettings = StreamsSettings {
    session_timeout_ms: 45_000,
    heartbeat_interval_ms: 5_000,
    num_standby_replicas: 0,
    initial_rebalance_delay_ms: 0,
    max_size: 100,
};

fn join(id: &str, process: &str) -> StreamsHeartbeat {
    StreamsHeartbeat {
        member_id: id.into(),
        member_epoch: 0,
        rebalance_timeout_ms: 30_000,
        topology: Some(word_count()),
        active: Some(Tasks::new()),
        standby: Some(Tasks::new()),
        warmup: Some(Tasks::new()),
        process_id: Some(process.into()),
        ..Default::default()
    }
}

fn beat(id: &str, epoch: i32, owned: Option<&TaskSet>) -> StreamsHeartbeat {
    StreamsHeartbeat {
        member_id: id.into(),
        member_epoch: epoch,
        rebalance_timeout_ms: -1,
        active: owned.map(|o| o.active.clone()),
        standby: owned.map(|o| o.standby.clone()),
        warmup: owned.map(|o| o.warmup.clone()),
        ..Default::default()
    }
}

fn statuses(ok: &StreamsHeartbeatOk) -> Vec<Status> {
    ok.status.iter().map(|(s, _)| *s).collect()
}

#[test]
fn configure_sizes_internal_topics_from_the_source_topics() {
    let c = configure(&word_count(), &topics(&[("in", 4)])).unwrap();
    assert_eq!(
        c.problem.as_ref().map(|p| p.0),
        Some(Status::MissingInternalTopics)
    );
    assert!(
        c.tasks.is_empty(),
        "no tasks before the internal topics exist"
    );
    let made: Vec<(&str, i32)> = c
        .to_create
        .iter()
        .map(|t| (t.name.as_str(), t.partitions))
        .collect();
    assert_eq!(made, vec![("app-log", 4), ("app-rep", 4)]);
    assert_eq!(c.to_create[0].configs["cleanup.policy"], "compact");

    let c = configure(
        &word_count(),
        &topics(&[("in", 4), ("app-rep", 4), ("app-log", 4)]),
    )
    .unwrap();
    assert_eq!(c.problem, None);
    assert_eq!(c.tasks, BTreeMap::from([("0".into(), 4), ("1".into(), 4)]));
    assert!(c.to_create.is_empty());
}

#[test]
fn configure_reports_missing_and_misfit_topics() {
    let c = configure(&word_count(), &topics(&[])).unwrap();
    assert_eq!(
        c.problem,
        Some((
            Status::MissingSourceTopics,
            "Source topics in are missing.".into()
        ))
    );
    let c = configure(&word_count(), &topics(&[("in", 4), ("app-rep", 2)])).unwrap();
    assert_eq!(
        c.problem.map(|p| p.0),
        Some(Status::IncorrectlyPartitionedTopics)
    );
    // A join of two topics with different partition counts.
    let mut t = word_count();
    t.subtopologies[0].source_topics.push("other".into());
    t.subtopologies[0]
        .copartition_groups
        .push(CopartitionGroup {
            source_topics: vec![0, 1],
            ..Default::default()
        });
    let c = configure(&t, &topics(&[("in", 4), ("other", 3)])).unwrap();
    assert_eq!(
        c.problem.map(|p| p.0),
        Some(Status::IncorrectlyPartitionedTopics)
    );
    let c = configure(&t, &topics(&[("in", 3), ("other", 3)])).unwrap();
    assert_eq!(c.problem.map(|p| p.0), Some(Status::MissingInternalTopics));
}

#[test]
fn a_copartitioned_repartition_topic_follows_its_partner() {
    let mut t = word_count();
    t.subtopologies[1].source_topics.push("table".into());
    t.subtopologies[1]
        .copartition_groups
        .push(CopartitionGroup {
            source_topics: vec![0],
            repartition_sources: vec![0],
            ..Default::default()
        });
    let c = configure(&t, &topics(&[("in", 8), ("table", 2)])).unwrap();
    let rep = c.to_create.iter().find(|t| t.name == "app-rep").unwrap();
    assert_eq!(
        rep.partitions, 2,
        "the repartition topic takes the table's count"
    );
}

#[test]
fn topologies_that_can_never_run_are_refused() {
    // A repartition topic nobody writes to.
    let mut t = word_count();
    t.subtopologies[0].repartition_sinks.clear();
    let e = configure(&t, &topics(&[("in", 4)])).unwrap_err();
    assert_eq!(e.0, ResponseError::StreamsInvalidTopology);
    assert!(e.1.contains("never used as a sink topic"), "{}", e.1);
    // Two repartition topics feeding each other, nothing else.
    let loop_ = Topology {
        epoch: 0,
        subtopologies: vec![
            Subtopology {
                id: "0".into(),
                repartition_sources: vec![info("a", 0)],
                repartition_sinks: vec!["b".into()],
                ..Default::default()
            },
            Subtopology {
                id: "1".into(),
                repartition_sources: vec![info("b", 0)],
                repartition_sinks: vec!["a".into()],
                ..Default::default()
            },
        ],
    };
    let e = configure(&loop_, &topics(&[])).unwrap_err();
    assert!(e.1.contains("There may be loops"), "{}", e.1);
    // Refused at the heartbeat, before the group keeps it.
    let mut g = StreamsGroup::new();
    let mut j = join("a", "p1");
    j.topology = Some(loop_);
    let e = g.heartbeat(j, &topics(&[]), &SETTINGS, 0).unwrap_err();
    assert_eq!(e.0, ResponseError::StreamsInvalidTopology);
    assert!(g.topology.is_none() && g.members.is_empty());
    // Regexes, a changelog with a partition count, internal topics.
    let mut j = join("a", "p1");
    j.topology.as_mut().unwrap().subtopologies[0].source_regex = vec!["in.*".into()];
    let e = g
        .heartbeat(j, &topics(&[("in", 1)]), &SETTINGS, 0)
        .unwrap_err();
    assert_eq!(
        e,
        invalid("Regular expressions for source topics are not supported yet.")
    );
    let mut j = join("a", "p1");
    j.topology.as_mut().unwrap().subtopologies[1].changelogs[0].partitions = 3;
    let e = g
        .heartbeat(j, &topics(&[("in", 1)]), &SETTINGS, 0)
        .unwrap_err();
    assert_eq!(e.0, ResponseError::StreamsInvalidTopology);
    let mut j = join("a", "p1");
    j.topology.as_mut().unwrap().subtopologies[0].source_topics = vec!["__consumer_offsets".into()];
    let e = g
        .heartbeat(j, &topics(&[("in", 1)]), &SETTINGS, 0)
        .unwrap_err();
    assert_eq!(
        e.1,
        "Use of Kafka internal topics __consumer_offsets in a Kafka Streams topology is prohibited."
    );
}

#[test]
fn messages_name_three_topics_then_count_the_rest() {
    let mut t = word_count();
    t.subtopologies[0].source_topics =
        vec!["a".into(), "b".into(), "c".into(), "d".into(), "e".into()];
    let c = configure(&t, &topics(&[])).unwrap();
    assert_eq!(
        c.problem.unwrap().1,
        "Source topics a, b, c and 2 additional topics are missing."
    );
}

#[test]
fn the_first_assignment_waits_for_the_initial_delay() {
    let settings = StreamsSettings {
        initial_rebalance_delay_ms: 3_000,
        ..SETTINGS
    };
    let tp = topics(&[("in", 2), ("app-rep", 2), ("app-log", 2)]);
    let mut g = StreamsGroup::new();
    let a = g.heartbeat(join("a", "p1"), &tp, &settings, 1_000).unwrap();
    assert!(
        statuses(&a).contains(&Status::AssignmentDelayed),
        "{:?}",
        a.status
    );
    assert_eq!(a.member_epoch, 1, "held back at the group's first epoch");
    assert_eq!(count(&a.assignment.unwrap().active), 0);
    let b = g.heartbeat(join("b", "p2"), &tp, &settings, 2_000).unwrap();
    assert!(statuses(&b).contains(&Status::AssignmentDelayed));
    assert_eq!(g.next_deadline(&settings), Some(4_000));
    g.tick(&settings, 4_000);
    let a = g
        .heartbeat(beat("a", 1, None), &tp, &settings, 4_001)
        .unwrap();
    assert!(!statuses(&a).contains(&Status::AssignmentDelayed));
    assert_eq!(count(&a.assignment.unwrap().active), 2);
    let b = g
        .heartbeat(beat("b", 1, None), &tp, &settings, 4_002)
        .unwrap();
    assert_eq!(
        count(&b.assignment.unwrap().active),
        2,
        "both start at once, nothing moves"
    );
}

#[test]
fn standbys_follow_the_group_config_and_bump_the_epoch() {
    let tp = topics(&[("in", 2), ("app-rep", 2), ("app-log", 2)]);
    let mut g = StreamsGroup::new();
    let a = g.heartbeat(join("a", "p1"), &tp, &SETTINGS, 0).unwrap();
    let b = g.heartbeat(join("b", "p2"), &tp, &SETTINGS, 0).unwrap();
    let one = StreamsSettings {
        num_standby_replicas: 1,
        ..SETTINGS
    };
    let epoch = g.epoch;
    g.heartbeat(beat("a", a.member_epoch, None), &tp, &one, 1)
        .unwrap();
    assert_eq!(g.epoch, epoch + 1);
    // Only subtopology 1 keeps state: its two tasks get a standby each,
    // in the other process.
    let standbys: usize = g.target.values().map(|t| count(&t.standby)).sum();
    assert_eq!(standbys, 2, "{:?}", g.target);
    assert!(g.target.values().all(|t| !t.standby.contains_key("0")));
    let _ = b;
}

#[test]
fn members_get_tasks_once_the_internal_topics_exist_and_hand_them_over() {
    let mut g = StreamsGroup::new();
    let mut tp = topics(&[("in", 4)]);
    let ok = g.heartbeat(join("a", "p1"), &tp, &SETTINGS, 0).unwrap();
    assert_eq!(statuses(&ok), vec![Status::MissingInternalTopics]);
    assert_eq!(ok.to_create.len(), 2);
    assert_eq!(ok.assignment, Some(TaskSet::default()));
    assert_eq!(g.state_name(), "NotReady");

    // The coordinator created them.
    tp.0.insert("app-rep".into(), 4);
    tp.0.insert("app-log".into(), 4);
    let ok = g
        .heartbeat(beat("a", ok.member_epoch, None), &tp, &SETTINGS, 10)
        .unwrap();
    assert!(ok.status.is_empty(), "{:?}", ok.status);
    let a_tasks = ok.assignment.clone().expect("tasks changed");
    assert_eq!(count(&a_tasks.active), 8);
    assert_eq!(g.state_name(), "Stable");
    let a_epoch = ok.member_epoch;

    // b joins: a must give up half first; b gets none of them meanwhile.
    let ok_b = g.heartbeat(join("b", "p2"), &tp, &SETTINGS, 20).unwrap();
    assert_eq!(count(&ok_b.assignment.clone().unwrap().active), 0);
    assert_eq!(g.members["b"].state, MemberState::UnreleasedTasks);
    let ok = g
        .heartbeat(beat("a", a_epoch, None), &tp, &SETTINGS, 30)
        .unwrap();
    assert_eq!(
        ok.member_epoch, a_epoch,
        "revocation happens at the old epoch"
    );
    let kept = ok.assignment.clone().unwrap();
    assert_eq!(count(&kept.active), 4);
    assert_eq!(g.members["a"].state, MemberState::UnrevokedTasks);
    // b still waits while a owns them.
    let ok_b2 = g
        .heartbeat(beat("b", ok_b.member_epoch, None), &tp, &SETTINGS, 35)
        .unwrap();
    assert_eq!(ok_b2.assignment, None);
    // a reports that it let go.
    let ok = g
        .heartbeat(beat("a", a_epoch, Some(&kept)), &tp, &SETTINGS, 40)
        .unwrap();
    assert_eq!(ok.member_epoch, g.epoch);
    let ok_b3 = g
        .heartbeat(beat("b", ok_b2.member_epoch, None), &tp, &SETTINGS, 50)
        .unwrap();
    let b_tasks = ok_b3.assignment.unwrap();
    assert_eq!(count(&b_tasks.active), 4);
    assert!(!overlaps(&b_tasks.active, &kept.active));
    assert_eq!(g.state_name(), "Stable");
}

#[test]
fn a_silent_member_is_fenced_and_its_tasks_move() {
    let mut g = StreamsGroup::new();
    let tp = topics(&[("in", 2), ("app-rep", 2), ("app-log", 2)]);
    g.heartbeat(join("a", "p1"), &tp, &SETTINGS, 0).unwrap();
    let ok_b = g.heartbeat(join("b", "p2"), &tp, &SETTINGS, 0).unwrap();
    assert_eq!(g.next_deadline(&SETTINGS), Some(45_000));
    assert!(g.tick(&SETTINGS, 44_999).is_empty());
    g.heartbeat(beat("b", ok_b.member_epoch, None), &tp, &SETTINGS, 40_000)
        .unwrap();
    assert_eq!(g.tick(&SETTINGS, 45_000), vec!["a".to_string()]);
    let ok = g
        .heartbeat(beat("b", ok_b.member_epoch, None), &tp, &SETTINGS, 45_001)
        .unwrap();
    assert_eq!(count(&ok.assignment.unwrap().active), 4);
}

#[test]
fn requests_are_checked_as_kafka_checks_them() {
    let mut g = StreamsGroup::new();
    let tp = topics(&[("in", 1)]);
    let mut no_topology = join("a", "p1");
    no_topology.topology = None;
    let e = g.heartbeat(no_topology, &tp, &SETTINGS, 0).unwrap_err();
    assert_eq!(e.0, ResponseError::InvalidRequest);
    let mut owning = join("a", "p1");
    owning.active = Some(Tasks::from([("0".to_string(), BTreeSet::from([0]))]));
    assert_eq!(
        g.heartbeat(owning, &tp, &SETTINGS, 0).unwrap_err().0,
        ResponseError::InvalidRequest
    );
    let e = g
        .heartbeat(beat("nobody", 3, None), &tp, &SETTINGS, 0)
        .unwrap_err();
    assert_eq!(e.0, ResponseError::UnknownMemberId);
    let ok = g.heartbeat(join("a", "p1"), &tp, &SETTINGS, 0).unwrap();
    let e = g
        .heartbeat(beat("a", ok.member_epoch + 1, None), &tp, &SETTINGS, 0)
        .unwrap_err();
    assert_eq!(e.0, ResponseError::FencedMemberEpoch);
    // A different topology of the same epoch, or a newer one: Kafka 4.4
    // keeps the group's.
    let mut other = join("b", "p2");
    other.topology.as_mut().unwrap().subtopologies.pop();
    let e = g.heartbeat(other, &tp, &SETTINGS, 0).unwrap_err();
    assert_eq!(e, invalid("Topology updates are not supported yet."));
    let mut newer = join("b", "p2");
    newer.topology.as_mut().unwrap().epoch = 1;
    assert!(g.heartbeat(newer, &tp, &SETTINGS, 0).is_err());
    // Offsets: the member's own epoch; a newer one is stale.
    let a_epoch = g.members["a"].epoch;
    assert_eq!(
        g.check_offset_commit("a", a_epoch, &[("in", 0)], false),
        Ok(())
    );
    assert_eq!(
        g.check_offset_commit("a", a_epoch + 5, &[("in", 0)], false),
        Err(ResponseError::StaleMemberEpoch)
    );
    assert_eq!(
        g.check_offset_commit("zz", 1, &[("in", 0)], false),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(g.check_offset_fetch("a", a_epoch), Ok(()));
    assert_eq!(
        g.check_offset_fetch("a", a_epoch - 1),
        Err(ResponseError::StaleMemberEpoch)
    );
}

#[test]
fn an_older_topology_epoch_is_stale_and_the_group_keeps_its_own() {
    let tp = topics(&[("in", 1), ("app-rep", 1), ("app-log", 1)]);
    let mut g = StreamsGroup::new();
    let mut first = join("a", "p1");
    first.topology.as_mut().unwrap().epoch = 2;
    g.heartbeat(first, &tp, &SETTINGS, 0).unwrap();
    let ok = g.heartbeat(join("b", "p2"), &tp, &SETTINGS, 0).unwrap();
    assert_eq!(
        ok.status,
        vec![(
            Status::StaleTopology,
            "The member's topology epoch 0 is behind the group's topology epoch 2.".to_string()
        )]
    );
    assert_eq!(g.topology.as_ref().unwrap().epoch, 2);
}

#[test]
fn an_older_epochs_commit_is_fine_for_tasks_held_since() {
    let tp = topics(&[("in", 2), ("app-rep", 2), ("app-log", 2)]);
    let mut g = StreamsGroup::new();
    let a = g.heartbeat(join("a", "p1"), &tp, &SETTINGS, 0).unwrap();
    let first = a.member_epoch;
    // b joins and leaves: a's epoch moves on twice, its tasks stay.
    let b = g.heartbeat(join("b", "p2"), &tp, &SETTINGS, 1).unwrap();
    let a2 = g
        .heartbeat(beat("a", first, None), &tp, &SETTINGS, 2)
        .unwrap();
    let kept = a2.assignment.unwrap();
    g.heartbeat(beat("a", first, Some(&kept)), &tp, &SETTINGS, 3)
        .unwrap();
    g.heartbeat(beat("b", b.member_epoch, None), &tp, &SETTINGS, 4)
        .unwrap();
    let now = g.members["a"].epoch;
    assert!(now > first);
    let (sub, p) = kept
        .active
        .iter()
        .next()
        .map(|(s, ps)| (s.clone(), *ps.iter().next().unwrap()))
        .unwrap();
    let topic = if sub == "0" { "in" } else { "app-rep" };
    assert_eq!(
        g.check_offset_commit("a", first, &[(topic, p)], false),
        Ok(())
    );
    // Not for a partition it gave away, nor a topic outside the topology.
    let (gone_sub, gone) = [("0", 0), ("0", 1), ("1", 0), ("1", 1)]
        .into_iter()
        .find(|(s, q)| !has(&kept.active, s, *q))
        .unwrap();
    let gone_topic = if gone_sub == "0" { "in" } else { "app-rep" };
    assert_eq!(
        g.check_offset_commit("a", first, &[(gone_topic, gone)], false),
        Err(ResponseError::StaleMemberEpoch)
    );
    assert_eq!(
        g.check_offset_commit("a", first, &[("elsewhere", p)], false),
        Err(ResponseError::StaleMemberEpoch)
    );
}

#[test]
fn a_shutdown_request_reaches_every_member_and_a_leave_clears_it() {
    let mut g = StreamsGroup::new();
    let tp = topics(&[("in", 1), ("app-rep", 1), ("app-log", 1)]);
    let a = g.heartbeat(join("a", "p1"), &tp, &SETTINGS, 0).unwrap();
    let b = g.heartbeat(join("b", "p2"), &tp, &SETTINGS, 0).unwrap();
    let mut down = beat("a", a.member_epoch, None);
    down.shutdown_application = true;
    let ok = g.heartbeat(down, &tp, &SETTINGS, 1).unwrap();
    assert!(statuses(&ok).contains(&Status::ShutdownApplication));
    let ok = g
        .heartbeat(beat("b", b.member_epoch, None), &tp, &SETTINGS, 2)
        .unwrap();
    assert!(statuses(&ok).contains(&Status::ShutdownApplication));
    g.heartbeat(beat("a", LEAVE_EPOCH, None), &tp, &SETTINGS, 3)
        .unwrap();
    g.heartbeat(beat("b", LEAVE_EPOCH, None), &tp, &SETTINGS, 3)
        .unwrap();
    assert_eq!(g.state_name(), "Empty");
    let ok = g.heartbeat(join("c", "p3"), &tp, &SETTINGS, 4).unwrap();
    assert!(!statuses(&ok).contains(&Status::ShutdownApplication));
}

#[test]
fn endpoints_name_the_input_partitions_of_each_members_tasks() {
    let mut g = StreamsGroup::new();
    let tp = topics(&[("in", 2), ("app-rep", 2), ("app-log", 2)]);
    let mut j = join("a", "p1");
    j.user_endpoint = Some(("host-a".into(), 8080));
    let ok = g.heartbeat(j, &tp, &SETTINGS, 0).unwrap();
    assert_eq!(ok.endpoint_epoch, 1);
    let e = ok.endpoints.expect("a new member's endpoint epoch differs");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].host, "host-a");
    assert_eq!(
        e[0].active,
        vec![
            ("app-rep".to_string(), vec![0, 1]),
            ("in".to_string(), vec![0, 1])
        ]
    );
    let mut b = beat("a", ok.member_epoch, None);
    b.endpoint_epoch = ok.endpoint_epoch;
    assert_eq!(g.heartbeat(b, &tp, &SETTINGS, 1).unwrap().endpoints, None);
}
