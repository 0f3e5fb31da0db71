//! Truncating or punching a hole in a big file in steps. Unmapping 40 GiB of
//! extents in one operation holds the pool lock for most of a second, and every
//! request of every mount of the pool waits as long; the pool runs such a cut as
//! a series of operations instead (pool/cut_steps.rs), each unmapping at most
//! `STEP_EXTENTS` extents from the end of what is left to cut, as a big orphan
//! is freed (free_steps.rs). Every state between two steps is the file as an
//! ordinary, shorter cut leaves it: truncated to a longer length, or with a
//! hole over the end of the range only. Nothing is left to repair after a crash.

use super::file::{WriteTimes, END_BLOCK, MAX_FILE_SIZE};
use super::free_steps::FREE_IN_STEPS_BLOCKS;
use super::items::{Timespec, BS};
use super::{FsResult, FsTree};

impl FsTree<'_> {
    /// One step of truncating `ino` to `size`, with `truncate`'s checks first
    /// (so a first step fails as the whole truncate would). If the file has
    /// more than `FREE_IN_STEPS_BLOCKS` mapped and more extents than one step
    /// lie past `size` (`step_cut`), its last `STEP_EXTENTS` extents are
    /// unmapped and its size cut to where they begin (above `size`): true, steps
    /// remain. False: nothing changed, one operation cuts the rest.
    pub(crate) fn truncate_step(&mut self, ino: u64, size: u64) -> FsResult<bool> {
        let mut i = self.truncatable(ino, size)?;
        // A truncate that does not shrink the file unmaps nothing (`truncate`).
        if size >= i.size || i.blocks <= FREE_IN_STEPS_BLOCKS {
            return Ok(false);
        }
        let Some(cut) = self.step_cut(ino, size.div_ceil(BS), END_BLOCK)? else {
            return Ok(false);
        };
        self.unmap(ino, &mut i, cut, END_BLOCK)?;
        // As `truncate(ino, cut * BS)` leaves it, times too, if that is below the
        // size; if not, the extents cut lay past the end (fallocated with
        // KEEP_SIZE), and the file is as if they had never been.
        let cut_size = i.size.min(cut * BS);
        if cut_size != i.size {
            let now = Timespec::now();
            i.mtime = now;
            i.ctime = now;
            i.size = cut_size;
        }
        self.put_inode(ino, &i)?;
        Ok(true)
    }

    /// One step of `punch_hole(ino, off, len, times)`, with its checks first. If
    /// the file has more than `FREE_IN_STEPS_BLOCKS` mapped and the range more
    /// extents than one step (`step_cut`), the hole is punched from where its
    /// last `STEP_EXTENTS` extents begin to the end of the range only: where the
    /// range left to punch ends now (Some). Else the whole punch (None).
    pub(crate) fn punch_step(
        &mut self,
        ino: u64,
        off: u64,
        len: u64,
        times: WriteTimes,
    ) -> FsResult<Option<u64>> {
        let i = self.file_inode(ino)?;
        let end = off.saturating_add(len).min(MAX_FILE_SIZE);
        if off < end && i.blocks > FREE_IN_STEPS_BLOCKS {
            if let Some(cut) = self.step_cut(ino, off.div_ceil(BS), end / BS)? {
                // `step_cut` leaves an extent of the range below `cut`: off < cut * BS < end.
                self.punch_hole(ino, cut * BS, end - cut * BS, times)?;
                return Ok(Some(cut * BS));
            }
        }
        self.punch_hole(ino, off, len, times)?;
        Ok(None)
    }
}
