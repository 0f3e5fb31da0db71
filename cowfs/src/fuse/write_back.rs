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
//! What does wait is an invalidation of a whole file's pages
//! (FUSE_NOTIFY_INVAL_INODE): the kernel waits for pages under writeback and
//! writes each dirty page back (launder_folio), waiting for the daemon's
//! answer, before it drops them. Only files with an open handle can hold
//! dirty pages: close(2) writes a file's pages back and waits (FUSE_FLUSH),
//! and a mapping keeps its file open. The price: those files' cached pages
//! are read from the daemon again.

use std::sync::{Arc, OnceLock};

use fuser::{INodeNo, Notifier};

use super::handles::Handles;

/// What a mount table needs of a mount's filesystem to wait for its pages.
pub(crate) struct WriteBack {
    pub(super) handles: Arc<Handles>,
    pub(super) notifier: Arc<OnceLock<Notifier>>,
}

impl WriteBack {
    /// Wait until every page dirty in the kernel when this was called (syncfs
    /// first) has been written to the daemon. An inode the kernel no longer
    /// knows has no pages: its error is only logged.
    pub(crate) fn wait(&self) {
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        for ino in self.handles.inodes() {
            if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                log::debug!("inode {ino}: writing its pages back: {e}");
            }
        }
    }
}
