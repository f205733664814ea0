//! Transaction coordination: the `TxnCoordinator` of a shard owns the
//! transactional ids whose `__transaction_state` partition this shard leads
//! (partition `abs(javaHashCode(id)) % partitions`, as Kafka computes it).
//!
//! One per shard, on that shard's executor; it never touches another
//! shard's transactional ids. The state machine (`state`) is pure; this
//! module adds the I/O around it: routing, writing each new state to the
//! partition log (`records`) before it takes effect, writing the commit or
//! abort markers to every partition of a transaction (here, or on the
//! leading shard over the control mesh), replaying the log when a partition
//! is loaded, and a timer that aborts transactions past their timeout,
//! finishes those a crash left half-ended, and forgets expired ids.
//!
//! A transaction is answered only once its markers are durable everywhere
//! and its completion is stored, so a `read_committed` consumer sees a
//! committed transaction as soon as the producer does. Never holds a
//! `RefCell` borrow across an `.await`.

pub mod implicit;
pub mod records;
mod remote;
pub mod state;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::time::Duration;

use kafka_protocol::ResponseError;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::coordinator_partitions::CoordinatorPartitions;
use crate::group::records::{decode_kv_batches, encode_kv_batch};
use crate::group::{append_encoded, now_ms, partition_for, OFFSETS_TOPIC};
use crate::metadata::MetadataImage;
use crate::producer_state::Origin;
use crate::shard::{PartitionKey, Replayed, Shard};
use records::TxnRecord;
use state::{EndDecision, InitDecision, TxnMeta, TxnState};

/// The internal topic holding transaction state.
pub const TXN_TOPIC: &str = "__transaction_state";

/// One marker to write: producer `producer_id` at `epoch` ended its
/// transaction in partition `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerReq {
    pub key: PartitionKey,
    pub producer_id: i64,
    pub epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
    /// Transactions v2 (WriteTxnMarkers v2's transaction version 2): the
    /// epoch was bumped by the end, so it must pass the producer's.
    pub tv2: bool,
}

pub struct TxnCoordinator {
    shard: Weak<Shard>,
    max_timeout_ms: i32,
    expiration_ms: i64,
    check_interval_ms: u64,
    txns: RefCell<HashMap<String, TxnMeta>>,
    /// Ids with a state write or markers in flight: their other requests
    /// get CONCURRENT_TRANSACTIONS (clients retry it).
    busy: RefCell<HashSet<String>>,
    /// Notified whenever an id stops being busy (implicit adds wait for it).
    released: event_listener::Event,
    /// `__transaction_state` partitions this shard leads, and which of
    /// them it has replayed.
    partitions: CoordinatorPartitions,
    timer_started: Cell<bool>,
}

/// Marks an id busy while it lives (also when its future is dropped).
struct Busy {
    shard: Rc<Shard>,
    id: String,
}

impl Busy {
    fn take(shard: &Rc<Shard>, id: &str) -> Result<Busy, ResponseError> {
        if !shard.txns.busy.borrow_mut().insert(id.to_string()) {
            return Err(ResponseError::ConcurrentTransactions);
        }
        Ok(Busy {
            shard: shard.clone(),
            id: id.to_string(),
        })
    }

    /// Takes `id` once it is free, waiting at most `patience` (then
    /// CONCURRENT_TRANSACTIONS).
    async fn wait_take(
        shard: &Rc<Shard>,
        id: &str,
        patience: Duration,
    ) -> Result<Busy, ResponseError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            let listener = shard.txns.released.listen();
            if let Ok(busy) = Busy::take(shard, id) {
                return Ok(busy);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(ResponseError::ConcurrentTransactions);
            }
            let timer = async {
                glommio::timer::sleep(left).await;
            };
            futures_lite::future::or(listener, timer).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.shard.txns.busy.borrow_mut().remove(&self.id);
        self.shard.txns.released.notify(usize::MAX);
    }
}

