//! The controller: the one writer of cluster metadata. It validates metadata
//! commands against its image, turns them into records, commits them through
//! a Raft quorum (openraft; a single-node install is a one-voter quorum in
//! this process) and applies them; the committed image goes back to shard 0,
//! which fans it out to every shard.
//!
//! Runs on its own std thread with a small current-thread tokio runtime
//! (openraft needs tokio), off the data path. Shard 0 talks to it over
//! `futures::channel` (mpsc in, oneshot back), which work across tokio and
//! glommio. It must never be called with a blocking receive from a glommio
//! shard; its file I/O (fsync) blocks only its own thread.
//!
//! Files: `data_dir/metadata/` holds the Raft log (`store`), the vote and
//! the snapshots (`state_machine`).

pub mod records;
pub mod rpc;
pub mod shell;
pub mod state_machine;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use kafka_protocol::ResponseError;
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::metadata::{
    plan, Command, CommandError, CommandResult, MetadataImage, Placement, NODES_PER_BROKER,
};
use records::{encode_all, Record};
use state_machine::StateMachine;
use store::LogStore;

/// The encoded metadata records of one Raft entry (`records::encode_all`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordBatch(pub Vec<u8>);

openraft::declare_raft_types!(
    /// Raft types of the metadata quorum.
    pub TypeConfig: D = RecordBatch, R = (), SnapshotData = std::io::Cursor<Vec<u8>>
);

/// Entries kept in the log behind a snapshot (for slow followers later).
const KEEP_BEHIND_SNAPSHOT: u64 = 100;
/// Requests queued for the controller before shard 0 waits.
const QUEUE: usize = 256;
/// How long start-up may take to elect the one voter and replay the log.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "corrupt metadata snapshot {path}: {reason}; refusing to start rather than lose metadata"
    )]
    CorruptSnapshot { path: PathBuf, reason: String },
    #[error("corrupt metadata file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("metadata quorum: {0}")]
    Raft(String),
    #[error("controller thread: {0}")]
    Thread(String),
}

impl ControllerError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ControllerError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What a submit did: one result per command, and the committed image when
/// anything changed (dry runs and all-failed batches change nothing).
#[derive(Debug)]
pub struct Submitted {
    pub results: Vec<CommandResult>,
    pub image: Option<Arc<MetadataImage>>,
    /// The log index that holds the commit, if anything was committed.
    pub index: Option<u64>,
}

impl Submitted {
    fn unavailable(n: usize, why: &str) -> Submitted {
        let err = CommandError::new(ResponseError::NotController, why);
        Submitted {
            results: vec![Err(err); n],
            image: None,
            index: None,
        }
    }
}

enum Request {
    Submit {
        cmds: Vec<Command>,
        dry_run: bool,
        /// Sent by another controller: plan it only as the leader.
        forwarded: bool,
        reply: oneshot::Sender<Submitted>,
    },
    Quorum {
        reply: oneshot::Sender<QuorumState>,
    },
    Image {
        reply: oneshot::Sender<Arc<MetadataImage>>,
    },
    Heartbeat {
        broker_id: i32,
        session: u64,
        seq: u64,
        clean: Vec<crate::clean::Offered>,
        reply: oneshot::Sender<rpc::RpcResponse>,
    },
}

/// The metadata quorum as DescribeQuorum shows it (Raft ids and indexes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumState {
    /// This controller's Raft id.
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    /// Index of the last log entry, and of the last one applied (committed).
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
}

/// Shard 0's handle on the controller. `Send`, cheap to clone.
#[derive(Clone)]
pub struct ControllerHandle {
    tx: mpsc::Sender<Request>,
}

impl ControllerHandle {
    /// Plans, commits and applies `cmds` (or only checks them when
    /// `dry_run`); answers once the records are committed and applied.
    pub async fn submit(&self, cmds: Vec<Command>, dry_run: bool) -> Submitted {
        let n = cmds.len();
        let (reply, rx) = oneshot::channel();
        let mut tx = self.tx.clone();
        let req = Request::Submit {
            cmds,
            dry_run,
            forwarded: false,
            reply,
        };
        if tx.send(req).await.is_err() {
            return Submitted::unavailable(n, "controller stopped");
        }
        rx.await
            .unwrap_or_else(|_| Submitted::unavailable(n, "controller dropped the request"))
    }

    /// The quorum's state now; `None` if the controller has stopped.
    pub async fn quorum(&self) -> Option<QuorumState> {
        let (reply, rx) = oneshot::channel();
        let mut tx = self.tx.clone();
        tx.send(Request::Quorum { reply }).await.ok()?;
        rx.await.ok()
    }

    /// The image as last committed; `None` if the controller has stopped.
    pub async fn image(&self) -> Option<Arc<MetadataImage>> {
        let (reply, rx) = oneshot::channel();
        let mut tx = self.tx.clone();
        tx.send(Request::Image { reply }).await.ok()?;
        rx.await.ok()
    }
}

