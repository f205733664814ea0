//! Crash-image test of the WAL slice.
//!
//! A run of concurrent appends and trims goes through the recording memory
//! device. From its record we build many crash images: the contents at a
//! flush barrier plus a random subset of the writes recorded after it, some
//! torn at 512-byte sector granularity. Each image is recovered and checked:
//!
//! * every append acknowledged before the barrier is recovered (unless a trim
//!   that reached the image dropped it), with the offset it was acknowledged
//!   with;
//! * no corrupt record is accepted (bodies are self-describing);
//! * the recovered log is a contiguous run of the appends, in order;
//! * the trim point is at least the last trim completed before the barrier;
//! * after recovery, new appends continue the log and a second recovery
//!   returns the first one plus the new records, nothing else (stale records
//!   beyond the recovered end never come back);
//! * a crash during recovery itself (its tail cut and header write lost or
//!   torn) recovers the same log.
//!
//! The crash points this covers, by name: after a batch write and before its
//! flush (any subset of a batch's writes, torn or not); after a trim's header
//! write and before its flush; between the writes of a wrap-around (marker
//! and batch); during recovery's tail cut and header write. Plus by hand: a
//! lost batch followed by a surviving one, and an EIO on flush.

use std::{cell::RefCell, rc::Rc, time::Duration};

use bytes::Bytes;
use rand::{rngs::StdRng, Rng, SeedableRng};
use storage::wal::{
    mem_device::{crash_image, LateWrite},
    IoEvent, MemDevice, RecoveredRecord, WalLayout, WalSlice, WalTuning,
};

const CAPACITY: u64 = 96 << 10;

fn layout() -> WalLayout {
    let layout =
        WalLayout::plan("mem".into(), false, 3 * 4096 + CAPACITY, 512, 1, 0, 0x5eed).unwrap();
    assert_eq!(layout.slice_capacity(), CAPACITY);
    layout
}

fn tuning() -> WalTuning {
    tuning_with(false)
}

/// Small batches and writes so a short run has many overlapping I/Os.
fn tuning_with(write_during_flush: bool) -> WalTuning {
    WalTuning {
        max_batch_bytes: 24 << 10,
        write_chunk_bytes: 8 << 10,
        eager_write_bytes: 8 << 10,
        write_during_flush,
        ..WalTuning::default()
    }
}

/// Body of append number `seq`: its number, then bytes derived from it.
fn body(seq: u64, len: usize) -> Bytes {
    let mut b = seq.to_le_bytes().to_vec();
    b.extend((0..len).map(|i| (seq as usize * 131 + i * 17) as u8));
    Bytes::from(b)
}

fn seq_of(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

#[derive(Default)]
struct Run {
    /// Body length of every append, by sequence number (call order).
    lens: Vec<usize>,
    /// (sequence, offset, event count when the ack was seen).
    acks: Vec<(u64, u64, usize)>,
    /// (trim offset, event count when the trim completed).
    trims: Vec<(u64, usize)>,
}

async fn open(layout: &WalLayout, dev: &MemDevice) -> (WalSlice, Vec<RecoveredRecord>) {
    WalSlice::open_device(Rc::new(dev.clone()), layout, 0, tuning())
        .await
        .expect("recovery")
}

/// Concurrent appenders and a trimmer on a small ring (it wraps several
/// times and hits backpressure), with I/O delays so writes and flushes
/// overlap.
async fn record_run(layout: &WalLayout, dev: &MemDevice, seed: u64) -> Run {
    // Both pipeline policies: odd seeds also write while a flush runs; with
    // O_DSYNC (seeds 5 and 6) seed 6 keeps up to 3 small batches in flight.
    let tuning = WalTuning {
        batches_in_flight: if seed == 6 { 3 } else { 1 },
        ..tuning_with(seed % 2 == 1)
    };
    let (wal, recs) = WalSlice::open_device(Rc::new(dev.clone()), layout, 0, tuning)
        .await
        .expect("open");
    assert!(recs.is_empty());
    dev.set_delay(Duration::from_micros(200));
    let run = Rc::new(RefCell::new(Run::default()));
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let (wal, run, dev) = (wal.clone(), run.clone(), dev.clone());
        tasks.push(glommio::spawn_local(async move {
            let mut rng = StdRng::seed_from_u64(seed * 10 + t);
            for _ in 0..30 {
                let len = if rng.gen_bool(0.1) {
                    rng.gen_range(4000..12000)
                } else {
                    rng.gen_range(0..1500)
                };
                let seq = {
                    let mut r = run.borrow_mut();
                    r.lens.push(len);
                    r.lens.len() as u64 - 1
                };
                let fut = wal.append(body(seq, len));
                let off = within(fut).await.expect("append");
                run.borrow_mut().acks.push((seq, off, dev.event_count()));
                if rng.gen_bool(0.3) {
                    glommio::timer::sleep(Duration::from_micros(rng.gen_range(0..500))).await;
                }
            }
        }));
    }
    let appenders_done = Rc::new(RefCell::new(false));
    let trimmer = {
        let (wal, run, dev, done) = (
            wal.clone(),
            run.clone(),
            dev.clone(),
            appenders_done.clone(),
        );
        glommio::spawn_local(async move {
            while !*done.borrow() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
                // Trim up to an acknowledged record a few behind the newest,
                // or everything durable when appends wait for space (a few
                // large records can fill the small ring on their own).
                let target = {
                    let r = run.borrow();
                    let n = r.acks.len();
                    if wal.queued_bytes() > 0 {
                        wal.durable_offset()
                    } else if n >= 6 {
                        r.acks[n - 6].1
                    } else {
                        continue;
                    }
                };
                wal.trim(target).await.expect("trim");
                run.borrow_mut().trims.push((target, dev.event_count()));
            }
        })
    };
    for t in tasks {
        t.await;
    }
    *appenders_done.borrow_mut() = true;
    trimmer.await;
    wal.close().await;
    Rc::try_unwrap(run).ok().unwrap().into_inner()
}

