//! A shard: one pinned core's share of the broker. Owns its listener, the
//! partitions it leads (their logs) and its copy of the metadata image, and
//! serves every request that arrives on its port.
//!
//! Runs entirely on its own glommio executor. Never touches another shard's
//! partitions; talks to other shards only through `Control` (metadata).

use std::cell::{Cell, RefCell};
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
use storage::wal::{RecoveredRecord, WalError, WalLayout, WalSlice};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::config::Config;
use crate::control::Control;
use crate::group::GroupCoordinator;
use crate::handlers;
use crate::metadata::MetadataImage;
use crate::wal_record::{self, WalEntry};

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

/// Logs how full the WAL slice is: the ring is only trimmed once data is in
/// object storage, so until then its size bounds what the shard holds.
async fn watch_wal_fill(shard: std::rc::Weak<Shard>) {
    let mut warned = false;
    loop {
        glommio::timer::sleep(std::time::Duration::from_secs(10)).await;
        let Some(shard) = shard.upgrade() else { return };
        let Some(wal) = shard.wal.borrow().clone() else {
            return;
        };
        let fill = wal.fill_ratio();
        debug!(shard = shard.id, fill, "WAL fill");
        if fill > 0.9 && !warned {
            warn!(shard = shard.id, fill, "WAL slice is over 90% full; once full, produce answers KAFKA_STORAGE_ERROR (no trim before object storage lands)");
        }
        warned = fill > 0.9;
    }
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
            wal: RefCell::new(None),
            storage_failed: Cell::new(false),
            wal_full_warned: Cell::new(None),
            wal_epoch: Cell::new(0),
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
        if self.storage_failed.get() {
            return Err(ResponseError::KafkaStorageError);
        }
        let wal = self
            .wal
            .borrow()
            .clone()
            .ok_or(ResponseError::KafkaStorageError)?;
        let mut parts = self.partitions.borrow_mut();
        let part = parts
            .get_mut(&key)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        // Refused before offsets are assigned: an append queued behind a
        // full WAL would wait until a trim, which nothing does before object
        // storage lands, so clients would only see timeouts.
        let body_bytes = batches
            .iter()
            .map(|b| (wal_record::PREFIX_LEN + b.bytes.len()) as u64)
            .sum();
        if !wal.has_room_for(batches.len(), body_bytes) {
            self.warn_wal_full(&wal);
            return Err(ResponseError::KafkaStorageError);
        }
        let prefix = wal_record::batch_prefix(key.0, key.1);
        let mut base_offset = None;
        let mut last_offset = part.log.log_end_offset() - 1;
        let mut durable = Vec::with_capacity(batches.len());
        for b in batches {
            let appended = part.log.append(b, &prefix, log_append_time);
            base_offset.get_or_insert(appended.base_offset);
            last_offset = appended.last_offset;
            durable.push(wal.append(appended.framed));
        }
        drop(parts);
        let shard = self.clone();
        let epoch = self.wal_epoch.get();
        Ok(async move {
            for d in durable {
                if let Err(e) = d.await {
                    shard.on_wal_failure(epoch, &e);
                    return Err(ResponseError::KafkaStorageError);
                }
            }
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

    /// Logs a refused append because the WAL slice is full, at most once
    /// every 10 s.
    fn warn_wal_full(&self, wal: &WalSlice) {
        let now = std::time::Instant::now();
        let last = self.wal_full_warned.get();
        if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(10)) {
            return;
        }
        self.wal_full_warned.set(Some(now));
        warn!(
            shard = self.id,
            used_bytes = wal.used_bytes(),
            queued_bytes = wal.queued_bytes(),
            capacity = wal.capacity(),
            "WAL slice full: produce answers KAFKA_STORAGE_ERROR (nothing trims the WAL before \
             object storage lands; a larger wal_size_bytes holds more)"
        );
    }

    /// Opens this shard's WAL slice and rebuilds its partition logs from
    /// what it recovers. Runs before the listener starts.
    pub async fn open_wal(self: &Rc<Self>, layout: &WalLayout) -> Result<(), WalError> {
        let (wal, records) = WalSlice::open(layout, self.id as u32).await?;
        self.attach_wal(wal, records);
        Ok(())
    }

    /// Takes a freshly opened slice and what it recovered.
    fn attach_wal(self: &Rc<Self>, wal: WalSlice, records: Vec<RecoveredRecord>) {
        self.rebuild_from(records);
        info!(
            shard = self.id,
            used_bytes = wal.used_bytes(),
            capacity = wal.capacity(),
            "WAL slice recovered"
        );
        *self.wal.borrow_mut() = Some(wal);
        glommio::spawn_local(watch_wal_fill(Rc::downgrade(self))).detach();
    }

    /// Replaces every partition log with what the WAL holds. Records of
    /// partitions this shard does not lead (deleted topics) are skipped.
    fn rebuild_from(&self, records: Vec<RecoveredRecord>) {
        let mut parts = self.partitions.borrow_mut();
        for part in parts.values_mut() {
            part.log = PartitionLog::new();
        }
        let (mut restored, mut skipped) = (0usize, 0usize);
        for r in records {
            match wal_record::decode(&r.body) {
                Ok(WalEntry::Batch {
                    topic,
                    partition,
                    batch,
                }) => match parts.get_mut(&(topic, partition)) {
                    Some(part) => {
                        part.log.restore(batch);
                        restored += 1;
                    }
                    None => skipped += 1,
                },
                Ok(WalEntry::Unknown(kind)) => {
                    debug!(shard = self.id, kind, "skipping WAL record of unknown kind");
                    skipped += 1;
                }
                Err(e) => {
                    // The WAL checked the record's CRC, so this is a bug or
                    // a newer format, not a torn write: keep going.
                    warn!(
                        shard = self.id,
                        offset = r.offset,
                        "unreadable WAL record: {e}"
                    );
                    skipped += 1;
                }
            }
        }
        drop(parts);
        info!(
            shard = self.id,
            restored, skipped, "partition logs rebuilt from the WAL"
        );
        // Group state comes from the (refilled) __consumer_offsets logs.
        self.groups.reload();
        self.appended.notify(usize::MAX);
    }

    /// A WAL write or flush failed: stop acknowledging, then run recovery
    /// again (never retry the failed flush and call it success).
    fn on_wal_failure(self: &Rc<Self>, epoch: u64, err: &WalError) {
        if self.storage_failed.get() || epoch != self.wal_epoch.get() {
            return;
        }
        error!(
            shard = self.id,
            "WAL failed, refusing writes until recovery: {err}"
        );
        self.storage_failed.set(true);
        let shard = self.clone();
        glommio::spawn_local(async move { shard.recover_wal().await }).detach();
    }

    async fn recover_wal(self: Rc<Self>) {
        let Some(wal) = self.wal.borrow().clone() else {
            return;
        };
        loop {
            match wal.reopen().await {
                Ok(records) => {
                    self.rebuild_from(records);
                    self.wal_epoch.set(self.wal_epoch.get() + 1);
                    self.storage_failed.set(false);
                    info!(shard = self.id, "WAL recovered; accepting writes again");
                    return;
                }
                Err(e) => {
                    error!(shard = self.id, "WAL recovery failed, retrying in 1 s: {e}");
                    glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
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
            RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
                handlers::configs::incremental_alter_configs(&self, r).await,
            ),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use storage::batch::validate_batches;
    use storage::wal::{MemDevice, WalTuning};

    use super::*;
    use crate::metadata::{Command, Placement, TopicTable};

    /// One uncompressed v2 batch with one record (built by kafka-protocol).
    fn batch(value: &'static [u8]) -> Vec<ValidatedBatch> {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let rec = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1,
            key: None,
            value: Some(bytes::Bytes::from_static(value)),
            headers: Default::default(),
        };
        let mut buf = bytes::BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, [&rec], &opts).unwrap();
        validate_batches(&buf.freeze(), 1 << 20).unwrap()
    }

    #[test]
    fn flush_error_answers_storage_error_then_recovers() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let cfg = Arc::new(Config {
                    shards: 1,
                    ..Config::default()
                });
                let shard = Shard::new(0, cfg);
                let mut table = TopicTable::new(Placement {
                    broker_id: 0,
                    shards: 1,
                });
                let create = Command::CreateTopic {
                    name: "t".into(),
                    partitions: 1,
                    configs: BTreeMap::new(),
                    assignment: None,
                };
                assert!(table.apply(&[create], false).0[0].is_ok());
                let image = Arc::new(table.image().clone());
                let key = (image.topic("t").unwrap().id, 0);
                shard.install_image(image);

                let layout = WalLayout::plan("mem".into(), false, 4 << 20, 512, 1, 0, 7).unwrap();
                let dev = MemDevice::formatted(&layout);
                let (wal, recovered) =
                    WalSlice::open_device(Rc::new(dev.clone()), &layout, 0, WalTuning::default())
                        .await
                        .unwrap();
                shard.attach_wal(wal, recovered);
                let hw = |s: &Shard| s.partitions.borrow()[&key].log.high_watermark();

                let ok = shard
                    .append(key, &batch(b"a"), None)
                    .unwrap()
                    .await
                    .unwrap();
                assert_eq!(ok.base_offset, 0);
                assert_eq!(hw(&shard), 1);

                dev.fail_flush(0);
                let failed = shard.append(key, &batch(b"b"), None).unwrap().await;
                assert_eq!(failed.unwrap_err(), ResponseError::KafkaStorageError);
                // The write may have reached the device although its flush
                // failed; recovery may then bring it back (the client saw an
                // error and retries: a duplicate, never a loss).
                assert!((1..=2).contains(&hw(&shard)));

                // Until recovery ran again, writes are refused outright.
                let refused = shard.append(key, &batch(b"c"), None).err();
                let mut waited = 0;
                while shard.storage_failed.get() && waited < 100 {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    waited += 1;
                }
                assert!(refused.is_none() || refused == Some(ResponseError::KafkaStorageError));
                assert!(!shard.storage_failed.get(), "recovery must finish");

                // After recovery the log holds exactly what was durable, and
                // new writes continue after it.
                let again = shard
                    .append(key, &batch(b"d"), None)
                    .unwrap()
                    .await
                    .unwrap();
                assert_eq!(hw(&shard), again.base_offset + 1);
                let read = shard.partitions.borrow()[&key]
                    .log
                    .read(0, 1 << 20, true)
                    .unwrap();
                let offsets: Vec<i64> = read
                    .batches
                    .iter()
                    .map(|b| storage::batch::parse_header(b).unwrap().base_offset)
                    .collect();
                let expected: Vec<i64> = (0..=again.base_offset).collect();
                assert_eq!(
                    offsets, expected,
                    "the log stays contiguous across the failure"
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
