//! A device that fails a flush leaves the engine on unknown state: the pool must go
//! read-only (poisoned) with a clear error instead of carrying on, and reopening the
//! device must give the last completed commit, fsck clean.

#[path = "support/held_flushes.rs"]
mod held_flushes;

use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{BranchId, FsckOptions, Pool, PoolOptions};
use cowfs::store::device::MemDevice;

use held_flushes::HeldFlushes;

/// A 64 MiB pool in memory with file "f" holding "committed", committed.
fn committed_file() -> (MemDevice, PoolOptions, Pool, BranchId, u64) {
    let dev = MemDevice::new();
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts).unwrap();
    let b = pool.branch_id("main").unwrap();
    let ino = pool
        .mknod(b, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap()
        .ino;
    pool.write_file(b, ino, 0, b"committed").unwrap();
    pool.commit().unwrap();
    (dev, opts, pool, b, ino)
}

#[test]
fn failed_flush_poisons_the_pool_and_reopen_keeps_the_last_commit() {
    let (dev, opts, pool, b, ino) = committed_file();
    let good = pool.generation();

    dev.set_fail_flush(true);
    pool.write_file(b, ino, 0, b"lost-data").unwrap();
    let err = pool
        .sync()
        .expect_err("a failed flush must fail the commit");
    assert!(err.to_string().contains("I/O error"), "{err}");
    // Poisoned: no more changes, a clear reason, reads still served.
    let w = pool.write_file(b, ino, 0, b"x").unwrap_err();
    assert_eq!(w.errno(), libc::EROFS);
    assert!(pool.is_read_only(b).unwrap());
    let e = pool.commit().unwrap_err();
    assert!(
        e.to_string().contains("read-only after a failed flush"),
        "{e}"
    );
    assert!(pool.branch_create("x", "main").is_err());
    // The failed commit is not durable: its generation is not the pool's.
    assert_eq!(
        pool.generation(),
        good,
        "the failed commit counted as durable"
    );
    std::mem::forget(pool); // a crashed daemon does not run its final commit

    dev.set_fail_flush(false);
    let pool = Pool::open_on(Arc::new(dev.snapshot()), &opts).unwrap();
    assert!(pool.generation() == good || pool.generation() == good + 1);
    let data = pool.read_file(b, ino, 0, 100).unwrap();
    if pool.generation() == good {
        assert_eq!(data, b"committed");
    } else {
        // The failed commit's writes all landed before the error was reported.
        assert_eq!(data, b"lost-data");
    }
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

/// fsync-gate (PostgreSQL, 2018): after a commit's flush failed, the commit was
/// never durable, so no later sync may report success for it. The second sync found
/// the failed commit already "written" (its generation passed, nothing new changed)
/// and returned Ok: an application retrying fsync, or fsyncing a directory after a
/// failed fsync, was told its data was safe while a restart rolls it back.
#[test]
fn a_failed_flush_is_not_forgotten_by_the_next_sync() {
    let (dev, _, pool, b, ino) = committed_file();

    dev.set_fail_flush(true);
    pool.mknod(b, 1, b"g", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap();
    pool.sync().expect_err("a failed flush must fail the sync");
    // Retried while the disk still fails, and after it recovered: still an error.
    let again = pool.sync().expect_err("a retried sync must not succeed");
    assert!(again.to_string().contains("read-only"), "{again}");
    dev.set_fail_flush(false);
    pool.sync()
        .expect_err("a sync after the disk recovered must not succeed");
    let fsync = pool.sync_file(b, ino).expect_err("fsync of a file");
    assert_eq!(fsync.errno(), libc::EROFS);
    std::mem::forget(pool);
}

/// A pool on a device whose first flush, once armed, blocks until the test
/// releases it and then returns EIO, while other flushes succeed. That is what
/// two threads calling fdatasync on one file may see on Linux when write-back
/// fails: the error is reported to one caller only (errseq), the other gets 0.
fn racing_flushes() -> (Arc<HeldFlushes>, Arc<Pool>, BranchId) {
    let (dev, pool, b, _) = held_flushes::pool(1, &[1]);
    (dev, pool, b)
}

/// Run `first` on a thread and wait until its flush has reached the device;
/// then run `second` on another thread, wait until its flush has reached the
/// device too (and returned 0 there), and let the first flush fail. The
/// results of both.
fn race<T: Send + 'static>(
    dev: &HeldFlushes,
    first: impl FnOnce() -> T + Send + 'static,
    second: impl FnOnce() -> T + Send + 'static,
) -> (T, T) {
    dev.arm();
    let first = std::thread::spawn(first);
    dev.wait_entered(1);
    let second = std::thread::spawn(second);
    dev.wait_entered(2);
    dev.release(1);
    (first.join().unwrap(), second.join().unwrap())
}

/// A commit's flush that fails must fail every sync waiting on it. Two syncs used
/// to flush the one pool file at once; when write-back failed, Linux told one of
/// them (EIO) and the other got 0 and acknowledged the commit, though its blocks
/// may not have landed. Through the pool's flush gate (store/flush_gate.rs) a
/// flush that returned 0 waits for the flushes that ran beside it and fails if
/// one of them failed, so the second sync cannot succeed.
#[test]
fn a_sync_beside_a_failing_flush_fails_too() {
    let (dev, pool, b) = racing_flushes();
    pool.commit().unwrap();
    pool.mknod(b, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap();
    // The first sync writes the (small, one-flush) commit and flushes outside the
    // pool lock; the second finds the commit flushing and flushes too.
    let (p1, p2) = (pool.clone(), pool.clone());
    let (first, second) = race(&dev, move || p1.sync(), move || p2.sync());
    let err = first.expect_err("the sync whose flush failed must fail");
    assert!(err.to_string().contains("I/O error"), "{err}");
    second.expect_err("the sync beside the failed flush must fail");
    // And the pool is read-only from then on.
    let w = pool.mknod(b, 1, b"g", libc::S_IFREG | 0o644, 0, Owner::default());
    assert_eq!(w.unwrap_err().errno(), libc::EROFS);
    pool.sync().expect_err("a later sync");
    std::mem::forget(Arc::try_unwrap(pool).ok());
}

/// The same for fsync through the intent log: two files' records flushed at once,
/// the first flush failing, must fail both fsyncs (the second record's flush
/// would have returned 0 on Linux, and its data may be what failed to land).
#[test]
fn an_fsync_beside_a_failing_log_flush_fails_too() {
    let (dev, pool, b) = racing_flushes();
    let mut files = Vec::new();
    for name in [&b"f1"[..], b"f2"] {
        let ino = pool
            .mknod(b, 1, name, libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap()
            .ino;
        pool.write_file(b, ino, 0, &[1; 8192]).unwrap();
        files.push(ino);
    }
    pool.commit().unwrap();
    for &ino in &files {
        pool.write_file(b, ino, 0, &[2; 8192]).unwrap();
    }
    let (p1, p2) = (pool.clone(), pool.clone());
    let (f1, f2) = (files[0], files[1]);
    let (first, second) = race(
        &dev,
        move || p1.sync_file(b, f1),
        move || p2.sync_file(b, f2),
    );
    first.expect_err("the fsync whose flush failed must fail");
    second.expect_err("the fsync beside the failed flush must fail");
    std::mem::forget(Arc::try_unwrap(pool).ok());
}
