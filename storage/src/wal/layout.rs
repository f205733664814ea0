//! WAL configuration and the device-level layout: creating, formatting and
//! validating the WAL file or raw block device and its device header.
//!
//! Runs on the main thread before the shards start, with plain blocking std
//! I/O (still `O_DIRECT`, so it reads what the shards will read). It must
//! never run inside a shard's executor, and it never reformats a WAL that
//! holds a header: an existing WAL either yields its on-disk layout (which may
//! differ from the configuration, so that every old slice can be recovered)
//! or is refused with a message saying why.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::{
        fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
        io::AsRawFd,
    },
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    format::{align_down, DeviceHeader, SliceHeader, FORMAT_VERSION, MIN_BLOCK_SIZE},
    WalError,
};
use crate::file_lock::FileLock;

/// Default WAL file, relative to the broker's working directory.
pub const DEFAULT_WAL_PATH: &str = "data/wal";
/// Default size of a new WAL file.
pub const DEFAULT_WAL_SIZE: u64 = 1 << 30;
/// Smallest ring a slice may have.
const MIN_SLICE_CAPACITY: u64 = 64 * 1024;

/// How the broker wants its WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// A raw block device (e.g. `/dev/nvme0n1p3`) or a file (created if
    /// missing).
    pub path: PathBuf,
    /// Size of a new WAL file. Ignored for block devices (the whole device
    /// is used) and for existing files (their header wins).
    pub size_bytes: u64,
    /// Number of slices: one per shard.
    pub slices: u32,
    pub broker_id: i32,
    /// When creating a file: write zeros over the whole preallocated file once.
    /// `fallocate` alone leaves unwritten extents, and the first O_DIRECT
    /// write to each of them converts it in the filesystem journal, which
    /// costs milliseconds per write. Writing zeros once makes every later
    /// WAL write a pure overwrite.
    pub zero_fill: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            path: PathBuf::from(DEFAULT_WAL_PATH),
            size_bytes: DEFAULT_WAL_SIZE,
            slices: 1,
            broker_id: 0,
            zero_fill: true,
        }
    }
}

/// The WAL's layout as recorded in its device header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalLayout {
    pub path: PathBuf,
    pub is_block_device: bool,
    /// Total bytes of the file or device.
    pub device_size: u64,
    /// Alignment and unit of every WAL write.
    pub block_size: u32,
    pub slice_count: u32,
    /// Bytes per slice, including its two header blocks.
    pub slice_size: u64,
    /// Byte position of slice 0.
    pub data_start: u64,
    pub broker_id: i32,
    /// Random per format; see [`DeviceHeader::epoch`].
    pub epoch: u64,
}

impl WalLayout {
    /// Computes a new layout for a device of `device_size` bytes whose
    /// logical sector is `sector_size`.
    pub fn plan(
        path: PathBuf,
        is_block_device: bool,
        device_size: u64,
        sector_size: u32,
        slices: u32,
        broker_id: i32,
        epoch: u64,
    ) -> Result<WalLayout, WalError> {
        if slices == 0 {
            return Err(WalError::Config("slice count must be at least 1".into()));
        }
        if !sector_size.is_power_of_two() {
            return Err(WalError::Config(format!(
                "sector size {sector_size} is not a power of two"
            )));
        }
        let block_size = sector_size.max(MIN_BLOCK_SIZE);
        let block = u64::from(block_size);
        let data_start = block;
        let per_slice = device_size.saturating_sub(data_start) / u64::from(slices);
        let slice_size = align_down(per_slice, block);
        if slice_size < 2 * block + MIN_SLICE_CAPACITY {
            return Err(WalError::Config(format!(
                "{} bytes are too small for {slices} WAL slices of at least {} bytes",
                device_size,
                2 * block + MIN_SLICE_CAPACITY
            )));
        }
        Ok(WalLayout {
            path,
            is_block_device,
            device_size,
            block_size,
            slice_count: slices,
            slice_size,
            data_start,
            broker_id,
            epoch,
        })
    }

