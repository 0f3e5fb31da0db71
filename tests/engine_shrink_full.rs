//! Shrinking a file frees space, so on a full pool it must work as unlink does
//! (review: "a shrinking truncate cannot use the room kept for deletes"):
//! `truncate -s 0 big.log`, `: > big.log` (both a setattr of the size) and
//! punching a hole are how a user makes room. They failed with ENOSPC on a pool
//! where not even one more file fits, although unlink worked: unlink may use the
//! delete slop, they could not, and a cut inside a block needs a new data block.
//! Here they succeed there and at a branch's quota, and the blocks are free after
//! the commit; one that frees nothing (a cut inside the last block, a file a
//! snapshot shares) stays out of the slop, and repeating shrinks does not drain
//! it.

mod pool_filling;

use std::sync::Arc;

use cowfs::fs::{FsResult, Owner, SetAttr, ROOT_INO};
use cowfs::pool::quota::QuotaLimits;
use cowfs::pool::{Pool, PoolOptions};
use cowfs::store::device::MemDevice;
use pool_filling::{clean, fill_metadata, write_until_full};

const BS: u64 = 4096;
const MIB: u64 = 1 << 20;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) ^ seed) as u8)
        .collect()
}

fn mk(pool: &Pool, b: u64, name: &str) -> u64 {
    let mode = libc::S_IFREG | 0o644;
    pool.mknod(b, ROOT_INO, name.as_bytes(), mode, 0, Owner::default())
        .expect("mknod")
        .ino
}

fn truncate(pool: &Pool, b: u64, ino: u64, size: u64) -> FsResult<()> {
    let s = SetAttr {
        size: Some(size),
        ..Default::default()
    };
    pool.setattr(b, ino, &s).map(|_| ())
}

/// A pool of 2048 blocks whose `main` holds "big", written until the pool is full
/// for data, then filled with metadata until not even one more file fits, after
/// a commit released what the changes before freed. `before` runs
/// on `main` first (files that must exist before the pool fills).
struct Full {
    pool: Pool,
    b: u64,
    big: u64,
    big_data: Vec<u8>,
    names: Vec<String>,
}

fn full_pool(before: impl FnOnce(&Pool, u64)) -> Full {
    let opts = PoolOptions {
        capacity_bytes: Some(2048 * BS),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(MemDevice::new()), &opts).expect("create");
    let b = pool.branch_id("main").expect("main");
    before(&pool, b);
    let big = mk(&pool, b, "big");
    let len = write_until_full(&pool, b, big, &pattern(1, 64 * 1024), libc::ENOSPC);
    assert!(len >= 4 * MIB, "only {len} bytes fit");
    pool.commit().expect("commit");
    let (names, err) = fill_metadata(&pool, b);
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    let big_data = pattern(1, 64 * 1024).repeat((len / (64 * 1024)) as usize);
    Full {
        pool,
        b,
        big,
        big_data,
        names,
    }
}

impl Full {
    /// The pool is full: a new data block and a new file both fail with ENOSPC.
    /// (Not asked with a write: a write on a full pool commits first, which
    /// makes what the last changes freed allocatable.)
    fn assert_full(&self) {
        let (pool, b) = (&self.pool, self.b);
        let end = pool.getattr(b, self.big).expect("getattr big").size;
        let w = pool.fallocate(b, self.big, end, 4096, false);
        assert_eq!(w.map_err(|e| e.errno()).err(), Some(libc::ENOSPC));
        let m = pool.mknod(b, ROOT_INO, b"more", libc::S_IFREG, 0, Owner::default());
        assert_eq!(m.map_err(|e| e.errno()).err(), Some(libc::ENOSPC));
    }

    /// "big" reads as `want`.
    fn assert_big(&self, want: &[u8], what: &str) {
        let (pool, b) = (&self.pool, self.b);
        assert_eq!(
            pool.getattr(b, self.big).expect("getattr").size,
            want.len() as u64
        );
        let got = pool
            .read_file(b, self.big, 0, want.len() + 1)
            .expect("read big");
        let at = got.iter().zip(want).position(|(x, y)| x != y);
        assert!(
            got.len() == want.len() && at.is_none(),
            "{what}: differs at {at:?}"
        );
    }

