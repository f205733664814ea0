//! Producer ids and transactions: InitProducerId, AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn, TxnOffsetCommit, DescribeTransactions,
//! ListTransactions, DescribeProducers, WriteTxnMarkers.
//!
//! Runs on the shard that received the request. An idempotent producer
//! (no transactional id) gets a fresh producer id from this shard's block
//! at epoch 0, on any shard, as Kafka does; everything transactional is
//! answered by the id's coordinator shard (`Shard::txns`, NOT_COORDINATOR
//! elsewhere), and TxnOffsetCommit by the group's (`Shard::groups`). This
//! module only translates between wire messages and those.

use std::rc::Rc;

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use std::collections::BTreeMap;

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as DescribedTxn,
};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTxn;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeProducersRequest, DescribeProducersResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListTransactionsRequest,
    ListTransactionsResponse, ProducerId, TransactionalId, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::ResponseError;

use super::groups::{commit_offsets, commit_topics, create_internal_topic, offset_value};
use super::{find_topic, locate, str_bytes, topic_name};
use crate::group::{now_ms, partition_for, OFFSETS_TOPIC};
use crate::shard::Shard;
use crate::txn::{write_markers_here, MarkerReq};

pub async fn init_producer_id(
    shard: &Rc<Shard>,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    if let Some(id) = req.transactional_id.as_ref().filter(|t| !t.is_empty()) {
        let expected = (req.producer_id.0, req.producer_epoch);
        match shard
            .txns
            .init_producer_id(id, req.transaction_timeout_ms, expected)
            .await
        {
            Ok((pid, epoch)) => {
                resp.producer_id = ProducerId(pid);
                resp.producer_epoch = epoch;
            }
            Err(e) => resp.error_code = fenced_as(e, version, 4).code(),
        }
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

/// PRODUCER_FENCED exists from these request versions on (KIP-588); older
/// clients know it as INVALID_PRODUCER_EPOCH.
pub(crate) fn fenced_as(e: ResponseError, version: i16, since: i16) -> ResponseError {
    if e == ResponseError::ProducerFenced && version < since {
        ResponseError::InvalidProducerEpoch
    } else {
        e
    }
}

/// A partition and the error it is answered with.
type PartitionError = (String, i32, ResponseError);

/// The partitions of one AddPartitionsToTxn transaction: each known one,
/// or every partition with its error when some are unknown (the others
/// OPERATION_NOT_ATTEMPTED, as Kafka answers).
fn known_partitions(
    shard: &Shard,
    topics: &[AddPartitionsToTxnTopic],
) -> Result<Vec<(String, i32)>, Vec<PartitionError>> {
    let image = shard.image();
    let mut known = Vec::new();
    let mut unknown = false;
    let mut all = Vec::new();
    for t in topics {
        let meta = image.topic(&t.name);
        for &p in &t.partitions {
            let ok = meta.is_some_and(|m| (0..m.leaders.len() as i32).contains(&p));
            unknown |= !ok;
            let err = if ok {
                ResponseError::OperationNotAttempted
            } else {
                ResponseError::UnknownTopicOrPartition
            };
            all.push((t.name.to_string(), p, err));
            known.push((t.name.to_string(), p));
        }
    }
    if unknown {
        Err(all)
    } else {
        Ok(known)
    }
}

fn topic_results(
    topics: &[AddPartitionsToTxnTopic],
    error: impl Fn(&str, i32) -> Option<ResponseError>,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|&p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(
                                    error(&t.name, p).map_or(0, |e| e.code()),
                                )
                        })
                        .collect(),
                )
        })
        .collect()
}

