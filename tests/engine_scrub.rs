//! Corruption of a data block: scrub names the damaged file by path, reads of the
//! damaged block give EIO, every other file keeps working.

use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{Pool, PoolOptions};
use cowfs::store::device::{BlockDevice, MemDevice};
use cowfs::store::BLOCK_SIZE;

#[test]
fn scrub_reports_damaged_file_by_path_and_reads_fail_only_there() {
    let dev = MemDevice::new();
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts).unwrap();
    let b = pool.branch_id("main").unwrap();
    let own = Owner::default();
    let d = pool.mkdir(b, 1, b"data", 0o755, own).unwrap();
    let victim = pool
        .mknod(b, d.ino, b"victim.bin", libc::S_IFREG | 0o644, 0, own)
        .unwrap();
    let healthy = pool
        .mknod(b, 1, b"healthy.bin", libc::S_IFREG | 0o644, 0, own)
        .unwrap();
    pool.write_file(b, victim.ino, 0, &vec![0xAB; 3 * BLOCK_SIZE])
        .unwrap();
    pool.write_file(b, healthy.ino, 0, &vec![0xCD; 3 * BLOCK_SIZE])
        .unwrap();
    pool.commit().unwrap();
    let clean = pool.scrub().unwrap();
    assert!(clean.is_clean(), "{:?}", clean.damaged);
    assert_eq!((clean.files, clean.data_blocks), (2, 6));

    // Find the victim's second data block on the device and flip a byte in it.
    let mut target = None;
    let mut buf = vec![0u8; BLOCK_SIZE];
    for addr in 2..dev.len_blocks() {
        dev.read_at(addr, &mut buf).unwrap();
        if buf.iter().all(|&x| x == 0xAB) {
            if target.is_some() {
                target = Some(addr);
                break;
            }
            target = Some(addr);
        }
    }
    let addr = target.expect("victim data block on the device");
    dev.flip_byte(addr, 100);

    let report = pool.scrub().unwrap();
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    assert_eq!(report.damaged[0].path, "/data/victim.bin");
    assert!(
        report.damaged[0].detail.contains(&format!("block {addr}")),
        "{}",
        report.damaged[0].detail
    );

    let err = pool
        .read_file(b, victim.ino, 0, 3 * BLOCK_SIZE)
        .unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    // The undamaged block of the same file and the other file still read.
    assert_eq!(
        pool.read_file(b, victim.ino, 0, BLOCK_SIZE).unwrap(),
        vec![0xAB; BLOCK_SIZE]
    );
    assert_eq!(
        pool.read_file(b, healthy.ino, 0, 3 * BLOCK_SIZE).unwrap(),
        vec![0xCD; 3 * BLOCK_SIZE]
    );
}
