//! A pool opened read-only (`Pool::open_on_read_only`, what `cowfs fsck` and
//! `cowfs scrub` use) is looked at as its last commit left it and never
//! written: on a crash image holding a drop cut mid-way (a deleted 6 GiB
//! branch), a big orphan queued for the freeing thread and an fsync logged
//! after the last commit, open + fsck + scrub + close write no block and
//! flush nothing, and every change is refused with EROFS, also writing
//! nothing. A read-write open of the same image then finds all three pending
//! (the log applied, the drop and the orphan freed), so the image is the one
//! meant. A logged fill of unwritten blocks in place is left unapplied too.

#[path = "support/free_pause.rs"]
mod free_pause;
#[path = "support/pool_fixture.rs"]
mod pool_fixture;

use std::sync::Arc;
use std::time::Duration;

use cowfs::fs::{FsError, Owner, SetAttr, ROOT_INO};
use cowfs::pool::admin::GroupMember;
use cowfs::pool::quota::QuotaLimits;
use cowfs::pool::{BranchId, FsckOptions, Pool, PoolError, NO_OWNER};
use cowfs::store::device::{BlockDevice, MemDevice};
use free_pause::hold_steps;
use pool_fixture::{file, opts};

const GIB: u64 = 1 << 30;
const BS: usize = 4096;
/// Long enough for the freeing thread to reach its pause.
const WAIT: Duration = Duration::from_secs(60);

/// The crash image and what the test needs to know about it.
struct Image {
    dev: MemDevice,
    main: BranchId,
    /// A small file whose last write is only in the intent log.
    f: u64,
    committed: Vec<u8>,
    logged: Vec<u8>,
    /// The 3 GiB orphan queued to be freed in steps.
    huge: u64,
    /// Blocks in use before the big branch and the big file.
    base: u64,
}

/// See the module comment. The image is taken while the original pool is
/// still open with its freeing thread held, as a power cut would leave it.
fn pending_image() -> Image {
    let dev = MemDevice::new();
    let p = Pool::create_on(Arc::new(dev.clone()), &opts(16 * GIB)).unwrap();
    let main = p.branch_id("main").unwrap();
    let f = file(&p, main, b"f");
    let committed = vec![0x11; 16 * BS];
    p.write_file(main, f, 0, &committed).unwrap();
    for _ in 0..3 {
        p.commit().unwrap();
    }
    let base = p.used_blocks();
    let big = p.branch_create("big", "main").unwrap();
    let g = file(&p, big, b"g");
    p.fallocate(big, g, 0, 6 * GIB, false).unwrap();
    let huge = file(&p, main, b"huge");
    p.fallocate(main, huge, 0, 3 * GIB, false).unwrap();
    p.commit().unwrap();

    let (reached, go) = hold_steps(&p, 1);
    p.branch_delete("big").unwrap();
    reached
        .recv_timeout(WAIT)
        .expect("the freeing thread waits");
    p.unlink(main, ROOT_INO, b"huge").unwrap();
    assert_eq!(p.pending_frees(), 2, "a drop and an orphan queued");
    p.commit().unwrap();
    // After a commit only data writes: the fsync is one log record.
    let mut logged = committed.clone();
    logged[..BS].fill(0x22);
    p.write_file(main, f, 0, &vec![0x22; BS]).unwrap();
    p.sync_file(main, f).unwrap();
    let image = dev.snapshot();
    drop(go);
    drop(p);
    Image {
        dev: image,
        main,
        f,
        committed,
        logged,
        huge,
        base,
    }
}

/// The device recording from now on, as a pool would be given it.
fn recorded(img: &MemDevice) -> MemDevice {
    let dev = img.snapshot();
    dev.start_recording();
    dev
}

/// Nothing was written to `dev` and nothing flushed since `recorded`.
fn untouched(dev: &MemDevice, len: u64, what: &str) {
    let events = dev.take_log();
    assert!(events.is_empty(), "{what}: {} device events", events.len());
    assert_eq!(dev.blocks_written(), 0, "{what}");
    assert_eq!(dev.len_blocks(), len, "{what}");
}

