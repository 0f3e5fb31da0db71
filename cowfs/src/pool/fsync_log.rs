//! Fast fsync (format-spec §8.1): an `fsync` of a file whose changes since the last
//! commit are all data writes (and time updates) appends one intent log record
//! naming the blocks those writes went to, and flushes, instead of committing the
//! whole transaction. The next commit makes the records obsolete; opening the pool
//! after a crash applies the records written against its last commit, then commits.

use rustc_hash::{FxHashMap, FxHashSet};

use super::BranchId;
use super::{Engine, PoolResult};
use crate::fs::FsResult;
use crate::store::device::BlockDevice;
use crate::store::intent_log::{LogRecord, MAX_RECORD_BLOCKS};
use crate::store::spacemap::FIRST_USABLE;
use crate::store::superblock::LOG_MAX_BLOCKS;
use crate::store::{BlockAddr, StoreError, BLOCK_SIZE};

const BS: u64 = BLOCK_SIZE as u64;

/// Blocks of the log region a new pool gets: one record per block, so this many
/// fsyncs between commits (the daemon commits every few seconds anyway), scaled
/// down for small pools.
fn region_blocks(capacity: u64) -> u64 {
    (capacity / 256)
        .clamp(16, 1024)
        .min(u64::from(LOG_MAX_BLOCKS))
}

/// The running transaction's side of the log.
#[derive(Default)]
pub(crate) struct IntentLog {
    /// `(first block, blocks)`; None on a version-1 pool until its next commit.
    pub(crate) region: Option<(BlockAddr, u32)>,
    /// Where the next record goes (records before it are for the last commit).
    next: u32,
    /// Files written since their last record or the last commit.
    pending: FxHashMap<(BranchId, u64), Pending>,
    /// Something changed since the last commit that no record describes (a create,
    /// a rename, a truncate...): every fsync commits until the next commit.
    unlogged: bool,
    /// Records written so far, and how many of them a completed flush covers.
    written: u64,
    flushed: u64,
    /// Records for the last commit that a read-only open found and left for the
    /// next read-write open to apply (`Engine::scan_log`).
    pub(crate) unreplayed: usize,
}

/// A file's written block ranges since its last record (merged at record time),
/// kept while they may fit in one record.
#[derive(Default)]
struct Pending {
    runs: Vec<(u64, u64)>,
    blocks: u64,
}

/// What `fsync` of one file has to do.
pub(crate) enum LogStep {
    /// Nothing of this file waits: it is in the durable commit or a flushed record.
    Clean,
    /// Records up to this count are written: flush, and they are durable.
    Flush(u64),
    /// A record cannot describe the file's changes: commit.
    Commit,
}

impl IntentLog {
    /// A commit was written: it holds everything, records start over.
    pub(crate) fn committed(&mut self) {
        self.next = 0;
        self.pending.clear();
        self.unlogged = false;
    }

    /// A change no record describes.
    pub(crate) fn taint(&mut self) {
        self.unlogged = true;
    }

    fn note(&mut self, b: BranchId, ino: u64, blocks: Option<(u64, u64)>) {
        let p = self.pending.entry((b, ino)).or_default();
        if let Some((b0, b1)) = blocks {
            // Counted with overlaps (a bound, not a size). Past what one record holds
            // the file's fsync commits, so its runs need not be kept.
            p.blocks += b1 - b0;
            if p.blocks <= MAX_RECORD_BLOCKS as u64 {
                p.runs.push((b0, b1));
            } else if !p.runs.is_empty() {
                p.runs = Vec::new();
            }
        }
    }
}

/// Sorted, merged copy of `runs`.
fn merged(runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut v = runs.to_vec();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, t) in v {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(t),
            _ => out.push((s, t)),
        }
    }
    out
}

impl Engine {
    /// Run a change a record can describe (`f` says whether it turned out to be
    /// one): the file is noted for its next fsync, anything else taints the log.
    /// `blocks` is the file block range `f` writes, if any.
    pub(crate) fn logged_change<T>(
        &mut self,
        b: BranchId,
        ino: u64,
        blocks: Option<(u64, u64)>,
        size: super::opsize::OpSize,
        f: impl FnOnce(&mut crate::fs::FsTree) -> FsResult<(T, bool)>,
    ) -> FsResult<T> {
        let before = self.log.unlogged;
        let r = self.with_fs_sized(b, Some(size), f);
        self.log.unlogged = before;
        match r {
            Ok((v, true)) => {
                self.log.note(b, ino, blocks);
                Ok(v)
            }
            Ok((v, false)) => {
                self.log.taint();
                Ok(v)
            }
            Err(e) => {
                self.log.taint();
                Err(e)
            }
        }
    }

