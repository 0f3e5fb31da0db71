//! fsync-gate for the first flush of a two-flush commit: Linux reports a
//! write-back error to one fdatasync caller only, so when two syncs flush a
//! commit's blocks at once and one of them fails, the other's success does not
//! prove the blocks landed. The commit's superblock must then never be written:
//! it would name blocks that may be lost, and a two-flush commit has no
//! manifest to fall back from (the pool would open damaged, not at N-1).
//! Likewise a pool poisoned while the superblock waits must not write it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cowfs::fs::Owner;
use cowfs::pool::{Pool, PoolOptions};
use cowfs::store::device::{BlockDevice, MemDevice};

/// A device whose first flush, once armed, waits until the test releases it and
/// then fails (the write-back error); later flushes succeed.
struct FailingGatedFlush {
    inner: MemDevice,
    armed: AtomicBool,
    /// (flushes entered since arming, released)
    state: Mutex<(u32, bool)>,
    cv: Condvar,
}

impl FailingGatedFlush {
    fn wait_entered(&self) {
        let mut s = self.state.lock().unwrap();
        while s.0 == 0 {
            s = self.cv.wait(s).unwrap();
        }
    }
    fn release(&self) {
        self.state.lock().unwrap().1 = true;
        self.cv.notify_all();
    }
}

impl BlockDevice for FailingGatedFlush {
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
            self.cv.notify_all();
            if s.0 == 1 {
                while !s.1 {
                    s = self.cv.wait(s).unwrap();
                }
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
        "<failing gated flush>".into()
    }
}

#[test]
fn a_failed_first_flush_keeps_the_superblock_unwritten_despite_a_concurrent_sync() {
    let dev = Arc::new(FailingGatedFlush {
        inner: MemDevice::new(),
        armed: AtomicBool::new(false),
        state: Mutex::new((0, false)),
        cv: Condvar::new(),
    });
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let pool = Arc::new(Pool::create_on(dev.clone(), &opts).unwrap());
    let b = pool.branch_id("main").unwrap();
    let big = pool
        .mknod(b, 1, b"big", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap()
        .ino;
    pool.commit().unwrap();
    let good = pool.generation();

    // 2 MiB: more blocks than a manifest lists, so a two-flush commit.
    let data: Vec<u8> = (0..2 << 20).map(|i| (i % 251) as u8).collect();
    pool.write_file(b, big, 0, &data).unwrap();
    dev.armed.store(true, Ordering::SeqCst);
    let committing = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.commit())
    };
    dev.wait_entered();

    // A second sync flushes the same blocks meanwhile (on Linux its fdatasync
    // would return 0 while the first one's returns EIO).
    let other = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.sync())
    };
    std::thread::sleep(Duration::from_millis(100));
    dev.release();
    let first = committing.join().unwrap();
    assert!(first.is_err(), "the failed flush is reported");
    let other = other.join().unwrap();
    assert!(other.is_err(), "the sync beside the failed flush must fail");

    // The blocks' flush failed: commit good+1 is not durable, whatever the
    // other sync saw, and its superblock must not be on the device.
    let image = dev.inner.snapshot();
    let reopened = Pool::open_on(Arc::new(image), &opts).unwrap();
    assert_eq!(
        reopened.generation(),
        good,
        "superblock written after a failed flush of its blocks (other sync: {other:?})"
    );
}

/// A device whose first two flushes, once armed, each wait until the test
/// releases them; the first fails. (Through the flush gate the second never
/// starts beside the first; without it, it would.)
struct TwoGates {
    inner: MemDevice,
    armed: AtomicBool,
    /// (flushes entered since arming, flushes released)
    state: Mutex<(u32, u32)>,
    cv: Condvar,
}

impl TwoGates {
    fn wait_entered(&self, n: u32) {
        let mut s = self.state.lock().unwrap();
        while s.0 < n {
            s = self.cv.wait(s).unwrap();
        }
    }
    fn release(&self, n: u32) {
        self.state.lock().unwrap().1 = n;
        self.cv.notify_all();
    }
}

impl BlockDevice for TwoGates {
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
            if k <= 2 {
                while s.1 < k {
                    s = self.cv.wait(s).unwrap();
                }
            }
            if k == 1 {
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
        "<two gates>".into()
    }
}

#[test]
fn a_pool_poisoned_during_the_first_flush_never_writes_the_superblock() {
    let dev = Arc::new(TwoGates {
        inner: MemDevice::new(),
        armed: AtomicBool::new(false),
        state: Mutex::new((0, 0)),
        cv: Condvar::new(),
    });
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let pool = Arc::new(Pool::create_on(dev.clone(), &opts).unwrap());
    let b = pool.branch_id("main").unwrap();
    let mk = |name: &[u8]| {
        pool.mknod(b, 1, name, libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap()
            .ino
    };
    let f = mk(b"f");
    let big = mk(b"big");
    // Whole blocks of a 64 KiB file: an overwrite an intent record can name.
    pool.write_file(b, f, 0, &[1; 64 << 10]).unwrap();
    pool.commit().unwrap();

    // An fsync logs a record; its flush (the first) runs without the lock.
    pool.write_file(b, f, 4 << 10, &[2; 4 << 10]).unwrap();
    dev.armed.store(true, Ordering::SeqCst);
    let logging = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.sync_file(b, f))
    };
    dev.wait_entered(1);
    // Meanwhile a two-flush commit writes its blocks; its first flush (the
    // second) waits too.
    let data: Vec<u8> = (0..2 << 20).map(|i| (i % 251) as u8).collect();
    pool.write_file(b, big, 0, &data).unwrap();
    let committing = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.commit())
    };
    // (Through the pool's flush gate it waits for the first without reaching
    // the device; give it time to get there.)
    std::thread::sleep(Duration::from_millis(100));

    // The log's flush fails (it may be the one told of the commit's lost
    // write-back): the pool is poisoned before the commit's flush returns.
    dev.release(1);
    assert!(logging.join().unwrap().is_err());
    dev.release(2);
    let committed = committing.join().unwrap();

    let image = dev.inner.snapshot();
    let reopened = Pool::open_on(Arc::new(image), &opts).unwrap();
    // (Opening replays the log and commits, so the generation says nothing.)
    assert!(
        reopened.read_file(b, big, 0, 10).unwrap().is_empty(),
        "a poisoned pool wrote a superblock (commit: {committed:?})"
    );
}
