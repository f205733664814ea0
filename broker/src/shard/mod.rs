//! A shard: one pinned core's share of the broker. Owns its listener, the
//! partitions it leads (`Partition`: state, log cache, waiters), its WAL
//! slice, its object store client, cold-read caches and uploader, and its
//! copy of the metadata image; serves every request that arrives on its
//! port.
//!
//! Runs entirely on its own glommio executor. Never touches another shard's
//! partitions; talks to other shards only through `Control` (metadata).
//!
//! * `append`: admission (WAL room, log-cache budget, waiting for space),
//!   offset assignment, and the committer that makes appends visible in WAL
//!   order.
//! * `read`: reads through a `Partition`: log cache, then objects.
//! * `recovery`: opening the WAL slice, rebuilding partitions from metadata
//!   plus the WAL tail, and recovering from a failed WAL.
//! * `producers`: producer ids from metadata-allocated blocks, expiry of
//!   idle producers, producer-state snapshots for uploads.
//! * `stable`: `read_committed` reads (last stable offset, aborted
//!   transactions).

mod append;
mod handover;
pub mod idle;
pub mod listener;
mod producers;
mod quotas;
pub mod read;
mod recovery;
mod replay;
mod reshard;
mod stable;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::Event;
use glommio::net::TcpListener;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use net::connection::LocalBoxFuture;
use net::{Reply, Request, Service};
use storage::object::reader::ObjectReader;
use storage::object::SharedStore;
use storage::wal::WalSlice;
use tracing::{info, warn};

use crate::config::Config;
use crate::control::{AddToTxn, Control, HandOver, Report, ShardHooks, WriteMarkers};
use crate::group::GroupCoordinator;
use crate::handlers;
use crate::metadata::MetadataImage;
use crate::metrics::report::ShardReport;
use crate::metrics::ShardMetrics;
use crate::partition::{Lifecycle, Partition, PartitionState};
use crate::sasl;
use crate::txn::implicit::ProducerLines;
use crate::txn::TxnCoordinator;
use crate::uploader::Uploader;

pub use crate::partition::PartitionKey;
pub use append::DurableAppend;
pub use read::ReadError;
pub use replay::Replayed;

/// Memory accounting of the log caches of all partitions of a shard.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheUsage {
    /// Bytes held by log caches.
    pub cached: usize,
    /// Of those, bytes not yet in object storage (cannot be evicted).
    pub unuploaded: usize,
}

pub struct Shard {
    pub id: usize,
    pub config: Arc<Config>,
    image: RefCell<Arc<MetadataImage>>,
    pub partitions: RefCell<HashMap<PartitionKey, Partition>>,
    control: RefCell<Option<Rc<Control>>>,
    /// The consumer groups whose `__consumer_offsets` partition this shard leads.
    /// Share groups' record states of partitions led here (KIP-932).
    pub share: crate::share::ShareLeader,
    pub groups: GroupCoordinator,
    /// The transactional ids whose `__transaction_state` partition this
    /// shard leads.
    pub txns: TxnCoordinator,
    /// Produce requests waiting for a transactions v2 implicit add, in
    /// order per producer (`txn::implicit`).
    pub producer_lines: Rc<ProducerLines>,
    /// This shard's WAL slice (set before the listener starts).
    wal: RefCell<Option<WalSlice>>,
    /// Set when a WAL write or flush failed: appends answer
    /// KAFKA_STORAGE_ERROR until recovery has run again.
    storage_failed: Cell<bool>,
    /// Bumped by every recovery, so a failure reported late by an append
    /// from before a recovery does not start another one.
    wal_epoch: Cell<u64>,
    /// When a full WAL was last reported in the log.
    wal_full_warned: Cell<Option<std::time::Instant>>,
    /// Appends waiting for their WAL flush, in WAL order (see `append`).
    commit_queue: RefCell<VecDeque<append::InFlight>>,
    /// The partition of the append the committer awaits (taken off
    /// `commit_queue` already): a hand-over waits for it too.
    committing: Cell<Option<PartitionKey>>,
    commit_wake: Event,
    /// Notified each time the committer has answered an append
    /// (`Shard::appends_settled` waits on it).
    commit_done: Event,
    /// WAL offset after the last committed (visible) record: everything
    /// below it is in some partition's log (a valid trim point once those
    /// logs are uploaded).
    committed_wal_end: Cell<u64>,
    /// Appends waiting for WAL or cache space, first come first served.
    admission: RefCell<VecDeque<u64>>,
    next_ticket: Cell<u64>,
    /// Notified when space may have been freed (trim, eviction, timeout).
    space: Event,
    usage: Cell<CacheUsage>,
    /// Uploaded ranges in upload order `(partition, end offset)`: the log
    /// cache evicts oldest first.
    evictable: RefCell<VecDeque<(PartitionKey, i64)>>,
    /// This shard's object store and cold-read path (set before listening).
    store: RefCell<Option<SharedStore>>,
    reader: RefCell<Option<Rc<ObjectReader>>>,
    pub uploader: Uploader,
    /// Counters and latencies of this shard's request path (`metrics`).
    pub metrics: ShardMetrics,
    /// Set once the listener is open (the WAL is recovered by then): what
    /// the admin API's `/ready` waits for.
    pub serving: Cell<bool>,
    /// Producer ids this shard may hand out (`producers`).
    producer_ids: Cell<producers::ProducerIdBlock>,
    producer_ids_pending: Cell<bool>,
    producer_ids_ready: Event,
    /// Byte-rate sensors of client quotas (`quotas`).
    quota_sensors: quotas::QuotaSensors,
}

