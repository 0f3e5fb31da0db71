//! Regression guard without timing: how many tree nodes a 4 KiB read of a large file
//! reads from the device. From a cold cache it is one root-to-leaf path per tree
//! (catalog, then the branch's tree), bounded by the tree height, not by the file
//! size; the upper levels then stay cached, so the next reads in the same region
//! read no nodes at all and reads elsewhere read only the new leaves.

use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{Pool, PoolOptions};
use cowfs::store::device::MemDevice;

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(1 << 32),
        ..Default::default()
    }
}

/// Node reads from the device caused by reading 4 KiB at `off`.
fn nodes_read_by(pool: &Pool, b: cowfs::pool::BranchId, ino: u64, off: u64) -> u64 {
    let before = pool.io_stats().nodes_read;
    let data = pool.read_file(b, ino, off, 4096).unwrap();
    assert_eq!(data, vec![(off >> 20) as u8; 4096], "data at {off}");
    pool.io_stats().nodes_read - before
}

#[test]
fn a_4k_read_reads_one_path_of_nodes_then_hits_the_cache() {
    let dev = MemDevice::new();
    let (b, ino) = {
        let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).unwrap();
        let b = pool.branch_id("main").unwrap();
        let f = pool
            .mknod(b, 1, b"db", libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap();
        // 512 MiB in 64 KiB writes (short extents: a deeper extent tree), each
        // MiB filled with its number.
        for mib in 0..512u64 {
            for part in 0..16u64 {
                let off = (mib << 20) + (part << 16);
                pool.write_file(b, f.ino, off, &vec![mib as u8; 64 << 10])
                    .unwrap();
            }
        }
        pool.commit().unwrap();
        (b, f.ino)
    };
    // A fresh open: nothing cached.
    let pool = Pool::open_on(Arc::new(dev.snapshot()), &opts()).unwrap();
    let cold = nodes_read_by(&pool, b, ino, 300 << 20);
    let same_region = nodes_read_by(&pool, b, ino, (300 << 20) + 8192);
    let elsewhere = nodes_read_by(&pool, b, ino, 100 << 20);
    println!(
        "nodes read from the device by one 4 KiB read: cold {cold}, same region {same_region}, \
         another region {elsewhere}"
    );
    assert!(cold <= 10, "a cold 4 KiB read read {cold} nodes");
    assert_eq!(same_region, 0, "the path just read was not cached");
    assert!(
        elsewhere <= 3,
        "upper levels were not kept: a read elsewhere read {elsewhere} nodes"
    );
}
