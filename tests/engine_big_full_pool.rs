//! Deletes on a full pool of a few GiB (on-disk.md §8.2). A delete's commit
//! rewrites every space-map page whose counts it changed; deleting a snapshot
//! whose blocks are spread over the whole pool, or removing a file of 512 MiB,
//! touches hundreds of pages. The delete slop was capped at 1,024 blocks, less
//! than the map's pages on such a pool: the snapshot delete removed the record
//! in memory and then its commit failed with ENOSPC, and every later commit,
//! write, rm and fsck failed too until a restart; the rm returned Ok but freeing
//! the inode failed ("stays an orphan") and nothing was freed. Now the slop
//! covers a commit that moves every map page it can change (every page of a
//! pool filled to the brim), and a branch delete checks that room before it
//! changes anything.

use std::sync::Arc;

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::MemDevice;

const BS: u64 = 4096;
/// 5 GiB: the map has about 1,300 pages, more than the old slop (1,024 blocks).
const BLOCKS: u64 = 1_310_720;
/// Blocks per space-map leaf: one punched block in each spreads the snapshot's
/// own blocks (and so the delete's frees) over every leaf.
const LEAF: u64 = 1012;

fn clean(pool: &Pool, stage: &str) {
    let r = pool.fsck(&FsckOptions::default()).expect(stage);
    assert!(r.is_clean(), "{stage}: fsck:\n{r}");
}

fn new_pool(dev: &MemDevice) -> Pool {
    let opts = PoolOptions {
        capacity_bytes: Some(BLOCKS * BS),
        ..Default::default()
    };
    Pool::create_on(Arc::new(dev.clone()), &opts).expect("create")
}

fn mkfile(pool: &Pool, name: &str) -> u64 {
    let b = pool.branch_id("main").unwrap();
    pool.mknod(
        b,
        ROOT_INO,
        name.as_bytes(),
        libc::S_IFREG | 0o644,
        0,
        Owner::default(),
    )
    .expect("mknod")
    .ino
}

/// Fill the pool: data until fallocate gives ENOSPC, then files with an xattr
/// each until creates do, committing between rounds so that nothing waits.
/// Returns how many such files (`x0`, `x1`, ...) it made.
fn fill(pool: &Pool) -> u64 {
    let b = pool.branch_id("main").unwrap();
    let f = mkfile(pool, "fill");
    let mut end = 0;
    for chunk in [256 * BS, BS] {
        while pool.fallocate(b, f, end, chunk, false).is_ok() {
            end += chunk;
        }
    }
    pool.commit().unwrap();
    let mut made = 0;
    loop {
        let before = made;
        loop {
            let name = format!("x{made}");
            let Ok(at) = pool.mknod(
                b,
                ROOT_INO,
                name.as_bytes(),
                libc::S_IFREG | 0o644,
                0,
                Owner::default(),
            ) else {
                break;
            };
            made += 1;
            if pool.setxattr(b, at.ino, b"user.x", &[7; 1900], 0).is_err() {
                break;
            }
        }
        pool.commit().unwrap();
        if made == before {
            break;
        }
    }
    pool.commit().unwrap();
    made
}

#[test]
fn snapshot_delete_spread_over_a_full_pool() {
    let dev = MemDevice::new();
    let pool = new_pool(&dev);
    let b = pool.branch_id("main").unwrap();
    let a = mkfile(&pool, "a");
    let span = BLOCKS * 9 / 10;
    let mut off = 0;
    while off < span {
        pool.fallocate(b, a, off * BS, 65536 * BS, false).unwrap();
        off += 65536;
    }
    pool.commit().unwrap();
    pool.snapshot_create("keep", "main").unwrap();
    // One block punched per map leaf in main: the snapshot alone holds it.
    let mut o = 0;
    while o < off {
        pool.punch_hole(b, a, o * BS, BS).unwrap();
        o += LEAF;
    }
    pool.commit().unwrap();
    fill(&pool);
    let free0 = pool.statfs().bfree;

    pool.branch_delete("keep")
        .expect("deleting the snapshot on a full pool");
    assert!(pool.branch_id("keep").is_err());
    pool.commit().expect("commit after the delete");
    pool.write_file(b, a, 0, &[1; 4096])
        .expect("write after the delete");
    pool.commit().unwrap();
    let free1 = pool.statfs().bfree;
    assert!(
        free1 >= free0 + off / LEAF - 64,
        "the punched blocks are free: {free0} -> {free1}"
    );
    clean(&pool, "after the delete");
    pool.unlink(b, ROOT_INO, b"fill").expect("rm fill");
    pool.commit().unwrap();
    drop(pool);

    let pool = Pool::open_on(Arc::new(dev), &PoolOptions::default()).expect("reopen");
    assert!(pool.branch_id("keep").is_err());
    let b = pool.branch_id("main").unwrap();
    assert!(pool.lookup(b, ROOT_INO, b"fill").is_err());
    clean(&pool, "reopened");
}

#[test]
fn rm_of_a_big_file_on_a_full_pool() {
    let dev = MemDevice::new();
    let pool = new_pool(&dev);
    let b = pool.branch_id("main").unwrap();
    let a = mkfile(&pool, "a");
    // 1 GiB, in 16 MiB extents: about 260 map leaves.
    let file: u64 = 262_144;
    let mut off = 0;
    while off < file {
        pool.fallocate(b, a, off * BS, 4096 * BS, false).unwrap();
        off += 4096;
    }
    let made = fill(&pool);
    let used0 = pool.used_blocks();

    pool.unlink(b, ROOT_INO, b"a").expect("rm a");
    pool.commit().unwrap();
    pool.commit().unwrap();
    let used1 = pool.used_blocks();
    assert!(
        used1 + file <= used0,
        "the file's blocks are freed: used {used0} -> {used1}"
    );
    clean(&pool, "after rm");

    // Everything else too, the files one commit each: the pool ends as empty as
    // it began. The delete slop follows the map leaves in use, and on a pool
    // filled to the brim that is every leaf, as when it covered every page.
    pool.unlink(b, ROOT_INO, b"fill").expect("rm fill");
    // `fill` (over 1 GiB) is freed in steps by the pool's freeing thread: wait.
    pool.finish_frees();
    pool.commit().unwrap();
    for i in 0..made {
        let name = format!("x{i}");
        pool.unlink(b, ROOT_INO, name.as_bytes()).expect("rm x");
        pool.commit().unwrap();
    }
    pool.commit().unwrap();
    pool.commit().unwrap();
    let used2 = pool.used_blocks();
    assert!(used2 < 4096, "everything deleted: used {used0} -> {used2}");
    clean(&pool, "after deleting everything");
}
