//! Reads run outside the pool lock while writers rewrite and commit: every read must
//! see one whole version of the data — never a mix, never blocks reused by a later
//! write, never a spurious checksum error.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cowfs::fs::Owner;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::{BlockDevice, MemDevice};

#[test]
fn parallel_reads_see_whole_versions_while_writers_commit() {
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let pool = Arc::new(Pool::create_on(Arc::new(MemDevice::new()), &opts).unwrap());
    let b = pool.branch_id("main").unwrap();
    let own = Owner::default();
    let fixed = pool
        .mknod(b, 1, b"fixed", libc::S_IFREG | 0o644, 0, own)
        .unwrap();
    let fixed_data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    pool.write_file(b, fixed.ino, 0, &fixed_data).unwrap();
    let churn = pool
        .mknod(b, 1, b"churn", libc::S_IFREG | 0o644, 0, own)
        .unwrap();
    pool.write_file(b, churn.ino, 0, &vec![0u8; 256 * 1024])
        .unwrap();
    pool.commit().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    // Versions written so far: readers keep going until the writer has made a few,
    // however the scheduler shares the two cores.
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (pool, stop, written) = (pool.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut v = 1u8;
            while !stop.load(Ordering::Relaxed) {
                pool.write_file(b, churn.ino, 0, &vec![v; 256 * 1024])
                    .unwrap();
                if v.is_multiple_of(3) {
                    pool.commit().unwrap();
                }
                v = v.wrapping_add(1);
                written.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (pool, fixed_data, written) = (pool.clone(), fixed_data.clone(), written.clone());
            std::thread::spawn(move || {
                let mut seen = std::collections::HashSet::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut n = 0;
                while n < 400 || (written.load(Ordering::Relaxed) < 6 && Instant::now() < deadline)
                {
                    n += 1;
                    assert_eq!(
                        pool.read_file(b, fixed.ino, 0, 1 << 20).unwrap(),
                        fixed_data
                    );
                    let c = pool.read_file(b, churn.ino, 0, 1 << 20).unwrap();
                    assert_eq!(c.len(), 256 * 1024);
                    assert!(c.iter().all(|&x| x == c[0]), "read mixed two versions");
                    seen.insert(c[0]);
                }
                seen.len()
            })
        })
        .collect();
    let versions: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        written.load(Ordering::Relaxed) > 3,
        "the writer made progress"
    );
    assert!(versions > 3, "readers saw the data change");
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

/// A device whose first flush after `arm` waits until the test lets it go.
struct GatedFlush {
    inner: MemDevice,
    armed: AtomicBool,
    entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    release: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl BlockDevice for GatedFlush {
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(addr, buf)
    }
    fn write_at(&self, addr: u64, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(addr, buf)
    }
    fn flush(&self) -> std::io::Result<()> {
        if self.armed.swap(false, Ordering::SeqCst) {
            if let Some(tx) = self.entered.lock().unwrap().take() {
                tx.send(()).unwrap();
            }
            if let Some(rx) = self.release.lock().unwrap().take() {
                rx.recv().unwrap();
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
        "<gated>".into()
    }
}

/// fsync's flush runs without the pool lock: while one sync waits for the device,
/// other writes, reads and a second sync proceed; when the flush completes, both
/// syncs' changes are durable.
#[test]
fn sync_flushes_without_holding_the_pool_lock() {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let mem = MemDevice::new();
    let dev = Arc::new(GatedFlush {
        inner: mem.clone(),
        armed: AtomicBool::new(false),
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(Some(release_rx)),
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
    let (f1, f2) = (mk(b"one"), mk(b"two"));
    pool.commit().unwrap();
    let g0 = pool.generation();

    pool.write_file(b, f1, 0, b"first").unwrap();
    dev.armed.store(true, Ordering::SeqCst);
    let first = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.sync())
    };
    entered_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the first sync reached its flush");
    // The first sync is inside its flush: the pool is not locked (checked from
    // another thread, so that a regression fails here instead of hanging).
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    {
        let pool = pool.clone();
        std::thread::spawn(move || {
            pool.write_file(b, f2, 0, b"second").unwrap();
            done_tx
                .send(pool.read_file(b, f1, 0, 100).unwrap())
                .unwrap();
        });
    }
    let read = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the pool stayed locked while a sync was flushing");
    assert_eq!(read, b"first");
    assert_eq!(
        pool.generation(),
        g0,
        "not durable before its flush returns"
    );
    let second = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.sync())
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !first.is_finished(),
        "the first sync returned before its flush"
    );
    release_tx.send(()).unwrap();
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
    assert_eq!(pool.generation(), g0 + 2);

    // What the device holds now opens with both writes.
    let reopened = Pool::open_on(Arc::new(mem.snapshot()), &opts).unwrap();
    assert_eq!(reopened.read_file(b, f1, 0, 100).unwrap(), b"first");
    assert_eq!(reopened.read_file(b, f2, 0, 100).unwrap(), b"second");
    assert!(reopened.fsck(&FsckOptions::default()).unwrap().is_clean());
}