    fn from_header(
        path: PathBuf,
        is_block_device: bool,
        device_size: u64,
        h: &DeviceHeader,
    ) -> WalLayout {
        WalLayout {
            path,
            is_block_device,
            device_size,
            block_size: h.block_size,
            slice_count: h.slice_count,
            slice_size: h.slice_size,
            data_start: h.data_start,
            broker_id: h.broker_id,
            epoch: h.epoch,
        }
    }

    pub fn device_header(&self) -> DeviceHeader {
        DeviceHeader {
            version: FORMAT_VERSION,
            block_size: self.block_size,
            slice_count: self.slice_count,
            broker_id: self.broker_id,
            slice_size: self.slice_size,
            data_start: self.data_start,
            epoch: self.epoch,
        }
    }

    /// Byte position of the first header block of `slice`.
    pub fn slice_base(&self, slice: u32) -> u64 {
        self.data_start + u64::from(slice) * self.slice_size
    }

    /// Bytes of records a slice's ring holds.
    pub fn slice_capacity(&self) -> u64 {
        self.slice_size - 2 * u64::from(self.block_size)
    }

    /// True when the layout is what `cfg` would create now.
    pub fn matches(&self, cfg: &WalConfig) -> bool {
        self.slice_count == cfg.slices && self.broker_id == cfg.broker_id
    }

    /// The blocks a fresh format writes: the device header and both header
    /// copies of every slice (sequence 0 and 1, nothing trimmed).
    pub fn format_blocks(&self) -> Vec<(u64, Vec<u8>)> {
        let block = self.block_size as usize;
        let mut out = Vec::with_capacity(1 + 2 * self.slice_count as usize);
        out.push((0, padded(&self.device_header().encode(), block)));
        for slice in 0..self.slice_count {
            for seq in 0..2u64 {
                let h = SliceHeader {
                    slice,
                    epoch: self.epoch,
                    seq,
                    generation: 0,
                    capacity: self.slice_capacity(),
                    trim_offset: 0,
                    scan_start: 0,
                    last_write_ms: now_ms(),
                };
                let pos = self.slice_base(slice) + seq * block as u64;
                out.push((pos, padded(&h.encode(), block)));
            }
        }
        out
    }

    fn check_against(&self, cfg: &WalConfig, sector_size: u32) -> Result<(), WalError> {
        let refuse = |reason: String| {
            Err(WalError::LayoutMismatch {
                path: self.path.display().to_string(),
                reason,
            })
        };
        if self.broker_id != cfg.broker_id {
            return refuse(format!(
                "it belongs to broker {} but this is broker {}",
                self.broker_id, cfg.broker_id
            ));
        }
        let block = u64::from(self.block_size);
        if !self.block_size.is_power_of_two() || !self.block_size.is_multiple_of(sector_size) {
            return refuse(format!(
                "its block size {} is not a multiple of the device sector size {sector_size}",
                self.block_size
            ));
        }
        let end = self.data_start + u64::from(self.slice_count) * self.slice_size;
        let sane = self.slice_count > 0
            && self.data_start >= block
            && self.data_start.is_multiple_of(block)
            && self.slice_size.is_multiple_of(block)
            && self.slice_size > 2 * block;
        if !sane || end > self.device_size {
            return refuse(format!(
                "its header describes {} slices of {} bytes that do not fit in {} bytes",
                self.slice_count, self.slice_size, self.device_size
            ));
        }
        Ok(())
    }
}

