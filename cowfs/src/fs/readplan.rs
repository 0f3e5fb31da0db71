//! Reads resolved to physical blocks under the pool lock and carried out without it,
//! so that several kernel threads read file data in parallel. Only committed blocks
//! are read this way: until the next commit they cannot be reused, and a commit waits
//! for reads in flight before it lets freed blocks go. Blocks born in the running
//! transaction (which may be rewritten in place) are read under the lock.

use parking_lot::Mutex;

use super::items::*;
use super::{FsResult, FsTree};
use crate::store::device::BlockDevice;

/// Read buffers kept for the next reads, shared by every thread of the process.
/// A cold sequential read through a mount allocated and zeroed 1 MiB per READ
/// request (the allocator's `calloc` zeroes memory it reuses): 9% of the daemon's
/// CPU under perf. A buffer a read fully covers with device blocks is not zeroed
/// again; one with holes is. Kept per process, not per thread: every mount has
/// its own worker threads, and 10 mounts kept 41 MiB in per-thread buffers
/// (tests/control_daemon.rs `mounts_do_not_cost_megabytes_each`).
const SPARE_BUFFERS: usize = 4;
/// Largest buffer kept (a 1 MiB request spanning one more block, plus the
/// alignment block); larger ones go back to the allocator.
const SPARE_MAX_BYTES: usize = (1 << 20) + 2 * BS as usize;

static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of exactly `len` bytes with unspecified (initialized) content: a kept
/// one when it is large enough, else a new one.
fn take_buffer(len: usize) -> Vec<u8> {
    let kept = {
        let mut s = SPARE.lock();
        s.iter()
            .position(|b| b.capacity() >= len)
            .map(|i| s.swap_remove(i))
    };
    let mut buf = kept.unwrap_or_default();
    // Only bytes past the kept length are zeroed here.
    buf.resize(len, 0);
    buf
}

/// Keep `buf` for a later `take_buffer`, if there is room.
fn keep_buffer(buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > SPARE_MAX_BYTES {
        return;
    }
    let mut s = SPARE.lock();
    if s.len() < SPARE_BUFFERS {
        s.push(buf);
    }
}

/// One run of data blocks to read: where it goes in the buffer (in blocks), where it
/// lies on the device, and the CRC32 of each block.
#[derive(Clone, Debug)]
pub struct Piece {
    pub at: u64,
    pub phys: u64,
    pub crcs: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct ReadPlan {
    blocks: u64,
    skip: usize,
    len: usize,
    pieces: Vec<Piece>,
}

pub enum Resolved {
    /// Already read (inline data, holes only, or blocks of the running transaction).
    Done(Vec<u8>),
    /// Committed blocks to read without the lock.
    Plan(ReadPlan),
}

/// Bytes read from a file: a block-aligned buffer and the requested range of it.
pub struct FileBytes {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl FileBytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    pub fn into_vec(mut self) -> Vec<u8> {
        if self.start == 0 {
            let mut buf = std::mem::take(&mut self.buf);
            buf.truncate(self.len);
            buf
        } else {
            self.as_slice().to_vec()
        }
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        keep_buffer(std::mem::take(&mut self.buf));
    }
}

impl From<Vec<u8>> for FileBytes {
    fn from(buf: Vec<u8>) -> FileBytes {
        let len = buf.len();
        FileBytes { buf, start: 0, len }
    }
}

impl ReadPlan {
    /// Read and verify. `None` if anything looks wrong (I/O error, checksum, bounds):
    /// the caller then repeats the read under the lock, which reports the error.
    pub fn execute(&self, dev: &dyn BlockDevice) -> Option<FileBytes> {
        // One spare block so that the blocks start at a block-aligned address, which
        // lets the device read them directly (`BlockDevice::read_data_at`).
        let size = (self.blocks * BS) as usize;
        let mut buf = take_buffer(size + BS as usize);
        let pad = buf.as_ptr().align_offset(BS as usize);
        // A kept buffer holds an earlier read's bytes (another file's, another
        // branch's): what no piece covers (holes, unwritten extents) must read as
        // zeros.
        let covered: u64 = self.pieces.iter().map(|p| p.crcs.len() as u64).sum();
        if covered < self.blocks {
            buf[pad..pad + size].fill(0);
        }
        let end_of_device = dev.len_blocks();
        for p in &self.pieces {
            let n = p.crcs.len() as u64;
            if p.phys + n > end_of_device {
                return None;
            }
            let dst = &mut buf[pad + (p.at * BS) as usize..pad + ((p.at + n) * BS) as usize];
            dev.read_data_at(p.phys, dst).ok()?;
            for (block, crc) in dst.chunks(BS as usize).zip(&p.crcs) {
                if crc32fast::hash(block) != *crc {
                    return None;
                }
            }
        }
        Some(FileBytes {
            buf,
            start: pad + self.skip,
            len: self.len,
        })
    }
}

impl FsTree<'_> {
    /// Resolve a read of up to `len` bytes at `off`.
    pub fn plan_read(&mut self, ino: u64, off: u64, len: usize) -> FsResult<Resolved> {
        let i = self.inode(ino)?;
        if !i.is_reg()
            || off >= i.size
            || len == 0
            || self
                .get(&crate::btree::Key::new(ino, KIND_INLINE, 0))?
                .is_some()
        {
            return self.read(ino, off, len).map(Resolved::Done);
        }
        let end = (off + len as u64).min(i.size);
        let (b0, b1) = (off / BS, end.div_ceil(BS));
        let mut pieces: Vec<Piece> = Vec::new();
        for (start, e) in self.extents_in(ino, b0, b1)? {
            if e.unwritten() {
                continue;
            }
            let s = start.max(b0);
            let t = (start + e.len()).min(b1);
            let phys = e.phys + (s - start);
            if (phys..phys + (t - s)).any(|b| self.st.space.is_fresh(b)) {
                return self.read(ino, off, len).map(Resolved::Done);
            }
            let crcs = &e.crcs[(s - start) as usize..(t - start) as usize];
            // Extents that continue each other on the device are read as one run:
            // a sequential write lays consecutive extents out back to back, and one
            // large direct read beats several small ones.
            match pieces.last_mut() {
                Some(p)
                    if p.at + p.crcs.len() as u64 == s - b0
                        && p.phys + p.crcs.len() as u64 == phys =>
                {
                    p.crcs.extend_from_slice(crcs)
                }
                _ => pieces.push(Piece {
                    at: s - b0,
                    phys,
                    crcs: crcs.to_vec(),
                }),
            }
        }
        Ok(Resolved::Plan(ReadPlan {
            blocks: b1 - b0,
            skip: (off - b0 * BS) as usize,
            len: (end - off) as usize,
            pieces,
        }))
    }
}
