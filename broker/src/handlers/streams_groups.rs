//! KIP-1071 streams-group APIs: StreamsGroupHeartbeat,
//! StreamsGroupDescribe and StreamsGroupTopologyDescriptionUpdate.
//!
//! Runs on the shard that received the request; only the group's
//! coordinator shard answers (`NOT_COORDINATOR` elsewhere), through
//! `Shard::groups`. This module translates between wire messages and
//! `crate::group::streams`, and creates the internal topics (repartition
//! and changelog) a heartbeat reports missing, through the controller as
//! CreateTopics does; it never waits for them: the member is told
//! MISSING_INTERNAL_TOPICS and gets its tasks on a later heartbeat.

use std::rc::Rc;

use kafka_protocol::messages::streams_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Endpoint as DescribedEndpoint,
    KeyValue as DescribedKeyValue, Member, Subtopology as DescribedSubtopology,
    TaskIds as DescribedTaskIds, TaskOffset as DescribedTaskOffset,
    TopicInfo as DescribedTopicInfo, Topology as DescribedTopology,
};
use kafka_protocol::messages::streams_group_heartbeat_request::{
    TaskIds as OwnedTaskIds, TopicInfo,
};
use kafka_protocol::messages::streams_group_heartbeat_response::{
    Endpoint, EndpointToPartitions, Status, TaskIds, TopicPartition,
};
use kafka_protocol::messages::{
    StreamsGroupDescribeRequest, StreamsGroupDescribeResponse, StreamsGroupHeartbeatRequest,
    StreamsGroupHeartbeatResponse, StreamsGroupTopologyDescriptionUpdateResponse,
};
use tracing::{info, warn};

use super::groups::{group_authorized_operations, Client};
use super::{str_bytes, topic_name};
use crate::group::streams::{
    self, CopartitionGroup, NewTopic, StreamsHeartbeat, Subtopology, Tasks, Topology,
};
use crate::metadata::Command;
use crate::shard::Shard;

/// The assignor StreamsGroupDescribe v1 names (Kafka's default).
const ASSIGNOR: &str = "sticky";
/// TopologyDescriptionStatus: not asked for / none stored (this broker
/// does not take StreamsGroupTopologyDescriptionUpdate).
const DESCRIPTION_NOT_REQUESTED: i8 = 0;
const DESCRIPTION_NOT_STORED: i8 = 1;
/// Kafka's `group.streams.task.offset.interval.ms` default: how often
/// members report their changelog offsets.
const TASK_OFFSET_INTERVAL_MS: i32 = 60_000;
/// Kafka's `group.streams.acceptable.recovery.lag` default, told to
/// members (v1); no warm-up tasks are assigned, as in Kafka 4.4.
const ACCEPTABLE_RECOVERY_LAG: i64 = 10_000;

fn tasks_from(ids: Option<Vec<OwnedTaskIds>>) -> Option<Tasks> {
    ids.map(|v| {
        let mut t = Tasks::new();
        for x in v {
            t.entry(x.subtopology_id.to_string())
                .or_default()
                .extend(x.partitions);
        }
        t
    })
}

fn topic_info(t: TopicInfo) -> streams::TopicInfo {
    streams::TopicInfo {
        name: t.name.to_string(),
        partitions: t.partitions,
        replication_factor: t.replication_factor,
        configs: t
            .topic_configs
            .into_iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect(),
    }
}

