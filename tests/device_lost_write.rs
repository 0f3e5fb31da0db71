//! A real lost write, on this host's kernel: what the pool's flushes rest on
//! (store/flush_handles.rs, format-spec on-disk.md §"No flush succeeds beside
//! or after a failed one").
//!
//! The device is a loop device over a sparse file on a small tmpfs: write-back
//! lands until the tmpfs is full and fails after that, which the kernel reports
//! as a write-back error (errseq) of the device, or of a file of an ext4 on it. Linux tells that error once to each open
//! file description, to those open before it was first reported
//! (`file_check_and_advance_wb_err`, `errseq_sample` in lib/errseq.c). So two
//! flushes through one description can see EIO and 0 for the same lost block,
//! which is why a `FileDevice` lends each flush a description of its own,
//! opened with the pool, and fails every flush after a failed one.
//!
//! Needs root and loop devices (`.ci/run` runs the tests as root).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cowfs::fs::Owner;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::{BlockDevice, FileDevice};

/// Bytes written past what the tmpfs under the loop device holds.
const LOST: usize = 8 << 20;

/// A loop device whose writes land until `mib` MiB are stored and fail after
/// that. Dropping it detaches the loop device and unmounts the tmpfs (lazily),
/// also when the test panics: declare it before anything that opens the device.
struct LosingDevice {
    dir: tempfile::TempDir,
    dev: Option<PathBuf>,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl LosingDevice {
    fn new(mib: u32) -> LosingDevice {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m")])
            .arg("cowfs-test-lost-write")
            .arg(dir.path()));
        let mut d = LosingDevice { dir, dev: None };
        let image = d.dir.path().join("image");
        File::create(&image)
            .and_then(|f| f.set_len(64 << 20))
            .unwrap();
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image));
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        d.dev = Some(dev.into());
        d
    }

    fn path(&self) -> &Path {
        self.dev.as_deref().unwrap()
    }

    /// A new open file description of the device (no O_EXCL: a FileDevice may
    /// have claimed it).
    fn open(&self) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path())
            .unwrap()
    }
}

impl Drop for LosingDevice {
    fn drop(&mut self) {
        if let Some(dev) = &self.dev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The kernel behaviour the flush handles are built for: one description is
/// told of a lost write once (its next flush returns 0), every description
/// open before it was reported is told too, and one opened after is not.
#[test]
fn a_lost_write_is_told_once_to_each_description_open_before_it() {
    let d = LosingDevice::new(2);
    let writer = d.open();
    let before = d.open();
    writer.write_all_at(&vec![0x5a; LOST], 0).unwrap();

    assert!(
        writer.sync_data().is_err(),
        "the write-back past 2 MiB fails"
    );
    writer
        .sync_data()
        .expect("told once: the next flush through the same description returns 0");
    assert!(
        before.sync_data().is_err(),
        "a description open before the error is told of it too"
    );
    let after = d.open();
    after
        .sync_data()
        .expect("a description opened after the error was reported is not told");
}

/// Flushes of a FileDevice beside and after a lost write all fail: more
/// flushes at once than it has descriptions, then one more. Through one
/// shared description some would return 0, and every later one.
fn every_flush_fails(dev: FileDevice) {
    let dev = Arc::new(dev);
    let flushes: Vec<_> = (0..24)
        .map(|_| {
            let dev = dev.clone();
            std::thread::spawn(move || dev.flush())
        })
        .collect();
    for (i, f) in flushes.into_iter().enumerate() {
        assert!(f.join().unwrap().is_err(), "flush {i} returned 0");
    }
    assert!(dev.flush().is_err(), "a flush after the failed ones");
}

#[test]
fn every_flush_of_a_block_device_beside_or_after_a_lost_write_fails() {
    let d = LosingDevice::new(2);
    let dev = FileDevice::open(d.path(), false).unwrap();
    dev.write_at(0, &vec![0x5a; LOST]).unwrap();
    every_flush_fails(dev);
}

/// The same for a pool file, on an ext4 made on the device: what fills the
/// tmpfs is the file's data (mkfs writes the inode tables and the journal
/// out, so the ext4's own blocks are stored).
#[test]
fn every_flush_of_a_pool_file_beside_or_after_a_lost_write_fails() {
    let d = LosingDevice::new(10);
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
        ])
        .arg(d.path()));
    let host = Mounted::new(d.path());
    let dev = FileDevice::open(&host.dir.path().join("pool"), true).unwrap();
    dev.write_at(0, &vec![0x5a; 2 * LOST]).unwrap();
    every_flush_fails(dev);
}