#[test]
fn a_read_only_check_writes_nothing_and_sees_the_last_commit() {
    let img = pending_image();
    let dev = recorded(&img.dev);
    let len = dev.len_blocks();
    let q = Pool::open_on_read_only(Arc::new(dev.clone()), &opts(16 * GIB)).unwrap();
    let r = q.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "fsck:\n{r}");
    assert_eq!(r.leaked_blocks, 0);
    assert_eq!(r.log_records, 1, "the logged fsync is counted:\n{r}");
    assert!(r.to_string().contains("1 intent log records"), "{r}");
    assert!(q.scrub().unwrap().is_clean());
    // The last commit: the file as committed, the orphan whole, and the
    // dropped tree (6 GiB less the delete's own step, 2 GiB at most) and the
    // orphan (3 GiB) still in use.
    let m = img.main;
    assert_eq!(q.read_file(m, img.f, 0, 16 * BS).unwrap(), img.committed);
    let orphan = q.getattr(m, img.huge).expect("the orphan is there");
    assert_eq!((orphan.nlink, orphan.size), (0, 3 * GIB));
    let pending = q.used_blocks() - img.base;
    assert!(pending > 6 * GIB / BS as u64, "{pending} blocks");
    assert_eq!(q.pending_frees(), 0, "nothing is freed read-only");
    assert!(q.is_read_only(m).unwrap());
    // No freeing thread: nothing moves while the pool stays open.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(q.used_blocks() - img.base, pending);
    drop(q);
    untouched(&dev, len, "open, fsck, scrub, close");

    // Read-write, the same image replays the fsync and frees the rest.
    let w = Pool::open_on(Arc::new(img.dev.snapshot()), &opts(16 * GIB)).unwrap();
    assert_eq!(w.read_file(m, img.f, 0, 16 * BS).unwrap(), img.logged);
    w.finish_frees();
    assert_eq!(w.cleanup_orphans(m).unwrap(), 1);
    w.finish_frees();
    for _ in 0..3 {
        w.commit().unwrap();
    }
    let left = w.used_blocks() - img.base;
    assert!(left < 64, "{left} blocks more than before the big files");
    let r = w.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean() && r.log_records == 0, "fsck:\n{r}");
}

/// The errno of a refused call; it must be EROFS.
fn erofs<T: std::fmt::Debug, E: std::fmt::Display>(
    what: &str,
    r: Result<T, E>,
    errno: fn(&E) -> i32,
) {
    match r {
        Ok(v) => panic!("{what} succeeded on a read-only pool: {v:?}"),
        Err(e) => assert_eq!(errno(&e), libc::EROFS, "{what}: {e}"),
    }
}

#[test]
fn every_change_is_refused_and_writes_nothing() {
    let img = pending_image();
    let dev = recorded(&img.dev);
    let len = dev.len_blocks();
    let q = Pool::open_on_read_only(Arc::new(dev.clone()), &opts(16 * GIB)).unwrap();
    let (m, f) = (img.main, img.f);
    let own = Owner::default();
    let fs: fn(&FsError) -> i32 = FsError::errno;
    let pool: fn(&PoolError) -> i32 = PoolError::errno;
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    let truncate = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    erofs(
        "mknod",
        q.mknod(m, ROOT_INO, b"n", libc::S_IFREG | 0o644, 0, own),
        fs,
    );
    erofs("mkdir", q.mkdir(m, ROOT_INO, b"d", 0o755, own), fs);
    erofs("symlink", q.symlink(m, ROOT_INO, b"l", b"f", own), fs);
    erofs("link", q.link(m, f, ROOT_INO, b"f2"), fs);
    erofs("unlink", q.unlink(m, ROOT_INO, b"f"), fs);
    erofs("rmdir", q.rmdir(m, ROOT_INO, b"f"), fs);
    erofs("rename", q.rename(m, ROOT_INO, b"f", ROOT_INO, b"g", 0), fs);
    erofs("write_file", q.write_file(m, f, 0, b"x"), fs);
    erofs("setattr (chmod)", q.setattr(m, f, &chmod), fs);
    erofs("setattr (truncate)", q.setattr(m, f, &truncate), fs);
    erofs("setxattr", q.setxattr(m, f, b"user.a", b"v", 0), fs);
    erofs("removexattr", q.removexattr(m, f, b"user.a"), fs);
    erofs("fallocate", q.fallocate(m, f, 0, 2 * GIB, false), fs);
    erofs("punch_hole", q.punch_hole(m, f, 0, BS as u64), fs);
    erofs("zero_range", q.zero_range(m, f, 0, BS as u64, true), fs);
    erofs(
        "clone_range",
        q.clone_range(m, f, 0, f, 8 * BS as u64, BS as u64),
        fs,
    );
    erofs("sync_file", q.sync_file(m, f), pool);
    erofs("cleanup_orphans", q.cleanup_orphans(m), fs);
    q.open_inode(m, img.huge);
    erofs(
        "release_inode (frees the orphan)",
        q.release_inode(m, img.huge),
        fs,
    );
    erofs("branch_create", q.branch_create("b", "main"), pool);
    erofs("snapshot_create", q.snapshot_create("s", "main"), pool);
    erofs(
        "branch_create_recorded",
        q.branch_create_recorded("r", "main", |_| Ok(())),
        pool,
    );
    erofs("branch_rename", q.branch_rename("main", "trunk"), pool);
    erofs("branch_delete", q.branch_delete("main"), pool);
    erofs("set_owners", q.set_owners(&[(m, 7)]), pool);
    erofs("set_protected", q.set_protected("main", true), pool);
    erofs("reset_to", q.reset_to("main", "main"), pool);
    let member = GroupMember {
        name: "g1".into(),
        from: "main".into(),
        snapshot: false,
    };
    erofs("group_create", q.group_create(&[member], NO_OWNER), pool);
    let limits = QuotaLimits {
        max_bytes: Some(GIB),
        reserve_bytes: 0,
    };
    erofs("quota_set", q.quota_set("main", limits), pool);
    erofs("commit", q.commit(), pool);
    erofs("sync", q.sync(), pool);
    // The error says why.
    let why = q.commit().unwrap_err().to_string();
    assert!(why.contains("open read-only"), "{why}");
    q.finish_frees();

    // Nothing changed, in memory either: the same pool, still clean.
    let names: Vec<String> = q.list().into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["main"]);
    assert_eq!(q.read_file(m, f, 0, 16 * BS).unwrap(), img.committed);
    assert_eq!(q.getattr(m, f).unwrap().mode & 0o7777, 0o644);
    assert!(q.quota_list().is_empty());
    let r = q.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean() && r.log_records == 1, "fsck:\n{r}");
    drop(q);
    untouched(&dev, len, "every refused change");
}

