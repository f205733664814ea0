//! The control plane between shards: metadata commands go to shard 0, which
//! applies them to the `TopicTable` and fans the new image out to every shard
//! over glommio's channel mesh, then answers once every shard has installed
//! it (so a client that created a topic finds it on every shard at once).
//!
//! One `Control` per shard, on that shard's executor. Carries metadata only,
//! never record data. Never holds a `RefCell` borrow across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use event_listener::Event;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use tracing::{error, warn};

use crate::metadata::{Command, CommandError, CommandResult, MetadataImage, TopicTable};

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
}

/// Called when a new image arrives, so the shard can open or drop partitions.
pub type InstallImage = Box<dyn Fn(Arc<MetadataImage>)>;

pub struct Control {
    shard: usize,
    shards: usize,
    senders: Senders<MeshMsg>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Vec<CommandResult>>>>,
    next_id: Cell<u64>,
    /// Shard 0 only: the writable table and each shard's installed version.
    table: Option<RefCell<TopicTable>>,
    applied: RefCell<Vec<u64>>,
    applied_changed: Event,
    install: InstallImage,
}

impl Control {
    /// Joins the mesh and starts the receive loops. Every shard must call it.
    pub fn start(
        shard: usize,
        shards: usize,
        senders: Senders<MeshMsg>,
        mut receivers: Receivers<MeshMsg>,
        install: InstallImage,
    ) -> Rc<Control> {
        let control = Rc::new(Control {
            shard,
            shards,
            senders,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            table: (shard == 0).then(|| RefCell::new(TopicTable::new(shards))),
            applied: RefCell::new(vec![0; shards]),
            applied_changed: Event::new(),
            install,
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
                (self.install)(image);
                self.send(0, MeshMsg::Applied { version }).await;
            }
            MeshMsg::Applied { version } => {
                let mut applied = self.applied.borrow_mut();
                applied[peer] = applied[peer].max(version);
                self.applied_changed.notify(usize::MAX);
            }
        }
    }

    async fn send(&self, peer: usize, msg: MeshMsg) {
        if let Err(e) = self.senders.send_to(peer, msg).await {
            error!(shard = self.shard, peer, "mesh send failed: {e}");
        }
    }

    /// Applies `cmds` on shard 0 (forwarding from other shards) and returns
    /// once every shard has the resulting image.
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
        let Some(table) = &self.table else {
            unreachable!("only shard 0 applies commands");
        };
        let (results, image) = {
            let mut t = table.borrow_mut();
            let results = t.apply(&cmds, dry_run);
            (results, Arc::new(t.image().clone()))
        };
        if !dry_run && results.iter().any(|r| r.is_ok()) {
            self.publish(image).await;
        }
        results
    }

    async fn publish(&self, image: Arc<MetadataImage>) {
        let version = image.version;
        (self.install)(image.clone());
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
