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

/// umount2(2); `lazy` detaches the mount even while files are open (MNT_DETACH).
pub(crate) fn umount(dir: &Path, lazy: bool) -> io::Result<()> {
    let c = c_path(dir)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
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
