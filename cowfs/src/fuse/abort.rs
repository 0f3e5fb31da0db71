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

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::sys;
use crate::control::mountinfo;

/// Abort the FUSE connection of the mount whose device is `dev` ("0:NN", as
/// /proc/self/mountinfo lists it). A connection that is gone already is no
/// error.
pub(super) fn abort_connection(dev: &str) -> io::Result<()> {
    let minor = connection_name(dev)?;
    if let Some(ctl) = mounted_fusectl()? {
        return write_abort(&ctl, &minor);
    }
    let private = tempfile::Builder::new()
        .prefix("cowfs-fusectl-")
        .tempdir()?;
    sys::mount("fusectl", private.path(), "fusectl", 0, "")?;
    let wrote = write_abort(private.path(), &minor);
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

/// Where fusectl is mounted in this namespace, if it is.
fn mounted_fusectl() -> io::Result<Option<PathBuf>> {
    Ok(mountinfo::read()?
        .into_iter()
        .find(|m| m.fstype == "fusectl")
        .map(|m| m.point))
}

fn write_abort(ctl: &Path, minor: &str) -> io::Result<()> {
    let path = ctl.join(minor).join("abort");
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
