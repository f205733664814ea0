//! Garbage collection of orphaned objects: objects whose id was reserved
//! from the controller but never committed (a crash between upload and
//! commit, or a commit the controller refused). They are deleted once older
//! than `object_orphan_grace_ms`.
//!
//! It also deletes destroyed objects (no range references them any more:
//! retention, DeleteRecords, deleted topics, compaction) once they were
//! destroyed `object_delete_delay_ms` ago, and then purges them from the
//! metadata.
//!
//! The decisions (`orphans`, `due_for_deletion`) are pure and unit-tested. The task runs on shard
//! 0 only, in the uploads' task queue. It deletes destroyed objects every
//! quarter of `object_delete_delay_ms` (from the metadata alone) and lists
//! the store for orphans every `object_gc_interval_ms`. It never deletes an object the metadata commits,
//! one whose id was never reserved (not ours), or one whose id is in a
//! node's current reservation block (an upload may be about to commit it).

use crate::clock::now_ms;
use std::rc::{Rc, Weak};
use std::time::Duration;

use storage::object::keys::{object_key, parse_object_key};
use storage::object::ObjectInfo;
use tracing::{info, warn};

use crate::metadata::objects::ObjectsImage;
use crate::metadata::Command;
use crate::shard::Shard;

/// Keys deleted per request.
const DELETE_BATCH: usize = 1000;

/// The keys of `listing` that are orphans at `now_ms`.
pub fn orphans(
    objects: &ObjectsImage,
    prefix: &str,
    listing: &[ObjectInfo],
    now_ms: i64,
    grace_ms: i64,
) -> Vec<String> {
    let in_current_block = |id: u64| {
        objects
            .reservations
            .values()
            .any(|&(first, count)| (first..first + count).contains(&id))
    };
    listing
        .iter()
        .filter(|o| {
            let Some(id) = parse_object_key(prefix, &o.key) else {
                return false;
            };
            let old = o
                .last_modified_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= grace_ms);
            id < objects.next_object_id
                && !objects.objects.contains_key(&id)
                && !objects.destroyed.contains_key(&id)
                && !in_current_block(id)
                && old
        })
        .map(|o| o.key.clone())
        .collect()
}

/// Destroyed objects whose delay has passed at `now_ms`.
pub fn due_for_deletion(objects: &ObjectsImage, now_ms: i64, delay_ms: i64) -> Vec<u64> {
    objects
        .destroyed
        .iter()
        .filter(|(_, &at)| now_ms.saturating_sub(at) >= delay_ms)
        .map(|(&id, _)| id)
        .collect()
}

/// Starts the collector on shard 0.
pub fn start(shard: &Rc<Shard>) {
    if shard.id != 0 || shard.config.object_gc_interval_ms == 0 {
        return;
    }
    if let Err(e) = crate::background::spawn("object-gc", 100, run(Rc::downgrade(shard))) {
        warn!("cannot start the object garbage collector: {e}");
    }
}

/// How often destroyed objects are looked for: a quarter of their delay
/// (no listing needed, the metadata names them), at most the orphan
/// interval, at least 100 ms.
fn destroyed_interval_ms(delete_delay_ms: u64, gc_interval_ms: u64) -> u64 {
    (delete_delay_ms / 4).max(100).min(gc_interval_ms)
}

async fn run(shard: Weak<Shard>) {
    let mut since_orphans = 0u64;
    loop {
        let Some(s) = shard.upgrade() else { return };
        let gc_every = s.config.object_gc_interval_ms;
        let tick = destroyed_interval_ms(s.config.object_delete_delay_ms, gc_every);
        drop(s);
        glommio::timer::sleep(Duration::from_millis(tick)).await;
        let Some(s) = shard.upgrade() else { return };
        if let Err(e) = delete_destroyed(&s).await {
            warn!("object garbage collection failed: {e}");
        }
        since_orphans += tick;
        if since_orphans >= gc_every {
            since_orphans = 0;
            if let Err(e) = delete_orphans(&s).await {
                warn!("object garbage collection failed: {e}");
            }
        }
    }
}

