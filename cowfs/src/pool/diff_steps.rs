//! The pool lock as a diff takes it: in bounded steps, so that the requests of
//! every mounted branch get it in between. A diff of a large change reads many
//! nodes and data blocks; holding the lock for all of it stalled every other
//! request for as long (0.38 s for a 128 MiB file with one byte changed).
//!
//! Between steps the running transaction goes on, commits included, so the
//! trees the diff compares are first made committed (their blocks are then
//! never rewritten in place) and pinned (`SpaceMap::pin`: no block freed while
//! the pin exists is reused or filled in place before it goes). Every node and
//! data block the two roots reach stays as it was, and the diff sees both sides
//! as of its start, whatever happens to the branches meanwhile.

use std::sync::MutexGuard;

use super::{Engine, Pool, PoolResult};
use crate::store::BlockAddr;

/// Units of work per step: each is a node read (two at most, one per side), a
/// block compared (two blocks read), a name looked up, one directory listed or
/// one file's xattrs compared. 128 units read at most 256 nodes or 1 MiB of
/// file data (more only for large directories and xattrs).
const STEP_UNITS: u32 = 128;

pub(super) struct Steps<'p> {
    pool: &'p Pool,
    guard: Option<MutexGuard<'p, Engine>>,
    units: u32,
    /// The roots are pinned; unpinned on drop.
    pinned: bool,
    /// Called each time the lock is released between steps.
    pause: &'p mut dyn FnMut(),
}

impl<'p> Steps<'p> {
    pub(super) fn new(pool: &'p Pool, pause: &'p mut dyn FnMut()) -> Steps<'p> {
        Steps {
            pool,
            guard: None,
            units: 0,
            pinned: false,
            pause,
        }
    }

    /// The two roots `roots` finds, made safe to read between steps: committed
    /// (if the running transaction changed them) and pinned. If the commit
    /// fails (a read-only pool, ENOSPC), the diff keeps the lock throughout
    /// instead, as it always did: nothing can change the trees then.
    pub(super) fn pin_roots(
        &mut self,
        roots: impl Fn(&Engine) -> PoolResult<(BlockAddr, BlockAddr)>,
    ) -> PoolResult<(BlockAddr, BlockAddr)> {
        let e = self.engine();
        let (mut ra, mut rb) = roots(e)?;
        // A tree changed in the running transaction has a fresh root (copy on
        // write reaches it); an unchanged root is committed, and so is
        // everything below it.
        if e.st.space.is_fresh(ra) || e.st.space.is_fresh(rb) {
            if let Err(err) = e.commit() {
                log::warn!("diff: commit before the walk failed ({err}); diffing under the lock");
                return Ok((ra, rb));
            }
            (ra, rb) = roots(e)?;
        }
        e.st.space.pin();
        self.pinned = true;
        Ok((ra, rb))
    }

    /// The engine, for one unit of work. A step ends (the lock is released)
    /// after `STEP_UNITS` of them, once the roots are pinned.
    pub(super) fn engine(&mut self) -> &mut Engine {
        if self.pinned && self.units >= STEP_UNITS {
            self.guard = None;
            self.units = 0;
            // Taken again at once, the lock would mostly go back to this
            // thread before a woken waiter runs: let the waiters go first.
            std::thread::yield_now();
            (self.pause)();
        }
        self.units += 1;
        let pool = self.pool;
        self.guard.get_or_insert_with(|| pool.e.lock())
    }
}

impl Drop for Steps<'_> {
    fn drop(&mut self) {
        if self.pinned {
            let pool = self.pool;
            let e = self.guard.get_or_insert_with(|| pool.e.lock());
            e.st.space.unpin();
        }
    }
}