/// Fails the test instead of hanging it when an append never completes.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::or(f, async {
        glommio::timer::sleep(Duration::from_secs(10)).await;
        panic!("append did not complete within 10 s");
    })
    .await
}

/// What happened to the writes after the barrier, for a crash before the
/// next flush completed: only writes recorded before the next flush was
/// issued are candidates (a write after it may depend on that flush, e.g.
/// ring space freed by a trim).
///
/// `barrier == usize::MAX` means no barrier: the writes before the first
/// flush.
fn random_late(rng: &mut StdRng, events: &[IoEvent], barrier: usize) -> Vec<LateWrite> {
    let p_keep = rng.gen_range(0.0..1.0);
    let after = barrier.wrapping_add(1);
    events[after..]
        .iter()
        .take_while(|e| matches!(e, IoEvent::Write { .. }))
        .filter_map(|e| match e {
            IoEvent::Write { data, .. } => Some(data.len()),
            _ => None,
        })
        .map(|len| {
            let r: f64 = rng.gen();
            if r < p_keep * 0.7 {
                LateWrite::Whole
            } else if r < p_keep {
                LateWrite::Torn((0..len / 512).map(|_| rng.gen_bool(0.5)).collect())
            } else {
                LateWrite::Lost
            }
        })
        .collect()
}

/// Checks one recovered image against the run; returns the records.
fn check_recovery(run: &Run, barrier: usize, recs: &[RecoveredRecord], trim_offset: u64) {
    // Contiguous run of appends, bodies intact, offsets increasing.
    for w in recs.windows(2) {
        assert!(w[0].offset < w[1].offset);
        assert_eq!(
            seq_of(&w[1].body),
            seq_of(&w[0].body) + 1,
            "gap in recovered log"
        );
    }
    for r in recs {
        let seq = seq_of(&r.body);
        assert_eq!(
            r.body,
            body(seq, run.lens[seq as usize]),
            "corrupt record {seq} accepted"
        );
        assert!(r.offset >= trim_offset);
        if let Some(&(_, off, _)) = run.acks.iter().find(|a| a.0 == seq) {
            assert_eq!(off, r.offset, "record {seq} recovered at another offset");
        }
    }
    // Durability: everything acknowledged before the barrier and not trimmed.
    let recovered: std::collections::HashSet<u64> = recs.iter().map(|r| seq_of(&r.body)).collect();
    for &(seq, off, at) in &run.acks {
        if at <= barrier && off >= trim_offset {
            assert!(
                recovered.contains(&seq),
                "acknowledged record {seq} at {off} lost (barrier {barrier})"
            );
        }
    }
    // Trims completed before the barrier are durable.
    let done = run
        .trims
        .iter()
        .filter(|t| t.1 <= barrier)
        .map(|t| t.0)
        .max()
        .unwrap_or(0);
    assert!(
        trim_offset >= done,
        "trim {done} lost, recovered trim {trim_offset}"
    );
}

