//! The `broker` binary: reads the config, starts one pinned glommio executor
//! per shard, joins them into the channel mesh, and serves until killed.
//!
//! The main thread only starts and joins shards; it never serves requests.

use std::rc::Rc;
use std::sync::Arc;

use clap::Parser;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use storage::file_lock::{FileLock, LockError};
use storage::wal::{format_wal, lock_wal, open_or_create, WalConfig, WalError, WalLayout};
use tracing::{error, info, warn};

use broker::config::{Config, Flags, Tool};
use broker::control::{Control, MeshMsg};
use broker::controller::ControllerHandle;
use broker::metadata::MetadataImage;
use broker::shard::listener::{self, ShardSocket};
use broker::shard::Shard;
use broker::{
    controller, data_dir, object_compaction, object_gc, objects, objects_tool, retention, shutdown,
};

/// Metadata messages in flight between two shards before a sender waits.
const MESH_CAPACITY: usize = 1024;

fn main() {
    keep_freed_memory();
    shutdown::block_signals();
    let mut flags = Flags::parse();
    let tool = flags.tool.take();
    let cfg = match Config::load(flags) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("broker: {e}");
            std::process::exit(2);
        }
    };
    if let Some((user, password)) = cfg.inter_broker_credentials() {
        broker::peer::set_credentials(user, password);
    }
    let logs = tracing_subscriber::fmt()
        // openraft narrates every election at info; keep its warnings only
        // unless log_level names it.
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "openraft=warn,{}",
            cfg.log_level
        )))
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        // One JSON object per line: fields (shard, partition, peer, ...)
        // as keys, for log shippers.
        logs.json().with_current_span(false).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    if let Some(tool) = tool {
        let (name, result) = match tool {
            Tool::MetadataShell { dir } => {
                let dir = dir.unwrap_or_else(|| cfg.data_dir.clone());
                (
                    "metadata-shell",
                    controller::shell::dump(&dir).map_err(|e| e.to_string()),
                )
            }
            Tool::Objects { cmd } => ("objects", objects_tool::run(cfg, cmd)),
        };
        match result {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("broker {name}: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    // Held until the process ends: one broker per data directory, WAL and
    // port. Taken before anything in the directory is opened or written.
    let _dir_lock = match data_dir::lock(&cfg.data_dir) {
        Ok(lock) => lock,
        Err(e) => {
            error!("{e}");
            std::process::exit(1);
        }
    };
    if !cfg.is_broker() {
        run_controller_only(&cfg);
        return;
    }
    let mut sockets = match listener::bind_all(&cfg) {
        Ok(sockets) => sockets.into_iter(),
        Err(e) => {
            error!("{e}");
            std::process::exit(1);
        }
    };
    check_memlock();
    let (mut wal, _wal_lock) = match open_wal(&cfg) {
        Ok((layout, lock)) => (Arc::new(layout), lock),
        Err(e) => {
            error!("{e}");
            std::process::exit(1);
        }
    };
    let cfg = Arc::new(cfg);
    info!(
        shards = cfg.shards,
        base_port = cfg.base_port,
        data_dir = %cfg.data_dir.display(),
        listeners = if cfg.sasl_mechanisms().is_empty() { "PLAINTEXT" } else { "SASL_PLAINTEXT" },
        sasl_mechanisms = %cfg.sasl_enabled_mechanisms,
        "starting broker {}",
        cfg.broker_id
    );
    // Shards start only once the controller has replayed the metadata log,
    // so each begins with the recovered image (same leaders as before).
    let mut controller = match controller::start(&cfg) {
        Ok(c) => c,
        Err(e) => {
            error!("cannot start the controller: {e}");
            std::process::exit(1);
        }
    };
    let mut image = controller.image.clone();
    let mut images = controller.images.take();
    if wal.slice_count as usize != cfg.shards {
        match reshard_wal(&cfg, &wal, &controller) {
            Ok((layout, now)) => {
                wal = Arc::new(layout);
                image = now;
            }
            Err(e) => {
                error!(
                    "{e}; the WAL is left as it was: start with shards = {} to serve its data \
                     meanwhile",
                    wal.slice_count
                );
                std::process::exit(1);
            }
        }
    }
    let mut tickers = match broker::wakeup::start(cfg.shards) {
        Ok(fds) => fds.into_iter(),
        Err(e) => {
            error!("cannot start the reactor ticker: {e}");
            std::process::exit(1);
        }
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mesh = MeshBuilder::<MeshMsg, _>::full(cfg.shards, MESH_CAPACITY);
    let mut handles = Vec::new();
    let stops = shutdown::start(
        cfg.shards,
        std::time::Duration::from_millis(cfg.shutdown_timeout_ms),
    );
    for (s, stop) in stops.into_iter().enumerate() {
        let start = ShardStart {
            parts: ShardParts {
                id: s,
                cfg: cfg.clone(),
                mesh: mesh.clone(),
                wal: wal.clone(),
                image: image.clone(),
                controller: (s == 0).then(|| controller.handle.clone()),
                images: if s == 0 { images.take() } else { None },
            },
            stop,
            socket: sockets.next().expect("one socket per shard"),
            ticker: tickers.next(),
        };
        // A task queue that has run this long yields to others that are
        // runnable (glommio's default is 100 ms): uploads and cold reads
        // must not hold a core while a produce waits.
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed((cfg.first_cpu + s) % cpus))
            .name(&format!("shard-{s}"))
            .preempt_timer(std::time::Duration::from_millis(1));
        if cfg.spin_before_park_us > 0 {
            builder =
                builder.spin_before_park(std::time::Duration::from_micros(cfg.spin_before_park_us));
        }
        let handle = builder
            // Blocking threads serve file opens, renames and the like.
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(2))
            .spawn(move || serve_shard(start));
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                error!(
                    "cannot start shard {s}: {e} (glommio needs locked memory: check `ulimit -l`)"
                );
                std::process::exit(1);
            }
        }
    }
    startup::watch(cfg.shards);
    for h in handles {
        if let Err(e) = h.join() {
            error!("shard failed: {e}");
            std::process::exit(1);
        }
    }
}

