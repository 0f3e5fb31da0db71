//! A mount point held open, so that mount(2) lands on the directory that was
//! checked. Mounting by path resolves the path again: a directory swapped for a
//! symlink after the control plane checked it (by someone who may write where
//! it is, below a mount root) would send the mount, made as root with
//! `allow_other`, wherever the symlink points. Here the path is walked one
//! component at a time without following symlinks, and the mount is made on
//! the directory descriptor (`/proc/self/fd/N`), so no later change of the path
//! can move it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// An open directory (`O_PATH`) reached by a path without symlinks.
pub(crate) struct PinnedDir {
    fd: OwnedFd,
}

impl PinnedDir {
    /// Open `dir`, an absolute path that must hold no symlink, `.` or `..`
    /// (a real path, as `canonicalize` gives). A symlink anywhere on it, or a
    /// component that is not a directory, is `ENOTDIR` (or `ELOOP`).
    pub(crate) fn open(dir: &Path) -> io::Result<PinnedDir> {
        let mut parts = dir.components();
        if parts.next() != Some(Component::RootDir) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the mount point must be an absolute path",
            ));
        }
        let mut fd = open_at(libc::AT_FDCWD, Path::new("/"))?;
        for part in parts {
            let Component::Normal(name) = part else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the mount point must be a real path (no '.' or '..')",
                ));
            };
            fd = open_at(fd.as_raw_fd(), Path::new(name))?;
        }
        Ok(PinnedDir { fd })
    }

    /// The directory's owner and mode, of the directory held open.
    pub(crate) fn stat(&self) -> io::Result<libc::stat> {
        // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open (owned by `self`); `st` is valid for
        // writes. fstat works on O_PATH descriptors.
        if unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }

    /// A path that leads to this very directory whatever happens to its name
    /// meanwhile: mount(2) on it mounts on the directory opened.
    pub(crate) fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// One component below `at`, never following a symlink.
fn open_at(at: libc::c_int, name: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(name.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `c` is a valid NUL-terminated string; `at` is AT_FDCWD or a
    // descriptor the caller owns.
    let fd = unsafe { libc::openat(at, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_and_relative_parts_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().canonicalize().expect("canonical");
        std::fs::create_dir(base.join("d")).expect("mkdir");
        std::os::unix::fs::symlink(base.join("d"), base.join("l")).expect("symlink");
        std::fs::create_dir(base.join("d").join("e")).expect("mkdir");
        std::fs::write(base.join("f"), b"").expect("file");

        assert!(PinnedDir::open(&base.join("d/e")).is_ok());
        for bad in ["l", "l/e", "f", "d/../d", "missing"] {
            assert!(PinnedDir::open(&base.join(bad)).is_err(), "{bad}");
        }
        assert!(PinnedDir::open(Path::new("relative")).is_err());

        // Renamed after it was opened: the descriptor still names the directory.
        let p = PinnedDir::open(&base.join("d/e")).expect("open");
        std::fs::rename(base.join("d"), base.join("moved")).expect("rename");
        let now = std::fs::read_link(p.proc_path()).expect("readlink");
        assert_eq!(now, base.join("moved/e"));
    }
}