impl Shard {
    pub fn new(id: usize, config: Arc<Config>) -> Rc<Shard> {
        Rc::new_cyclic(|me| Shard {
            id,
            groups: GroupCoordinator::new(me.clone(), &config),
            share: crate::share::ShareLeader::new(me.clone(), &config),
            txns: TxnCoordinator::new(me.clone(), &config),
            producer_lines: Rc::new(ProducerLines::default()),
            uploader: Uploader::new(&config),
            metrics: ShardMetrics::new(),
            serving: Cell::new(false),
            config,
            image: RefCell::new(Arc::new(MetadataImage::default())),
            partitions: RefCell::new(HashMap::new()),
            control: RefCell::new(None),
            wal: RefCell::new(None),
            storage_failed: Cell::new(false),
            wal_full_warned: Cell::new(None),
            wal_epoch: Cell::new(0),
            commit_queue: RefCell::new(VecDeque::new()),
            commit_done: Event::new(),
            committing: Cell::new(None),
            commit_wake: Event::new(),
            committed_wal_end: Cell::new(0),
            admission: RefCell::new(VecDeque::new()),
            next_ticket: Cell::new(0),
            space: Event::new(),
            usage: Cell::new(CacheUsage::default()),
            evictable: RefCell::new(VecDeque::new()),
            store: RefCell::new(None),
            reader: RefCell::new(None),
            producer_ids: Cell::new(producers::ProducerIdBlock::default()),
            producer_ids_pending: Cell::new(false),
            producer_ids_ready: Event::new(),
            quota_sensors: quotas::QuotaSensors::default(),
        })
    }