/// The WAL has another slice count than the configured shard count (the
/// host has another core count now): runs one executor per old slice, which
/// recovers it, hands the partitions of shards that are gone (and a share
/// for new shards) to their new shards, and uploads everything else; only
/// then is the WAL formatted with the new count. No client is served
/// meanwhile. Returns the new layout and the image after the moves.
fn reshard_wal(
    cfg: &Arc<Config>,
    wal: &Arc<WalLayout>,
    controller: &controller::Started,
) -> Result<(WalLayout, Arc<MetadataImage>), String> {
    let old = wal.slice_count as usize;
    let moves = broker::reshard::plan(&controller.image, cfg.broker_id, cfg.shards);
    info!(
        slices = old,
        shards = cfg.shards,
        moves = moves.len(),
        "the WAL was written by {old} shards and {} are configured: emptying the old slices \
         into objects before it is formatted anew",
        cfg.shards
    );
    let started = std::time::Instant::now();
    let old_cfg = Arc::new(Config {
        shards: old,
        ..(**cfg).clone()
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mesh = MeshBuilder::<MeshMsg, _>::full(old, MESH_CAPACITY);
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for s in 0..old {
        let mine: Vec<_> = moves
            .iter()
            .filter(|m| m.from_shard == s)
            .copied()
            .collect();
        let job = EmptySlice {
            parts: ShardParts {
                id: s,
                cfg: old_cfg.clone(),
                mesh: mesh.clone(),
                wal: wal.clone(),
                image: controller.image.clone(),
                controller: (s == 0).then(|| controller.handle.clone()),
                images: None,
            },
            moves: mine,
            done: done.clone(),
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed((cfg.first_cpu + s) % cpus))
            .name(&format!("reshard-{s}"))
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(2))
            .spawn(move || empty_slice(job))
            .map_err(|e| format!("cannot start an executor for WAL slice {s}: {e}"))?;
        handles.push(handle);
    }
    let mut failed = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(format!("executor failed: {e}")),
        }
    }
    if !failed.is_empty() {
        return Err(failed.join("; "));
    }
    let image = futures::executor::block_on(controller.handle.image())
        .ok_or("the controller stopped while the WAL slices were emptied")?;
    let layout = format_wal(&wal_config(cfg))
        .map_err(|e| format!("cannot format the WAL for {} shards: {e}", cfg.shards))?;
    info!(
        slices = layout.slice_count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "every old WAL slice is in objects; WAL formatted for the new shard count"
    );
    Ok((layout, image))
}

/// What an executor of the old shard count gets.
struct EmptySlice {
    parts: ShardParts,
    moves: Vec<broker::reshard::Move>,
    /// Shards finished with their slice; each waits for all, since shard 0
    /// carries every shard's metadata commits.
    done: Arc<std::sync::atomic::AtomicUsize>,
}

