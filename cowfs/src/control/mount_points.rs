//! Where a branch may be mounted. The daemon mounts as root with `allow_other`, so
//! a mount point is a host-wide decision, not a branch one:
//!
//! - every token: never inside a mount of this pool (a branch mounted in
//!   production's tree would shadow it for its readers and pin its unmount; one
//!   inside a sanitize hook's private mount would swap what the hook scrubs),
//!   and never on a directory above one (it would hide that mount from whoever
//!   reaches it by its path: a hook finding its clone by `$COWFS_CLONE_DIR`
//!   would scrub the branch mounted above instead, and the clone be published
//!   unscrubbed);
//! - tokens without `admin:*`: only strictly below a mount root (`[control]
//!   mount_roots`, default `POOL.mnt`), after symlinks are resolved (as the
//!   requesting user, `Peer::resolve_dir`: replies must not tell what lies in
//!   directories that user may not enter), and on the
//!   root's own filesystem (never on or inside another mount); and, as
//!   fusermount requires of unprivileged mounts, only on a directory the
//!   requesting process's user may write, and that user's own if it is sticky
//!   (root passes). The OS user is the isolation boundary between agents (two
//!   agents running as one user can already write each other's files and
//!   signal each other's processes): without this rule an agent could mount its
//!   branch on the directory another agent's service keeps its data in, while
//!   that agent's branch is unmounted, and feed it crafted data or read what it
//!   writes. Checked on the directory held open and mounted on (`PinnedDir`),
//!   so that a directory swapped in after the check is not what gets mounted.

use std::path::{Path, PathBuf};

use cowfs_ctl::proto::{ErrorKind, ErrorReply, Scope};

use super::errors;
use super::mountinfo;
use super::peer::Peer;
use crate::fuse::{MountError, MountInfo, PinnedDir};