/// A running controller: its handle and the image recovered at start (every
/// shard installs it before serving). Its thread ends when every handle is
/// dropped.
pub struct Started {
    pub handle: ControllerHandle,
    pub image: Arc<MetadataImage>,
    /// With several voters: every image this process applies, for shard 0
    /// to install (changes other brokers made reach the shards this way).
    pub images: Option<mpsc::UnboundedReceiver<Arc<MetadataImage>>>,
}

/// Where the controller keeps its files.
pub fn metadata_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("metadata")
}

/// Starts the controller thread, replays snapshot and log, elects the one
/// voter, registers this broker's shards as nodes, and returns once the
/// recovered image is ready. Blocks the calling (main) thread meanwhile.
pub fn start(cfg: &Config) -> Result<Started, ControllerError> {
    let mut settings = Settings::from_config(cfg);
    let images = if settings.voters.is_some() && settings.broker {
        let (itx, irx) = mpsc::unbounded();
        settings.images = Some(itx);
        Some(irx)
    } else {
        None
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (tx, rx) = mpsc::channel(QUEUE);
    let requests = tx.clone();
    std::thread::Builder::new()
        .name("controller".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(ControllerError::Thread(e.to_string())));
                    return;
                }
            };
            rt.block_on(async move {
                match Controller::open(settings, requests).await {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(c.image()));
                        c.run(rx).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| ControllerError::Thread(e.to_string()))?;
    let image = ready_rx
        .recv()
        .map_err(|_| ControllerError::Thread("controller thread died during start-up".into()))??;
    Ok(Started {
        handle: ControllerHandle { tx },
        image,
        images,
    })
}

/// What the controller needs from the broker config.
#[derive(Debug, Clone)]
struct Settings {
    dir: PathBuf,
    raft_id: u64,
    placement: Placement,
    host: String,
    base_port: u16,
    snapshot_every: u64,
    /// The quorum's voters and their RPC addresses; `None`: one voter,
    /// this process, no network.
    voters: Option<Vec<(u64, String)>>,
    session_timeout: Duration,
    heartbeat_interval: Duration,
    /// Where this process pushes every newly applied image (several voters).
    images: Option<mpsc::UnboundedSender<Arc<MetadataImage>>>,
    /// This process has shards (registers, heartbeats).
    broker: bool,
    /// A broker-only process: where its learner listens.
    learner_listen: Option<String>,
    rack: Option<String>,
}

impl Settings {
    fn from_config(cfg: &Config) -> Settings {
        Settings {
            dir: metadata_dir(&cfg.data_dir),
            raft_id: cfg.broker_id as u64,
            placement: Placement {
                broker_id: cfg.broker_id,
                shards: cfg.shards,
            },
            host: cfg.advertised_host().to_string(),
            base_port: cfg.base_port,
            snapshot_every: cfg.metadata_snapshot_entries,
            voters: cfg.voters(),
            session_timeout: Duration::from_millis(cfg.broker_session_timeout_ms),
            heartbeat_interval: Duration::from_millis(cfg.broker_heartbeat_interval_ms),
            images: None,
            broker: cfg.is_broker(),
            learner_listen: (!cfg.is_controller())
                .then(|| cfg.controller_listen.clone())
                .flatten(),
            rack: cfg.rack.clone(),
        }
    }

    fn voter_addr(&self, id: u64) -> Option<&str> {
        self.voters
            .as_ref()?
            .iter()
            .find(|(v, _)| *v == id)
            .map(|(_, a)| a.as_str())
    }
}

/// The quorum leader's view of broker liveness (kept in memory, as in
/// KRaft: a new leader gives every broker a full session to heartbeat).
#[derive(Default)]
struct Liveness {
    /// The term this controller leads in, and since when.
    leading: Option<(u64, Instant)>,
    last_seen: HashMap<i32, Instant>,
    /// Each broker's latest heartbeat in this term: its session, number,
    /// and the partitions it said were clean (moved at once if it is
    /// fenced). Cleared when the broker registers again.
    clean: HashMap<i32, (u64, u64, Vec<crate::clean::Offered>)>,
}

struct Controller {
    raft: Raft<TypeConfig>,
    published: Arc<Mutex<Arc<MetadataImage>>>,
    settings: Settings,
    /// The connection to the quorum's leader (forwards, heartbeats).
    leader: Option<rpc::Peer>,
    liveness: Liveness,
    /// Whether `liveness` said not to serve at the last tick (for the log).
    cut_off: bool,
    /// Random per process: orders this broker's heartbeats across restarts.
    session: u64,
    /// Version of the last image pushed to `settings.images`.
    pushed: u64,
}

fn raft_err(e: impl std::fmt::Display) -> ControllerError {
    ControllerError::Raft(e.to_string())
}

