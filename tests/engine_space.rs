//! Space test (issue 2, check 4): fill a branch, snapshot it, overwrite half in the
//! branch, delete the snapshot, delete the branch: the pool's used blocks return to
//! the empty-pool figure and fsck reports no leak, at every stage and in both deletion
//! orders. The one allowed difference is space-map leaf pages: a page, once written
//! for an area the allocator reached, stays even when all its counts are back to zero
//! (at most one block per 1012 of capacity); they are counted from the image. Also: a full pool refuses writes with ENOSPC and leaves every
//! file exactly as it was (the failing cases found by the model test).

use std::sync::Arc;

use cowfs::fs::{FsError, Owner, SetAttr, ROOT_INO};
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::block::HEADER_SIZE;
use cowfs::store::device::{BlockDevice, MemDevice};
use cowfs::store::le::u64_at;
use cowfs::store::spacemap::PTRS_PER_INDEX;
use cowfs::store::superblock::Superblock;
use cowfs::store::BLOCK_SIZE;

const MIB: u64 = 1 << 20;

fn opts(capacity: u64) -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(capacity),
        dirty_limit_bytes: 1 << 20,
        ..Default::default()
    }
}

/// Space-map pages (index and leaf) of the newest commit on the device.
fn space_pages(dev: &MemDevice) -> u64 {
    let read = |a: u64| {
        let mut b = vec![0u8; BLOCK_SIZE];
        dev.read_at(a, &mut b).expect("read");
        b
    };
    let sb = (0..2)
        .filter_map(|s| Superblock::decode(&read(s)).ok())
        .max_by_key(|s| s.generation)
        .expect("superblock");
    let mut n = 0;
    let mut stack = vec![(sb.space_root, sb.space_depth)];
    while let Some((a, level)) = stack.pop() {
        n += 1;
        if level > 0 {
            let b = read(a);
            for i in 0..PTRS_PER_INDEX as usize {
                let p = u64_at(&b, HEADER_SIZE + i * 8);
                if p != 0 {
                    stack.push((p, level - 1));
                }
            }
        }
    }
    n
}

fn clean(pool: &Pool, stage: &str) {
    let r = pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(r.is_clean(), "{stage}: fsck:\n{r}");
    assert_eq!(r.leaked_blocks, 0, "{stage}");
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) ^ seed) as u8)
        .collect()
}

/// Files of every shape in `b`: 48 x 256 KiB, sparse ones, inline ones, xattrs, a
/// directory tree, hard links and clones. Returns the inodes of the large files.
fn fill(pool: &Pool, b: u64) -> Vec<u64> {
    let o = Owner::default();
    let d = pool.mkdir(b, ROOT_INO, b"d", 0o755, o).expect("mkdir");
    let mut big = Vec::new();
    for i in 0..48u64 {
        let name = format!("big{i}");
        let f = pool
            .mknod(b, d.ino, name.as_bytes(), libc::S_IFREG | 0o644, 0, o)
            .expect("mknod");
        pool.write_file(b, f.ino, 0, &pattern(i, 256 * 1024))
            .expect("write");
        pool.setxattr(b, f.ino, b"user.n", name.as_bytes(), 0)
            .expect("xattr");
        big.push(f.ino);
    }
    for i in 0..64u64 {
        let name = format!("small{i}");
        let f = pool
            .mknod(b, ROOT_INO, name.as_bytes(), libc::S_IFREG | 0o600, 0, o)
            .expect("mknod");
        pool.write_file(b, f.ino, i * 7, &pattern(i, 300))
            .expect("write");
        if i % 8 == 0 {
            pool.link(b, f.ino, d.ino, format!("hl{i}").as_bytes())
                .expect("link");
        }
    }
    let sparse = pool
        .mknod(b, ROOT_INO, b"sparse", libc::S_IFREG | 0o644, 0, o)
        .expect("mknod");
    pool.write_file(b, sparse.ino, 50 * MIB, b"end")
        .expect("write");
    pool.fallocate(b, sparse.ino, MIB, MIB, false)
        .expect("fallocate");
    let copy = pool
        .mknod(b, ROOT_INO, b"clone", libc::S_IFREG | 0o644, 0, o)
        .expect("mknod");
    pool.clone_range(b, big[0], 0, copy.ino, 0, 256 * 1024)
        .expect("clone");
    big
}