/// Opens the WAL described by `cfg`, creating and formatting it if it is a
/// missing file, a new file, or a device whose first block is all zeros.
///
/// An existing WAL keeps its on-disk layout even when `cfg` asks for another
/// slice count (see [`WalLayout::matches`]): the broker must recover every old
/// slice before calling [`format_wal`]. A WAL of another broker, a damaged
/// header, or a device holding something else is refused, never reformatted.
/// A mounted block device is refused.
pub fn open_or_create(cfg: &WalConfig) -> Result<WalLayout, WalError> {
    let path = cfg.path.clone();
    if needs_creating(&path) {
        create_file(cfg)?;
    }
    let target = open_target(&path)?;
    let mut first = AlignedBuf::zeroed(MIN_BLOCK_SIZE as usize);
    read_exact_at(&target.file, &mut first, 0)
        .map_err(|e| WalError::io("reading header", path.display(), e))?;
    let bytes = first.as_slice();
    if bytes.iter().all(|&b| b == 0) {
        tracing::info!(path = %path.display(), "formatting blank WAL");
        return format_target(cfg, &target);
    }
    let header = DeviceHeader::decode(bytes).map_err(|e| WalError::LayoutMismatch {
        path: path.display().to_string(),
        reason: if DeviceHeader::has_magic(bytes) {
            format!("its device header is damaged ({e}); restore it or wipe the first block to reformat")
        } else {
            "it does not start with a WAL header (it holds other data); wipe its first block to use it as a WAL"
                .to_string()
        },
    })?;
    let layout = WalLayout::from_header(path, target.is_block_device, target.size, &header);
    layout.check_against(cfg, target.sector_size)?;
    if !layout.matches(cfg) {
        tracing::warn!(
            on_disk = layout.slice_count,
            configured = cfg.slices,
            "WAL has another slice count than configured; recovering with the on-disk layout"
        );
    }
    Ok(layout)
}

/// Formats the WAL at `cfg.path` with a new layout and epoch, destroying
/// whatever it holds. Only for a WAL whose slices have all been recovered
/// (or on explicit operator request); [`open_or_create`] never calls it on a
/// WAL that has a header.
///
/// The old device header is wiped (and synced) first: a crash while the new
/// slice headers are written then leaves a blank first block, which the next
/// start formats again, rather than the old header over new slice headers.
pub fn format_wal(cfg: &WalConfig) -> Result<WalLayout, WalError> {
    if needs_creating(&cfg.path) {
        create_file(cfg)?;
    }
    let target = open_target(&cfg.path)?;
    let shown = &cfg.path.display().to_string();
    let first_block = vec![0u8; target.sector_size.max(MIN_BLOCK_SIZE) as usize];
    write_block(&target.file, 0, &first_block)
        .map_err(|e| WalError::io("wiping device header", shown, e))?;
    target
        .file
        .sync_data()
        .map_err(|e| WalError::io("fdatasync", shown, e))?;
    format_target(cfg, &target)
}

/// Locks the WAL at `path` for this process ([`FileLock`]: `flock`, held
/// until the lock is dropped), so that no second broker opens it. Call it
/// before [`open_or_create`]: a missing WAL file is created empty here (and
/// sized and formatted there), so two brokers racing to create the same
/// file cannot both format it. A block device is locked as it is.
pub fn lock_wal(path: &Path) -> Result<FileLock, WalError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| WalError::io("creating directory", dir.display(), e))?;
    }
    Ok(FileLock::acquire(path)?)
}

/// A missing file, or an empty one (left by [`lock_wal`], or by a crash
/// before the file was sized), is created; anything else is opened as it is.
fn needs_creating(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Err(_) => true,
        Ok(m) => m.is_file() && m.len() == 0,
    }
}

struct Target {
    file: File,
    is_block_device: bool,
    size: u64,
    sector_size: u32,
}

