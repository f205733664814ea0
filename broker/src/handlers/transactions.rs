//! Producer ids and transactions: InitProducerId, DescribeProducers.
//!
//! Runs on the shard that received the request. An idempotent producer
//! (no transactional id) gets a fresh producer id from this shard's block
//! at epoch 0, on any shard, as Kafka does. This module only translates
//! between wire messages and the shard.

use std::rc::Rc;

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId,
};
use kafka_protocol::ResponseError;

use super::{find_topic, locate};
use crate::shard::Shard;

pub async fn init_producer_id(
    shard: &Rc<Shard>,
    req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    if req.transactional_id.as_ref().is_some_and(|t| !t.is_empty()) {
        resp.error_code = ResponseError::CoordinatorNotAvailable.code();
        return resp;
    }
    // Idempotent only: a new producer id every time (Kafka ignores the
    // producer id and epoch a KIP-360 client sends here).
    match shard.new_producer_id().await {
        Ok(id) => {
            resp.producer_id = ProducerId(id);
            resp.producer_epoch = 0;
        }
        Err(e) => resp.error_code = e.code(),
    }
    resp
}

/// DescribeProducers: the producers a partition this shard leads knows
/// (for `kafka-transactions.sh describe-producers` and hanging-transaction
/// hunts).
pub fn describe_producers(
    shard: &Shard,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let image = shard.image();
    let mut resp = DescribeProducersResponse::default();
    for t in req.topics {
        let meta = find_topic(&image, &t.name, uuid::Uuid::nil());
        let mut out = TopicResponse::default().with_name(t.name.clone());
        for index in t.partition_indexes {
            let mut pr = PartitionResponse::default().with_partition_index(index);
            let located = locate(shard, meta, index);
            let parts = shard.partitions.borrow();
            match located.map(|k| parts.get(&k)) {
                Ok(Some(part)) => {
                    let mut active: Vec<ProducerState> = part
                        .producers
                        .producers()
                        .map(|e| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(e.producer_id))
                                .with_producer_epoch(i32::from(e.epoch))
                                .with_last_sequence(e.last_seq())
                                .with_last_timestamp(e.last_timestamp)
                                .with_coordinator_epoch(e.coordinator_epoch)
                                .with_current_txn_start_offset(e.txn_first_offset.unwrap_or(-1))
                        })
                        .collect();
                    active.sort_by_key(|p| p.producer_id.0);
                    pr.active_producers = active;
                }
                Ok(None) => pr.error_code = ResponseError::NotLeaderOrFollower.code(),
                Err(e) => pr.error_code = e.code(),
            }
            out.partitions.push(pr);
        }
        resp.topics.push(out);
    }
    resp
}
