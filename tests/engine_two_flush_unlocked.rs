//! A commit too large for a superblock manifest flushes its blocks before writing
//! its superblock. That first flush (a host fsync: up to tens of ms under load)
//! ran under the pool lock, stalling every request of every mount meanwhile. It
//! now runs without the lock: requests go on during it, and a crash at that
//! moment opens the previous commit, clean.

#[path = "support/held_flushes.rs"]
mod held_flushes;

use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{FsckOptions, Pool};

use held_flushes::within_10s;

#[test]
fn requests_run_during_the_first_flush_of_a_two_flush_commit() {
    // The first flush, once armed, waits until the test releases it.
    let (dev, pool, b, opts) = held_flushes::pool(1, &[]);
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

    // A two-flush commit (2 MiB written), its first flush held at the device.
    let (data, committing) = held_flushes::two_flush_commit_held(&dev, &pool, b, big);

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
        dev.release(1);
        panic!("a request waited for the first flush of a commit");
    };
    assert_eq!(read, b"committed");
    assert_eq!(gen_during, good, "the commit is not durable yet");

    // A crash now (every write so far landed, the superblock not written yet):
    // the previous commit, clean.
    let image = dev.image();
    let crashed = Pool::open_on(Arc::new(image), &opts).unwrap();
    assert_eq!(crashed.generation(), good);
    assert_eq!(crashed.read_file(b, f, 0, 100).unwrap(), b"committed");
    assert!(crashed.read_file(b, big, 0, 10).unwrap().is_empty());
    let r = crashed.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
    drop(crashed);

    dev.release(1);
    committing.join().unwrap().unwrap();
    assert_eq!(pool.generation(), good + 1);
    assert_eq!(dev.entered(), 2, "blocks, then superblock");

    // The write made during the flush belongs to the next commit.
    let image = dev.image();
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
