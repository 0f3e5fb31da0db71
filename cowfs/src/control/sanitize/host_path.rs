//! A host path a hook's profile lists (`read_only_paths`, `read_write_paths`),
//! resolved without symlinks and checked on the descriptor it resolved to.
//!
//! The config is checked when the daemon starts; the hook runs much later.
//! Resolved again by name at that point, a path whose parent someone else may
//! write could by then lead through a symlink swapped in meanwhile (to
//! production's mounted data directory, to /root), and the sandbox would bind
//! that, read-write perhaps. So a listed path must hold no symlink at all (a
//! config that lists one is refused at load), is opened once per hook run
//! without following any (`open`), and the checks apply to the object opened,
//! which is the object the sandbox then binds (see `sandbox`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use libc::c_int;

/// What a listed path is: the sandbox makes a directory or a file to bind it on,
/// and a path that changed kind since the config loaded is not the one checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Directory => "a directory",
            Kind::File => "a regular file",
        }
    }
}

/// A listed host path: absolute, without `.`, `..` or symlinks, so that its
/// name is the real path the config's checks compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPath {
    pub path: PathBuf,
    /// What it was when the config loaded.
    pub kind: Kind,
}

impl HostPath {
    /// Resolve `path` now (at config load) and take note of what it is.
    pub fn new(path: &Path) -> io::Result<HostPath> {
        let path = plain(path)?;
        let (_, kind) = open_checked(&path, None)?;
        Ok(HostPath { path, kind })
    }

    /// Open the path again (when a hook is about to run), without following a
    /// symlink, and check that it is still what the config saw: an `O_PATH`
    /// descriptor of the very object the sandbox is to bind.
    pub fn open(&self) -> io::Result<OwnedFd> {
        open_checked(&self.path, Some(self.kind)).map(|(fd, _)| fd)
    }
}

fn invalid(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("'{}' {why}", path.display()),
    )
}

/// `path` made of names only (repeated and trailing slashes dropped), or an
/// error: relative, or with `..` (which would make the name differ from the
/// real path the checks compare).
fn plain(path: &Path) -> io::Result<PathBuf> {
    let mut parts = path.components();
    if parts.next() != Some(Component::RootDir) {
        return Err(invalid(path, "must be an absolute path"));
    }
    let mut out = PathBuf::from("/");
    for part in parts {
        match part {
            Component::Normal(name) => out.push(name),
            _ => return Err(invalid(path, "must not contain '..'")),
        }
    }
    Ok(out)
}

/// Open `path` (plain) and check the descriptor: a directory or a regular file
/// (`expect`, if given), on no FUSE file system.
fn open_checked(path: &Path, expect: Option<Kind>) -> io::Result<(OwnedFd, Kind)> {
    let fd = resolve(path)?;
    let named = |e: io::Error| io::Error::new(e.kind(), format!("'{}': {e}", path.display()));
    let st = fstat(&fd).map_err(named)?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Directory,
        libc::S_IFREG => Kind::File,
        _ => return Err(invalid(path, "is neither a directory nor a regular file")),
    };
    if let Some(want) = expect.filter(|&w| w != kind) {
        return Err(invalid(
            path,
            &format!(
                "was {} when the config loaded and is {} now: refused",
                want.name(),
                kind.name()
            ),
        ));
    }
    // Every branch of a pool, production's included, is mounted over FUSE:
    // nothing there is for a hook to see, whatever the path.
    if on_fuse(&fd).map_err(named)? {
        return Err(invalid(
            path,
            "is on a FUSE file system (a cowfs mount of a branch is one): hooks must not see it",
        ));
    }
    Ok((fd, kind))
}

/// An `O_PATH` descriptor of `path` (plain), reached without following any
/// symlink: `openat2` where the kernel has it, one component at a time
/// otherwise.
pub fn resolve(path: &Path) -> io::Result<OwnedFd> {
    let path = plain(path)?;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| invalid(&path, "contains a NUL byte"))?;
    let got = match openat2_no_symlinks(&c) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => walk(&path),
        other => other,
    };
    got.map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => symlink_refused(&path),
        _ => io::Error::new(e.kind(), format!("'{}': {e}", path.display())),
    })
}