/// Overwrite half the data of `b`: half the large files rewritten, some truncated,
/// some unlinked, holes punched.
fn overwrite_half(pool: &Pool, b: u64, big: &[u64]) {
    let d = pool.lookup(b, ROOT_INO, b"d").expect("d");
    for (i, ino) in big.iter().enumerate().take(big.len() / 2) {
        match i % 4 {
            0 | 1 => {
                pool.write_file(b, *ino, 0, &pattern(1000 + i as u64, 256 * 1024))
                    .expect("overwrite");
            }
            2 => {
                let s = SetAttr {
                    size: Some(10_000),
                    ..Default::default()
                };
                pool.setattr(b, *ino, &s).expect("truncate");
            }
            _ => pool.punch_hole(b, *ino, 4096, 200_000).expect("punch"),
        }
    }
    for i in (big.len() / 2..big.len()).step_by(3) {
        pool.unlink(b, d.ino, format!("big{i}").as_bytes())
            .expect("unlink");
    }
    pool.commit().expect("commit");
}

fn cycle(pool: &Pool, dev: &MemDevice, snapshot_first: bool) -> (u64, u64) {
    let work = pool.branch_create("work", "main").expect("branch");
    let big = fill(pool, work);
    pool.commit().expect("commit");
    let filled = pool.used_blocks();
    clean(pool, "filled");
    pool.snapshot_create("snap", "work").expect("snapshot");
    assert!(
        pool.used_blocks() - filled < 8,
        "a snapshot must not copy data"
    );
    let snap = pool.branch_id("snap").expect("snap");
    let snap_view = pool.read_file(snap, big[0], 0, 256 * 1024).expect("read");
    overwrite_half(pool, work, &big);
    assert!(
        pool.used_blocks() > filled + 200,
        "overwrites take new blocks"
    );
    clean(pool, "overwritten");
    if snapshot_first {
        pool.branch_delete("snap").expect("delete snap");
        clean(pool, "snapshot deleted");
        pool.branch_delete("work").expect("delete work");
    } else {
        // Deleting the parent leaves the snapshot intact.
        pool.branch_delete("work").expect("delete work");
        clean(pool, "branch deleted");
        assert_eq!(
            pool.read_file(snap, big[0], 0, 256 * 1024).expect("read"),
            snap_view
        );
        pool.branch_delete("snap").expect("delete snap");
    }
    pool.commit().expect("commit");
    clean(pool, "all deleted");
    (pool.used_blocks(), space_pages(dev))
}

#[test]
fn used_blocks_return_to_the_empty_pool_figure() {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts(512 * MIB)).expect("create");
    pool.commit().expect("commit");
    let empty = pool.used_blocks();
    let empty_pages = space_pages(&dev);
    clean(&pool, "empty");
    let mut figures = Vec::new();
    for (i, snapshot_first) in [true, false, true].into_iter().enumerate() {
        let (used, pages) = cycle(&pool, &dev, snapshot_first);
        println!(
            "space cycle {i}: empty pool {empty} blocks ({empty_pages} space-map pages), \
             after the cycle {used} blocks ({pages} space-map pages)"
        );
        // The only growth allowed: space-map pages that now exist for the area used.
        assert_eq!(
            used - pages,
            empty - empty_pages,
            "cycle {i}: blocks not returned"
        );
        figures.push(used);
    }
    drop(pool);
    let pool = Pool::open_on(Arc::new(dev.clone()), &opts(512 * MIB)).expect("reopen");
    assert_eq!(pool.used_blocks(), figures[2]);
    clean(&pool, "reopened");
}

