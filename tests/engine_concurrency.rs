//! Reads run outside the pool lock while writers rewrite and commit: every read must
//! see one whole version of the data — never a mix, never blocks reused by a later
//! write, never a spurious checksum error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::MemDevice;

#[test]
fn parallel_reads_see_whole_versions_while_writers_commit() {
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let pool = Arc::new(Pool::create_on(Arc::new(MemDevice::new()), &opts).unwrap());
    let b = pool.branch_id("main").unwrap();
    let own = Owner::default();
    let fixed = pool
        .mknod(b, 1, b"fixed", libc::S_IFREG | 0o644, 0, own)
        .unwrap();
    let fixed_data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    pool.write_file(b, fixed.ino, 0, &fixed_data).unwrap();
    let churn = pool
        .mknod(b, 1, b"churn", libc::S_IFREG | 0o644, 0, own)
        .unwrap();
    pool.write_file(b, churn.ino, 0, &vec![0u8; 256 * 1024])
        .unwrap();
    pool.commit().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut v = 1u8;
            while !stop.load(Ordering::Relaxed) {
                pool.write_file(b, churn.ino, 0, &vec![v; 256 * 1024])
                    .unwrap();
                if v.is_multiple_of(3) {
                    pool.commit().unwrap();
                }
                v = v.wrapping_add(1);
            }
            v
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (pool, fixed_data) = (pool.clone(), fixed_data.clone());
            std::thread::spawn(move || {
                let mut seen = std::collections::HashSet::new();
                for _ in 0..400 {
                    assert_eq!(
                        pool.read_file(b, fixed.ino, 0, 1 << 20).unwrap(),
                        fixed_data
                    );
                    let c = pool.read_file(b, churn.ino, 0, 1 << 20).unwrap();
                    assert_eq!(c.len(), 256 * 1024);
                    assert!(c.iter().all(|&x| x == c[0]), "read mixed two versions");
                    seen.insert(c[0]);
                }
                seen.len()
            })
        })
        .collect();
    let versions: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 3, "the writer made progress");
    assert!(versions > 3, "readers saw the data change");
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}
