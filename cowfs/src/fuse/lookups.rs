//! Kernel references to inodes (FUSE lookup counts). The kernel may still send
//! requests for an inode after its last name is gone — writeback of dirty pages at
//! syncfs, getattr through an open descriptor — until it sends FORGET. So the engine
//! keeps every inode the kernel knows about alive (as if open) until then; an orphan
//! is freed when both its handles and the kernel's references are gone.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::fs::ROOT_INO;
use crate::pool::{BranchId, Pool};

#[derive(Default)]
pub(crate) struct Lookups {
    counts: Mutex<HashMap<u64, u64>>,
}

impl Lookups {
    /// The kernel got an entry for `ino` (lookup, create, mknod, mkdir, symlink,
    /// link, readdirplus): one more reference.
    pub(crate) fn add(&self, pool: &Pool, branch: BranchId, ino: u64) {
        if ino == ROOT_INO {
            return;
        }
        // The engine is told under this lock so that a concurrent forget of the
        // same inode cannot release it in between.
        let mut counts = self.counts.lock();
        let n = counts.entry(ino).or_insert(0);
        *n += 1;
        if *n == 1 {
            pool.open_inode(branch, ino);
        }
    }

    /// The kernel dropped `n` references to `ino`.
    pub(crate) fn forget(&self, pool: &Pool, branch: BranchId, ino: u64, n: u64) {
        let mut counts = self.counts.lock();
        let Some(left) = counts.get_mut(&ino) else {
            return;
        };
        *left = left.saturating_sub(n);
        if *left == 0 {
            counts.remove(&ino);
            if let Err(e) = pool.release_inode(branch, ino) {
                log::error!("releasing inode {ino} after forget: {e}");
            }
        }
    }

    /// The session is over: the kernel holds nothing any more.
    pub(crate) fn forget_all(&self, pool: &Pool, branch: BranchId) {
        let inos: Vec<u64> = self.counts.lock().drain().map(|(ino, _)| ino).collect();
        for ino in inos {
            if let Err(e) = pool.release_inode(branch, ino) {
                log::error!("releasing inode {ino} at unmount: {e}");
            }
        }
    }
}
