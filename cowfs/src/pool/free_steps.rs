//! Freeing big orphans in steps, beside the operations that made them. An unlink
//! (or rename over, or last close) whose inode holds more than
//! `fs::free_steps::FREE_IN_STEPS_BLOCKS` leaves it an orphan and queues it here
//! (`Engine::free_orphan`); the pool's freeing thread then frees it one step at a
//! time (`FsTree::free_orphan_step`), taking the pool lock for each step and
//! letting it go in between, so that every other request of every mount runs
//! between two steps instead of waiting for the whole free (0.8 s for 40 GiB).
//!
//! The ORPHAN item is the crash-safe record: every state between two steps is an
//! ordinary orphan, and one left by a crash or by closing the pool mid-way is
//! freed by the next mount's cleanup (`Pool::cleanup_orphans`), in steps again.
//! An operation that finds no room (ENOSPC, EDQUOT) while frees are queued first
//! drives them to the end on its own thread (`Engine::finish_stepped_frees`; for
//! EDQUOT the orphans only, `Engine::finish_stepped_orphans`) and tries once
//! more, so `rm big; write` works on a full pool and at a quota.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::{BranchId, Engine, EngineLock, Pool};
use crate::fs::FsResult;

/// What wakes the freeing thread, and how it is stopped.
#[derive(Default)]
pub(super) struct Freer {
    state: Mutex<WakeState>,
    wake: Condvar,
    /// Called by the freeing thread before it takes the pool lock for a step
    /// (tests hold it there, before or between steps, while they act on the pool).
    pause: Mutex<Option<Box<dyn FnMut() + Send>>>,
}

