//! fsck of a pool of the default capacity (1 TiB: 265,000 space-map leaf pages,
//! nearly all never written) must skip the unwritten pages and keep none in
//! memory: it used to load every one of them (1 GiB, 2.4 s for an empty pool).
//!
//! A test binary of its own: the bound is on the peak resident memory of the
//! whole process (VmHWM), which the other tests of a binary, running beside it
//! on their own threads, raised past the bound once (417 MiB in engine_space,
//! where this test lived; 7 MiB alone).

use std::sync::Arc;

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::MemDevice;

/// Peak resident memory of this test process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn fsck_of_a_default_size_pool_does_not_load_every_space_map_page() {
    let pool =
        Pool::create_on(Arc::new(MemDevice::new()), &PoolOptions::default()).expect("create");
    assert_eq!(pool.statfs().blocks, (1u64 << 40) / 4096);
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
    let data: Vec<u8> = (0..100_000u64).map(|i| (i * 2654435761) as u8).collect();
    pool.write_file(b, f.ino, 0, &data).expect("write");
    let t = std::time::Instant::now();
    let r = pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(r.is_clean(), "fsck:\n{r}");
    assert_eq!(r.leaked_blocks, 0);
    let peak = peak_rss_kib();
    println!(
        "fsck of a 1 TiB pool: {:?}, peak RSS of the test process {} MiB",
        t.elapsed(),
        peak / 1024
    );
    // Loading every leaf page took 1 GiB; alone this process peaks at about 7 MiB.
    assert!(peak < 128 * 1024, "peak RSS {} MiB", peak / 1024);
}
