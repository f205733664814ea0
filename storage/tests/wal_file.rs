//! WAL tests on real storage through glommio's `DmaFile` (`O_DIRECT`,
//! io_uring): a preallocated file, and a raw block device (a loop device,
//! skipped with a message when not root or `losetup` is missing).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use bytes::Bytes;
use storage::wal::{
    format_wal, lock_wal, open_or_create, WalConfig, WalError, WalLayout, WalSlice, WalTuning,
};

fn run<Fut: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> Fut + Send + 'static) {
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("executor")
        .join()
        .expect("test task");
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wal-file-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn body(i: usize, len: usize) -> Bytes {
    (0..len).map(|j| (i * 13 + j) as u8).collect()
}

fn cfg(path: &Path, size: u64, slices: u32) -> WalConfig {
    WalConfig {
        path: path.to_path_buf(),
        size_bytes: size,
        slices,
        broker_id: 1,
        zero_fill: true,
    }
}

/// Appends `n` bodies concurrently and returns their offsets.
async fn append_all(
    wal: &WalSlice,
    from: usize,
    n: usize,
    len: impl Fn(usize) -> usize,
) -> Vec<u64> {
    let futs: Vec<_> = (from..from + n)
        .map(|i| wal.append(body(i, len(i))))
        .collect();
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await.expect("append"));
    }
    out
}

async fn round_trip_two_slices(layout: WalLayout) {
    round_trip_two_slices_tuned(layout, WalTuning::default()).await;
}

/// Appends to two slices, closes, recovers: every record back, in order.
async fn round_trip_two_slices_tuned(layout: WalLayout, tuning: WalTuning) {
    let (s0, r0) = WalSlice::open_tuned(&layout, 0, tuning.clone())
        .await
        .unwrap();
    let (s1, r1) = WalSlice::open_tuned(&layout, 1, tuning.clone())
        .await
        .unwrap();
    assert!(r0.is_empty() && r1.is_empty());
    let len = |i: usize| (i * 977) % 70_000;
    let o0 = append_all(&s0, 0, 200, len).await;
    let o1 = append_all(&s1, 1000, 50, len).await;
    if tuning.dsync_writes {
        // Acknowledged by O_DSYNC writes alone: the append path never
        // flushed, yet every record was acknowledged.
        assert_eq!(s0.stats().appends, 200);
    }
    s0.close().await;
    s1.close().await;
    let (_s0, r0) = WalSlice::open_tuned(&layout, 0, tuning.clone())
        .await
        .unwrap();
    let (_s1, r1) = WalSlice::open_tuned(&layout, 1, tuning).await.unwrap();
    let got0: Vec<_> = r0.iter().map(|r| (r.offset, r.body.clone())).collect();
    let want0: Vec<_> = (0..200).map(|i| (o0[i], body(i, len(i)))).collect();
    assert_eq!(got0, want0);
    let got1: Vec<_> = r1.iter().map(|r| (r.offset, r.body.clone())).collect();
    let want1: Vec<_> = (0..50)
        .map(|i| (o1[i], body(1000 + i, len(1000 + i))))
        .collect();
    assert_eq!(got1, want1);
}