#[test]
fn full_pool_refuses_writes_and_changes_nothing() {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts(1400 * 4096)).expect("create");
    let b = pool.branch_id("main").expect("main");
    let o = Owner::default();
    let mk = |name: &[u8]| {
        pool.mknod(b, ROOT_INO, name, libc::S_IFREG | 0o644, 0, o)
            .expect("mknod")
            .ino
    };
    let a = mk(b"a");
    let a_data = pattern(1, 2 * MIB as usize);
    pool.write_file(b, a, 0, &a_data).expect("write a");
    let c = mk(b"inline");
    pool.write_file(b, c, 0, b"small inline bytes")
        .expect("write c");
    pool.commit().expect("commit");
    // The snapshot keeps a's blocks: every change to a needs new ones.
    pool.snapshot_create("keep", "main").expect("snapshot");
    let filler = mk(b"filler");
    // Large writes until ENOSPC, then single blocks until not even one fits, also
    // right after a commit (which lowers the metadata reserve and releases frees).
    let mut off = 0u64;
    let mut fill = |chunk: usize| {
        let mut n = 0;
        loop {
            match pool.write_file(b, filler, off, &pattern(9, chunk)) {
                Ok(w) => {
                    off += w as u64;
                    n += 1;
                }
                Err(e) => {
                    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
                    return n;
                }
            }
        }
    };
    fill(64 * 1024);
    loop {
        let n = fill(4096);
        pool.commit().expect("commit on a full pool");
        if n == 0 {
            break;
        }
    }
    let filler_len = pool.getattr(b, filler).expect("getattr").size;
    let unchanged = |what: &str| {
        let got = pool.read_file(b, a, 0, 3 * MIB as usize).expect("read a");
        let at = got.iter().zip(&a_data).position(|(x, y)| x != y);
        assert!(
            got.len() == a_data.len() && at.is_none(),
            "{what}: file a changed at {at:?}"
        );
        let got = pool.read_file(b, c, 0, 100).expect("read c");
        assert!(got == b"small inline bytes", "{what}: inline file changed");
        assert_eq!(
            pool.getattr(b, filler).expect("getattr").size,
            filler_len,
            "{what}"
        );
    };
    let enospc = |r: Result<(), cowfs::fs::FsError>, what: &str| {
        assert_eq!(r.map_err(|e| e.errno()), Err(libc::ENOSPC), "{what}");
        unchanged(what);
    };
    enospc(
        pool.write_file(b, a, 0, &pattern(2, MIB as usize))
            .map(|_| ()),
        "overwrite",
    );
    enospc(
        pool.write_file(b, a, 5000, b"x").map(|_| ()),
        "small unaligned overwrite",
    );
    let s = SetAttr {
        size: Some(MIB + 100),
        ..Default::default()
    };
    enospc(
        pool.setattr(b, a, &s).map(|_| ()),
        "truncate to an unaligned size",
    );
    enospc(pool.punch_hole(b, a, 100, MIB), "punch with partial blocks");
    enospc(
        pool.write_file(b, c, 8000, b"moves out of line")
            .map(|_| ()),
        "un-inline",
    );
    let r = pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(r.is_clean(), "{r}");
    // Deleting the snapshot frees a's old blocks: the same writes now succeed.
    pool.branch_delete("keep").expect("delete");
    pool.unlink(b, ROOT_INO, b"filler").expect("unlink");
    pool.commit().expect("commit");
    pool.write_file(b, a, 0, &pattern(2, MIB as usize))
        .expect("overwrite after freeing");
    pool.write_file(b, c, 8000, b"moves out of line")
        .expect("un-inline after freeing");
    let r = pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(r.is_clean(), "{r}");
}

