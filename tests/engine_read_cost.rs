//! Regression guard without timing: how many tree nodes a 4 KiB read of a large file
//! reads from the device. From a cold cache it is one root-to-leaf path per tree
//! (catalog, then the branch's tree), bounded by the tree height, not by the file
//! size; the upper levels then stay cached, so the next reads in the same region
//! read no nodes at all and reads elsewhere read only the new leaves. And how many
//! device reads a 1 MiB read of a sequentially written file takes: one, because
//! extents that continue each other on the device are read as one run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{Pool, PoolOptions};
use cowfs::store::device::{BlockDevice, MemDevice};
use cowfs::store::BlockAddr;

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

/// A device that counts the file data reads reaching it.
struct CountingDataReads {
    inner: MemDevice,
    data_reads: AtomicU64,
}

impl BlockDevice for CountingDataReads {
    fn read_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(addr, buf)
    }
    fn read_data_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        self.data_reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_data_at(addr, buf)
    }
    fn write_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(addr, buf)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn len_blocks(&self) -> u64 {
        self.inner.len_blocks()
    }
    fn fixed_capacity(&self) -> Option<u64> {
        self.inner.fixed_capacity()
    }
    fn host_free_bytes(&self) -> Option<u64> {
        self.inner.host_free_bytes()
    }
    fn name(&self) -> PathBuf {
        self.inner.name()
    }
}

#[test]
fn a_1mib_read_of_a_sequential_file_is_one_device_read() {
    let dev = MemDevice::new();
    let (b, ino) = {
        let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).unwrap();
        let b = pool.branch_id("main").unwrap();
        let f = pool
            .mknod(b, 1, b"seq", libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap();
        // 64 MiB in 1 MiB writes (extents hold at most 64 blocks: 4 per write).
        for mib in 0..64u64 {
            pool.write_file(b, f.ino, mib << 20, &vec![mib as u8; 1 << 20])
                .unwrap();
        }
        pool.commit().unwrap();
        (b, f.ino)
    };
    let counting = Arc::new(CountingDataReads {
        inner: dev.snapshot(),
        data_reads: AtomicU64::new(0),
    });
    let pool = Pool::open_on(counting.clone(), &opts()).unwrap();
    let mut reads = Vec::new();
    for mib in [5u64, 30, 63] {
        let before = counting.data_reads.load(Ordering::Relaxed);
        let data = pool.read_file(b, ino, mib << 20, 1 << 20).unwrap();
        assert!(data == vec![mib as u8; 1 << 20], "data of MiB {mib}");
        reads.push(counting.data_reads.load(Ordering::Relaxed) - before);
    }
    println!("device reads per 1 MiB read: {reads:?}");
    assert!(
        reads.iter().all(|r| *r == 1),
        "contiguous extents were not read as one run: {reads:?} device reads"
    );
}