#[test]
fn file_append_and_recover_round_trip() {
    let dir = temp_dir("roundtrip");
    let layout = open_or_create(&cfg(&dir.join("data/wal"), 32 << 20, 2)).unwrap();
    run(move || round_trip_two_slices(layout));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_round_trip_with_dsync_writes() {
    let dir = temp_dir("dsync");
    let layout = open_or_create(&cfg(&dir.join("data/wal"), 32 << 20, 2)).unwrap();
    let tuning = WalTuning {
        dsync_writes: true,
        ..WalTuning::default()
    };
    run(move || round_trip_two_slices_tuned(layout, tuning));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_locked_wal_is_created_then_refused_to_a_second_locker() {
    let dir = temp_dir("lock");
    let path = dir.join("data/wal");
    let lock = lock_wal(&path).unwrap();
    // The lock leaves an empty file: open_or_create sizes and formats it.
    let layout = open_or_create(&cfg(&path, 4 << 20, 1)).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 << 20);
    match lock_wal(&path) {
        Err(e @ WalError::Locked(_)) => {
            let shown = e.to_string();
            assert!(shown.contains(&path.display().to_string()), "{shown}");
        }
        other => panic!("second lock of the WAL: {other:?}"),
    }
    drop(lock);
    let _again = lock_wal(&path).unwrap();
    // Re-opening keeps the formatted WAL (its epoch stays).
    assert_eq!(open_or_create(&cfg(&path, 4 << 20, 1)).unwrap(), layout);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_ring_wraps_with_trim() {
    let dir = temp_dir("wrap");
    // One slice with a ring of about 1 MiB; 6 MiB go through it.
    let layout = open_or_create(&cfg(&dir.join("wal"), 1 << 20, 1)).unwrap();
    run(move || async move {
        let (wal, _) = WalSlice::open(&layout, 0).await.unwrap();
        let cap = wal.capacity();
        let mut acked = Vec::new();
        for round in 0..60 {
            let offs = append_all(&wal, round * 10, 10, |i| 5_000 + i * 37 % 9_000).await;
            acked.extend(
                offs.into_iter()
                    .enumerate()
                    .map(|(k, o)| (round * 10 + k, o)),
            );
            // Keep the last 25 records.
            let keep_from = acked[acked.len().saturating_sub(25)].1;
            wal.trim(keep_from).await.unwrap();
            assert!(wal.fill_ratio() < 0.5, "fill {}", wal.fill_ratio());
        }
        assert!(acked.last().unwrap().1 > 4 * cap);
        wal.close().await;
        let (_wal, recs) = WalSlice::open(&layout, 0).await.unwrap();
        let want: Vec<_> = acked[acked.len() - 25..]
            .iter()
            .map(|&(i, o)| (o, body(i, 5_000 + i * 37 % 9_000)))
            .collect();
        let got: Vec<_> = recs.iter().map(|r| (r.offset, r.body.clone())).collect();
        assert_eq!(got, want);
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_backpressure_waits_for_trim() {
    let dir = temp_dir("backpressure");
    let layout = open_or_create(&cfg(&dir.join("wal"), 1 << 20, 1)).unwrap();
    run(move || async move {
        let (wal, _) = WalSlice::open(&layout, 0).await.unwrap();
        let mut last = 0;
        while wal.fill_ratio() < 0.95 {
            last = append_all(&wal, 0, 1, |_| 30_000).await[0];
        }
        let blocked = wal.append(body(1, 100_000));
        let blocked = glommio::spawn_local(blocked);
        glommio::timer::sleep(Duration::from_millis(100)).await;
        assert!(
            wal.queued_bytes() > 100_000,
            "append did not wait on a full ring"
        );
        wal.trim(last).await.unwrap();
        let off = blocked.await.unwrap();
        assert!(off > last);
        assert_eq!(wal.queued_bytes(), 0);
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_slice_reopen_resumes_after_recovery() {
    let dir = temp_dir("reopen");
    let layout = open_or_create(&cfg(&dir.join("wal"), 4 << 20, 1)).unwrap();
    run(move || async move {
        let (wal, _) = WalSlice::open(&layout, 0).await.unwrap();
        let first = append_all(&wal, 0, 20, |i| i * 100).await;
        let clone = wal.clone();
        let recs = wal.reopen().await.unwrap();
        assert_eq!(recs.iter().map(|r| r.offset).collect::<Vec<_>>(), first);
        assert_eq!(wal.generation(), 2);
        // Clones keep working after the re-open.
        let next = append_all(&clone, 20, 1, |_| 10).await[0];
        assert!(next > *first.last().unwrap());
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_with_another_slice_count_recovers_old_layout() {
    let dir = temp_dir("relayout");
    let path = dir.join("wal");
    let layout = open_or_create(&cfg(&path, 8 << 20, 2)).unwrap();
    run(move || async move {
        let (s1, _) = WalSlice::open(&layout, 1).await.unwrap();
        s1.append(body(5, 1000)).await.unwrap();
        s1.close().await;
    });
    // Restart with 4 shards: the old 2-slice layout comes back.
    let again = open_or_create(&cfg(&path, 8 << 20, 4)).unwrap();
    assert_eq!(again.slice_count, 2);
    run(move || async move {
        let (_s1, recs) = WalSlice::open(&again, 1).await.unwrap();
        assert_eq!(recs.len(), 1);
        assert!(matches!(
            WalSlice::open(&again, 3).await.map(|_| ()),
            Err(WalError::Config(_))
        ));
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A WAL of two slices full of records, formatted anew for one (a restart
/// with fewer shards, once every old slice is in objects) and then three:
/// the new slices recover nothing of the old records, though their bytes
/// are still on the device, and take and recover new ones.
async fn reformat_forgets_old_records(path: PathBuf, size: u64) {
    let layout = open_or_create(&cfg(&path, size, 2)).unwrap();
    for slice in 0..2 {
        let (s, _) = WalSlice::open(&layout, slice).await.unwrap();
        append_all(&s, 0, 300, |i| 1000 + i * 97).await;
    }
    for slices in [1u32, 3] {
        let old = open_or_create(&cfg(&path, size, slices)).unwrap();
        assert_ne!(old.slice_count, slices, "the old layout until formatted");
        let new = format_wal(&cfg(&path, size, slices)).unwrap();
        assert_eq!(new.slice_count, slices);
        for slice in 0..slices {
            let (s, recs) = WalSlice::open(&new, slice).await.unwrap();
            assert!(
                recs.is_empty(),
                "slice {slice} of {slices} recovered {} old records",
                recs.len()
            );
            append_all(&s, 0, 20, |i| 1000 + i * 97).await;
        }
        let again = open_or_create(&cfg(&path, size, slices)).unwrap();
        assert_eq!(again, new);
        for slice in 0..slices {
            let (_, recs) = WalSlice::open(&again, slice).await.unwrap();
            assert_eq!(recs.len(), 20, "slice {slice} of {slices}");
        }
    }
}

#[test]
fn reformat_for_another_slice_count_on_a_file() {
    let dir = temp_dir("reformat");
    let path = dir.join("wal");
    run(move || reformat_forgets_old_records(path, 16 << 20));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A loop device attached for the test and detached on drop.
struct LoopDevice {
    dev: PathBuf,
    image: PathBuf,
}

impl LoopDevice {
    fn attach(image: &Path, size: u64) -> Result<LoopDevice, String> {
        if unsafe_geteuid() != 0 {
            return Err("not root".into());
        }
        let f = std::fs::File::create(image).map_err(|e| e.to_string())?;
        f.set_len(size).map_err(|e| e.to_string())?;
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .output()
            .map_err(|e| format!("losetup unavailable: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(LoopDevice {
            dev,
            image: image.to_path_buf(),
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dev).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[test]
fn block_device_round_trip_on_loop_device() {
    let dir = temp_dir("loop");
    let lo = match LoopDevice::attach(&dir.join("image"), 32 << 20) {
        Ok(lo) => lo,
        Err(why) => {
            println!("SKIPPED block_device_round_trip_on_loop_device: {why}");
            return;
        }
    };
    let layout = open_or_create(&cfg(&lo.dev, 0, 2)).unwrap();
    assert!(layout.is_block_device);
    assert_eq!(layout.device_size, 32 << 20, "size from BLKGETSIZE64");
    assert_eq!(open_or_create(&cfg(&lo.dev, 0, 2)).unwrap(), layout);
    run(move || round_trip_two_slices(layout));
    let dev = lo.dev.clone();
    run(move || reformat_forgets_old_records(dev, 0));

    // O_DSYNC on a raw device (a second, blank one): the kernel issues FUA
    // writes, or a cache flush after each, instead of the WAL's fdatasync.
    let lo2 = LoopDevice::attach(&dir.join("image2"), 32 << 20).expect("second loop device");
    let layout2 = open_or_create(&cfg(&lo2.dev, 0, 2)).unwrap();
    let tuning = WalTuning {
        dsync_writes: true,
        ..WalTuning::default()
    };
    run(move || round_trip_two_slices_tuned(layout2, tuning));
    drop(lo2);

    // A mounted device is refused, and nothing is written to it.
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&lo.dev)
        .output();
    let mounted = mkfs.map(|o| o.status.success()).unwrap_or(false)
        && Command::new("mount")
            .arg(&lo.dev)
            .arg(&mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if mounted {
        let e = open_or_create(&cfg(&lo.dev, 0, 2)).unwrap_err();
        let _ = Command::new("umount").arg(&mnt).status();
        assert!(e.to_string().contains("mounted"), "{e}");
    } else {
        println!("SKIPPED mounted-device check: mkfs.ext4 or mount unavailable");
    }
    drop(lo);
    std::fs::remove_dir_all(&dir).unwrap();
}
