//! Quotas hold metadata to the limit, not only file data (review R3): small files
//! whose bytes are inline in the tree, and their xattrs, allocate only tree nodes,
//! and a 256 KiB quota let 3000 of them with 1900-byte xattrs through (25 MB used).
//! Here the branch stops with EDQUOT at its quota, the used figure stays what a
//! recount finds, renames to long names do not grow it past the quota, and
//! deleting still works at the quota (also when every node is shared with a
//! snapshot and must be copied first) and gives the quota back.

use std::sync::Arc;

use cowfs::fs::{FsError, Owner, ROOT_INO};
use cowfs::pool::quota::QuotaLimits;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::MemDevice;

const KIB: u64 = 1 << 10;
const QUOTA: u64 = 256 * KIB;
const FILES: usize = 3000;
const MIB: u64 = 1 << 20;

/// A new 64 MiB pool in memory.
fn pool_of_64_mib() -> Pool {
    let opts = PoolOptions {
        capacity_bytes: Some(64 * MIB),
        ..Default::default()
    };
    Pool::create_on(Arc::new(MemDevice::new()), &opts).expect("create")
}

fn clean(pool: &Pool, stage: &str) {
    let r = pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(r.is_clean(), "{stage}: fsck:\n{r}");
}

fn used(pool: &Pool) -> u64 {
    pool.quota_list()[0].used_bytes
}

fn name(i: usize) -> Vec<u8> {
    format!("f{i}").into_bytes()
}

/// One small file: create, 200 inline bytes, a 1900-byte xattr. Stops at the
/// first error (returned with how many files are whole).
fn fill(pool: &Pool, b: u64, from: usize) -> (usize, FsError) {
    for i in from..FILES {
        let r = pool
            .mknod(
                b,
                ROOT_INO,
                &name(i),
                libc::S_IFREG | 0o644,
                0,
                Owner::default(),
            )
            .and_then(|a| {
                pool.write_file(b, a.ino, 0, &[b'x'; 200])?;
                pool.setxattr(b, a.ino, b"user.big", &[7u8; 1900], 0)
            });
        if let Err(e) = r {
            // A half-made file (created, its xattr refused) is removed with the rest.
            return (i, e);
        }
        if i % 100 == 99 {
            pool.commit().expect("commit");
        }
    }
    panic!(
        "quota never enforced: {FILES} files, {} bytes used",
        used(pool)
    );
}

/// Every name from 0 to `n` (inclusive: the last may be half made) is unlinked.
fn delete_all(pool: &Pool, b: u64, n: usize, stage: &str) {
    for i in 0..=n {
        match pool.unlink(b, ROOT_INO, &name(i)) {
            Ok(()) => {}
            Err(e) if i == n && e.errno() == libc::ENOENT => {}
            Err(e) => panic!("{stage}: unlink f{i}: {e}"),
        }
    }
}

#[test]
fn inline_files_and_xattrs_stop_at_the_quota_and_deleting_gives_it_back() {
    let opts = PoolOptions {
        capacity_bytes: Some(256 << 20),
        dirty_limit_bytes: 1 << 20,
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(MemDevice::new()), &opts).expect("create");
    let b = pool.branch_create("agent", "main").expect("branch");
    let limits = QuotaLimits {
        max_bytes: Some(QUOTA),
        reserve_bytes: 0,
    };
    pool.quota_set("agent", limits).expect("quota");

    let (n, err) = fill(&pool, b, 0);
    assert_eq!(err.errno(), libc::EDQUOT, "after {n} files: {err}");
    let at_quota = used(&pool);
    // No request overshoots: a metadata change that would pass the quota is undone.
    assert!(at_quota <= QUOTA, "used {at_quota} > quota {QUOTA}");
    assert!(n < 500, "{n} files of ~2 KiB each in a 256 KiB quota");
    // The figure followed each operation exactly: a recount finds the same.
    pool.commit().expect("commit");
    pool.quota_recount_all().expect("recount");
    assert_eq!(
        used(&pool),
        at_quota,
        "tracked figure drifted from a recount"
    );
    clean(&pool, "at quota");

    // Renaming to long names lengthens items without new files: held to the quota.
    let long = |i: usize| format!("{i}-{}", "L".repeat(240)).into_bytes();
    let mut renamed = 0;
    while let Ok(()) = pool.rename(b, ROOT_INO, &name(renamed), ROOT_INO, &long(renamed), 0) {
        renamed += 1;
        assert!(renamed < n, "renames to long names never hit the quota");
    }
    let e = pool.rename(b, ROOT_INO, &name(renamed), ROOT_INO, &long(renamed), 0);
    assert_eq!(
        e.map_err(|e| e.errno()),
        Err(libc::EDQUOT),
        "rename {renamed}"
    );
    assert!(used(&pool) <= QUOTA, "renames grew it to {}", used(&pool));
    for i in 0..renamed {
        pool.rename(b, ROOT_INO, &long(i), ROOT_INO, &name(i), 0)
            .expect("rename back");
    }

    // Deleting works at the quota and gives the room back.
    delete_all(&pool, b, n, "no snapshot");
    pool.commit().expect("commit");
    let empty = used(&pool);
    assert!(
        empty < 16 * KIB,
        "deleting every file left {empty} bytes used"
    );
    clean(&pool, "after deletes");

    // Again, with every node of the full branch shared with a snapshot: each
    // delete must copy nodes before it frees anything.
    let (n2, err) = fill(&pool, b, 0);
    assert_eq!(err.errno(), libc::EDQUOT, "refill: {err}");
    assert!(n2 + 10 >= n, "the quota came back: {n2} files against {n}");
    pool.snapshot_create("before", "agent").expect("snapshot");
    delete_all(&pool, b, n2, "shared with a snapshot");
    clean(&pool, "deletes of shared files");
    pool.branch_delete("before").expect("delete snapshot");
    pool.quota_recount_all().expect("recount");
    assert!(
        used(&pool) < 16 * KIB,
        "after snapshot delete: {}",
        used(&pool)
    );
    clean(&pool, "end");
}

