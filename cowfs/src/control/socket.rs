//! Creating the control socket so that it is never reachable with a wider mode
//! than the one asked. bind(2) creates the socket file with the mode the
//! process's umask leaves (0777 under umask 0): bound in place and chmodded
//! after, another local user could connect in between and hold a connection
//! (a slot, a hello attempt) the final mode would have refused. The umask
//! cannot be narrowed for the call instead: it is per process, and the daemon's
//! other threads (the pool's, the mount table's) already run and may create
//! files meanwhile.
//!
//! So the socket is bound inside a fresh directory only the daemon's user may
//! enter (mode 0700), given its mode there, and renamed into place: the path
//! clients use only ever names a socket that already has its final mode. The
//! rename never replaces (RENAME_NOREPLACE), as bind(2) in place never did: a
//! socket bound there since the caller removed a stale one (another daemon's,
//! given the same path) stays reachable, and this start fails.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::Path;

use super::files::parent_dir;

/// Bind a listening socket at `socket` with permission bits `mode`, never
/// reachable at `socket` with other bits. A file at `socket` is left alone:
/// AlreadyExists (the caller removes a stale socket first).
pub(super) fn bind(socket: &Path, mode: u32) -> io::Result<UnixListener> {
    // Bound below through a shorter path, a path too long for sun_path (107
    // bytes) would be accepted, and no client could ever connect to it.
    SocketAddr::from_pathname(socket)?;
    // Beside the socket: a rename does not cross file systems.
    let private = tempfile::Builder::new()
        .prefix(".cowfs-socket-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent_dir(socket))?;
    // Reached through the directory's descriptor: a socket path may be at
    // most 107 bytes, and the private directory's would be longer than the
    // socket's own (a path the daemon accepted before). Also, the descriptor
    // is the directory just made, whatever is renamed around it.
    let dir = std::fs::File::open(private.path())?;
    let bound_at = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join("s");
    let listener = UnixListener::bind(&bound_at)?;
    std::fs::set_permissions(&bound_at, std::fs::Permissions::from_mode(mode))?;
    rename_noreplace(&bound_at, socket)?;
    // `private`, now empty, is removed when dropped here (with the socket in
    // it, on an error above).
    Ok(listener)
}

/// renameat2(2) with RENAME_NOREPLACE: EEXIST (AlreadyExists) if `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// Review finding: the rename replaced whatever was at the path, so a
    /// second daemon (another pool given the same `--socket`) that passed the
    /// start-up check at the same moment as the first silently took its path:
    /// the first served on, unreachable. bind(2) in place refused that.
    #[test]
    fn a_socket_bound_at_the_path_meanwhile_is_not_replaced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("ctl.sock");
        let first = UnixListener::bind(&path).expect("the first daemon's socket");
        let err = bind(&path, 0o660).expect_err("a second socket on the path");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        let _client = UnixStream::connect(&path).expect("connect");
        first.set_nonblocking(true).expect("nonblocking");
        first
            .accept()
            .expect("the first socket gets the connection");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["ctl.sock"], "the private directory is removed");
    }

    /// Review finding: bound through the short /proc/self/fd path, a socket
    /// path too long for sun_path (107 bytes) was accepted: the daemon said it
    /// listened there, and no client could ever connect. bind(2) at the path
    /// refused it at start, as it is refused again.
    #[test]
    fn a_path_no_client_could_connect_to_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let long = tmp.path().join("d".repeat(120));
        std::fs::create_dir(&long).expect("mkdir");
        let path = long.join("ctl.sock");
        let err = bind(&path, 0o660).expect_err("a path longer than sun_path");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert_eq!(std::fs::read_dir(&long).expect("read_dir").count(), 0);
    }

    #[test]
    fn the_socket_gets_its_mode_and_the_private_directory_goes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("ctl.sock");
        let _listener = bind(&path, 0o660).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o7777, 0o660);
        assert_eq!(std::fs::read_dir(tmp.path()).expect("read_dir").count(), 1);
        UnixStream::connect(&path).expect("connect");
    }
}
