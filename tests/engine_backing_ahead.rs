//! A pool file is backed ahead of its allocator by small writes only
//! (`NodeStore::back_ahead`, format-spec/on-disk.md §8.2): through the engine's write
//! path, a small write leaves zeros written past what it allocated, so that the
//! host has allocated the next writes' blocks; a fallocate and a large write do
//! not. The pool stays consistent and reads back after a reopen.

use cowfs::fs::Owner;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use std::path::Path;

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).expect("pool file").len()
}

#[test]
fn small_writes_back_ahead_fallocate_and_large_writes_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pool");
    let opts = PoolOptions {
        capacity_bytes: Some(1 << 30),
        ..Default::default()
    };
    let pool = Pool::create(&path, &opts).expect("create pool");
    let main = pool.branch_id("main").expect("main");
    let mk = |name: &[u8]| {
        pool.mknod(main, 1, name, libc::S_IFREG | 0o644, 0, Owner::default())
            .expect("mknod")
            .ino
    };
    let (reserved, large, small) = (mk(b"reserved"), mk(b"large"), mk(b"small"));
    let len0 = file_len(&path);

    // fallocate allocates without writing: the file does not grow.
    pool.fallocate(main, reserved, 0, 64 << 10, false)
        .expect("fallocate");
    assert_eq!(file_len(&path), len0, "fallocate wrote to the pool file");

    // A large write grows the file by what it writes (past the fallocated blocks),
    // not by a backed piece more.
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    pool.write_file(main, large, 0, &big).expect("large write");
    let len1 = file_len(&path);
    assert!(
        len1 - len0 < (1 << 20) + (256 << 10),
        "a large write grew the pool file by {} KiB",
        (len1 - len0) >> 10
    );

    // A small write (not inline: 16 KiB) backs what follows it.
    let data = vec![0x5au8; 16 << 10];
    pool.write_file(main, small, 0, &data).expect("small write");
    let len2 = file_len(&path);
    assert!(
        len2 - len1 >= 1 << 20,
        "a small write grew the pool file by only {} KiB (backing needs 1 GiB free on the host)",
        (len2 - len1) >> 10
    );
    let mut tail = vec![1u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&path).expect("open pool file"),
        &mut tail,
        len2 - 4096,
    )
    .expect("read tail");
    assert!(
        tail.iter().all(|b| *b == 0),
        "the backed blocks are not zeros"
    );

    pool.commit().expect("commit");
    let r = pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(r.is_clean(), "{r}");
    drop(pool);
    let pool = Pool::open(&path, &opts).expect("reopen");
    let main = pool.branch_id("main").expect("main");
    assert_eq!(pool.read_file(main, large, 0, 1 << 20).expect("read"), big);
    assert_eq!(
        pool.read_file(main, small, 0, 16 << 10).expect("read"),
        data
    );
}
