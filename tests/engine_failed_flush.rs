//! A device that fails a flush leaves the engine on unknown state: the pool must go
//! read-only (poisoned) with a clear error instead of carrying on, and reopening the
//! device must give the last completed commit, fsck clean.

use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::MemDevice;

#[test]
fn failed_flush_poisons_the_pool_and_reopen_keeps_the_last_commit() {
    let dev = MemDevice::new();
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts).unwrap();
    let b = pool.branch_id("main").unwrap();
    let f = pool
        .mknod(b, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap();
    pool.write_file(b, f.ino, 0, b"committed").unwrap();
    pool.commit().unwrap();
    let good = pool.generation();

    dev.set_fail_flush(true);
    pool.write_file(b, f.ino, 0, b"lost-data").unwrap();
    let err = pool
        .sync()
        .expect_err("a failed flush must fail the commit");
    assert!(err.to_string().contains("I/O error"), "{err}");
    // Poisoned: no more changes, a clear reason, reads still served.
    let w = pool.write_file(b, f.ino, 0, b"x").unwrap_err();
    assert_eq!(w.errno(), libc::EROFS);
    assert!(pool.is_read_only(b).unwrap());
    let e = pool.commit().unwrap_err();
    assert!(
        e.to_string().contains("read-only after a failed flush"),
        "{e}"
    );
    assert!(pool.branch_create("x", "main").is_err());
    std::mem::forget(pool); // a crashed daemon does not run its final commit

    dev.set_fail_flush(false);
    let pool = Pool::open_on(Arc::new(dev.snapshot()), &opts).unwrap();
    assert!(pool.generation() == good || pool.generation() == good + 1);
    let data = pool.read_file(b, f.ino, 0, 100).unwrap();
    if pool.generation() == good {
        assert_eq!(data, b"committed");
    } else {
        // The failed commit's writes all landed before the error was reported.
        assert_eq!(data, b"lost-data");
    }
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}