fn symlink_refused(path: &Path) -> io::Error {
    invalid(
        path,
        "leads through a symlink, which a listed path must not (one could be swapped in \
         after the check): list the real path",
    )
}

/// openat2 with RESOLVE_NO_SYMLINKS (which implies RESOLVE_NO_MAGICLINKS): ELOOP
/// at the first symlink, the last component included. ENOSYS before Linux 5.6,
/// EPERM where a seccomp filter refuses it.
fn openat2_no_symlinks(path: &CString) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero open_how is valid (no flags); the fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid C string and a live open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(fd as c_int)
}

/// Without openat2: each component opened below the last with O_NOFOLLOW, which
/// opens a symlink itself (O_PATH), seen then by fstat.
fn walk(path: &Path) -> io::Result<OwnedFd> {
    // SAFETY: a valid C string literal.
    let mut fd = owned(unsafe { libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) })?;
    for part in path.components().skip(1) {
        let name = CString::new(part.as_os_str().as_bytes())
            .map_err(|_| invalid(path, "contains a NUL byte"))?;
        let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `fd` is open, `name` a valid C string.
        fd = owned(unsafe { libc::openat(fd.as_raw_fd(), name.as_ptr(), flags) })?;
        if fstat(&fd)?.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
    }
    Ok(fd)
}

fn owned(fd: c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an open descriptor (fstat works on O_PATH ones) and a live stat.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn on_fuse(fd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: an all-zero statfs is a valid value for fstatfs to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: an open descriptor (fstatfs works on O_PATH ones) and a live statfs.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type == libc::FUSE_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The object a descriptor names, by its path now.
    fn target(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

    #[test]
    fn symlinks_dot_dot_and_missing_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("real/d")).unwrap();
        std::fs::write(base.join("real/d/f"), b"x").unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        std::os::unix::fs::symlink(base.join("real/d"), base.join("real/dlink")).unwrap();

        // Both ways of resolving agree on every case.
        let by_openat2 =
            |p: &Path| openat2_no_symlinks(&CString::new(p.as_os_str().as_bytes()).unwrap());
        for how in [
            by_openat2 as fn(&Path) -> io::Result<OwnedFd>,
            |p: &Path| walk(p),
        ] {
            let fd = how(&base.join("real/d/f")).unwrap();
            assert_eq!(target(&fd), base.join("real/d/f"));
            let fd = how(&base.join("real//d/")).unwrap();
            assert_eq!(target(&fd), base.join("real/d"));
            for bad in ["link/d", "link/d/f", "real/dlink", "real/dlink/f"] {
                let e = how(&base.join(bad)).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{bad}: {e}");
            }
            let e = how(&base.join("real/missing")).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        }
        // The error names the path and says why.
        let e = resolve(&base.join("link/d")).unwrap_err().to_string();
        assert!(
            e.contains(&format!("'{}/link/d'", base.display())) && e.contains("symlink"),
            "{e}"
        );
        let e = resolve(&base.join("real/missing")).unwrap_err().to_string();
        assert!(
            e.contains("real/missing") && e.contains("No such file"),
            "{e}"
        );
        let e = resolve(&base.join("real/d/../d")).unwrap_err().to_string();
        assert!(e.contains("'..'"), "{e}");
        let e = resolve(Path::new("real/d")).unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn a_path_that_changed_kind_since_the_load_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("d")).unwrap();
        let listed = HostPath::new(&base.join("d")).unwrap();
        assert_eq!(listed.kind, Kind::Directory);
        assert!(listed.open().is_ok());
        std::fs::remove_dir(base.join("d")).unwrap();
        std::fs::write(base.join("d"), b"x").unwrap();
        let e = listed.open().unwrap_err().to_string();
        assert!(
            e.contains("was a directory") && e.contains("is a regular file now"),
            "{e}"
        );
        let e = HostPath::new(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither a directory nor a regular file"), "{e}");
    }
}
