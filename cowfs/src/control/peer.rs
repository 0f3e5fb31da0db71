//! Who is on the other end of a connection, as the kernel recorded it when the
//! client connected (`SO_PEERCRED`, `SO_PEERGROUPS`): never anything the client
//! sends. The OS user is the isolation boundary between agents, so connection
//! slots are counted per user and a mount point must be writable by the user
//! (`may_write`).

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The system calls that set this thread's groups, gid and uid with 32-bit
/// ids. On i386, 32-bit ARM and 32-bit SPARC the plain numbers are the old
/// calls that take 16-bit ids (an id above 65535 would be cut to another
/// user's, and the group list read as 16-bit ids); their 32-bit forms are the
/// `...32` calls. Elsewhere the plain ones take 32-bit ids.
#[cfg(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc"))]
mod id_calls {
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups32;
    pub const SETRESGID: libc::c_long = libc::SYS_setresgid32;
    pub const SETRESUID: libc::c_long = libc::SYS_setresuid32;
}
#[cfg(not(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc")))]
mod id_calls {
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups;
    pub const SETRESGID: libc::c_long = libc::SYS_setresgid;
    pub const SETRESUID: libc::c_long = libc::SYS_setresuid;
}

/// The credentials of the process that connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// The uid of the process that connected; `None` if the kernel would not say.
pub(super) fn uid(s: &UnixStream) -> Option<u32> {
    cred(s).ok().map(|c| c.uid)
}

fn cred(s: &UnixStream) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the
    // descriptor belongs to `s`, open for the call.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

impl Peer {
    pub(super) fn of(s: &UnixStream) -> io::Result<Peer> {
        let c = cred(s)?;
        let mut groups: Vec<libc::gid_t> = vec![0; 32];
        loop {
            let mut len = std::mem::size_of_val(groups.as_slice()) as libc::socklen_t;
            // SAFETY: `groups` is valid for writes of `len` bytes; the
            // descriptor belongs to `s`, open for the call.
            let r = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_PEERGROUPS,
                    groups.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            let e = io::Error::last_os_error();
            if r == 0 {
                groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
                break;
            }
            // Too small: the kernel said how many bytes it needs.
            if e.raw_os_error() != Some(libc::ERANGE)
                || len as usize <= std::mem::size_of_val(groups.as_slice())
            {
                return Err(e);
            }
            groups.resize(len as usize / std::mem::size_of::<libc::gid_t>(), 0);
        }
        Ok(Peer {
            uid: c.uid,
            gid: c.gid,
            groups,
        })
    }

    /// May this peer write `path`, by the kernel's own rules (mode bits, ACLs,
    /// the groups it had when it connected)? Asked with `access(2)` as the peer
    /// (`as_peer`).
    pub(super) fn may_write(&self, path: &Path) -> io::Result<bool> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        self.as_peer(move || {
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
                return Ok(true);
            }
            // As fusermount: a directory on a read-only filesystem or an
            // immutable one is not writable either.
            match io::Error::last_os_error() {
                e if matches!(
                    e.raw_os_error(),
                    Some(libc::EACCES | libc::EPERM | libc::EROFS)
                ) =>
                {
                    Ok(false)
                }
                e => Err(e),
            }
        })
    }

    /// `path` with its symlinks and `..` resolved as this peer resolves them,
    /// if it names a directory the peer can reach; `None` for anything else,
    /// missing or hidden from the peer alike: resolved as root, a reply would
    /// tell what lies in directories the peer may not enter (whether a name
    /// exists, where a symlink points).
    pub(super) fn resolve_dir(&self, path: &Path) -> io::Result<Option<PathBuf>> {
        let path = path.to_path_buf();
        self.as_peer(move || Ok(path.canonicalize().ok().filter(|p| p.is_dir())))
    }

    /// Run `f` on a thread that takes this peer's credentials for it alone and
    /// then ends, so that the kernel answers `f`'s calls exactly as for the peer.
    fn as_peer<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let peer = self.clone();
        std::thread::Builder::new()
            .name("cowfs-access".into())
            .spawn(move || {
                // Raw syscalls: they change this thread's credentials only
                // (libc's wrappers would change every thread of the daemon).
                // Groups first, while this thread may still change them; with
                // every uid other than 0 it keeps no capability, so the kernel
                // answers exactly as for the peer. The thread ends with them.
                // SAFETY: plain syscalls on values owned by this closure.
                unsafe {
                    if libc::syscall(id_calls::SETGROUPS, peer.groups.len(), peer.groups.as_ptr())
                        != 0
                        || libc::syscall(id_calls::SETRESGID, peer.gid, peer.gid, peer.gid) != 0
                        || libc::syscall(id_calls::SETRESUID, peer.uid, peer.uid, peer.uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                f()
            })?
            .join()
            .map_err(|_| io::Error::other("a check as the client's user panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pair_reports_this_process() {
        let (a, _b) = UnixStream::pair().expect("pair");
        let p = Peer::of(&a).expect("peer");
        // SAFETY: these calls always succeed.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((p.uid, p.gid), (uid, gid));
        assert_eq!(super::uid(&a), Some(uid));
        // SAFETY: a count of 0 asks for the number of groups only; then the
        // buffer holds that many.
        let mut groups = vec![0; unsafe { libc::getgroups(0, std::ptr::null_mut()) } as usize];
        let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
        groups.truncate(n as usize);
        assert_eq!(p.groups, groups);
    }
}
