//! The file handles a mount has handed to the kernel, so that an unlinked file stays
//! alive until its last close, and so that handles the kernel never released (an
//! aborted connection) are released when the session ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::pool::{BranchId, Pool};

#[derive(Default)]
pub(crate) struct Handles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, u64>>,
}

impl Handles {
    /// Register a handle on `ino` (the pool keeps the inode while it is open).
    pub(crate) fn open(&self, pool: &Pool, branch: BranchId, ino: u64) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        pool.open_inode(branch, ino);
        self.open.lock().insert(fh, ino);
        fh
    }

    /// Drop a handle; the last handle of an unlinked inode frees it.
    pub(crate) fn release(&self, pool: &Pool, branch: BranchId, fh: u64) {
        let Some(ino) = self.open.lock().remove(&fh) else {
            log::warn!("release of unknown file handle {fh}");
            return;
        };
        if let Err(e) = pool.release_inode(branch, ino) {
            log::error!("releasing inode {ino}: {e}");
        }
    }

    /// The inodes that have a handle open, each once.
    pub(crate) fn inodes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.open.lock().values().copied().collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Release every handle still open (the session is over).
    pub(crate) fn release_all(&self, pool: &Pool, branch: BranchId) {
        let left: Vec<u64> = self.open.lock().keys().copied().collect();
        for fh in left {
            self.release(pool, branch, fh);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fs::Owner;
    use crate::pool::PoolOptions;
    use crate::store::device::MemDevice;

    #[test]
    fn an_unlinked_file_lives_until_its_last_handle() {
        let opts = PoolOptions {
            capacity_bytes: Some(64 << 20),
            ..Default::default()
        };
        let pool = Pool::create_on(Arc::new(MemDevice::new()), &opts).expect("pool");
        let b = pool.branch_id("main").expect("main");
        let f = pool
            .mknod(b, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
            .expect("mknod");
        pool.write_file(b, f.ino, 0, b"data").expect("write");
        let h = Handles::default();
        let (fh1, fh2) = (h.open(&pool, b, f.ino), h.open(&pool, b, f.ino));
        assert_ne!(fh1, fh2);
        pool.unlink(b, 1, b"f").expect("unlink");
        h.release(&pool, b, fh1);
        assert_eq!(
            pool.read_file(b, f.ino, 0, 10).expect("still open"),
            b"data"
        );
        h.release_all(&pool, b);
        assert!(
            pool.getattr(b, f.ino).is_err(),
            "freed with its last handle"
        );
        // Releasing an unknown handle is harmless.
        h.release(&pool, b, fh2);
    }
}
