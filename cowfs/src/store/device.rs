//! The block device seam: a pool lives on anything that can read, write and flush
//! 4 KiB blocks. `FileDevice` serves regular files and block devices; `MemDevice` and
//! `RecordingDevice` serve tests (the latter records every write and flush so a test
//! can rebuild the image a power cut would leave).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::flush_handles::FlushHandles;
use super::{BlockAddr, BLOCK_SIZE};

pub trait BlockDevice: Send + Sync {
    /// Read whole blocks starting at `addr` into `buf` (a multiple of BLOCK_SIZE).
    /// Bytes past the end of the device read as zero; `len_blocks` tells callers the end.
    fn read_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()>;
    /// Write whole blocks starting at `addr`.
    fn write_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()>;
    /// Read file data blocks (`read_at` semantics). A device may bypass its host's
    /// page cache here when `buf` is block-aligned in memory: the caller verifies
    /// every block's checksum and the FUSE page cache keeps what readers reuse.
    fn read_data_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_at(addr, buf)
    }
    /// Write file data blocks (`write_at` semantics; durable after `flush` like any
    /// write). A device may bypass its host's page cache for large writes.
    fn write_data_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()> {
        self.write_at(addr, buf)
    }
    /// Have the host give blocks `[from, from + blocks)` (free, past the end of a
    /// pool file) their storage now, before the allocator hands them out (see
    /// `NodeStore::back_ahead`). Returns whether it did. Only a sparse pool file has
    /// anything to do (`is_sparse`); the contents of those blocks are not part of
    /// any state.
    fn back(&self, _from: BlockAddr, _blocks: u64) -> bool {
        false
    }
    /// Whether blocks past the end have no storage yet (a pool file).
    fn is_sparse(&self) -> bool {
        false
    }
    /// Make every completed write durable.
    fn flush(&self) -> std::io::Result<()>;
    /// Whether no flush of this device can succeed beside or after a failed one
    /// (a `FlushGate`, or a device whose every flush is told of every write-back
    /// error itself). Pools wrap a device that does not in a `FlushGate`.
    fn flush_errors_reach_every_flush(&self) -> bool {
        false
    }
    /// Current length in blocks (a pool file grows as blocks are written).
    fn len_blocks(&self) -> u64;
    /// Physical capacity limit in blocks, if the medium has one (block devices).
    fn fixed_capacity(&self) -> Option<u64>;
    /// Free bytes on the medium below the pool (the host filesystem of a pool file).
    fn host_free_bytes(&self) -> Option<u64>;
    /// Path or name used in error messages.
    fn name(&self) -> PathBuf;
}

/// A regular file (sparse, grows as needed) or a block device.
pub struct FileDevice {
    file: File,
    /// The same file opened with O_DIRECT for file data, when the host filesystem
    /// supports it (tmpfs does not). Buffered reads copied every byte from the host
    /// page cache into the daemon (perf: 62% of the daemon's CPU in a cold
    /// sequential read; direct reads of this VM's disk ran 2.2 vs 0.83 GB/s), and
    /// buffered writes copied every byte into it (47% of a sequential write), while
    /// the mount's own page cache already holds what readers reuse. Linux writes
    /// back and drops cached pages of a range around a direct read or write of it,
    /// so buffered and direct access of the same blocks stay coherent, and
    /// `flush` (fdatasync) covers direct writes too (it flushes the device cache).
    direct: Option<File>,
    /// The descriptions `flush` goes through (flush_handles.rs).
    flushes: FlushHandles,
    path: PathBuf,
    is_blockdev: bool,
    /// Length in bytes, kept here: the allocator asks on every data allocation,
    /// and nothing but this device changes the file (the pool is locked).
    len: AtomicU64,
    /// The host's free space as last asked (see `host_free_bytes`).
    host_free: Mutex<(u64, Instant)>,
    /// Bytes written since then.
    written_since: AtomicU64,
}

