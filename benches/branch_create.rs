//! Branch and snapshot creation time with 100 MiB and with 4 GiB of data in the
//! parent, in one run: two pool files in a tempdir on disk, filled with real writes.
//! Creation copies a root pointer and adds one reference, so the two figures should
//! match: the ratio (4 GiB / 100 MiB) must stay under 1.5 (the bench exits 1 if not).
//! Each figure is the median of many creations, interleaved between the two pools so
//! that drift in the disk's flush latency hits both alike; each creation is a commit
//! (flush included), as it is for a user.
//!
//! Run: `cargo bench -p cowfs --bench branch_create`

use std::time::{Duration, Instant};

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{Pool, PoolOptions};

const MIB: u64 = 1 << 20;
const RUNS: usize = 101;
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Create (and, untimed, delete) one branch or snapshot of main.
fn create_once(pool: &Pool, name: &str, snapshot: bool) -> Duration {
    let t = Instant::now();
    if snapshot {
        pool.snapshot_create(name, "main").expect("snapshot");
    } else {
        pool.branch_create(name, "main").expect("branch");
    }
    let d = t.elapsed();
    pool.branch_delete(name).expect("delete");
    d
}

fn main() {
    // Pool files on disk ($TMPDIR or /tmp): one whose main holds 100 MiB, one 4 GiB.
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = PoolOptions::default();
    let sizes = [("100 MiB", 100 * MIB), ("4 GiB", 4096 * MIB)];
    let pools: Vec<Pool> = sizes
        .iter()
        .enumerate()
        .map(|(i, (label, bytes))| {
            let pool = Pool::create(&dir.path().join(format!("bench{i}.pool")), &opts)
                .expect("create pool");
            let t = Instant::now();
            let mut written = 0;
            fill(&pool, *bytes, &mut written);
            println!(
                "parent {label:>7}: filled in {:.1} s, {} blocks used",
                t.elapsed().as_secs_f64(),
                pool.used_blocks()
            );
            pool
        })
        .collect();
    // Interleaved, so that the disk's flush latency drifts the same for both sizes;
    // the first WARMUP rounds are not counted.
    let mut times = vec![[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for round in 0..WARMUP + RUNS {
        for (p, pool) in pools.iter().enumerate() {
            for (k, snapshot) in [false, true].into_iter().enumerate() {
                let d = create_once(pool, &format!("bench-{round}"), snapshot);
                if round >= WARMUP {
                    times[p][k].push(d);
                }
            }
        }
    }
    let med: Vec<[Duration; 2]> = times
        .into_iter()
        .map(|[b, s]| [median(b), median(s)])
        .collect();
    for ((label, _), m) in sizes.iter().zip(&med) {
        println!(
            "parent {label:>7}: branch create median {:.3} ms, snapshot create median {:.3} ms ({RUNS} runs each)",
            ms(m[0]),
            ms(m[1])
        );
    }
    let rb = med[1][0].as_secs_f64() / med[0][0].as_secs_f64();
    let rs = med[1][1].as_secs_f64() / med[0][1].as_secs_f64();
    println!("ratio 4 GiB / 100 MiB: branch {rb:.2}, snapshot {rs:.2} (target < {TARGET_RATIO})");
    if rb >= TARGET_RATIO || rs >= TARGET_RATIO {
        eprintln!("branch creation time grows with the parent's size");
        std::process::exit(1);
    }
}
