//! WAL benchmark on a preallocated file (not a test: it prints figures and
//! asserts nothing about time). Run with
//!
//! ```text
//! cargo test -p storage --release -- --ignored wal_bench --nocapture
//! ```
//!
//! `WAL_BENCH_DIR` chooses the directory (default: the system temp dir).
//! Prints lone-append latency on a zero-filled and on a fallocate-only file,
//! throughput with many concurrent appenders of 1 KiB and 64 KiB bodies, and
//! the raw sequential write bandwidth of the same file for comparison.

use std::{
    cell::Cell,
    collections::VecDeque,
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use storage::wal::{
    open_or_create, BlockDevice, DmaDevice, WalConfig, WalLayout, WalSlice, WalTuning,
};

const FILE_SIZE: u64 = 512 << 20;

fn run<Fut: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> Fut + Send + 'static) {
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("executor")
        .join()
        .expect("bench task");
}

fn create(path: &Path, zero_fill: bool) -> WalLayout {
    let _ = std::fs::remove_file(path);
    let t = Instant::now();
    let layout = open_or_create(&WalConfig {
        path: path.to_path_buf(),
        size_bytes: FILE_SIZE,
        slices: 1,
        broker_id: 0,
        zero_fill,
    })
    .expect("create WAL file");
    println!(
        "created {} MiB WAL file ({}) in {:.2} s",
        FILE_SIZE >> 20,
        if zero_fill {
            "fallocate + zero fill"
        } else {
            "fallocate only"
        },
        t.elapsed().as_secs_f64()
    );
    layout
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// One append at a time, each waiting for the previous one.
async fn lone_latency(layout: &WalLayout, body_len: usize, n: usize, label: &str) {
    let (wal, _) = WalSlice::open(layout, 0).await.unwrap();
    let body = Bytes::from(vec![7u8; body_len]);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        wal.append(body.clone()).await.unwrap();
        lat.push(t.elapsed());
        if wal.fill_ratio() > 0.5 {
            wal.trim(wal.durable_offset()).await.unwrap();
        }
    }
    lat.sort();
    let mean = lat.iter().map(|d| d.as_secs_f64()).sum::<f64>() / n as f64 * 1e3;
    let st = wal.stats();
    println!(
        "lone append {:>6} B, {label:<16}: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  mean {:.3} ms  ({} appends, {} writes, {} flushes)",
        body_len,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        mean,
        n,
        st.writes,
        st.flushes
    );
    wal.close().await;
}