/// ENOSPC on a metadata change leaves every other file as it was. A B-tree leaf
/// split that found no block for its right half used to drop that half: one
/// failed setxattr on a full pool made the names and xattrs of other files vanish.
#[test]
fn metadata_enospc_loses_no_other_files_items() {
    let small = PoolOptions {
        capacity_bytes: Some(256 * 4096),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(MemDevice::new()), &small).unwrap();
    let b = pool.branch_id("main").unwrap();
    let o = Owner::default();
    let mut made = Vec::new();
    for i in 0..60 {
        let name = format!("file-{i:05}");
        let a = pool
            .mknod(b, ROOT_INO, name.as_bytes(), libc::S_IFREG | 0o644, 0, o)
            .unwrap();
        pool.setxattr(b, a.ino, b"user.s", &[1u8; 100], 0).unwrap();
        made.push((name, a.ino));
    }
    pool.commit().unwrap();
    // The leaf holding file-00000 is dirty in this transaction.
    pool.setxattr(b, made[0].1, b"user.t", &[2u8; 10], 0)
        .unwrap();
    // Fill the pool with other metadata (higher inode numbers).
    let d = pool.mkdir(b, ROOT_INO, b"other", 0o755, o).unwrap().ino;
    for i in 0.. {
        let Ok(a) = pool.mknod(
            b,
            d,
            format!("g{i}").as_bytes(),
            libc::S_IFREG | 0o644,
            0,
            o,
        ) else {
            break;
        };
        if pool.setxattr(b, a.ino, b"user.x", &[7u8; 1900], 0).is_err() {
            break;
        }
    }
    // One more xattr on file-00000: its leaf must split, with no block free. It
    // fails, is undone, and (as any change that finds no room while freed blocks
    // wait) runs again after a commit, which may or may not make room for it:
    // either way no item of another file is lost.
    let r = pool.setxattr(b, made[0].1, b"user.big", &[9u8; 1900], 0);
    assert!(
        matches!(
            r.as_ref().map_err(|e| e.errno()),
            Ok(()) | Err(libc::ENOSPC)
        ),
        "{r:?}"
    );
    for (name, ino) in &made {
        assert_eq!(pool.lookup(b, ROOT_INO, name.as_bytes()).unwrap().ino, *ino);
        assert_eq!(pool.getxattr(b, *ino, b"user.s").unwrap(), [1u8; 100]);
    }
}

/// Create files with a 1900-byte xattr each in the root of `b` until an operation
/// fails: the names made (the last one may lack its xattr) and the error.
fn fill_with_xattr_files(pool: &Pool, b: u64) -> (Vec<String>, FsError) {
    let mut made = Vec::new();
    let err = loop {
        let name = format!("file-{:05}", made.len());
        let mode = libc::S_IFREG | 0o644;
        let a = match pool.mknod(b, ROOT_INO, name.as_bytes(), mode, 0, Owner::default()) {
            Ok(a) => a,
            Err(e) => break e,
        };
        made.push(name);
        if let Err(e) = pool.setxattr(b, a.ino, b"user.x", &[7u8; 1900], 0) {
            break e;
        }
    };
    (made, err)
}