fn open_target(path: &Path) -> Result<Target, WalError> {
    let shown = &path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| WalError::io("stat", shown, e))?;
    let is_block_device = meta.file_type().is_block_device();
    if is_block_device {
        if let Some(mount) = mounted_at(path, meta.rdev()) {
            return Err(WalError::Config(format!(
                "block device {shown} is mounted at {mount}; refusing to use it as a WAL"
            )));
        }
    } else if !meta.is_file() {
        return Err(WalError::Config(format!(
            "{shown} is neither a file nor a block device"
        )));
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).custom_flags(libc::O_DIRECT);
    if is_block_device {
        // O_EXCL on a block device fails with EBUSY while the kernel holds it
        // (mounted filesystem, md or dm member): a second guard after the
        // mount table check.
        opts.custom_flags(libc::O_DIRECT | libc::O_EXCL);
    }
    let file = opts
        .open(path)
        .map_err(|e| WalError::io("opening with O_DIRECT", shown, e))?;
    let (size, sector_size) = if is_block_device {
        let size = block_device_size(&file).map_err(|e| WalError::io("BLKGETSIZE64", shown, e))?;
        let sector =
            block_device_sector_size(&file).map_err(|e| WalError::io("BLKSSZGET", shown, e))?;
        (size, sector)
    } else {
        (meta.len(), 512)
    };
    Ok(Target {
        file,
        is_block_device,
        size,
        sector_size,
    })
}

fn format_target(cfg: &WalConfig, target: &Target) -> Result<WalLayout, WalError> {
    let layout = WalLayout::plan(
        cfg.path.clone(),
        target.is_block_device,
        target.size,
        target.sector_size,
        cfg.slices,
        cfg.broker_id,
        new_epoch(),
    )?;
    let shown = &cfg.path.display().to_string();
    // Slice headers first, device header last: a crash in between leaves a
    // blank first block and the next start formats again.
    let blocks = layout.format_blocks();
    for (pos, block) in blocks.iter().skip(1) {
        write_block(&target.file, *pos, block)
            .map_err(|e| WalError::io("writing slice header", shown, e))?;
    }
    target
        .file
        .sync_data()
        .map_err(|e| WalError::io("fdatasync", shown, e))?;
    write_block(&target.file, 0, &blocks[0].1)
        .map_err(|e| WalError::io("writing device header", shown, e))?;
    target
        .file
        .sync_data()
        .map_err(|e| WalError::io("fdatasync", shown, e))?;
    Ok(layout)
}

fn create_file(cfg: &WalConfig) -> Result<(), WalError> {
    let path = &cfg.path;
    let shown = &path.display().to_string();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| WalError::io("creating directory", dir.display(), e))?;
    }
    let size = align_down(cfg.size_bytes, u64::from(MIN_BLOCK_SIZE));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| WalError::io("creating", shown, e))?;
    fallocate(&file, size).map_err(|e| WalError::io("fallocate", shown, e))?;
    if cfg.zero_fill {
        zero_fill(&file, size).map_err(|e| WalError::io("zero-filling", shown, e))?;
    }
    file.sync_all()
        .map_err(|e| WalError::io("fsync", shown, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WalError::io("fsync directory", dir.display(), e))?;
    }
    Ok(())
}

fn zero_fill(file: &File, size: u64) -> io::Result<()> {
    const CHUNK: usize = 8 << 20;
    let zeros = AlignedBuf::zeroed(CHUNK);
    let mut pos = 0u64;
    while pos < size {
        let len = (size - pos).min(CHUNK as u64) as usize;
        write_all_at(file, &zeros.as_slice()[..len], pos)?;
        pos += len as u64;
    }
    Ok(())
}

fn write_block(file: &File, pos: u64, data: &[u8]) -> io::Result<()> {
    let mut buf = AlignedBuf::zeroed(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    write_all_at(file, buf.as_slice(), pos)
}

fn write_all_at(file: &File, data: &[u8], pos: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(data, pos)
}

fn read_exact_at(file: &File, buf: &mut AlignedBuf, pos: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf.as_mut_slice(), pos)
}

fn padded(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v[..bytes.len()].copy_from_slice(bytes);
    v
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A per-format random number; zero is avoided so a zeroed block never
/// matches.
fn new_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Where `path` (a block device with device number `rdev`) is mounted, if
/// anywhere, according to /proc/self/mounts.
fn mounted_at(path: &Path, rdev: u64) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let canonical = std::fs::canonicalize(path).ok();
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let source = fields.next()?;
        let target = fields.next()?;
        let same_path = canonical.is_some() && std::fs::canonicalize(source).ok() == canonical;
        let same_dev = source.starts_with('/')
            && std::fs::metadata(source)
                .map(|m| m.file_type().is_block_device() && m.rdev() == rdev)
                .unwrap_or(false);
        (same_path || same_dev).then(|| target.replace("\\040", " "))
    })
}

