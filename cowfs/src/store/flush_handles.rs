//! The pool file's flushes, each through an open file description of its own.
//!
//! Linux reports a write-back error of a file once to each open file description
//! that was open when it happened (errseq), at its next `fdatasync`. Two threads
//! flushing through one description at once could see EIO on one and 0 on the
//! other, and the other would acknowledge an fsync, or write the superblock of a
//! commit, whose blocks may be lost. Here every flush borrows a description no
//! other flush is using, opened with the pool, so an error that happened before
//! its check is reported to it, unless an earlier flush through the same
//! description took it: that one failed, and recorded the failure before giving
//! the description back, so the next flush through it fails without trying.
//! Once one flush has failed every later one fails (the pool is poisoned anyway).
//!
//! Flushes still run at once, as the block layer merges their cache flushes:
//! making them wait for each other (one at a time, or each for those beside
//! it) doubled a branch creation beside a writer's fsync loop
//! (`benches/branches.sh`, 8 GiB parent: 10-11 ms against 5).

use std::fs::File;

use parking_lot::{Condvar, Mutex};

/// Descriptions opened per pool: flushes beyond this many at once wait for one
/// to end (the daemon's FUSE workers, its timer and control requests rarely
/// flush more than a few at a time).
const HANDLES: usize = 8;

pub(crate) struct FlushHandles {
    state: Mutex<State>,
    returned: Condvar,
}

struct State {
    free: Vec<File>,
    /// The error of the first flush that failed (raw OS error, EIO if none).
    failed: Option<i32>,
}

impl FlushHandles {
    /// `HANDLES` descriptions made by `open`, all opened now, before any write of
    /// this pool: a description opened after an error another one already
    /// reported would not be told of it.
    pub(crate) fn open(open: impl Fn() -> std::io::Result<File>) -> std::io::Result<FlushHandles> {
        let free = (0..HANDLES)
            .map(|_| open())
            .collect::<std::io::Result<_>>()?;
        Ok(FlushHandles {
            state: Mutex::new(State { free, failed: None }),
            returned: Condvar::new(),
        })
    }

    /// Take a write-back error of the file from before the descriptions were
    /// opened, if there was one, so that it does not fail this pool's first
    /// flush. Linux tells an error nobody was told of yet to every description
    /// opened after it, so a write-back that failed after the last flush of the
    /// process that wrote the pool before (killed before its next one) would
    /// fail the first flush of every later open, and each would go read-only
    /// at once. What that write-back lost was never flushed, so never
    /// acknowledged nor part of a commit (a commit's blocks are flushed before
    /// its superblock); the pool opens at its last commit that reached the
    /// medium, read from the disk (`FileDevice::open` drops the host's clean
    /// cached pages first). Call it before anything of this pool is written.
    pub(crate) fn take_error_from_before_open(&self) -> Option<std::io::Error> {
        let s = self.state.lock();
        // The descriptions were opened together: if the first is told of no
        // error, none of them would be.
        let error = s.free.first()?.sync_data().err()?;
        for f in &s.free[1..] {
            let _ = f.sync_data();
        }
        Some(error)
    }

    /// fdatasync through a description no other flush is using.
    pub(crate) fn flush(&self) -> std::io::Result<()> {
        let file = {
            let mut s = self.state.lock();
            loop {
                if let Some(errno) = s.failed {
                    return Err(std::io::Error::from_raw_os_error(errno));
                }
                if let Some(f) = s.free.pop() {
                    break f;
                }
                self.returned.wait(&mut s);
            }
        };
        let r = file.sync_data();
        let mut s = self.state.lock();
        if let Err(e) = &r {
            s.failed
                .get_or_insert(e.raw_os_error().unwrap_or(libc::EIO));
        }
        // Given back only after its failure is recorded (see the module comment).
        s.free.push(file);
        self.returned.notify_all();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn handles(dir: &tempfile::TempDir) -> (std::path::PathBuf, FlushHandles) {
        let path = dir.path().join("pool");
        File::create(&path).unwrap();
        let p = path.clone();
        let h =
            FlushHandles::open(move || std::fs::OpenOptions::new().read(true).write(true).open(&p))
                .unwrap();
        (path, h)
    }

    /// Every description is a file of its own (not a dup of one): each has its
    /// own file position, which dup'ed descriptors share.
    #[test]
    fn each_handle_is_a_description_of_its_own() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let (_, h) = handles(&dir);
        let mut s = h.state.lock();
        assert_eq!(s.free.len(), HANDLES);
        s.free[0].seek(SeekFrom::Start(4096)).unwrap();
        for f in &mut s.free[1..] {
            assert_eq!(f.stream_position().unwrap(), 0);
        }
    }

    /// Flushes from many threads at once all return, and every handle comes back.
    #[test]
    fn concurrent_flushes_give_every_handle_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_, h) = handles(&dir);
        let h = Arc::new(h);
        let threads: Vec<_> = (0..3 * HANDLES)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || h.flush())
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert_eq!(h.state.lock().free.len(), HANDLES);
    }

    /// After a failed flush every later one fails without trying.
    #[test]
    fn a_failed_flush_fails_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let (_, h) = handles(&dir);
        h.state.lock().failed = Some(libc::EIO);
        let e = h.flush().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }
}
