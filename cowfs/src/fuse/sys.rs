//! Thin wrappers over the libc calls the mount manager needs.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
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

/// Never through a symlink at `dir`: the daemon's mount points are real
/// paths, and a symlink found there now (a swapped directory) may lead to a
/// mount that is not the daemon's.
fn umount2(dir: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = c_path(dir)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags | libc::UMOUNT_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// syncfs(2) on mount `mnt_id` (its id in /proc/self/mountinfo), reached
/// through its directory `dir`: writes the kernel's dirty pages. False, having
/// synced nothing, if `dir` leads to another mount: the descriptor is checked,
/// not the path, so a mount made on `dir` after a caller's look is not the one
/// synced (and ours left out).
pub(crate) fn syncfs_of(dir: &Path, mnt_id: u64) -> io::Result<Option<std::fs::File>> {
    let f = std::fs::File::open(dir)?;
    if mount_id(&f)? != mnt_id {
        return Ok(None);
    }
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(f))
}

/// Open the file of FUSE node `nodeid` (generation 0, as cowfs answers every
/// entry) on the mount `mount_fd` is on, read-only, by file handle: the layout
/// FUSE encodes (`FILEID_INO64_GEN`: the node id's high and low 32 bits, the
/// generation). The kernel finds an inode it has in memory without asking the
/// daemon; one it does not have needs export support (LOOKUP of "."), which
/// cowfs does not answer: ESTALE.
pub(crate) fn open_by_nodeid(mount_fd: &std::fs::File, nodeid: u64) -> io::Result<OwnedFd> {
    const FILEID_INO64_GEN: i32 = 0x81;
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        raw: [u32; 3],
    }
    let mut h = Handle {
        bytes: 12,
        kind: FILEID_INO64_GEN,
        raw: [(nodeid >> 32) as u32, nodeid as u32, 0],
    };
    // SAFETY: `h` has the layout of `struct file_handle` followed by its 12 bytes
    // of handle, and outlives the call; the descriptor is open.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut h as *mut Handle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The id of the mount an open descriptor is on (statx STATX_MNT_ID, Linux 5.8+;
/// the id /proc/self/mountinfo lists first).
fn mount_id(f: &std::fs::File) -> io::Result<u64> {
    // SAFETY: all-zero is a valid `statx` (plain integers).
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open, the path is a NUL-terminated empty string
    // (AT_EMPTY_PATH: the descriptor itself), and `st` outlives the call.
    let r = unsafe {
        libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::other("the kernel gives no mount id (statx)"));
    }
    Ok(st.stx_mnt_id)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::test_mounts::{mounted, tmpfs};

    /// sync_branch and the shutdown sync reach a mount through its directory: a
    /// mount made on the directory after their check is the one the path leads
    /// to. The descriptor's mount is checked, so that one is not synced in place
    /// of ours.
    #[test]
    fn syncfs_of_syncs_only_the_mount_named() {
        let (_tmp, cleanup, ours) = mounted();
        let dir = cleanup.0.clone();
        assert!(syncfs_of(&dir, ours.id)
            .expect("syncfs of ours on top")
            .is_some());
        let over = tmpfs(&dir, "cowfs-unit-over");
        assert!(syncfs_of(&dir, ours.id)
            .expect("syncfs of ours covered")
            .is_none());
        assert!(syncfs_of(&dir, over.id)
            .expect("syncfs of the one on top")
            .is_some());
    }
}