/// `tasks` appenders, each appending `per_task` bodies back to back, with a
/// trimmer freeing the ring like the uploader would.
async fn throughput(
    layout: &WalLayout,
    body_len: usize,
    tasks: usize,
    per_task: usize,
    overlap: bool,
) {
    let tuning = WalTuning {
        write_during_flush: overlap,
        ..WalTuning::default()
    };
    let (wal, _) = WalSlice::open_tuned(layout, 0, tuning).await.unwrap();
    let body = Bytes::from(vec![3u8; body_len]);
    let done = Rc::new(Cell::new(false));
    let trimmer = {
        let (wal, done) = (wal.clone(), done.clone());
        glommio::spawn_local(async move {
            while !done.get() {
                glommio::timer::sleep(Duration::from_millis(2)).await;
                if wal.fill_ratio() > 0.25 {
                    wal.trim(wal.durable_offset()).await.unwrap();
                }
            }
        })
    };
    let t = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (wal, body) = (wal.clone(), body.clone());
            glommio::spawn_local(async move {
                let mut worst = Duration::ZERO;
                for _ in 0..per_task {
                    let s = Instant::now();
                    wal.append(body.clone()).await.unwrap();
                    worst = worst.max(s.elapsed());
                }
                worst
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    for w in workers {
        worst = worst.max(w.await);
    }
    let secs = t.elapsed().as_secs_f64();
    done.set(true);
    trimmer.await;
    let st = wal.stats();
    let n = (tasks * per_task) as f64;
    println!(
        "throughput {:>6} B x {:>3} appenders{}: {:>8.0} appends/s  {:>7.1} MiB/s payload  {:>7.1} MiB/s written  avg batch {:>7.1} KiB  {:>6.0} flushes/s  worst append {:.2} ms",
        body_len,
        tasks,
        if overlap { " (write during flush)" } else { "" },
        n / secs,
        n * body_len as f64 / secs / (1 << 20) as f64,
        st.bytes_written as f64 / secs / (1 << 20) as f64,
        st.bytes_written as f64 / st.batches as f64 / 1024.0,
        st.flushes as f64 / secs,
        worst.as_secs_f64() * 1e3,
    );
    wal.close().await;
}

/// Appends of `body_len` bytes at a fixed rate (one every `every`), each
/// timed from its intended start (coordinated-omission corrected), like a
/// broker taking one produce batch per client linger interval.
async fn fixed_rate(layout: &WalLayout, body_len: usize, every: Duration, secs: u64) {
    let (wal, _) = WalSlice::open(layout, 0).await.unwrap();
    wal.trim(wal.durable_offset()).await.unwrap();
    let body = Bytes::from(vec![9u8; body_len]);
    let lat = Rc::new(std::cell::RefCell::new(Vec::new()));
    let start = Instant::now();
    let n = (Duration::from_secs(secs).as_nanos() / every.as_nanos()) as u32;
    let mut tasks = Vec::new();
    for i in 0..n {
        let due = start + every * i;
        let now = Instant::now();
        if due > now {
            glommio::timer::sleep(due - now).await;
        }
        if wal.fill_ratio() > 0.5 {
            wal.trim(wal.durable_offset()).await.unwrap();
        }
        let (wal, body, lat) = (wal.clone(), body.clone(), lat.clone());
        tasks.push(glommio::spawn_local(async move {
            wal.append(body).await.unwrap();
            lat.borrow_mut().push(due.elapsed());
        }));
    }
    for t in tasks {
        t.await;
    }
    let mut lat = lat.take();
    lat.sort();
    println!(
        "fixed rate {:>6} B every {:?} ({:.1} MiB/s): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        body_len,
        every,
        body_len as f64 / every.as_secs_f64() / (1 << 20) as f64,
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        pct(&lat, 1.0),
    );
    wal.close().await;
}

/// Fills half the ring without trimming, then times recovery (what a broker
/// restart costs per slice).
async fn recovery_time(layout: &WalLayout, body_len: usize) {
    let (wal, _) = WalSlice::open(layout, 0).await.unwrap();
    wal.trim(wal.durable_offset()).await.unwrap();
    let body = Bytes::from(vec![5u8; body_len]);
    while wal.fill_ratio() < 0.5 {
        let futs: Vec<_> = (0..64).map(|_| wal.append(body.clone())).collect();
        for f in futs {
            f.await.unwrap();
        }
    }
    let used = wal.used_bytes();
    wal.close().await;
    drop(wal);
    let t = Instant::now();
    let (_wal, recs) = WalSlice::open(layout, 0).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "recovery of {} MiB ({} records of {} B): {:.2} s, {:.0} MiB/s",
        used >> 20,
        recs.len(),
        body_len,
        secs,
        used as f64 / secs / (1 << 20) as f64
    );
}

/// Raw sequential bandwidth of the same file: 1 MiB O_DIRECT writes, 8 in
/// flight, one fdatasync at the end.
async fn raw_sequential(layout: &WalLayout) {
    let dev = Rc::new(
        DmaDevice::open(layout.path.clone(), layout.device_size, 4096)
            .await
            .unwrap(),
    );
    let chunk = 1 << 20;
    let total = 256u64 << 20;
    let t = Instant::now();
    let mut inflight = VecDeque::new();
    let mut pos = layout.data_start + 2 * 4096;
    while pos < layout.data_start + 2 * 4096 + total {
        let (d, buf) = (dev.clone(), dev.alloc(chunk));
        inflight.push_back(glommio::spawn_local(
            async move { d.write_at(buf, pos).await },
        ));
        if inflight.len() >= 8 {
            inflight.pop_front().unwrap().await.unwrap();
        }
        pos += chunk as u64;
    }
    for t in inflight {
        t.await.unwrap();
    }
    dev.flush().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "raw sequential 1 MiB writes, 8 in flight: {:.1} MiB/s",
        total as f64 / secs / (1 << 20) as f64
    );
}

#[test]
#[ignore = "benchmark: cargo test -p storage --release -- --ignored wal_bench --nocapture"]
fn wal_bench() {
    let dir = std::env::var_os("WAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("wal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let fallocated = create(&dir.join("fallocated"), false);
    run(move || async move {
        lone_latency(&fallocated, 1024, 500, "fallocate only").await;
    });
    let zeroed = create(&dir.join("zeroed"), true);
    let l = zeroed.clone();
    if let Ok(secs) = std::env::var("WAL_BENCH_FIXED_SECS") {
        // Only the fixed-rate figures: WAL_BENCH_FIXED_SECS=20 cargo test ...
        let secs: u64 = secs.parse().expect("WAL_BENCH_FIXED_SECS: seconds");
        run(move || async move {
            fixed_rate(&l, 20 << 10, Duration::from_millis(1), secs).await;
            fixed_rate(&l, 1 << 10, Duration::from_micros(50), secs).await;
        });
        std::fs::remove_dir_all(&dir).unwrap();
        return;
    }
    run(move || async move {
        lone_latency(&l, 1024, 2000, "zero-filled").await;
        lone_latency(&l, 64 << 10, 1000, "zero-filled").await;
        for overlap in [false, true] {
            throughput(&l, 1024, 1, 2000, overlap).await;
            throughput(&l, 1024, 64, 1000, overlap).await;
            throughput(&l, 1024, 256, 500, overlap).await;
            throughput(&l, 64 << 10, 1, 300, overlap).await;
            throughput(&l, 64 << 10, 16, 100, overlap).await;
            throughput(&l, 64 << 10, 64, 50, overlap).await;
        }
        recovery_time(&l, 64 << 10).await;
        recovery_time(&l, 1024).await;
        raw_sequential(&l).await;
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