    /// File block range of a write of `len` bytes at `off`.
    pub(crate) fn write_blocks_of(off: u64, len: usize) -> Option<(u64, u64)> {
        let end = off.checked_add(len as u64)?;
        (len > 0).then(|| (off / BS, end.div_ceil(BS)))
    }

    /// The first step of `fsync` of file `ino`: write its record if one can say
    /// what changed. The caller flushes outside the lock (`log_flushed`) or commits.
    pub(crate) fn log_fsync(&mut self, b: BranchId, ino: u64) -> Result<LogStep, StoreError> {
        self.refuse_changes()?;
        let Some((start, blocks)) = self.log.region else {
            return Ok(LogStep::Commit);
        };
        // Records go on top of a durable commit only: with one still flushing,
        // commit (which finishes it).
        if self.flushing.is_some() || self.log.unlogged || !self.deleted_branches.is_empty() {
            return Ok(LogStep::Commit);
        }
        let Some(p) = self.log.pending.get(&(b, ino)) else {
            return Ok(if self.log.written > self.log.flushed {
                LogStep::Flush(self.log.written)
            } else {
                LogStep::Clean
            });
        };
        if p.blocks > MAX_RECORD_BLOCKS as u64 || self.log.next >= blocks {
            return Ok(LogStep::Commit);
        }
        let runs = merged(&p.runs);
        let rec = match self.with_fs(b, false, |fs| fs.log_record(b, ino, &runs)) {
            Ok(Some(r)) if r.fits() => r,
            _ => return Ok(LogStep::Commit),
        };
        let addr = start + u64::from(self.log.next);
        let base = self.st.generation() - 1;
        let block = rec.encode(addr, base, self.st.pool_id());
        if let Err(source) = self.st.dev.write_at(addr, &block) {
            let e = StoreError::Io {
                pool: self.st.dev.name(),
                block: addr,
                source,
            };
            self.poison(&e);
            return Err(e);
        }
        // Replay may map these blocks: no more rewriting them in place, and once
        // freed they wait for a commit.
        for e in &rec.extents {
            self.st.space.settle(e.phys, e.crcs.len() as u64);
        }
        self.log.pending.remove(&(b, ino));
        self.log.next += 1;
        self.log.written += 1;
        Ok(LogStep::Flush(self.log.written))
    }

    /// The flush for records up to `upto` returned `r`. A failed flush poisons the
    /// pool, as a failed commit does: what the host kept is unknown.
    pub(crate) fn log_flushed(&mut self, upto: u64, r: std::io::Result<()>) -> PoolResult<()> {
        if let Err(source) = r {
            let e = StoreError::Io {
                pool: self.st.dev.name(),
                block: self.log.region.map_or(0, |r| r.0),
                source,
            };
            self.poison(&e);
            return Err(e.into());
        }
        self.log.flushed = self.log.flushed.max(upto);
        Ok(())
    }

    /// Give a pool without a log region one (new pools, version-1 pools at their
    /// first commit by this build). Its blocks are zeroed and flushed before any
    /// superblock names them, so no old bytes there can pass for a record. A full
    /// pool goes on without one (fsync then commits).
    pub(crate) fn ensure_log_region(&mut self) -> Result<(), StoreError> {
        if self.log.region.is_some() {
            return Ok(());
        }
        let dev = self.st.dev.clone();
        let want = region_blocks(self.st.space.capacity());
        // Never from the commit reserve (this runs as a commit starts) nor from
        // the delete slop, as it will be once the region's leaves count.
        if self.st.available() < want + self.st.reserve_after_run(want) {
            return Ok(());
        }
        let Ok((start, got)) = self.st.space.alloc(&*dev, want) else {
            return Ok(());
        };
        let io = |source, block| StoreError::Io {
            pool: dev.name(),
            block,
            source,
        };
        dev.write_at(start, &vec![0u8; (got * BS) as usize])
            .map_err(|e| io(e, start))?;
        dev.flush().map_err(|e| io(e, start))?;
        // Not fresh: nothing may overwrite the region in place but a record.
        self.st.space.settle(start, got);
        // Zeroed and flushed above, outside the manifest: a note of bytes written
        // there earlier in this transaction must not reach it (open would find the
        // zeros and call the commit torn).
        self.st.forget_written(start, got);
        self.log.region = Some((start, got as u32));
        Ok(())
    }

