//! One-flush commits: a small commit lists its blocks in the superblock. If a power
//! cut keeps the new superblock but loses any block it lists, open must fall back to
//! the previous commit; if every block landed, the new commit stands.

use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{BranchId, FsckOptions, Pool, PoolOptions};
use cowfs::store::device::{DeviceEvent, MemDevice};

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    }
}

/// A pool holding file `f` (8 KiB of 1s, committed), then one small commit that
/// writes `data` at `off`, recorded.
struct SmallCommit {
    /// The image before that commit, and its generation.
    before: MemDevice,
    g: u64,
    b: BranchId,
    ino: u64,
    writes: Vec<(u64, Vec<u8>)>,
    flushes: usize,
}

fn record_small_commit(off: u64, data: &[u8]) -> SmallCommit {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).unwrap();
    let b = pool.branch_id("main").unwrap();
    let ino = pool
        .mknod(b, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap()
        .ino;
    pool.write_file(b, ino, 0, &[1u8; 8192]).unwrap();
    pool.commit().unwrap();
    let before = dev.snapshot();
    let g = pool.generation();
    dev.start_recording();
    pool.write_file(b, ino, off, data).unwrap();
    pool.commit().unwrap();
    let log = dev.take_log();
    let flushes = log
        .iter()
        .filter(|e| matches!(e, DeviceEvent::Flush))
        .count();
    let writes = log
        .into_iter()
        .filter_map(|e| match e {
            DeviceEvent::Write { addr, data } => Some((addr, data)),
            DeviceEvent::Flush => None,
        })
        .collect();
    SmallCommit {
        before,
        g,
        b,
        ino,
        writes,
        flushes,
    }
}

#[test]
fn torn_small_commit_falls_back_and_complete_one_stands() {
    let SmallCommit {
        before,
        g,
        b,
        ino,
        writes,
        flushes,
    } = record_small_commit(4096, &[2u8; 8192]);
    assert_eq!(flushes, 1, "a small commit needs a single flush");
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
        let data = p.read_file(b, ino, 0, 1 << 20).unwrap();
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
    assert_eq!(p.read_file(b, ino, 0, 1 << 20).unwrap(), want);
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

/// The superblock slots are cowfs's only log: a commit's record is the newest slot
/// and its manifest. A garbage or half-written newest slot, or a pool file cut off
/// before the end of the commit, must be detected (CRC, manifest) and the pool
/// opened at the previous commit; opening that image again gives the same result
/// (nothing is replayed twice), and the next commit supersedes the torn record.
#[test]
fn garbage_torn_or_truncated_log_tail_is_ignored_and_reopen_is_idempotent() {
    let SmallCommit {
        before,
        g,
        b,
        ino,
        writes,
        ..
    } = record_small_commit(0, &[2u8; 8192]);
    let slot = (g + 1) % 2;
    let sb = writes.iter().find(|(a, _)| *a == slot).unwrap().1.clone();
    let others: Vec<&(u64, Vec<u8>)> = writes.iter().filter(|(a, _)| *a != slot).collect();
    let with_blocks = || {
        let img = before.snapshot();
        for (addr, data) in &others {
            img.apply(*addr, data);
        }
        img
    };

    let mut garbage = vec![0u8; 4096];
    let mut x = 0x9e37_79b9_u32;
    for byte in garbage.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *byte = x as u8;
    }
    let mut old = vec![0u8; 4096];
    cowfs::store::device::BlockDevice::read_at(&before, slot, &mut old).unwrap();
    let mut torn_sb = sb[..2048].to_vec();
    torn_sb.extend_from_slice(&old[2048..4096]);
    let half = with_blocks();
    half.apply(slot, &torn_sb);
    let garbage_img = with_blocks();
    garbage_img.apply(slot, &garbage);
    let truncated = with_blocks();
    truncated.apply(slot, &sb);
    let last = others.iter().map(|(a, _)| *a).max().unwrap();
    truncated.truncate(last);

    for (what, img) in [
        ("garbage newest slot", garbage_img),
        ("half-written newest slot", half),
        ("pool cut off before the commit's last block", truncated),
    ] {
        // Each attempt opens its own copy of the image: same image, same outcome.
        for attempt in 0..2 {
            let p = Pool::open_on(Arc::new(img.snapshot()), &opts())
                .unwrap_or_else(|e| panic!("{what}, open {attempt}: {e}"));
            assert_eq!(p.generation(), g, "{what}, open {attempt}");
            assert_eq!(
                p.read_file(b, ino, 0, 1 << 20).unwrap(),
                vec![1u8; 8192],
                "{what}, open {attempt}"
            );
            let r = p.fsck(&FsckOptions::default()).unwrap();
            assert!(r.is_clean(), "{what}, open {attempt}: {r}");
        }
        // A new commit on the recovered pool supersedes the torn record.
        let p = Pool::open_on(Arc::new(img.clone()), &opts()).unwrap();
        p.write_file(b, ino, 0, &[3u8; 100]).unwrap();
        p.commit().unwrap();
        drop(p);
        let p = Pool::open_on(Arc::new(img), &opts()).unwrap();
        assert!(p.generation() > g, "{what}: the next commit");
        let mut want = vec![3u8; 100];
        want.extend(vec![1u8; 8092]);
        assert_eq!(p.read_file(b, ino, 0, 1 << 20).unwrap(), want, "{what}");
        assert!(
            p.fsck(&FsckOptions::default()).unwrap().is_clean(),
            "{what}"
        );
    }
}

