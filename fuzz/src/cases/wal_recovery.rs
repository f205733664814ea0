//! WAL recovery from arbitrary slice contents.
//!
//! The fuzzer's bytes drive a writer of a slice image: records with correct
//! CRCs at the right positions, padding, wrap markers, and (in a dirty run)
//! garbage, flipped bytes, stale offsets and generations that go backwards.
//! Recovery then runs on the image and must:
//!
//! * never panic, and fail only with an error;
//! * return only records that were written, at their offsets, in order;
//! * in a clean run (no damage), return exactly the records from the trim
//!   point on;
//! * give the same log again after a crash during recovery itself: any of
//!   its writes lost, kept or torn.

use std::collections::HashSet;

use super::Choices;
use storage::wal::format::{align_up, RecordHeader, SliceHeader, RECORD_HEADER_LEN};
use storage::wal::mem_device::{crash_image, LateWrite, SECTOR};
use storage::wal::{recover_records, IoEvent, MemDevice, RecoveredRecord, WalLayout};

const BLOCK: u64 = 4096;
const CAP: u64 = 64 << 10;
const EPOCH: u64 = 0x5eed;

fn layout() -> WalLayout {
    WalLayout::plan("mem".into(), false, 3 * BLOCK + CAP, 512, 1, 0, EPOCH).expect("layout")
}

struct Image {
    img: Vec<u8>,
    ring: usize,
}

impl Image {
    fn put(&mut self, logical: u64, bytes: &[u8]) {
        let at = (logical % CAP) as usize;
        let n = bytes.len().min(CAP as usize - at);
        self.img[self.ring + at..self.ring + at + n].copy_from_slice(&bytes[..n]);
    }
}

fn recover(img: Vec<u8>, layout: &WalLayout) -> (Result<Vec<RecoveredRecord>, String>, MemDevice) {
    let dev = MemDevice::from_image(img, 512);
    let got = futures_lite::future::block_on(recover_records(&dev, layout, 0));
    (got.map_err(|e| e.to_string()), dev)
}

