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
pub mod shell;
pub mod state_machine;
pub mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use kafka_protocol::ResponseError;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, RaftNetwork, RaftNetworkFactory, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info};

use crate::config::Config;
use crate::metadata::{
    plan, shard_of, Command, CommandError, CommandResult, MetadataImage, Placement,
    NODES_PER_BROKER,
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
}

impl Submitted {
    fn unavailable(n: usize, why: &str) -> Submitted {
        let err = CommandError::new(ResponseError::NotController, why);
        Submitted {
            results: vec![Err(err); n],
            image: None,
        }
    }
}

enum Request {
    Submit {
        cmds: Vec<Command>,
        dry_run: bool,
        reply: oneshot::Sender<Submitted>,
    },
    Quorum {
        reply: oneshot::Sender<QuorumState>,
    },
    Image {
        reply: oneshot::Sender<Arc<MetadataImage>>,
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
}

/// Where the controller keeps its files.
pub fn metadata_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("metadata")
}

/// Starts the controller thread, replays snapshot and log, elects the one
/// voter, registers this broker's shards as nodes, and returns once the
/// recovered image is ready. Blocks the calling (main) thread meanwhile.
pub fn start(cfg: &Config) -> Result<Started, ControllerError> {
    let settings = Settings::from_config(cfg);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (tx, rx) = mpsc::channel(QUEUE);
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
                match Controller::open(settings).await {
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
        }
    }
}

struct Controller {
    raft: Raft<TypeConfig>,
    published: Arc<Mutex<Arc<MetadataImage>>>,
    placement: Placement,
}

fn raft_err(e: impl std::fmt::Display) -> ControllerError {
    ControllerError::Raft(e.to_string())
}

impl Controller {
    async fn open(s: Settings) -> Result<Controller, ControllerError> {
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
        let raft = Raft::new(s.raft_id, Arc::new(config), Network, log, sm)
            .await
            .map_err(raft_err)?;
        if !raft.is_initialized().await.map_err(raft_err)? {
            let addr = format!("{}:{}", s.host, s.base_port);
            let members = BTreeMap::from([(s.raft_id, BasicNode::new(addr))]);
            info!("initialising a one-voter metadata quorum");
            raft.initialize(members).await.map_err(raft_err)?;
        }
        // Leader, and everything in the log applied: the image is recovered.
        raft.wait(Some(STARTUP_TIMEOUT))
            .metrics(
                |m| {
                    m.state == ServerState::Leader
                        && m.last_applied.map(|l| l.index) >= m.last_log_index
                },
                "metadata quorum leader with its log applied",
            )
            .await
            .map_err(raft_err)?;
        let c = Controller {
            raft,
            published,
            placement: s.placement,
        };
        c.register_nodes(&s.host, s.base_port).await?;
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

    /// Registers every shard of this broker with a new epoch, so a restart
    /// is visible in the log and stale registrations can be fenced. Nodes of
    /// shards this broker no longer has (it restarted with fewer cores) are
    /// fenced: nothing may be placed or moved there.
    async fn register_nodes(&self, host: &str, base_port: u16) -> Result<(), ControllerError> {
        let image = self.image();
        let gone = image.nodes.iter().filter(|(&id, n)| {
            !n.fenced
                && id.div_euclid(NODES_PER_BROKER) == self.placement.broker_id
                && shard_of(id) >= self.placement.shards
        });
        let fenced: Vec<Record> = gone
            .map(|(&node_id, n)| Record::NodeFenced {
                node_id,
                epoch: n.epoch,
            })
            .collect();
        let records: Vec<Record> = (0..self.placement.shards)
            .map(|s| {
                let node_id = self.placement.node_id(s);
                Record::NodeRegistered {
                    node_id,
                    epoch: image
                        .nodes
                        .get(&node_id)
                        .map_or(1, |n| n.epoch.saturating_add(1)),
                    host: host.to_string(),
                    port: base_port.saturating_add(s as u16),
                }
            })
            .chain(fenced)
            .collect();
        self.commit(&records).await.map(|_| ())
    }

    async fn commit(&self, records: &[Record]) -> Result<Arc<MetadataImage>, ControllerError> {
        let started = Instant::now();
        self.raft
            .client_write(RecordBatch(encode_all(records)))
            .await
            .map_err(raft_err)?;
        debug!(
            records = records.len(),
            micros = started.elapsed().as_micros() as u64,
            "metadata committed"
        );
        Ok(self.image())
    }

    async fn run(self, mut rx: mpsc::Receiver<Request>) {
        while let Some(req) = rx.next().await {
            match req {
                Request::Submit {
                    cmds,
                    dry_run,
                    reply,
                } => {
                    let _ = reply.send(self.submit(&cmds, dry_run).await);
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
            }
        }
        info!("all controller handles dropped: stopping the metadata quorum");
        if let Err(e) = self.raft.shutdown().await {
            error!("metadata quorum shutdown: {e}");
        }
    }

    /// Requests are handled one at a time, so each is planned against the
    /// image every earlier request produced.
    async fn submit(&self, cmds: &[Command], dry_run: bool) -> Submitted {
        let image = self.image();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let (mut results, records) = plan(&image, cmds, self.placement, now_ms);
        if dry_run || records.is_empty() {
            return Submitted {
                results,
                image: None,
            };
        }
        match self.commit(&records).await {
            Ok(image) => Submitted {
                results,
                image: Some(image),
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
                }
            }
        }
    }
}

/// The network of a one-voter quorum: there is nobody to talk to. The
/// multi-node issue replaces this with RPCs between brokers.
struct Network;

struct NoPeer;

fn unreachable<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "single-node metadata quorum has no peers",
    )))
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = NoPeer;

    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> NoPeer {
        NoPeer
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable())
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
            let c = Controller::open(settings(dir, snapshot_every))
                .await
                .unwrap();
            for i in 0..12 {
                let r = c
                    .submit(&[create(&format!("t{i}"), 1 + i % 3)], false)
                    .await;
                assert!(r.results[0].is_ok(), "{:?}", r.results);
                assert!(r.image.unwrap().topic(&format!("t{i}")).is_some());
            }
            let dry = c.submit(&[create("dry", 1)], true).await;
            assert!(dry.results[0].is_ok() && dry.image.is_none());
            let del = c
                .submit(&[Command::DeleteTopic { name: "t3".into() }], false)
                .await;
            assert!(del.results[0].is_ok());
            let dup = c.submit(&[create("t1", 1)], false).await;
            assert_eq!(dup.results[0].as_ref().unwrap_err().code, 36);
            for node_id in [0, 1] {
                let cmd = Command::AllocateProducerIds {
                    node_id,
                    count: 1000,
                };
                let r = c.submit(&[cmd], false).await;
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
            let c = Controller::open(settings(dir, snapshot_every))
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
                let c = Controller::open(with(shards)).await.unwrap();
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
            .block_on(Controller::open(settings(&dir, 5)))
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
            let c = Controller::open(settings(&dir, 1000)).await.unwrap();
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