/// A snapshot (or a branch, or a reset to it) of a branch with a reservation
/// shares every block the branch held: it then alone references nothing, so its
/// whole reservation must be kept free again (a copy-on-write overwrite of its
/// files needs new blocks). The figure stayed at what it held before the
/// snapshot, the reservation counted as used, and an agent could fill the pool
/// and give production ENOSPC on its next overwrite.
#[test]
fn a_snapshot_of_a_reserved_branch_keeps_its_reservation() {
    let pool = pool_of_64_mib();
    let main = pool.branch_id("main").expect("main");
    let agent = pool.branch_create("agent", "main").expect("agent");
    let reserve = QuotaLimits {
        max_bytes: None,
        reserve_bytes: 8 * MIB,
    };
    pool.quota_set("main", reserve).expect("reserve");
    let chunk = vec![3u8; 256 << 10];
    let db = pool
        .mknod(
            main,
            ROOT_INO,
            b"db",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .expect("db");
    for i in 0..32u64 {
        pool.write_file(main, db.ino, i * chunk.len() as u64, &chunk)
            .expect("main fills its reservation");
    }
    pool.commit().expect("commit");
    assert!(
        used(&pool) >= 8 * MIB,
        "main holds its data: {}",
        used(&pool)
    );

    pool.snapshot_create("before", "main").expect("snapshot");
    assert!(
        used(&pool) < 16 * KIB,
        "everything main holds is shared with the snapshot: {}",
        used(&pool)
    );
    pool.quota_recount_all().expect("recount");
    assert!(used(&pool) < 16 * KIB, "recount: {}", used(&pool));

    // The agent fills the pool: it stops short of main's reservation.
    let f = pool
        .mknod(
            agent,
            ROOT_INO,
            b"fill",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .expect("fill");
    let mut off = 0u64;
    let err = loop {
        match pool.write_file(agent, f.ino, off, &chunk) {
            Ok(n) => off += n as u64,
            Err(e) => break e,
        }
        assert!(off < 128 * MIB, "never stopped");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "agent: {err}");
    // Main overwrites its database (every block shared with the snapshot).
    for i in 0..24u64 {
        pool.write_file(main, db.ino, i * chunk.len() as u64, &chunk)
            .unwrap_or_else(|e| panic!("main overwrite {i}: {e}"));
    }
    clean(&pool, "end");
}

/// Blocks shared between two files of the branch (`clone_range`, as
/// `copy_file_range` does) are not "its alone" to a recount, which the control
/// plane runs after every delete of any branch: the figure dropped by the clone,
/// and deleting one of the two files made the blocks the branch's alone again
/// without charging them. Clone, have any branch deleted, unlink the clone:
/// each round let the branch write its quota once more.
#[test]
fn a_clone_and_a_recount_do_not_lift_the_quota() {
    let pool = pool_of_64_mib();
    let b = pool.branch_create("agent", "main").expect("agent");
    let quota = 4 * MIB;
    let limits = QuotaLimits {
        max_bytes: Some(quota),
        reserve_bytes: 0,
    };
    pool.quota_set("agent", limits).expect("quota");
    let file = |n: &[u8]| {
        pool.mknod(b, ROOT_INO, n, libc::S_IFREG | 0o644, 0, Owner::default())
            .expect("mknod")
            .ino
    };
    let chunk = vec![9u8; 256 << 10];
    let mut written = 0u64;
    for round in 0..4u64 {
        let f = file(format!("data{round}").as_bytes());
        let mut off = 0;
        while off < 3 * MIB {
            match pool.write_file(b, f, off, &chunk) {
                Ok(n) => off += n as u64,
                Err(e) => {
                    assert_eq!(e.errno(), libc::EDQUOT, "round {round}: {e}");
                    break;
                }
            }
        }
        written += off;
        if off < 3 * MIB {
            break;
        }
        let g = file(format!("copy{round}").as_bytes());
        pool.clone_range(b, f, 0, g, 0, 3 * MIB).expect("clone");
        // Any delete recounts every quota (the control plane's `delete`).
        pool.snapshot_create("other", "main").expect("snapshot");
        pool.branch_delete("other").expect("delete");
        pool.quota_recount_all().expect("recount");
        pool.unlink(b, ROOT_INO, format!("copy{round}").as_bytes())
            .expect("unlink clone");
    }
    assert!(
        written <= quota + MIB,
        "{written} bytes written with a quota of {quota}"
    );
    pool.quota_recount_all().expect("recount");
    assert!(used(&pool) <= quota + MIB, "holds {}", used(&pool));
    clean(&pool, "end");
}

/// A reservation must fit in the free space the other reservations leave. The
/// check asked for the branch's write budget and ignored it when the branch's
/// own (old) quota was the tighter limit: then it compared with all the free
/// space, and reservations summed past it (a branch with a 4 MiB quota was
/// given a 24 MiB reservation next to one of 48 MiB in a 64 MiB pool).
#[test]
fn reservations_never_sum_past_the_free_space() {
    let pool = pool_of_64_mib();
    pool.branch_create("a", "main").expect("a");
    pool.branch_create("b", "main").expect("b");
    let limits = |max: Option<u64>, reserve: u64| QuotaLimits {
        max_bytes: max,
        reserve_bytes: reserve,
    };
    pool.quota_set("b", limits(None, 48 * MIB))
        .expect("b's reservation fits");
    pool.quota_set("a", limits(Some(4 * MIB), 0))
        .expect("a quota");
    let e = pool.quota_set("a", limits(Some(32 * MIB), 24 * MIB));
    assert!(
        e.is_err(),
        "24 MiB reserved for a beside 48 MiB for b in a 64 MiB pool"
    );
    assert_eq!(
        pool.quota_list()
            .iter()
            .map(|q| q.limits.reserve_bytes)
            .sum::<u64>(),
        48 * MIB
    );
}

/// `df` in a branch shows the room its writes get: its quota as the size (used:
/// what it alone references), and never another branch's reservation as free.
/// It showed the pool's figures, so a branch at its quota saw gigabytes free.
#[test]
fn statfs_of_a_branch_shows_its_quota_and_the_others_reservations() {
    const BLOCKS_PER_MIB: u64 = MIB / 4096;
    let pool = pool_of_64_mib();
    let main = pool.branch_id("main").expect("main");
    let agent = pool.branch_create("agent", "main").expect("agent");
    pool.branch_create("prod", "main").expect("prod");
    assert_eq!(
        pool.statfs_of(agent),
        pool.statfs(),
        "no quotas: the pool's"
    );

    pool.quota_set(
        "agent",
        QuotaLimits {
            max_bytes: Some(8 * MIB),
            reserve_bytes: 0,
        },
    )
    .expect("agent quota");
    let f = pool
        .mknod(
            agent,
            ROOT_INO,
            b"f",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .expect("mknod");
    pool.write_file(agent, f.ino, 0, &vec![1u8; 2 * MIB as usize])
        .expect("write");
    let charged = used(&pool) / 4096;
    let s = pool.statfs_of(agent);
    assert_eq!(s.blocks, 8 * BLOCKS_PER_MIB, "the quota is the size");
    assert_eq!(s.blocks - s.bfree, charged, "used: what it alone holds");
    assert!(
        (2 * BLOCKS_PER_MIB..=2 * BLOCKS_PER_MIB + 16).contains(&charged),
        "{charged} blocks for 2 MiB"
    );
    assert!(s.bavail <= s.bfree);

    // A reservation elsewhere is not room for main.
    let before = pool.statfs_of(main);
    pool.quota_set(
        "prod",
        QuotaLimits {
            max_bytes: None,
            reserve_bytes: 16 * MIB,
        },
    )
    .expect("prod reservation");
    let after = pool.statfs_of(main);
    assert_eq!(after.blocks, before.blocks);
    // Up to the quota's 64-block metadata margin of the 16 MiB may overlap what
    // `df` already held back for commits and deletes (the delete slop of this
    // 64 MiB pool is 52 blocks, twice the space map's pages and a bit).
    assert!(
        after.bavail + 16 * BLOCKS_PER_MIB <= before.bavail + 64,
        "main's room {} -> {} blocks beside a 16 MiB reservation",
        before.bavail,
        after.bavail
    );
}
