//! `broker metadata-shell --data-dir DIR`: prints the metadata snapshot, the
//! Raft log entry by entry, and the image they add up to, without starting
//! shards or Raft and without changing any file (a torn tail is reported,
//! not cut).
//!
//! Runs on the main thread of its own process; reads files only.

use std::fmt::Write as _;
use std::path::Path;

use openraft::EntryPayload;

use super::records::decode_all;
use super::state_machine::{load_latest, StateMachine};
use super::store::{read_json, scan_log, LOG_FILE};
use super::{metadata_dir, ControllerError};
use crate::metadata::MetadataImage;

/// Renders the dump of `data_dir`'s metadata.
pub fn dump(data_dir: &Path) -> Result<String, ControllerError> {
    let (out, _) = dump_with_image(data_dir)?;
    Ok(out)
}

/// The dump and the image it adds up to.
pub fn dump_with_image(data_dir: &Path) -> Result<(String, MetadataImage), ControllerError> {
    let dir = metadata_dir(data_dir);
    let mut out = String::new();
    let mut image = MetadataImage::default();
    let mut from = 0;
    let _ = writeln!(out, "metadata directory: {}", dir.display());
    match load_latest(&dir)? {
        Some((path, snap)) => {
            let _ = writeln!(
                out,
                "== snapshot {} (last applied index {:?}, {} records)",
                path.display(),
                snap.last_applied.map(|l| l.index),
                snap.records.len()
            );
            for r in &snap.records {
                let _ = writeln!(out, "  {r}");
            }
            image = snap.image();
            from = snap.last_applied.map_or(0, |l| l.index.saturating_add(1));
        }
        None => {
            let _ = writeln!(out, "== no snapshot");
        }
    }
    let purged: Option<openraft::LogId<u64>> = read_json(&dir, "purged")?;
    if let Some(p) = purged {
        let _ = writeln!(out, "log purged up to index {}", p.index);
    }
    let scan = scan_log(&dir.join(LOG_FILE))?;
    let _ = writeln!(
        out,
        "== log {} ({} entries, {} bytes)",
        dir.join(LOG_FILE).display(),
        scan.entries.len(),
        scan.file_len
    );
    for (_, e) in &scan.entries {
        let id = e.log_id;
        let skipped = if id.index < from {
            " (in snapshot)"
        } else {
            ""
        };
        let head = format!(
            "#{} term {} leader {}{skipped}",
            id.index, id.leader_id.term, id.leader_id.node_id
        );
        match &e.payload {
            EntryPayload::Blank => {
                let _ = writeln!(out, "{head}: blank (new leader)");
            }
            EntryPayload::Membership(m) => {
                let _ = writeln!(out, "{head}: membership {m}");
            }
            EntryPayload::Normal(b) => match decode_all(&b.0) {
                Ok(recs) => {
                    let _ = writeln!(out, "{head}: {} records", recs.len());
                    for r in recs {
                        let _ = writeln!(out, "  {r}");
                    }
                }
                Err(err) => {
                    let _ = writeln!(out, "{head}: undecodable records: {err}");
                }
            },
        }
        if id.index >= from {
            StateMachine::apply_entry(&mut image, e);
        }
    }
    if scan.valid_len < scan.file_len {
        let _ = writeln!(
            out,
            "!! {} bytes of torn or corrupt tail ({}); the broker cuts them at start",
            scan.file_len - scan.valid_len,
            scan.stopped.as_deref().unwrap_or("unknown")
        );
    }
    render_image(&mut out, &image);
    Ok((out, image))
}

fn render_image(out: &mut String, image: &MetadataImage) {
    let _ = writeln!(out, "== image (version {})", image.version);
    let _ = writeln!(out, "nodes:");
    for (id, n) in &image.nodes {
        let fenced = match (n.fenced, n.shutting_down) {
            (true, _) => " FENCED",
            (false, true) => " SHUTTING-DOWN",
            (false, false) => "",
        };
        let _ = writeln!(
            out,
            "  node {id} epoch {} {}:{}{fenced}",
            n.epoch, n.host, n.port
        );
    }
    let _ = writeln!(out, "next producer id: {}", image.next_producer_id);
    let _ = writeln!(out, "topics: {}", image.topics.len());
    for t in image.topics.values() {
        let _ = writeln!(
            out,
            "  {} id {} partitions {}",
            t.name,
            t.id,
            t.leaders.len()
        );
        for (p, node) in t.leader_nodes.iter().enumerate() {
            let _ = writeln!(
                out,
                "    p{p} leader node {node} epoch {}",
                t.leader_epochs.get(p).copied().unwrap_or_default()
            );
        }
        for (p, node) in t.leader_nodes.iter().enumerate() {
            let _ = node;
            if let Some(o) = image.objects.partition(t.id, p as i32) {
                let _ = writeln!(
                    out,
                    "    p{p} in objects: offsets {}..{} in {} ranges, {} bytes",
                    o.start().unwrap_or(0),
                    o.end().unwrap_or(0),
                    o.ranges.len(),
                    o.bytes()
                );
            }
        }
        for (k, v) in &t.configs {
            let _ = writeln!(out, "    config {k}={v}");
        }
    }
    let objs = &image.objects;
    let _ = writeln!(
        out,
        "objects: {} committed, next id {}",
        objs.objects.len(),
        objs.next_object_id
    );
    for (node, (first, count)) in &objs.reservations {
        let _ = writeln!(out, "  node {node} reserved ids {first}..{}", first + count);
    }
    for o in objs.objects.values() {
        let _ = writeln!(
            out,
            "  object {} node {} size {} ranges {}",
            o.id,
            o.node_id,
            o.size,
            o.ranges.len()
        );
        for r in &o.ranges {
            let name = image
                .ids
                .get(&r.topic_id)
                .cloned()
                .unwrap_or_else(|| format!("(deleted {})", r.topic_id));
            let _ = writeln!(
                out,
                "    {name}-{} offsets {}..{} ({} bytes, max timestamp {})",
                r.partition, r.start_offset, r.end_offset, r.bytes, r.max_timestamp
            );
        }
    }
}
