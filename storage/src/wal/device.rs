//! The seam between a WAL slice and the storage under it: [`BlockDevice`]
//! (aligned reads and writes, flush, size) and its real implementation
//! [`DmaDevice`], a glommio `DmaFile` opened with `O_DIRECT` on the WAL file or
//! raw block device. Lives on one shard's core (`Rc`, not `Send`); every call
//! goes through io_uring and never blocks the core. The in-memory test
//! implementation is in `mem_device`.

use std::{future::Future, io, path::PathBuf, pin::Pin, rc::Rc};

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

/// Future returned by [`BlockDevice`] methods (boxed so the trait can be used
/// as `dyn`; one allocation per I/O is noise next to the I/O itself).
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + 'a>>;

/// Aligned block storage as the WAL slice sees it. Positions and lengths
/// passed to `read_at`/`write_at` are multiples of [`BlockDevice::block_size`].
pub trait BlockDevice {
    /// Smallest aligned I/O unit (logical sector size) of the device.
    fn block_size(&self) -> u64;
    /// Usable size in bytes.
    fn size(&self) -> u64;
    /// A buffer suitable for `write_at` (DMA-aligned for real devices). Its
    /// contents are unspecified: the caller writes or zeroes every byte (the
    /// append path fills it with records, so zeroing it first would be a
    /// wasted pass over every byte written).
    fn alloc(&self, len: usize) -> IoBuf;
    /// Writes all of `buf` at `pos`; a short write is an error.
    fn write_at(&self, buf: IoBuf, pos: u64) -> IoFuture<'_, ()>;
    /// Reads exactly `len` bytes at `pos`.
    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Bytes>;
    /// Makes every write that completed before this call durable.
    fn flush(&self) -> IoFuture<'_, ()>;
    /// Whether a write is durable once it completes (the device was opened
    /// `O_DSYNC`): then the WAL acknowledges after the write alone, with no
    /// flush.
    fn durable_writes(&self) -> bool {
        false
    }
    /// A fresh handle on the same storage (after a failure the old handle's
    /// state, e.g. a file descriptor with a sticky error, is not trusted).
    fn reopen(&self) -> IoFuture<'_, Rc<dyn BlockDevice>>;
}

/// A write buffer owned by the I/O while it runs.
pub struct IoBuf(IoBufKind);

enum IoBufKind {
    Dma(DmaBuffer),
    Heap(Box<[u8]>),
}

impl IoBuf {
    pub fn heap(len: usize) -> IoBuf {
        IoBuf(IoBufKind::Heap(vec![0u8; len].into_boxed_slice()))
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            IoBufKind::Dma(b) => b.as_bytes(),
            IoBufKind::Heap(b) => b,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.0 {
            IoBufKind::Dma(b) => b.as_bytes_mut(),
            IoBufKind::Heap(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The WAL file or raw block device through glommio's `DmaFile`.
pub struct DmaDevice {
    file: DmaFile,
    path: PathBuf,
    size: u64,
    block_size: u64,
    dsync: bool,
}

impl DmaDevice {
    /// Opens `path` read-write with `O_DIRECT` set explicitly (glommio would
    /// not set it for a block device node, which lives on devtmpfs).
    /// `size` and `block_size` come from the WAL layout (ioctl for devices).
    pub async fn open(path: PathBuf, size: u64, block_size: u64) -> io::Result<DmaDevice> {
        DmaDevice::open_with(path, size, block_size, false).await
    }

    /// [`DmaDevice::open`], with `O_DSYNC` too when `dsync`: each write is
    /// then durable when it completes (the kernel issues it with FUA or
    /// follows it with a cache flush), one I/O instead of a write and an
    /// fdatasync.
    pub async fn open_with(
        path: PathBuf,
        size: u64,
        block_size: u64,
        dsync: bool,
    ) -> io::Result<DmaDevice> {
        let flags = libc::O_DIRECT | if dsync { libc::O_DSYNC } else { 0 };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .dma_open(&path)
            .await
            .map_err(io::Error::from)?;
        Ok(DmaDevice {
            file,
            path,
            size,
            block_size,
            dsync,
        })
    }
}

impl BlockDevice for DmaDevice {
    fn block_size(&self) -> u64 {
        self.block_size.max(self.file.alignment())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn alloc(&self, len: usize) -> IoBuf {
        IoBuf(IoBufKind::Dma(self.file.alloc_dma_buffer(len)))
    }

    fn write_at(&self, buf: IoBuf, pos: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let len = buf.len();
            let dma = match buf.0 {
                IoBufKind::Dma(b) => b,
                IoBufKind::Heap(h) => {
                    // Only reached if a caller built a heap buffer for a real
                    // device; the copy keeps O_DIRECT alignment rules.
                    let mut b = self.file.alloc_dma_buffer(h.len());
                    b.as_bytes_mut().copy_from_slice(&h);
                    b
                }
            };
            // Submitted at once: a produce waits for this write, and the
            // executor's pass may still run other tasks (vendor/glommio).
            let n = self
                .file
                .write_at_now(dma, pos)
                .await
                .map_err(io::Error::from)?;
            if n != len {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {n} of {len} bytes at {pos}"),
                ));
            }
            Ok(())
        })
    }

    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Bytes> {
        Box::pin(async move {
            let r = self
                .file
                .read_at_aligned(pos, len)
                .await
                .map_err(io::Error::from)?;
            if r.len() != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read: {} of {len} bytes at {pos}", r.len()),
                ));
            }
            // One copy out of the DMA buffer: recovered bodies are handed to
            // the broker as `Bytes` that outlive the read.
            Ok(Bytes::copy_from_slice(&r))
        })
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async move { self.file.fdatasync().await.map_err(io::Error::from) })
    }

    fn durable_writes(&self) -> bool {
        self.dsync
    }

    fn reopen(&self) -> IoFuture<'_, Rc<dyn BlockDevice>> {
        Box::pin(async move {
            let d = DmaDevice::open_with(self.path.clone(), self.size, self.block_size, self.dsync)
                .await?;
            Ok(Rc::new(d) as Rc<dyn BlockDevice>)
        })
    }
}