    /// What the control mesh calls on this shard: image installs and
    /// transaction markers from other shards' coordinators.
    pub fn hooks(self: &Rc<Self>) -> ShardHooks {
        let weak = Rc::downgrade(self);
        let install = Box::new(move |image| {
            if let Some(shard) = weak.upgrade() {
                shard.install_image(image);
            }
        });
        let weak = Rc::downgrade(self);
        let write_markers: WriteMarkers = Box::new(move |markers| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(shard) => crate::txn::write_markers_here(&shard, markers).await,
                    None => {
                        vec![Err(kafka_protocol::ResponseError::NotLeaderOrFollower); markers.len()]
                    }
                }
            })
        });
        let weak = Rc::downgrade(self);
        let add_to_txn: AddToTxn = Box::new(move |add| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(shard) => {
                        shard
                            .txns
                            .add_partitions(
                                &add.transactional_id,
                                add.producer_id,
                                add.epoch,
                                &add.partitions,
                                true,
                            )
                            .await
                    }
                    None => Err(kafka_protocol::ResponseError::NotCoordinator),
                }
            })
        });
        let weak = Rc::downgrade(self);
        let hand_over: HandOver = Box::new(move |key, to_node| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(shard) => shard.hand_over(key, to_node).await,
                    None => Err(kafka_protocol::ResponseError::NotLeaderOrFollower),
                }
            })
        });
        let weak = Rc::downgrade(self);
        let report: Report = Box::new(move || weak.upgrade().map(|s| ShardReport::collect(&s)));
        ShardHooks {
            install,
            write_markers,
            add_to_txn,
            hand_over,
            report,
        }
    }

    pub fn set_control(&self, control: Rc<Control>) {
        *self.control.borrow_mut() = Some(control);
    }

    pub fn control(&self) -> Rc<Control> {
        self.control
            .borrow()
            .clone()
            .expect("control plane is set before the listener starts")
    }

    /// Attaches the object store and the cold-read path.
    pub fn set_store(&self, store: SharedStore, reader: Rc<ObjectReader>) {
        *self.store.borrow_mut() = Some(store);
        *self.reader.borrow_mut() = Some(reader);
    }

    pub fn store(&self) -> Option<SharedStore> {
        self.store.borrow().clone()
    }

    pub fn reader(&self) -> Option<Rc<ObjectReader>> {
        self.reader.borrow().clone()
    }

    pub fn wal(&self) -> Option<WalSlice> {
        self.wal.borrow().clone()
    }

    /// The current metadata image (cheap clone; never borrow across await).
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// The version of the image this shard has installed.
    pub fn image_version(&self) -> u64 {
        self.image.borrow().version
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id(self.id)
    }

    pub fn usage(&self) -> CacheUsage {
        self.usage.get()
    }

    /// WAL offset after the last committed record.
    pub fn committed_wal_end(&self) -> u64 {
        self.committed_wal_end.get()
    }

    /// Bumped by every WAL recovery.
    pub fn wal_epoch(&self) -> u64 {
        self.wal_epoch.get()
    }

    /// Wakes appends waiting for space (after a trim or an eviction).
    pub fn space_freed(&self) {
        self.space.notify(usize::MAX);
    }

    fn change_usage(&self, cached: isize, unuploaded: isize) {
        let mut u = self.usage.get();
        u.cached = u.cached.saturating_add_signed(cached);
        u.unuploaded = u.unuploaded.saturating_add_signed(unuploaded);
        self.usage.set(u);
    }

    /// Log-cache bytes this shard may hold.
    pub fn log_cache_budget(&self) -> usize {
        (self.config.log_cache_bytes() / self.config.shards.max(1) as u64) as usize
    }

    /// Installs a newer image: opens partitions this shard now leads (from
    /// the objects the image lists), drops those it no longer leads, and
    /// moves each partition's uploaded offset to what the image says.
    pub fn install_image(&self, image: Arc<MetadataImage>) {
        if image.version <= self.image.borrow().version && image.version != 0 {
            return;
        }
        let me = self.node_id();
        let mut parts = self.partitions.borrow_mut();
        let mut dropped = Vec::new();
        parts.retain(|&(id, p), part| {
            let keep = image.leader_of(id, p) == Some(me);
            if !keep {
                dropped.push((part.cache.bytes(), part.unuploaded_bytes()));
                part.state.lifecycle = Lifecycle::Fenced;
                part.waiters.notify(usize::MAX);
            }
            keep
        });
        self.share
            .retain_led(|(id, p)| image.leader_of(id, p) == Some(me));
        for topic in image.topics.values() {
            for (p, &leader) in topic.leader_nodes.iter().enumerate() {
                if leader != me {
                    continue;
                }
                let key = (topic.id, p as i32);
                let objects = image.objects.partition(key.0, key.1);
                let epoch = topic.leader_epochs.get(p).copied().unwrap_or(0);
                let part = parts.entry(key).or_insert_with(|| {
                    let mut state = PartitionState::from_metadata(objects, epoch);
                    // A partition created while the shard runs has nothing
                    // to recover; one present at start waits for the WAL.
                    if self.wal.borrow().is_some() {
                        state.lifecycle = Lifecycle::Leading;
                    }
                    let mut part = Partition::new(key, state);
                    part.producers = Partition::producers_from(&image, key);
                    part
                });
                part.state.leader_epoch = epoch;
                if let Some(o) = objects {
                    if o.log_start() > part.state.log_start {
                        part.state.advance_log_start(o.log_start());
                        // Fetches parked below the new start must answer.
                        part.waiters.notify(usize::MAX);
                    }
                }
                if let Some(end) = objects.and_then(|o| o.end()) {
                    if end > part.state.uploaded_end {
                        let freed: usize = part
                            .cache
                            .range(part.state.uploaded_end, end)
                            .map(|b| b.bytes.len())
                            .sum();
                        part.state.uploaded(end);
                        self.change_usage(0, -(freed as isize));
                        self.evictable.borrow_mut().push_back((key, end));
                    }
                }
            }
        }
        drop(parts);
        for (cached, unuploaded) in dropped {
            self.change_usage(-(cached as isize), -(unuploaded as isize));
        }
        *self.image.borrow_mut() = image.clone();
        self.groups.on_image(&image, me);
        self.txns.on_image(&image, me);
        self.evict_to_budget();
    }

    /// Stops taking writes, lets in-flight appends finish, and uploads what
    /// the WAL holds (trimming it behind).
    pub async fn shutdown(self: &Rc<Self>) {
        for p in self.partitions.borrow_mut().values_mut() {
            if p.state.lifecycle == Lifecycle::Leading {
                p.state.lifecycle = Lifecycle::Closing;
            }
        }
        self.appends_settled(None).await;
        if self.store().is_some() && self.wal().is_some() {
            self.uploader.flush().await;
            info!(shard = self.id, "uploaded what the WAL held");
        }
    }

    /// Drops a partition's cached batches below `offset` (all uploaded), so
    /// reads below it go to objects (log compaction rewrote them there).
    pub fn evict_cached_before(&self, key: PartitionKey, offset: i64) {
        let freed = match self.partitions.borrow_mut().get_mut(&key) {
            Some(p) => {
                let end = offset.min(p.state.uploaded_end);
                p.cache.evict_before(end)
            }
            None => 0,
        };
        if freed > 0 {
            self.change_usage(-(freed as isize), 0);
            self.space.notify(usize::MAX);
        }
    }

    /// Drops uploaded batches from log caches, oldest upload first, until
    /// the shard is within its log-cache budget.
    pub fn evict_to_budget(&self) {
        let budget = self.log_cache_budget();
        if self.usage.get().cached <= budget {
            return;
        }
        let mut parts = self.partitions.borrow_mut();
        let mut evictable = self.evictable.borrow_mut();
        let mut freed_total = 0usize;
        while self.usage.get().cached.saturating_sub(freed_total) > budget {
            let Some((key, end)) = evictable.pop_front() else {
                break;
            };
            if let Some(p) = parts.get_mut(&key) {
                freed_total += p.cache.evict_before(end.min(p.state.uploaded_end));
            }
        }
        drop((parts, evictable));
        if freed_total > 0 {
            self.change_usage(-(freed_total as isize), 0);
            self.space.notify(usize::MAX);
        }
    }

    /// Accepts connections on this shard's listener (see `listener`) until
    /// the process ends.
    pub async fn serve(self: Rc<Self>, listener: TcpListener) {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        info!(
            "shard {} listening on {addr} as node {}",
            self.id,
            self.node_id()
        );
        self.serving.set(true);
        let limits = Rc::new(RefCell::new(net::ConnectionLimits::new(
            self.config.max_connections,
            self.config.max_connections_per_ip,
        )));
        let settings = net::ConnectionSettings {
            max_frame: self.config.max_frame_bytes,
            idle_timeout: Duration::from_millis(self.config.connections_max_idle_ms),
        };
        loop {
            let stream = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(shard = self.id, "accept failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(peer) = stream.peer_addr() else {
                continue; // gone already
            };
            let permit = match net::ConnectionLimits::try_admit(&limits, peer.ip()) {
                Ok(permit) => permit,
                Err(refusal) => {
                    self.log_refusal(&limits, peer, &refusal);
                    continue; // dropping the stream closes it
                }
            };
            let _ = stream.set_nodelay(true);
            let shard = self.clone();
            self.metrics.connection_opened();
            glommio::spawn_local(async move {
                net::serve_connection(stream, shard.clone(), settings, peer.to_string()).await;
                shard.metrics.connection_closed();
                drop(permit);
            })
            .detach();
        }
    }

    /// One line per `net::limits::REFUSAL_LOG_INTERVAL` at most, however
    /// many connections a flood brings.
    fn log_refusal(
        &self,
        limits: &RefCell<net::ConnectionLimits>,
        peer: SocketAddr,
        refusal: &net::Refusal,
    ) {
        let Some(unlogged) = limits.borrow_mut().note_refusal(Instant::now()) else {
            return;
        };
        warn!(
            shard = self.id,
            %peer,
            "refused connection: {refusal} ({unlogged} more refused since the last such line)"
        );
    }

    async fn dispatch(self: Rc<Self>, req: Request) -> Option<Reply> {
        let v = req.version;
        // Only the group APIs that record members need the client's id and
        // host as strings; every other request allocates none.
        let client = || handlers::groups::Client::of(&req.header, &req.peer);
        let resp = match req.body {
            RequestKind::ApiVersions(r) => ResponseKind::ApiVersions(
                handlers::api_versions::handle(&r, v, &self.config.cluster_id, self.node_id()),
            ),
            RequestKind::Produce(r) => {
                // Nothing but the handler may hold views of the frame (the
                // header's client id is one): it stamps offsets into it.
                drop(req.header);
                return handlers::produce::handle(&self, r, v, req.frame)
                    .await
                    .map(Reply::from);
            }
            RequestKind::Fetch(r) => {
                let (resp, spliced) = handlers::fetch::handle(&self, r, v).await;
                return Some(Reply {
                    body: ResponseKind::Fetch(resp),
                    spliced,
                    mute: Duration::ZERO,
                });
            }
            RequestKind::ListOffsets(r) => {
                ResponseKind::ListOffsets(handlers::list_offsets::handle(&self, r, v).await)
            }
            RequestKind::Metadata(r) => {
                ResponseKind::Metadata(handlers::metadata::handle(&self, r, v).await)
            }
            RequestKind::OffsetForLeaderEpoch(r) => {
                ResponseKind::OffsetForLeaderEpoch(handlers::leader_epoch::handle(&self, r))
            }
            RequestKind::DescribeCluster(r) => {
                ResponseKind::DescribeCluster(handlers::metadata::describe_cluster(&self, r, v))
            }
            RequestKind::CreateTopics(r) => {
                ResponseKind::CreateTopics(handlers::topics::create_topics(&self, r, v).await)
            }
            RequestKind::DeleteRecords(r) => {
                ResponseKind::DeleteRecords(handlers::delete_records::handle(&self, r).await)
            }
            RequestKind::DeleteTopics(r) => {
                ResponseKind::DeleteTopics(handlers::topics::delete_topics(&self, r, v).await)
            }
            RequestKind::CreatePartitions(r) => {
                ResponseKind::CreatePartitions(handlers::topics::create_partitions(&self, r).await)
            }
            RequestKind::DescribeConfigs(r) => {
                ResponseKind::DescribeConfigs(handlers::configs::describe_configs(&self, r))
            }
            RequestKind::FindCoordinator(r) => {
                ResponseKind::FindCoordinator(handlers::groups::find_coordinator(&self, r, v).await)
            }
            RequestKind::JoinGroup(r) => {
                ResponseKind::JoinGroup(handlers::groups::join_group(&self, r, v, client()).await)
            }
            RequestKind::SyncGroup(r) => {
                ResponseKind::SyncGroup(handlers::groups::sync_group(&self, r, v).await)
            }
            RequestKind::Heartbeat(r) => {
                ResponseKind::Heartbeat(handlers::groups::heartbeat(&self, r))
            }
            RequestKind::LeaveGroup(r) => {
                ResponseKind::LeaveGroup(handlers::groups::leave_group(&self, r, v).await)
            }
            RequestKind::OffsetCommit(r) => {
                ResponseKind::OffsetCommit(handlers::groups::offset_commit(&self, r, v).await)
            }
            RequestKind::OffsetFetch(r) => {
                ResponseKind::OffsetFetch(handlers::groups::offset_fetch(&self, r, v))
            }
            RequestKind::ConsumerGroupHeartbeat(r) => ResponseKind::ConsumerGroupHeartbeat(
                handlers::consumer_groups::heartbeat(&self, r, v, client()).await,
            ),
            RequestKind::ConsumerGroupDescribe(r) => ResponseKind::ConsumerGroupDescribe(
                handlers::consumer_groups::describe(&self, r, v),
            ),
            RequestKind::StreamsGroupHeartbeat(r) => ResponseKind::StreamsGroupHeartbeat(
                handlers::streams_groups::heartbeat(&self, r, v, client()).await,
            ),
            RequestKind::StreamsGroupDescribe(r) => {
                ResponseKind::StreamsGroupDescribe(handlers::streams_groups::describe(&self, r, v))
            }
            RequestKind::StreamsGroupTopologyDescriptionUpdate(_) => {
                ResponseKind::StreamsGroupTopologyDescriptionUpdate(
                    handlers::streams_groups::topology_description_update(),
                )
            }
            RequestKind::ShareGroupHeartbeat(r) => ResponseKind::ShareGroupHeartbeat(
                handlers::share::heartbeat(&self, r, client()).await,
            ),
            RequestKind::ShareGroupDescribe(r) => {
                ResponseKind::ShareGroupDescribe(handlers::share::describe(&self, r))
            }
            RequestKind::ShareFetch(r) => {
                ResponseKind::ShareFetch(handlers::share::share_fetch(&self, r, v).await)
            }
            RequestKind::ShareAcknowledge(r) => ResponseKind::ShareAcknowledge(
                handlers::share::share_acknowledge(&self, r, v).await,
            ),
            RequestKind::ReadShareGroupState(r) => {
                ResponseKind::ReadShareGroupState(handlers::share::read_state(&self, r))
            }
            RequestKind::WriteShareGroupState(r) => {
                ResponseKind::WriteShareGroupState(handlers::share::write_state(&self, r).await)
            }
            RequestKind::InitializeShareGroupState(r) => ResponseKind::InitializeShareGroupState(
                handlers::share::initialize_state(&self, r).await,
            ),
            RequestKind::DeleteShareGroupState(r) => {
                ResponseKind::DeleteShareGroupState(handlers::share::delete_state(&self, r).await)
            }
            RequestKind::ReadShareGroupStateSummary(r) => ResponseKind::ReadShareGroupStateSummary(
                handlers::share::read_state_summary(&self, r),
            ),
            RequestKind::DescribeShareGroupOffsets(r) => ResponseKind::DescribeShareGroupOffsets(
                handlers::share::describe_offsets(&self, r, v).await,
            ),
            RequestKind::AlterShareGroupOffsets(r) => {
                ResponseKind::AlterShareGroupOffsets(handlers::share::alter_offsets(&self, r).await)
            }
            RequestKind::DeleteShareGroupOffsets(r) => ResponseKind::DeleteShareGroupOffsets(
                handlers::share::delete_offsets(&self, r).await,
            ),
            RequestKind::CreateDelegationToken(r) => ResponseKind::CreateDelegationToken(
                handlers::auth::create_delegation_token(r, req.principal.as_deref()),
            ),
            RequestKind::SaslHandshake(_) => {
                ResponseKind::SaslHandshake(handlers::auth::sasl_handshake_out_of_place())
            }
            RequestKind::SaslAuthenticate(_) => {
                ResponseKind::SaslAuthenticate(handlers::auth::sasl_authenticate_out_of_place())
            }
            RequestKind::RenewDelegationToken(_) => ResponseKind::RenewDelegationToken(
                handlers::auth::renew_delegation_token(req.principal.as_deref()),
            ),
            RequestKind::ExpireDelegationToken(_) => ResponseKind::ExpireDelegationToken(
                handlers::auth::expire_delegation_token(req.principal.as_deref()),
            ),
            RequestKind::DescribeDelegationToken(_) => ResponseKind::DescribeDelegationToken(
                handlers::auth::describe_delegation_token(req.principal.as_deref()),
            ),
            RequestKind::DescribeUserScramCredentials(r) => {
                ResponseKind::DescribeUserScramCredentials(
                    handlers::auth::describe_user_scram_credentials(&self.image().scram, r),
                )
            }
            RequestKind::AlterUserScramCredentials(r) => ResponseKind::AlterUserScramCredentials(
                handlers::auth::alter_user_scram_credentials(&self, r).await,
            ),
            RequestKind::DescribeClientQuotas(r) => ResponseKind::DescribeClientQuotas(
                handlers::quotas::describe_client_quotas(&self.image().quotas, r),
            ),
            RequestKind::AlterClientQuotas(r) => ResponseKind::AlterClientQuotas(
                handlers::quotas::alter_client_quotas(&self, r).await,
            ),
            RequestKind::UpdateFeatures(r) => {
                ResponseKind::UpdateFeatures(handlers::features::update_features(r, v))
            }
            RequestKind::ListGroups(r) => {
                ResponseKind::ListGroups(handlers::groups::list_groups(&self, r, v))
            }
            RequestKind::DescribeGroups(r) => {
                ResponseKind::DescribeGroups(handlers::groups::describe_groups(&self, r, v))
            }
            RequestKind::DeleteGroups(r) => {
                ResponseKind::DeleteGroups(handlers::groups::delete_groups(&self, r).await)
            }
            RequestKind::OffsetDelete(r) => {
                ResponseKind::OffsetDelete(handlers::groups::offset_delete(&self, r).await)
            }
            RequestKind::InitProducerId(r) => ResponseKind::InitProducerId(
                handlers::transactions::init_producer_id(&self, r, v).await,
            ),
            RequestKind::AddPartitionsToTxn(r) => ResponseKind::AddPartitionsToTxn(
                handlers::transactions::add_partitions_to_txn(&self, r, v).await,
            ),
            RequestKind::AddOffsetsToTxn(r) => ResponseKind::AddOffsetsToTxn(
                handlers::transactions::add_offsets_to_txn(&self, r, v).await,
            ),
            RequestKind::EndTxn(r) => {
                ResponseKind::EndTxn(handlers::transactions::end_txn(&self, r, v).await)
            }
            RequestKind::TxnOffsetCommit(r) => ResponseKind::TxnOffsetCommit(
                handlers::transactions::txn_offset_commit(&self, r, v).await,
            ),
            RequestKind::WriteTxnMarkers(r) => ResponseKind::WriteTxnMarkers(
                handlers::transactions::write_txn_markers(&self, r, v).await,
            ),
            RequestKind::DescribeTransactions(r) => ResponseKind::DescribeTransactions(
                handlers::transactions::describe_transactions(&self, r),
            ),
            RequestKind::ListTransactions(r) => ResponseKind::ListTransactions(
                handlers::transactions::list_transactions(&self, r, v),
            ),
            RequestKind::DescribeProducers(r) => ResponseKind::DescribeProducers(
                handlers::transactions::describe_producers(&self, r),
            ),
            RequestKind::DescribeAcls(r) => {
                ResponseKind::DescribeAcls(handlers::admin::describe_acls(r))
            }
            RequestKind::CreateAcls(r) => ResponseKind::CreateAcls(handlers::admin::create_acls(r)),
            RequestKind::DeleteAcls(r) => ResponseKind::DeleteAcls(handlers::admin::delete_acls(r)),
            RequestKind::ElectLeaders(r) => {
                ResponseKind::ElectLeaders(handlers::admin::elect_leaders(&self, r, v).await)
            }
            RequestKind::AlterPartitionReassignments(r) => {
                ResponseKind::AlterPartitionReassignments(
                    handlers::admin::alter_partition_reassignments(&self, r, v).await,
                )
            }
            RequestKind::ListPartitionReassignments(r) => ResponseKind::ListPartitionReassignments(
                handlers::admin::list_partition_reassignments(r),
            ),
            RequestKind::DescribeTopicPartitions(r) => ResponseKind::DescribeTopicPartitions(
                handlers::admin::describe_topic_partitions(&self, r),
            ),
            RequestKind::DescribeLogDirs(r) => {
                ResponseKind::DescribeLogDirs(handlers::admin::describe_log_dirs(&self, r, v))
            }
            RequestKind::AlterReplicaLogDirs(r) => {
                ResponseKind::AlterReplicaLogDirs(handlers::admin::alter_replica_log_dirs(&self, r))
            }
            RequestKind::AddRaftVoter(r) => {
                ResponseKind::AddRaftVoter(handlers::admin::add_raft_voter(&self, r))
            }
            RequestKind::RemoveRaftVoter(r) => {
                ResponseKind::RemoveRaftVoter(handlers::admin::remove_raft_voter(&self, r))
            }
            RequestKind::DescribeQuorum(r) => {
                ResponseKind::DescribeQuorum(handlers::admin::describe_quorum(&self, r).await)
            }
            RequestKind::ListConfigResources(r) => ResponseKind::ListConfigResources(
                handlers::admin::list_config_resources(&self, r, v),
            ),
            RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
                handlers::configs::incremental_alter_configs(&self, r).await,
            ),
            RequestKind::UnregisterController(r) => ResponseKind::UnregisterController(
                handlers::admin::unregister_controller(&self, r).await,
            ),
            RequestKind::UnregisterBroker(r) => {
                ResponseKind::UnregisterBroker(handlers::admin::unregister_broker(&self, r).await)
            }
            RequestKind::AlterConfigs(r) => {
                ResponseKind::AlterConfigs(handlers::configs::alter_configs(&self, r).await)
            }
            other => {
                // The codec only lets through APIs listed in net::versions.
                warn!("no handler for {other:?}");
                return None;
            }
        };
        Some(Reply::from(resp))
    }
}