async fn empty_slice(job: EmptySlice) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    let s = job.parts.id;
    let shards = job.parts.cfg.shards;
    let result = async {
        let shard = open_shard(job.parts).await?;
        let patience = std::time::Duration::from_millis(shard.config.reshard_timeout_ms);
        let timeout = async {
            glommio::timer::sleep(patience).await;
            Err(format!(
                "shard {s}: the WAL slice is not in objects after {} ms (reshard_timeout_ms)",
                patience.as_millis()
            ))
        };
        futures_lite::future::or(shard.empty_wal(&job.moves), timeout).await
    }
    .await;
    // Stay until every shard is done: commits of the others pass through
    // shard 0, and every shard acknowledges each new image.
    job.done.fetch_add(1, Ordering::SeqCst);
    while job.done.load(Ordering::SeqCst) < shards {
        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
    }
    result
}

/// What every shard executor gets from the main thread.
struct ShardParts {
    id: usize,
    cfg: Arc<Config>,
    mesh: MeshBuilder<MeshMsg, glommio::channels::channel_mesh::Full>,
    wal: Arc<WalLayout>,
    image: Arc<MetadataImage>,
    /// Shard 0 only: the controller thread.
    controller: Option<ControllerHandle>,
    /// Shard 0 only, with a quorum of several processes: the images the
    /// controller applies.
    images: Option<ImageFeed>,
}

type ImageFeed = futures::channel::mpsc::UnboundedReceiver<Arc<MetadataImage>>;

/// Starts a shard from the image, joins the mesh, opens its object store
/// and recovers its WAL slice (it serves nothing yet).
async fn open_shard(parts: ShardParts) -> Result<Rc<Shard>, String> {
    let s = parts.id;
    let shards = parts.cfg.shards;
    let shard = Shard::new(s, parts.cfg);
    shard.install_image(parts.image);
    startup::stage(s, "joining the channel mesh");
    let (senders, receivers) = parts
        .mesh
        .join()
        .await
        .map_err(|e| format!("shard {s} could not join the channel mesh: {e}"))?;
    let control = Control::start(
        s,
        shards,
        senders,
        receivers,
        shard.hooks(),
        parts.controller,
    );
    if let Some(images) = parts.images {
        control.follow(images);
    }
    shard.set_control(control);
    startup::stage(s, "opening the object store");
    let (store, reader) = objects::open(&shard.config, s)
        .await
        .map_err(|e| format!("shard {s} cannot open its object store: {e}"))?;
    info!(shard = s, store = %store.describe(), "object store open");
    shard.set_store(store, reader);
    startup::stage(s, "recovering its WAL slice");
    shard
        .open_wal(&parts.wal)
        .await
        .map_err(|e| format!("shard {s} cannot open its WAL slice: {e}"))?;
    startup::stage(s, "open");
    Ok(shard)
}

/// Where each shard is in its start-up, for a watchdog on the main thread
/// that names a shard still not serving after `STALL` (a start-up that
/// hangs is then a log line, not silence).
mod startup {
    use std::sync::Mutex;
    use std::time::Duration;

    pub const STALL: Duration = Duration::from_secs(30);
    static STAGES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

    pub fn stage(shard: usize, what: &'static str) {
        let mut stages = STAGES.lock().unwrap_or_else(|p| p.into_inner());
        if stages.len() <= shard {
            stages.resize(shard + 1, "starting");
        }
        stages[shard] = what;
    }

