//! Branch and snapshot creation time with 100 MiB and with 4 GiB of data in the
//! parent, in one run on one pool file (a tempdir on disk, real writes). Creation
//! copies a root pointer and adds one reference, so the two figures should match:
//! the ratio (4 GiB / 100 MiB) must stay under 1.5. Each figure is the median of many
//! creations; each creation is a commit (flush included), as it is for a user.
//!
//! Run: `cargo bench -p cowfs --bench branch_create`

use std::time::{Duration, Instant};

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{Pool, PoolOptions};

const MIB: u64 = 1 << 20;
const RUNS: usize = 41;
const WARMUP: usize = 10;
const TARGET_RATIO: f64 = 1.5;

/// Grow `main` to `bytes` of file data (64 MiB files, written 1 MiB at a time).
fn fill(pool: &Pool, bytes: u64, written: &mut u64) {
    let main = pool.branch_id("main").expect("main");
    let chunk: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    while *written < bytes {
        let n = *written / (64 * MIB);
        let name = format!("data-{n:04}");
        let ino = match pool.lookup(main, ROOT_INO, name.as_bytes()) {
            Ok(a) => a.ino,
            Err(_) => {
                pool.mknod(
                    main,
                    ROOT_INO,
                    name.as_bytes(),
                    libc::S_IFREG | 0o644,
                    0,
                    Owner::default(),
                )
                .expect("mknod")
                .ino
            }
        };
        let mut c = chunk.clone();
        c[..8].copy_from_slice(&written.to_le_bytes());
        pool.write_file(main, ino, *written % (64 * MIB), &c)
            .expect("write");
        *written += MIB;
    }
    pool.commit().expect("commit");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median time to create a branch (or snapshot) of main; each is deleted afterwards
/// (not timed) so the catalog stays the same size.
fn measure(pool: &Pool, snapshot: bool) -> Duration {
    let mut times = Vec::with_capacity(RUNS);
    // The first WARMUP creations are not counted: the fill's writeback settles.
    for i in 0..WARMUP + RUNS {
        let name = format!("bench-{i}");
        let t = Instant::now();
        if snapshot {
            pool.snapshot_create(&name, "main").expect("snapshot");
        } else {
            pool.branch_create(&name, "main").expect("branch");
        }
        if i >= WARMUP {
            times.push(t.elapsed());
        }
        pool.branch_delete(&name).expect("delete");
    }
    median(times)
}

fn main() {
    // A pool file on disk ($TMPDIR or /tmp).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.pool");
    let opts = PoolOptions::default();
    let pool = Pool::create(&path, &opts).expect("create pool");
    let mut written = 0;
    let sizes = [("100 MiB", 100 * MIB), ("4 GiB", 4096 * MIB)];
    let mut results = Vec::new();
    for (label, bytes) in sizes {
        let t = Instant::now();
        fill(&pool, bytes, &mut written);
        let fill_time = t.elapsed();
        let b = measure(&pool, false);
        let s = measure(&pool, true);
        println!(
            "parent {label:>7} (filled in {:.1} s, pool {} blocks used): branch create median {:.3} ms, snapshot create median {:.3} ms ({RUNS} runs each)",
            fill_time.as_secs_f64(),
            pool.used_blocks(),
            b.as_secs_f64() * 1e3,
            s.as_secs_f64() * 1e3
        );
        results.push((b, s));
    }
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    let rb = ratio(results[0].0, results[1].0);
    let rs = ratio(results[0].1, results[1].1);
    println!("ratio 4 GiB / 100 MiB: branch {rb:.2}, snapshot {rs:.2} (target < {TARGET_RATIO})");
    if rb >= TARGET_RATIO || rs >= TARGET_RATIO {
        eprintln!("branch creation time grows with the parent's size");
        std::process::exit(1);
    }
}
