//! Transactions v2 (KIP-890 part 2): a client with `transaction.version` 2
//! sends no AddPartitionsToTxn or AddOffsetsToTxn. The partition leader adds
//! a partition to the transaction when the first transactional batch of a
//! Produce v12+ reaches it, and the group coordinator adds the group's
//! `__consumer_offsets` partition for a TxnOffsetCommit v5+, as Kafka's
//! `AddPartitionsToTxnManager` does for them.
//!
//! Also the order a producer's produce requests keep while one of them waits
//! for its add: requests of one connection run as concurrent tasks, and a
//! later request of the same producer must not be appended before an
//! earlier one (`ProducerLines`).
//!
//! Runs on the shard that received the request. The coordinating shard is
//! reached directly, over the control mesh, or, on another broker, with
//! Kafka's AddPartitionsToTxn v5 (`verify_only` false). Never holds a
//! `RefCell` borrow across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use event_listener::Event;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, ProducerId, TransactionalId,
};
use kafka_protocol::ResponseError;

use super::TXN_TOPIC;
use crate::control::TxnAdd;
use crate::group::partition_for;
use crate::handlers::{str_bytes, topic_name};
use crate::shard::Shard;

/// The AddPartitionsToTxn version brokers send (the batched form, v4+).
const VERSION: i16 = 5;
/// How long a call to another broker's coordinator may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Adds `partitions` to the transaction of `transactional_id`, wherever
/// it is coordinated. Kafka's errors, as the coordinator answers them.
pub async fn add(
    shard: &Rc<Shard>,
    transactional_id: &str,
    producer_id: i64,
    epoch: i16,
    partitions: Vec<(String, i32)>,
) -> Result<(), ResponseError> {
    let image = shard.image();
    let Some(topic) = image.topic(TXN_TOPIC) else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    let p = partition_for(transactional_id, topic.leaders.len() as i32);
    let node = topic.leader_nodes.get(p as usize).copied().unwrap_or(-1);
    if node == shard.node_id() {
        return shard
            .txns
            .add_partitions(transactional_id, producer_id, epoch, &partitions, true)
            .await;
    }
    if let Some(s) = shard.config.shard_of_node(node) {
        let add = TxnAdd {
            transactional_id: transactional_id.to_string(),
            producer_id,
            epoch,
            partitions,
        };
        return shard.control().add_to_txn(s, add).await;
    }
    let Some(n) = image.live_node(node) else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    let addr = format!("{}:{}", n.host, n.port);
    add_remote(&addr, transactional_id, producer_id, epoch, &partitions).await
}

async fn add_remote(
    addr: &str,
    transactional_id: &str,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
) -> Result<(), ResponseError> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in partitions {
        by_topic.entry(t).or_default().push(*p);
    }
    let topics = by_topic
        .into_iter()
        .map(|(t, ps)| {
            AddPartitionsToTxnTopic::default()
                .with_name(topic_name(t))
                .with_partitions(ps)
        })
        .collect();
    let req = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(str_bytes(transactional_id)))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_verify_only(false)
            .with_topics(topics),
    ]);
    let resp: AddPartitionsToTxnResponse =
        crate::peer::call(addr, ApiKey::AddPartitionsToTxn, VERSION, &req, TIMEOUT).await?;
    if resp.error_code != 0 {
        return Err(crate::handlers::error_from_code(resp.error_code));
    }
    let code = resp
        .results_by_transaction
        .iter()
        .flat_map(|t| t.topic_results.iter())
        .flat_map(|t| t.results_by_partition.iter())
        .map(|p| p.partition_error_code)
        .find(|&c| c != 0);
    match code {
        None => Ok(()),
        Some(c) => Err(crate::handlers::error_from_code(c)),
    }
}