/// The newest superblock on `dev`.
fn newest_superblock(dev: &MemDevice) -> cowfs::store::superblock::Superblock {
    use cowfs::store::device::BlockDevice;
    (0..2)
        .filter_map(|slot| {
            let mut b = vec![0u8; cowfs::store::BLOCK_SIZE];
            dev.read_at(slot, &mut b).ok()?;
            cowfs::store::superblock::Superblock::decode(&b).ok()
        })
        .max_by_key(|s| s.generation)
        .unwrap()
}

/// A small commit's manifest lists only blocks that commit still references. A
/// temporary file written and deleted before an fsync frees its blocks in the same
/// transaction, so they are allocatable at once and the next transaction may
/// overwrite them before it commits. Listed in the manifest, they made open reject
/// the fsynced commit after a crash in that window (and fall back one generation).
#[test]
fn blocks_freed_in_a_small_commit_may_be_overwritten_before_the_next() {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).unwrap();
    let b = pool.branch_id("main").unwrap();
    let o = Owner::default();
    let mk = |name: &[u8]| {
        pool.mknod(b, 1, name, libc::S_IFREG | 0o644, 0, o)
            .unwrap()
            .ino
    };
    let keep = mk(b"keep");
    pool.write_file(b, keep, 0, &[0xAA; 8192]).unwrap();
    let t = mk(b"t");
    pool.commit().unwrap();
    pool.commit().unwrap();
    // Commit A: a temporary file written and deleted, `keep` rewritten, fsync.
    dev.start_recording();
    pool.write_file(b, t, 0, &[0x22; 64 * 4096]).unwrap();
    pool.unlink(b, 1, b"t").unwrap();
    pool.write_file(b, keep, 0, &[0xBB; 8192]).unwrap();
    pool.sync_file(b, keep).unwrap();
    let g_a = pool.generation();
    assert!(
        !newest_superblock(&dev).manifest.is_empty(),
        "A is a one-flush commit"
    );
    // The temporary file's blocks (free in A: nothing else holds 0x22 bytes).
    let freed: Vec<u64> = dev
        .take_log()
        .into_iter()
        .filter_map(|e| match e {
            DeviceEvent::Write { addr, data } => Some((addr, data)),
            DeviceEvent::Flush => None,
        })
        .flat_map(|(addr, data)| {
            data.chunks(4096)
                .enumerate()
                .filter(|(_, c)| c.iter().all(|x| *x == 0x22))
                .map(|(i, _)| addr + i as u64)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(freed.len(), 64);
    // The next transaction reuses them, and the power fails before it commits.
    let crash = dev.snapshot();
    for a in &freed {
        crash.apply(*a, &[0x33; 4096]);
    }
    let p2 = Pool::open_on(Arc::new(crash), &PoolOptions::default()).unwrap();
    assert_eq!(p2.generation(), g_a, "open rejected the fsynced commit A");
    assert_eq!(p2.read_file(b, keep, 0, 8192).unwrap(), vec![0xBB; 8192]);
    let r = p2.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}
