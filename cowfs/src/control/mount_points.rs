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
//!   mount_roots`, default `POOL.mnt`), after symlinks are resolved, and on the
//!   root's own filesystem (never on or inside another mount).

use std::path::{Path, PathBuf};

use cowfs_ctl::proto::{ErrorKind, ErrorReply, Scope};

use super::errors;
use super::mountinfo;
use crate::fuse::MountInfo;

/// Check `dir` (as the client sent it) for a mount by a token that is (`pool_admin`)
/// or is not `admin:*`; returns the resolved directory to mount on. Refusals
/// name a mounted branch only if `visible` says the token may see it.
pub fn check(
    dir: &str,
    pool_admin: bool,
    roots: &[PathBuf],
    cowfs: &[MountInfo],
    visible: &dyn Fn(&str) -> bool,
) -> Result<PathBuf, ErrorReply> {
    // Absolute: the daemon's working directory is not the client's.
    if !Path::new(dir).is_absolute() || dir.contains('\0') {
        return Err(errors::bad_request(format!(
            "mount point '{}' must be an absolute path",
            dir.escape_debug()
        )));
    }
    let real = match Path::new(dir).canonicalize() {
        Ok(p) if p.is_dir() => p,
        _ => {
            return Err(ErrorReply::new(
                ErrorKind::NotADirectory,
                format!("{dir}: not a directory; create the mount point first"),
            )
            .target(dir))
        }
    };
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
        return Ok(real);
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
    Ok(real)
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
