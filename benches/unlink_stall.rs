//! How long removing a big file makes other requests wait. A 40 GiB file of
//! fallocated extents is unlinked on one thread while another calls `getattr`
//! on a file of another branch in a loop; the big file is freed in steps by the
//! pool's freeing thread (pool/free_steps.rs). Prints, per run, how long the
//! unlink call took, how long until the file was freed, and the longest single
//! getattr (its wait for the pool lock). Pool file in a tempdir on disk.
//!
//! Run: `cargo bench -p cowfs --bench unlink_stall`

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{Pool, PoolOptions};

const SIZE: u64 = 40 << 30;
const RUNS: usize = 3;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = Pool::create(&dir.path().join("pool"), &PoolOptions::default()).expect("create");
    let m = pool.branch_id("main").expect("main");
    let other = pool.branch_create("other", "main").expect("branch");
    let reg = libc::S_IFREG | 0o644;
    let probe = pool
        .mknod(other, ROOT_INO, b"probe", reg, 0, Owner::default())
        .expect("mknod")
        .ino;
    for run in 0..RUNS {
        let ino = pool
            .mknod(m, ROOT_INO, b"big", reg, 0, Owner::default())
            .expect("mknod")
            .ino;
        pool.fallocate(m, ino, 0, SIZE, false).expect("fallocate");
        pool.sync().expect("sync");
        let stop = AtomicBool::new(false);
        let (unlink, freed, (worst, calls)) = std::thread::scope(|sc| {
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
            pool.unlink(m, ROOT_INO, b"big").expect("unlink");
            let unlink = t.elapsed();
            while pool.pending_frees() > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let freed = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            (unlink, freed, getattrs.join().expect("getattr thread"))
        });
        pool.sync().expect("sync");
        println!(
            "run {run}: unlink {:.3} ms, freed after {:.3} s, longest getattr {:.3} ms ({calls} getattrs)",
            unlink.as_secs_f64() * 1e3,
            freed.as_secs_f64(),
            worst.as_secs_f64() * 1e3
        );
    }
}
