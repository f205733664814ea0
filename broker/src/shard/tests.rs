//! Shard tests on a real controller (one-voter Raft in a temp directory),
//! the real channel mesh, an in-memory WAL device and the in-memory object
//! store with fault injection. The same paths run against the local
//! directory and S3 in `scripts/compat`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use kafka_protocol::ResponseError;
use storage::batch::{parse_header, validate_batches, BatchBytes, ValidatedBatch};
use storage::object::mem::MemStore;
use storage::object::reader::{ObjectReader, ReaderConfig};
use storage::wal::{MemDevice, WalLayout, WalSlice, WalTuning};

use super::*;
use crate::control::{Control, MeshMsg};
use crate::controller::{self, ControllerHandle};
use crate::metadata::{Command, MetadataImage, Placement, TopicTable};
use crate::producer_state::Origin;

/// One uncompressed v2 batch with `n` records of `value` (built by
/// kafka-protocol).
fn batch_of(n: usize, value: &[u8]) -> Vec<ValidatedBatch> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let recs: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1000 + i as i64,
            key: None,
            value: Some(bytes::Bytes::copy_from_slice(value)),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, recs.iter(), &opts).unwrap();
    validate_batches(&buf.freeze(), 64 << 20).unwrap()
}

fn batch(value: &'static [u8]) -> Vec<ValidatedBatch> {
    batch_of(1, value)
}

