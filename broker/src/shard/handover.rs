//! Handing a partition over to another node (a partition reassignment):
//! no data is copied. The leading shard stops taking writes to the
//! partition, lets the appends already admitted commit, uploads what its
//! WAL holds, and then commits the leader change through the controller;
//! the new leader opens the partition from the objects the image lists
//! (and its producer state from the image), as after a restart.
//!
//! Runs on the shard leading the partition; never holds a borrow across
//! `.await`. If anything fails before the leader change is committed, the
//! partition takes writes again here and nothing has moved.

use std::rc::Rc;
use std::time::Instant;

use kafka_protocol::ResponseError;
use tracing::{info, warn};

use super::{PartitionKey, Shard};
use crate::metadata::{Command, NODES_PER_BROKER};
use crate::partition::Lifecycle;

/// How often the WAL is uploaded while waiting for the partition's data to
/// be in objects, before the move gives up.
const UPLOAD_ATTEMPTS: usize = 5;

impl Shard {
    /// Moves the partition's leadership to `to_node`; answers once the new
    /// leader is in the metadata (every shard has the new image).
    pub async fn hand_over(
        self: &Rc<Self>,
        key: PartitionKey,
        to_node: i32,
    ) -> Result<(), ResponseError> {
        let started = Instant::now();
        {
            let mut parts = self.partitions.borrow_mut();
            let part = parts
                .get_mut(&key)
                .ok_or(ResponseError::NotLeaderOrFollower)?;
            if part.state.lifecycle != Lifecycle::Leading {
                return Err(ResponseError::ReassignmentInProgress);
            }
            part.state.lifecycle = Lifecycle::Closing;
        }
        let result = self.upload_and_move(key, to_node).await;
        match result {
            Ok(end) => info!(
                shard = self.id,
                topic = %key.0,
                partition = key.1,
                to_node,
                end,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "partition handed over"
            ),
            Err(e) => {
                warn!(shard = self.id, topic = %key.0, partition = key.1, to_node,
                      "partition not handed over: {e:?}; it stays here");
                if let Some(part) = self.partitions.borrow_mut().get_mut(&key) {
                    if part.state.lifecycle == Lifecycle::Closing {
                        part.state.lifecycle = Lifecycle::Leading;
                    }
                }
            }
        }
        result.map(|_| ())
    }

    /// Waits until the partition's every committed offset is in objects,
    /// then submits the move. Returns the partition's end.
    async fn upload_and_move(
        self: &Rc<Self>,
        key: PartitionKey,
        to_node: i32,
    ) -> Result<i64, ResponseError> {
        // Appends admitted before Closing have their offsets: let them
        // commit (a failed WAL write fails them, which is as good). The one
        // the committer awaits is off the queue already.
        self.appends_settled(Some(key)).await;
        let mut end = None;
        for _ in 0..UPLOAD_ATTEMPTS {
            let (hw, uploaded) = self
                .partitions
                .borrow()
                .get(&key)
                .map(|p| (p.state.high_watermark, p.state.uploaded_end))
                .ok_or(ResponseError::NotLeaderOrFollower)?;
            if uploaded >= hw {
                end = Some(hw);
                break;
            }
            if self.store().is_none() {
                return Err(ResponseError::KafkaStorageError);
            }
            self.uploader.flush().await;
        }
        let Some(end) = end else {
            // The object store did not take the data (an outage): the
            // partition stays, and the client may try again.
            return Err(ResponseError::RequestTimedOut);
        };
        let cmd = Command::MovePartition {
            topic_id: key.0,
            partition: key.1,
            to_node,
            uploaded_end: end,
        };
        let mut results = self.control().submit(vec![cmd], false).await;
        match results.pop() {
            Some(Ok(_)) => Ok(end),
            Some(Err(e)) => {
                warn!("move refused by the controller: {}", e.message);
                Err(crate::handlers::error_from_code(e.code))
            }
            None => Err(ResponseError::UnknownServerError),
        }
    }