#[test]
fn crash_images_recover_a_durable_prefix() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let layout = layout();
            let (mut images, mut recovery_crashes) = (0, 0);
            // Seeds 5 and 6: an O_DSYNC device, acknowledged with no flush.
            for seed in 1..=6u64 {
                let dsync = seed > 4;
                let dev = MemDevice::formatted(&layout);
                dev.set_durable_writes(dsync);
                let base = dev.image();
                let run = record_run(&layout, &dev, seed).await;
                let events = dev.events();
                assert!(
                    run.acks.last().unwrap().1 > 2 * CAPACITY,
                    "the ring never wrapped"
                );
                let barriers: Vec<usize> = events
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| matches!(e, IoEvent::Flush))
                    .map(|(i, _)| i)
                    .collect();
                let mut rng = StdRng::seed_from_u64(seed);
                for (n, &barrier) in barriers.iter().enumerate() {
                    for k in 0..3 {
                        let late = random_late(&mut rng, &events, barrier);
                        let img = crash_image(&base, &events, barrier, &late);
                        let crashed = MemDevice::from_image(img.clone(), 512);
                        crashed.set_durable_writes(dsync);
                        let (wal, recs) = open(&layout, &crashed).await;
                        check_recovery(&run, barrier, &recs, wal.trim_offset());
                        images += 1;
                        if (n + k) % 4 == 2 {
                            // Crash again while recovery cuts the tail and
                            // writes its header: after none or one of its
                            // flushes, with the writes after it in any state.
                            let events = crashed.events();
                            let flushes: Vec<usize> = events
                                .iter()
                                .enumerate()
                                .filter(|(_, e)| matches!(e, IoEvent::Flush))
                                .map(|(i, _)| i)
                                .collect();
                            let pick = rng.gen_range(0..=flushes.len());
                            let at = if pick == 0 {
                                usize::MAX
                            } else {
                                flushes[pick - 1]
                            };
                            let late = random_late(&mut rng, &events, at);
                            let img2 =
                                crash_image(&img, &events, if pick == 0 { 0 } else { at }, &late);
                            let twice = MemDevice::from_image(img2, 512);
                            twice.set_durable_writes(dsync);
                            let (again, recs2) = open(&layout, &twice).await;
                            assert_eq!(recs2, recs, "a crash during recovery changed the log");
                            assert_eq!(again.trim_offset(), wal.trim_offset());
                            again.close().await;
                            recovery_crashes += 1;
                        }
                        if (n + k) % 4 != 0 {
                            wal.close().await;
                            continue;
                        }
                        // Continue the log, then recover again. The recovered
                        // ring may be full (a trim did not reach the image):
                        // free it first, as the broker would after uploading.
                        if wal.capacity() - wal.used_bytes() < 16 << 10 {
                            wal.trim(wal.durable_offset()).await.expect("trim");
                        }
                        let mut new = Vec::new();
                        for i in 0..3u64 {
                            let seq = 1_000_000 + i;
                            let off = within(wal.append(body(seq, 700)))
                                .await
                                .expect("append after recovery");
                            new.push(RecoveredRecord {
                                offset: off,
                                body: body(seq, 700),
                            });
                        }
                        wal.close().await;
                        let (wal2, again) = open(&layout, &crashed).await;
                        let mut want = recs.clone();
                        want.extend(new);
                        let skip = want
                            .iter()
                            .take_while(|r| r.offset < wal2.trim_offset())
                            .count();
                        assert_eq!(
                            again,
                            want[skip..],
                            "second recovery differs (barrier {barrier})"
                        );
                        wal2.close().await;
                    }
                }
            }
            println!("checked {images} crash images, {recovery_crashes} crashes during recovery");
            assert!(images > 100);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A hand-made crash: of two batches in flight the first is lost and the
