//! Freeing a big orphan in steps. Freeing 40 GiB of extents in one operation held
//! the pool lock for 0.8 s, and every mount of the pool waited as long. An orphan
//! with more than `FREE_IN_STEPS_BLOCKS` mapped blocks is instead cut from its end,
//! at most `STEP_EXTENTS` extents per step, each step an operation of its own: the
//! state between two steps is an ordinary orphan, only shorter, which fsck accepts
//! and a mount's cleanup frees after a crash. The last step frees the inode.

use super::file::END_BLOCK;
use super::items::{Inode, BS, KIND_EXTENT, MAX_EXTENT_BLOCKS};
use super::{FsResult, FsTree};
use crate::btree::{tree, Key};

/// Mapped blocks (1 GiB) above which an orphan is freed in steps.
pub const FREE_IN_STEPS_BLOCKS: u64 = (1 << 30) / BS;

/// Extents one step unmaps at most: 1 GiB of full-size extents, as many items of
/// a fragmented file (the cost of a step is per extent: an item removed and the
/// space-map leaves of its blocks changed).
const STEP_EXTENTS: usize = (FREE_IN_STEPS_BLOCKS / MAX_EXTENT_BLOCKS) as usize;

impl FsTree<'_> {
    /// Whether inode `ino` is an orphan (no name left) to free in steps. A missing
    /// inode is not (there is nothing to free).
    pub(crate) fn frees_in_steps(&mut self, ino: u64) -> FsResult<bool> {
        match self.inode(ino) {
            Ok(i) => Ok(i.nlink == 0 && i.blocks > FREE_IN_STEPS_BLOCKS),
            Err(e) if e.errno() == libc::ENOENT => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One step of freeing orphan `ino` (inode `i`): its last `STEP_EXTENTS`
    /// extents unmapped and its size cut to where they began, or, if it has no
    /// more extents than that, the whole inode freed. Whether steps remain.
    pub(crate) fn free_orphan_step(&mut self, ino: u64, mut i: Inode) -> FsResult<bool> {
        let Some(cut) = self.step_cut(ino)? else {
            self.free_inode(ino)?;
            return Ok(false);
        };
        self.unmap(ino, &mut i, cut, END_BLOCK)?;
        i.size = i.size.min(cut * BS);
        self.put_inode(ino, &i)?;
        Ok(true)
    }

    /// The first block of the last `STEP_EXTENTS` extents of `ino`, walking back
    /// from its end; None if it has no more extents than that.
    fn step_cut(&mut self, ino: u64) -> FsResult<Option<u64>> {
        let mut at = Key::new(ino, KIND_EXTENT, u64::MAX);
        for _ in 0..STEP_EXTENTS {
            match tree::floor(self.st, *self.root, &at)? {
                Some(k) if k.id == ino && k.kind == KIND_EXTENT && k.off > 0 => {
                    at = Key::new(ino, KIND_EXTENT, k.off - 1);
                }
                _ => return Ok(None),
            }
        }
        // `at` is just below the lowest extent of the step: cut there only if an
        // extent lies below it, else this step is the last.
        Ok(match tree::floor(self.st, *self.root, &at)? {
            Some(k) if k.id == ino && k.kind == KIND_EXTENT => Some((at.off + 1) / BS),
            _ => None,
        })
    }
}