/// A client id kept for the slow-request log: its first bytes, inline, so
/// that nothing is allocated per request and the request's frame is not
/// held (Produce takes the frame back to stamp offsets into it).
struct ClientTag {
    buf: [u8; 64],
    len: usize,
}

impl ClientTag {
    fn of(id: Option<&str>) -> ClientTag {
        let id = id.unwrap_or("");
        let mut len = id.len().min(64);
        while !id.is_char_boundary(len) {
            len -= 1;
        }
        let mut buf = [0u8; 64];
        buf[..len].copy_from_slice(&id.as_bytes()[..len]);
        ClientTag { buf, len }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Service for Shard {
    fn call(self: Rc<Self>, request: Request) -> LocalBoxFuture<Option<Reply>> {
        Box::pin(async move {
            let started = Instant::now();
            let api = request.api_key;
            let (client, correlation) = (
                ClientTag::of(request.header.client_id.as_deref()),
                request.correlation_id(),
            );
            // Client quotas: Produce was measured as it was read
            // (`on_read`); a Fetch is measured by its response, and only
            // while some quota is set is its whole client id kept.
            let read_throttle = request.throttle;
            let fetch_client =
                quotas::fetch_measured(&self.image.borrow().quotas, api).then(|| {
                    let client_id = request.header.client_id.as_deref().unwrap_or("");
                    (request.principal.clone(), client_id.to_string())
                });
            let mut resp = self.clone().dispatch(request).await;
            if let Some(reply) = resp.as_mut() {
                let mut throttle = read_throttle;
                if let Some((user, client_id)) = &fetch_client {
                    throttle = throttle.max(self.quota_sensors.fetch_answered(
                        &self.image().quotas,
                        (user.as_deref(), client_id),
                        reply,
                    ));
                }
                if !throttle.is_zero() {
                    quotas::set_throttle_time(reply, throttle);
                    self.metrics.throttled(api, throttle.as_millis() as u64);
                }
            }
            let took = started.elapsed();
            self.metrics
                .request_done(api, took, resp.as_ref().map(|r| &r.body));
            let slow = self.config.slow_request_ms;
            // Fetch, JoinGroup and SyncGroup wait by design (for data, for
            // the other members): their time says nothing of the broker.
            let waits = matches!(
                api,
                ApiKey::Fetch | ApiKey::ShareFetch | ApiKey::JoinGroup | ApiKey::SyncGroup
            );
            if slow > 0 && took >= Duration::from_millis(slow) && !waits {
                self.metrics.slow_request();
                warn!(
                    shard = self.id,
                    api = ?api,
                    correlation_id = correlation,
                    client_id = client.as_str(),
                    took_ms = took.as_millis() as u64,
                    "slow request"
                );
            }
            resp
        })
    }

    fn on_read(&self, request: &Request) -> Duration {
        if request.api_key != ApiKey::Produce {
            return Duration::ZERO;
        }
        let image = self.image.borrow();
        self.quota_sensors.produce_read(
            &image.quotas,
            (
                request.principal.as_deref(),
                request.header.client_id.as_deref().unwrap_or(""),
            ),
            request.frame.len(),
        )
    }

    fn written(&self, api: ApiKey, stages: &net::Stages) {
        self.metrics.written(api, stages);
    }

    fn sasl_mechanisms(&self) -> Rc<[String]> {
        Rc::from(self.config.sasl_mechanisms())
    }

    fn sasl_start(&self, mechanism: &str) -> Option<Box<dyn net::SaslExchange>> {
        if mechanism == sasl::PLAIN {
            let users = self.config.sasl_plain_users.clone()?;
            return Some(Box::new(sasl::Plain::new(users)));
        }
        let (hash, id) = (sasl::ScramHash::of(mechanism)?, sasl::scram_id(mechanism)?);
        // The credentials as of the exchange's start, as Kafka's
        // credential cache is read once per exchange.
        let image = self.image();
        Some(Box::new(sasl::Scram::new(
            hash,
            Box::new(move |user| image.scram.get(user)?.get(&id).cloned()),
        )))
    }
}

#[cfg(test)]
mod tests;