// _IOR(0x12, 114, size_t) and _IO(0x12, 104) from <linux/fs.h>.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid
    // for the duration of the call; the fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn block_device_sector_size(file: &File) -> io::Result<u32> {
    let mut sector: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, valid for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut sector as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(sector).map_err(|_| io::Error::other("negative sector size"))
}

fn fallocate(file: &File, size: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(size).map_err(|_| io::Error::other("WAL size too large"))?;
    // SAFETY: plain syscall on an open fd; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A zeroed heap buffer aligned for `O_DIRECT` (4 KiB).
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl AlignedBuf {
    const ALIGN: usize = 4096;

    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1), Self::ALIGN)
            .expect("valid O_DIRECT buffer layout")
    }

    fn zeroed(len: usize) -> AlignedBuf {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to `len` initialised (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, slices: u32) -> WalConfig {
        WalConfig {
            path: dir.join("wal"),
            size_bytes: 4 << 20,
            slices,
            broker_id: 7,
            zero_fill: true,
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wal-layout-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn creates_then_reopens_same_layout() {
        let d = tempdir("reopen");
        let a = open_or_create(&cfg(&d, 2)).unwrap();
        assert_eq!(std::fs::metadata(d.join("wal")).unwrap().len(), 4 << 20);
        assert_eq!(a.slice_count, 2);
        assert!(!a.is_block_device);
        let b = open_or_create(&cfg(&d, 2)).unwrap();
        assert_eq!(a, b);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn other_slice_count_keeps_old_layout() {
        let d = tempdir("slices");
        let a = open_or_create(&cfg(&d, 2)).unwrap();
        let b = open_or_create(&cfg(&d, 4)).unwrap();
        assert_eq!(b, a);
        assert!(!b.matches(&cfg(&d, 4)));
        let c = format_wal(&cfg(&d, 4)).unwrap();
        assert_eq!(c.slice_count, 4);
        assert_ne!(c.epoch, a.epoch);
        assert_eq!(open_or_create(&cfg(&d, 1)).unwrap(), c);
        // A crash right after the wipe: the blank first block is formatted
        // with what is configured then.
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().write(true).open(d.join("wal")).unwrap();
        f.write_all_at(&[0u8; MIN_BLOCK_SIZE as usize], 0).unwrap();
        let e = open_or_create(&cfg(&d, 1)).unwrap();
        assert_eq!(e.slice_count, 1);
        assert_ne!(e.epoch, c.epoch);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_other_broker_and_damaged_or_foreign_headers() {
        let d = tempdir("refuse");
        open_or_create(&cfg(&d, 1)).unwrap();
        let other = WalConfig {
            broker_id: 8,
            ..cfg(&d, 1)
        };
        let e = open_or_create(&other).unwrap_err();
        assert!(e.to_string().contains("belongs to broker 7"), "{e}");

        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().write(true).open(d.join("wal")).unwrap();
        f.write_all_at(&[0xff], 20).unwrap();
        let e = open_or_create(&cfg(&d, 1)).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        f.write_all_at(b"NOTAWAL!", 0).unwrap();
        let e = open_or_create(&cfg(&d, 1)).unwrap_err();
        assert!(e.to_string().contains("other data"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn plan_rejects_tiny_devices() {
        assert!(WalLayout::plan("x".into(), false, 64 * 1024, 512, 4, 0, 1).is_err());
        let l = WalLayout::plan("x".into(), false, 1 << 30, 512, 3, 0, 1).unwrap();
        assert_eq!(l.block_size, 4096);
        assert_eq!(l.slice_size % 4096, 0);
        assert!(l.slice_base(2) + l.slice_size <= 1 << 30);
    }
}