    /// Apply the records written against durable commit `base` (see the module
    /// comment, and `scan_log`); how many.
    pub(crate) fn replay_log(&mut self, base: u64) -> PoolResult<usize> {
        let records = self.scan_log(base)?;
        let dev = self.st.dev.clone();
        // Claim every logged block before any change allocates: the tree's copies
        // must not land on a block a later record maps.
        for r in &records {
            for e in &r.extents {
                self.st.space.claim(&*dev, e.phys, e.crcs.len() as u64)?;
            }
        }
        for r in &records {
            self.with_fs(r.branch, true, |fs| fs.replay(r))?;
        }
        Ok(records.len())
    }

    /// The records written against durable commit `base` that replay would
    /// apply, found by reading only. Reading stops at the first block that is
    /// not such a record, or whose data blocks did not all land (a torn tail:
    /// its fsync never returned, nor did any after it).
    pub(crate) fn scan_log(&mut self, base: u64) -> PoolResult<Vec<LogRecord>> {
        let Some((start, blocks)) = self.log.region else {
            return Ok(Vec::new());
        };
        let dev = self.st.dev.clone();
        let capacity = self.st.space.capacity();
        let mut records = Vec::new();
        let mut named = FxHashSet::default();
        let mut buf = vec![0u8; BLOCK_SIZE];
        'scan: for seq in 0..u64::from(blocks) {
            let addr = start + seq;
            if addr >= dev.len_blocks() {
                break;
            }
            // An unreadable block is no torn tail: ending replay there would drop
            // acknowledged fsyncs for good (the next commit makes them stale).
            dev.read_at(addr, &mut buf)
                .map_err(|e| io_error(&*dev, addr, e))?;
            let Some(r) = LogRecord::decode(&buf, addr, base, self.st.pool_id()) else {
                break;
            };
            let writable = self
                .branches
                .get(&r.branch)
                .is_some_and(|rec| !rec.is_snapshot());
            if !writable || !self.with_fs(r.branch, false, |fs| fs.can_replay(&r))? {
                log::warn!(
                    "{}: intent log record {seq} names no writable file; replay stops there",
                    dev.name().display()
                );
                break;
            }
            for e in &r.extents {
                let n = e.crcs.len() as u64;
                let end = e.phys.saturating_add(n);
                let inside = e.phys >= FIRST_USABLE
                    && end <= capacity
                    && end <= dev.len_blocks()
                    && (e.phys >= start + u64::from(blocks) || end <= start);
                if !inside || !(e.phys..end).all(|p| named.insert(p)) {
                    break 'scan;
                }
                let mut data = vec![0u8; (n * BS) as usize];
                dev.read_at(e.phys, &mut data)
                    .map_err(|err| io_error(&*dev, e.phys, err))?;
                let landed = data
                    .chunks(BLOCK_SIZE)
                    .zip(&e.crcs)
                    .all(|(d, c)| crc32fast::hash(d) == *c);
                if !landed {
                    break 'scan;
                }
                for p in e.phys..end {
                    if self.st.space.get(&*dev, p)? > 1 {
                        break 'scan;
                    }
                }
            }
            records.push(r);
        }
        Ok(records)
    }
}

fn io_error(dev: &dyn BlockDevice, block: u64, source: std::io::Error) -> StoreError {
    StoreError::Io {
        pool: dev.name(),
        block,
        source,
    }
}

#[cfg(test)]
mod tests {
    use crate::fs::Owner;
    use crate::pool::{Pool, PoolOptions};
    use crate::store::device::MemDevice;
    use crate::store::intent_log::{LogExtent, LogRecord};
    use std::sync::Arc;

    /// A record read from disk may name any file block: one whose range ends past
    /// u64::MAX is rejected. The range check added without overflow checks, so it
    /// wrapped (release builds) and accepted the record, or panicked (debug).
    #[test]
    fn a_record_past_the_largest_file_block_is_rejected() {
        let opts = PoolOptions {
            capacity_bytes: Some(64 << 20),
            ..Default::default()
        };
        let pool = Pool::create_on(Arc::new(MemDevice::new()), &opts).unwrap();
        let b = pool.branch_id("main").unwrap();
        let f = pool
            .mknod(b, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap()
            .ino;
        let rec = LogRecord {
            branch: b,
            ino: f,
            size: 0,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: (0, 0),
            extents: vec![LogExtent {
                file_block: u64::MAX,
                phys: 100,
                crcs: vec![0, 0],
            }],
        };
        let mut e = pool.e.lock();
        assert!(!e.with_fs(b, false, |fs| fs.can_replay(&rec)).unwrap());
    }
}
