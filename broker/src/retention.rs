//! Retention: moves the log start of partitions past data older than
//! `retention.ms` or beyond `retention.bytes` (topic configs, broker
//! defaults `log_retention_ms` / `log_retention_bytes`), as Kafka deletes
//! whole segments: here the unit is a partition's range in an object.
//! The controller then destroys objects no range references any more.
//!
//! The decision (`retention_start`) is pure and unit-tested. The task runs
//! on every shard, for the partitions that shard leads, every
//! `log_retention_check_interval_ms`, in the uploads' task queue; it only
//! submits metadata commands (no I/O of its own on the data path).

use crate::clock::now_ms;
use std::rc::{Rc, Weak};
use std::time::Duration;

use tracing::{info, warn};

use crate::metadata::objects::PartitionObjects;
use crate::metadata::Command;
use crate::shard::Shard;
use crate::topic_config;

/// The log start retention asks for, if it moves: whole ranges in offset
/// order whose newest record is older than `retention_ms`, then the oldest
/// ranges while what is left (ranges plus `unuploaded_bytes`) still holds
/// at least `retention_bytes`. -1 disables either limit.
pub fn retention_start(
    objects: &PartitionObjects,
    unuploaded_bytes: u64,
    retention_ms: i64,
    retention_bytes: i64,
    now_ms: i64,
) -> Option<i64> {
    let mut size: i64 = objects.bytes() as i64 + unuploaded_bytes as i64;
    let mut start = None;
    for r in objects.iter() {
        let expired = retention_ms >= 0 && r.max_timestamp < now_ms.saturating_sub(retention_ms);
        let too_big = retention_bytes >= 0 && size - r.bytes as i64 >= retention_bytes;
        if !(expired || too_big) {
            break;
        }
        size -= r.bytes as i64;
        start = Some(r.end_offset);
    }
    start.filter(|&s| s > objects.log_start)
}

/// Starts the retention task of `shard`.
pub fn start(shard: &Rc<Shard>) {
    if shard.config.log_retention_check_interval_ms == 0 {
        return;
    }
    let name = format!("retention-{}", shard.id);
    if let Err(e) = crate::background::spawn(&name, 100, run(Rc::downgrade(shard))) {
        warn!(shard = shard.id, "cannot start retention: {e}");
    }
}

async fn run(shard: Weak<Shard>) {
    loop {
        let Some(s) = shard.upgrade() else { return };
        let interval = Duration::from_millis(s.config.log_retention_check_interval_ms);
        drop(s);
        glommio::timer::sleep(interval).await;
        let Some(s) = shard.upgrade() else { return };
        apply(&s).await;
    }
}

/// One pass over the partitions this shard leads.
pub async fn apply(shard: &Rc<Shard>) {
    let image = shard.image();
    let now = now_ms();
    let cmds: Vec<Command> = {
        let parts = shard.partitions.borrow();
        parts
            .values()
            .filter_map(|p| {
                let topic = image.topic_by_id(&p.key.0)?;
                let (ms, bytes) = topic_config::retention(&topic.configs, &shard.config);
                if ms < 0 && bytes < 0 {
                    return None;
                }
                let objects = image.objects.partition(p.key.0, p.key.1)?;
                let offset = retention_start(objects, p.unuploaded_bytes() as u64, ms, bytes, now)?;
                Some(Command::AdvanceLogStart {
                    topic_id: p.key.0,
                    partition: p.key.1,
                    offset,
                })
            })
            .collect()
    };
    if cmds.is_empty() {
        return;
    }
    let n = cmds.len();
    let results = shard.control().submit(cmds, false).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        warn!(
            shard = shard.id,
            failed, "retention: some log starts did not move"
        );
    }
    info!(
        shard = shard.id,
        partitions = n - failed,
        "retention moved log starts"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::ObjectRange;
    use crate::metadata::objects::{ObjectMeta, ObjectsImage};
    use uuid::Uuid;

    /// Ranges of 100 offsets and 1000 bytes, the i-th with newest timestamp
    /// 1000 * (i + 1).
    fn objects(n: i64) -> PartitionObjects {
        let mut img = ObjectsImage::default();
        for i in 0..n {
            img.apply_committed(ObjectMeta {
                id: i as u64,
                node_id: 0,
                size: 2000,
                ranges: vec![ObjectRange {
                    topic_id: Uuid::nil(),
                    partition: 0,
                    start_offset: i * 100,
                    end_offset: i * 100 + 100,
                    max_timestamp: 1000 * (i + 1),
                    bytes: 1000,
                }],
            });
        }
        img.partition(Uuid::nil(), 0).cloned().unwrap()
    }

    #[test]
    fn by_time_drops_whole_expired_ranges() {
        let o = objects(5);
        // now 5500, keep 2000 ms: ranges newest <= 3500 go (i = 0, 1, 2).
        assert_eq!(retention_start(&o, 0, 2000, -1, 5500), Some(300));
        assert_eq!(retention_start(&o, 0, 10_000, -1, 5500), None);
        assert_eq!(retention_start(&o, 0, -1, -1, 5500), None);
        // Everything expired: the log start moves to the end of the objects.
        assert_eq!(retention_start(&o, 0, 0, -1, 1_000_000), Some(500));
    }

    #[test]
    fn by_size_keeps_at_least_the_limit() {
        let o = objects(5); // 5000 bytes in objects
        assert_eq!(retention_start(&o, 0, -1, 2500, 0), Some(200), "3000 left");
        assert_eq!(retention_start(&o, 0, -1, 3000, 0), Some(200));
        assert_eq!(retention_start(&o, 0, -1, 3001, 0), Some(100));
        // Data not yet uploaded counts towards the size, but stays.
        assert_eq!(retention_start(&o, 4000, -1, 3000, 0), Some(500));
        assert_eq!(retention_start(&o, 0, -1, 10_000, 0), None);
    }

    #[test]
    fn nothing_moves_backwards() {
        let mut img = ObjectsImage::default();
        img.apply_committed(ObjectMeta {
            id: 0,
            node_id: 0,
            size: 10,
            ranges: vec![ObjectRange {
                topic_id: Uuid::nil(),
                partition: 0,
                start_offset: 0,
                end_offset: 100,
                max_timestamp: 10,
                bytes: 10,
            }],
        });
        img.apply_log_start(Uuid::nil(), 0, 150); // DeleteRecords went further
        let o = img.partition(Uuid::nil(), 0).unwrap();
        assert_eq!(retention_start(o, 0, 0, -1, 1000), None);
    }
}
