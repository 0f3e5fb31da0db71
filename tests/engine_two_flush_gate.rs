//! fsync-gate for the first flush of a two-flush commit: Linux reports a
//! write-back error to one fdatasync caller only, so when two syncs flush a
//! commit's blocks at once and one of them fails, the other's success does not
//! prove the blocks landed. The commit's superblock must then never be written:
//! it would name blocks that may be lost, and a two-flush commit has no
//! manifest to fall back from (the pool would open damaged, not at N-1).
//! Likewise a pool poisoned while the superblock waits must not write it.

#[path = "support/held_flushes.rs"]
mod held_flushes;

use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::Pool;

#[test]
fn a_failed_first_flush_keeps_the_superblock_unwritten_despite_a_concurrent_sync() {
    // The first flush, once armed, waits until the test releases it and then
    // fails (the write-back error); later flushes succeed.
    let (dev, pool, b, opts) = held_flushes::pool(1, &[1]);
    let big = pool
        .mknod(b, 1, b"big", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap()
        .ino;
    pool.commit().unwrap();
    let good = pool.generation();

    // A two-flush commit (2 MiB written), its first flush held at the device.
    let (_, committing) = held_flushes::two_flush_commit_held(&dev, &pool, b, big);

    // A second sync flushes the same blocks meanwhile (on Linux its fdatasync
    // would return 0 while the first one's returns EIO).
    let other = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.sync())
    };
    // Its flush reaches the device beside the first one and returns 0 there.
    dev.wait_entered(2);
    dev.release(1);
    let first = committing.join().unwrap();
    assert!(first.is_err(), "the failed flush is reported");
    let other = other.join().unwrap();
    assert!(other.is_err(), "the sync beside the failed flush must fail");

    // The blocks' flush failed: commit good+1 is not durable, whatever the
    // other sync saw, and its superblock must not be on the device.
    let image = dev.image();
    let reopened = Pool::open_on(Arc::new(image), &opts).unwrap();
    assert_eq!(
        reopened.generation(),
        good,
        "superblock written after a failed flush of its blocks (other sync: {other:?})"
    );
}

#[test]
fn a_pool_poisoned_during_the_first_flush_never_writes_the_superblock() {
    // The first two flushes, once armed, each wait until the test releases
    // them; the first fails.
    let (dev, pool, b, opts) = held_flushes::pool(2, &[1]);
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
    dev.arm();
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
    dev.wait_entered(2);

    // The log's flush fails (it may be the one told of the commit's lost
    // write-back): the pool is poisoned before the commit's flush returns.
    dev.release(1);
    assert!(logging.join().unwrap().is_err());
    dev.release(2);
    let committed = committing.join().unwrap();

    let image = dev.image();
    let reopened = Pool::open_on(Arc::new(image), &opts).unwrap();
    // (Opening replays the log and commits, so the generation says nothing.)
    assert!(
        reopened.read_file(b, big, 0, 10).unwrap().is_empty(),
        "a poisoned pool wrote a superblock (commit: {committed:?})"
    );
}
