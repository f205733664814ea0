//! `broker objects ls|show KEY`: what the configured object store holds,
//! checked against the metadata of the data directory when it is readable
//! (committed, orphan, or not ours).
//!
//! Runs in its own process on a one-off glommio executor (the store clients
//! need one); reads only.

use std::fmt::Write as _;

use storage::object::format::{parse_tail, Tail, FOOTER_LEN};
use storage::object::keys::parse_object_key;

use crate::config::{Config, ObjectsCmd};
use crate::controller::shell::dump_with_image;
use crate::metadata::MetadataImage;

/// Runs the command and returns what to print.
pub fn run(cfg: Config, cmd: ObjectsCmd) -> Result<String, String> {
    let image = dump_with_image(&cfg.data_dir).ok().map(|(_, i)| i);
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            match cmd {
                ObjectsCmd::Ls => ls(&cfg, image.as_ref()).await,
                ObjectsCmd::Show { key } => show(&cfg, image.as_ref(), &key).await,
            }
        })
        .map_err(|e| format!("cannot start an executor: {e}"))?
        .join()
        .map_err(|e| format!("executor failed: {e}"))?
}

fn status(image: Option<&MetadataImage>, id: Option<u64>) -> &'static str {
    match (image, id) {
        (_, None) => "not-an-object",
        (None, Some(_)) => "unknown (metadata not readable)",
        (Some(i), Some(id)) if i.objects.objects.contains_key(&id) => "committed",
        (Some(i), Some(id)) if id < i.objects.next_object_id => "orphan",
        (Some(_), Some(_)) => "unreserved",
    }
}

async fn ls(cfg: &Config, image: Option<&MetadataImage>) -> Result<String, String> {
    let store = crate::objects::open_store(cfg).await?;
    let prefix = cfg.object_key_prefix();
    let list = store
        .list(&prefix)
        .await
        .map_err(|e| format!("listing {}: {e}", store.describe()))?;
    let mut out = String::new();
    let _ = writeln!(out, "{} objects in {}", list.len(), store.describe());
    let mut total = 0u64;
    for o in &list {
        let id = parse_object_key(&prefix, &o.key);
        let ranges = id
            .and_then(|id| image?.objects.objects.get(&id).map(|m| m.ranges.len()))
            .map_or(String::new(), |n| format!(" {n} partition ranges"));
        let _ = writeln!(
            out,
            "{}  {} bytes  {}{ranges}",
            o.key,
            o.size,
            status(image, id)
        );
        total += o.size;
    }
    let _ = writeln!(out, "total {total} bytes");
    Ok(out)
}

async fn show(cfg: &Config, image: Option<&MetadataImage>, key: &str) -> Result<String, String> {
    let store = crate::objects::open_store(cfg).await?;
    let info = store
        .head(key)
        .await
        .map_err(|e| format!("{key}: {e}"))?
        .ok_or_else(|| format!("{key}: no such object in {}", store.describe()))?;
    let size = info.size;
    let first = size.min(1 << 20).max(FOOTER_LEN as u64).min(size);
    let tail = store
        .get_range(key, size - first..size)
        .await
        .map_err(|e| format!("{key}: {e}"))?;
    let index = match parse_tail(&tail, size).map_err(|e| format!("{key}: {e}"))? {
        Tail::Index(i) => i,
        Tail::NeedFrom(pos) => {
            let tail = store
                .get_range(key, pos..size)
                .await
                .map_err(|e| format!("{key}: {e}"))?;
            match parse_tail(&tail, size).map_err(|e| format!("{key}: {e}"))? {
                Tail::Index(i) => i,
                Tail::NeedFrom(_) => return Err(format!("{key}: index not found")),
            }
        }
    };
    let prefix = cfg.object_key_prefix();
    let id = parse_object_key(&prefix, key);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{key}: {size} bytes, {} blocks, index at {}, {}",
        index.entries.len(),
        index.index_position,
        status(image, id)
    );
    for s in index.streams() {
        let topic = uuid::Uuid::from_bytes(s.stream.0);
        let name = image
            .and_then(|i| i.ids.get(&topic).cloned())
            .unwrap_or_else(|| topic.to_string());
        let _ = writeln!(
            out,
            "  {name}-{}: offsets {}..{}, {} records, {} bytes, max timestamp {}",
            s.stream.1, s.first_offset, s.end_offset, s.records, s.bytes, s.max_timestamp
        );
        for b in index.blocks_of(s.stream) {
            let _ = writeln!(
                out,
                "    block at {} size {}: offsets {}..{} ({} records) crc {:08x}",
                b.position, b.size, b.first_offset, b.end_offset, b.records, b.crc
            );
        }
    }
    Ok(out)
}
