//! Waiting until a mount's dirty pages have reached the daemon, for
//! `MountTable::sync_branch` (branch and snapshot creation, `reset` to a
//! mounted branch, `diff`).
//!
//! syncfs(2) alone does not wait for that on a FUSE mount with the writeback
//! cache: it starts writing dirty pages back, but Linux does not wait for
//! those WRITE requests to be answered (wait_sb_inodes skips FUSE mappings
//! since "fs/writeback: skip AS_NO_DATA_INTEGRITY mappings", backported to
//! stable kernels), and FUSE_SYNCFS, which would wait, is sent to virtiofs
//! only. A commit right after syncfs could then miss a page still queued in
//! the kernel, and a branch miss a write completed before the request (seen
//! about once in 40 runs of branch_differential's reset test under load).
//!
//! What does wait is the close of a descriptor of the file: FUSE's flush
//! writes the file's dirty pages back and waits until every page under
//! write-back has been answered (`write_inode_now`), and keeps the pages
//! cached. The daemon opens each file that has an open handle by file handle
//! (the kernel has those inodes in memory, so no path is needed) and closes
//! it again. Only files with an open handle can hold dirty pages: close(2)
//! writes a file's pages back and waits, and a mapping keeps its file open.
//! Where that open fails, a whole-file invalidation (FUSE_NOTIFY_INVAL_INODE)
//! waits instead: the kernel writes each dirty page back and waits for pages
//! under write-back before it drops them, so their cached pages are read from
//! the daemon again. (It was the only way at first: with a 1 GiB cached file
//! held open, a branch create took 140 ms instead of 5 and emptied its cache.)

use std::fs::File;
use std::sync::{Arc, OnceLock};

use fuser::{INodeNo, Notifier};

use super::handles::Handles;
use super::sys;

/// What a mount table needs of a mount's filesystem to wait for its pages.
pub(crate) struct WriteBack {
    pub(super) handles: Arc<Handles>,
    pub(super) notifier: Arc<OnceLock<Notifier>>,
}

impl WriteBack {
    /// Wait until every page dirty in the kernel when this was called (syncfs
    /// first) has been written to the daemon. `root` is a descriptor on the
    /// mount. An inode the kernel no longer knows has no pages: its error is
    /// only logged.
    pub(crate) fn wait(&self, root: &File) {
        for ino in self.handles.inodes() {
            match sys::open_by_nodeid(root, ino) {
                // Closing it is the wait.
                Ok(fd) => drop(fd),
                Err(e) => {
                    log::debug!("inode {ino}: open by handle: {e}; invalidating its pages");
                    self.invalidate(ino);
                }
            }
        }
    }

    fn invalidate(&self, ino: u64) {
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
            log::debug!("inode {ino}: writing its pages back: {e}");
        }
    }
}
