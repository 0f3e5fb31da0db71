use cowfs::fs::Owner;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::MemDevice;
use std::sync::Arc;

#[test]
fn create_write_branch_reopen() {
    let dev = MemDevice::new();
    let opts = PoolOptions {
        capacity_bytes: Some(256 << 20),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts).unwrap();
    let main = pool.branch_id("main").unwrap();
    let f = pool
        .mknod(
            main,
            1,
            b"a.txt",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .unwrap();
    pool.write_file(main, f.ino, 0, b"hello").unwrap();
    let big = pool
        .mknod(main, 1, b"big", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    pool.write_file(main, big.ino, 3, &data).unwrap();
    let b = pool.branch_create("dev", "main").unwrap();
    pool.write_file(b, f.ino, 0, b"HELLO").unwrap();
    pool.write_file(b, big.ino, 100_000, b"xyz").unwrap();
    assert_eq!(pool.read_file(main, f.ino, 0, 100).unwrap(), b"hello");
    assert_eq!(pool.read_file(b, f.ino, 0, 100).unwrap(), b"HELLO");
    assert_eq!(pool.read_file(main, big.ino, 3, 1_000_000).unwrap(), data);
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
    drop(pool);
    let pool = Pool::open_on(Arc::new(dev.clone()), &opts).unwrap();
    let b = pool.branch_id("dev").unwrap();
    let got = pool.read_file(b, big.ino, 0, 2_000_000).unwrap();
    assert_eq!(&got[100_000..100_003], b"xyz");
    assert_eq!(got.len(), 1_000_003);
    pool.branch_delete("main").unwrap();
    assert_eq!(pool.read_file(b, f.ino, 0, 100).unwrap(), b"HELLO");
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

#[test]
fn sync_commits_only_what_is_not_yet_durable() {
    let dev = MemDevice::new();
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts).unwrap();
    let b = pool.branch_id("main").unwrap();
    let g0 = pool.generation();
    pool.sync().unwrap();
    assert_eq!(pool.generation(), g0, "nothing to make durable");
    let f = pool
        .mknod(b, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap();
    pool.write_file(b, f.ino, 0, b"abc").unwrap();
    pool.sync().unwrap();
    assert_eq!(pool.generation(), g0 + 1);
    let written = dev.blocks_written();
    pool.sync().unwrap();
    assert_eq!(
        pool.generation(),
        g0 + 1,
        "already covered by the last commit"
    );
    assert_eq!(dev.blocks_written(), written);
    // What sync made durable survives reopening the device.
    drop(pool);
    let pool = Pool::open_on(Arc::new(dev), &opts).unwrap();
    assert_eq!(pool.read_file(b, f.ino, 0, 10).unwrap(), b"abc");
}

/// Regression: deleting a file whose extents sit in leaves the clone still shares
/// with its parent dropped the shared leaf's references before copying the leaf
/// ("reference added to a free block").
#[test]
fn unlink_of_large_files_in_a_fresh_clone() {
    let dev = MemDevice::new();
    let opts = PoolOptions {
        capacity_bytes: Some(256 << 20),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(dev), &opts).unwrap();
    let main = pool.branch_id("main").unwrap();
    let data = vec![0x5Au8; 2 << 20];
    for i in 0..4u8 {
        let f = pool
            .mknod(
                main,
                1,
                &[b'f', b'0' + i],
                libc::S_IFREG | 0o644,
                0,
                Owner::default(),
            )
            .unwrap();
        pool.write_file(main, f.ino, 0, &data).unwrap();
    }
    pool.commit().unwrap();
    let empty_pool_used = pool.used_blocks();
    let c = pool.branch_create("c", "main").unwrap();
    for i in 0..4u8 {
        pool.unlink(c, 1, &[b'f', b'0' + i]).unwrap();
    }
    for i in 0..4u8 {
        let a = pool.lookup(main, 1, &[b'f', b'0' + i]).unwrap();
        assert_eq!(pool.read_file(main, a.ino, 0, 4 << 20).unwrap(), data);
    }
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
    pool.branch_delete("c").unwrap();
    assert!(pool.used_blocks() <= empty_pool_used + 4);
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

#[test]
fn create_refuses_a_size_too_small_or_a_file_in_use_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let tiny = PoolOptions {
        capacity_bytes: Some(100 << 10),
        ..Default::default()
    };
    let err = Pool::create(&path, &tiny).err().expect("a 25-block pool");
    assert!(
        err.to_string().contains("pool too small: 25 blocks"),
        "{err}"
    );
    assert!(!path.exists(), "a refused size left a pool file behind");

    std::fs::write(&path, b"someone's data").unwrap();
    let err = Pool::create(&path, &PoolOptions::default())
        .err()
        .expect("a non-empty file");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"someone's data");
}

/// Deleting a branch in the middle of a chain gives its children its parent, in
/// the delete's commit: `main -> a -> b -> c`, `b` deleted, then `a`: after each,
/// and after a reopen, `c`'s parent is the nearest ancestor left, and everything
/// taken from `main` is still found from it (sanitize requirements follow that
/// lineage, control/sanitizing.rs).
#[test]
fn deleting_a_middle_branch_keeps_the_chain_connected() {
    let dev = MemDevice::new();
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let mut pool = Pool::create_on(Arc::new(dev.clone()), &opts).unwrap();
    pool.branch_create("a", "main").unwrap();
    pool.snapshot_create("b", "a").unwrap();
    let c = pool.branch_create("c", "b").unwrap();
    let main = pool.branch_id("main").unwrap();
    for (gone, left) in [("b", "a"), ("a", "main")] {
        pool.branch_delete(gone).unwrap();
        assert_eq!(pool.info("c").unwrap().parent.as_deref(), Some(left));
        drop(pool);
        pool = Pool::open_on(Arc::new(dev.clone()), &opts).unwrap();
        let parent = pool.info("c").unwrap().parent;
        assert_eq!(parent.as_deref(), Some(left), "after a reopen");
        let r = pool.fsck(&FsckOptions::default()).unwrap();
        assert!(r.is_clean(), "{r}");
    }
    assert_eq!(pool.descendants(main), vec![c]);
}