/// Data writes of at least this size bypass the host page cache (`direct`): a
/// sequential write's runs (up to 256 KiB). Smaller ones (database pages, random
/// 4 KiB writes) stay buffered: a direct write waits for the disk under the pool
/// lock, while buffered ones reach the disk together at the next flush.
const DIRECT_WRITE_MIN: usize = 128 << 10;

/// A pool file backs blocks ahead of the allocator (`BlockDevice::back`) only while
/// the host keeps this much free beyond them: near full, the room is the writers'.
pub(crate) const BACK_HOST_MIN: u64 = 1 << 30;

/// How long an answer of the host's free space is reused...
const HOST_FREE_TTL: Duration = Duration::from_millis(100);
/// ...unless the estimate is this low, where it is asked every time.
const HOST_FREE_EXACT_BELOW: u64 = 1 << 30;

impl FileDevice {
    pub fn open(path: &Path, create: bool) -> std::io::Result<FileDevice> {
        FileDevice::open_with(path, create, true)
    }

    /// Open an existing pool file or device with O_RDONLY (both handles), for a
    /// check that must not change it: a write through it fails (EBADF) whatever
    /// the engine does, and it opens a file the caller may only read (mode 0444
    /// for a user, `chattr +i`, a read-only mount).
    pub fn open_read_only(path: &Path) -> std::io::Result<FileDevice> {
        FileDevice::open_with(path, false, false)
    }

