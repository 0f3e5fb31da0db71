//! How long removing a big file, deleting a branch that alone holds one, or
//! cutting one (`truncate -s 0`, a hole punched over all of it) makes other
//! requests wait. A 40 GiB file of fallocated extents is unlinked (or its branch
//! deleted, or it is truncated or punched) on one thread while another calls
//! `getattr` on a file of another branch in a loop; the file is freed in steps
//! by the pool's freeing thread (pool/free_steps.rs, and pool/drops.rs for a
//! dropped branch tree), or cut in steps by the call itself
//! (pool/cut_steps.rs). Prints, per run, how long the call took, how long until
//! everything was freed, and the longest single getattr (its wait for the pool
//! lock). Pool file in a tempdir on disk.
//!
//! Run: `cargo bench -p cowfs --bench unlink_stall` (all cases), or with
//! `-- NAME` for the cases whose name holds NAME (`unlink`, `branch delete`,
//! `truncate`, `punch`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cowfs::fs::{Owner, SetAttr, ROOT_INO};
use cowfs::pool::{BranchId, Pool, PoolOptions};

const SIZE: u64 = 40 << 30;
const RUNS: usize = 3;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = Pool::create(&dir.path().join("pool"), &PoolOptions::default()).expect("create");
    let m = pool.branch_id("main").expect("main");
    let other = pool.branch_create("other", "main").expect("branch");
    let probe = big_file(&pool, other, b"probe", 0);
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let case = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    if case("unlink") {
        unlinks(&pool, m, other, probe);
    }
    if case("branch delete") {
        branch_deletes(&pool, other, probe);
    }
    if case("truncate") {
        cuts(&pool, m, other, probe, "truncate -s 0", |big| {
            let s = SetAttr {
                size: Some(0),
                ..Default::default()
            };
            pool.setattr(m, big, &s).map(|_| ()).expect("truncate")
        });
    }
    if case("punch") {
        cuts(&pool, m, other, probe, "punch", |big| {
            pool.punch_hole(m, big, 0, SIZE).expect("punch")
        });
    }
}

fn unlinks(pool: &Pool, m: BranchId, other: BranchId, probe: u64) {
    for run in 0..RUNS {
        big_file(pool, m, b"big", SIZE);
        let (took, freed, worst, calls) = stalls(pool, other, probe, || {
            pool.unlink(m, ROOT_INO, b"big").expect("unlink")
        });
        report(run, "unlink", took, freed, worst, calls);
    }
}

fn branch_deletes(pool: &Pool, other: BranchId, probe: u64) {
    for run in 0..RUNS {
        let b = pool.branch_create("big", "main").expect("branch");
        big_file(pool, b, b"big", SIZE);
        let (took, freed, worst, calls) = stalls(pool, other, probe, || {
            pool.branch_delete("big").expect("delete")
        });
        report(run, "branch delete", took, freed, worst, calls);
    }
}

/// `cut` (the case `what`) of a 40 GiB file `big` of branch `m`, then `big`
/// removed (empty by then).
fn cuts(pool: &Pool, m: BranchId, other: BranchId, probe: u64, what: &str, cut: impl Fn(u64)) {
    for run in 0..RUNS {
        let big = big_file(pool, m, b"big", SIZE);
        let (took, freed, worst, calls) = stalls(pool, other, probe, || cut(big));
        report(run, what, took, freed, worst, calls);
        pool.unlink(m, ROOT_INO, b"big").expect("unlink");
    }
}

/// File `name` in the root of branch `b` with `size` bytes fallocated, synced.
fn big_file(pool: &Pool, b: BranchId, name: &[u8], size: u64) -> u64 {
    let reg = libc::S_IFREG | 0o644;
    let ino = pool
        .mknod(b, ROOT_INO, name, reg, 0, Owner::default())
        .expect("mknod")
        .ino;
    if size > 0 {
        pool.fallocate(b, ino, 0, size, false).expect("fallocate");
    }
    pool.sync().expect("sync");
    ino
}

/// Run `op` while another thread calls getattr on `probe` of branch `other`
/// in a loop: how long `op` took, how long until the frees it queued were done,
/// the longest getattr and how many ran.
fn stalls(
    pool: &Pool,
    other: BranchId,
    probe: u64,
    op: impl FnOnce(),
) -> (Duration, Duration, Duration, u64) {
    let stop = AtomicBool::new(false);
    let r = std::thread::scope(|sc| {
        let getattrs = sc.spawn(|| {
            let (mut worst, mut calls) = (Duration::ZERO, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                pool.getattr(other, probe).expect("getattr");
                worst = worst.max(t.elapsed());
                calls += 1;
            }
            (worst, calls)
        });
        let t = Instant::now();
        op();
        let took = t.elapsed();
        while pool.pending_frees() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let freed = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        let (worst, calls) = getattrs.join().expect("getattr thread");
        (took, freed, worst, calls)
    });
    pool.sync().expect("sync");
    r
}

fn report(run: usize, what: &str, took: Duration, freed: Duration, worst: Duration, calls: u64) {
    println!(
        "run {run}: {what} {:.3} ms, freed after {:.3} s, longest getattr {:.3} ms ({calls} getattrs)",
        took.as_secs_f64() * 1e3,
        freed.as_secs_f64(),
        worst.as_secs_f64() * 1e3
    );
}