/// A write into a fallocated range on a full pool fills the unwritten blocks in
/// place, and its fsync logs a record naming blocks the last commit still maps
/// as unwritten (count 1 there, not free). A read-only check leaves the record
/// unapplied: fsck with data verification and scrub are clean (they do not
/// read unwritten blocks), the file reads as zeros as committed, and the
/// record is counted; a read-write open then applies it.
#[test]
fn a_logged_fill_of_unwritten_blocks_is_left_to_the_next_read_write_open() {
    let dev = MemDevice::new();
    let p = Pool::create_on(Arc::new(dev.clone()), &opts(256 << 20)).unwrap();
    let m = p.branch_id("main").unwrap();
    let f = file(&p, m, b"f");
    p.fallocate(m, f, 0, 64 * BS as u64, false).unwrap();
    // Fill the pool: the write below has no room to copy, so it fills in place.
    let filler = file(&p, m, b"filler");
    let (mut at, mut len) = (0u64, 64u64 << 20);
    while len >= BS as u64 {
        match p.fallocate(m, filler, at, len, false) {
            Ok(()) => at += len,
            Err(e) if e.errno() == libc::ENOSPC => len /= 2,
            Err(e) => panic!("fallocate: {e}"),
        }
    }
    for _ in 0..3 {
        p.commit().unwrap();
    }
    let used = p.used_blocks();
    let data = vec![0x33; 8 * BS];
    p.write_file(m, f, 0, &data).unwrap();
    assert_eq!(p.used_blocks(), used, "filled in place, no new block");
    p.sync_file(m, f).unwrap();
    let img = dev.snapshot();
    drop(p);

    let dev = recorded(&img);
    let len = dev.len_blocks();
    let q = Pool::open_on_read_only(Arc::new(dev.clone()), &opts(256 << 20)).unwrap();
    let r = q.fsck(&FsckOptions { verify_data: true }).unwrap();
    assert!(r.is_clean() && r.log_records == 1, "fsck:\n{r}");
    assert!(q.scrub().unwrap().is_clean());
    assert_eq!(q.read_file(m, f, 0, 8 * BS).unwrap(), vec![0; 8 * BS]);
    drop(q);
    untouched(&dev, len, "read-only check of a logged fill");

    let w = Pool::open_on(Arc::new(img), &opts(256 << 20)).unwrap();
    assert_eq!(w.read_file(m, f, 0, 8 * BS).unwrap(), data);
    let r = w.fsck(&FsckOptions { verify_data: true }).unwrap();
    assert!(r.is_clean() && r.log_records == 0, "fsck:\n{r}");
}
