//! Truncates and hole punches of big files in steps. One that unmaps more than
//! one step (fs/cut_steps.rs: a file with more than 1 GiB mapped, more than
//! 4,096 extents to cut) runs as a series of operations on the caller's thread,
//! each an ordinary, complete one under the pool lock, with the lock let go in
//! between, so that the requests of every mount of the pool run between two
//! steps instead of waiting for the whole cut (0.8 s for 40 GiB). The steps cut
//! from the end: a truncate's steps truncate the file to ever shorter lengths
//! above the size asked for, and the last is the setattr asked for, with its
//! times; a punch's steps punch ever longer tails of the range, and the last
//! punches the rest. Each is a write_shrinking operation as a whole cut is: on
//! the delete slop, journaled, retried once after a commit if it found no room.
//! A crash or an error between two steps leaves the file as the steps before
//! left it (a prefix of it, or a hole over the end of the range).

use std::sync::PoisonError;

use super::free_steps::STEP_PAUSE;
use super::{BranchId, Pool};
use crate::fs::file::WriteTimes;
use crate::fs::{Attr, FsResult, SetAttr};

impl Pool {
    /// `setattr` with a size (`s.size`). One that also changes the mode or the
    /// owner is one operation, however much it cuts: it changes all or nothing.
    pub(super) fn setattr_sized(
        &self,
        b: BranchId,
        ino: u64,
        s: &SetAttr,
        size: u64,
    ) -> FsResult<Attr> {
        if s.mode.is_some() || s.uid.is_some() || s.gid.is_some() {
            return self.write_shrinking(
                b,
                |fs| fs.truncate_unmaps(ino, size),
                |fs| fs.setattr(ino, s),
            );
        }
        self.in_steps(|| {
            self.write_shrinking(
                b,
                |fs| fs.truncate_unmaps(ino, size),
                |fs| match fs.truncate_step(ino, size)? {
                    true => Ok(None),
                    false => fs.setattr(ino, s).map(Some),
                },
            )
        })
    }

    /// `punch_hole_with`: from the end of the range to its start, in steps.
    pub(super) fn punch_in_steps(
        &self,
        b: BranchId,
        ino: u64,
        off: u64,
        len: u64,
        times: WriteTimes,
    ) -> FsResult<()> {
        let mut len = len;
        self.in_steps(|| {
            let left = self.write_shrinking(
                b,
                |fs| fs.punch_unmaps(ino, off, len),
                |fs| fs.punch_step(ino, off, len, times),
            )?;
            Ok(match left {
                Some(end) => {
                    len = end - off;
                    None
                }
                None => Some(()),
            })
        })
    }

    /// Run `step`, an operation of its own, until it returns the result (Some),
    /// the pool lock free for `STEP_PAUSE` between two (the lock is not fair:
    /// taken back at once, the waiters woken would find it taken again), and the
    /// hook of `set_cut_pause` called there.
    fn in_steps<T>(&self, mut step: impl FnMut() -> FsResult<Option<T>>) -> FsResult<T> {
        loop {
            if let Some(v) = step()? {
                return Ok(v);
            }
            std::thread::sleep(STEP_PAUSE);
            let mut pause = self
                .cut_pause
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(p) = pause.as_mut() {
                p();
            }
        }
    }

    /// Call `pause` (None: nothing) between two steps of a truncate or punch
    /// hole in steps, on the caller's thread, without the pool lock (tests hold
    /// a cut there while they act on the pool).
    pub fn set_cut_pause(&self, pause: Option<Box<dyn FnMut() + Send>>) {
        *self
            .cut_pause
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = pause;
    }
}
