//! The metadata log and snapshots as a broker reads them at start-up: log
//! frames, entries, records, snapshot files, and the image they build.
//!
//! The first byte picks a mode. Records: decoded, applied to an image, and
//! encoded again (decode, encode, decode must agree). Snapshot: the input as
//! a whole file, or as a body behind a correct magic and CRC. Log: the input
//! as a whole `raft.log`, or cut into frames with correct CRCs, replayed
//! entry by entry into an image. Nothing may panic on any of it.

use super::Choices;
use broker::controller::records::{decode_all, encode_all};
use broker::controller::state_machine::{SnapshotFile, StateMachine, MAGIC};
use broker::controller::store::scan_log_bytes;
use broker::metadata::MetadataImage;

fn replay_log(bytes: &[u8]) {
    let scan = scan_log_bytes(bytes);
    assert!(scan.valid_len <= scan.file_len);
    assert_eq!(scan.stopped.is_none(), scan.valid_len == scan.file_len);
    let mut image = MetadataImage::default();
    for (_, entry) in &scan.entries {
        let _ = StateMachine::apply_entry(&mut image, entry);
    }
}

/// One input, as `cargo fuzz` hands it over (and as the corpus replay does).
pub fn run(data: &[u8]) {
    let mut c = Choices::new(data);
    match c.u8() % 5 {
        0 => {
            let Ok(records) = decode_all(c.rest()) else {
                return;
            };
            let mut image = MetadataImage::default();
            for r in &records {
                image.apply(r);
            }
            let again = decode_all(&encode_all(&records)).expect("encoded records decode");
            assert_eq!(again, records, "records changed in a round trip");
        }
        1 => {
            if let Ok(snap) = SnapshotFile::decode(c.rest()) {
                let _ = snap.image();
            }
        }
        2 => {
            let body = c.rest();
            let mut file = MAGIC.to_vec();
            file.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
            file.extend_from_slice(body);
            if let Ok(snap) = SnapshotFile::decode(&file) {
                let image = snap.image();
                let again = SnapshotFile::decode(&snap.encode()).expect("encoded snapshot decodes");
                assert_eq!(again.records, snap.records, "snapshot records changed");
                assert_eq!(again.image().version, image.version);
            }
        }
        3 => replay_log(c.rest()),
        _ => {
            // Frames with correct CRCs around fuzzer-chosen bodies.
            let mut log = Vec::new();
            while !c.is_empty() {
                let len = usize::from(c.u8());
                let body = c.bytes(len);
                log.extend_from_slice(&(body.len() as u32).to_be_bytes());
                log.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
                log.extend_from_slice(body);
            }
            replay_log(&log);
        }
    }
}
