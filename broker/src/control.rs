//! The control plane between shards: metadata commands go to shard 0, which
//! hands them to the controller thread (validated, committed through Raft,
//! applied), then fans the committed image out to every shard over glommio's
//! channel mesh, and answers once every shard has installed it (so a client
//! that created a topic finds it on every shard at once).
//!
//! It also carries a transaction coordinator's markers to the shard leading
//! a partition of the transaction (what Kafka's WriteTxnMarkers request
//! does between brokers), a partition leader's implicit add of a partition
//! to a transaction (transactions v2) to the coordinating shard, partition hand-overs (reassignments) to the
//! leading shard, quorum queries to shard 0, shard reports (metrics, admin
//! API) to shard 0, and their answers back.
//!
//! One `Control` per shard, on that shard's executor. Carries metadata and
//! markers only, never record data. Never holds a `RefCell` borrow across an `.await`, and
//! never blocks on the controller: it awaits its answer on a oneshot.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use event_listener::Event;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use tracing::{error, warn};

use kafka_protocol::ResponseError;
use net::connection::LocalBoxFuture;

use crate::controller::{ControllerHandle, QuorumState};
use crate::metadata::{Command, CommandError, CommandResult, MetadataImage};
use crate::metrics::report::ShardReport;
use crate::partition::PartitionKey;
use crate::txn::MarkerReq;

/// How long `Control::reports` waits for the other shards.
const REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What shards tell each other.
#[derive(Debug)]
pub enum MeshMsg {
    /// A shard asks shard 0 to apply commands.
    Submit {
        id: u64,
        cmds: Vec<Command>,
        dry_run: bool,
    },
    /// Shard 0 answers a `Submit`.
    Reply {
        id: u64,
        results: Vec<CommandResult>,
    },
    /// Shard 0 publishes a new image.
    Image(Arc<MetadataImage>),
    /// A shard has installed the image of this version.
    Applied { version: u64 },
    /// A transaction coordinator asks the leading shard to write markers.
    WriteMarkers { id: u64, markers: Vec<MarkerReq> },
    /// The leading shard answers a `WriteMarkers`, one result per marker.
    MarkersWritten {
        id: u64,
        results: Vec<Result<(), ResponseError>>,
    },
    /// A partition leader (or group coordinator) asks the coordinating
    /// shard to add partitions to a transaction (transactions v2).
    AddToTxn { id: u64, add: TxnAdd },
    /// The coordinating shard answers an `AddToTxn`.
    AddedToTxn {
        id: u64,
        result: Result<(), ResponseError>,
    },
    /// A shard asks the leading shard to hand a partition over.
    HandOver {
        id: u64,
        key: PartitionKey,
        to_node: i32,
    },
    /// The leading shard answers a `HandOver`.
    HandedOver {
        id: u64,
        result: Result<(), ResponseError>,
    },
    /// A shard asks shard 0 for the metadata quorum's state.
    Quorum { id: u64 },
    /// Shard 0 answers a `Quorum`.
    QuorumState { id: u64, state: Option<QuorumState> },
    /// Shard 0 asks a shard for its report (metrics, admin API).
    Report { id: u64 },
    /// A shard answers a `Report`.
    Reported {
        id: u64,
        report: Option<Box<ShardReport>>,
    },
}

/// Called when a new image arrives, so the shard can open or drop partitions.
pub type InstallImage = Box<dyn Fn(Arc<MetadataImage>)>;

/// One result per marker written.
pub type MarkerResults = Vec<Result<(), ResponseError>>;

/// Writes markers to partitions this shard leads.
pub type WriteMarkers = Box<dyn Fn(Vec<MarkerReq>) -> LocalBoxFuture<MarkerResults>>;

/// An implicit add: transactional id, producer id and epoch, and the
/// `(topic, partition)`s the transaction now writes to.
#[derive(Debug, Clone)]
pub struct TxnAdd {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    pub partitions: Vec<(String, i32)>,
}

/// Adds partitions to a transaction this shard coordinates.
pub type AddToTxn = Box<dyn Fn(TxnAdd) -> LocalBoxFuture<Result<(), ResponseError>>>;