/// A filesystem mounted from `dev` in a temporary directory, unmounted
/// (lazily) on drop: declare it after the device.
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(dev: &Path) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount").arg(dev).arg(dir.path()));
        Mounted { dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A 32 MiB pool on `d` with one file, "landed", synced.
fn pool_with_a_landed_file(d: &LosingDevice) -> (PoolOptions, Pool, u64, u64) {
    let opts = PoolOptions {
        capacity_bytes: Some(32 << 20),
        ..Default::default()
    };
    let pool = Pool::create(d.path(), &opts).unwrap();
    let b = pool.branch_id("main").unwrap();
    let f = pool
        .mknod(b, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
        .unwrap()
        .ino;
    pool.write_file(b, f, 0, b"landed").unwrap();
    pool.sync().unwrap();
    (opts, pool, b, f)
}

/// A pool on the device: syncs racing over a commit whose blocks did not land
/// all fail, the pool goes read-only, and the device opens at the last commit
/// that did land, fsck clean (read from the disk, not from the host's cache of
/// the pages that never reached it).
#[test]
fn syncs_over_a_lost_commit_fail_and_the_pool_opens_at_the_one_before() {
    let d = LosingDevice::new(2);
    let (opts, pool, b, f) = pool_with_a_landed_file(&d);
    let pool = Arc::new(pool);

    // 8 MiB in writes small enough to stay buffered (the host's page cache).
    let chunk = vec![0x5a; 64 << 10];
    for i in 0..(LOST / chunk.len()) as u64 {
        pool.write_file(b, f, i * chunk.len() as u64, &chunk)
            .unwrap();
    }
    let syncs: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || pool.sync())
        })
        .collect();
    for (i, s) in syncs.into_iter().enumerate() {
        assert!(s.join().unwrap().is_err(), "sync {i} succeeded");
    }
    assert!(pool.sync().is_err(), "the pool is read-only");
    drop(pool);

    let reopened = Pool::open_read_only(d.path(), &opts).unwrap();
    assert_eq!(reopened.read_file(b, f, 0, 100).unwrap(), b"landed");
    let r = reopened.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

/// A write-back that failed before the pool was opened (another writer, or a
/// daemon killed before its next flush, was told of it by no flush) does not
/// fail the flushes of the next open: Linux would tell every description
/// opened after it, and the pool would go read-only at its first commit. What
/// was lost was never flushed, so never acknowledged; the pool opens at its
/// last commit, read from the medium.
#[test]
fn a_lost_write_from_before_the_open_does_not_fail_its_flushes() {
    let d = LosingDevice::new(2);
    let (opts, pool, b, f) = pool_with_a_landed_file(&d);
    drop(pool);

    // Past the pool's capacity, so that nothing of the pool is overwritten.
    let writer = d.open();
    writer.write_all_at(&vec![0x5a; LOST], 40 << 20).unwrap();
    // Written back (and failed) with no description flushing it.
    unsafe { libc::sync() };
    drop(writer);
    // Room on the tmpfs again: what the pool writes from now on lands.
    run(Command::new("mount")
        .args(["-o", "remount,size=32m"])
        .arg(d.dir.path()));

    let pool = Pool::open(d.path(), &opts).unwrap();
    assert_eq!(pool.read_file(b, f, 0, 100).unwrap(), b"landed");
    pool.write_file(b, f, 0, b"after").unwrap();
    pool.sync()
        .expect("the error from before the open fails no flush of this one");
    drop(pool);
    let reopened = Pool::open_read_only(d.path(), &opts).unwrap();
    assert_eq!(reopened.read_file(b, f, 0, 100).unwrap(), b"afterd");
    let r = reopened.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}
