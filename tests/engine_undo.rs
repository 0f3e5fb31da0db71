//! Undo of failed operations (format-spec §8.3), at the edges a review found: blocks
//! an operation frees and would reuse before it ends, and operations that fail on
//! the device rather than for lack of room.

#[path = "support/pool_fixture.rs"]
mod pool_fixture;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::{BlockDevice, MemDevice};
use pool_fixture::file;

const BS: u64 = 4096;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(0x9e37)) as u8)
        .collect()
}

/// A clone_range by bytes (unaligned) into a file with uncommitted data, on a nearly
/// full pool: chunk by chunk it frees the target's blocks of this transaction, which
/// later chunks could reuse and overwrite before a chunk runs out of room. The undo
/// maps the old blocks again, so they must still hold the old bytes (they held
/// chunk 2's under the old checksums: EIO, and fsck found 434 corrupt blocks).
#[test]
fn failed_clone_leaves_the_target_as_it_was() {
    let mut undone = 0;
    for spare in (1000u64..=2400).step_by(200) {
        let opts = PoolOptions {
            capacity_bytes: Some(16384 * BS),
            ..Default::default()
        };
        let p = Pool::create_on(Arc::new(MemDevice::new()), &opts).expect("create");
        let b = p.branch_id("main").expect("main");
        let src = file(&p, b, b"src");
        p.write_file(b, src, 0, &pattern(1, 8 << 20)).expect("src");
        let dst = file(&p, b, b"dst");
        let sp = file(&p, b, b"spare");
        p.write_file(b, sp, 0, &pattern(2, (spare * BS) as usize))
            .expect("spare");
        let filler = file(&p, b, b"filler");
        let mut off = 0u64;
        for chunk in [64 * 1024usize, 4096] {
            while let Ok(n) = p.write_file(b, filler, off, &vec![9u8; chunk]) {
                off += n as u64;
            }
        }
        p.commit().expect("commit");
        p.unlink(b, ROOT_INO, b"spare").expect("unlink");
        p.commit().expect("commit");
        p.commit().expect("commit");
        // The target: 3 MiB of this transaction, with holes.
        let mut old = pattern(3, 3 << 20);
        for (i, blk) in old.chunks_mut(4096).enumerate() {
            if i % 128 == 100 {
                blk.fill(0);
            } else {
                p.write_file(b, dst, (i * 4096) as u64, blk).expect("dst");
            }
        }
        if p.clone_range(b, src, 0, dst, 1, 8 << 20).is_ok() {
            continue;
        }
        undone += 1;
        let back = p.read_file(b, dst, 0, 3 << 20).map_err(|e| e.to_string());
        assert!(
            back == Ok(old),
            "spare {spare}: the failed clone changed the target"
        );
        let r = p.fsck(&FsckOptions::default()).expect("fsck");
        assert!(r.is_clean(), "spare {spare}:\n{r}");
    }
    assert!(undone >= 3, "only {undone} clones ran out of room");
}

/// A device whose data writes fail once `ok_left` more have succeeded: EIO, or the
/// ENOSPC of a full host under a pool file.
struct Flaky {
    inner: MemDevice,
    ok_left: AtomicI64,
    errno: i32,
}

impl Flaky {
    fn new(errno: i32) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: MemDevice::new(),
            ok_left: AtomicI64::new(i64::MAX),
            errno,
        })
    }
    fn fail_after(&self, n: i64) {
        self.ok_left.store(n, Ordering::SeqCst);
    }
}

impl BlockDevice for Flaky {
    fn read_at(&self, a: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(a, buf)
    }
    fn write_at(&self, a: u64, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(a, buf)
    }
    fn write_data_at(&self, a: u64, buf: &[u8]) -> std::io::Result<()> {
        if self.ok_left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(std::io::Error::from_raw_os_error(self.errno));
        }
        self.inner.write_at(a, buf)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn len_blocks(&self) -> u64 {
        self.inner.len_blocks()
    }
    fn fixed_capacity(&self) -> Option<u64> {
        None
    }
    fn host_free_bytes(&self) -> Option<u64> {
        None
    }
    fn name(&self) -> PathBuf {
        PathBuf::from("<flaky>")
    }
}

fn pool_on(dev: &Arc<Flaky>) -> (Pool, u64) {
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let p = Pool::create_on(dev.clone(), &opts).expect("create");
    let b = p.branch_id("main").expect("main");
    (p, b)
}

/// A write the pool ran without a journal (it had room) that fails on the device
/// after the file's inline bytes moved to an extent: the inode still counts that
/// extent, so the next small write keeps the bytes.
#[test]
fn write_failing_on_the_device_after_uninline_keeps_the_bytes() {
    for errno in [libc::ENOSPC, libc::EIO] {
        let dev = Flaky::new(errno);
        let (p, b) = pool_on(&dev);
        let f = file(&p, b, b"small");
        p.write_file(b, f, 0, b"hello").expect("inline");
        p.commit().expect("commit");
        // The un-inline's data write succeeds, the next one fails.
        dev.fail_after(1);
        assert!(p.write_file(b, f, 0, &vec![7u8; 64 * 1024]).is_err());
        dev.fail_after(i64::MAX);
        p.write_file(b, f, 5, b"!").expect("write");
        assert_eq!(
            p.read_file(b, f, 0, 100).expect("read"),
            b"hello!",
            "errno {errno}"
        );
        let r = p.fsck(&FsckOptions::default()).expect("fsck");
        assert!(r.is_clean(), "errno {errno}:\n{r}");
    }
}

/// A symlink whose target's block cannot be written leaves no link behind.
#[test]
fn symlink_failing_on_the_device_leaves_no_link() {
    let dev = Flaky::new(libc::EIO);
    let (p, b) = pool_on(&dev);
    dev.fail_after(0);
    let r = p.symlink(b, ROOT_INO, b"ln", &[b'a'; 2000], Owner::default());
    dev.fail_after(i64::MAX);
    assert!(r.is_err());
    assert!(p.lookup(b, ROOT_INO, b"ln").is_err(), "a half-made link");
    let r = p.fsck(&FsckOptions::default()).expect("fsck");
    assert!(r.is_clean(), "{r}");
}