/// Hands a partition this shard leads over to a node.
pub type HandOver = Box<dyn Fn(PartitionKey, i32) -> LocalBoxFuture<Result<(), ResponseError>>>;

/// Reads the shard's counters and state (`metrics::report`).
pub type Report = Box<dyn Fn() -> Option<ShardReport>>;

/// What the mesh asks of the shard it runs on.
pub struct ShardHooks {
    pub install: InstallImage,
    pub write_markers: WriteMarkers,
    pub add_to_txn: AddToTxn,
    pub hand_over: HandOver,
    pub report: Report,
}

pub struct Control {
    shard: usize,
    shards: usize,
    senders: Senders<MeshMsg>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Vec<CommandResult>>>>,
    next_id: Cell<u64>,
    /// Shard 0 only: the controller, and each shard's installed version.
    controller: Option<ControllerHandle>,
    applied: RefCell<Vec<u64>>,
    applied_changed: Event,
    hooks: ShardHooks,
    markers_pending: RefCell<HashMap<u64, oneshot::Sender<MarkerResults>>>,
    add_pending: RefCell<HashMap<u64, oneshot::Sender<Result<(), ResponseError>>>>,
    quorum_pending: RefCell<HashMap<u64, oneshot::Sender<Option<QuorumState>>>>,
    hand_over_pending: RefCell<HashMap<u64, oneshot::Sender<Result<(), ResponseError>>>>,
    report_pending: RefCell<HashMap<u64, oneshot::Sender<Option<Box<ShardReport>>>>>,
}