/// One transaction of AddPartitionsToTxn (the only one before v4).
async fn add_one(
    shard: &Rc<Shard>,
    id: &str,
    producer: (i64, i16),
    topics: &[AddPartitionsToTxnTopic],
    verify_only: bool,
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let partitions = match known_partitions(shard, topics) {
        Ok(p) => p,
        Err(errors) => {
            return topic_results(topics, |t, p| {
                errors
                    .iter()
                    .find(|(et, ep, _)| et == t && *ep == p)
                    .map(|(_, _, e)| *e)
            })
        }
    };
    let outcome = if verify_only {
        match shard.txns.verify(id, producer.0, producer.1, &partitions) {
            Ok(true) => Ok(()),
            // KIP-890: from v5 a partition outside the transaction is
            // TRANSACTION_ABORTABLE, as Kafka's coordinator answers it.
            Ok(false) if version >= 5 => Err(ResponseError::TransactionAbortable),
            Ok(false) => Err(ResponseError::InvalidTxnState),
            Err(e) => Err(e),
        }
    } else {
        // v4+ is the brokers' form: an implicit add of transactions v2
        // (Kafka takes its client to be on transaction version 2).
        shard
            .txns
            .add_partitions(id, producer.0, producer.1, &partitions, version >= 4)
            .await
    };
    let err = outcome.err().map(|e| fenced_as(e, version, 2));
    topic_results(topics, |_, _| err)
}

pub async fn add_partitions_to_txn(
    shard: &Rc<Shard>,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let mut resp = AddPartitionsToTxnResponse::default();
    if version <= 3 {
        resp.results_by_topic_v3_and_below = add_one(
            shard,
            &req.v3_and_below_transactional_id,
            (
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
            ),
            &req.v3_and_below_topics,
            false,
            version,
        )
        .await;
        return resp;
    }
    for t in req.transactions {
        let topic_results = add_one(
            shard,
            &t.transactional_id,
            (t.producer_id.0, t.producer_epoch),
            &t.topics,
            t.verify_only,
            version,
        )
        .await;
        resp.results_by_transaction.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id)
                .with_topic_results(topic_results),
        );
    }
    resp
}

pub async fn add_offsets_to_txn(
    shard: &Rc<Shard>,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let mut resp = AddOffsetsToTxnResponse::default();
    if req.group_id.is_empty() {
        resp.error_code = ResponseError::InvalidGroupId.code();
        return resp;
    }
    if shard.image().topic(OFFSETS_TOPIC).is_none() {
        create_internal_topic(shard, OFFSETS_TOPIC).await;
    }
    let Some(n) = shard
        .image()
        .topic(OFFSETS_TOPIC)
        .map(|t| t.leaders.len() as i32)
    else {
        resp.error_code = ResponseError::CoordinatorNotAvailable.code();
        return resp;
    };
    let partition = (OFFSETS_TOPIC.to_string(), partition_for(&req.group_id, n));
    if let Err(e) = shard
        .txns
        .add_partitions(
            &req.transactional_id,
            req.producer_id.0,
            req.producer_epoch,
            &[partition],
            false,
        )
        .await
    {
        resp.error_code = fenced_as(e, version, 2).code();
    }
    resp
}

/// EndTxn; from v5 (transactions v2) every end bumps the epoch, and the
/// answer carries the producer id and epoch to carry on with.
pub async fn end_txn(shard: &Rc<Shard>, req: EndTxnRequest, version: i16) -> EndTxnResponse {
    let mut resp = EndTxnResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    match shard
        .txns
        .end_txn(
            &req.transactional_id,
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
            version >= 5,
        )
        .await
    {
        Ok((producer_id, epoch)) => {
            resp.producer_id = ProducerId(producer_id);
            resp.producer_epoch = epoch;
        }
        Err(e) => resp.error_code = fenced_as(e, version, 2).code(),
    }
    resp
}