/// A forwarded command waits this long for the leader's answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

impl Controller {
    async fn open(
        s: Settings,
        requests: mpsc::Sender<Request>,
    ) -> Result<Controller, ControllerError> {
        let started = Instant::now();
        let log = LogStore::open(&s.dir)?;
        let published = Arc::new(Mutex::new(Arc::new(MetadataImage::default())));
        let sm = StateMachine::open(&s.dir, published.clone())?;
        let config = openraft::Config {
            cluster_name: "metadata".into(),
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(s.snapshot_every),
            max_in_snapshot_log_to_keep: KEEP_BEHIND_SNAPSHOT.min(s.snapshot_every),
            ..Default::default()
        }
        .validate()
        .map_err(raft_err)?;
        // Peers may call as soon as the Raft node exists: listen first.
        let own_addr = s
            .voter_addr(s.raft_id)
            .map(str::to_string)
            .or_else(|| s.learner_listen.clone());
        let listener = match &own_addr {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                ControllerError::Raft(format!("cannot listen for the quorum on {addr}: {e}"))
            })?),
            None => None,
        };
        let network = rpc::Network::new(s.voters.as_deref().unwrap_or_default());
        let raft = Raft::new(s.raft_id, Arc::new(config), network, log, sm)
            .await
            .map_err(raft_err)?;
        if let Some(listener) = listener {
            tokio::spawn(serve(listener, raft.clone(), requests));
        }
        if let (Some(addr), true) = (&s.learner_listen, s.voters.is_some()) {
            join_as_learner(&s, s.raft_id, addr).await?;
        } else if !raft.is_initialized().await.map_err(raft_err)? {
            let members: BTreeMap<u64, BasicNode> = match &s.voters {
                Some(v) => v
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode::new(addr)))
                    .collect(),
                None => BTreeMap::from([(
                    s.raft_id,
                    BasicNode::new(format!("{}:{}", s.host, s.base_port)),
                )]),
            };
            info!(voters = members.len(), "initialising the metadata quorum");
            // Every voter may try; those that heard from a leader first
            // are refused, which is fine.
            if let Err(e) = raft.initialize(members).await {
                debug!("quorum initialisation: {e}");
            }
        }
        if let Some(voters) = &s.voters {
            let m = raft.metrics().borrow().membership_config.clone();
            check_membership(voters, m.membership());
        }
        let single = s.voters.is_none();
        raft.wait(Some(if single {
            STARTUP_TIMEOUT
        } else {
            STARTUP_TIMEOUT * 2
        }))
        .metrics(
            |m| {
                if single {
                    // Leader, and everything in the log applied.
                    m.state == ServerState::Leader
                        && m.last_applied.map(|l| l.index) >= m.last_log_index
                } else {
                    m.current_leader.is_some()
                }
            },
            "a metadata quorum leader",
        )
        .await
        .map_err(raft_err)?;
        let mut c = Controller {
            raft,
            published,
            settings: s,
            leader: None,
            liveness: Liveness::default(),
            cut_off: false,
            session: rand_session(),
            pushed: 0,
        };
        if c.settings.broker {
            if c.settings.voters.is_some() {
                crate::liveness::start(c.settings.session_timeout, c.settings.heartbeat_interval);
                crate::clean::enable();
            }
            c.register().await?;
        } else {
            // A controller only: its image is whatever the log holds.
            let leader_commit = c.raft.metrics().borrow().last_log_index;
            let _ = c
                .raft
                .wait(Some(STARTUP_TIMEOUT))
                .applied_index_at_least(leader_commit, "the log replayed")
                .await;
        }
        let image = c.image();
        info!(
            topics = image.topics.len(),
            version = image.version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "metadata recovered"
        );
        Ok(c)
    }

    fn image(&self) -> Arc<MetadataImage> {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.settings.raft_id)
    }

    /// Registers every shard of this broker with a new epoch (through the
    /// leader), so a restart is visible in the log and stale registrations
    /// can be fenced; nodes of shards this broker no longer has are fenced.
    /// Returns once this controller has applied the registration.
    async fn register(&mut self) -> Result<(), ControllerError> {
        let p = self.settings.placement;
        let cmd = Command::RegisterBroker {
            broker_id: p.broker_id,
            shards: p.shards,
            host: self.settings.host.clone(),
            base_port: self.settings.base_port,
            rack: self.settings.rack.clone(),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let sent = Instant::now();
            let r = self.submit(std::slice::from_ref(&cmd), false, false).await;
            match r.results.first() {
                Some(Ok(_)) => {
                    if self.settings.voters.is_some() {
                        // Registered: a fresh session from now, for shards
                        // with the image that holds the registration.
                        let s = &self.settings;
                        let version = r.index.unwrap_or(0);
                        crate::liveness::renew(
                            sent,
                            s.session_timeout,
                            s.heartbeat_interval,
                            version,
                        );
                    }
                    return Ok(());
                }
                Some(Err(e)) if Instant::now() < deadline => {
                    debug!("registration not committed yet: {}", e.message);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => {
                    return Err(ControllerError::Raft(format!(
                        "cannot register broker {}: {other:?}",
                        p.broker_id
                    )))
                }
            }
        }
    }

    async fn commit(
        &self,
        records: &[Record],
    ) -> Result<(Arc<MetadataImage>, u64), ControllerError> {
        let started = Instant::now();
        let write = self.raft.client_write(RecordBatch(encode_all(records)));
        let written = if self.settings.voters.is_some() {
            // A leader cut off from the other voters would wait forever for
            // a quorum, and with it every request queued behind this one.
            tokio::time::timeout(FORWARD_TIMEOUT, write)
                .await
                .map_err(|_| {
                    ControllerError::Raft(format!(
                        "no quorum acknowledged the commit within {FORWARD_TIMEOUT:?}"
                    ))
                })?
                .map_err(raft_err)?
        } else {
            write.await.map_err(raft_err)?
        };
        debug!(
            records = records.len(),
            micros = started.elapsed().as_micros() as u64,
            "metadata committed"
        );
        Ok((self.image(), written.log_id.index))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let several = self.settings.voters.is_some();
        let mut metrics = self.raft.metrics();
        let mut tick = tokio::time::interval(self.settings.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                req = rx.next() => match req {
                    Some(req) => self.handle(req).await,
                    None => break,
                },
                _ = tick.tick(), if several => self.on_tick().await,
                _ = crate::clean::KICK.notified(), if several && self.settings.broker => {
                    // A write waits to take back a partition offered as clean.
                    self.heartbeat().await;
                }
                changed = metrics.changed(), if several => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
            self.push_image();
        }
        info!("all controller handles dropped: stopping the metadata quorum");
        if let Err(e) = self.raft.shutdown().await {
            error!("metadata quorum shutdown: {e}");
        }
    }

    async fn handle(&mut self, req: Request) {
        match req {
            Request::Submit {
                cmds,
                dry_run,
                forwarded,
                reply,
            } => {
                let _ = reply.send(self.submit(&cmds, dry_run, forwarded).await);
            }
            Request::Quorum { reply } => {
                let m = self.raft.metrics().borrow().clone();
                let _ = reply.send(QuorumState {
                    id: m.id,
                    leader: m.current_leader,
                    term: m.current_term,
                    voters: m.membership_config.voter_ids().collect(),
                    last_log_index: m.last_log_index,
                    last_applied: m.last_applied.map(|l| l.index),
                });
            }
            Request::Image { reply } => {
                let _ = reply.send(self.image());
            }
            Request::Heartbeat {
                broker_id,
                session,
                seq,
                clean,
                reply,
            } => {
                let answer = if self.is_leader() {
                    self.liveness_for_term();
                    self.liveness.last_seen.insert(broker_id, Instant::now());
                    let newer = self
                        .liveness
                        .clean
                        .get(&broker_id)
                        .is_none_or(|&(s, q, _)| s != session || q < seq);
                    if newer {
                        self.liveness.clean.insert(broker_id, (session, seq, clean));
                    }
                    let image = self.image();
                    let fenced = image
                        .nodes
                        .iter()
                        .filter(|(&id, _)| id.div_euclid(NODES_PER_BROKER) == broker_id)
                        .all(|(_, n)| n.fenced);
                    rpc::RpcResponse::Heartbeat {
                        fenced,
                        version: image.version,
                    }
                } else {
                    rpc::RpcResponse::Refused("not the quorum leader".into())
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// Several voters: every newly applied image goes to shard 0, which
    /// installs it on every shard (changes other brokers made, too).
    fn push_image(&mut self) {
        let Some(tx) = &self.settings.images else {
            return;
        };
        let image = self.image();
        if image.version != self.pushed {
            self.pushed = image.version;
            let _ = tx.unbounded_send(image);
        }
    }

    /// Heartbeat of this broker to the leader, its own fencing when the
    /// leader has been out of reach for a session, and, on the leader, the
    /// fencing of brokers that stopped heartbeating.
    async fn on_tick(&mut self) {
        let me = self.settings.placement.broker_id;
        let timeout = self.settings.session_timeout;
        let interval = self.settings.heartbeat_interval;
        let sent = Instant::now();
        if self.is_leader() {
            // A leader cut off from the other voters still believes it
            // leads: it serves only while a quorum acknowledged it lately.
            let acked = self.raft.metrics().borrow().millis_since_quorum_ack;
            if let (true, Some(ms)) = (self.settings.broker, acked) {
                let at = sent.checked_sub(Duration::from_millis(ms)).unwrap_or(sent);
                crate::liveness::renew(at, timeout, interval, self.image().version);
            }
            self.fence_silent_brokers().await;
        } else if !self.settings.broker {
            return;
        } else {
            self.heartbeat().await;
        }
        let cut_off = crate::liveness::fenced(self.image().version);
        if cut_off != self.cut_off {
            if cut_off {
                warn!(
                    broker = me,
                    "no answer from the quorum's leader for {} ms: not serving partitions",
                    timeout.saturating_sub(interval).as_millis()
                );
            } else {
                info!(broker = me, "the quorum's leader answers again: serving");
            }
            self.cut_off = cut_off;
        }
        self.push_image();
    }

    /// One heartbeat of this broker to the quorum's leader (the leader
    /// itself needs none: its clean book is answered at once).
    async fn heartbeat(&mut self) {
        let me = self.settings.placement.broker_id;
        let (timeout, interval) = (
            self.settings.session_timeout,
            self.settings.heartbeat_interval,
        );
        let sent = Instant::now();
        let (seq, clean) = crate::clean::heartbeat();
        if self.is_leader() {
            crate::clean::answered(seq);
            return;
        }
        let req = rpc::RpcRequest::Heartbeat {
            broker_id: me,
            session: self.session,
            seq,
            clean,
        };
        match self.call_leader(&req, interval).await {
            Some(rpc::RpcResponse::Heartbeat {
                fenced: false,
                version,
            }) => {
                crate::clean::answered(seq);
                crate::liveness::renew(sent, timeout, interval, version);
            }
            Some(rpc::RpcResponse::Heartbeat { fenced: true, .. }) => {
                warn!(
                    broker = me,
                    "the quorum fenced this broker: registering again"
                );
                if let Err(e) = self.register().await {
                    warn!("registering again failed: {e}");
                }
            }
            Some(other) => debug!("heartbeat answered {other:?}"),
            None => {}
        }
    }

    /// Starts this term's liveness record afresh when the term changed: a
    /// new leader gives every broker a full session and trusts no clean
    /// set it did not receive itself.
    fn liveness_for_term(&mut self) {
        let term = self.raft.metrics().borrow().current_term;
        if self.liveness.leading.map(|(t, _)| t) != Some(term) {
            self.liveness = Liveness {
                leading: Some((term, Instant::now())),
                last_seen: HashMap::new(),
                clean: HashMap::new(),
            };
        }
    }

    async fn fence_silent_brokers(&mut self) {
        let acked = self.raft.metrics().borrow().millis_since_quorum_ack;
        let now = Instant::now();
        // A leader the other voters no longer answer is the one cut off: it
        // fences nobody (its commit could not be acknowledged anyway).
        let quorum_recent = acked.is_some_and(|ms| {
            Duration::from_millis(ms)
                < self
                    .settings
                    .session_timeout
                    .saturating_sub(self.settings.heartbeat_interval)
        });
        self.liveness_for_term();
        let since = self.liveness.leading.map_or(now, |(_, at)| at);
        if self.settings.broker {
            self.liveness
                .last_seen
                .insert(self.settings.placement.broker_id, now);
        }
        let image = self.image();
        let mut brokers: Vec<i32> = image
            .live_nodes()
            .map(|(&id, _)| id.div_euclid(NODES_PER_BROKER))
            .collect();
        brokers.dedup();
        for b in brokers {
            if !quorum_recent {
                break;
            }
            let last = self.liveness.last_seen.get(&b).copied().unwrap_or(since);
            if now.duration_since(last) > self.settings.session_timeout {
                warn!(
                    broker = b,
                    silent_ms = now.duration_since(last).as_millis() as u64,
                    "broker stopped heartbeating: fencing it"
                );
                let movable = self
                    .liveness
                    .clean
                    .remove(&b)
                    .map(|(_, _, clean)| clean)
                    .unwrap_or_default();
                if !movable.is_empty() {
                    info!(
                        broker = b,
                        partitions = movable.len(),
                        "moving the fenced broker's clean partitions to live nodes"
                    );
                }
                let cmd = Command::FenceBroker {
                    broker_id: b,
                    movable,
                };
                let r = self.submit(&[cmd], false, false).await;
                if let Some(Err(e)) = r.results.first() {
                    warn!(broker = b, "fencing failed: {}", e.message);
                }
            }
        }
    }

    /// Sends `req` to the quorum's leader; `None` when there is none or it
    /// does not answer.
    async fn call_leader(
        &mut self,
        req: &rpc::RpcRequest,
        ttl: Duration,
    ) -> Option<rpc::RpcResponse> {
        let leader = self.raft.metrics().borrow().current_leader?;
        let addr = self.settings.voter_addr(leader)?.to_string();
        if self.leader.as_ref().map(|p| p.addr()) != Some(addr.as_str()) {
            self.leader = Some(rpc::Peer::new(leader, addr));
        }
        let peer = self.leader.as_mut()?;
        match peer.call(req, ttl).await {
            Ok(r) => Some(r),
            Err(e) => {
                debug!(leader, "call to the quorum leader failed: {e}");
                None
            }
        }
    }

    /// Requests are handled one at a time, so each is planned against the
    /// image every earlier request produced. Only the quorum's leader
    /// plans and commits; another controller forwards to it and answers once
    /// it has applied the result itself.
    async fn submit(&mut self, cmds: &[Command], dry_run: bool, forwarded: bool) -> Submitted {
        if self.settings.voters.is_none() || self.is_leader() {
            return self.plan_and_commit(cmds, dry_run).await;
        }
        if forwarded {
            return Submitted::unavailable(cmds.len(), "not the quorum leader");
        }
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        let req = rpc::RpcRequest::Submit {
            cmds: cmds.to_vec(),
            dry_run,
        };
        while Instant::now() < deadline {
            if self.is_leader() {
                return self.plan_and_commit(cmds, dry_run).await;
            }
            match self.call_leader(&req, FORWARD_TIMEOUT).await {
                Some(rpc::RpcResponse::Submitted { results, index }) => {
                    if let Some(index) = index {
                        let waited = self
                            .raft
                            .wait(Some(FORWARD_TIMEOUT))
                            .applied_index_at_least(Some(index), "a forwarded commit")
                            .await;
                        if let Err(e) = waited {
                            warn!("forwarded commit {index} not applied here: {e}");
                        }
                    }
                    return Submitted {
                        results,
                        image: index.map(|_| self.image()),
                        index,
                    };
                }
                other => {
                    debug!("forward to the quorum leader: {other:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Submitted::unavailable(cmds.len(), "no metadata quorum leader reachable")
    }

    async fn plan_and_commit(&mut self, cmds: &[Command], dry_run: bool) -> Submitted {
        for c in cmds {
            if let Command::RegisterBroker { broker_id, .. } = c {
                // A broker (re)starting: what it said was clean before may
                // not be any more.
                self.liveness.clean.remove(broker_id);
            }
        }
        let image = self.image();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let (mut results, records) = plan(&image, cmds, self.settings.placement, now_ms);
        if dry_run || records.is_empty() {
            return Submitted {
                results,
                image: None,
                index: None,
            };
        }
        match self.commit(&records).await {
            Ok((image, index)) => Submitted {
                results,
                image: Some(image),
                index: Some(index),
            },
            Err(e) => {
                error!("metadata commit failed: {e}");
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(CommandError::new(
                        ResponseError::NotController,
                        format!("metadata commit failed: {e}"),
                    ));
                }
                Submitted {
                    results,
                    image: None,
                    index: None,
                }
            }
        }
    }
}

/// A number that differs between two runs of this process.
fn rand_session() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Says clearly in the log where `controller_quorum_voters` and the
/// quorum's recorded membership differ: a voter at another address is
/// called at the configured one (`rpc::Network`), but the set of voters is
/// the quorum's own (it changes only through the quorum).
fn check_membership(voters: &[(u64, String)], membership: &openraft::Membership<u64, BasicNode>) {
    let recorded: BTreeMap<u64, &BasicNode> = membership.nodes().map(|(id, n)| (*id, n)).collect();
    if recorded.is_empty() {
        return; // a new quorum: formed from the configured list
    }
    for (id, addr) in voters {
        if let Some(n) = recorded.get(id).filter(|n| &n.addr != addr) {
            warn!(
                voter = id,
                recorded = %n.addr,
                configured = %addr,
                "this voter's quorum address changed since the quorum formed: calling it at \
                 the configured one"
            );
        }
    }
    let configured: std::collections::BTreeSet<u64> = voters.iter().map(|(id, _)| *id).collect();
    let members: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    if configured != members {
        warn!(
            configured = ?configured,
            quorum = ?members,
            "controller_quorum_voters names other voters than the quorum has: the quorum keeps \
             its own (voters are not added or removed by editing the configuration)"
        );
    }
}

/// A broker-only process asks the voters, until the leader answers, to
/// add it as a learner (it then receives the log, but never votes).
async fn join_as_learner(s: &Settings, id: u64, addr: &str) -> Result<(), ControllerError> {
    let voters = s.voters.clone().unwrap_or_default();
    let deadline = Instant::now() + STARTUP_TIMEOUT * 2;
    let req = rpc::RpcRequest::Join {
        id,
        addr: addr.to_string(),
    };
    while Instant::now() < deadline {
        for (vid, vaddr) in &voters {
            let mut peer = rpc::Peer::new(*vid, vaddr.clone());
            match peer.call(&req, FORWARD_TIMEOUT).await {
                Ok(rpc::RpcResponse::Joined) => {
                    info!(leader = vid, "following the metadata log as a learner");
                    return Ok(());
                }
                other => debug!(voter = vid, "join: {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ControllerError::Raft(
        "no quorum leader took this broker as a learner".into(),
    ))
}

/// Serves the quorum's RPCs: Raft's own straight to the Raft node; commands
/// and heartbeats through the controller's queue (planned in turn with
/// everything else).
async fn serve(
    listener: tokio::net::TcpListener,
    raft: Raft<TypeConfig>,
    requests: mpsc::Sender<Request>,
) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("quorum listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let raft = raft.clone();
        let mut requests = requests.clone();
        tokio::spawn(async move {
            loop {
                let req: rpc::RpcRequest = match rpc::read_frame(&mut stream).await {
                    Ok(r) => r,
                    Err(e) => {
                        if e.kind() != std::io::ErrorKind::UnexpectedEof {
                            debug!(%peer, "quorum connection closed: {e}");
                        }
                        return;
                    }
                };
                let resp = match req {
                    rpc::RpcRequest::Append(r) => {
                        rpc::RpcResponse::Append(raft.append_entries(r).await)
                    }
                    rpc::RpcRequest::Vote(r) => rpc::RpcResponse::Vote(raft.vote(r).await),
                    rpc::RpcRequest::Snapshot(r) => {
                        rpc::RpcResponse::Snapshot(raft.install_snapshot(r).await)
                    }
                    rpc::RpcRequest::Submit { cmds, dry_run } => {
                        let (reply, rx) = oneshot::channel();
                        let req = Request::Submit {
                            cmds,
                            dry_run,
                            forwarded: true,
                            reply,
                        };
                        match requests.send(req).await {
                            Ok(()) => match rx.await {
                                Ok(s) => rpc::RpcResponse::Submitted {
                                    results: s.results,
                                    index: s.index,
                                },
                                Err(_) => rpc::RpcResponse::Refused("controller stopped".into()),
                            },
                            Err(_) => rpc::RpcResponse::Refused("controller stopped".into()),
                        }
                    }
                    rpc::RpcRequest::Join { id, addr } => {
                        let leader = raft.metrics().borrow().current_leader;
                        if leader != Some(raft.metrics().borrow().id) {
                            rpc::RpcResponse::Refused("not the quorum leader".into())
                        } else {
                            match raft.add_learner(id, BasicNode::new(&addr), false).await {
                                Ok(_) => {
                                    info!(learner = id, %addr, "a broker follows the metadata log");
                                    rpc::RpcResponse::Joined
                                }
                                Err(e) => rpc::RpcResponse::Refused(e.to_string()),
                            }
                        }
                    }
                    rpc::RpcRequest::Heartbeat {
                        broker_id,
                        session,
                        seq,
                        clean,
                    } => {
                        let (reply, rx) = oneshot::channel();
                        let req = Request::Heartbeat {
                            broker_id,
                            session,
                            seq,
                            clean,
                            reply,
                        };
                        match requests.send(req).await {
                            Ok(()) => rx.await.unwrap_or_else(|_| {
                                rpc::RpcResponse::Refused("controller stopped".into())
                            }),
                            Err(_) => rpc::RpcResponse::Refused("controller stopped".into()),
                        }
                    }
                };
                if rpc::write_frame(&mut stream, &resp).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::TopicMeta;

    fn settings(dir: &Path, snapshot_every: u64) -> Settings {
        let cfg = Config {
            data_dir: dir.to_path_buf(),
            shards: 2,
            ..Config::default()
        };
        Settings {
            snapshot_every,
            ..Settings::from_config(&cfg)
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "broker-ctl-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn create(name: &str, partitions: i32) -> Command {
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), format!("{partitions}000"));
        Command::CreateTopic {
            name: name.into(),
            partitions,
            configs,
            assignment: None,
        }
    }

    fn topics(img: &MetadataImage) -> Vec<TopicMeta> {
        img.topics.values().map(|t| (**t).clone()).collect()
    }

    /// Creates topics (and deletes some) through a one-voter quorum, then
    /// reopens the directory: the image comes back the same.
    fn create_and_reopen(dir: &Path, snapshot_every: u64) -> MetadataImage {
        rt().block_on(async {
            let mut c = Controller::open(settings(dir, snapshot_every), mpsc::channel(1).0)
                .await
                .unwrap();
            for i in 0..12 {
                let r = c
                    .submit(&[create(&format!("t{i}"), 1 + i % 3)], false, false)
                    .await;
                assert!(r.results[0].is_ok(), "{:?}", r.results);
                assert!(r.image.unwrap().topic(&format!("t{i}")).is_some());
            }
            let dry = c.submit(&[create("dry", 1)], true, false).await;
            assert!(dry.results[0].is_ok() && dry.image.is_none());
            let del = c
                .submit(&[Command::DeleteTopic { name: "t3".into() }], false, false)
                .await;
            assert!(del.results[0].is_ok());
            let dup = c.submit(&[create("t1", 1)], false, false).await;
            assert_eq!(dup.results[0].as_ref().unwrap_err().code, 36);
            for node_id in [0, 1] {
                let cmd = Command::AllocateProducerIds {
                    node_id,
                    count: 1000,
                };
                let r = c.submit(&[cmd], false, false).await;
                let first = r.image.unwrap().producer_id_blocks[&node_id].0;
                assert_eq!(first, i64::from(node_id) * 1000);
            }
            if snapshot_every < 10 {
                c.raft
                    .wait(Some(Duration::from_secs(10)))
                    .metrics(|m| m.snapshot.is_some(), "a snapshot")
                    .await
                    .unwrap();
            }
            let before = (*c.image()).clone();
            c.raft.shutdown().await.unwrap();
            drop(c);
            let c = Controller::open(settings(dir, snapshot_every), mpsc::channel(1).0)
                .await
                .unwrap();
            let after = c.image();
            assert_eq!(topics(&after), topics(&before));
            assert!(after.topic("t3").is_none() && after.topic("dry").is_none());
            assert_eq!(after.next_producer_id, 2000);
            assert_eq!(
                after.nodes[&1].epoch,
                before.nodes[&1].epoch + 1,
                "re-registered"
            );
            c.raft.shutdown().await.unwrap();
            (*after).clone()
        })
    }

    #[test]
    fn a_restart_with_fewer_shards_fences_the_missing_nodes() {
        let dir = temp_dir("fence");
        let with = |shards: usize| Settings {
            placement: Placement {
                broker_id: 0,
                shards,
            },
            ..settings(&dir, 1000)
        };
        let nodes = |shards: usize| {
            rt().block_on(async {
                let c = Controller::open(with(shards), mpsc::channel(1).0)
                    .await
                    .unwrap();
                let img = c.image();
                c.raft.shutdown().await.unwrap();
                img.nodes
                    .iter()
                    .map(|(&id, n)| (id, n.fenced))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(nodes(3), vec![(0, false), (1, false), (2, false)]);
        assert_eq!(nodes(1), vec![(0, false), (1, true), (2, true)]);
        assert_eq!(nodes(2), vec![(0, false), (1, false), (2, true)]);
    }

    #[test]
    fn one_voter_quorum_commits_and_replays_the_log() {
        let dir = temp_dir("replay");
        let img = create_and_reopen(&dir, 1000);
        assert_eq!(img.topics.len(), 11);
        assert!(state_machine::latest_snapshot_path(&metadata_dir(&dir))
            .unwrap()
            .is_none());
    }

    #[test]
    fn replays_a_snapshot_plus_the_log_tail() {
        let dir = temp_dir("snap");
        let img = create_and_reopen(&dir, 5);
        assert_eq!(img.topics.len(), 11);
        let mdir = metadata_dir(&dir);
        let snap = state_machine::latest_snapshot_path(&mdir).unwrap().unwrap();
        // The log was purged behind the snapshot: the image needed both.
        let (_, s) = state_machine::load_latest(&mdir).unwrap().unwrap();
        assert!(
            s.last_applied.unwrap().index < img.version,
            "log tail exists"
        );
        let purged: Option<openraft::LogId<u64>> = store::read_json(&mdir, "purged").unwrap();
        assert!(purged.is_some(), "log purged behind {}", snap.display());
        // The shell sees the same image.
        let text = shell::dump(&dir).unwrap();
        assert!(
            text.contains("== snapshot") && text.contains("t11 id"),
            "{text}"
        );
    }

    #[test]
    fn corrupt_snapshot_is_refused_naming_the_file() {
        let dir = temp_dir("badsnap");
        create_and_reopen(&dir, 5);
        let mdir = metadata_dir(&dir);
        let path = state_machine::latest_snapshot_path(&mdir).unwrap().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = rt()
            .block_on(Controller::open(settings(&dir, 5), mpsc::channel(1).0))
            .err()
            .expect("a corrupt snapshot must stop the start");
        let msg = err.to_string();
        assert!(matches!(err, ControllerError::CorruptSnapshot { .. }));
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(shell::dump(&dir).is_err());
    }

    #[test]
    fn corrupt_log_tail_is_cut_and_the_rest_replayed() {
        let dir = temp_dir("badtail");
        let before = create_and_reopen(&dir, 1000);
        let log = metadata_dir(&dir).join(store::LOG_FILE);
        let mut bytes = std::fs::read(&log).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&[0, 0, 0, 99, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
        std::fs::write(&log, &bytes).unwrap();
        rt().block_on(async {
            let c = Controller::open(settings(&dir, 1000), mpsc::channel(1).0)
                .await
                .unwrap();
            assert_eq!(topics(&c.image()), topics(&before));
            c.raft.shutdown().await.unwrap();
        });
        let scan = store::scan_log(&log).unwrap();
        assert_eq!(scan.valid_len, scan.file_len, "garbage cut");
        assert!(
            scan.file_len as usize > whole,
            "new entries appended after the cut"
        );
    }
}
