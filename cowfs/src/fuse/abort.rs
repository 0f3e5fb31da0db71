//! Aborting one FUSE connection, so that every file still open on its mount
//! fails (ENOTCONN) at once. A lazy unmount only hides a busy mount: the
//! processes holding files or a working directory there keep reading and
//! writing the branch through them. Ending access that was revoked
//! (`MountTable::end`) needs the connection itself cut.
//!
//! The kernel offers that through the fuse control filesystem (`fusectl`):
//! writing to `connections/N/abort`, N being the mount's device minor, aborts
//! that connection. The file is named by the device, not by a path, so no mount
//! made on the directory since can be hit instead. Where fusectl is not mounted
//! (it usually is, at /sys/fs/fuse/connections, but not in every container or
//! VM), it is mounted for the call on a private directory and detached after.
//!
//! A listed fusectl mount is used only if its path still reaches fusectl: with
//! another filesystem mounted over it, the abort file is "not found" there, and
//! taking that for a connection gone already left files open on a revoked
//! mount working while the revoke said they failed. So the directory is opened
//! and checked to be fusectl's (fstatfs), and the abort file is opened from
//! that descriptor.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::sys;
use crate::control::mountinfo;

/// Abort the FUSE connection of the mount whose device is `dev` ("0:NN", as
/// /proc/self/mountinfo lists it). A connection that is gone already is no
/// error.
pub(super) fn abort_connection(dev: &str) -> io::Result<()> {
    let minor = connection_name(dev)?;
    for point in mounted_fusectl()? {
        if let Some(ctl) = open_fusectl(&point)? {
            return write_abort(&ctl, &minor);
        }
    }
    // Mode 0700: the directory waits in a shared temporary directory before
    // fusectl covers it.
    let private = tempfile::Builder::new()
        .prefix("cowfs-fusectl-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()?;
    sys::mount("fusectl", private.path(), "fusectl", 0, "")?;
    let wrote = open_fusectl(private.path()).and_then(|ctl| match ctl {
        Some(ctl) => write_abort(&ctl, &minor),
        None => Err(io::Error::other(format!(
            "{}: fusectl was mounted there, but the path leads elsewhere",
            private.path().display()
        ))),
    });
    let detached = sys::detach(private.path());
    wrote.and(detached)
}

/// The connection's directory name under fusectl: the mount's device number,
/// which for FUSE (an anonymous device, major 0) is its minor.
fn connection_name(dev: &str) -> io::Result<String> {
    match dev.split_once(':') {
        Some(("0", minor)) if !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(minor.to_string())
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{dev}' is not the device of a FUSE mount (0:N)"),
        )),
    }
}

/// Where fusectl is mounted in this namespace.
fn mounted_fusectl() -> io::Result<Vec<PathBuf>> {
    Ok(mountinfo::read()?
        .into_iter()
        .filter(|m| m.fstype == "fusectl")
        .map(|m| m.point)
        .collect())
}

/// fusectl's magic number (linux/magic.h; not in the libc crate).
const FUSECTL_SUPER_MAGIC: i64 = 0x6573_5543;

/// `point` opened, if what it leads to now is fusectl (not a filesystem
/// mounted over it, nor a path gone).
fn open_fusectl(point: &Path) -> io::Result<Option<File>> {
    let dir = match File::open(point) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", point.display()),
            ))
        }
    };
    // SAFETY: an all-zero statfs is a valid value for fstatfs to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: an open descriptor and a live statfs.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type's type differs between architectures (a cast on some only).
    #[allow(clippy::unnecessary_cast)]
    let fusectl = st.f_type as i64 == FUSECTL_SUPER_MAGIC;
    Ok(fusectl.then_some(dir))
}

/// Write to `ctl`'s (fusectl's root, open) `MINOR/abort`.
fn write_abort(ctl: &File, minor: &str) -> io::Result<()> {
    let path = Path::new("/proc/self/fd")
        .join(ctl.as_raw_fd().to_string())
        .join(minor)
        .join("abort");
    match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(mut f) => f.write_all(b"1"),
        // No such connection (any more): nothing to abort.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names_come_from_anonymous_devices_only() {
        assert_eq!(connection_name("0:57").expect("fuse device"), "57");
        for bad in ["8:1", "0:", "57", "0:5x", "0:-1", ""] {
            assert!(connection_name(bad).is_err(), "{bad}");
        }
    }
}
