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
/// The daemon stamps a new inode with the coarse realtime clock, which is what
/// the kernel's `current_time()` reads; a write in the same tick then finds mtime
/// and ctime already "now", the kernel leaves them clean, and close sends no
/// SETATTR of the times: one round trip fewer per small file (before, every file
/// cost one). Within a tick the kernel's clock can run ahead of the coarse clock
/// (since Linux 6.13 it never reads earlier than the last fine-grained timestamp
/// another filesystem handed out, e.g. while a build runs beside the test); the
/// kernel then stamps the write itself and the SETATTR comes back for that file.
/// So the stamp is checked on every file made within one tick, and the missing
/// SETATTR on those whose times the kernel left as they were created.
#[test]
fn a_new_file_has_the_kernel_clocks_time_and_a_write_in_its_tick_sends_no_setattr() {
    let fx = Fixture::new();
    let m = fx.mount_logging_requests();
    let dir = m.mnt.join("small");
    fs::create_dir(&dir).unwrap();
    let dir_ino = fs::metadata(&dir).unwrap().ino();

    const WANTED: usize = 40;
    let times = |md: &fs::Metadata| ((md.mtime(), md.mtime_nsec()), (md.ctime(), md.ctime_nsec()));
    let mut same_tick = 0;
    let mut left_clean = HashSet::new();
    let mut files = 0u64;
    // A tick is 4 ms with HZ=250 and 1 ms with HZ=1000; an iteration is a few
    // round trips, so most fit unless the machine is very busy.
    while same_tick < WANTED && files < 20_000 {
        let path = dir.join(format!("f{files:06}"));
        let before = kernel_tick();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        // Both from the kernel's cache: the CREATE reply's attributes, then
        // the times the kernel holds after the write.
        let created = f.metadata().unwrap();
        f.write_all(&[b'x'; 100]).unwrap();
        let written = f.metadata().unwrap();
        let after = kernel_tick();
        drop(f);
        files += 1;
        if before == after {
            same_tick += 1;
            assert_eq!(
                times(&created),
                (before, before),
                "a new inode's mtime and ctime are the coarse clock's reading"
            );
            if times(&written) == times(&created) {
                left_clean.insert(created.ino());
            }
        }
    }

    assert!(
        same_tick >= 5,
        "only {same_tick} of {files} files created and written within one tick"
    );
    if left_clean.is_empty() {
        // The kernel's clock ran ahead of the coarse clock for every file (see
        // above): only the stamp was checked.
        eprintln!("no file was left with clean times: the SETATTR check had nothing to check");
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
        .filter(|(ino, op)| op == "SETATTR" && left_clean.contains(ino))
        .map(|(ino, _)| *ino)
        .collect();
    assert!(
        setattrs.is_empty(),
        "SETATTR for {} of the {} files whose times the write left clean (inodes {setattrs:?})",
        setattrs.len(),
        left_clean.len()
    );
    // The other round trips of a small file, each at most once per file:
    // LOOKUP of the new name, CREATE, GETATTR of the directory (its attributes
    // changed, and default_permissions needs its mode), GETXATTR
    // security.capability before the first write, WRITE at close.
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

/// The other two small-file phases of `benches/compare.sh`. After close, a `stat`
/// costs one GETATTR of the file (the kernel invalidates its block count at
/// close) and a second `stat` none (attributes are cached for 30 s); no name is
/// looked up again. An `unlink` costs the UNLINK, a GETATTR of the directory
/// (the previous unlink changed it) and a SETATTR of the file's ctime (which the
/// kernel keeps with the writeback cache), each at most once per file.
#[test]
fn stat_and_unlink_of_small_files_send_each_request_once_at_most() {
    let fx = Fixture::new();
    let m = fx.mount_logging_requests();
    let dir = m.mnt.join("small");
    fs::create_dir(&dir).unwrap();
    let dir_ino = fs::metadata(&dir).unwrap().ino();
    const N: usize = 40;
    let paths: Vec<_> = (0..N).map(|i| dir.join(format!("f{i:03}"))).collect();
    for p in &paths {
        fs::write(p, [b'x'; 100]).unwrap();
    }

    let mark = m.requests().len();
    let mut inos = HashSet::new();
    for p in &paths {
        inos.insert(fs::metadata(p).unwrap().ino());
        fs::metadata(p).unwrap();
    }
    let stat_phase = m.requests().split_off(mark);
    let of_files = |phase: &[(u64, String)], want: &str| {
        phase
            .iter()
            .filter(|(ino, op)| op == want && inos.contains(ino))
            .count()
    };
    assert!(
        of_files(&stat_phase, "GETATTR") <= N,
        "2 x {N} stats: {stat_phase:?}"
    );
    // RELEASE of the last file written may arrive late (the kernel sends it
    // without waiting), and forgets whenever the kernel drops inodes.
    let late = ["RELEASE", "FORGET", "BATCHFORGET", "INTERRUPT"];
    assert!(
        stat_phase
            .iter()
            .all(|(_, op)| op == "GETATTR" || late.contains(&op.as_str())),
        "2 x {N} stats sent more than GETATTR: {stat_phase:?}"
    );

    let mark = m.requests().len();
    for p in &paths {
        fs::remove_file(p).unwrap();
    }
    let unlink_phase = m.requests().split_off(mark);
    let ops = |want: &str| unlink_phase.iter().filter(|(_, op)| op == want).count();
    // The log holds what was sent (else the bounds below prove nothing).
    assert_eq!(ops("UNLINK"), N, "{unlink_phase:?}");
    let dir_getattrs = unlink_phase
        .iter()
        .filter(|(ino, op)| *ino == dir_ino && op == "GETATTR")
        .count();
    assert!(dir_getattrs <= N, "{N} unlinks: {unlink_phase:?}");
    assert!(
        of_files(&unlink_phase, "SETATTR") <= N,
        "{N} unlinks: {unlink_phase:?}"
    );
    let expected = ["UNLINK", "GETATTR", "SETATTR"];
    assert!(
        unlink_phase
            .iter()
            .all(|(_, op)| expected.contains(&op.as_str()) || late.contains(&op.as_str())),
        "{N} unlinks sent more than {expected:?}: {unlink_phase:?}"
    );
    m.stop();
    fx.assert_fsck_clean();
}