/// Deletes destroyed objects past their delay and purges them from the
/// metadata.
async fn delete_destroyed(shard: &Rc<Shard>) -> Result<usize, String> {
    let store = shard.store().ok_or("no object store")?;
    let image = shard.image();
    let delay = shard.config.object_delete_delay_ms as i64;
    let ids = due_for_deletion(&image.objects, now_ms(), delay);
    if ids.is_empty() {
        return Ok(0);
    }
    let prefix = shard.config.object_key_prefix();
    for chunk in ids.chunks(DELETE_BATCH) {
        let keys: Vec<String> = chunk.iter().map(|&id| object_key(&prefix, id)).collect();
        store
            .delete_many(&keys)
            .await
            .map_err(|e| format!("deleting destroyed objects: {e}"))?;
    }
    let results = shard
        .control()
        .submit(vec![Command::PurgeObjects { ids: ids.clone() }], false)
        .await;
    if let Some(Err(e)) = results.into_iter().next() {
        return Err(format!(
            "purging deleted objects from the metadata: {}",
            e.message
        ));
    }
    info!(
        deleted = ids.len(),
        "deleted objects no partition references any more"
    );
    Ok(ids.len())
}

/// Deletes orphans.
async fn delete_orphans(shard: &Rc<Shard>) -> Result<usize, String> {
    let store = shard.store().ok_or("no object store")?;
    let prefix = shard.config.object_key_prefix();
    let listing = store
        .list(&prefix)
        .await
        .map_err(|e| format!("listing {}: {e}", store.describe()))?;
    // The image is read after the listing: an object committed meanwhile
    // is in it, so it cannot be mistaken for an orphan.
    let image = shard.image();
    let grace = shard.config.object_orphan_grace_ms as i64;
    let doomed = orphans(&image.objects, &prefix, &listing, now_ms(), grace);
    for chunk in doomed.chunks(DELETE_BATCH) {
        store
            .delete_many(chunk)
            .await
            .map_err(|e| format!("deleting orphans: {e}"))?;
    }
    if !doomed.is_empty() {
        info!(
            deleted = doomed.len(),
            listed = listing.len(),
            "deleted orphaned objects (reserved, never committed)"
        );
    }
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destroyed_objects_are_looked_for_often() {
        assert_eq!(destroyed_interval_ms(60_000, 300_000), 15_000);
        assert_eq!(destroyed_interval_ms(500, 300), 125);
        assert_eq!(destroyed_interval_ms(0, 300), 100);
        assert_eq!(destroyed_interval_ms(60_000, 1_000), 1_000);
    }
    use crate::metadata::objects::ObjectMeta;

    fn info(id: u64, age_ms: i64) -> ObjectInfo {
        ObjectInfo {
            key: object_key("", id),
            size: 10,
            last_modified_ms: Some(1_000_000 - age_ms),
        }
    }

    #[test]
    fn only_old_reserved_uncommitted_objects_outside_a_live_block_go() {
        let mut img = ObjectsImage::default();
        img.apply_reserved(0, 0, 16); // node 0's first block (used up)
        img.apply_reserved(1, 16, 16);
        img.apply_reserved(0, 32, 16); // node 0's current block
        img.apply_committed(ObjectMeta {
            id: 3,
            node_id: 0,
            size: 10,
            ranges: vec![],
        });
        let listing = vec![
            info(3, 10_000),  // committed
            info(5, 10_000),  // orphan
            info(6, 10),      // orphan, but too young
            info(20, 10_000), // in node 1's current block
            info(33, 10_000), // in node 0's current block
            info(90, 10_000), // never reserved: not ours
            ObjectInfo {
                key: "notes.txt".into(),
                size: 1,
                last_modified_ms: Some(0),
            },
        ];
        let gone = orphans(&img, "", &listing, 1_000_000, 1000);
        assert_eq!(gone, vec![object_key("", 5)]);
        assert!(orphans(&img, "x/", &listing, 1_000_000, 1000).is_empty());
        // A destroyed object waits for its own delay, not the orphan grace.
        img.apply_destroyed(&[3], 999_500);
        assert_eq!(
            orphans(&img, "", &listing, 1_000_000, 1000),
            vec![object_key("", 5)]
        );
        assert!(due_for_deletion(&img, 1_000_000, 1000).is_empty());
        assert_eq!(due_for_deletion(&img, 1_000_600, 1000), vec![3]);
    }
}
