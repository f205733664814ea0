//! An in-memory [`BlockDevice`] for tests: it can fail single I/Os with EIO,
//! tear a write at sector (512 B) granularity, delay I/O, act as an
//! `O_DSYNC` device (every completed write durable), and records every
//! completed write and every flush barrier. A `kill -9` cannot reveal a
//! missing flush (the page cache survives it), so crash images are built from
//! this record instead: the state at a flush barrier plus any subset of later
//! writes, some of them torn ([`crash_image`]).
//!
//! Runs on one shard's glommio executor like the real device (`Rc`, delays use
//! glommio timers, never `std::thread::sleep`). Not for production use.

use std::{
    cell::{Cell, RefCell},
    io,
    rc::Rc,
    time::Duration,
};

use bytes::Bytes;

use super::{
    device::{BlockDevice, IoBuf, IoFuture},
    layout::WalLayout,
};

/// Sector size at which [`MemDevice`] and [`crash_image`] tear writes.
pub const SECTOR: usize = 512;

/// One entry of the device's I/O record, in completion order.
#[derive(Debug, Clone)]
pub enum IoEvent {
    /// A write that completed (successfully) with this data.
    Write { pos: u64, data: Bytes },
    /// A flush that was issued and succeeded: every `Write` recorded before it
    /// is durable.
    Flush,
    /// A flush that failed: it proves nothing.
    FailedFlush,
}

/// Faults armed on a [`MemDevice`], each firing once.
#[derive(Debug, Default, Clone)]
struct Faults {
    /// Fail the n-th write from now (0 = next) with EIO.
    write_eio: Option<u64>,
    /// Fail the n-th flush from now with EIO.
    flush_eio: Option<u64>,
    /// Tear the n-th write from now: keep this many sectors, then EIO.
    tear_write: Option<(u64, usize)>,
}

struct MemState {
    data: RefCell<Vec<u8>>,
    log: RefCell<Vec<IoEvent>>,
    faults: RefCell<Faults>,
    delay: Cell<Duration>,
    writes: Cell<u64>,
    flushes: Cell<u64>,
    /// Writes are durable when they complete (an `O_DSYNC` device): each
    /// is recorded with a flush barrier right after it.
    durable_writes: Cell<bool>,
}

/// See the module documentation. Cloning gives another handle on the same
/// memory, record and faults.
#[derive(Clone)]
pub struct MemDevice {
    st: Rc<MemState>,
    block_size: u64,
}

impl MemDevice {
    /// A zeroed device of `size` bytes with `block_size` alignment.
    pub fn new(size: u64, block_size: u64) -> MemDevice {
        MemDevice::from_image(vec![0u8; size as usize], block_size)
    }

    /// A device whose contents are `image` (e.g. a crash image).
    pub fn from_image(image: Vec<u8>, block_size: u64) -> MemDevice {
        MemDevice {
            st: Rc::new(MemState {
                data: RefCell::new(image),
                log: RefCell::new(Vec::new()),
                faults: RefCell::new(Faults::default()),
                delay: Cell::new(Duration::ZERO),
                writes: Cell::new(0),
                flushes: Cell::new(0),
                durable_writes: Cell::new(false),
            }),
            block_size,
        }
    }

    /// A device formatted for `layout` (device header and every slice
    /// header), as [`super::open_or_create`] would leave a new file.
    pub fn formatted(layout: &WalLayout) -> MemDevice {
        let dev = MemDevice::new(layout.device_size, u64::from(layout.block_size));
        for (pos, block) in layout.format_blocks() {
            let start = pos as usize;
            dev.st.data.borrow_mut()[start..start + block.len()].copy_from_slice(&block);
        }
        dev
    }

    /// Current contents (what a read would return now).
    pub fn image(&self) -> Vec<u8> {
        self.st.data.borrow().clone()
    }

    /// Every completed write and flush so far.
    pub fn events(&self) -> Vec<IoEvent> {
        self.st.log.borrow().clone()
    }

    /// Number of events recorded so far (a position in [`Self::events`]).
    pub fn event_count(&self) -> usize {
        self.st.log.borrow().len()
    }

    pub fn fail_write(&self, nth_from_now: u64) {
        self.st.faults.borrow_mut().write_eio = Some(self.st.writes.get() + nth_from_now);
    }

    pub fn fail_flush(&self, nth_from_now: u64) {
        self.st.faults.borrow_mut().flush_eio = Some(self.st.flushes.get() + nth_from_now);
    }

    /// The n-th write from now persists only its first `keep_sectors`
    /// sectors and then fails with EIO.
    pub fn tear_write(&self, nth_from_now: u64, keep_sectors: usize) {
        self.st.faults.borrow_mut().tear_write =
            Some((self.st.writes.get() + nth_from_now, keep_sectors));
    }

    /// Every I/O from now on takes this long (glommio timer, not a blocking
    /// sleep).
    /// Makes every completed write durable, as on a device opened
    /// `O_DSYNC` (the WAL then acknowledges without flushing).
    pub fn set_durable_writes(&self, on: bool) {
        self.st.durable_writes.set(on);
    }

    /// Writes called so far (counted when a write starts, before its delay).
    pub fn writes_started(&self) -> u64 {
        self.st.writes.get()
    }

    pub fn set_delay(&self, d: Duration) {
        self.st.delay.set(d);
    }

    async fn delay(&self) {
        let d = self.st.delay.get();
        if !d.is_zero() {
            glommio::timer::sleep(d).await;
        }
    }