    fn open_with(path: &Path, create: bool, writable: bool) -> std::io::Result<FileDevice> {
        use std::os::unix::fs::OpenOptionsExt;
        // A new pool file is the owner's alone: it holds every branch's data, personal
        // data of production included, whatever the files' own modes say.
        use std::os::unix::fs::FileTypeExt;
        let on_blockdev = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        let mut open = OpenOptions::new();
        open.read(true).write(writable);
        if on_blockdev {
            // O_EXCL claims a block device: the open fails with EBUSY while a
            // filesystem is mounted from it or another process has claimed it, such
            // as a cowfs daemon that opened it under another name (a lock file,
            // named after the path, would not see /dev/disk/by-id/X and /dev/sdb as
            // one pool). The O_DIRECT handle below is opened without: the claim is
            // per open file, so it would conflict with this one. A read-only open
            // claims it too: a check of a device a daemon is writing would check
            // a moving target.
            open.custom_flags(libc::O_EXCL);
        } else if writable {
            open.create(create).truncate(false).mode(0o600);
        }
        let file = open.open(path).map_err(|e| {
            if on_blockdev && e.raw_os_error() == Some(libc::EBUSY) {
                std::io::Error::new(
                    e.kind(),
                    "the device is in use (a filesystem is mounted from it, or another \
                     process such as a cowfs daemon has it open exclusively)",
                )
            } else {
                e
            }
        })?;
        let meta = file.metadata()?;
        let is_blockdev = meta.file_type().is_block_device();
        let len = if is_blockdev {
            use std::io::{Seek, SeekFrom};
            // Seeking a cloned handle to the end gives a block device's size.
            file.try_clone()?.seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        let direct = {
            let mut o = OpenOptions::new();
            o.read(true).write(writable).custom_flags(libc::O_DIRECT);
            reopen(&file, path, &o).ok()
        };
        // No O_EXCL: the claim is this process's already (see above).
        let mut o = OpenOptions::new();
        o.read(true).write(writable);
        let flushes = FlushHandles::open(|| reopen(&file, path, &o))?;
        if let Some(e) = flushes.take_error_from_before_open() {
            log::warn!(
                "{}: a write-back error from before this open ({e}): what was written \
                 since the last flush before it may not have reached the medium; the pool \
                 opens at its last commit that did",
                path.display()
            );
        }
        // After that flush: a page the previous writer left dirty is now written
        // out or failed, and either way clean.
        drop_clean_pages(&file);
        let dev = FileDevice {
            file,
            direct,
            flushes,
            path: path.to_path_buf(),
            is_blockdev,
            len: AtomicU64::new(len),
            host_free: Mutex::new((0, Instant::now())),
            written_since: AtomicU64::new(0),
        };
        if !is_blockdev {
            dev.query_host_free();
        }
        Ok(dev)
    }

    /// Whether the file or device holds no bytes at all (`len_blocks` rounds a
    /// file shorter than a block down to 0).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    /// fstatvfs of the host filesystem; remembers the answer.
    fn query_host_free(&self) -> Option<u64> {
        let free = host_free(&self.file).ok()?;
        *self.host_free.lock() = (free, Instant::now());
        self.written_since.store(0, Ordering::Relaxed);
        Some(free)
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `file`.
fn host_free(file: &File) -> std::io::Result<u64> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: fstatvfs writes into a zeroed, properly sized struct; fd is valid.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::fstatvfs(file.as_raw_fd(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// Another open file description of `file`'s own file or device, with `opts`:
/// through /proc/self/fd, not `path`, so that a pool file renamed over (or a
/// device symlink re-pointed) between two opens cannot give the data handle or
/// a flush's description another file (a flush of the wrong file would
/// acknowledge writes it never covered). `path` only where /proc is missing;
/// either way the result is checked to be the same file.
fn reopen(file: &File, path: &Path, opts: &OpenOptions) -> std::io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let other = match opts.open(&by_fd) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => opts.open(path)?,
        r => r?,
    };
    let (a, b) = (file.metadata()?, other.metadata()?);
    if (a.dev(), a.ino(), a.rdev()) != (b.dev(), b.ino(), b.rdev()) {
        return Err(std::io::Error::other(format!(
            "{} was replaced while it was being opened",
            path.display()
        )));
    }
    Ok(other)
}

/// Drop the host's cached pages of the pool (those not dirty) before anything is
/// read: after a failed write-back Linux keeps the pages it could not write as
/// clean and up to date, so a reopen in the same boot (a daemon restarted after
/// its pool went read-only) would read a superblock, manifest blocks or log
/// records that never reached the disk, accept a commit that is not there, and
/// build on it. Read from the medium, such a commit fails its manifest check and
/// the previous one opens. Advice only: an error changes nothing else.
fn drop_clean_pages(file: &File) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: posix_fadvise takes plain integers; the descriptor is open.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        log::debug!(
            "posix_fadvise(DONTNEED) of the pool: {}",
            std::io::Error::from_raw_os_error(r)
        );
    }
}

/// Write zeros into every hole of the pool file at `path` below `bytes`, then flush:
/// `cowfs init --preallocate`. A sparse pool file makes the host filesystem allocate
/// blocks as the pool first writes them, and every fsync that lands in new blocks
/// then also writes the host's allocation metadata (measured on a fresh 2 GiB pool:
/// an 8 KiB write + fdatasync loop ran at 2,979-3,129/s sparse, 5,057-5,482/s
/// preallocated).
/// Blocks already written are left alone (`SEEK_HOLE`/`SEEK_DATA`). Not for a pool
/// in use: a hole found here may be written by the pool before the zeros land on
/// it (the CLI runs it on a closed pool, under its lock file). Fails before
/// writing anything if the host has not the room.
/// Returns the bytes written.
pub fn preallocate_file(path: &Path, bytes: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other(
            "only a pool file can be preallocated (a block device has its blocks)",
        ));
    }
    let fd = file.as_raw_fd();
    let seek = |off: u64, whence: i32| -> Option<u64> {
        let off = i64::try_from(off).ok()?;
        // SAFETY: lseek takes plain integers; fd stays open for the call.
        let r = unsafe { libc::lseek(fd, off, whence) };
        u64::try_from(r).ok()
    };
    let len = file.metadata()?.len();
    // The holes below `bytes`: past the end everything is one; below it, lseek finds
    // them (ENXIO from SEEK_DATA: no data after, a hole to the end).
    let mut holes = Vec::new();
    let mut off = 0;
    while off < bytes {
        let hole = if off >= len {
            off
        } else {
            seek(off, libc::SEEK_HOLE).unwrap_or(len)
        };
        if hole >= bytes {
            break;
        }
        let end = if hole >= len {
            bytes
        } else {
            seek(hole, libc::SEEK_DATA).unwrap_or(bytes)
        };
        let end = end.min(bytes);
        holes.push((hole, end));
        off = end;
    }
    let need: u64 = holes.iter().map(|(a, b)| b - a).sum();
    let free = host_free(&file)?;
    if need > free {
        return Err(std::io::Error::other(format!(
            "preallocating needs {} MiB, the host filesystem has {} MiB free",
            need >> 20,
            free >> 20
        )));
    }
    let zeros = vec![0u8; 1 << 20];
    for (mut at, end) in holes {
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
    }
    file.sync_all()?;
    Ok(need)
}

