//! Read-only mounts in the branch differential test: the native copy of a
//! branch mounted read-only is made read-only too (a read-only bind mount of its
//! directory on itself), so that the same random calls can run on both sides
//! and must fail alike; and the writes every read-only mount must refuse.

use std::path::Path;

use crate::mount_diff::sys::{c, cs, ret};

/// Make `dir` read-only where it is: bind it on itself, then remount the bind
/// read-only (a bind takes the flag only on a remount).
pub fn bind_read_only(dir: &Path) {
    let d = c(dir);
    // SAFETY: valid NUL-terminated paths; null type and data as a bind takes them.
    unsafe {
        let none = std::ptr::null();
        let r = libc::mount(d.as_ptr(), d.as_ptr(), none, libc::MS_BIND, none.cast());
        assert_eq!(r, 0, "bind {}: {}", dir.display(), errno());
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
        let r = libc::mount(none, d.as_ptr(), none, flags, none.cast());
        if r != 0 {
            let e = errno();
            libc::umount2(d.as_ptr(), libc::MNT_DETACH);
            panic!("remount {} read-only: {e}", dir.display());
        }
    }
}

/// Undo `bind_read_only` (nothing may be open below `dir`). `lazy` detaches
/// it even so, for clean-up after a failure.
pub fn unbind(dir: &Path, lazy: bool) {
    let d = c(dir);
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::umount2(d.as_ptr(), flags) };
    assert!(
        r == 0 || lazy,
        "unmount the read-only bind {}: {}",
        dir.display(),
        errno()
    );
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Every write a read-only mount at `root` must refuse with EROFS, tried on a
/// new path, the root and an existing file: the ones that gave anything else,
/// with what they gave.
pub fn unrefused_writes(root: &Path) -> Vec<String> {
    let new = c(&root.join("new-on-read-only"));
    let file = std::fs::read_dir(root)
        .expect("readdir read-only mount")
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| c(&e.path()));
    let rootc = c(root);
    let name = cs("user.a");
    // SAFETY (all calls): valid NUL-terminated paths and buffers of the lengths passed.
    let mut tries: Vec<(&str, i64)> = vec![
        (
            "create",
            unsafe { libc::open(new.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o644) } as i64,
        ),
        ("mkdir", unsafe { libc::mkdir(new.as_ptr(), 0o755) } as i64),
        ("chmod root", unsafe { libc::chmod(rootc.as_ptr(), 0o700) }
            as i64),
        ("setxattr root", unsafe {
            libc::setxattr(rootc.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0)
        } as i64),
    ];
    if let Some(f) = &file {
        tries.push((
            "open existing for writing",
            unsafe { libc::open(f.as_ptr(), libc::O_WRONLY) } as i64,
        ));
        tries.push((
            "truncate existing",
            unsafe { libc::truncate(f.as_ptr(), 0) } as i64,
        ));
    }
    let mut wrong = Vec::new();
    for (what, r) in tries {
        let r = ret(r);
        if r != Err(libc::EROFS) {
            if let Ok(fd) = r {
                // SAFETY: the descriptor the failed check opened.
                unsafe { libc::close(fd as i32) };
            }
            wrong.push(format!("{what} gave {r:?}, not EROFS"));
        }
    }
    wrong
}
