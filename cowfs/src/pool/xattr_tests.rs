//! Large xattr values (chunked, format-spec/on-disk.md §6.2) and the names-list
//! cap, through the pool: round trips, what replace, remove, unlink and branches
//! leave behind, and what fsck finds when chunks are damaged.

use std::sync::Arc;

use super::{BranchId, FsckOptions, FsckReport, Pool, PoolOptions};
use crate::btree::{Key, MAX_VALUE_LEN};
use crate::fs::items::*;
use crate::fs::{Owner, ROOT_INO};
use crate::store::device::MemDevice;

fn new_pool() -> (Arc<MemDevice>, Pool, BranchId) {
    let dev = Arc::new(MemDevice::new());
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let p = Pool::create_on(dev.clone(), &opts).unwrap();
    let b = p.branch_id("main").unwrap();
    (dev, p, b)
}

fn file(p: &Pool, b: BranchId, name: &[u8]) -> u64 {
    let mode = libc::S_IFREG | 0o644;
    p.mknod(b, ROOT_INO, name, mode, 0, Owner::default())
        .unwrap()
        .ino
}

/// Bytes that differ from chunk to chunk, so a misplaced chunk shows.
fn value(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i / 7) as u8 ^ seed).collect()
}

/// The keys of the inode's chunk items.
fn chunk_keys(p: &Pool, b: BranchId, ino: u64) -> Vec<Key> {
    let (from, to) = (
        Key::new(ino, KIND_XATTR_CHUNK, 0),
        Key::new(ino, KIND_XATTR_CHUNK, u64::MAX),
    );
    let items =
        p.e.lock()
            .with_fs(b, false, |fs| fs.scan(from, to))
            .unwrap();
    items.into_iter().map(|(k, _)| k).collect()
}

fn fsck(p: &Pool) -> FsckReport {
    p.fsck(&FsckOptions::default()).unwrap()
}

#[test]
fn values_up_to_the_kernel_limit_round_trip() {
    let (dev, p, b) = new_pool();
    let f = file(&p, b, b"f");
    // The largest value that fits the XATTR item itself, one more, chunk edges,
    // the kernel's limit.
    let one_item = MAX_VALUE_LEN - 2 - b"user.n".len();
    let sizes = [
        0,
        one_item,
        one_item + 1,
        2 * XATTR_CHUNK_LEN,
        65535,
        XATTR_SIZE_MAX,
    ];
    for (i, len) in sizes.into_iter().enumerate() {
        let name = format!("user.{i}");
        p.setxattr(b, f, name.as_bytes(), &value(len, i as u8), 0)
            .unwrap_or_else(|e| panic!("{len} bytes: {e:?}"));
    }
    let big = value(XATTR_SIZE_MAX + 1, 0);
    assert_eq!(
        p.setxattr(b, f, b"user.x", &big, 0).unwrap_err().errno(),
        libc::E2BIG
    );
    p.commit().unwrap();
    drop(p);
    let p = Pool::open_on(dev, &PoolOptions::default()).unwrap();
    for (i, len) in sizes.into_iter().enumerate() {
        let name = format!("user.{i}");
        assert_eq!(
            p.getxattr(b, f, name.as_bytes()).unwrap(),
            value(len, i as u8),
            "{len}"
        );
    }
    // Only the values too large for their item have chunks: 1, 2, 33 and 33.
    let want = 1 + 2 + 2 * XATTR_MAX_CHUNKS as usize;
    assert_eq!(chunk_keys(&p, b, f).len(), want);
    let r = fsck(&p);
    assert!(r.is_clean(), "{r}");
}

#[test]
fn replace_and_remove_leave_no_chunks_behind() {
    let (_dev, p, b) = new_pool();
    let f = file(&p, b, b"f");
    let steps: [(usize, usize); 5] = [
        (XATTR_SIZE_MAX, XATTR_MAX_CHUNKS as usize),
        (10, 0),
        (5000, 3),
        (XATTR_SIZE_MAX, XATTR_MAX_CHUNKS as usize),
        (4000, 2),
    ];
    for (n, (len, chunks)) in steps.into_iter().enumerate() {
        p.setxattr(b, f, b"user.v", &value(len, n as u8), 0)
            .unwrap();
        assert_eq!(p.getxattr(b, f, b"user.v").unwrap(), value(len, n as u8));
        assert_eq!(chunk_keys(&p, b, f).len(), chunks, "after {len} bytes");
        let r = fsck(&p);
        assert!(r.is_clean(), "after {len} bytes: {r}");
    }
    p.removexattr(b, f, b"user.v").unwrap();
    assert!(chunk_keys(&p, b, f).is_empty());
    assert_eq!(
        p.getxattr(b, f, b"user.v").unwrap_err().errno(),
        libc::ENODATA
    );
    let r = fsck(&p);
    assert!(r.is_clean(), "{r}");
}

#[test]
fn unlink_frees_the_chunks() {
    let (_dev, p, b) = new_pool();
    p.commit().unwrap();
    let before = p.used_blocks();
    let f = file(&p, b, b"f");
    for i in 0..8u8 {
        let name = format!("user.{i}");
        p.setxattr(b, f, name.as_bytes(), &value(XATTR_SIZE_MAX, i), 0)
            .unwrap();
    }
    p.commit().unwrap();
    // 8 values of 33 chunks, two chunks a leaf.
    assert!(
        p.used_blocks() >= before + 8 * 16,
        "{} -> {}",
        before,
        p.used_blocks()
    );
    p.unlink(b, ROOT_INO, b"f").unwrap();
    p.commit().unwrap();
    assert!(chunk_keys(&p, b, f).is_empty());
    assert!(
        p.used_blocks() <= before,
        "{} -> {}",
        before,
        p.used_blocks()
    );
    let r = fsck(&p);
    assert!(r.is_clean(), "{r}");
}

