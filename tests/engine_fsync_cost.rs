//! Regression guard without timing: what one fsync (a small commit) costs in device
//! writes and flushes, whatever the size of the file and the pool.

use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{Pool, PoolOptions};
use cowfs::store::device::{DeviceEvent, MemDevice};

/// Blocks, write calls and flushes of `pool.sync()` after one 4 KiB write into a
/// file of `file_mib` MiB.
fn fsync_cost(file_mib: u64) -> (usize, usize, usize) {
    let dev = MemDevice::new();
    let opts = PoolOptions {
        capacity_bytes: Some(1 << 32),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts).unwrap();
    let b = pool.branch_id("main").unwrap();
    let f = pool
        .mknod(b, 1, b"db", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap();
    let chunk = vec![5u8; 1 << 20];
    for i in 0..file_mib {
        pool.write_file(b, f.ino, i << 20, &chunk).unwrap();
    }
    pool.commit().unwrap();
    dev.start_recording();
    pool.write_file(b, f.ino, (file_mib / 2) << 20, &[9u8; 4096])
        .unwrap();
    pool.sync().unwrap();
    let log = dev.take_log();
    let blocks = log
        .iter()
        .map(|e| match e {
            DeviceEvent::Write { data, .. } => data.len() / 4096,
            DeviceEvent::Flush => 0,
        })
        .sum();
    let flushes = log
        .iter()
        .filter(|e| matches!(e, DeviceEvent::Flush))
        .count();
    (blocks, log.len() - flushes, flushes)
}

#[test]
fn one_fsync_writes_a_bounded_number_of_blocks_and_one_flush() {
    for mib in [1, 64, 512] {
        let (blocks, calls, flushes) = fsync_cost(mib);
        println!(
            "{mib} MiB file: one fsync = {blocks} blocks in {calls} write calls, {flushes} flush"
        );
        // 1 data block + the tree paths to the extent and inode leaves + the catalog
        // leaf + the space map pages whose counts changed (old and new blocks spread
        // over a few 4 MiB leaf pages, plus their index pages) + the superblock: it
        // grows with the tree height, never with the data (measured: 7 blocks at 1 MiB,
        // 16 at 512 MiB).
        assert!(
            blocks <= 20,
            "{mib} MiB file: one fsync wrote {blocks} blocks"
        );
        assert_eq!(flushes, 1, "{mib} MiB file: a small commit flushes once");
        // Consecutive blocks go out in one call (store/runs.rs): the data block, a
        // run or two of nodes and space-map pages, the superblock (measured: 4 calls
        // for 7 to 16 blocks; one call per block before).
        assert!(
            calls <= 8,
            "{mib} MiB file: {blocks} blocks took {calls} write calls"
        );
    }
}