fn offsets(batches: &[bytes::Bytes]) -> Vec<i64> {
    batches
        .iter()
        .map(|b| parse_header(b).unwrap().base_offset)
        .collect()
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
            let hw = |s: &Shard| s.partitions.borrow()[&key].state.high_watermark;

            let ok = shard.append(key, &batch(b"a"), None).await.unwrap();
            assert_eq!(ok.base_offset, 0);
            assert_eq!(hw(&shard), 1);

            dev.fail_flush(0);
            let failed = shard.append(key, &batch(b"b"), None).await;
            assert_eq!(failed.unwrap_err(), ResponseError::KafkaStorageError);
            // The write may have reached the device although its flush
            // failed; recovery may then bring it back (the client saw an
            // error and retries: a duplicate, never a loss).
            assert!((1..=2).contains(&hw(&shard)));

            let mut waited = 0;
            while shard.storage_failed.get() && waited < 100 {
                glommio::timer::sleep(Duration::from_millis(10)).await;
                waited += 1;
            }
            assert!(!shard.storage_failed.get(), "recovery must finish");

            // After recovery the log holds exactly what was durable, and
            // new writes continue after it.
            let again = shard.append(key, &batch(b"d"), None).await.unwrap();
            assert_eq!(hw(&shard), again.base_offset + 1);
            let read = shard.read(key, 0, 1 << 20, true).await.unwrap();
            let expected: Vec<i64> = (0..=again.base_offset).collect();
            assert_eq!(
                offsets(&read.batches),
                expected,
                "the log stays contiguous across the failure"
            );
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A batch larger than one WAL record is the request's fault: refused with
/// MESSAGE_TOO_LARGE before offsets are assigned, on every path to the WAL
/// (here the one behind admission), without a WAL recovery, and the
/// partition goes on with the next offset.
#[test]
fn oversized_batch_is_refused_without_a_wal_recovery() {
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
            shard.attach_wal(wal.clone(), recovered);
            let generation = wal.generation();
            assert_eq!(
                shard
                    .append(key, &batch(b"a"), None)
                    .await
                    .unwrap()
                    .base_offset,
                0
            );

            let cap = shard.max_batch_bytes();
            assert!(cap < wal.max_body_len() && cap > (1 << 20), "cap {cap}");
            let big = batch_of(1, &vec![7u8; cap + 1000]);
            assert!(big[0].bytes.len() > cap);
            // Through admission.
            let refused = shard.append(key, &big, None).await;
            assert_eq!(refused.unwrap_err(), ResponseError::MessageTooLarge);
            // Straight to the WAL (a path that skipped admission's check).
            let refused = shard
                .start_append(&wal, key, big, None, Origin::Client)
                .await;
            assert_eq!(refused.unwrap_err(), ResponseError::MessageTooLarge);

            assert!(
                !shard.storage_failed.get(),
                "no WAL recovery for a request error"
            );
            assert_eq!(wal.generation(), generation, "the slice was not re-opened");
            let next = shard.append(key, &batch(b"b"), None).await.unwrap();
            assert_eq!(
                next.base_offset, 1,
                "no offsets were spent on the refused batch"
            );
            let read = shard.read(key, 0, 1 << 20, true).await.unwrap();
            assert_eq!(offsets(&read.batches), vec![0, 1]);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A one-shard broker in a test: controller, mesh, WAL on a memory device,
/// objects in memory.
struct Harness {
    shard: Rc<Shard>,
    dev: MemDevice,
    layout: WalLayout,
    key: PartitionKey,
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "broker-shard-{tag}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(dir: &std::path::Path) -> Config {
    Config {
        shards: 1,
        data_dir: dir.to_path_buf(),
        log_cache_bytes: Some(8 << 20),
        upload_bytes: Some(1 << 20),
        upload_interval_ms: Some(200),
        wal_full_wait_ms: 300,
        ..Config::default()
    }
}

/// Starts the shard on an existing controller and WAL device (a restart
/// when the device already holds data).
async fn start_shard(
    cfg: Arc<Config>,
    controller: ControllerHandle,
    image: Arc<MetadataImage>,
    dev: MemDevice,
    layout: WalLayout,
    store: MemStore,
) -> Harness {
    let shard = Shard::new(0, cfg);
    shard.install_image(image);
    let mesh = MeshBuilder::<MeshMsg, _>::full(1, 64);
    let (senders, receivers) = mesh.join().await.unwrap();
    shard.set_control(Control::start(
        0,
        1,
        senders,
        receivers,
        shard.hooks(),
        Some(controller),
    ));
    let reader = ObjectReader::new(Rc::new(store.clone()), ReaderConfig::default(), None);
    shard.set_store(Rc::new(store.clone()), reader);
    let (wal, recovered) =
        WalSlice::open_device(Rc::new(dev.clone()), &layout, 0, WalTuning::default())
            .await
            .unwrap();
    shard.attach_wal(wal, recovered);
    let key = shard
        .image()
        .topic("t")
        .map(|t| (t.id, 0))
        .unwrap_or_default();
    Harness {
        shard,
        dev,
        layout,
        key,
    }
}

/// Creates topic `t` through the shard's control plane.
async fn create_topic(h: &mut Harness) {
    let results = h
        .shard
        .control()
        .submit(
            vec![Command::CreateTopic {
                name: "t".into(),
                partitions: 1,
                configs: BTreeMap::new(),
                assignment: None,
            }],
            false,
        )
        .await;
    assert!(results[0].is_ok(), "{results:?}");
    h.key = (h.shard.image().topic("t").unwrap().id, 0);
}

fn run_with_controller<F, Fut>(tag: &str, wal_bytes: u64, f: F)
where
    F: FnOnce(Arc<Config>, ControllerHandle, Arc<MetadataImage>, MemDevice, WalLayout) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let dir = temp_dir(tag);
    let cfg = Arc::new(config(&dir));
    let started = controller::start(&cfg).unwrap();
    let layout = WalLayout::plan("mem".into(), false, wal_bytes, 512, 1, 0, 7).unwrap();
    let (handle, image) = (started.handle, started.image);
    glommio::LocalExecutorBuilder::default()
        .spawn(move || {
            let dev = MemDevice::formatted(&layout);
            f(cfg, handle, image, dev, layout)
        })
        .unwrap()
        .join()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn uploads_then_trims_and_a_restart_reads_from_objects() {
    run_with_controller(
        "upload",
        8 << 20,
        |cfg, ctl, image, dev, layout| async move {
            let store = MemStore::new();
            let mut h = start_shard(
                cfg.clone(),
                ctl.clone(),
                image,
                dev.clone(),
                layout.clone(),
                store.clone(),
            )
            .await;
            create_topic(&mut h).await;
            let value = vec![7u8; 10_000];
            for _ in 0..300 {
                h.shard
                    .append(h.key, &batch_of(5, &value), None)
                    .await
                    .unwrap();
            }
            let wal = h.shard.wal().unwrap();
            assert!(
                wal.trim_offset() > 0,
                "size-triggered uploads trimmed the WAL"
            );
            h.shard.uploader.flush().await;
            let image = h.shard.image();
            let objs = image.objects.partition(h.key.0, h.key.1).unwrap();
            assert_eq!((objs.start(), objs.end()), (Some(0), Some(1500)));
            assert_eq!(store.keys().len(), image.objects.objects.len());
            assert!(store.keys().len() >= 2, "{:?}", store.keys());
            assert_eq!(
                wal.trim_offset(),
                h.shard.committed_wal_end(),
                "all trimmed"
            );
            let usage = h.shard.usage();
            assert_eq!(usage.unuploaded, 0);
            assert!(usage.cached <= h.shard.log_cache_budget());
            // The log cache evicted the oldest data: offset 0 is a cold read.
            let first = h.shard.partitions.borrow()[&h.key].cache.first_offset();
            assert!(first.unwrap_or(1500) > 0, "{first:?}");
            let read = h.shard.read(h.key, 3, 200_000, true).await.unwrap();
            // (kafka-protocol's encoder writes one batch per record here.)
            let offs = offsets(&read.batches);
            assert_eq!(offs[0], 3, "the batch holding offset 3");
            assert!(offs.windows(2).all(|w| w[1] == w[0] + 1), "{offs:?}");
            assert!(store.stats().gets > 0);

            // Restart: a new shard on the same controller, WAL device and store.
            let image = h.shard.image();
            drop(h);
            let h = start_shard(cfg, ctl, image, dev, layout, store.clone()).await;
            let state = h.shard.partitions.borrow()[&h.key].state;
            assert_eq!(
                (state.log_start, state.log_end, state.high_watermark),
                (0, 1500, 1500)
            );
            let mut at = 0;
            while at < 1500 {
                let read = h.shard.read(h.key, at, 1 << 20, true).await.unwrap();
                let offs = offsets(&read.batches);
                assert_eq!(offs[0], at, "contiguous from objects");
                at = parse_header(read.batches.last().unwrap())
                    .unwrap()
                    .last_offset()
                    + 1;
            }
            // New appends continue after the uploaded data.
            let next = h.shard.append(h.key, &batch(b"z"), None).await.unwrap();
            assert_eq!(next.base_offset, 1500);
        },
    );
}

#[test]
fn store_outage_fills_then_refuses_retriably_and_recovers() {
    run_with_controller(
        "outage",
        8 << 20,
        |cfg, ctl, image, dev, layout| async move {
            let store = MemStore::new();
            let mut h = start_shard(cfg, ctl, image, dev, layout, store.clone()).await;
            create_topic(&mut h).await;
            store.set_down(true);
            let value = vec![1u8; 50_000];
            let mut acked = 0usize;
            let mut refused = 0usize;
            for _ in 0..400 {
                match h.shard.append(h.key, &batch_of(2, &value), None).await {
                    Ok(o) => {
                        assert_eq!(o.base_offset, acked as i64 * 2);
                        acked += 1;
                    }
                    Err(e) => {
                        assert_eq!(e, ResponseError::KafkaStorageError);
                        refused += 1;
                        if refused == 2 {
                            break;
                        }
                    }
                }
            }
            assert!(
                refused > 0,
                "the store is down: the WAL or the cache must fill"
            );
            assert!(acked > 10, "{acked}");
            // The store comes back: everything resumes by itself.
            // (A client retries the refused appends meanwhile.)
            store.set_down(false);
            let mut more = Err(ResponseError::KafkaStorageError);
            for _ in 0..50 {
                more = h.shard.append(h.key, &batch_of(2, &value), None).await;
                if more.is_ok() {
                    break;
                }
            }
            assert_eq!(more.unwrap().base_offset, acked as i64 * 2);
            h.shard.uploader.flush().await;
            let image = h.shard.image();
            let end = image.objects.partition(h.key.0, h.key.1).unwrap().end();
            assert_eq!(
                end,
                Some(acked as i64 * 2 + 2),
                "every acknowledged batch is in objects"
            );
            assert!(h.shard.uploader.stats().failures > 0);
        },
    );
}

#[test]
fn records_already_in_objects_are_skipped_on_replay() {
    run_with_controller("skip", 8 << 20, |cfg, ctl, image, dev, layout| async move {
        let cfg = Arc::new(Config {
            uploads_enabled: false,
            ..(*cfg).clone()
        });
        let store = MemStore::new();
        let mut h = start_shard(
            cfg.clone(),
            ctl.clone(),
            image,
            dev.clone(),
            layout.clone(),
            store.clone(),
        )
        .await;
        create_topic(&mut h).await;
        for i in 0..10u8 {
            h.shard
                .append(h.key, &batch_of(3, &[i; 100]), None)
                .await
                .unwrap();
        }
        // Upload and commit, but crash before the trim: the WAL image taken
        // before the flush still holds every record.
        let before_trim = MemDevice::from_image(h.dev.image(), 512);
        h.shard.uploader.flush().await;
        assert_eq!(
            h.shard.image().objects.partition(h.key.0, 0).unwrap().end(),
            Some(30)
        );
        let image = h.shard.image();
        drop(h);
        let h = start_shard(cfg, ctl, image, before_trim, layout, store).await;
        let p = &h.shard.partitions.borrow()[&h.key];
        assert_eq!((p.state.log_end, p.state.uploaded_end), (30, 30));
        assert!(
            p.cache.is_empty(),
            "uploaded records are not replayed into the cache"
        );
        drop(h.layout);
    });
}

/// One batch of `n` records from idempotent producer `pid` (epoch 0),
/// starting at sequence `seq`.
fn idempotent(pid: i64, seq: i32, n: usize) -> Vec<ValidatedBatch> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let recs: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: seq + i as i32,
            timestamp: crate::group::now_ms(),
            key: None,
            value: Some(bytes::Bytes::from(format!("{pid}-{}", seq + i as i32))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, recs.iter(), &opts).unwrap();
    let batches = validate_batches(&buf.freeze(), 64 << 20).unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(
        (
            batches[0].header.producer_id,
            batches[0].header.base_sequence
        ),
        (pid, seq)
    );
    batches
}

/// Produces as a client does (sequence checks, and batches that own their
/// bytes, as the produce handler's are: stamped in place); the base offset.
async fn produce(h: &Harness, batches: Vec<ValidatedBatch>) -> Result<i64, ResponseError> {
    let owned = batches
        .into_iter()
        .map(|b| ValidatedBatch {
            header: b.header,
            bytes: BatchBytes::Owned(bytes::BytesMut::from(&b.bytes[..])),
        })
        .collect();
    let durable =
        match h
            .shard
            .try_append(h.key, owned, None, crate::producer_state::Origin::Client)
        {
            Ok(f) | Err(f) => f,
        };
    durable.await.map(|o| o.base_offset)
}

#[test]
fn idempotent_retries_are_answered_once_across_upload_and_restart() {
    run_with_controller("idem", 8 << 20, |cfg, ctl, image, dev, layout| async move {
        let store = MemStore::new();
        let mut h = start_shard(
            cfg.clone(),
            ctl.clone(),
            image,
            dev.clone(),
            layout.clone(),
            store.clone(),
        )
        .await;
        create_topic(&mut h).await;
        let pid = 4242;
        assert_eq!(produce(&h, idempotent(pid, 0, 3)).await, Ok(0));
        assert_eq!(produce(&h, idempotent(pid, 3, 2)).await, Ok(3));
        // A retry is answered with its first offsets and not written.
        assert_eq!(produce(&h, idempotent(pid, 0, 3)).await, Ok(0));
        assert_eq!(
            produce(&h, idempotent(pid, 9, 1)).await,
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(h.shard.partitions.borrow()[&h.key].state.high_watermark, 5);
        // Upload: the image now holds the producer's state at offset 5.
        h.shard.uploader.flush().await;
        let image = h.shard.image();
        let snap = image.producers.partition(h.key.0, h.key.1).unwrap();
        assert_eq!(snap.producers[&pid].batches.last().unwrap().last_seq, 4);
        // One more only in the WAL tail.
        let cfg = Arc::new(Config {
            uploads_enabled: false,
            ..(*cfg).clone()
        });
        assert_eq!(produce(&h, idempotent(pid, 5, 1)).await, Ok(5));
        let image = h.shard.image();
        drop(h);
        let h = start_shard(cfg, ctl, image, dev, layout, store).await;
        // Retries of batches from before (image) and after (WAL tail) the
        // upload are still recognised; the sequence goes on.
        assert_eq!(produce(&h, idempotent(pid, 3, 2)).await, Ok(3));
        assert_eq!(produce(&h, idempotent(pid, 5, 1)).await, Ok(5));
        assert_eq!(
            produce(&h, idempotent(pid, 7, 1)).await,
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(produce(&h, idempotent(pid, 6, 1)).await, Ok(6));
        let mut at = 0;
        let mut seen = Vec::new();
        while at < 7 {
            let read = h.shard.read(h.key, at, 1 << 20, true).await.unwrap();
            for b in &read.batches {
                let hd = parse_header(b).unwrap();
                seen.push((hd.base_offset, hd.base_sequence));
                at = hd.last_offset() + 1;
            }
        }
        assert_eq!(
            seen,
            vec![(0, 0), (3, 3), (5, 5), (6, 6)],
            "each batch once"
        );
    });
}