pub async fn txn_offset_commit(
    shard: &Rc<Shard>,
    req: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let now = now_ms();
    let image = shard.image();
    // v6 names topics by id.
    let (wanted, unknown_ids) = commit_topics(
        &image,
        version >= 6,
        req.topics.iter().map(|t| {
            let parts = t.partitions.iter().map(|p| {
                let epoch = if version >= 2 {
                    p.committed_leader_epoch
                } else {
                    -1
                };
                let value = offset_value(p.committed_offset, epoch, &p.committed_metadata, now);
                (p.partition_index, value)
            });
            (t.name.to_string(), t.topic_id, parts.collect())
        }),
    );
    let (member, instance, generation) = if version >= 3 {
        (
            req.member_id.to_string(),
            req.group_instance_id.as_ref().map(|s| s.to_string()),
            req.generation_id,
        )
    } else {
        (String::new(), None, -1)
    };
    let producer = (req.producer_id.0, req.producer_epoch);
    let member = (member.as_str(), instance.as_deref(), generation);
    // v5 (transactions v2) adds the group's offsets partition to the
    // transaction itself, as AddOffsetsToTxn did.
    let added = if version >= 5 {
        add_offsets_partition(shard, &req.transactional_id, &req.group_id, producer).await
    } else {
        Ok(())
    };
    let answered = match added {
        Ok(()) => {
            commit_offsets(
                shard,
                &req.group_id,
                member,
                wanted,
                Some((producer, version)),
            )
            .await
        }
        Err(e) => {
            let code = txn_offset_commit_error(e).code();
            wanted
                .into_iter()
                .map(|(name, parts)| (name, parts.into_iter().map(|(i, _)| (i, code)).collect()))
                .collect()
        }
    };
    let answer = |parts: Vec<(i32, i16)>| -> Vec<TxnOffsetCommitResponsePartition> {
        parts
            .into_iter()
            .map(|(index, err)| {
                TxnOffsetCommitResponsePartition::default()
                    .with_partition_index(index)
                    .with_error_code(err)
            })
            .collect()
    };
    let mut resp = TxnOffsetCommitResponse::default();
    resp.topics = answered
        .into_iter()
        .map(|(name, parts)| {
            let mut topic = TxnOffsetCommitResponseTopic::default().with_partitions(answer(parts));
            if version >= 6 {
                topic.topic_id = image.topic(&name).map_or(uuid::Uuid::nil(), |t| t.id);
            } else {
                topic.name = topic_name(&name);
            }
            topic
        })
        .collect();
    let unknown = ResponseError::UnknownTopicId.code();
    resp.topics
        .extend(unknown_ids.into_iter().map(|(id, parts)| {
            let parts = parts.into_iter().map(|index| (index, unknown)).collect();
            TxnOffsetCommitResponseTopic::default()
                .with_topic_id(id)
                .with_partitions(answer(parts))
        }));
    resp
}

/// The implicit add of TxnOffsetCommit v5+: the group's `__consumer_offsets`
/// partition joins the transaction.
async fn add_offsets_partition(
    shard: &Rc<Shard>,
    transactional_id: &str,
    group_id: &str,
    (producer_id, epoch): (i64, i16),
) -> Result<(), ResponseError> {
    if shard.image().topic(OFFSETS_TOPIC).is_none() {
        create_internal_topic(shard, OFFSETS_TOPIC).await;
    }
    let n = shard
        .image()
        .topic(OFFSETS_TOPIC)
        .map(|t| t.leaders.len() as i32)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    let partition = (OFFSETS_TOPIC.to_string(), partition_for(group_id, n));
    crate::txn::implicit::add(shard, transactional_id, producer_id, epoch, vec![partition]).await
}

/// What TxnOffsetCommit answers when its implicit add failed, as Kafka's
/// group coordinator normalises it: the transaction coordinator being away
/// is COORDINATOR_NOT_AVAILABLE, which the client retries.
fn txn_offset_commit_error(e: ResponseError) -> ResponseError {
    match e {
        ResponseError::NetworkException
        | ResponseError::CoordinatorLoadInProgress
        | ResponseError::NotCoordinator
        | ResponseError::RequestTimedOut => ResponseError::CoordinatorNotAvailable,
        e => e,
    }
}