/// second reached the media. Recovery must stop before the gap, and records
/// appended after recovery must not be followed by the stale second batch
/// on the next recovery, even where the new records end exactly where it
/// starts.
#[test]
fn stale_batch_after_a_gap_never_comes_back() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let layout = layout();
            let dev = MemDevice::formatted(&layout);
            let base = dev.image();
            let (wal, _) = open(&layout, &dev).await;
            let a = wal.append(body(0, 100)).await.unwrap();
            dev.set_delay(Duration::from_millis(5));
            // Two batches in flight: the second append gets its own write
            // because the first write is large enough to be written eagerly.
            let f1 = wal.append(body(1, 9000));
            glommio::timer::sleep(Duration::from_millis(1)).await;
            let f2 = wal.append(body(2, 9000));
            let f3 = wal.append(body(3, 9000));
            let (o1, o2, _o3) = (f1.await.unwrap(), f2.await.unwrap(), f3.await.unwrap());
            wal.close().await;
            let events = dev.events();
            let writes: Vec<(usize, u64)> = events
                .iter()
                .enumerate()
                .filter_map(|(i, e)| match e {
                    IoEvent::Write { pos, .. } => Some((i, *pos)),
                    _ => None,
                })
                .collect();
            // The barrier right after the write that holds record `a`.
            let data_base = layout.slice_base(0) + 2 * 4096;
            let a_write = writes.iter().position(|w| w.1 == data_base + a).unwrap();
            let barrier = events
                .iter()
                .enumerate()
                .skip(writes[a_write].0)
                .find(|(_, e)| matches!(e, IoEvent::Flush))
                .map(|(i, _)| i)
                .unwrap();
            let late: Vec<LateWrite> = events[barrier..]
                .iter()
                .filter_map(|e| match e {
                    IoEvent::Write { pos, .. } => Some(if *pos >= data_base + o2 {
                        LateWrite::Whole
                    } else {
                        LateWrite::Lost
                    }),
                    _ => None,
                })
                .collect();
            let img = crash_image(&base, &events, barrier, &late);
            let crashed = MemDevice::from_image(img, 512);
            let (wal, recs) = open(&layout, &crashed).await;
            assert_eq!(recs.len(), 1, "recovered past the lost batch");
            // Refill exactly the lost region so the new log ends where the
            // stale batch starts.
            let gap = o2 - o1;
            let n = wal.append(body(7, gap as usize - 32 - 8)).await.unwrap();
            assert_eq!(n, o1);
            assert_eq!(wal.durable_offset(), o2);
            wal.close().await;
            let (_wal, again) = open(&layout, &crashed).await;
            let seqs: Vec<u64> = again.iter().map(|r| seq_of(&r.body)).collect();
            assert_eq!(seqs, vec![0, 7], "stale record resurrected");
        })
        .unwrap()
        .join()
        .unwrap();
}

/// An EIO on a flush: the appends waiting for it are never acknowledged, and
/// every later append fails until the slice is re-opened; what was
/// acknowledged before is still recovered, also from the crash image taken at
/// the last good barrier.
#[test]
fn flush_eio_fails_waiters_and_later_appends_until_reopen() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let layout = layout();
            let dev = MemDevice::formatted(&layout);
            let base = dev.image();
            let (wal, _) = open(&layout, &dev).await;
            let mut acked = Vec::new();
            for seq in 0..5 {
                acked.push(wal.append(body(seq, 300)).await.unwrap());
            }
            dev.set_delay(Duration::from_millis(1));
            dev.fail_flush(0);
            let waiting: Vec<_> = (5..10).map(|seq| wal.append(body(seq, 300))).collect();
            for w in waiting {
                assert!(
                    w.await.is_err(),
                    "append acknowledged despite a failed flush"
                );
            }
            for seq in 10..13 {
                assert!(wal.append(body(seq, 300)).await.is_err());
            }
            let events = dev.events();
            assert!(events.iter().any(|e| matches!(e, IoEvent::FailedFlush)));
            // The last good barrier: everything acknowledged is in it.
            let barrier = events
                .iter()
                .rposition(|e| matches!(e, IoEvent::Flush))
                .unwrap();
            let img = crash_image(&base, &events, barrier, &[]);
            let (crashed, recs) = open(&layout, &MemDevice::from_image(img, 512)).await;
            let offs: Vec<u64> = recs.iter().map(|r| r.offset).collect();
            assert_eq!(offs, acked);
            crashed.close().await;
            // Re-open the live slice: appends work again and follow the log.
            let recs = wal.reopen().await.unwrap();
            assert!(recs.len() >= 5);
            assert!(recs.iter().zip(&acked).all(|(r, &o)| r.offset == o));
            let after = wal.append(body(99, 10)).await.unwrap();
            assert!(after > *acked.last().unwrap());
        })
        .unwrap()
        .join()
        .unwrap();
}