/// How long an implicit add (transactions v2) waits for its id to be free
/// before it answers CONCURRENT_TRANSACTIONS, which the client retries.
/// Concurrent adds of one transaction (its produce requests to several
/// partitions) each hold the id only for one state write.
const IMPLICIT_ADD_PATIENCE: Duration = Duration::from_secs(2);

/// Where a transactional id is coordinated, as a request finds it.
#[derive(Debug, Clone, Copy)]
struct Route {
    key: PartitionKey,
    coordinator_epoch: i32,
}

impl TxnCoordinator {
    pub fn new(shard: Weak<Shard>, config: &Config) -> Self {
        Self {
            shard,
            max_timeout_ms: config.transaction_max_timeout_ms,
            expiration_ms: config.transactional_id_expiration_ms,
            check_interval_ms: config.transaction_abort_check_interval_ms.max(1),
            txns: RefCell::new(HashMap::new()),
            busy: RefCell::new(HashSet::new()),
            released: event_listener::Event::new(),
            partitions: CoordinatorPartitions::new(TXN_TOPIC),
            timer_started: Cell::new(false),
        }
    }

    fn shard(&self) -> Result<Rc<Shard>, ResponseError> {
        self.shard
            .upgrade()
            .ok_or(ResponseError::CoordinatorNotAvailable)
    }

    // ---- routing and loading ----

    fn route(&self, id: &str) -> Result<Route, ResponseError> {
        let shard = self.shard()?;
        let image = shard.image();
        let Some(topic) = image.topic(TXN_TOPIC) else {
            return Err(ResponseError::CoordinatorNotAvailable);
        };
        let p = partition_for(id, topic.leaders.len() as i32);
        if topic.leader_nodes.get(p as usize) != Some(&shard.node_id()) {
            return Err(ResponseError::NotCoordinator);
        }
        self.partitions.check_loaded(p)?;
        Ok(Route {
            key: (topic.id, p),
            coordinator_epoch: topic.leader_epochs.get(p as usize).copied().unwrap_or(0),
        })
    }

