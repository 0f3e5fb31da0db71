//! Reads reuse their buffers on a thread (`fs::readplan`): a buffer keeps the
//! bytes of the read before, another file's or another branch's. Whatever the
//! next read does not fill from the device (a hole, a punched range, fallocated
//! but unwritten blocks, the part past a short piece) must still read as zeros.

use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{BranchId, Pool, PoolOptions};
use cowfs::store::device::MemDevice;

const MIB: u64 = 1 << 20;

fn pool() -> (Pool, BranchId) {
    let opts = PoolOptions {
        capacity_bytes: Some(1 << 30),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(MemDevice::new()), &opts).unwrap();
    let b = pool.branch_id("main").unwrap();
    (pool, b)
}

fn file(pool: &Pool, b: BranchId, name: &[u8]) -> u64 {
    pool.mknod(b, 1, name, libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap()
        .ino
}

/// Read all of `ino`'s first MiB after reading a MiB of 0xEE on this thread,
/// so that the buffer the read gets holds 0xEE wherever it is not filled.
fn read_after_dirty(pool: &Pool, b: BranchId, dirty: u64, ino: u64) -> Vec<u8> {
    let d = pool.read_file_bytes(b, dirty, 0, MIB as usize).unwrap();
    assert!(d.as_slice().iter().all(|&x| x == 0xEE));
    drop(d);
    pool.read_file_bytes(b, ino, 0, MIB as usize)
        .unwrap()
        .as_slice()
        .to_vec()
}

#[test]
fn holes_punched_ranges_and_unwritten_blocks_read_as_zeros_after_a_reused_buffer() {
    let (pool, b) = pool();
    let dirty = file(&pool, b, b"dirty");
    pool.write_file(b, dirty, 0, &vec![0xEE; MIB as usize])
        .unwrap();

    // A sparse file: 4 KiB written in the middle, size 1 MiB.
    let sparse = file(&pool, b, b"sparse");
    pool.write_file(b, sparse, 512 << 10, &[7; 4096]).unwrap();
    pool.write_file(b, sparse, MIB - 1, &[9]).unwrap();
    // A written file with a punched range.
    let punched = file(&pool, b, b"punched");
    pool.write_file(b, punched, 0, &vec![5; MIB as usize])
        .unwrap();
    // Fallocated, then partly written.
    let prealloc = file(&pool, b, b"prealloc");
    pool.fallocate(b, prealloc, 0, MIB, false).unwrap();
    pool.write_file(b, prealloc, 64 << 10, &[3; 8192]).unwrap();
    // Committed, so that reads go through the read plan (blocks of the running
    // transaction are read under the lock instead).
    pool.commit().unwrap();
    pool.punch_hole(b, punched, 100 << 10, 200 << 10).unwrap();
    pool.commit().unwrap();

    let got = read_after_dirty(&pool, b, dirty, sparse);
    let mut want = vec![0u8; MIB as usize];
    want[512 << 10..(512 << 10) + 4096].fill(7);
    want[MIB as usize - 1] = 9;
    assert!(
        got == want,
        "sparse file: {:?}",
        first_difference(&got, &want)
    );

    let got = read_after_dirty(&pool, b, dirty, punched);
    let mut want = vec![5u8; MIB as usize];
    want[100 << 10..300 << 10].fill(0);
    assert!(
        got == want,
        "punched file: {:?}",
        first_difference(&got, &want)
    );

    let got = read_after_dirty(&pool, b, dirty, prealloc);
    let mut want = vec![0u8; MIB as usize];
    want[64 << 10..(64 << 10) + 8192].fill(3);
    assert!(
        got == want,
        "fallocated file: {:?}",
        first_difference(&got, &want)
    );
}

fn first_difference(got: &[u8], want: &[u8]) -> Option<(usize, u8, u8)> {
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .map(|i| (i, got[i], want[i]))
}
