//! KIP-848 consumer-group APIs: ConsumerGroupHeartbeat and
//! ConsumerGroupDescribe.
//!
//! Runs on the shard that received the request; only the group's
//! coordinator shard answers (`NOT_COORDINATOR` elsewhere), through
//! `Shard::groups`. This module only translates between wire messages and
//! `crate::group::consumer`.

use std::rc::Rc;

use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member,
    TopicPartitions as DescribedPartitions,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as WireAssignment, TopicPartitions,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
};
use uuid::Uuid;

use super::groups::{group_authorized_operations, Client};
use super::{str_bytes, topic_name};
use crate::group::consumer::{Assignment, Heartbeat};
use crate::metadata::MetadataImage;
use crate::shard::Shard;

/// Member type in ConsumerGroupDescribe v1: a consumer-protocol member.
const MEMBER_TYPE_CONSUMER: i8 = 1;

pub async fn heartbeat(
    shard: &Rc<Shard>,
    req: ConsumerGroupHeartbeatRequest,
    version: i16,
    client: Client,
) -> ConsumerGroupHeartbeatResponse {
    let mut member_id = req.member_id.to_string();
    if member_id.is_empty() && version == 0 && req.member_epoch == 0 {
        // v0: the coordinator names new members (v1: the client does).
        member_id = Uuid::new_v4().to_string();
    }
    let owned = req.topic_partitions.map(|tps| {
        let mut a = Assignment::new();
        for tp in tps {
            a.entry(tp.topic_id).or_default().extend(tp.partitions);
        }
        a
    });
    let hb = Heartbeat {
        member_id,
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|s| s.to_string()),
        rack_id: req.rack_id.map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_names: req
            .subscribed_topic_names
            .map(|v| v.into_iter().map(|t| t.0.to_string()).collect()),
        subscribed_regex: if version >= 1 {
            req.subscribed_topic_regex.map(|s| s.to_string())
        } else {
            None
        },
        server_assignor: req.server_assignor.map(|s| s.to_string()),
        owned,
        client_id: client.id,
        client_host: client.host,
    };
    let mut resp = ConsumerGroupHeartbeatResponse::default();
    match shard.groups.consumer_heartbeat(&req.group_id, hb).await {
        Ok(ok) => {
            resp.member_id = Some(str_bytes(&ok.member_id));
            resp.member_epoch = ok.member_epoch;
            resp.heartbeat_interval_ms = shard
                .groups
                .consumer_settings_for(&req.group_id, &shard.image())
                .heartbeat_interval_ms;
            resp.assignment = ok.assignment.map(|a| {
                WireAssignment::default().with_topic_partitions(
                    a.into_iter()
                        .map(|(t, ps)| {
                            TopicPartitions::default()
                                .with_topic_id(t)
                                .with_partitions(ps.into_iter().collect())
                        })
                        .collect(),
                )
            });
        }
        Err((e, msg)) => {
            resp.error_code = e.code();
            resp.error_message = (!msg.is_empty()).then(|| str_bytes(&msg));
        }
    }
    resp
}

fn described(image: &MetadataImage, a: &Assignment) -> DescribedAssignment {
    DescribedAssignment::default().with_topic_partitions(
        a.iter()
            .map(|(t, ps)| {
                let name = image.topic_by_id(t).map_or("", |m| m.name.as_str());
                DescribedPartitions::default()
                    .with_topic_id(*t)
                    .with_topic_name(topic_name(name))
                    .with_partitions(ps.iter().copied().collect())
            })
            .collect(),
    )
}

pub fn describe(
    shard: &Rc<Shard>,
    req: ConsumerGroupDescribeRequest,
    version: i16,
) -> ConsumerGroupDescribeResponse {
    let image = shard.image();
    let mut resp = ConsumerGroupDescribeResponse::default();
    resp.groups = req
        .group_ids
        .into_iter()
        .map(|group_id| {
            let mut d = DescribedGroup::default();
            d.authorized_operations =
                group_authorized_operations(req.include_authorized_operations);
            match shard.groups.describe_consumer(&group_id) {
                Err((e, msg)) => {
                    d.error_code = e.code();
                    d.error_message = (!msg.is_empty()).then(|| str_bytes(&msg));
                }
                Ok(g) => {
                    d.group_state = str_bytes(g.state_name());
                    d.group_epoch = g.epoch;
                    d.assignment_epoch = g.assignment_epoch;
                    d.assignor_name = str_bytes(&g.assignor);
                    d.members = g
                        .members
                        .values()
                        .map(|m| {
                            let mut out = Member::default();
                            out.member_id = str_bytes(&m.id);
                            out.instance_id = m.instance_id.as_deref().map(str_bytes);
                            out.rack_id = m.rack_id.as_deref().map(str_bytes);
                            out.member_epoch = m.epoch;
                            out.client_id = str_bytes(&m.client_id);
                            out.client_host = str_bytes(&m.client_host);
                            out.subscribed_topic_names =
                                m.subscribed_names.iter().map(|n| topic_name(n)).collect();
                            out.subscribed_topic_regex =
                                m.subscribed_regex.as_deref().map(str_bytes);
                            out.assignment = described(&image, &m.assigned);
                            out.target_assignment = described(
                                &image,
                                g.target.get(&m.id).unwrap_or(&Assignment::new()),
                            );
                            if version >= 1 {
                                out.member_type = MEMBER_TYPE_CONSUMER;
                            }
                            out
                        })
                        .collect();
                }
            }
            d.group_id = group_id;
            d
        })
        .collect();
    resp
}