    /// Called after each metadata image: loads `__transaction_state`
    /// partitions this shard now leads, forgets those it no longer leads.
    pub fn on_image(&self, image: &MetadataImage, node_id: i32) {
        let changes = self.partitions.on_image(image, node_id);
        let n = image.topic(TXN_TOPIC).map_or(0, |t| t.leaders.len() as i32);
        for &p in &changes.unload {
            self.txns
                .borrow_mut()
                .retain(|id, _| n > 0 && partition_for(id, n) != p);
            info!("no longer transaction coordinator for {TXN_TOPIC} partition {p}");
        }
        let Some(shard) = self.shard.upgrade() else {
            return;
        };
        for p in changes.load {
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.txns.load_partition(&shard, p).await })
                .detach();
        }
        if changes.leads_any {
            self.start_timer();
        }
    }

    /// Replays every `__transaction_state` partition this shard leads (after
    /// WAL recovery has refilled the logs).
    pub fn reload(&self) {
        let Some(shard) = self.shard.upgrade() else {
            return;
        };
        let led = self.partitions.reload(&shard.image(), shard.node_id());
        if led.is_empty() {
            return;
        }
        glommio::spawn_local(async move {
            for p in led {
                shard.txns.load_partition(&shard, p).await;
            }
        })
        .detach();
        self.start_timer();
    }

    /// Rebuilds the transactional ids of one partition from its log. Ids
    /// found half-ended (PrepareCommit, PrepareAbort) are finished by the
    /// timer's next round.
    async fn load_partition(&self, shard: &Rc<Shard>, p: i32) {
        let image = shard.image();
        let Some(topic) = image.topic(TXN_TOPIC).cloned() else {
            return;
        };
        let n = topic.leaders.len() as i32;
        let token = self.partitions.begin_load(p);
        let superseded = || self.partitions.superseded(p, token);
        let mut found: HashMap<String, TxnMeta> = HashMap::new();
        let label = format!("{TXN_TOPIC}-{p}");
        let replayed = shard
            .replay_log((topic.id, p), &label, &superseded, |h, b| {
                if h.is_control() {
                    return;
                }
                match decode_kv_batches(b) {
                    Ok(kvs) => {
                        for (k, v) in kvs {
                            let Some(r) = TxnRecord::decode(&k, v.as_deref()) else {
                                continue;
                            };
                            match r.meta {
                                Some(m) => found.insert(r.transactional_id, m),
                                None => found.remove(&r.transactional_id),
                            };
                        }
                    }
                    Err(e) => warn!("{label}: skipping undecodable batch: {e}"),
                }
            })
            .await;
        if replayed == Replayed::Stopped {
            if !superseded() {
                self.partitions.end_load(p, false);
            }
            return;
        }
        if superseded() {
            // A newer load of `p` began during the last read: it owns the
            // partition's state now.
            return;
        }
        let count = found.len();
        {
            let mut txns = self.txns.borrow_mut();
            txns.retain(|id, _| partition_for(id, n) != p);
            txns.extend(found);
        }
        self.partitions.end_load(p, true);
        debug!(
            shard = shard.id,
            "loaded {label}: {count} transactional ids"
        );
        // Finish what a crash left half-ended without waiting a round.
        let shard = shard.clone();
        glommio::spawn_local(async move { shard.txns.tick(&shard).await }).detach();
    }

    // ---- requests ----

    /// Stores a new state of `id` (durable in its partition), then keeps it.
    async fn store(
        &self,
        shard: &Rc<Shard>,
        route: Route,
        id: &str,
        meta: Option<TxnMeta>,
    ) -> Result<(), ResponseError> {
        let rec = TxnRecord {
            transactional_id: id.to_string(),
            meta,
        };
        let bytes = encode_kv_batch(&[(rec.key(), rec.value())], now_ms(), None).map_err(|e| {
            warn!("cannot encode transaction state: {e}");
            ResponseError::UnknownServerError
        })?;
        append_encoded(shard, route.key, bytes).await?;
        let mut txns = self.txns.borrow_mut();
        match rec.meta {
            Some(m) => txns.insert(id.to_string(), m),
            None => txns.remove(id),
        };
        Ok(())
    }

    /// InitProducerId with a transactional id: the producer id and epoch.
    pub async fn init_producer_id(
        &self,
        id: &str,
        timeout_ms: i32,
        expected: (i64, i16),
    ) -> Result<(i64, i16), ResponseError> {
        let shard = self.shard()?;
        let route = self.route(id)?;
        let busy = Busy::take(&shard, id)?;
        let fresh = shard.new_producer_id().await?;
        let current = self.txns.borrow().get(id).cloned();
        let decision = state::init_producer_id(
            current.as_ref(),
            timeout_ms,
            self.max_timeout_ms,
            expected,
            now_ms(),
            fresh,
        )?;
        match decision {
            InitDecision::Ready(m) => {
                let answer = (m.producer_id, m.epoch);
                self.store(&shard, route, id, Some(m)).await?;
                Ok(answer)
            }
            InitDecision::AbortFirst(m) => {
                info!(
                    transactional_id = id,
                    "a new producer fences producer {} epoch {}: aborting its open transaction",
                    m.producer_id,
                    m.last_epoch
                );
                self.store(&shard, route, id, Some(m.clone())).await?;
                let me = shard.clone();
                let id = id.to_string();
                glommio::spawn_local(async move {
                    let _ = me.txns.finish(&me, busy, route, &id, m).await;
                })
                .detach();
                Err(ResponseError::ConcurrentTransactions)
            }
        }
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn, with the group's
    /// `__consumer_offsets` partition). `implicit`: a transactions v2 add,
    /// sent by a partition leader or group coordinator for the client; it
    /// waits for the id to be free rather than refusing at once.
    pub async fn add_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        implicit: bool,
    ) -> Result<(), ResponseError> {
        let shard = self.shard()?;
        let route = self.route(id)?;
        let _busy = if implicit {
            Busy::wait_take(&shard, id, IMPLICIT_ADD_PATIENCE).await?
        } else {
            Busy::take(&shard, id)?
        };
        // The partition may have moved while this waited.
        let route = if implicit { self.route(id)? } else { route };
        let current = self.txns.borrow().get(id).cloned();
        let next = state::add_partitions(
            current.as_ref(),
            producer_id,
            epoch,
            partitions,
            now_ms(),
            implicit,
        )?;
        if let Some(m) = next {
            self.store(&shard, route, id, Some(m)).await?;
        }
        Ok(())
    }

    /// Whether the producer owns the id and may add to its transaction (the
    /// verify-only form of AddPartitionsToTxn v4).
    pub fn verify(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<bool, ResponseError> {
        self.route(id)?;
        let txns = self.txns.borrow();
        let m = txns
            .get(id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        if m.producer_id != producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if m.epoch != epoch {
            return Err(ResponseError::ProducerFenced);
        }
        Ok(m.state == TxnState::Ongoing && partitions.iter().all(|p| m.partitions.contains(p)))
    }

    /// EndTxn: writes the markers and stores the completion before it
    /// answers. `tv2`: EndTxn v5+, which bumps the epoch. Answers the
    /// producer id and epoch the client carries on with.
    pub async fn end_txn(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        tv2: bool,
    ) -> Result<(i64, i16), ResponseError> {
        let shard = self.shard()?;
        let route = self.route(id)?;
        let busy = Busy::take(&shard, id)?;
        let current = self.txns.borrow().get(id).cloned();
        let fresh = match &current {
            Some(m) if tv2 && state::end_needs_fresh_id(m) => shard.new_producer_id().await?,
            _ => -1,
        };
        match state::end_txn(
            current.as_ref(),
            producer_id,
            epoch,
            commit,
            now_ms(),
            tv2,
            fresh,
        )? {
            EndDecision::AlreadyDone => current
                .map(|m| (m.producer_id, m.epoch))
                .ok_or(ResponseError::InvalidProducerIdMapping),
            EndDecision::Prepare(m) => {
                self.store(&shard, route, id, Some(m.clone())).await?;
                let done = self.finish(&shard, busy, route, id, m).await?;
                Ok((done.producer_id, done.epoch))
            }
        }
    }

    /// Writes the markers of a prepared transaction, then stores it
    /// complete. If that fails, the timer tries again (the id stays in its
    /// Prepare state, which only this can leave).
    async fn finish(
        &self,
        shard: &Rc<Shard>,
        _busy: Busy,
        route: Route,
        id: &str,
        prepared: TxnMeta,
    ) -> Result<TxnMeta, ResponseError> {
        let commit = prepared.state == TxnState::PrepareCommit;
        let image = shard.image();
        let markers: Vec<MarkerReq> = prepared
            .partitions
            .iter()
            .filter_map(|(topic, p)| {
                let t = image.topic(topic)?;
                ((*p as usize) < t.leaders.len()).then_some(MarkerReq {
                    key: (t.id, *p),
                    producer_id: prepared.producer_id,
                    epoch: prepared.epoch,
                    commit,
                    coordinator_epoch: route.coordinator_epoch,
                    tv2: prepared.tv2,
                })
            })
            .collect();
        write_markers(shard, id, markers).await?;
        let done = state::complete(&prepared, now_ms());
        self.store(shard, route, id, Some(done.clone())).await?;
        debug!(
            transactional_id = id,
            producer_id = prepared.producer_id,
            "transaction {}",
            if commit { "committed" } else { "aborted" }
        );
        Ok(done)
    }

    /// DescribeTransactions: the id's state, or why it cannot be shown.
    pub fn describe(&self, id: &str) -> Result<TxnMeta, ResponseError> {
        self.route(id)?;
        self.txns
            .borrow()
            .get(id)
            .cloned()
            .ok_or(ResponseError::TransactionalIdNotFound)
    }

    /// ListTransactions: the ids this shard coordinates, filtered.
    pub fn list(
        &self,
        states: &[String],
        producer_ids: &[i64],
        min_duration_ms: i64,
    ) -> Vec<(String, i64, TxnState)> {
        let now = now_ms();
        let mut out: Vec<_> = self
            .txns
            .borrow()
            .iter()
            .filter(|(_, m)| states.is_empty() || states.iter().any(|s| s == m.state.name()))
            .filter(|(_, m)| producer_ids.is_empty() || producer_ids.contains(&m.producer_id))
            .filter(|(_, m)| {
                min_duration_ms < 0
                    || (m.state == TxnState::Ongoing
                        && now.saturating_sub(m.start_ms) >= min_duration_ms)
            })
            .map(|(id, m)| (id.clone(), m.producer_id, m.state))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    // ---- the timer ----

    fn start_timer(&self) {
        if self.timer_started.replace(true) {
            return;
        }
        let weak = self.shard.clone();
        let every = self.check_interval_ms;
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(every)).await;
                let Some(shard) = weak.upgrade() else { return };
                shard.txns.tick(&shard).await;
            }
        })
        .detach();
    }

    /// One round: finish half-ended transactions, abort those past their
    /// timeout (fencing their producer), forget expired ids.
    async fn tick(&self, shard: &Rc<Shard>) {
        let now = now_ms();
        let mut to_finish = Vec::new();
        let mut to_abort = Vec::new();
        let mut to_forget = Vec::new();
        {
            let busy = self.busy.borrow();
            for (id, m) in self.txns.borrow().iter() {
                if busy.contains(id) {
                    continue;
                }
                if m.state.is_prepare() {
                    to_finish.push((id.clone(), m.clone()));
                } else if let Some(abort) = state::timed_out(m, now) {
                    to_abort.push((id.clone(), abort));
                } else if state::expired(m, now, self.expiration_ms) {
                    to_forget.push(id.clone());
                }
            }
        }
        for (id, m) in to_finish {
            self.spawn_finish(shard, id, m, None);
        }
        for (id, abort) in to_abort {
            info!(
                transactional_id = id.as_str(),
                "aborting a transaction past its timeout of {} ms (producer {} fenced at epoch {})",
                abort.timeout_ms,
                abort.producer_id,
                abort.last_epoch
            );
            self.spawn_finish(shard, id, abort.clone(), Some(abort));
        }
        for id in to_forget {
            let Ok(route) = self.route(&id) else { continue };
            let Ok(_busy) = Busy::take(shard, &id) else {
                continue;
            };
            // Re-check after taking it: a request may have come in between.
            let still = self
                .txns
                .borrow()
                .get(&id)
                .is_some_and(|m| state::expired(m, now_ms(), self.expiration_ms));
            if still {
                if let Err(e) = self.store(shard, route, &id, None).await {
                    warn!(transactional_id = id.as_str(), "cannot expire: {e:?}");
                }
            }
        }
    }

    /// Finishes `m` in the background; `store_first` is stored before (a
    /// timeout abort), unless the id changed meanwhile.
    fn spawn_finish(
        &self,
        shard: &Rc<Shard>,
        id: String,
        m: TxnMeta,
        store_first: Option<TxnMeta>,
    ) {
        let Ok(route) = self.route(&id) else { return };
        let Ok(busy) = Busy::take(shard, &id) else {
            return;
        };
        let me = shard.clone();
        glommio::spawn_local(async move {
            if let Some(first) = store_first {
                let unchanged = me.txns.txns.borrow().get(&id).is_some_and(|cur| {
                    cur.state == TxnState::Ongoing
                        && cur.producer_id == first.producer_id
                        && cur.epoch == first.last_epoch
                });
                if !unchanged {
                    return;
                }
                if let Err(e) = me.txns.store(&me, route, &id, Some(first)).await {
                    warn!(transactional_id = id.as_str(), "cannot abort: {e:?}");
                    return;
                }
            }
            if let Err(e) = me.txns.finish(&me, busy, route, &id, m).await {
                warn!(
                    transactional_id = id.as_str(),
                    "cannot finish the transaction yet ({e:?}); the next round tries again"
                );
            }
        })
        .detach();
    }
}