    /// Graceful drain (SIGTERM with other brokers live): marks this broker
    /// as shutting down (so no broker drains onto it, and it drains onto no
    /// broker that is stopping too), then moves every partition this shard
    /// leads to nodes of other live brokers, the least loaded first, after
    /// one upload and in one metadata commit. Returns how many moved; with
    /// no other broker to take them, none (the caller just uploads).
    pub async fn drain(self: &Rc<Self>) -> usize {
        let started = Instant::now();
        let me = self.config.broker_id;
        let others = self
            .image()
            .live_nodes()
            .any(|(&id, _)| id.div_euclid(NODES_PER_BROKER) != me);
        if !others {
            return 0;
        }
        let marked = self
            .control()
            .submit(vec![Command::BeginShutdown { broker_id: me }], false)
            .await;
        if let Some(Err(e)) = marked.first() {
            warn!(
                shard = self.id,
                "drain: shutdown not recorded: {}", e.message
            );
        }
        // The marks of brokers stopping at the same time that are already
        // committed; a later one is caught by the controller, which refuses
        // a move onto a broker that is shutting down.
        let image = self.image();
        let mut load: Vec<(usize, i32)> = image
            .placement_nodes()
            .filter(|(&id, _)| id.div_euclid(NODES_PER_BROKER) != me)
            .map(|(&id, _)| {
                let led = image
                    .topics
                    .values()
                    .map(|t| t.leader_nodes.iter().filter(|&&n| n == id).count())
                    .sum();
                (led, id)
            })
            .collect();
        if load.is_empty() {
            return 0;
        }
        let keys: Vec<PartitionKey> = {
            let mut parts = self.partitions.borrow_mut();
            parts
                .iter_mut()
                .filter(|(_, p)| p.state.lifecycle == Lifecycle::Leading)
                .map(|(k, p)| {
                    p.state.lifecycle = Lifecycle::Closing;
                    *k
                })
                .collect()
        };
        self.appends_settled(None).await;
        for _ in 0..UPLOAD_ATTEMPTS {
            if self.all_uploaded(&keys) {
                break;
            }
            self.uploader.flush().await;
        }
        let mut cmds = Vec::with_capacity(keys.len());
        for key in &keys {
            let Some(end) = self
                .partitions
                .borrow()
                .get(key)
                .map(|p| p.state.high_watermark)
            else {
                continue;
            };
            // The least loaded node of another broker; ties to the one
            // after this shard's index, so shards spread their moves.
            load.sort_by_key(|&(led, id)| (led, (id as usize + self.id) % 7, id));
            load[0].0 += 1;
            cmds.push(Command::MovePartition {
                topic_id: key.0,
                partition: key.1,
                to_node: load[0].1,
                uploaded_end: end,
            });
        }
        let results = self.control().submit(cmds, false).await;
        let moved = results.iter().filter(|r| r.is_ok()).count();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            // Harmless: the partition stays and its data is uploaded here.
            // Expected when the other brokers are stopping too.
            info!(
                shard = self.id,
                "drain: a move was refused ({}); what did not move is uploaded here", e.message
            );
        }
        // What did not move takes writes again until the process exits.
        for p in self.partitions.borrow_mut().values_mut() {
            if p.state.lifecycle == Lifecycle::Closing {
                p.state.lifecycle = Lifecycle::Leading;
            }
        }
        info!(
            shard = self.id,
            moved,
            of = keys.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "drained: partitions handed to other brokers"
        );
        moved
    }

    /// True when every partition of `keys` still here has all its
    /// committed offsets in objects.
    pub(super) fn all_uploaded(&self, keys: &[PartitionKey]) -> bool {
        let parts = self.partitions.borrow();
        keys.iter()
            .all(|k| parts.get(k).is_none_or(|p| p.state.all_uploaded()))
    }
}
