//! The native side of a new branch or of a reset: a faithful copy of the
//! source's native directory, as `cp -a` makes it, and its removal.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::mount_diff::sys::{c, compared_xattrs, lstat, readlink};

/// A faithful copy of the tree at `src` into the new directory `dst`, as
/// `cp -a` makes it: types, data, symlink targets, device numbers, owners,
/// permission bits, user and trusted xattrs, POSIX ACLs, times, and hard-link
/// groups.
pub fn copy_tree(src: &Path, dst: &Path) {
    let mut links: HashMap<u64, PathBuf> = HashMap::new();
    copy_node(src, dst, &mut links);
}

fn copy_node(src: &Path, dst: &Path, links: &mut HashMap<u64, PathBuf>) {
    let st = lstat(src).unwrap_or_else(|e| panic!("lstat {}: errno {e}", src.display()));
    let ftype = st.st_mode & libc::S_IFMT;
    if ftype != libc::S_IFDIR && st.st_nlink > 1 {
        if let Some(first) = links.get(&st.st_ino) {
            std::fs::hard_link(first, dst).expect("link in the copy");
            return;
        }
        links.insert(st.st_ino, dst.to_path_buf());
    }
    let d = c(dst);
    match ftype {
        libc::S_IFDIR => {
            std::fs::create_dir(dst).expect("mkdir in the copy");
            for e in std::fs::read_dir(src).expect("readdir") {
                let e = e.expect("dirent");
                copy_node(&e.path(), &dst.join(e.file_name()), links);
            }
        }
        libc::S_IFREG => {
            std::fs::write(dst, std::fs::read(src).expect("read")).expect("write copy")
        }
        libc::S_IFLNK => {
            let t = readlink(src).expect("readlink");
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t), dst).expect("symlink");
        }
        _ => {
            // SAFETY: a valid path.
            let r = unsafe { libc::mknod(d.as_ptr(), st.st_mode, st.st_rdev) };
            assert_eq!(r, 0, "mknod {}", dst.display());
        }
    }
    for (name, value) in compared_xattrs(src).expect("xattrs") {
        let n = std::ffi::CString::new(name).expect("xattr name");
        // SAFETY: valid strings and a buffer of the given length.
        let r = unsafe {
            libc::lsetxattr(
                d.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "lsetxattr {}", dst.display());
    }
    // Owner before mode: chown clears set-user-ID bits. Times last: everything
    // above moves them.
    // SAFETY: valid paths and timespecs.
    unsafe {
        assert_eq!(libc::lchown(d.as_ptr(), st.st_uid, st.st_gid), 0);
        if ftype != libc::S_IFLNK {
            assert_eq!(libc::chmod(d.as_ptr(), st.st_mode & 0o7777), 0);
        }
        let ts = [
            libc::timespec {
                tv_sec: st.st_atime,
                tv_nsec: st.st_atime_nsec,
            },
            libc::timespec {
                tv_sec: st.st_mtime,
                tv_nsec: st.st_mtime_nsec,
            },
        ];
        let r = libc::utimensat(
            libc::AT_FDCWD,
            d.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
        assert_eq!(r, 0, "utimensat {}", dst.display());
    }
}

/// The test runs as root and the trees hold modes like 000: removal as root.
pub fn remove_tree(p: &Path) {
    if p.exists() {
        std::fs::remove_dir_all(p).expect("remove native copy");
    }
}