impl Control {
    /// Joins the mesh and starts the receive loops. Every shard must call it.
    pub fn start(
        shard: usize,
        shards: usize,
        senders: Senders<MeshMsg>,
        mut receivers: Receivers<MeshMsg>,
        hooks: ShardHooks,
        controller: Option<ControllerHandle>,
    ) -> Rc<Control> {
        let control = Rc::new(Control {
            shard,
            shards,
            senders,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            controller,
            applied: RefCell::new(vec![0; shards]),
            applied_changed: Event::new(),
            hooks,
            markers_pending: RefCell::new(HashMap::new()),
            add_pending: RefCell::new(HashMap::new()),
            quorum_pending: RefCell::new(HashMap::new()),
            hand_over_pending: RefCell::new(HashMap::new()),
            report_pending: RefCell::new(HashMap::new()),
        });
        for (peer, rx) in receivers.streams() {
            let c = control.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    c.clone().on_message(peer, msg).await;
                }
            })
            .detach();
        }
        control
    }

    async fn on_message(self: Rc<Self>, peer: usize, msg: MeshMsg) {
        match msg {
            MeshMsg::Submit { id, cmds, dry_run } => {
                let c = self.clone();
                glommio::spawn_local(async move {
                    let results = c.apply_and_publish(cmds, dry_run).await;
                    c.send(peer, MeshMsg::Reply { id, results }).await;
                })
                .detach();
            }
            MeshMsg::Reply { id, results } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&id) {
                    let _ = tx.send(results);
                }
            }
            MeshMsg::Image(image) => {
                let version = image.version;
                (self.hooks.install)(image);
                self.send(0, MeshMsg::Applied { version }).await;
            }
            MeshMsg::Applied { version } => {
                let mut applied = self.applied.borrow_mut();
                applied[peer] = applied[peer].max(version);
                self.applied_changed.notify(usize::MAX);
            }
            MeshMsg::WriteMarkers { id, markers } => {
                let c = self.clone();
                glommio::spawn_local(async move {
                    let results = (c.hooks.write_markers)(markers).await;
                    c.send(peer, MeshMsg::MarkersWritten { id, results }).await;
                })
                .detach();
            }
            MeshMsg::MarkersWritten { id, results } => {
                if let Some(tx) = self.markers_pending.borrow_mut().remove(&id) {
                    let _ = tx.send(results);
                }
            }
            MeshMsg::AddToTxn { id, add } => {
                let c = self.clone();
                glommio::spawn_local(async move {
                    let result = (c.hooks.add_to_txn)(add).await;
                    c.send(peer, MeshMsg::AddedToTxn { id, result }).await;
                })
                .detach();
            }
            MeshMsg::AddedToTxn { id, result } => {
                if let Some(tx) = self.add_pending.borrow_mut().remove(&id) {
                    let _ = tx.send(result);
                }
            }
            MeshMsg::HandOver { id, key, to_node } => {
                let c = self.clone();
                glommio::spawn_local(async move {
                    let result = (c.hooks.hand_over)(key, to_node).await;
                    c.send(peer, MeshMsg::HandedOver { id, result }).await;
                })
                .detach();
            }
            MeshMsg::HandedOver { id, result } => {
                if let Some(tx) = self.hand_over_pending.borrow_mut().remove(&id) {
                    let _ = tx.send(result);
                }
            }
            MeshMsg::Quorum { id } => {
                let c = self.clone();
                glommio::spawn_local(async move {
                    let state = c.quorum().await;
                    c.send(peer, MeshMsg::QuorumState { id, state }).await;
                })
                .detach();
            }
            MeshMsg::QuorumState { id, state } => {
                if let Some(tx) = self.quorum_pending.borrow_mut().remove(&id) {
                    let _ = tx.send(state);
                }
            }
            MeshMsg::Report { id } => {
                let report = (self.hooks.report)().map(Box::new);
                self.send(peer, MeshMsg::Reported { id, report }).await;
            }
            MeshMsg::Reported { id, report } => {
                if let Some(tx) = self.report_pending.borrow_mut().remove(&id) {
                    let _ = tx.send(report);
                }
            }
        }
    }

    /// Has shard `peer` hand over a partition it leads to `to_node`.
    pub async fn hand_over(
        &self,
        peer: usize,
        key: PartitionKey,
        to_node: i32,
    ) -> Result<(), ResponseError> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.hand_over_pending.borrow_mut().insert(id, tx);
        self.send(peer, MeshMsg::HandOver { id, key, to_node })
            .await;
        rx.await.unwrap_or(Err(ResponseError::NotLeaderOrFollower))
    }

    /// Every shard's report, in shard order (this shard's read directly).
    /// A shard that does not answer (it is stopping), or not within
    /// `REPORT_TIMEOUT` (stuck), is left out, so /metrics still answers.
    pub async fn reports(&self) -> Vec<ShardReport> {
        let mut waiting = Vec::new();
        for peer in 0..self.shards {
            if peer == self.shard {
                continue;
            }
            let id = self.next_id.get();
            self.next_id.set(id + 1);
            let (tx, rx) = oneshot::channel();
            self.report_pending.borrow_mut().insert(id, tx);
            self.send(peer, MeshMsg::Report { id }).await;
            waiting.push((peer, id, rx));
        }
        let mut out: Vec<ShardReport> = (self.hooks.report)().into_iter().collect();
        let deadline = std::time::Instant::now() + REPORT_TIMEOUT;
        for (peer, id, rx) in waiting {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let timer = async {
                glommio::timer::sleep(left).await;
                None
            };
            match futures_lite::future::or(async { Some(rx.await) }, timer).await {
                Some(Ok(Some(r))) => out.push(*r),
                Some(_) => {}
                None => {
                    self.report_pending.borrow_mut().remove(&id);
                    warn!(
                        peer,
                        "shard did not send its report within {REPORT_TIMEOUT:?}: left out"
                    );
                }
            }
        }
        out.sort_by_key(|r| r.shard);
        out
    }

    /// The metadata quorum's state, from the controller (through shard 0).
    pub async fn quorum(&self) -> Option<QuorumState> {
        if let Some(controller) = &self.controller {
            return controller.quorum().await;
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.quorum_pending.borrow_mut().insert(id, tx);
        self.send(0, MeshMsg::Quorum { id }).await;
        rx.await.ok().flatten()
    }

    /// Has shard `peer` write markers to partitions it leads; one result
    /// per marker.
    pub async fn write_markers(&self, peer: usize, markers: Vec<MarkerReq>) -> MarkerResults {
        let n = markers.len();
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.markers_pending.borrow_mut().insert(id, tx);
        self.send(peer, MeshMsg::WriteMarkers { id, markers }).await;
        rx.await
            .unwrap_or_else(|_| vec![Err(ResponseError::NotLeaderOrFollower); n])
    }

    /// Has shard `peer`, which coordinates the transaction, add partitions
    /// to it.
    pub async fn add_to_txn(&self, peer: usize, add: TxnAdd) -> Result<(), ResponseError> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.add_pending.borrow_mut().insert(id, tx);
        self.send(peer, MeshMsg::AddToTxn { id, add }).await;
        rx.await
            .unwrap_or(Err(ResponseError::CoordinatorNotAvailable))
    }

    async fn send(&self, peer: usize, msg: MeshMsg) {
        if let Err(e) = self.senders.send_to(peer, msg).await {
            error!(shard = self.shard, peer, "mesh send failed: {e}");
        }
    }

    /// Applies `cmds` on shard 0 (forwarding from other shards) and returns
    /// once every shard has the resulting image.
    /// Submits the commands that passed the handler's own checks and returns
    /// one result per entry of `checked`, in order: the handler's error, or
    /// what the controller answered for that command.
    pub async fn submit_checked(
        self: &Rc<Self>,
        checked: Vec<Result<Command, CommandError>>,
        dry_run: bool,
    ) -> Vec<CommandResult> {
        let cmds = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut applied = self.submit(cmds, dry_run).await.into_iter();
        checked
            .into_iter()
            .map(|c| {
                c.and_then(|_| {
                    applied.next().unwrap_or_else(|| {
                        Err(CommandError::new(
                            kafka_protocol::ResponseError::UnknownServerError,
                            "the controller answered fewer commands than were sent",
                        ))
                    })
                })
            })
            .collect()
    }

    pub async fn submit(self: &Rc<Self>, cmds: Vec<Command>, dry_run: bool) -> Vec<CommandResult> {
        if self.shard == 0 {
            return self.apply_and_publish(cmds, dry_run).await;
        }
        let n = cmds.len();
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        self.send(0, MeshMsg::Submit { id, cmds, dry_run }).await;
        match rx.await {
            Ok(results) => results,
            Err(_) => {
                warn!(shard = self.shard, "shard 0 dropped a metadata request");
                let err = CommandError::new(
                    kafka_protocol::ResponseError::RequestTimedOut,
                    "controller unavailable",
                );
                vec![Err(err); n]
            }
        }
    }

    async fn apply_and_publish(
        self: &Rc<Self>,
        cmds: Vec<Command>,
        dry_run: bool,
    ) -> Vec<CommandResult> {
        let Some(controller) = &self.controller else {
            unreachable!("only shard 0 talks to the controller");
        };
        let submitted = controller.submit(cmds, dry_run).await;
        if let Some(image) = submitted.image {
            self.publish(image).await;
        }
        submitted.results
    }

    /// Shard 0, with a quorum of several processes: installs on every
    /// shard each image the controller applies (commits of other brokers
    /// included), in the order they come.
    pub fn follow(
        self: &Rc<Self>,
        mut images: futures::channel::mpsc::UnboundedReceiver<Arc<MetadataImage>>,
    ) {
        use futures::StreamExt;
        let me = self.clone();
        glommio::spawn_local(async move {
            while let Some(image) = images.next().await {
                me.publish(image).await;
            }
        })
        .detach();
    }

    async fn publish(&self, image: Arc<MetadataImage>) {
        let version = image.version;
        (self.hooks.install)(image.clone());
        self.applied.borrow_mut()[0] = version;
        for peer in 1..self.shards {
            self.send(peer, MeshMsg::Image(image.clone())).await;
        }
        loop {
            let listener = self.applied_changed.listen();
            if self.applied.borrow().iter().all(|&v| v >= version) {
                return;
            }
            listener.await;
        }
    }
}