impl BlockDevice for FileDevice {
    fn read_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        let base = addr * BLOCK_SIZE as u64;
        while done < buf.len() {
            let n = self.file.read_at(&mut buf[done..], base + done as u64)?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }
    fn read_data_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        let aligned = (buf.as_ptr() as usize).is_multiple_of(BLOCK_SIZE)
            && buf.len().is_multiple_of(BLOCK_SIZE);
        let Some(direct) = self.direct.as_ref().filter(|_| aligned) else {
            return self.read_at(addr, buf);
        };
        let base = addr * BLOCK_SIZE as u64;
        let mut done = 0;
        while done < buf.len() {
            match direct.read_at(&mut buf[done..], base + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                // A direct read returns whole blocks short only at the end of the file.
                Ok(n) => done += n,
                // Some filesystems refuse direct I/O only at read time.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return self.read_at(addr, buf);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    fn write_data_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()> {
        let Some(direct) = self
            .direct
            .as_ref()
            .filter(|_| buf.len() >= DIRECT_WRITE_MIN)
        else {
            return self.write_at(addr, buf);
        };
        // O_DIRECT needs a block-aligned source; a FUSE request's payload is not.
        let mut aligned: Vec<u8> = Vec::with_capacity(buf.len() + BLOCK_SIZE);
        aligned.resize(aligned.as_ptr().align_offset(BLOCK_SIZE), 0u8);
        let pad = aligned.len();
        aligned.extend_from_slice(buf);
        let at = addr * BLOCK_SIZE as u64;
        match direct.write_all_at(&aligned[pad..], at) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return self.write_at(addr, buf),
            r => r?,
        }
        self.len.fetch_max(at + buf.len() as u64, Ordering::Relaxed);
        self.written_since
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn write_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()> {
        let at = addr * BLOCK_SIZE as u64;
        self.file.write_all_at(buf, at)?;
        self.len.fetch_max(at + buf.len() as u64, Ordering::Relaxed);
        self.written_since
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    /// Zeros, buffered, so that the host allocates the blocks now and in one piece
    /// (as PostgreSQL zero-fills a WAL segment before using it): an `fsync` that
    /// lands in blocks the host already holds writes no allocation metadata (the
    /// figures are at `preallocate_file`). Writeback starts at once, so the next
    /// flush finds little left to write.
    fn back(&self, from: BlockAddr, blocks: u64) -> bool {
        let bytes = blocks * BLOCK_SIZE as u64;
        if !self.is_sparse()
            || self
                .host_free_bytes()
                .is_none_or(|f| f < bytes + BACK_HOST_MIN)
        {
            return false;
        }
        let zeros = vec![0u8; bytes as usize];
        if let Err(e) = self.write_at(from, &zeros) {
            log::debug!("{}: backing blocks ahead: {e}", self.path.display());
            return false;
        }
        use std::os::unix::io::AsRawFd;
        // SAFETY: sync_file_range takes plain integers; the fd stays open for the call.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                (from * BLOCK_SIZE as u64) as i64,
                bytes as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        true
    }
    fn is_sparse(&self) -> bool {
        !self.is_blockdev
    }
    fn flush(&self) -> std::io::Result<()> {
        self.flushes.flush()
    }
    fn flush_errors_reach_every_flush(&self) -> bool {
        true
    }
    fn len_blocks(&self) -> u64 {
        self.len.load(Ordering::Relaxed) / BLOCK_SIZE as u64
    }
    fn fixed_capacity(&self) -> Option<u64> {
        self.is_blockdev.then(|| self.len_blocks())
    }
    /// Asked on every data allocation, so answered from the last fstatvfs (at most
    /// `HOST_FREE_TTL` old) minus every byte written since, which can only
    /// underestimate; near full it asks every time.
    fn host_free_bytes(&self) -> Option<u64> {
        if self.is_blockdev {
            return None;
        }
        let (free, at) = *self.host_free.lock();
        let estimate = free.saturating_sub(self.written_since.load(Ordering::Relaxed));
        if at.elapsed() < HOST_FREE_TTL && estimate >= HOST_FREE_EXACT_BELOW {
            return Some(estimate);
        }
        self.query_host_free()
    }
    fn name(&self) -> PathBuf {
        self.path.clone()
    }
}

/// What a recording device has seen: every write in order, with flush markers.
#[derive(Clone, Debug)]
pub enum DeviceEvent {
    Write { addr: BlockAddr, data: Vec<u8> },
    Flush,
}

/// An in-memory device. With recording on, it keeps a log of writes and flushes
/// (tests rebuild crash images from it and count blocks written by an operation).
#[derive(Clone, Default)]
pub struct MemDevice {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    blocks: Vec<Option<Box<[u8]>>>,
    log: Option<Vec<DeviceEvent>>,
    capacity: Option<u64>,
    fail_flush: bool,
    writes: u64,
}

impl MemDevice {
    pub fn new() -> MemDevice {
        MemDevice::default()
    }
    /// A device with a fixed size, as a block device has.
    pub fn with_capacity(blocks: u64) -> MemDevice {
        let d = MemDevice::default();
        d.inner.lock().capacity = Some(blocks);
        d
    }
    /// Start (or restart) recording writes and flushes.
    pub fn start_recording(&self) {
        self.inner.lock().log = Some(Vec::new());
    }
    /// Events recorded so far. A test notes it when an fsync returns: every write
    /// and flush that fsync needed comes before that position in the log.
    pub fn log_len(&self) -> usize {
        self.inner.lock().log.as_ref().map_or(0, Vec::len)
    }
    pub fn take_log(&self) -> Vec<DeviceEvent> {
        self.inner.lock().log.take().unwrap_or_default()
    }
    /// Number of blocks written since creation.
    pub fn blocks_written(&self) -> u64 {
        self.inner.lock().writes
    }
    /// Make every later flush fail (a dying disk).
    pub fn set_fail_flush(&self, fail: bool) {
        self.inner.lock().fail_flush = fail;
    }
    /// A deep copy of the current contents (no log).
    pub fn snapshot(&self) -> MemDevice {
        let g = self.inner.lock();
        MemDevice {
            inner: Arc::new(Mutex::new(MemInner {
                blocks: g.blocks.clone(),
                log: None,
                capacity: g.capacity,
                fail_flush: false,
                writes: 0,
            })),
        }
    }
    /// Apply a recorded write directly (used to build crash images).
    pub fn apply(&self, addr: BlockAddr, data: &[u8]) {
        let mut g = self.inner.lock();
        store_blocks(&mut g.blocks, addr, data);
    }
    /// Overwrite one byte (corruption tests).
    pub fn flip_byte(&self, addr: BlockAddr, off: usize) {
        let mut g = self.inner.lock();
        let idx = addr as usize;
        if g.blocks.len() <= idx {
            g.blocks.resize(idx + 1, None);
        }
        let b = g.blocks[idx].get_or_insert_with(|| vec![0u8; BLOCK_SIZE].into_boxed_slice());
        b[off] ^= 0xff;
    }
    /// Drop everything from `blocks` on (a truncated pool).
    pub fn truncate(&self, blocks: u64) {
        self.inner.lock().blocks.truncate(blocks as usize);
    }
}

fn store_blocks(blocks: &mut Vec<Option<Box<[u8]>>>, addr: BlockAddr, data: &[u8]) {
    for (i, chunk) in data.chunks(BLOCK_SIZE).enumerate() {
        let idx = addr as usize + i;
        if blocks.len() <= idx {
            blocks.resize(idx + 1, None);
        }
        let mut b = vec![0u8; BLOCK_SIZE].into_boxed_slice();
        b[..chunk.len()].copy_from_slice(chunk);
        blocks[idx] = Some(b);
    }
}

impl BlockDevice for MemDevice {
    fn read_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        let g = self.inner.lock();
        for (i, chunk) in buf.chunks_mut(BLOCK_SIZE).enumerate() {
            match g.blocks.get(addr as usize + i) {
                Some(Some(b)) => chunk.copy_from_slice(&b[..chunk.len()]),
                _ => chunk.fill(0),
            }
        }
        Ok(())
    }
    fn write_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()> {
        let mut g = self.inner.lock();
        let end = addr + buf.len().div_ceil(BLOCK_SIZE) as u64;
        if let Some(cap) = g.capacity {
            if end > cap {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        g.writes += buf.len().div_ceil(BLOCK_SIZE) as u64;
        if let Some(log) = g.log.as_mut() {
            log.push(DeviceEvent::Write {
                addr,
                data: buf.to_vec(),
            });
        }
        store_blocks(&mut g.blocks, addr, buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        let mut g = self.inner.lock();
        if g.fail_flush {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        if let Some(log) = g.log.as_mut() {
            log.push(DeviceEvent::Flush);
        }
        Ok(())
    }
    fn len_blocks(&self) -> u64 {
        let g = self.inner.lock();
        g.capacity.unwrap_or(g.blocks.len() as u64)
    }
    fn fixed_capacity(&self) -> Option<u64> {
        self.inner.lock().capacity
    }
    fn host_free_bytes(&self) -> Option<u64> {
        None
    }
    fn name(&self) -> PathBuf {
        PathBuf::from("<memory>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(seed: u8, blocks: usize) -> Vec<u8> {
        (0..blocks * BLOCK_SIZE)
            .map(|i| seed.wrapping_add((i / 7) as u8))
            .collect()
    }

    /// Aligned read buffer, as `ReadPlan::execute` makes one.
    fn read_data(dev: &FileDevice, addr: BlockAddr, blocks: usize) -> Vec<u8> {
        let mut buf = vec![0u8; (blocks + 1) * BLOCK_SIZE];
        let pad = buf.as_ptr().align_offset(BLOCK_SIZE);
        dev.read_data_at(addr, &mut buf[pad..pad + blocks * BLOCK_SIZE])
            .unwrap();
        buf[pad..pad + blocks * BLOCK_SIZE].to_vec()
    }

    /// A pool file is created readable by its owner only (mode 0600, whatever the
    /// umask allows), and an existing file's mode is left alone.
    #[test]
    fn new_pool_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        FileDevice::open(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        FileDevice::open(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    /// The data handle and the flushes' descriptions are opened through the
    /// first handle's descriptor: a file renamed over the pool's path between the
    /// opens is not the one they reach (by path, they reached the new file).
    #[test]
    fn reopen_reaches_the_file_opened_not_the_path() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let first = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"not the pool").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        reopen(&first, &path, &o)
            .unwrap()
            .write_all_at(b"pool", 0)
            .unwrap();
        let mut back = [0u8; 4];
        first.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"pool", "written to the file first opened");
        assert_eq!(std::fs::read(&path).unwrap(), b"not the pool");
    }

    /// Pages of the pool file in the host's page cache (mincore of a mapping).
    fn resident_pages(path: &Path, len: usize) -> usize {
        use std::os::unix::io::AsRawFd;
        let f = File::open(path).unwrap();
        let pages = len.div_ceil(4096);
        let mut vec = vec![0u8; pages];
        // SAFETY: a shared read-only mapping of `len` bytes of an open file, only
        // passed to mincore and unmapped before `f` is dropped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::mincore(p, len, vec.as_mut_ptr()), 0);
            libc::munmap(p, len);
        }
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    /// Opening a pool drops the host's clean cached pages of it, so that what
    /// open reads comes from the disk (after a failed write-back the pages that
    /// never landed stay cached as clean: see `drop_clean_pages`).
    #[test]
    fn open_drops_the_cached_pages_of_the_pool() {
        use std::os::unix::fs::FileExt;
        // On the disk, not tmpfs, where pages are the storage and stay.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("pool");
        let f = File::create(&path).unwrap();
        f.write_all_at(&[5u8; 1 << 20], 0).unwrap();
        f.sync_all().unwrap();
        drop(f);
        assert!(resident_pages(&path, 1 << 20) > 200, "written pages cached");
        FileDevice::open(&path, false).unwrap();
        assert_eq!(resident_pages(&path, 1 << 20), 0);
        let mut back = vec![0u8; 4096];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut back, 4096)
            .unwrap();
        assert_eq!(back, [5u8; 4096]);
    }

    /// Preallocation fills the holes below the size asked for with written zeros
    /// and leaves written blocks alone.
    #[test]
    fn preallocation_fills_holes_only() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let f = std::fs::File::create(&path).unwrap();
        f.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
        drop(f);
        let n = preallocate_file(&path, 4 << 20).unwrap();
        assert_eq!(n, (4 << 20) - 4096);
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.len(), 4 << 20);
        assert!(md.blocks() * 512 >= 4 << 20, "{} blocks", md.blocks());
        let f = std::fs::File::open(&path).unwrap();
        let mut back = vec![0u8; 4096];
        f.read_exact_at(&mut back, 1 << 20).unwrap();
        assert_eq!(back, [7u8; 4096]);
        // Nothing left to write the second time.
        assert_eq!(preallocate_file(&path, 4 << 20).unwrap(), 0);
    }

    /// Direct (large) and buffered (small) writes of the same blocks, read both
    /// ways, always give the last write: on a host filesystem with O_DIRECT (the
    /// temp dir) and on one without it (tmpfs, where everything stays buffered).
    #[test]
    fn direct_and_buffered_access_stay_coherent() {
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            dirs.push(shm);
        }
        for dir in &dirs {
            let dev = FileDevice::open(&dir.path().join("pool"), true).unwrap();
            let a = pattern(1, 64);
            dev.write_data_at(10, &a).unwrap();
            assert!(dev.len_blocks() >= 74);
            assert_eq!(read_data(&dev, 10, 64), a);
            let mut buffered = vec![0u8; 64 * BLOCK_SIZE];
            dev.read_at(10, &mut buffered).unwrap();
            assert_eq!(buffered, a);
            // A small (buffered, still dirty) write inside, read directly.
            let b = pattern(2, 1);
            dev.write_data_at(12, &b).unwrap();
            let mut want = a.clone();
            want[2 * BLOCK_SIZE..3 * BLOCK_SIZE].copy_from_slice(&b);
            assert_eq!(read_data(&dev, 10, 64), want);
            // A large write over the dirty block, read through the page cache.
            let c = pattern(3, 64);
            dev.write_data_at(10, &c).unwrap();
            dev.read_at(10, &mut buffered).unwrap();
            assert_eq!(buffered, c, "{}", dir.path().display());
            dev.flush().unwrap();
            assert_eq!(read_data(&dev, 10, 64), c);
        }
    }
}
