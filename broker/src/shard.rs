//! A shard: one pinned core's share of the broker. Owns its listener, the
//! partitions it leads (their logs) and its copy of the metadata image, and
//! serves every request that arrives on its port.
//!
//! Runs entirely on its own glommio executor. Never touches another shard's
//! partitions; talks to other shards only through `Control` (metadata).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use event_listener::Event;
use glommio::net::TcpListener;
use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::ResponseError;
use net::connection::LocalBoxFuture;
use net::{Request, Service};
use storage::batch::ValidatedBatch;
use storage::partition_log::PartitionLog;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::Config;
use crate::control::Control;
use crate::group::GroupCoordinator;
use crate::handlers;
use crate::metadata::MetadataImage;

/// Where a durable append landed.
#[derive(Debug, Clone, Copy)]
pub struct AppendOutcome {
    pub base_offset: i64,
    pub log_start_offset: i64,
}

/// A partition this shard leads.
#[derive(Debug, Default)]
pub struct Partition {
    pub log: PartitionLog,
}

/// Partitions are keyed by topic id, so a topic deleted and created again
/// under the same name never sees the old data.
pub type PartitionKey = (Uuid, i32);

pub struct Shard {
    pub id: usize,
    pub config: Arc<Config>,
    image: RefCell<Arc<MetadataImage>>,
    pub partitions: RefCell<HashMap<PartitionKey, Partition>>,
    /// Notified after every append, to wake long-polling fetches.
    pub appended: Event,
    control: RefCell<Option<Rc<Control>>>,
    /// The consumer groups whose `__consumer_offsets` partition this shard leads.
    pub groups: GroupCoordinator,
}

impl Shard {
    pub fn new(id: usize, config: Arc<Config>) -> Rc<Shard> {
        Rc::new_cyclic(|me| Shard {
            id,
            groups: GroupCoordinator::new(me.clone(), &config),
            config,
            image: RefCell::new(Arc::new(MetadataImage::default())),
            partitions: RefCell::new(HashMap::new()),
            appended: Event::new(),
            control: RefCell::new(None),
        })
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

    /// The current metadata image (cheap clone; never borrow across await).
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id(self.id)
    }

    /// Installs a newer image: opens partitions this shard now leads and
    /// drops those of deleted topics.
    pub fn install_image(&self, image: Arc<MetadataImage>) {
        if image.version <= self.image.borrow().version && image.version != 0 {
            return;
        }
        let mut parts = self.partitions.borrow_mut();
        parts.retain(|(id, p), _| {
            image
                .topic_by_id(id)
                .is_some_and(|t| t.leaders.get(*p as usize) == Some(&self.id))
        });
        for topic in image.topics.values() {
            for (p, &leader) in topic.leaders.iter().enumerate() {
                if leader == self.id {
                    parts.entry((topic.id, p as i32)).or_default();
                }
            }
        }
        drop(parts);
        *self.image.borrow_mut() = image.clone();
        self.groups.on_image(&image, self.id);
        // Fetches waiting on a deleted partition must notice.
        self.appended.notify(usize::MAX);
    }

    /// Appends validated batches to a partition this shard leads. Offsets are
    /// assigned before this returns, so appends keep call order; the future
    /// resolves once the batches are durable, after which they are visible
    /// to readers (high watermark) and long-polling fetches are woken.
    pub fn append(
        self: &Rc<Self>,
        key: PartitionKey,
        batches: &[ValidatedBatch],
        log_append_time: Option<i64>,
    ) -> Result<impl Future<Output = Result<AppendOutcome, ResponseError>> + 'static, ResponseError>
    {
        let mut parts = self.partitions.borrow_mut();
        let part = parts
            .get_mut(&key)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        let mut base_offset = None;
        let mut last_offset = part.log.log_end_offset() - 1;
        for b in batches {
            let appended = part.log.append(b, &[], log_append_time);
            base_offset.get_or_insert(appended.base_offset);
            last_offset = appended.last_offset;
        }
        drop(parts);
        let shard = self.clone();
        Ok(async move {
            // Durability point: the WAL append is awaited here before commit.
            let mut parts = shard.partitions.borrow_mut();
            let part = parts
                .get_mut(&key)
                .ok_or(ResponseError::UnknownTopicOrPartition)?;
            part.log.commit(last_offset + 1);
            let log_start_offset = part.log.log_start_offset();
            drop(parts);
            shard.appended.notify(usize::MAX);
            Ok(AppendOutcome {
                base_offset: base_offset.unwrap_or(last_offset + 1),
                log_start_offset,
            })
        })
    }

    /// Accepts connections on this shard's port until the process ends.
    pub async fn listen(self: Rc<Self>) -> std::io::Result<()> {
        let addr = format!("{}:{}", self.config.listen_host, self.config.port(self.id));
        let listener = TcpListener::bind(&addr)?;
        info!(
            "shard {} listening on {addr} as node {}",
            self.id,
            self.node_id()
        );
        loop {
            let stream = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(shard = self.id, "accept failed: {e}");
                    glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let shard = self.clone();
            let max = self.config.max_frame_bytes;
            glommio::spawn_local(net::serve_connection(stream, shard, max, peer)).detach();
        }
    }

    async fn dispatch(self: Rc<Self>, req: Request) -> Option<ResponseKind> {
        let v = req.version;
        let client = handlers::groups::Client::of(&req);
        let resp = match req.body {
            RequestKind::ApiVersions(_) => {
                ResponseKind::ApiVersions(net::versions::api_versions_response(0))
            }
            RequestKind::Produce(r) => return handlers::produce::handle(&self, r, v).await,
            RequestKind::Fetch(r) => {
                ResponseKind::Fetch(handlers::fetch::handle(&self, r, v).await)
            }
            RequestKind::ListOffsets(r) => {
                ResponseKind::ListOffsets(handlers::list_offsets::handle(&self, r, v))
            }
            RequestKind::Metadata(r) => {
                ResponseKind::Metadata(handlers::metadata::handle(&self, r, v).await)
            }
            RequestKind::DescribeCluster(r) => {
                ResponseKind::DescribeCluster(handlers::metadata::describe_cluster(&self, r))
            }
            RequestKind::CreateTopics(r) => {
                ResponseKind::CreateTopics(handlers::topics::create_topics(&self, r, v).await)
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
                ResponseKind::JoinGroup(handlers::groups::join_group(&self, r, v, client).await)
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
            other => {
                // The codec only lets through APIs listed in net::versions.
                warn!("no handler for {other:?}");
                return None;
            }
        };
        Some(resp)
    }
}

impl Service for Shard {
    fn call(self: Rc<Self>, request: Request) -> LocalBoxFuture<Option<ResponseKind>> {
        Box::pin(self.dispatch(request))
    }
}
