//! A full pool through the kernel: the ways a user empties a log file to make
//! room (`: > big.log`, i.e. open with O_TRUNC, and `truncate -s 0 big.log`), a
//! truncate to a smaller size and a punched hole succeed on a mounted branch where
//! no new file fits any more, as `rm` does, and `df` shows the room they made.
//! They used to fail with ENOSPC there (the delete slop was unlink's alone).

mod mount;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;

use mount::{cpath, errno_of, fallocate, setxattr, Fixture};

const MIB: u64 = 1 << 20;

/// `df`'s free blocks of the filesystem holding `p`, in bytes.
fn free_bytes(p: &Path) -> u64 {
    let c = cpath(p);
    // SAFETY: a zeroed statvfs is a valid plain C struct; the call fills it.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a pointer to a live struct.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bfree * s.f_frsize
}

/// fsync of the mount's root directory: the daemon commits.
fn commit(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync of the mount's root");
}

/// Run `sh -c script file`: the way a user shrinks a file from the shell.
fn sh(script: &str, file: &Path) -> io::Result<()> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(file)
        .env("LC_ALL", "C")
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    Err(io::Error::other(format!("{script}: {text}")))
}

/// Append 256 KiB chunks to `path`, each made durable, until the pool refuses one.
/// Written with O_DIRECT: refused pages left in the page cache would be written
/// back and fail again later.
fn fill_with_data(path: &Path) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("open for filling");
    let chunk = vec![0x5a; 256 << 10];
    for _ in 0..4096 {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_data()) {
            assert_eq!(errno_of(&e), libc::ENOSPC, "filling {path:?}: {e}");
            return;
        }
    }
    panic!("the pool never filled");
}

/// Run `grow(n)` for n = 0, 1, ... until it fails, and again after each commit,
/// until it fails right after one: how many succeeded. (Each commit makes what
/// the one before freed allocatable.)
fn until_refused(dir: &Path, mut grow: impl FnMut(usize) -> bool) -> usize {
    let mut n = 0;
    loop {
        commit(dir);
        if !grow(n) {
            return n;
        }
        n += 1;
        while grow(n) {
            n += 1;
        }
    }
}

/// Files named `tag`-N with a 1900-byte xattr each, then empty ones, then small
/// xattrs on all of them (a few each), until not one more fits even right after
/// a commit: no tree insert fits.
fn fill_with_metadata(dir: &Path, tag: &str) {
    let file = |i: usize| dir.join(format!("{tag}-{i}"));
    let big = |i: usize| {
        File::create(file(i)).is_ok() && setxattr(&file(i), "user.x", &[7u8; 1900], 0).is_ok()
    };
    let files = until_refused(dir, big);
    let empty = |i: usize| File::create(file(files + i)).is_ok();
    let all = files + until_refused(dir, empty);
    assert!(all > 0, "not one file fit");
    until_refused(dir, |i| {
        let name = format!("user.s{}", i / all);
        i < 8 * all && setxattr(&file(i % all), &name, &[1u8; 64], 0).is_ok()
    });
}

#[test]
fn shrinking_a_file_on_a_full_mounted_pool_makes_room() {
    type Shrink = fn(&Path) -> io::Result<()>;
    let ways: [(&str, Shrink, u64); 4] = [
        (
            ": > big (open with O_TRUNC)",
            |f| sh(": > \"$1\"", f),
            4 * MIB,
        ),
        (
            "truncate -s 0 big",
            |f| sh("truncate -s 0 \"$1\"", f),
            4 * MIB,
        ),
        (
            "ftruncate to a smaller size inside a block",
            |f| OpenOptions::new().write(true).open(f)?.set_len(MIB + 100),
            2 * MIB,
        ),
        (
            "punch a hole",
            |f| {
                let file = OpenOptions::new().write(true).open(f)?;
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                fallocate(file.as_raw_fd(), mode, 100, 3 * MIB as i64)
            },
            2 * MIB,
        ),
    ];
    let fx = Fixture::with_size("16M");
    let m = fx.mount();
    for (round, (what, shrink, frees)) in ways.into_iter().enumerate() {
        let big = m.mnt.join(format!("big{round}"));
        fill_with_data(&big);
        // Full: not even a new file fits. (The daemon's timer commit may come in
        // between and make a little room: then fill again.)
        for attempt in 0..4 {
            fill_with_metadata(&m.mnt, &format!("r{round}.{attempt}"));
            let probe = m.mnt.join(format!("probe{round}.{attempt}"));
            match File::create(probe) {
                Err(e) if errno_of(&e) == libc::ENOSPC => break,
                r => assert!(attempt < 3, "{what}: the pool is not full: {r:?}"),
            }
        }
        let free0 = free_bytes(&m.mnt);
        shrink(&big).unwrap_or_else(|e| panic!("{what} on a full pool: {e}"));
        // The next write finds the room, and its fsync succeeds: a change on a
        // full pool commits first if it finds no room, so that what the shrink
        // freed is allocatable. (After a punch the kernel sends the file's new
        // times on its own when the descriptor closes; refused, the next fsync
        // of the file reported ENOSPC.)
        commit(&m.mnt);
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&big)
            .and_then(|mut f| {
                f.write_all(&[1u8; 64 << 10])?;
                f.sync_all()
            })
            .unwrap_or_else(|e| panic!("{what}: a write after the shrink: {e}"));
        commit(&m.mnt);
        let free = free_bytes(&m.mnt);
        assert!(
            free >= free0 + frees,
            "{what}: df showed {free0} bytes free before, {free} after"
        );
        File::create(m.mnt.join(format!("after{round}"))).expect("a new file");
    }
    m.stop();
    fx.assert_fsck_clean();
}