/// The error a Produce answers when its implicit add failed, as Kafka's
/// `ReplicaManager` converts them: the coordinator being away is
/// NOT_ENOUGH_REPLICAS (retried by every client), a fenced producer
/// INVALID_PRODUCER_EPOCH.
pub fn for_produce(e: ResponseError) -> ResponseError {
    match e {
        ResponseError::ProducerFenced => ResponseError::InvalidProducerEpoch,
        ResponseError::NetworkException
        | ResponseError::CoordinatorLoadInProgress
        | ResponseError::CoordinatorNotAvailable
        | ResponseError::NotCoordinator
        | ResponseError::RequestTimedOut => ResponseError::NotEnoughReplicas,
        e => e,
    }
}

/// Per producer id, the produce requests waiting to append in the order
/// they arrived. A request joins its producer's line when it must wait (for
/// an implicit add) or when others already wait; everyone else appends at
/// once. One per shard.
#[derive(Default)]
pub struct ProducerLines {
    lines: RefCell<HashMap<i64, VecDeque<u64>>>,
    next: Cell<u64>,
    moved: Event,
}

/// A request's place in its producer's line; leaving it (drop, also when
/// the request is cancelled) lets the next one go.
pub struct Place {
    lines: Rc<ProducerLines>,
    producer_id: i64,
    id: u64,
}

impl ProducerLines {
    /// Whether requests of this producer are waiting.
    pub fn is_waiting(&self, producer_id: i64) -> bool {
        self.lines.borrow().contains_key(&producer_id)
    }

    /// Joins the line and returns once every request that joined before
    /// has left it.
    pub async fn join(self: &Rc<Self>, producer_id: i64) -> Place {
        let id = self.next.get();
        self.next.set(id + 1);
        self.lines
            .borrow_mut()
            .entry(producer_id)
            .or_default()
            .push_back(id);
        let place = Place {
            lines: self.clone(),
            producer_id,
            id,
        };
        loop {
            let listener = self.moved.listen();
            let first = self
                .lines
                .borrow()
                .get(&producer_id)
                .and_then(|q| q.front().copied());
            if first == Some(id) {
                return place;
            }
            listener.await;
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        {
            let mut lines = self.lines.lines.borrow_mut();
            if let Some(q) = lines.get_mut(&self.producer_id) {
                q.retain(|&x| x != self.id);
                if q.is_empty() {
                    lines.remove(&self.producer_id);
                }
            }
        }
        self.lines.moved.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_lets_requests_go_in_the_order_they_joined_and_skips_cancelled_ones() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let lines = Rc::new(ProducerLines::default());
                let order = Rc::new(RefCell::new(Vec::new()));
                assert!(!lines.is_waiting(7));
                let first = lines.join(7).await;
                assert!(lines.is_waiting(7));
                let mut tasks = Vec::new();
                for n in 1..=3 {
                    let (lines, order) = (lines.clone(), order.clone());
                    tasks.push(glommio::spawn_local(async move {
                        let _place = lines.join(7).await;
                        order.borrow_mut().push(n);
                        glommio::yield_if_needed().await;
                    }));
                    glommio::yield_if_needed().await;
                    glommio::executor().yield_task_queue_now().await;
                }
                // One that gives up while waiting does not block the rest.
                let quitter = {
                    let lines = lines.clone();
                    glommio::spawn_local(async move {
                        let _place = lines.join(7).await;
                        unreachable!("cancelled before its turn");
                    })
                };
                glommio::executor().yield_task_queue_now().await;
                quitter.cancel().await;
                let last = {
                    let (lines, order) = (lines.clone(), order.clone());
                    glommio::spawn_local(async move {
                        let _place = lines.join(7).await;
                        order.borrow_mut().push(4);
                    })
                };
                glommio::executor().yield_task_queue_now().await;
                // Another producer does not wait behind producer 7.
                drop(lines.join(8).await);
                assert!(order.borrow().is_empty(), "nothing passed the first");
                drop(first);
                for t in tasks {
                    t.await;
                }
                last.await;
                assert_eq!(*order.borrow(), vec![1, 2, 3, 4]);
                assert!(!lines.is_waiting(7));
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