fn topology_from(
    t: kafka_protocol::messages::streams_group_heartbeat_request::Topology,
) -> Topology {
    Topology {
        epoch: t.epoch,
        subtopologies: t
            .subtopologies
            .into_iter()
            .map(|s| Subtopology {
                id: s.subtopology_id.to_string(),
                source_topics: s.source_topics.into_iter().map(|n| n.to_string()).collect(),
                source_regex: s
                    .source_topic_regex
                    .into_iter()
                    .map(|n| n.to_string())
                    .collect(),
                changelogs: s
                    .state_changelog_topics
                    .into_iter()
                    .map(topic_info)
                    .collect(),
                repartition_sinks: s
                    .repartition_sink_topics
                    .into_iter()
                    .map(|n| n.to_string())
                    .collect(),
                repartition_sources: s
                    .repartition_source_topics
                    .into_iter()
                    .map(topic_info)
                    .collect(),
                copartition_groups: s
                    .copartition_groups
                    .into_iter()
                    .map(|g| CopartitionGroup {
                        source_topics: g.source_topics,
                        source_regex: g.source_topic_regex,
                        repartition_sources: g.repartition_source_topics,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn wire_tasks(t: &Tasks) -> Vec<TaskIds> {
    t.iter()
        .filter(|(_, ps)| !ps.is_empty())
        .map(|(s, ps)| {
            TaskIds::default()
                .with_subtopology_id(str_bytes(s))
                .with_partitions(ps.iter().copied().collect())
        })
        .collect()
}

fn wire_partitions(v: Vec<(String, Vec<i32>)>) -> Vec<TopicPartition> {
    v.into_iter()
        .map(|(t, ps)| {
            TopicPartition::default()
                .with_topic(topic_name(&t))
                .with_partitions(ps)
        })
        .collect()
}

pub async fn heartbeat(
    shard: &Rc<Shard>,
    req: StreamsGroupHeartbeatRequest,
    version: i16,
    client: Client,
) -> StreamsGroupHeartbeatResponse {
    let offsets =
        |v: Option<Vec<kafka_protocol::messages::streams_group_heartbeat_request::TaskOffset>>| {
            v.map(|v| {
                v.into_iter()
                    .map(|o| (o.subtopology_id.to_string(), o.partition, o.offset))
                    .collect()
            })
        };
    let hb = StreamsHeartbeat {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        endpoint_epoch: req.endpoint_information_epoch,
        instance_id: req.instance_id.map(|s| s.to_string()),
        rack_id: req.rack_id.map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        topology: req.topology.map(topology_from),
        active: tasks_from(req.active_tasks),
        standby: tasks_from(req.standby_tasks),
        warmup: tasks_from(req.warmup_tasks),
        process_id: req.process_id.map(|s| s.to_string()),
        user_endpoint: req.user_endpoint.map(|e| (e.host.to_string(), e.port)),
        client_tags: req.client_tags.map(|v| {
            v.into_iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect()
        }),
        task_offsets: offsets(req.task_offsets),
        task_end_offsets: offsets(req.task_end_offsets),
        shutdown_application: req.shutdown_application,
        client_id: client.id,
        client_host: client.host,
    };
    let mut resp = StreamsGroupHeartbeatResponse::default();
    match shard.groups.streams_heartbeat(&req.group_id, hb).await {
        Ok(ok) => {
            let failed = if ok.to_create.is_empty() {
                Vec::new()
            } else {
                create_internal_topics(shard, &req.group_id, ok.to_create.clone()).await
            };
            resp.member_id = str_bytes(&ok.member_id);
            resp.member_epoch = ok.member_epoch;
            resp.heartbeat_interval_ms = shard
                .groups
                .streams_settings_for(&req.group_id, &shard.image())
                .heartbeat_interval_ms;
            resp.task_offset_interval_ms = TASK_OFFSET_INTERVAL_MS;
            // v0's legacy int32 lag stays 0, as Kafka 4.4 leaves it.
            if version >= 1 {
                resp.acceptable_recovery_lag = ACCEPTABLE_RECOVERY_LAG;
            }
            resp.status = Some(
                ok.status
                    .iter()
                    .map(|(s, detail)| {
                        let mut detail = detail.clone();
                        if *s == streams::Status::MissingInternalTopics && !failed.is_empty() {
                            detail.push_str(&creation_failed(&failed));
                        }
                        Status::default()
                            .with_status_code(*s as i8)
                            .with_status_detail(str_bytes(&detail))
                    })
                    .collect(),
            );
            if let Some(a) = &ok.assignment {
                resp.active_tasks = Some(wire_tasks(&a.active));
                resp.standby_tasks = Some(wire_tasks(&a.standby));
                resp.warmup_tasks = Some(wire_tasks(&a.warmup));
            }
            resp.endpoint_information_epoch = ok.endpoint_epoch;
            resp.partitions_by_user_endpoint = ok.endpoints.map(|v| {
                v.into_iter()
                    .map(|e| {
                        EndpointToPartitions::default()
                            .with_user_endpoint(
                                Endpoint::default()
                                    .with_host(str_bytes(&e.host))
                                    .with_port(e.port),
                            )
                            .with_active_partitions(wire_partitions(e.active))
                            .with_standby_partitions(wire_partitions(e.standby))
                    })
                    .collect()
            });
        }
        Err((e, msg)) => {
            resp.error_code = e.code();
            resp.error_message = (!msg.is_empty()).then(|| str_bytes(&msg));
        }
    }
    resp
}

/// Kafka's addition to the MISSING_INTERNAL_TOPICS detail when creating
/// them failed: "; Creation failed: t1 (why), t2 (why) and N more."
fn creation_failed(failed: &[(String, String)]) -> String {
    let head: Vec<String> = failed
        .iter()
        .take(3)
        .map(|(t, why)| format!("{t} ({why})"))
        .collect();
    let more = match failed.len() {
        0..=3 => String::new(),
        n => format!(" and {} more", n - 3),
    };
    format!("; Creation failed: {}{more}.", head.join(", "))
}

/// Creates a group's missing internal topics (as Kafka's
/// `AutoTopicCreationManager.createStreamsInternalTopics` does, with the
/// configs the topology gives). A topic another heartbeat created first is
/// fine; any other refusal is logged, returned for the member's status, and
/// tried again on the next heartbeat.
async fn create_internal_topics(
    shard: &Rc<Shard>,
    group: &str,
    topics: Vec<NewTopic>,
) -> Vec<(String, String)> {
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let cmds = topics
        .into_iter()
        .map(|t| Command::CreateTopic {
            name: t.name,
            partitions: t.partitions,
            configs: t.configs,
            assignment: None,
        })
        .collect();
    let results = shard.control().submit(cmds, false).await;
    let mut created = Vec::new();
    let mut failed = Vec::new();
    for (name, r) in names.iter().zip(results) {
        match r {
            Ok(_) => created.push(name.as_str()),
            Err(e) if e.code == kafka_protocol::ResponseError::TopicAlreadyExists.code() => {}
            Err(e) => {
                warn!(
                    group,
                    topic = name.as_str(),
                    "cannot create the streams group's internal topic: {}",
                    e.message
                );
                failed.push((name.clone(), e.message));
            }
        }
    }
    if !created.is_empty() {
        info!(group, topics = ?created, "created the streams group's internal topics");
    }
    failed
}

fn described_tasks(t: &Tasks) -> Vec<DescribedTaskIds> {
    t.iter()
        .filter(|(_, ps)| !ps.is_empty())
        .map(|(s, ps)| {
            DescribedTaskIds::default()
                .with_subtopology_id(str_bytes(s))
                .with_partitions(ps.iter().copied().collect())
        })
        .collect()
}

fn described_assignment(a: &streams::TaskSet) -> DescribedAssignment {
    DescribedAssignment::default()
        .with_active_tasks(described_tasks(&a.active))
        .with_standby_tasks(described_tasks(&a.standby))
        .with_warmup_tasks(described_tasks(&a.warmup))
}

fn described_topic(t: &streams::TopicInfo, partitions: i32) -> DescribedTopicInfo {
    DescribedTopicInfo::default()
        .with_name(topic_name(&t.name))
        .with_partitions(partitions)
        .with_replication_factor(t.replication_factor)
        .with_topic_configs(
            t.configs
                .iter()
                .map(|(k, v)| {
                    DescribedKeyValue::default()
                        .with_key(str_bytes(k))
                        .with_value(str_bytes(v))
                })
                .collect(),
        )
}

fn described_offsets(
    m: &std::collections::BTreeMap<(String, i32), i64>,
) -> Vec<DescribedTaskOffset> {
    m.iter()
        .map(|((s, p), o)| {
            DescribedTaskOffset::default()
                .with_subtopology_id(str_bytes(s))
                .with_partition(*p)
                .with_offset(*o)
        })
        .collect()
}

/// StreamsGroupTopologyDescriptionUpdate: what Kafka 4.4 answers when no
/// topology-description plugin is configured (its
/// `GroupCoordinatorService` checks that first). Clients only send it when
/// a heartbeat asks for a description, which this broker never does.
pub fn topology_description_update() -> StreamsGroupTopologyDescriptionUpdateResponse {
    StreamsGroupTopologyDescriptionUpdateResponse::default()
        .with_error_code(kafka_protocol::ResponseError::UnsupportedVersion.code())
        .with_error_message(Some(str_bytes(
            "The broker has no streams group topology description plugin configured.",
        )))
}

pub fn describe(
    shard: &Rc<Shard>,
    req: StreamsGroupDescribeRequest,
    version: i16,
) -> StreamsGroupDescribeResponse {
    let image = shard.image();
    let mut resp = StreamsGroupDescribeResponse::default();
    resp.groups = req
        .group_ids
        .into_iter()
        .map(|group_id| {
            let mut d = DescribedGroup::default();
            d.authorized_operations =
                group_authorized_operations(req.include_authorized_operations);
            match shard.groups.describe_streams(&group_id) {
                Err((e, msg)) => {
                    d.error_code = e.code();
                    d.error_message = (!msg.is_empty()).then(|| str_bytes(&msg));
                }
                Ok(g) => {
                    d.group_state = str_bytes(g.state_name());
                    d.group_epoch = g.epoch;
                    d.assignment_epoch = g.assignment_epoch;
                    // Internal topics as configured (their decided counts
                    // when they exist, else 0 as the member sent them).
                    let count = |name: &str, given: i32| {
                        image.topic(name).map_or(given, |t| t.leaders.len() as i32)
                    };
                    d.topology = g.topology.as_ref().map(|t| {
                        DescribedTopology::default()
                            .with_epoch(t.epoch)
                            .with_subtopologies(Some(
                                t.subtopologies
                                    .iter()
                                    .map(|s| {
                                        DescribedSubtopology::default()
                                            .with_subtopology_id(str_bytes(&s.id))
                                            .with_source_topics(
                                                s.source_topics
                                                    .iter()
                                                    .map(|n| topic_name(n))
                                                    .collect(),
                                            )
                                            .with_repartition_sink_topics(
                                                s.repartition_sinks
                                                    .iter()
                                                    .map(|n| topic_name(n))
                                                    .collect(),
                                            )
                                            .with_state_changelog_topics(
                                                s.changelogs
                                                    .iter()
                                                    .map(|c| {
                                                        described_topic(
                                                            c,
                                                            count(&c.name, c.partitions),
                                                        )
                                                    })
                                                    .collect(),
                                            )
                                            .with_repartition_source_topics(
                                                s.repartition_sources
                                                    .iter()
                                                    .map(|r| {
                                                        described_topic(
                                                            r,
                                                            count(&r.name, r.partitions),
                                                        )
                                                    })
                                                    .collect(),
                                            )
                                    })
                                    .collect(),
                            ))
                    });
                    d.members = g
                        .members
                        .values()
                        .map(|m| {
                            let mut out = Member::default();
                            out.member_id = str_bytes(&m.id);
                            out.member_epoch = m.epoch;
                            out.instance_id = m.instance_id.as_deref().map(str_bytes);
                            out.rack_id = m.rack_id.as_deref().map(str_bytes);
                            out.client_id = str_bytes(&m.client_id);
                            out.client_host = str_bytes(&m.client_host);
                            out.topology_epoch = m.topology_epoch;
                            out.process_id = str_bytes(&m.process_id);
                            out.user_endpoint = m.user_endpoint.as_ref().map(|(h, p)| {
                                DescribedEndpoint::default()
                                    .with_host(str_bytes(h))
                                    .with_port(*p)
                            });
                            out.client_tags = m
                                .client_tags
                                .iter()
                                .map(|(k, v)| {
                                    DescribedKeyValue::default()
                                        .with_key(str_bytes(k))
                                        .with_value(str_bytes(v))
                                })
                                .collect();
                            out.task_offsets = described_offsets(&m.task_offsets);
                            out.task_end_offsets = described_offsets(&m.task_end_offsets);
                            out.assignment = described_assignment(&m.assigned);
                            out.target_assignment = described_assignment(
                                g.target.get(&m.id).unwrap_or(&streams::TaskSet::default()),
                            );
                            out
                        })
                        .collect();
                    if version >= 1 {
                        d.assignor_name = Some(str_bytes(ASSIGNOR));
                        d.topology_description_status = if req.include_topology_description {
                            DESCRIPTION_NOT_STORED
                        } else {
                            DESCRIPTION_NOT_REQUESTED
                        };
                    }
                }
            }
            d.group_id = group_id;
            d
        })
        .collect();
    resp
}