    /// Free blocks (statfs) once what the running transaction freed is
    /// allocatable: two commits.
    fn free_after_commits(&self) -> u64 {
        self.pool.commit().expect("commit");
        self.pool.commit().expect("commit");
        self.pool.statfs().bfree
    }
}

/// On a pool where no tree change fits any more (unlink still works, on the
/// delete slop), each way of shrinking "big" succeeds, leaves the bytes it keeps
/// as they were, and frees its blocks: the free count grows by about what it
/// dropped and the pool takes new files and data again.
#[test]
fn shrinking_a_file_on_a_full_pool_frees_its_blocks() {
    type Shrink = fn(&Pool, u64, u64) -> FsResult<()>;
    type Expect = fn(&mut Vec<u8>);
    let cases: [(&str, Shrink, Expect); 5] = [
        (
            "truncate to 0",
            |p, b, i| truncate(p, b, i, 0),
            |d| d.clear(),
        ),
        (
            "truncate to a block boundary",
            |p, b, i| truncate(p, b, i, MIB),
            |d| d.truncate(MIB as usize),
        ),
        (
            "truncate inside a block",
            |p, b, i| truncate(p, b, i, MIB + 100),
            |d| d.truncate(MIB as usize + 100),
        ),
        (
            "punch whole blocks",
            |p, b, i| p.punch_hole(b, i, 0, 2 * MIB),
            |d| d[..2 * MIB as usize].fill(0),
        ),
        (
            "punch with partial blocks at both ends",
            |p, b, i| p.punch_hole(b, i, 100, 2 * MIB),
            |d| d[100..2 * MIB as usize + 100].fill(0),
        ),
    ];
    for (what, shrink, expect) in cases {
        let full = full_pool(|_, _| {});
        full.assert_full();
        let free0 = full.pool.statfs().bfree;
        let (pool, b) = (&full.pool, full.b);
        shrink(pool, b, full.big).unwrap_or_else(|e| panic!("{what} on a full pool: {e}"));
        let mut want = full.big_data.clone();
        expect(&mut want);
        full.assert_big(&want, what);
        let free = full.free_after_commits();
        assert!(
            free >= free0 + 256,
            "{what}: {free0} free blocks before, {free} after"
        );
        // The room is there for new files and data.
        let f = mk(pool, b, "after");
        pool.write_file(b, f, 0, &pattern(2, 256 * 1024))
            .unwrap_or_else(|e| panic!("{what}: a write after the shrink: {e}"));
        pool.unlink(b, ROOT_INO, full.names[0].as_bytes())
            .expect("unlink");
        full.assert_big(&want, what);
        clean(pool, what);
    }
}

