//! What the intent log (format-spec §8.1) needs from a file tree: describe a file's
//! recent writes as a record, and apply a record to the tree of the commit it was
//! written against.

use super::file::{inline_key, MAX_FILE_SIZE};
use super::items::{Extent, Timespec, MAX_EXTENT_BLOCKS};
use super::{FsResult, FsTree};
use crate::store::intent_log::{LogExtent, LogRecord};

const BS: u64 = crate::store::BLOCK_SIZE as u64;

fn time(t: Timespec) -> (i64, u32) {
    (t.sec, t.nsec)
}

fn timespec(t: (i64, u32)) -> Timespec {
    Timespec {
        sec: t.0,
        nsec: t.1,
    }
}

impl FsTree<'_> {
    /// A record of file `ino` as it is now, with the blocks of `runs` (file block
    /// ranges, sorted, not overlapping) and where they live; None if a record cannot
    /// describe it: not a regular file, inline bytes, or a block of a run that is a
    /// hole or unwritten (the file changed in ways only a commit records).
    pub(crate) fn log_record(
        &mut self,
        branch: u64,
        ino: u64,
        runs: &[(u64, u64)],
    ) -> FsResult<Option<LogRecord>> {
        let i = self.inode(ino)?;
        if !i.is_reg() || self.get(&inline_key(ino))?.is_some() {
            return Ok(None);
        }
        let mut extents: Vec<LogExtent> = Vec::new();
        for &(b0, b1) in runs {
            let mut next = b0;
            for (start, e) in self.extents_in(ino, b0, b1)? {
                let s = start.max(b0);
                let t = (start + e.len()).min(b1);
                if s != next || e.unwritten() {
                    return Ok(None);
                }
                let piece = e.slice(s - start, t - start);
                extents.push(LogExtent {
                    file_block: s,
                    phys: piece.phys,
                    crcs: piece.crcs,
                });
                next = t;
            }
            if next != b1 {
                return Ok(None);
            }
        }
        Ok(Some(LogRecord {
            branch,
            ino,
            size: i.size,
            atime: time(i.atime),
            mtime: time(i.mtime),
            ctime: time(i.ctime),
            extents,
        }))
    }

    /// Whether `r` can be applied here: it names a regular file without inline
    /// bytes, and its blocks lie within the largest file size.
    pub(crate) fn can_replay(&mut self, r: &LogRecord) -> FsResult<bool> {
        let i = match self.inode(r.ino) {
            Ok(i) => i,
            Err(_) => return Ok(false),
        };
        let in_range = r.extents.iter().all(|e| {
            // Checked: a record read from disk may name any file block.
            e.file_block
                .checked_add(e.crcs.len() as u64)
                .and_then(|end| end.checked_mul(BS))
                .is_some_and(|end| end <= MAX_FILE_SIZE)
        });
        Ok(i.is_reg()
            && in_range
            && r.size <= MAX_FILE_SIZE
            && self.get(&inline_key(r.ino))?.is_none())
    }

    /// Apply `r`: map each logged extent (the caller has claimed its blocks and
    /// checked their CRCs) in place of what the file had there, then set the size
    /// and times the record carries.
    pub(crate) fn replay(&mut self, r: &LogRecord) -> FsResult<()> {
        let ino = r.ino;
        let mut i = self.inode(ino)?;
        for e in &r.extents {
            // Items hold at most MAX_EXTENT_BLOCKS blocks (readers rely on it).
            for (k, crcs) in e.crcs.chunks(MAX_EXTENT_BLOCKS as usize).enumerate() {
                let at = k as u64 * MAX_EXTENT_BLOCKS;
                let b0 = e.file_block + at;
                self.unmap(ino, &mut i, b0, b0 + crcs.len() as u64)?;
                let ext = Extent {
                    phys: e.phys + at,
                    flags: 0,
                    crcs: crcs.to_vec(),
                };
                self.map(ino, &mut i, b0, &ext)?;
            }
        }
        self.put_inode(ino, &i)?;
        if r.size < i.size {
            self.truncate(ino, r.size)?;
            i = self.inode(ino)?;
        }
        i.size = r.size;
        i.atime = timespec(r.atime);
        i.mtime = timespec(r.mtime);
        i.ctime = timespec(r.ctime);
        self.put_inode(ino, &i)
    }
}