    fn check_range(&self, pos: u64, len: usize) -> io::Result<()> {
        let aligned =
            pos.is_multiple_of(self.block_size) && (len as u64).is_multiple_of(self.block_size);
        let inside = pos + len as u64 <= self.st.data.borrow().len() as u64;
        if aligned && inside {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unaligned or out of range I/O: {len} bytes at {pos}"),
            ))
        }
    }

    fn eio(what: &str) -> io::Error {
        io::Error::other(format!("injected EIO on {what}"))
    }

    fn apply(&self, pos: u64, data: &[u8]) {
        let start = pos as usize;
        self.st.data.borrow_mut()[start..start + data.len()].copy_from_slice(data);
    }

    async fn do_write(&self, buf: IoBuf, pos: u64) -> io::Result<()> {
        self.check_range(pos, buf.len())?;
        let n = self.st.writes.get();
        self.st.writes.set(n + 1);
        self.delay().await;
        let faults = self.st.faults.borrow().clone();
        if faults.write_eio == Some(n) {
            return Err(Self::eio("write"));
        }
        if let Some((at, keep)) = faults.tear_write {
            if at == n {
                let keep = (keep * SECTOR).min(buf.len());
                self.apply(pos, &buf.as_slice()[..keep]);
                return Err(Self::eio("torn write"));
            }
        }
        self.apply(pos, buf.as_slice());
        let data = Bytes::copy_from_slice(buf.as_slice());
        let mut log = self.st.log.borrow_mut();
        log.push(IoEvent::Write { pos, data });
        if self.st.durable_writes.get() {
            log.push(IoEvent::Flush);
        }
        Ok(())
    }

    async fn do_flush(&self) -> io::Result<()> {
        let n = self.st.flushes.get();
        self.st.flushes.set(n + 1);
        // The barrier covers writes completed before the flush was issued.
        // It goes right after the last of them when it completes: counted
        // in writes, not as an index, since a flush that completes in the
        // meantime is inserted earlier and shifts every index after it.
        let covered = writes_in(&self.st.log.borrow());
        self.delay().await;
        let event = if self.st.faults.borrow().flush_eio == Some(n) {
            IoEvent::FailedFlush
        } else {
            IoEvent::Flush
        };
        let failed = matches!(event, IoEvent::FailedFlush);
        let mut log = self.st.log.borrow_mut();
        let at = after_writes(&log, covered);
        log.insert(at, event);
        if failed {
            return Err(Self::eio("flush"));
        }
        Ok(())
    }
}

impl BlockDevice for MemDevice {
    fn block_size(&self) -> u64 {
        self.block_size
    }

    fn size(&self) -> u64 {
        self.st.data.borrow().len() as u64
    }

    fn alloc(&self, len: usize) -> IoBuf {
        // Garbage, not zeros: callers must not rely on fresh buffers being
        // zeroed (a real DMA buffer may be recycled memory).
        let mut b = IoBuf::heap(len);
        b.as_mut_slice().fill(0xa5);
        b
    }

    fn write_at(&self, buf: IoBuf, pos: u64) -> IoFuture<'_, ()> {
        Box::pin(self.do_write(buf, pos))
    }

    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Bytes> {
        Box::pin(async move {
            self.check_range(pos, len)?;
            self.delay().await;
            let start = pos as usize;
            Ok(Bytes::copy_from_slice(
                &self.st.data.borrow()[start..start + len],
            ))
        })
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(self.do_flush())
    }

    fn durable_writes(&self) -> bool {
        self.st.durable_writes.get()
    }

    fn reopen(&self) -> IoFuture<'_, Rc<dyn BlockDevice>> {
        Box::pin(async move {
            *self.st.faults.borrow_mut() = Faults::default();
            Ok(Rc::new(self.clone()) as Rc<dyn BlockDevice>)
        })
    }
}

fn writes_in(log: &[IoEvent]) -> usize {
    log.iter()
        .filter(|e| matches!(e, IoEvent::Write { .. }))
        .count()
}

/// The index just after the `n`-th write of `log` (0: its start).
fn after_writes(log: &[IoEvent], n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let mut seen = 0;
    for (i, e) in log.iter().enumerate() {
        if matches!(e, IoEvent::Write { .. }) {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    log.len()
}

/// What happens to one write recorded after the barrier in a crash image.
#[derive(Debug, Clone)]
pub enum LateWrite {
    /// Never reached the media.
    Lost,
    /// Reached the media completely.
    Whole,
    /// Only the sectors whose bit is set reached the media.
    Torn(Vec<bool>),
}

/// The contents after a crash: `base` (the image before the recorded run),
/// then every write recorded before event index `barrier` (exclusive; pass
/// the index of a `Flush` event), then the writes after it as `late` says
/// (missing entries are `Lost`).
pub fn crash_image(base: &[u8], events: &[IoEvent], barrier: usize, late: &[LateWrite]) -> Vec<u8> {
    let mut img = base.to_vec();
    let mut put = |pos: u64, data: &[u8]| {
        let start = pos as usize;
        img[start..start + data.len()].copy_from_slice(data);
    };
    let mut late_iter = late.iter();
    for (i, ev) in events.iter().enumerate() {
        let IoEvent::Write { pos, data } = ev else {
            continue;
        };
        if i < barrier {
            put(*pos, data);
            continue;
        }
        match late_iter.next() {
            None | Some(LateWrite::Lost) => {}
            Some(LateWrite::Whole) => put(*pos, data),
            Some(LateWrite::Torn(mask)) => {
                for (s, chunk) in data.chunks(SECTOR).enumerate() {
                    if mask.get(s).copied().unwrap_or(false) {
                        put(*pos + (s * SECTOR) as u64, chunk);
                    }
                }
            }
        }
    }
    img
}