    /// Starts the watchdog thread for `shards` shards.
    pub fn watch(shards: usize) {
        let spawned = std::thread::Builder::new()
            .name("startup-watchdog".into())
            .spawn(move || {
                std::thread::sleep(STALL);
                let stages = STAGES.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for s in 0..shards {
                    let at = stages.get(s).copied().unwrap_or("starting");
                    if at != "serving" {
                        tracing::error!(
                            shard = s,
                            stage = at,
                            "shard still not serving {} s after start",
                            STALL.as_secs()
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no start-up watchdog: {e}");
        }
    }
}

/// What a serving shard's executor gets from the main thread.
struct ShardStart {
    parts: ShardParts,
    stop: shutdown::ShardShutdown,
    /// Its port, bound by the main thread; listened on once it serves.
    socket: ShardSocket,
    /// Its end of the reactor ticker's socket (`broker::wakeup`).
    ticker: Option<std::os::fd::OwnedFd>,
}

/// Runs the shard in a latency-sensitive task queue: requests, appends, WAL
/// I/O and commits, and everything they spawn, preempt the throughput
/// queues (uploads, cold reads) within half a millisecond of becoming
/// runnable, instead of waiting out glommio's default 100 ms slice.
async fn serve_shard(mut start: ShardStart) {
    if let Some(fd) = start.ticker.take() {
        broker::wakeup::listen(fd);
    }
    let s = start.parts.id;
    let serve = glommio::executor().create_task_queue(
        glommio::Shares::Static(1000),
        glommio::Latency::Matters(std::time::Duration::from_micros(500)),
        &format!("serve-{s}"),
    );
    match glommio::spawn_local_into(run_shard(start), serve) {
        Ok(task) => task.await,
        Err(e) => {
            error!("shard {s} cannot create its serving task queue: {e}");
            std::process::exit(1);
        }
    }
}

async fn run_shard(start: ShardStart) {
    let ShardStart {
        parts,
        stop,
        socket,
        ticker: _,
    } = start;
    let s = parts.id;
    let shard = match open_shard(parts).await {
        Ok(shard) => shard,
        Err(e) => {
            error!("{e}");
            std::process::exit(1);
        }
    };
    object_gc::start(&shard);
    retention::start(&shard);
    broker::shard::idle::start(&shard);
    object_compaction::start(&shard);
    let stopping = shard.clone();
    glommio::spawn_local(async move {
        if stop.requested.await.is_ok() {
            stopping.drain().await;
            stopping.shutdown().await;
            let _ = stop.done.send(s);
        }
    })
    .detach();
    let addr = socket.addr;
    let listener = match socket.listen() {
        Ok(l) => l,
        Err(e) => {
            error!("{}", listener::bind_error(s, addr, &e));
            std::process::exit(1);
        }
    };
    if s == 0 {
        broker::admin::start(&shard);
    }
    startup::stage(s, "serving");
    shard.serve(listener).await;
}

/// `process_roles = controller`: a voter of the metadata quorum with no
/// shards, no WAL and no Kafka listener; SIGTERM or SIGINT ends it.
fn run_controller_only(cfg: &Config) {
    info!(
        broker_id = cfg.broker_id,
        "starting a controller (no shards)"
    );
    let controller = match controller::start(cfg) {
        Ok(c) => c,
        Err(e) => {
            error!("cannot start the controller: {e}");
            std::process::exit(1);
        }
    };
    let _signals = shutdown::start(0, std::time::Duration::from_secs(1));
    // The controller thread runs while a handle to it lives.
    let _handle = controller.handle;
    loop {
        std::thread::park();
    }
}

/// Locks and opens (or creates) the WAL on the main thread, before any
/// shard starts. The lock keeps a second broker off the same WAL file or
/// device, even one with another data directory.
fn open_wal(cfg: &Config) -> Result<(WalLayout, FileLock), String> {
    let path = cfg.wal_path();
    let lock = lock_wal(&path).map_err(|e| match e {
        WalError::Locked(LockError::Held { path }) => format!(
            "the WAL {} is in use: it is locked by another process; another broker uses \
             this WAL (each broker needs its own wal_path)",
            path.display()
        ),
        e => format!("cannot lock the WAL {}: {e}", path.display()),
    })?;
    let layout =
        open_or_create(&wal_config(cfg)).map_err(|e| format!("cannot open the WAL: {e}"))?;
    info!(
        path = %layout.path.display(),
        slices = layout.slice_count,
        slice_bytes = layout.slice_size,
        block = layout.block_size,
        "WAL open"
    );
    Ok((layout, lock))
}

fn wal_config(cfg: &Config) -> WalConfig {
    WalConfig {
        path: cfg.wal_path(),
        size_bytes: cfg.wal_size_bytes,
        slices: cfg.shards as u32,
        broker_id: cfg.broker_id,
        zero_fill: true,
    }
}

/// glommio registers io_uring buffers in locked memory; without enough of it
/// executors fail to start. Root (CAP_IPC_LOCK) is not limited.
fn check_memlock() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if ok && !root && lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < 512 << 20 {
        warn!(
            "locked-memory limit is {} KiB; glommio may fail to start shards. Raise it (ulimit -l unlimited) or run as root",
            lim.rlim_cur / 1024
        );
    }
}

/// Makes glibc's malloc keep freed buffers for reuse. By default a buffer
/// over 128 KiB (a record batch, an object block) is mapped from the kernel
/// and unmapped when freed, and freed memory at the top of a heap is given
/// back, so every large buffer was faulted in and zeroed again: a tenth of
/// the broker's CPU per byte. Memory stays bounded by the caches' budgets;
/// it is just not handed back between uses.
fn keep_freed_memory() {
    // The largest threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2).
    const MMAP_THRESHOLD: libc::c_int = 32 << 20;
    const TRIM_THRESHOLD: libc::c_int = 1 << 30;
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    };
    if !ok {
        eprintln!("broker: mallopt refused the thresholds; large buffers will be remapped");
    }
}