/// Writes markers to the partitions' leading shards (this one directly,
/// others over the control mesh), retrying until each is durable or its
/// partition is gone.
async fn write_markers(
    shard: &Rc<Shard>,
    id: &str,
    mut todo: Vec<MarkerReq>,
) -> Result<(), ResponseError> {
    let mut attempt = 0u32;
    while !todo.is_empty() {
        let image = shard.image();
        let mut by_shard: HashMap<usize, Vec<MarkerReq>> = HashMap::new();
        let mut by_node: HashMap<i32, Vec<MarkerReq>> = HashMap::new();
        for m in todo.drain(..) {
            let Some(node) = image.leader_of(m.key.0, m.key.1) else {
                continue; // the topic is gone: nothing to end there
            };
            match shard.config.shard_of_node(node) {
                Some(s) => by_shard.entry(s).or_default().push(m),
                // Another broker's: Kafka's WriteTxnMarkers to that node.
                None => by_node.entry(node).or_default().push(m),
            }
        }
        let writes = by_shard.into_iter().map(|(s, reqs)| {
            let shard = shard.clone();
            async move {
                let results = if s == shard.id {
                    write_markers_here(&shard, reqs.clone()).await
                } else {
                    shard.control().write_markers(s, reqs.clone()).await
                };
                reqs.into_iter().zip(results).collect::<Vec<_>>()
            }
        });
        let remote = by_node.into_iter().map(|(node, reqs)| {
            let image = image.clone();
            async move {
                let results = match image.live_node(node) {
                    Some(n) => {
                        let addr = format!("{}:{}", n.host, n.port);
                        remote::write_markers(&image, &addr, &reqs).await
                    }
                    // Fenced: its partitions wait for it to come back.
                    None => vec![Err(ResponseError::NotLeaderOrFollower); reqs.len()],
                };
                reqs.into_iter().zip(results).collect::<Vec<_>>()
            }
        });
        let (here, there) = futures::future::join(
            futures::future::join_all(writes),
            futures::future::join_all(remote),
        )
        .await;
        for (m, r) in here.into_iter().chain(there).flatten() {
            match r {
                Ok(()) | Err(ResponseError::UnknownTopicOrPartition) => {}
                Err(e) => {
                    if attempt.is_multiple_of(50) {
                        warn!(
                            transactional_id = id,
                            "marker for {}-{} not written yet: {e:?}; retrying", m.key.0, m.key.1
                        );
                    }
                    todo.push(m);
                }
            }
        }
        if !todo.is_empty() {
            attempt += 1;
            if shard.txns.route(id).is_err() {
                return Err(ResponseError::NotCoordinator);
            }
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Writes markers to partitions this shard leads (what Kafka's
/// WriteTxnMarkers does on a partition leader). A marker in
/// `__consumer_offsets` also settles the offsets of the transaction.
pub async fn write_markers_here(
    shard: &Rc<Shard>,
    reqs: Vec<MarkerReq>,
) -> Vec<Result<(), ResponseError>> {
    let writes = reqs.into_iter().map(|m| {
        let shard = shard.clone();
        async move {
            let bytes = storage::batch::end_txn_marker_batch(
                m.producer_id,
                m.epoch,
                storage::batch::EndTxnMarker {
                    commit: m.commit,
                    coordinator_epoch: m.coordinator_epoch,
                },
                now_ms(),
            );
            let batches = storage::batch::validate_batches(&bytes, usize::MAX).map_err(|e| {
                warn!("transaction marker failed validation: {e}");
                ResponseError::UnknownServerError
            })?;
            let origin = if m.tv2 {
                Origin::CoordinatorV2
            } else {
                Origin::Coordinator
            };
            shard.append_as(m.key, &batches, None, origin).await?;
            let offsets = shard
                .image()
                .topic_by_id(&m.key.0)
                .is_some_and(|t| t.name == OFFSETS_TOPIC);
            if offsets {
                shard.groups.complete_txn(m.key.1, m.producer_id, m.commit);
            }
            Ok(())
        }
    });
    futures::future::join_all(writes).await
}
