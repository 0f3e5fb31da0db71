//! A commit too large for a superblock manifest flushes its blocks before writing
//! its superblock. That first flush (a host fsync: up to tens of ms under load)
//! ran under the pool lock, stalling every request of every mount meanwhile. It
//! now runs without the lock: requests go on during it, and a crash at that
//! moment opens the previous commit, clean.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cowfs::fs::Owner;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::{BlockDevice, MemDevice};

/// A device whose first flush, once armed, waits until the test releases it.
struct GatedFlush {
    inner: MemDevice,
    armed: AtomicBool,
    /// (flushes entered since arming, released)
    state: Mutex<(u32, bool)>,
    cv: Condvar,
}

impl GatedFlush {
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

impl BlockDevice for GatedFlush {
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
        "<gated flush>".into()
    }
}

/// Run `f` on another thread; None if it did not return within 10 s (it waits
/// for the pool lock the blocked commit holds).
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10)).ok()
}

#[test]
fn requests_run_during_the_first_flush_of_a_two_flush_commit() {
    let dev = Arc::new(GatedFlush {
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
    let mk = |name: &[u8]| {
        pool.mknod(b, 1, name, libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap()
            .ino
    };
    let f = mk(b"f");
    let big = mk(b"big");
    pool.write_file(b, f, 0, b"committed").unwrap();
    pool.commit().unwrap();
    let good = pool.generation();

    // 2 MiB of data: 512 blocks written, more than a manifest lists, so the
    // next commit is a two-flush one.
    let data: Vec<u8> = (0..2 << 20).map(|i| (i % 251) as u8).collect();
    pool.write_file(b, big, 0, &data).unwrap();
    dev.armed.store(true, Ordering::SeqCst);
    let committing = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.commit())
    };
    dev.wait_entered();

    // The first flush is blocked: requests that take the pool lock still run.
    let during = {
        let pool = pool.clone();
        within_10s(move || {
            let read = pool.read_file(b, f, 0, 100).unwrap();
            pool.write_file(b, f, 0, b"next-txn!").unwrap();
            (read, pool.generation())
        })
    };
    let Some((read, gen_during)) = during else {
        dev.release();
        panic!("a request waited for the first flush of a commit");
    };
    assert_eq!(read, b"committed");
    assert_eq!(gen_during, good, "the commit is not durable yet");

    // A crash now (every write so far landed, the superblock not written yet):
    // the previous commit, clean.
    let image = dev.inner.snapshot();
    let crashed = Pool::open_on(Arc::new(image), &opts).unwrap();
    assert_eq!(crashed.generation(), good);
    assert_eq!(crashed.read_file(b, f, 0, 100).unwrap(), b"committed");
    assert!(crashed.read_file(b, big, 0, 10).unwrap().is_empty());
    let r = crashed.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
    drop(crashed);

    dev.release();
    committing.join().unwrap().unwrap();
    assert_eq!(pool.generation(), good + 1);
    assert_eq!(dev.state.lock().unwrap().0, 2, "blocks, then superblock");

    // The write made during the flush belongs to the next commit.
    let image = dev.inner.snapshot();
    let reopened = Pool::open_on(Arc::new(image), &opts).unwrap();
    assert_eq!(reopened.generation(), good + 1);
    assert_eq!(reopened.read_file(b, f, 0, 100).unwrap(), b"committed");
    assert_eq!(reopened.read_file(b, big, 0, 2 << 20).unwrap(), data);
    let r = reopened.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
    drop(reopened);

    pool.commit().unwrap();
    assert_eq!(pool.read_file(b, f, 0, 100).unwrap(), b"next-txn!");
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}
