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
        let Some(cut) = self.step_cut(ino, 0, END_BLOCK)? else {
            self.free_inode(ino)?;
            return Ok(false);
        };
        self.unmap(ino, &mut i, cut, END_BLOCK)?;
        i.size = i.size.min(cut * BS);
        self.put_inode(ino, &i)?;
        Ok(true)
    }

    /// Where a step of unmapping blocks [b0, b1) of `ino` cuts: the first block
    /// of the last `STEP_EXTENTS` extents starting below `b1`, walking back, if
    /// yet another extent starts at or above `b0` (left to the steps after);
    /// None if no more than that (and an extent reaching into the range from
    /// below) are left: one operation unmaps the rest.
    pub(super) fn step_cut(&mut self, ino: u64, b0: u64, b1: u64) -> FsResult<Option<u64>> {
        let Some(last) = (b1 * BS).checked_sub(1) else {
            return Ok(None);
        };
        let lowest = b0 * BS;
        let mut at = Key::new(ino, KIND_EXTENT, last);
        for _ in 0..STEP_EXTENTS {
            match tree::floor(self.st, *self.root, &at)? {
                Some(k) if k.id == ino && k.kind == KIND_EXTENT && k.off > lowest => {
                    at = Key::new(ino, KIND_EXTENT, k.off - 1);
                }
                _ => return Ok(None),
            }
        }
        // `at` is just below the lowest extent of the step: cut there only if an
        // extent of the range lies below it, else this step is the last.
        Ok(match tree::floor(self.st, *self.root, &at)? {
            Some(k) if k.id == ino && k.kind == KIND_EXTENT && k.off >= lowest => {
                Some((at.off + 1) / BS)
            }
            _ => None,
        })
    }
}
