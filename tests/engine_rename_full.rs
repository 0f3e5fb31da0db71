//! Renames on a full pool must leave the delete slop (on-disk.md §8.2) whole, so
//! that `rm` always works. A rename ran on the slop as a delete does, but a longer
//! name can split a directory's leaf, a block no commit gives back: renames to
//! longer and longer names, one commit each, kept the slop for good, and then
//! unlink failed with ENOSPC. Now a rename on a full pool either fits outside
//! the slop, or ends with no more blocks in use than it began (the copies it
//! made on the slop are free again after the commit), or gets ENOSPC and changes
//! nothing; one that replaces a file counts what freeing that file gives back.

mod pool_filling;

use std::sync::Arc;

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{Pool, PoolOptions};
use cowfs::store::device::MemDevice;
use pool_filling::{clean, fill_metadata, free_after_commits, mk, write_until_full};

const BS: u64 = 4096;

/// A pool of 2048 blocks whose `main` holds what `before` makes, then "big"
/// written until the pool is full for data, then files with xattrs in the root
/// until not even one more fits after a commit. The names of those files.
fn full_pool(before: impl FnOnce(&Pool, u64)) -> (Pool, u64, Vec<String>) {
    let opts = PoolOptions {
        capacity_bytes: Some(2048 * BS),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(MemDevice::new()), &opts).expect("create");
    let b = pool.branch_id("main").expect("main");
    before(&pool, b);
    let big = mk(&pool, b, ROOT_INO, "big");
    let len = write_until_full(&pool, b, big, &[0x5a; 64 * 1024], libc::ENOSPC);
    assert!(len >= 4 << 20, "only {len} bytes fit");
    pool.commit().expect("commit");
    let (names, err) = fill_metadata(&pool, b);
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    (pool, b, names)
}

fn exists(pool: &Pool, b: u64, parent: u64, name: &str) -> bool {
    match pool.lookup(b, parent, name.as_bytes()) {
        Ok(_) => true,
        Err(e) if e.errno() == libc::ENOENT => false,
        Err(e) => panic!("lookup {name}: {e}"),
    }
}

/// Rename `from` to `to` in `dir`: true if done; else ENOSPC and both names as
/// they were.
fn rename_or_enospc(pool: &Pool, b: u64, dir: u64, from: &str, to: &str) -> bool {
    match pool.rename(b, dir, from.as_bytes(), dir, to.as_bytes(), 0) {
        Ok(()) => true,
        Err(e) => {
            assert_eq!(e.errno(), libc::ENOSPC, "rename {from} -> {to}: {e}");
            assert!(exists(pool, b, dir, from), "{from} lost by a failed rename");
            assert!(!exists(pool, b, dir, to), "{to} made by a failed rename");
            false
        }
    }
}

/// A directory of 300 files renamed, round after round, to names 2 bytes longer
/// (up to 244), one commit after each rename, on a pool where no change fits
/// outside the slop any more: each rename succeeds or fails with ENOSPC and
/// changes nothing, the free count never stays below where it started, and then
/// `rm` of a file in the root works and frees what it should. Before: 8,597 of
/// the 36,000 renames succeeded and took 30 of the 32 blocks of slop for good
/// (52 free blocks, then 22), and the `rm` failed with ENOSPC.
#[test]
fn renames_to_longer_names_on_a_full_pool_leave_the_slop_whole() {
    let mut dir = 0;
    let (pool, b, names) = full_pool(|pool, b| {
        let d = pool.mkdir(b, ROOT_INO, b"d", 0o755, Owner::default());
        dir = d.expect("mkdir").ino;
        for i in 0..300 {
            mk(pool, b, dir, &i.to_string());
        }
    });
    let free0 = free_after_commits(&pool);
    let mut cur: Vec<String> = (0..300).map(|i: u32| i.to_string()).collect();
    let (mut renamed, mut refused, mut lowest) = (0, 0, free0);
    for round in 1..=120 {
        for (i, name) in cur.iter_mut().enumerate() {
            let long = format!("{i}-{}", "L".repeat(2 * round));
            if rename_or_enospc(&pool, b, dir, name, &long) {
                *name = long;
                renamed += 1;
            } else {
                refused += 1;
            }
            pool.commit().expect("commit");
            lowest = lowest.min(pool.statfs().bfree);
        }
    }
    let free = free_after_commits(&pool);
    println!("{renamed} renames, {refused} refused; free {free0} -> {free}, lowest {lowest}");
    assert!(
        renamed > 0 && refused > 0,
        "{renamed} renames, {refused} refused"
    );
    clean(&pool, "after the renames");
    // The slop is whole: a file in the root can still be removed ...
    let last = names.last().expect("files");
    pool.unlink(b, ROOT_INO, last.as_bytes())
        .unwrap_or_else(|e| panic!("rm {last} after {renamed} renames: {e}"));
    assert!(
        free >= free0 && lowest + 16 >= free0,
        "free blocks {free0} before the renames, {free} after, {lowest} at the lowest"
    );
    // ... and what removing files frees is there.
    pool.unlink(b, ROOT_INO, b"big").expect("rm big");
    let after = free_after_commits(&pool);
    assert!(
        after >= free + 1024,
        "free {free} before rm big, {after} after"
    );
    for name in &cur {
        pool.unlink(b, dir, name.as_bytes()).expect("rm in d");
    }
    clean(&pool, "after the unlinks");
}

