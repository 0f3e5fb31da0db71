//! Blocks a commit frees must stay unallocatable until that commit is durable,
//! also now that its flushes run without the pool lock and the next
//! transaction writes meanwhile. A crash before the commit's superblock opens
//! the previous commit, which still maps those blocks: had a data write of the
//! next transaction landed on them, the previous commit would open damaged.

#[path = "support/held_flushes.rs"]
mod held_flushes;

use std::sync::Arc;
use std::time::Duration;

use cowfs::fs::Owner;
use cowfs::pool::{FsckOptions, Pool};

const MIB: usize = 1 << 20;

#[test]
fn a_write_during_the_first_flush_does_not_reuse_what_the_commit_freed() {
    // The first flush, once armed, waits until the test releases it.
    let (dev, pool, b, opts) = held_flushes::pool_of(16 << 20, 1, &[]);
    let mk = |name: &[u8]| {
        pool.mknod(b, 1, name, libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap()
            .ino
    };
    let (a, filler, next) = (mk(b"a"), mk(b"filler"), mk(b"next"));
    pool.write_file(b, a, 0, &vec![1; 2 * MIB]).unwrap();
    // Fill the pool, then free 3 MiB: room for a copy of "a" and 1 MiB more.
    let mut off = 0;
    loop {
        match pool.write_file(b, filler, off, &[9; 256 << 10]) {
            Ok(n) => off += n as u64,
            Err(e) => {
                assert_eq!(e.errno(), libc::ENOSPC, "{e}");
                break;
            }
        }
    }
    pool.commit().unwrap();
    pool.punch_hole(b, filler, 0, 3 << 20).unwrap();
    pool.commit().unwrap();
    pool.commit().unwrap();
    let good = pool.generation();

    // Overwrite "a" (512 blocks: a two-flush commit) and commit; the commit
    // frees the old copy, and its first flush is held.
    pool.write_file(b, a, 0, &vec![2; 2 * MIB]).unwrap();
    dev.arm();
    let committing = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.commit())
    };
    dev.wait_entered(1);
    // The next transaction writes 2 MiB: the only room is the old copy of "a",
    // which the commit in flight freed. The write must wait for that commit.
    let writing = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.write_file(b, next, 0, &vec![3; 2 * MIB]))
    };
    std::thread::sleep(Duration::from_millis(300));
    let waited = !writing.is_finished();

    // A crash now: the commit's superblock is not written, the previous commit
    // opens and still holds the old "a".
    let image = dev.image();
    let crashed = Pool::open_on(Arc::new(image), &opts).unwrap();
    assert_eq!(crashed.generation(), good);
    let old = crashed.read_file(b, a, 0, 2 * MIB);
    assert!(
        old.as_ref().is_ok_and(|d| d.iter().all(|&x| x == 1)),
        "the previous commit's copy of \"a\" was overwritten (write waited: {waited}): {:?}",
        old.map(|d| d.iter().position(|&x| x != 1))
    );
    let r = crashed.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
    drop(crashed);
    assert!(waited, "the write did not wait for the commit in flight");

    dev.release(1);
    committing.join().unwrap().unwrap();
    assert_eq!(writing.join().unwrap().unwrap(), 2 * MIB);
    pool.commit().unwrap();
    assert!(pool
        .read_file(b, next, 0, 2 * MIB)
        .unwrap()
        .iter()
        .all(|&x| x == 3));
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}
