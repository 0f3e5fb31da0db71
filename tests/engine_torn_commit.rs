//! One-flush commits: a small commit lists its blocks in the superblock. If a power
//! cut keeps the new superblock but loses any block it lists, open must fall back to
//! the previous commit; if every block landed, the new commit stands.

use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::{DeviceEvent, MemDevice};

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    }
}

#[test]
fn torn_small_commit_falls_back_and_complete_one_stands() {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).unwrap();
    let b = pool.branch_id("main").unwrap();
    let f = pool
        .mknod(b, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap();
    pool.write_file(b, f.ino, 0, &vec![1u8; 8192]).unwrap();
    pool.commit().unwrap();
    let before = dev.snapshot();
    let g = pool.generation();

    dev.start_recording();
    pool.write_file(b, f.ino, 4096, &vec![2u8; 8192]).unwrap();
    pool.commit().unwrap();
    let log = dev.take_log();
    let flushes = log
        .iter()
        .filter(|e| matches!(e, DeviceEvent::Flush))
        .count();
    assert_eq!(flushes, 1, "a small commit needs a single flush");
    let writes: Vec<(u64, Vec<u8>)> = log
        .into_iter()
        .filter_map(|e| match e {
            DeviceEvent::Write { addr, data } => Some((addr, data)),
            DeviceEvent::Flush => None,
        })
        .collect();
    let sb_slot = (g + 1) % 2;
    assert!(writes.iter().any(|(a, _)| *a == sb_slot));
    let others: Vec<&(u64, Vec<u8>)> = writes.iter().filter(|(a, _)| *a != sb_slot).collect();
    assert!(
        others.len() >= 3,
        "data, nodes and space map pages were written"
    );

    // Every block but one landed, with the new superblock: the old commit must win.
    for skip in 0..others.len() {
        let img = before.snapshot();
        for (i, (addr, data)) in others.iter().enumerate() {
            if i != skip {
                img.apply(*addr, data);
            }
        }
        let (_, sb) = writes.iter().find(|(a, _)| *a == sb_slot).unwrap();
        img.apply(sb_slot, sb);
        let p = Pool::open_on(Arc::new(img), &opts()).unwrap();
        assert_eq!(
            p.generation(),
            g,
            "skip {skip}: torn commit must not be accepted"
        );
        let data = p.read_file(b, f.ino, 0, 1 << 20).unwrap();
        assert_eq!(data, vec![1u8; 8192], "skip {skip}");
        let r = p.fsck(&FsckOptions::default()).unwrap();
        assert!(r.is_clean(), "skip {skip}: {r}");
    }

    // Everything landed: the new commit stands.
    let img = before.snapshot();
    for (addr, data) in &writes {
        img.apply(*addr, data);
    }
    let p = Pool::open_on(Arc::new(img), &opts()).unwrap();
    assert_eq!(p.generation(), g + 1);
    let mut want = vec![1u8; 4096];
    want.extend(vec![2u8; 8192]);
    assert_eq!(p.read_file(b, f.ino, 0, 1 << 20).unwrap(), want);
}

#[test]
fn large_commit_flushes_before_its_superblock() {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).unwrap();
    let b = pool.branch_id("main").unwrap();
    let f = pool
        .mknod(b, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap();
    dev.start_recording();
    pool.write_file(b, f.ino, 0, &vec![3u8; 4 << 20]).unwrap();
    pool.commit().unwrap();
    let log = dev.take_log();
    let first_flush = log
        .iter()
        .position(|e| matches!(e, DeviceEvent::Flush))
        .unwrap();
    let sb_write = log
        .iter()
        .position(|e| matches!(e, DeviceEvent::Write { addr, .. } if *addr < 2))
        .unwrap();
    assert!(
        first_flush < sb_write,
        "blocks must be durable before the superblock"
    );
    assert!(matches!(log.last(), Some(DeviceEvent::Flush)));
}