#[derive(Default)]
struct WakeState {
    /// Orphans were queued since the thread last looked.
    work: bool,
    /// The pool is closing: stop between two steps.
    stop: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Freer {
    /// Orphans were queued: wake the thread.
    pub(super) fn wake(&self) {
        lock(&self.state).work = true;
        self.wake.notify_one();
    }

    fn stopping(&self) -> bool {
        lock(&self.state).stop
    }

    /// Wait until there is work (true) or the pool closes (false).
    fn wait_for_work(&self) -> bool {
        let mut s = lock(&self.state);
        while !s.work && !s.stop {
            s = self.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.work = false;
        !s.stop
    }

    fn pause(&self) {
        if let Some(p) = lock(&self.pause).as_mut() {
            p();
        }
    }
}

/// How long the freeing thread (and a truncate or punch in steps, cut_steps.rs)
/// leaves the pool lock free between two steps.
pub(super) const STEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// Start the pool's freeing thread.
pub(super) fn spawn(e: Arc<EngineLock>, freer: Arc<Freer>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cowfs-free".into())
        .spawn(move || {
            while freer.wait_for_work() {
                while !freer.stopping() {
                    freer.pause();
                    if !e.lock().free_step() {
                        break;
                    }
                    // The pool lock is not fair: a waiter the unlock wakes must
                    // first be scheduled, and with only a yield here this thread
                    // took the lock back first nearly every time (a getattr
                    // waited 572-598 ms, the whole 40 GiB free, in
                    // benches/unlink_stall.rs). A pause of a small fraction of a
                    // step (one is 15-20 ms) lets the waiters in.
                    std::thread::sleep(STEP_PAUSE);
                }
            }
        })
}

/// Stop the freeing thread between two steps and wait for it. What it had not
/// freed stays an orphan, for the next mount's cleanup.
pub(super) fn stop(freer: &Freer, worker: Option<JoinHandle<()>>) {
    lock(&freer.state).stop = true;
    freer.wake.notify_one();
    if let Some(w) = worker {
        if w.join().is_err() {
            log::error!("the freeing thread panicked; its orphans stay for the next mount");
        }
    }
}

impl Pool {
    /// Orphans and dropped trees (drops.rs) queued to be freed in steps and not
    /// freed yet.
    pub fn pending_frees(&self) -> usize {
        let e = self.e.lock();
        e.stepping.len() + e.dropping.len()
    }

    /// Free every queued orphan and dropped tree on this thread, in steps, letting the pool lock
    /// go between them (as the freeing thread does).
    pub fn finish_frees(&self) {
        while self.e.lock().free_step() {
            std::thread::yield_now();
        }
    }

    /// Call `pause` (None: nothing) each time the freeing thread is about to take
    /// the pool lock for a step.
    pub fn set_free_pause(&self, pause: Option<Box<dyn FnMut() + Send>>) {
        *lock(&self.freer.pause) = pause;
    }
}

impl Engine {
    /// Queue orphan `ino` of branch `b` to be freed in steps; wake the thread.
    pub(super) fn queue_free(&mut self, b: BranchId, ino: u64) {
        if !self.stepping.contains(&(b, ino)) {
            self.stepping.push_back((b, ino));
        }
        self.freer.wake();
    }

    /// One step of the first queued orphan, or if none is, of the first queued
    /// dropped tree (drops.rs); whether steps remain.
    pub(super) fn free_step(&mut self) -> bool {
        if self.stepping.is_empty() {
            self.drop_step();
        } else {
            self.orphan_step();
        }
        !self.stepping.is_empty() || !self.dropping.is_empty()
    }

    /// One step of the first queued orphan. One whose
    /// branch is gone (it went with the tree) or a snapshot, or that a handle
    /// holds again (reopened through /proc/PID/fd: its release frees it), leaves
    /// the queue. One that finds no room leaves it too, for `stuck_orphans`.
    fn orphan_step(&mut self) {
        while let Some(&(b, ino)) = self.stepping.front() {
            let writable = self.branches.get(&b).is_some_and(|r| !r.is_snapshot());
            if !writable || self.open.contains_key(&(b, ino)) {
                self.stepping.pop_front();
                continue;
            }
            let r = self.free_orphan_part(b, ino, false);
            if !matches!(r, Ok(true)) {
                self.stepping.pop_front();
            }
            if let Err(err) = r {
                if err.errno() != libc::ENOSPC {
                    log::warn!("inode {ino} stays an orphan, freeing it failed: {err}");
                }
            }
            self.maybe_commit();
            return;
        }
    }

    /// Free every queued orphan and dropped tree now, in steps, holding the
    /// lock (an operation that found no room waits for them). Whether any was
    /// queued.
    pub(super) fn finish_stepped_frees(&mut self) -> bool {
        let any = !self.stepping.is_empty() || !self.dropping.is_empty();
        while self.free_step() {}
        any
    }

    /// Free every queued orphan now, in steps, holding the lock, and leave the
    /// dropped trees to the freeing thread (an operation that met its branch's
    /// quota waits for the orphans, whose blocks count to it). Whether any was
    /// queued.
    pub(super) fn finish_stepped_orphans(&mut self) -> bool {
        let any = !self.stepping.is_empty();
        while !self.stepping.is_empty() {
            self.orphan_step();
        }
        any
    }

    /// Free orphan `ino` of branch `b` (no name left, no handle): whole, or, if it
    /// is big (`FsTree::frees_in_steps`), one step of it. Whether steps remain.
    /// See `free_orphan`.
    pub(super) fn free_orphan_part(
        &mut self,
        b: BranchId,
        ino: u64,
        whole: bool,
    ) -> FsResult<bool> {
        let r = self.on_slop(true, |e| {
            e.with_fs(b, true, |fs| match fs.inode(ino) {
                Ok(i) if i.nlink == 0 && whole => fs.free_inode(ino).map(|_| false),
                Ok(i) if i.nlink == 0 => fs.free_orphan_step(ino, i),
                _ => Ok(false),
            })
        });
        match &r {
            Err(err) if err.errno() == libc::ENOSPC => {
                // Not lost: tried again (`free_stuck_orphans`, the next mount).
                log::info!("inode {ino} stays an orphan until there is room to free it: {err}");
                self.stuck_orphans.insert((b, ino));
                self.stuck_used = self.st.space.used();
            }
            Ok(true) => {}
            _ => {
                self.stuck_orphans.remove(&(b, ino));
            }
        }
        r
    }
}