#[test]
fn a_branch_changes_its_own_copy() {
    let (_dev, p, b) = new_pool();
    let f = file(&p, b, b"f");
    p.setxattr(b, f, b"user.v", &value(XATTR_SIZE_MAX, 1), 0)
        .unwrap();
    let child = p.branch_create("child", "main").unwrap();
    p.setxattr(child, f, b"user.v", &value(30000, 2), 0)
        .unwrap();
    p.setxattr(child, f, b"user.w", &value(9000, 3), 0).unwrap();
    assert_eq!(
        p.getxattr(b, f, b"user.v").unwrap(),
        value(XATTR_SIZE_MAX, 1)
    );
    assert_eq!(
        p.getxattr(b, f, b"user.w").unwrap_err().errno(),
        libc::ENODATA
    );
    assert_eq!(p.getxattr(child, f, b"user.v").unwrap(), value(30000, 2));
    assert_eq!(p.getxattr(child, f, b"user.w").unwrap(), value(9000, 3));
    // The parent takes a new value of its own; the child's stay.
    p.setxattr(b, f, b"user.v", &value(20000, 4), 0).unwrap();
    assert_eq!(p.getxattr(child, f, b"user.v").unwrap(), value(30000, 2));
    let r = fsck(&p);
    assert!(r.is_clean(), "{r}");
}

#[test]
fn names_list_stops_at_the_kernel_limit() {
    let (_dev, p, b) = new_pool();
    let f = file(&p, b, b"f");
    // 256 names of 255 bytes: each with its NUL, exactly XATTR_LIST_MAX.
    let name = |i: usize| format!("user.{i:03}{}", "n".repeat(247)).into_bytes();
    for i in 0..256 {
        p.setxattr(b, f, &name(i), b"v", 0).unwrap();
    }
    let list = p.listxattr(b, f).unwrap();
    assert_eq!(list.len(), XATTR_LIST_MAX);
    // One more name, even a short one, is refused and changes nothing.
    for extra in [name(256), b"user.x".to_vec()] {
        let e = p.setxattr(b, f, &extra, b"v", 0).unwrap_err();
        assert_eq!(e.errno(), libc::ENOSPC);
        assert_eq!(p.getxattr(b, f, &extra).unwrap_err().errno(), libc::ENODATA);
    }
    assert_eq!(p.listxattr(b, f).unwrap(), list);
    // Existing names still take new values, and a removed one makes room.
    p.setxattr(b, f, &name(7), &value(XATTR_SIZE_MAX, 7), 0)
        .unwrap();
    p.removexattr(b, f, &name(0)).unwrap();
    p.setxattr(b, f, b"user.x", b"v", 0).unwrap();
    let r = fsck(&p);
    assert!(r.is_clean(), "{r}");
}

/// A file with one 65,536-byte value (chunk id 0), committed.
fn pool_with_large_value() -> (Arc<MemDevice>, Pool, BranchId, u64) {
    let (dev, p, b) = new_pool();
    let f = file(&p, b, b"f");
    p.setxattr(b, f, b"user.v", &value(XATTR_SIZE_MAX, 1), 0)
        .unwrap();
    p.commit().unwrap();
    (dev, p, b, f)
}

#[test]
fn fsck_finds_a_missing_chunk() {
    let (_dev, p, b, f) = pool_with_large_value();
    let key = xattr_chunk_key(f, 0, 5);
    p.e.lock()
        .with_fs(b, true, |fs| fs.del(&key))
        .unwrap()
        .unwrap();
    let r = fsck(&p);
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("xattr chunks 0 missing")),
        "{r}"
    );
    assert!(p.getxattr(b, f, b"user.v").unwrap_err().errno() == libc::EIO);
}

#[test]
fn fsck_finds_a_short_chunk() {
    let (_dev, p, b, f) = pool_with_large_value();
    let key = xattr_chunk_key(f, 0, 0);
    p.e.lock()
        .with_fs(b, true, |fs| fs.put(key, vec![1; 10]))
        .unwrap();
    let r = fsck(&p);
    assert!(r.errors.iter().any(|e| e.contains("not adding up")), "{r}");
    assert!(p.getxattr(b, f, b"user.v").unwrap_err().errno() == libc::EIO);
}

#[test]
fn fsck_finds_chunks_of_no_value() {
    let (_dev, p, b, f) = pool_with_large_value();
    let key = xattr_chunk_key(f, 9, 0);
    p.e.lock()
        .with_fs(b, true, |fs| fs.put(key, vec![1; 10]))
        .unwrap();
    let r = fsck(&p);
    assert!(r.errors.is_empty(), "{r}");
    assert!(
        r.leaks
            .iter()
            .any(|e| e.contains("xattr chunks 9 belong to no xattr")),
        "{r}"
    );
}

#[test]
fn fsck_finds_a_chunk_id_the_counter_would_hand_out_again() {
    let (_dev, p, b, f) = pool_with_large_value();
    p.e.lock()
        .with_fs(b, true, |fs| {
            let mut i = fs.inode(f)?;
            i.next_chunk_id = 0;
            fs.put_inode(f, &i)
        })
        .unwrap();
    let r = fsck(&p);
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("not below the inode's counter")),
        "{r}"
    );
}