/// A truncate or punch that needs a new data block and frees nothing gets ENOSPC
/// on a full pool and changes nothing: a cut inside the last block (it needs a
/// new block for the one it cuts) and a cut or punch inside a block of a file
/// whose blocks a snapshot shares (the new block would be paid for by nothing).
/// (One that needs no data block, a grow or a cut inside a hole, is an ordinary
/// change of the inode: it fits once a commit released what the last changes
/// freed, as a chmod does.) A
/// truncate to a block boundary of that shared file runs as unlink of it does:
/// it may copy its tree nodes on the slop, and frees nothing.
#[test]
fn a_shrink_that_frees_nothing_stays_out_of_the_slop() {
    let tail_data = pattern(3, 3 * BS as usize + 1000);
    let shared_data = pattern(4, 16 * BS as usize + 100);
    let full = full_pool(|pool, b| {
        let tail = mk(pool, b, "tail");
        pool.write_file(b, tail, 0, &tail_data).expect("tail");
        let sparse = mk(pool, b, "sparse");
        pool.write_file(b, sparse, 0, &[5u8; 4096]).expect("sparse");
        truncate(pool, b, sparse, 64 * BS + 10).expect("sparse size");
        let shared = mk(pool, b, "shared");
        pool.write_file(b, shared, 0, &shared_data).expect("shared");
        pool.commit().expect("commit");
        pool.snapshot_create("keep", "main").expect("snapshot");
    });
    full.assert_full();
    let (pool, b) = (&full.pool, full.b);
    let ino = |n: &[u8]| pool.lookup(b, ROOT_INO, n).expect("lookup").ino;
    let (tail, sparse, shared) = (ino(b"tail"), ino(b"sparse"), ino(b"shared"));
    // In this order: the shared ones unmap blocks, so refused they commit and
    // try again, and that commit makes room for tree changes for a while.
    type Op = fn(&Pool, u64, [u64; 3]) -> FsResult<()>;
    let refused: [(&str, Op); 3] = [
        ("cut inside the last block", |p, b, [t, _, _]| {
            truncate(p, b, t, 3 * BS + 500)
        }),
        ("cut inside a shared block", |p, b, [_, _, s]| {
            truncate(p, b, s, 8 * BS + 10)
        }),
        ("punch shared blocks", |p, b, [_, _, s]| {
            p.punch_hole(b, s, 100, 4 * BS)
        }),
    ];
    for (what, op) in refused {
        let r = op(pool, b, [tail, sparse, shared]);
        assert_eq!(r.map_err(|e| e.errno()), Err(libc::ENOSPC), "{what}");
    }
    let size = |i| pool.getattr(b, i).expect("getattr").size;
    assert_eq!(pool.read_file(b, tail, 0, 20000).expect("read"), tail_data);
    assert_eq!(size(sparse), 64 * BS + 10);
    assert_eq!(
        pool.read_file(b, shared, 0, 100000).expect("read"),
        shared_data
    );
    // As unlink of a shared file does: tree nodes on the slop, nothing freed.
    truncate(pool, b, shared, 8 * BS).expect("shared to a block boundary");
    assert_eq!(size(shared), 8 * BS);
    pool.unlink(b, ROOT_INO, full.names[0].as_bytes())
        .expect("unlink after");
    clean(pool, "end");
    let keep = pool.branch_id("keep").expect("keep");
    assert_eq!(
        pool.read_file(keep, shared, 0, 100000).expect("read"),
        shared_data
    );
}

/// Shrinks repeated on a full pool, one commit each, leave the free count where
/// it was (the slop is whole, unlink still works): a file a snapshot shares cut a
/// block at a time (copies of its nodes, once), cut inside a block (refused),
/// and a file grown by a block and cut back.
#[test]
fn repeated_shrinks_do_not_drain_the_slop() {
    let full = full_pool(|pool, b| {
        let shared = mk(pool, b, "shared");
        pool.write_file(b, shared, 0, &pattern(4, 128 * BS as usize))
            .expect("shared");
        let own = mk(pool, b, "own");
        pool.write_file(b, own, 0, &pattern(5, 2 * BS as usize + 10))
            .expect("own");
        pool.commit().expect("commit");
        pool.snapshot_create("keep", "main").expect("snapshot");
        // "own" is this branch's alone (it drops the snapshot's blocks).
        pool.write_file(b, own, 0, &pattern(6, 2 * BS as usize + 10))
            .expect("own");
    });
    full.assert_full();
    let (pool, b) = (&full.pool, full.b);
    let ino = |n: &[u8]| pool.lookup(b, ROOT_INO, n).expect("lookup").ino;
    let (shared, own) = (ino(b"shared"), ino(b"own"));
    let free0 = full.free_after_commits();
    let mut lowest = free0;
    for step in 1..100u64 {
        // Aligned: allowed, as unlink; inside a block: refused (frees nothing).
        truncate(pool, b, shared, (128 - step) * BS).expect("cut a shared block");
        let cut = truncate(pool, b, shared, (127 - step) * BS + 10);
        assert_eq!(cut.map_err(|e| e.errno()), Err(libc::ENOSPC), "step {step}");
        // A grow needs room outside the slop; the cut back frees nothing then.
        let _ = truncate(pool, b, own, 3 * BS + 10);
        let _ = truncate(pool, b, own, 2 * BS + 10);
        pool.commit().expect("commit");
        lowest = lowest.min(pool.statfs().bfree);
    }
    let free = full.free_after_commits();
    assert!(
        free + 2 >= free0 && lowest + 16 >= free0,
        "free blocks {free0} before, {free} after, {lowest} at the lowest"
    );
    for name in &full.names[..20] {
        pool.unlink(b, ROOT_INO, name.as_bytes())
            .expect("unlink after");
    }
    clean(pool, "end");
}