/// One input, as `cargo fuzz` hands it over (and as the corpus replay does).
pub fn run(data: &[u8]) {
    let layout = layout();
    let mut c = Choices::new(data);
    let base = MemDevice::formatted(&layout).image();
    let ring = (layout.slice_base(0) + 2 * BLOCK) as usize;
    let mut im = Image { img: base, ring };

    let header_generation = u32::from(c.u8() % 8) + 1;
    let lap = u64::from(c.u8() % 4);
    let scan_start = lap * CAP + u64::from(c.u16()) % CAP;
    let trim_pick = c.u8();
    let mut generation = header_generation.min(u32::from(c.u8() % 8) + 1);
    // How the crash during recovery goes, chosen up front.
    let (barrier_pick, mut late_bits, torn_mask) = (c.u8(), c.u16(), c.u8());

    let mut pos = scan_start;
    // A writer writes whole blocks and never into the block holding the
    // scan start: that is where its ring ends.
    let limit = scan_start - scan_start % BLOCK + CAP;
    let mut written: HashSet<(u64, Vec<u8>)> = HashSet::new();
    let mut clean_records: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut boundaries = vec![scan_start];
    let mut dirty = false;
    for _ in 0..128 {
        if c.is_empty() || pos >= limit {
            break;
        }
        let op = c.u8();
        match op % 16 {
            // An ordinary record (most of the time).
            0..=8 => {
                let len = usize::from(c.u16()) % 3000;
                let body = c.bytes(len).to_vec();
                let rec_len = RECORD_HEADER_LEN as u64 + body.len() as u64;
                if pos % CAP + rec_len > CAP {
                    // Does not fit before the ring's end: pad, wrap marker.
                    pos = align_up(pos, BLOCK);
                    if !pos.is_multiple_of(CAP) {
                        if pos + RECORD_HEADER_LEN as u64 > limit {
                            break;
                        }
                        im.put(pos, &RecordHeader::wrap(pos, generation).encode(EPOCH));
                        pos = pos - pos % CAP + CAP;
                    }
                }
                if pos + rec_len > limit {
                    break;
                }
                let h = RecordHeader::for_body(&body, pos, generation);
                im.put(pos, &h.encode(EPOCH));
                im.put(pos + RECORD_HEADER_LEN as u64, &body);
                written.insert((pos, body.clone()));
                clean_records.push((pos, body));
                pos += rec_len;
                boundaries.push(pos);
            }
            // End of a flush: zeros to the block's end.
            9 | 10 => {
                let end = align_up(pos, BLOCK).min(limit);
                let zeros = vec![0u8; (end - pos) as usize];
                im.put(pos, &zeros);
                pos = end;
            }
            // A wrap marker at a block start.
            11 => {
                pos = align_up(pos, BLOCK);
                if pos.is_multiple_of(CAP) || pos + RECORD_HEADER_LEN as u64 > limit {
                    continue;
                }
                im.put(pos, &RecordHeader::wrap(pos, generation).encode(EPOCH));
                pos = pos - pos % CAP + CAP;
                boundaries.push(pos);
            }
            // A new generation (a restart); backwards is damage.
            12 => {
                let next = u32::from(c.u8() % 8) + 1;
                dirty |= next < generation || next > header_generation;
                generation = next;
            }
            // Garbage where the next record would be.
            13 => {
                dirty = true;
                let n = usize::from(c.u8()).min(limit.saturating_sub(pos) as usize);
                let junk = c.bytes(n).to_vec();
                im.put(pos, &junk);
            }
            // A flipped byte anywhere in the ring.
            14 => {
                dirty = true;
                let at = u64::from(c.u16()) % CAP;
                let flip = c.u8() | 1;
                let i = ring + at as usize;
                im.img[i] ^= flip;
            }
            // A valid record with another offset (stale, from an old lap).
            _ => {
                dirty = true;
                let claimed = u64::from(c.u32());
                let body = {
                    let n = usize::from(c.u8());
                    c.bytes(n)
                }
                .to_vec();
                let len = RECORD_HEADER_LEN as u64 + body.len() as u64;
                if pos % CAP + len <= CAP && pos + len <= limit {
                    im.put(
                        pos,
                        &RecordHeader::for_body(&body, claimed, generation).encode(EPOCH),
                    );
                    im.put(pos + RECORD_HEADER_LEN as u64, &body);
                    written.insert((claimed, body));
                }
            }
        }
    }
    let trim = boundaries[usize::from(trim_pick) % boundaries.len()];
    let header = SliceHeader {
        slice: 0,
        epoch: EPOCH,
        seq: 2,
        generation: header_generation,
        capacity: CAP,
        trim_offset: trim,
        scan_start,
        last_write_ms: 0,
    };
    let at = layout.slice_base(0) as usize;
    im.img[at..at + header.encode().len()].copy_from_slice(&header.encode());

    let image = im.img;
    let (first, dev) = recover(image.clone(), &layout);
    let records = match first {
        Ok(r) => r,
        Err(e) => panic!("a slice with a valid header failed to recover: {e}"),
    };
    let mut last = None;
    for r in &records {
        assert!(
            r.offset >= trim,
            "record {} before the trim point {trim}",
            r.offset
        );
        assert!(last < Some(r.offset), "offsets out of order");
        last = Some(r.offset);
        assert!(
            written.contains(&(r.offset, r.body.to_vec())),
            "recovered a record never written at {}",
            r.offset
        );
    }
    if !dirty {
        let want: Vec<(u64, Vec<u8>)> = clean_records
            .into_iter()
            .filter(|(o, _)| *o >= trim)
            .collect();
        let got: Vec<(u64, Vec<u8>)> = records
            .iter()
            .map(|r| (r.offset, r.body.to_vec()))
            .collect();
        assert_eq!(got, want, "a clean slice lost or gained records");
    }

    // A crash during recovery, at an event the fuzzer picks: writes before
    // the last flush that completed stay, writes between it and the crash
    // are lost, whole or torn, and nothing after the crash was issued.
    let events = dev.events();
    let crash_at = usize::from(barrier_pick) % (events.len() + 1);
    let barrier = events[..crash_at]
        .iter()
        .rposition(|e| matches!(e, IoEvent::Flush))
        .unwrap_or(0);
    let late_writes = events[barrier..crash_at]
        .iter()
        .filter(|e| matches!(e, IoEvent::Write { .. }))
        .count();
    let late: Vec<LateWrite> = (0..late_writes)
        .map(|_| {
            let pick = late_bits % 4;
            late_bits /= 4;
            match pick {
                0 => LateWrite::Lost,
                1 => LateWrite::Whole,
                _ => LateWrite::Torn(
                    (0..BLOCK as usize / SECTOR)
                        .map(|s| torn_mask & (1 << (s % 8)) != 0)
                        .collect(),
                ),
            }
        })
        .collect();
    let crashed = crash_image(&image, &events, barrier, &late);
    let (again, _) = recover(crashed, &layout);
    assert_eq!(
        again.as_ref(),
        Ok(&records),
        "a crash during recovery changed the log"
    );
    let (after, _) = recover(dev.image(), &layout);
    assert_eq!(
        after.as_ref(),
        Ok(&records),
        "a second recovery changed the log"
    );
}