/// WriteTxnMarkers: markers for partitions this shard leads (from an
/// admin's `abortTransaction`, as `kafka-transactions.sh abort` sends it;
/// our own coordinators reach other shards over the control mesh).
pub async fn write_txn_markers(
    shard: &Rc<Shard>,
    req: WriteTxnMarkersRequest,
    version: i16,
) -> WriteTxnMarkersResponse {
    let image = shard.image();
    let mut resp = WriteTxnMarkersResponse::default();
    for m in req.markers {
        let mut topics = Vec::new();
        for t in &m.topics {
            let meta = find_topic(&image, &t.name, uuid::Uuid::nil());
            let mut located = Vec::new();
            let mut partitions = Vec::new();
            for &index in &t.partition_indexes {
                match locate(shard, meta, index) {
                    Ok(key) => located.push((
                        index,
                        MarkerReq {
                            key,
                            producer_id: m.producer_id.0,
                            epoch: m.producer_epoch,
                            commit: m.transaction_result,
                            coordinator_epoch: m.coordinator_epoch,
                            // v2 (KIP-1228): the marker's transaction version.
                            tv2: version >= 2 && m.transaction_version >= 2,
                        },
                    )),
                    Err(e) => partitions.push((index, e.code())),
                }
            }
            let reqs = located.iter().map(|(_, r)| *r).collect();
            let results = write_markers_here(shard, reqs).await;
            for ((index, _), r) in located.into_iter().zip(results) {
                partitions.push((index, r.err().map_or(0, |e| e.code())));
            }
            partitions.sort_unstable();
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|(index, code)| {
                                WritableTxnMarkerPartitionResult::default()
                                    .with_partition_index(index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    ),
            );
        }
        resp.markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics),
        );
    }
    resp
}

pub fn describe_transactions(
    shard: &Shard,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let mut resp = DescribeTransactionsResponse::default();
    for id in req.transactional_ids {
        let mut out = DescribedTxn::default().with_transactional_id(id.clone());
        match shard.txns.describe(&id) {
            Ok(m) => {
                out.transaction_state = str_bytes(m.state.name());
                out.transaction_timeout_ms = m.timeout_ms;
                out.transaction_start_time_ms = m.start_ms;
                out.producer_id = ProducerId(m.producer_id);
                out.producer_epoch = m.epoch;
                let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for (t, p) in m.partitions {
                    by_topic.entry(t).or_default().push(p);
                }
                out.topics = by_topic
                    .into_iter()
                    .map(|(t, ps)| {
                        TopicData::default()
                            .with_topic(topic_name(&t))
                            .with_partitions(ps)
                    })
                    .collect();
            }
            Err(e) => {
                out.error_code = e.code();
                out.transaction_state = str_bytes("");
                out.producer_id = ProducerId(-1);
                out.producer_epoch = -1;
                out.transaction_start_time_ms = -1;
            }
        }
        resp.transaction_states.push(out);
    }
    resp
}

pub fn list_transactions(
    shard: &Shard,
    req: ListTransactionsRequest,
    version: i16,
) -> ListTransactionsResponse {
    const STATES: [&str; 6] = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
    ];
    let mut resp = ListTransactionsResponse::default();
    let (known, unknown): (Vec<String>, Vec<String>) = req
        .state_filters
        .iter()
        .map(|s| s.to_string())
        .partition(|s| STATES.contains(&s.as_str()));
    resp.unknown_state_filters = unknown.iter().map(|s| str_bytes(s)).collect();
    if !unknown.is_empty() && known.is_empty() {
        return resp;
    }
    // v2 (KIP-1152): transactional ids matching a regular expression
    // (whole ids, RE2 syntax, as Kafka matches them).
    let pattern = match req.transactional_id_pattern.as_deref() {
        Some(p) if version >= 2 && !p.is_empty() => match crate::group::consumer::compile(p) {
            Ok(re) => Some(re),
            Err(e) => {
                resp.error_code = ResponseError::InvalidRegularExpression.code();
                tracing::debug!("ListTransactions: bad transactional id pattern {p:?}: {e}");
                return resp;
            }
        },
        _ => None,
    };
    let pids: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    let min_duration = if version >= 1 {
        req.duration_filter
    } else {
        -1
    };
    resp.transaction_states = shard
        .txns
        .list(&known, &pids, min_duration)
        .into_iter()
        .filter(|(id, _, _)| pattern.as_ref().is_none_or(|re| re.is_match(id)))
        .map(|(id, pid, state)| {
            ListedTxn::default()
                .with_transactional_id(TransactionalId(str_bytes(&id)))
                .with_producer_id(ProducerId(pid))
                .with_transaction_state(str_bytes(state.name()))
        })
        .collect();
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