/// On a full pool, a rename over a file is a delete too: where a rename to a
/// new name is refused (it would need a block for good), the same rename over a
/// file succeeds, because freeing that file in the same operation gives back
/// more than it takes, and the file's blocks are free after the commit. A rename
/// over a file a handle holds frees nothing until the handle goes: it succeeds
/// only if it needs no block for good, and the space is back once the handle is
/// released.
#[test]
fn a_rename_over_a_file_on_a_full_pool_frees_it() {
    let data = vec![0x77u8; 64 * BS as usize];
    // A long name: the rename over it adds an index entry as long as the one a
    // rename to a new long name adds.
    let victim = "V".repeat(200);
    let (pool, b, mut names) = full_pool(|pool, b| {
        for (name, blocks) in [("src", 3), ("held", 4), ("src2", 4), (&victim, 64)] {
            let f = mk(pool, b, ROOT_INO, name);
            pool.write_file(b, f, 0, &data[..blocks * 4096])
                .expect("write");
        }
    });
    // Take what room renames find outside the slop: names made longer until
    // twenty in a row are refused.
    let mut streak = 0;
    for name in names.iter_mut() {
        let long = format!("{name}-{}", "L".repeat(200));
        if rename_or_enospc(&pool, b, ROOT_INO, name, &long) {
            *name = long;
            streak = 0;
        } else {
            streak += 1;
        }
        pool.commit().expect("commit");
        if streak == 20 {
            break;
        }
    }
    assert_eq!(streak, 20, "renames to long names never stopped");
    let free0 = free_after_commits(&pool);
    let new_name = "N".repeat(200);
    assert!(
        !rename_or_enospc(&pool, b, ROOT_INO, "src", &new_name),
        "a rename to a new name still fits"
    );
    let ino = |n: &str| pool.lookup(b, ROOT_INO, n.as_bytes()).expect("lookup").ino;
    let src = ino("src");
    pool.rename(b, ROOT_INO, b"src", ROOT_INO, victim.as_bytes(), 0)
        .expect("rename over a file on a full pool");
    assert_eq!(ino(&victim), src);
    assert!(!exists(&pool, b, ROOT_INO, "src"));
    let got = pool.read_file(b, src, 0, 1 << 20).expect("read");
    assert_eq!(got, data[..3 * 4096]);
    let freed = free_after_commits(&pool);
    // Its 64 data blocks, less the block for the longer index entry.
    assert!(freed >= free0 + 60, "free {free0} before, {freed} after");

    let held = ino("held");
    pool.open_inode(b, held);
    let done = rename_or_enospc(&pool, b, ROOT_INO, "src2", "held");
    pool.release_inode(b, held).expect("release");
    let after = free_after_commits(&pool);
    assert!(
        after >= freed,
        "free {freed} before, {after} after ({done})"
    );
    clean(&pool, "after the renames over files");
    for name in names.iter().take(10) {
        pool.unlink(b, ROOT_INO, name.as_bytes()).expect("rm after");
    }
    clean(&pool, "end");
}