/// Check `dir` (as the client sent it) for a mount by a token that is (`pool_admin`)
/// or is not `admin:*`, asked for by a process of user `caller` (`None`: the
/// kernel did not say); returns the resolved directory to mount on, and that
/// directory held open, to mount on (`MountTable::mount_pinned`). Refusals
/// name a mounted branch only if `visible` says the token may see it.
pub fn check(
    dir: &str,
    pool_admin: bool,
    caller: Option<&Peer>,
    roots: &[PathBuf],
    cowfs: &[MountInfo],
    visible: &dyn Fn(&str) -> bool,
) -> Result<(PathBuf, PinnedDir), ErrorReply> {
    // Absolute: the daemon's working directory is not the client's.
    if !Path::new(dir).is_absolute() || dir.contains('\0') {
        return Err(errors::bad_request(format!(
            "mount point '{}' must be an absolute path",
            dir.escape_debug()
        )));
    }
    // A token without `admin:*` acts as the requesting user (`None`: an admin
    // one), who must be known.
    let user = match (pool_admin, caller) {
        (true, _) => None,
        (false, Some(caller)) => Some(caller),
        (false, None) => return Err(refused(
            dir,
            Some(Scope::Admin),
            "the daemon could not learn which user the requesting process runs as (SO_PEERCRED, SO_PEERGROUPS); a token without admin:* mounts only on a directory its user may write".into(),
        )),
    };
    // Resolved as that user (see `Peer::resolve_dir`), as root for an admin.
    let resolved = match user {
        None => Path::new(dir).canonicalize().ok().filter(|p| p.is_dir()),
        Some(caller) => caller.resolve_dir(Path::new(dir)).map_err(|e| {
            ErrorReply::new(
                ErrorKind::Io,
                format!("resolving mount point {dir} as uid {}: {e}", caller.uid),
            )
            .target(dir)
        })?,
    };
    let Some(real) = resolved else {
        return Err(ErrorReply::new(
            ErrorKind::NotADirectory,
            format!("{dir}: not a directory; create the mount point first"),
        )
        .target(dir));
    };
    // Without symlinks, as the path just resolved: one swapped in since is
    // refused, as `MountTable::mount_exact` would.
    let pinned = PinnedDir::open(&real).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => {
            errors::mount(MountError::NotRealPath(real.clone())).target(dir)
        }
        _ => ErrorReply::new(
            ErrorKind::Io,
            format!("opening mount point {}: {e}", real.display()),
        )
        .target(dir),
    })?;
    // Mounting on a branch's own mount point is `exists` (the mount table says so).
    if let Some(m) = cowfs
        .iter()
        .find(|m| real != m.dir && real.starts_with(&m.dir))
    {
        return Err(refused(
            dir,
            None,
            format!(
                "mount point {} is inside the mount{} on {}; mount on a directory outside cowfs mounts",
                real.display(),
                of_branch(m, visible),
                m.dir.display()
            ),
        ));
    }
    if let Some(m) = cowfs
        .iter()
        .find(|m| real != m.dir && m.dir.starts_with(&real))
    {
        return Err(refused(
            dir,
            None,
            format!(
                "mount point {} is above the mount{} on {}: a mount there would hide it; mount on a directory that holds no cowfs mount",
                real.display(),
                of_branch(m, visible),
                m.dir.display()
            ),
        ));
    }
    if pool_admin {
        return Ok((real, pinned));
    }
    let shown = || {
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(root) = roots.iter().find(|r| real != **r && real.starts_with(r)) else {
        return Err(refused(
            dir,
            Some(Scope::Admin),
            format!(
                "mount point {} must be under {} (the daemon's [control] mount_roots); only an admin:* token may mount elsewhere",
                real.display(),
                shown()
            ),
        ));
    };
    let mounts = mountinfo::read().map_err(|e| {
        ErrorReply::new(ErrorKind::Io, format!("reading /proc/self/mountinfo: {e}"))
    })?;
    let parent = real.parent().unwrap_or(&real);
    let root_mount = mountinfo::holding(&mounts, root);
    if mountinfo::holding(&mounts, &real) != root_mount
        || mountinfo::holding(&mounts, parent) != root_mount
    {
        return Err(refused(
            dir,
            Some(Scope::Admin),
            format!(
                "mount point {} is on or inside another mount; it must be a plain directory on the filesystem of {}",
                real.display(),
                root.display()
            ),
        ));
    }
    // Root passes, as with fusermount (`user` is the caller here: admins
    // returned above).
    if let Some(caller) = user.filter(|c| c.uid != 0) {
        let io = |e: std::io::Error| {
            ErrorReply::new(
                ErrorKind::Io,
                format!(
                    "checking whether uid {} may write mount point {}: {e}",
                    caller.uid,
                    real.display()
                ),
            )
            .target(dir)
        };
        let st = pinned.stat().map_err(io)?;
        if st.st_mode & libc::S_ISVTX != 0 && st.st_uid != caller.uid {
            return Err(refused(
                dir,
                Some(Scope::Admin),
                format!(
                    "mount point {} is sticky and owned by uid {}, not by uid {} (the requesting process); a token without admin:* mounts on a sticky directory only if its user owns it, as fusermount requires",
                    real.display(),
                    st.st_uid,
                    caller.uid
                ),
            ));
        }
        if !caller.may_write(&pinned.proc_path()).map_err(io)? {
            return Err(refused(
                dir,
                Some(Scope::Admin),
                format!(
                    "mount point {} is not writable by uid {} (the requesting process); a token without admin:* mounts only on a directory its user may write, as fusermount requires",
                    real.display(),
                    caller.uid
                ),
            ));
        }
    }
    Ok((real, pinned))
}

/// " of branch 'NAME'" for a mount of a branch the token may see, else nothing.
fn of_branch(m: &MountInfo, visible: &dyn Fn(&str) -> bool) -> String {
    if visible(&m.branch) {
        format!(" of branch '{}'", m.branch)
    } else {
        String::new()
    }
}

fn refused(dir: &str, scope: Option<Scope>, message: String) -> ErrorReply {
    let mut e = ErrorReply::new(ErrorKind::Forbidden, message).target(dir);
    e.scope = scope;
    e
}
