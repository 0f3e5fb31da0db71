//! Thin wrappers over the libc calls the mount manager needs.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// mount(2) of `source` on `dir`.
pub(crate) fn mount(
    source: &str,
    dir: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let c = |s: &str| c_path(Path::new(s));
    let (source, dir, fstype, data) = (c(source)?, c_path(dir)?, c(fstype)?, c(data)?);
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the
    // call; `data` is the string options fuse(5) takes.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// umount2(2) with MNT_DETACH: detaches the mount on top of `dir` even while
/// files are open there.
pub(crate) fn detach(dir: &Path) -> io::Result<()> {
    umount2(dir, libc::MNT_DETACH)
}

/// What umount2(2) with MNT_EXPIRE did to the mount on top of a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// It was marked by an earlier call and not used since: unmounted.
    Unmounted,
    /// It was not marked (new, or used since it was): marked now (EAGAIN).
    Marked,
}

/// umount2(2) with MNT_EXPIRE on `dir`: unmounts the mount on top only if an
/// earlier such call marked it and nothing used it since, else marks it. EBUSY
/// while it is in use (files open, a process's directory, a mount inside), as
/// a plain unmount.
pub(crate) fn expire(dir: &Path) -> io::Result<Expired> {
    match umount2(dir, libc::MNT_EXPIRE) {
        Ok(()) => Ok(Expired::Unmounted),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(Expired::Marked),
        Err(e) => Err(e),
    }
}

fn umount2(dir: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = c_path(dir)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// syncfs(2) on the filesystem mounted at `dir`: writes the kernel's dirty pages.
pub(crate) fn syncfs(dir: &Path) -> io::Result<()> {
    let f = std::fs::File::open(dir)?;
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// statfs(2) on `path`. On a FUSE mount it always reaches the server (nothing is
/// cached), so a mount whose daemon died fails with ENOTCONN.
pub(crate) fn statfs(path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: `c` is NUL-terminated and outlives the call; `buf` is written by it.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