/// A branch at its quota (data and metadata) shrinks a file: the cut inside a
/// block needs a new block past the quota, which the blocks it drops pay for.
/// The branch's figure goes down and it can write again.
#[test]
fn a_branch_at_its_quota_can_shrink_a_file() {
    let opts = PoolOptions {
        capacity_bytes: Some(64 * MIB),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(MemDevice::new()), &opts).expect("create");
    let b = pool.branch_create("agent", "main").expect("branch");
    let limits = QuotaLimits {
        max_bytes: Some(2 * MIB),
        reserve_bytes: 0,
    };
    pool.quota_set("agent", limits).expect("quota");
    let used = |pool: &Pool| pool.quota_list()[0].used_bytes;
    let big = mk(&pool, b, "big");
    let len = write_until_full(&pool, b, big, &pattern(1, 64 * 1024), libc::EDQUOT);
    pool.commit().expect("commit");
    let (_, err) = fill_metadata(&pool, b);
    assert_eq!(err.errno(), libc::EDQUOT, "{err}");
    let w = pool.write_file(b, big, 0, &[1u8; 4096]);
    assert_eq!(w.map_err(|e| e.errno()).err(), Some(libc::EDQUOT));
    let at_quota = used(&pool);

    truncate(&pool, b, big, len - 3 * BS - 100).expect("cut inside a block at the quota");
    assert!(used(&pool) < at_quota, "{} then {}", at_quota, used(&pool));
    pool.punch_hole(b, big, 100, 4 * BS)
        .expect("punch at the quota");
    let mut want = pattern(1, 64 * 1024).repeat((len / (64 * 1024)) as usize);
    want.truncate((len - 3 * BS - 100) as usize);
    want[100..4 * BS as usize + 100].fill(0);
    let got = pool.read_file(b, big, 0, len as usize).expect("read");
    assert!(got == want, "contents after the shrinks");
    truncate(&pool, b, big, 0).expect("truncate to 0 at the quota");
    pool.commit().expect("commit");
    pool.write_file(b, big, 0, &pattern(2, 512 * 1024))
        .expect("write after the shrink");
    pool.quota_recount_all().expect("recount");
    clean(&pool, "end");
}

/// What a delete frees is allocatable only after the next commit; a create, a
/// chmod or an xattr right after `rm` on a full pool failed with ENOSPC until
/// the commit timer came (a write already committed first). Now any change that
/// finds no room while freed blocks wait commits and runs once more.
#[test]
fn changes_right_after_a_delete_on_a_full_pool_find_its_room() {
    let full = full_pool(|_, _| {});
    let (pool, b) = (&full.pool, full.b);
    pool.unlink(b, ROOT_INO, b"big")
        .expect("rm big on a full pool");
    let a = pool
        .mknod(
            b,
            ROOT_INO,
            b"new",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .expect("create right after rm");
    let s = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    pool.setattr(b, a.ino, &s).expect("chmod right after rm");
    pool.setxattr(b, a.ino, b"user.y", &[1u8; 1900], 0)
        .expect("setxattr right after rm");
    clean(pool, "after the changes");
}
