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
//! clients use only ever names a socket that already has its final mode.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

use super::files::parent_dir;

/// Bind a listening socket at `socket` with permission bits `mode`, never
/// reachable at `socket` with other bits (an existing file there is replaced).
pub(super) fn bind(socket: &Path, mode: u32) -> io::Result<UnixListener> {
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
    std::fs::rename(&bound_at, socket)?;
    // `private`, now empty, is removed when dropped here (with the socket in
    // it, on an error above).
    Ok(listener)
}