/// File creates and xattrs on a nearly full pool stop with ENOSPC while the commit
/// that makes them durable still finds room (the commit reserve). They used to
/// take the last blocks: the commit failed with ENOSPC after it had already
/// forgotten which catalog records to write, and the next successful commit left
/// the branch pointing at its old root, whose blocks were by then free.
#[test]
fn metadata_on_a_full_pool_leaves_room_for_its_commit() {
    let dev = MemDevice::new();
    let small = PoolOptions {
        capacity_bytes: Some(256 * 4096),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(dev.clone()), &small).unwrap();
    let b = pool.branch_id("main").unwrap();
    pool.commit().unwrap();
    let (made, err) = fill_with_xattr_files(&pool, b);
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(made.len() > 100, "only {} files fit", made.len());
    pool.commit().unwrap();
    // Deleting makes room (what it frees is allocatable two commits later).
    for name in made.iter().take(40) {
        pool.unlink(b, ROOT_INO, name.as_bytes()).unwrap();
        pool.commit().unwrap();
    }
    let listed = pool.readdir(b, ROOT_INO, 0, 100000).unwrap().len();
    assert_eq!(listed, made.len() - 40 + 2);
    drop(pool);
    let p2 = Pool::open_on(Arc::new(dev), &PoolOptions::default()).unwrap();
    assert_eq!(p2.readdir(b, ROOT_INO, 0, 100000).unwrap().len(), listed);
    let r = p2.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

/// A branch taken on a full pool is either committed or not there at all. It used
/// to stay in memory after its commit failed with ENOSPC, sharing a root born in
/// the running transaction with its parent: the parent's next write changed that
/// root in place and the clone read EIO.
#[test]
fn branch_create_on_a_full_pool_is_all_or_nothing() {
    let small = PoolOptions {
        capacity_bytes: Some(512 * 4096),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(MemDevice::new()), &small).unwrap();
    let b = pool.branch_id("main").unwrap();
    let o = Owner::default();
    pool.commit().unwrap();
    let f = pool
        .mknod(b, ROOT_INO, b"data", libc::S_IFREG | 0o644, 0, o)
        .unwrap()
        .ino;
    pool.write_file(b, f, 0, &[0x41; 8192]).unwrap();
    let (made, _) = fill_with_xattr_files(&pool, b);
    let created = pool.branch_create("clone", "main");
    match &created {
        Ok(_) => assert!(pool.branch_id("clone").is_ok()),
        Err(e) => {
            assert_eq!(e.errno(), libc::ENOSPC);
            assert!(
                pool.branch_id("clone").is_err(),
                "a failed create left the branch"
            );
        }
    }
    // Make room for a data write on main (the data reserve is half this pool):
    // the files go from both trees, `data` stays.
    let clone = pool.branch_id("clone").ok();
    for name in made.iter() {
        for t in [Some(b), clone].into_iter().flatten() {
            pool.unlink(t, ROOT_INO, name.as_bytes()).unwrap();
            pool.commit().unwrap();
        }
    }
    if let Some(c) = clone {
        assert_eq!(pool.read_file(c, f, 0, 8).unwrap(), [0x41; 8]);
        pool.write_file(b, f, 0, &[0x42; 8192]).unwrap();
        assert_eq!(pool.read_file(c, f, 0, 8).unwrap(), [0x41; 8]);
    }
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

/// statfs's available blocks leave out the commit reserve and the delete slop: on a
/// pool filled by creates until ENOSPC, `df` shows (about) no room left while some
/// blocks are still free. It used to report every free block as available.
#[test]
fn statfs_does_not_promise_the_reserved_blocks() {
    let small = PoolOptions {
        capacity_bytes: Some(256 * 4096),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(MemDevice::new()), &small).unwrap();
    let b = pool.branch_id("main").unwrap();
    let fresh = pool.statfs();
    assert!(fresh.bavail < fresh.bfree);
    fill_with_xattr_files(&pool, b);
    let full = pool.statfs();
    assert!(full.bfree >= 32, "{full:?}");
    // The delete slop alone (at least 32 blocks) is left out, and what is left
    // is about nothing: under 64 KiB of the 1 MiB pool. (The last create failed
    // after a commit had released what the changes before it freed, so those
    // few blocks are less than it needed.)
    assert!(full.bavail + 32 <= full.bfree, "{full:?}");
    assert!(full.bavail < 16, "{full:?}");
}

/// A big pool that holds little holds back little: the delete slop covers a
/// commit that moves every space-map page that can change, the leaves that hold
/// counts (and those allocations first reach), not every page of the capacity.
/// A 1 TiB pool with 100 MiB in it held back about 2 GiB from `df` (2 x 265,000
/// map pages); now the 1,024-block floor (4 MiB) and the commit reserve. Also
/// after a restart, where the leaves in use are counted from the index pages.
#[test]
fn a_big_pool_that_holds_little_holds_back_little() {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &PoolOptions::default()).expect("create");
    let b = pool.branch_id("main").expect("main");
    let f = pool
        .mknod(
            b,
            ROOT_INO,
            b"f",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .expect("mknod");
    let chunk = pattern(5, MIB as usize);
    for i in 0..100 {
        pool.write_file(b, f.ino, i * MIB, &chunk).expect("write");
    }
    pool.commit().expect("commit");
    let held = |pool: &Pool| {
        let s = pool.statfs();
        assert_eq!(s.blocks, (1u64 << 40) / 4096);
        s.bfree - s.bavail
    };
    let before = held(&pool);
    // Under 8 MiB, where 2 GiB (524,288 blocks) were held.
    assert!(before < 2048, "held back {before} blocks");
    drop(pool);
    let pool = Pool::open_on(Arc::new(dev), &PoolOptions::default()).expect("reopen");
    let after = held(&pool);
    println!("1 TiB pool, 100 MiB used: {before} blocks held back, {after} after reopening");
    assert!(after < 2048, "held back {after} blocks after reopening");
    clean(&pool, "1 TiB pool, 100 MiB used");
}

/// Renames and deletes on a full pool copy tree nodes on the delete slop before
/// anything they free is allocatable (after the next commit), and a rename may
/// lengthen a name: a series of renames in one transaction used the slop up, and
/// the next unlink failed with ENOSPC until a commit came. Such a delete now
/// commits (as a write on a full pool does) and runs again.
#[test]
fn deletes_after_renames_on_a_full_pool_commit_rather_than_fail() {
    let small = PoolOptions {
        capacity_bytes: Some(2048 * 4096),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(MemDevice::new()), &small).unwrap();
    let b = pool.branch_id("main").unwrap();
    pool.commit().unwrap();
    let (mut names, err) = fill_with_xattr_files(&pool, b);
    assert_eq!(err.errno(), libc::ENOSPC);
    pool.commit().unwrap();
    let mut renamed = 0;
    for (i, name) in names.iter_mut().enumerate() {
        let long = format!("{i}-{}", "L".repeat(240));
        if pool
            .rename(b, ROOT_INO, name.as_bytes(), ROOT_INO, long.as_bytes(), 0)
            .is_err()
        {
            break;
        }
        *name = long;
        renamed += 1;
    }
    assert!(renamed > 0 && renamed < names.len(), "{renamed} renames");
    for name in &names {
        pool.unlink(b, ROOT_INO, name.as_bytes())
            .unwrap_or_else(|e| panic!("unlink after {renamed} renames: {e}"));
    }
    assert_eq!(pool.readdir(b, ROOT_INO, 0, 100).unwrap().len(), 2);
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

/// `df` after `rm`: what a delete frees shows as free at once. Those blocks become
/// allocatable at the next commit, which a change that needs them forces; `df`
/// showed them only two commits later.
#[test]
fn statfs_shows_what_a_delete_frees_at_once() {
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(MemDevice::new()), &opts).unwrap();
    let b = pool.branch_id("main").unwrap();
    let f = pool
        .mknod(
            b,
            ROOT_INO,
            b"big",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .unwrap();
    pool.write_file(b, f.ino, 0, &vec![7u8; 8 << 20]).unwrap();
    pool.commit().unwrap();
    let before = pool.statfs();
    pool.unlink(b, ROOT_INO, b"big").unwrap();
    let after = pool.statfs();
    let freed = after.bfree.saturating_sub(before.bfree);
    assert!(freed >= 2048, "{before:?} -> {after:?}");
    assert_eq!(after.blocks - after.bfree, pool.used_blocks(), "{after:?}");
    assert!(
        after.bavail > before.bavail + 2000,
        "{before:?} -> {after:?}"
    );
}

/// The slop follows the space-map leaves that hold counts (on-disk.md §8.2),
/// and a commit writes a leaf whose counts are all zero as pointer 0, so a big
/// pool that once held much and was emptied holds back little again from its
/// next open. Before: the leaves counted were those ever written, and the
/// pool kept the larger reserve for good.
#[test]
fn a_big_pool_emptied_holds_back_little_again_after_reopening() {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &PoolOptions::default()).expect("create");
    let b = pool.branch_id("main").expect("main");
    let held = |pool: &Pool| {
        let s = pool.statfs();
        s.bfree - s.bavail
    };
    pool.commit().expect("commit");
    let fresh = held(&pool);
    let mode = libc::S_IFREG | 0o644;
    let f = pool.mknod(b, ROOT_INO, b"f", mode, 0, Owner::default());
    let f = f.expect("mknod").ino;
    let chunk = pattern(9, MIB as usize);
    for i in 0..600 {
        pool.write_file(b, f, i * MIB, &chunk).expect("write");
    }
    pool.commit().expect("commit");
    let full = held(&pool);
    pool.unlink(b, ROOT_INO, b"f").expect("rm");
    pool.commit().expect("commit");
    pool.commit().expect("commit");
    let emptied = held(&pool);
    drop(pool);
    let pool = Pool::open_on(Arc::new(dev), &PoolOptions::default()).expect("reopen");
    let reopened = held(&pool);
    println!("1 TiB pool: held back {fresh} fresh, {full} holding 600 MiB, {emptied} emptied, {reopened} after reopening");
    assert!(full > fresh + 500, "{full} held back holding 600 MiB");
    // Within the session the emptied leaves still count: blocks freed in them
    // wait for the flush and reads, and allocators would not fill them in order.
    assert_eq!(emptied, full, "emptied, before reopening");
    assert!(
        reopened <= fresh + 16,
        "{reopened} held back after reopening, {fresh} fresh"
    );
    clean(&pool, "emptied and reopened");
}
