//! What the kernel sends the daemon for a common operation, counted from the
//! daemon's request log. On a FUSE mount a small operation costs mostly its
//! synchronous round trips, so these tests guard their number without timing
//! anything.

mod mount;

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;

use mount::*;

/// The coarse realtime clock: what the kernel stamps file times with.
fn kernel_tick() -> (i64, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) },
        0
    );
    (ts.tv_sec, ts.tv_nsec)
}

/// Create, write 100 bytes to and close new files, as `benches/compare.sh` does.
/// A file created and written within one clock tick must cost no SETATTR: its
/// times are already the write's (the daemon stamps a new inode with the
/// kernel's clock). Before, every such file cost one more round trip at close.
#[test]
fn a_small_file_written_right_after_its_create_sends_no_setattr() {
    let fx = Fixture::new();
    let m = fx.mount_logging_requests();
    let dir = m.mnt.join("small");
    fs::create_dir(&dir).unwrap();
    let dir_ino = fs::metadata(&dir).unwrap().ino();

    const WANTED: usize = 40;
    let mut same_tick = HashSet::new();
    let mut files = 0u64;
    while same_tick.len() < WANTED {
        assert!(
            files < 4000,
            "only {} of {files} files created and written within one tick",
            same_tick.len()
        );
        let path = dir.join(format!("f{files:06}"));
        let before = kernel_tick();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        f.write_all(&[b'x'; 100]).unwrap();
        let after = kernel_tick();
        drop(f);
        files += 1;
        if before == after {
            same_tick.insert(fs::metadata(&path).unwrap().ino());
        }
    }

    let requests = m.requests();
    let mut count: HashMap<&str, u64> = HashMap::new();
    for (_, op) in &requests {
        *count.entry(op.as_str()).or_default() += 1;
    }
    // The log holds what was sent (else the next assertion proves nothing).
    let creates = requests
        .iter()
        .filter(|(ino, op)| *ino == dir_ino && op == "CREATE")
        .count() as u64;
    assert_eq!(creates, files, "CREATE requests logged: {count:?}");
    let setattrs: Vec<u64> = requests
        .iter()
        .filter(|(ino, op)| op == "SETATTR" && same_tick.contains(ino))
        .map(|(ino, _)| *ino)
        .collect();
    assert!(
        setattrs.is_empty(),
        "SETATTR for {} of {WANTED} files written in their create's tick (inodes {setattrs:?})",
        setattrs.len()
    );
    // The other round trips of a small file, each at most once per file:
    // LOOKUP of the new name, CREATE, GETATTR of the directory (its attributes
    // changed, and default_permissions needs its mode), GETXATTR
    // security.capability before the first write, WRITE at close.
    // (The test's own stat of each closed file is one more GETATTR, of the file.)
    let dir_getattrs = requests
        .iter()
        .filter(|(ino, op)| *ino == dir_ino && op == "GETATTR")
        .count() as u64;
    assert!(
        dir_getattrs <= files + 2,
        "{dir_getattrs} GETATTR of the directory for {files} files"
    );
    for op in ["LOOKUP", "GETXATTR", "WRITE"] {
        let n = count.get(op).copied().unwrap_or(0);
        assert!(n <= files + 2, "{n} {op} requests for {files} files");
    }
    m.stop();
    fx.assert_fsck_clean();
}
