//! How long removing a big file, or deleting a branch that alone holds one,
//! makes other requests wait. A 40 GiB file of fallocated extents is unlinked
//! (or its branch deleted) on one thread while another calls `getattr` on a
//! file of another branch in a loop; the file is freed in steps by the pool's
//! freeing thread (pool/free_steps.rs, and pool/drops.rs for a dropped branch
//! tree). Prints, per run, how long the unlink or delete call took, how long
//! until everything was freed, and the longest single getattr (its wait for the
//! pool lock). Pool file in a tempdir on disk.
//!
//! Run: `cargo bench -p cowfs --bench unlink_stall`

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{BranchId, Pool, PoolOptions};

const SIZE: u64 = 40 << 30;
const RUNS: usize = 3;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = Pool::create(&dir.path().join("pool"), &PoolOptions::default()).expect("create");
    let m = pool.branch_id("main").expect("main");
    let other = pool.branch_create("other", "main").expect("branch");
    let probe = big_file(&pool, other, b"probe", 0);
    for run in 0..RUNS {
        big_file(&pool, m, b"big", SIZE);
        let (took, freed, worst, calls) = stalls(&pool, other, probe, || {
            pool.unlink(m, ROOT_INO, b"big").expect("unlink")
        });
        report(run, "unlink", took, freed, worst, calls);
    }
    for run in 0..RUNS {
        let b = pool.branch_create("big", "main").expect("branch");
        big_file(&pool, b, b"big", SIZE);
        let (took, freed, worst, calls) = stalls(&pool, other, probe, || {
            pool.branch_delete("big").expect("delete")
        });
        report(run, "branch delete", took, freed, worst, calls);
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
