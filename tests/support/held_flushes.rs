//! A device whose flushes, once armed, are counted and held until the test lets
//! them return, some failing with EIO: how the flush-ordering tests
//! (engine_failed_flush.rs, engine_two_flush_gate.rs,
//! engine_two_flush_unlocked.rs, engine_flush_quarantine.rs) stop a commit or fsync at its flush, run
//! something beside it, and choose which flush saw a write-back error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cowfs::pool::{BranchId, Pool, PoolOptions, PoolResult};
use cowfs::store::device::{BlockDevice, MemDevice};

/// A MemDevice whose flushes after `arm()` are numbered from 1: flushes
/// 1..=`hold` wait until `release` lets them return, and those listed in
/// `fail` then return EIO without flushing (the write-back error); the others
/// flush the MemDevice. Before `arm()` flushes go straight through.
pub struct HeldFlushes {
    inner: MemDevice,
    hold: u32,
    fail: Vec<u32>,
    armed: AtomicBool,
    /// (flushes entered since arming, the last flush number released)
    state: Mutex<(u32, u32)>,
    cv: Condvar,
}

impl HeldFlushes {
    /// Count, hold and fail the flushes from now on.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Wait until `n` flushes have reached the device since arming.
    pub fn wait_entered(&self, n: u32) {
        let mut s = self.state.lock().unwrap();
        while s.0 < n {
            s = self.cv.wait(s).unwrap();
        }
    }

    /// How many flushes have reached the device since arming.
    #[allow(dead_code)] // only engine_two_flush_unlocked.rs counts them
    pub fn entered(&self) -> u32 {
        self.state.lock().unwrap().0
    }

    /// Let the held flushes numbered up to `n` return.
    pub fn release(&self, n: u32) {
        let mut s = self.state.lock().unwrap();
        s.1 = s.1.max(n);
        self.cv.notify_all();
    }

    /// What the device holds now, as if the machine crashed here.
    #[allow(dead_code)] // engine_failed_flush.rs does not reopen the device
    pub fn image(&self) -> MemDevice {
        self.inner.snapshot()
    }
}

/// The device, the pool, its "main" branch and the options to reopen an image with.
pub type HeldPool = (Arc<HeldFlushes>, Arc<Pool>, BranchId, PoolOptions);

/// A 64 MiB pool on a new HeldFlushes(`hold`, `fail`).
#[allow(dead_code)] // engine_flush_quarantine.rs needs a smaller one
pub fn pool(hold: u32, fail: &[u32]) -> HeldPool {
    pool_of(64 << 20, hold, fail)
}

/// A pool of `capacity` bytes on a new HeldFlushes(`hold`, `fail`).
pub fn pool_of(capacity: u64, hold: u32, fail: &[u32]) -> HeldPool {
    let dev = Arc::new(HeldFlushes {
        inner: MemDevice::new(),
        hold,
        fail: fail.to_vec(),
        armed: AtomicBool::new(false),
        state: Mutex::new((0, 0)),
        cv: Condvar::new(),
    });
    let opts = PoolOptions {
        capacity_bytes: Some(capacity),
        ..Default::default()
    };
    let pool = Arc::new(Pool::create_on(dev.clone(), &opts).unwrap());
    let b = pool.branch_id("main").unwrap();
    (dev, pool, b, opts)
}

impl BlockDevice for HeldFlushes {
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(addr, buf)
    }
    fn write_at(&self, addr: u64, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(addr, buf)
    }
    fn flush(&self) -> std::io::Result<()> {
        if self.armed.load(Ordering::SeqCst) {
            let mut s = self.state.lock().unwrap();
            s.0 += 1;
            let k = s.0;
            self.cv.notify_all();
            if k <= self.hold {
                while s.1 < k {
                    s = self.cv.wait(s).unwrap();
                }
            }
            if self.fail.contains(&k) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
        }
        self.inner.flush()
    }
    fn len_blocks(&self) -> u64 {
        self.inner.len_blocks()
    }
    fn fixed_capacity(&self) -> Option<u64> {
        self.inner.fixed_capacity()
    }
    fn host_free_bytes(&self) -> Option<u64> {
        None
    }
    fn name(&self) -> std::path::PathBuf {
        "<held flushes>".into()
    }
}

/// Write 2 MiB (512 blocks, more than a superblock manifest lists) to file
/// `big` of branch `b`, arm the device and commit on another thread: a
/// two-flush commit, whose first flush (the blocks') is then held at the
/// device. The data written and the committing thread.
#[allow(dead_code)] // engine_failed_flush.rs and engine_flush_quarantine.rs make no such commit
pub fn two_flush_commit_held(
    dev: &HeldFlushes,
    pool: &Arc<Pool>,
    b: BranchId,
    big: u64,
) -> (Vec<u8>, std::thread::JoinHandle<PoolResult<()>>) {
    let data: Vec<u8> = (0..2 << 20).map(|i| (i % 251) as u8).collect();
    pool.write_file(b, big, 0, &data).unwrap();
    dev.arm();
    let committing = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.commit())
    };
    dev.wait_entered(1);
    (data, committing)
}

/// Run `f` on another thread; None if it did not return within 10 s (it waits
/// for the pool lock the blocked commit holds).
#[allow(dead_code)] // only engine_two_flush_unlocked.rs times requests
pub fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10)).ok()
}
