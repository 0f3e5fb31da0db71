//! How long a `diff` makes other requests wait. A 128 MiB file is rewritten
//! whole with one byte changed (every block keeps its checksum under a new
//! address, so the diff reads all of it on both sides), then `diff s main`
//! runs alone, then while another thread calls `getattr` on main in a loop.
//! Prints, per run, both diffs' durations and the longest single getattr (its
//! wait for the pool lock). Pool file in a tempdir on disk, data in the page
//! cache.
//!
//! Run: `cargo bench -p cowfs --bench diff_stall`

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{Pool, PoolOptions};

const MIB: usize = 1 << 20;
const FILE: usize = 128 * MIB;
const RUNS: usize = 5;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = Pool::create(&dir.path().join("pool"), &PoolOptions::default()).expect("create");
    let m = pool.branch_id("main").expect("main");
    let reg = libc::S_IFREG | 0o644;
    let ino = pool
        .mknod(m, ROOT_INO, b"big", reg, 0, Owner::default())
        .expect("mknod")
        .ino;
    let mut data: Vec<u8> = (0..FILE).map(|i| (i % 251) as u8).collect();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        pool.write_file(m, ino, (i * MIB) as u64, chunk)
            .expect("write");
    }
    pool.snapshot_create("s", "main").expect("snapshot");
    data[FILE / 2] ^= 1;
    for (i, chunk) in data.chunks(MIB).enumerate() {
        pool.write_file(m, ino, (i * MIB) as u64, chunk)
            .expect("write");
    }
    // As the control path does before a diff.
    pool.sync().expect("sync");
    for run in 0..RUNS {
        let t = Instant::now();
        pool.diff("s", "main").expect("diff");
        let alone = t.elapsed();
        let stop = AtomicBool::new(false);
        let (took, (worst, calls)) = std::thread::scope(|sc| {
            let getattrs = sc.spawn(|| {
                let (mut worst, mut calls) = (Duration::ZERO, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    pool.getattr(m, ino).expect("getattr");
                    worst = worst.max(t.elapsed());
                    calls += 1;
                }
                (worst, calls)
            });
            let t = Instant::now();
            let d = pool.diff("s", "main").expect("diff");
            let took = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            assert_eq!(d.entries.len(), 1, "{:?}", d.entries);
            (took, getattrs.join().expect("getattr thread"))
        });
        println!(
            "run {run}: diff alone {:.3} s; beside getattrs {:.3} s, longest getattr {:.3} ms ({calls} getattrs)",
            alone.as_secs_f64(),
            took.as_secs_f64(),
            worst.as_secs_f64() * 1e3
        );
    }
}
