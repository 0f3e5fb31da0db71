//! The flags and propagation of the sandbox's binds (see `sandbox`).
//!
//! A bind starts with the flags of the host's mount it copies, and the sandbox
//! adds its own (nosuid, nodev, read-only). A bind remount (MS_BIND|MS_REMOUNT)
//! *sets* a mount's flags rather than adding to them, so it must carry the host
//! mount's restrictions itself: without them a host mount that was read-only,
//! noexec, nosuid or nodev lost that inside (the hook program's directory on a
//! noexec mount became executable). mount_setattr (Linux 5.12) adds flags
//! without clearing any, and sets a detached mount's propagation before it is
//! attached: a clone of a shared host mount (open_tree) is in the host's peer
//! group, and attached first and made private after, a mount the host made
//! below it in between appeared inside.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use libc::c_ulong;

/// Mount flags and the statvfs flags (`f_flag`) and MOUNT_ATTR_* bits that
/// say the same: the restrictions a mount of the host may have that a bind of
/// it must keep.
const RESTRICTIONS: [(c_ulong, c_ulong, u64); 4] = [
    (libc::MS_RDONLY, libc::ST_RDONLY, libc::MOUNT_ATTR_RDONLY),
    (libc::MS_NOEXEC, libc::ST_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
    (libc::MS_NOSUID, libc::ST_NOSUID, libc::MOUNT_ATTR_NOSUID),
    (libc::MS_NODEV, libc::ST_NODEV, libc::MOUNT_ATTR_NODEV),
];

/// The restrictions among statvfs's `f_flag` (the mount's own flags and its
/// file system's), as mount flags.
fn restrictions(f_flag: c_ulong) -> c_ulong {
    (RESTRICTIONS.iter())
        .filter(|(_, st, _)| f_flag & st != 0)
        .fold(0, |all, (ms, ..)| all | ms)
}

/// Mount flags (MS_RDONLY, MS_NOSUID, ...) as MOUNT_ATTR_* bits.
fn attrs(flags: c_ulong) -> u64 {
    (RESTRICTIONS.iter())
        .filter(|(ms, ..)| flags & ms != 0)
        .fold(0, |all, (.., attr)| all | attr)
}

/// Remount the bind at `dst` with `add` and every restriction it has now
/// (those of the host's mount it copies). False (errno set) if a call failed.
/// In the sandbox's child: system calls only, no allocation (glibc's and
/// musl's statvfs are statfs, its flags copied, on any kernel with open_tree).
pub(super) fn remount_adding(dst: &CStr, add: c_ulong) -> bool {
    let none = std::ptr::null();
    // SAFETY: an all-zero statvfs is a valid value for statvfs to overwrite;
    // the C string is live, and the null pointers are those mount(2) allows.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        libc::statvfs(dst.as_ptr(), &mut st) == 0
            && libc::mount(
                none,
                dst.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REMOUNT | add | restrictions(st.f_flag),
                none.cast(),
            ) == 0
    }
}

/// Make the detached mount `tree` (and anything below it) private and add
/// `add` (mount flags) to its own, before it is attached anywhere. Ok(false)
/// where the kernel lacks mount_setattr (before 5.12): the caller then makes
/// it private and remounts it once attached.
pub(super) fn set_on_detached(tree: &OwnedFd, add: c_ulong) -> io::Result<bool> {
    // SAFETY: an all-zero mount_attr sets and clears nothing; fields set below.
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = attrs(add);
    // c_ulong is 32 bits wide on 32-bit targets: not the same type there.
    #[allow(clippy::unnecessary_cast)]
    let private = libc::MS_PRIVATE as u64;
    attr.propagation = private;
    // SAFETY: an open mount descriptor, an empty C string (AT_EMPTY_PATH: the
    // descriptor's own mount) and a live mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOSYS) => Ok(false),
        e => Err(e),
    }
}
