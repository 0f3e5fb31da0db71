//! The hooks' private directory: `SCRATCH/.cowfs-sanitize-POOL-PID-N/` (POOL the
//! pool's id in hex, PID the daemon's), mode 0700 and owned by the daemon,
//! holding the mount point `clone/` of the clone being sanitized. The clone is mounted `allow_other` and still holds personal data,
//! so nobody else may reach it: not other local users (no path through the
//! directory), and not tokens (the daemon refuses mounts inside, on or above it, see
//! `control::mount_points`). A hook that runs a server as the owner of its data
//! (`runuser -u postgres`) needs that user to pass through: such users get
//! search permission alone, by a POSIX ACL entry.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// ACL tags and permissions of the kernel's `system.posix_acl_access` format
/// (linux/posix_acl_xattr.h).
const ACL_VERSION: u32 = 2;
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

const PREFIX: &str = ".cowfs-sanitize-";
/// The mount point inside the private directory.
pub const MOUNT_POINT: &str = "clone";

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A name for a new private directory under `scratch` for the pool `pool_id`.
pub fn new_path(scratch: &Path, pool_id: u64) -> PathBuf {
    scratch.join(format!(
        "{PREFIX}{pool_id:016x}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// At daemon start, after the pool's dead mounts were detached (`MountTable::new`):
/// remove the private directories under `scratch` that a daemon of this pool
/// killed while a hook ran left behind. Only this pool's (the scratch directory
/// may be shared), only those of a process that is gone (or of this one: no hook
/// ran here yet, and a pid is reused), only directories of this daemon's user
/// (see `remove_left`), and only empty ones: rmdir refuses a mount point still
/// in use (EBUSY) and a directory with anything in it.
pub fn remove_stale(scratch: &Path, pool_id: u64) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    let ours = format!("{PREFIX}{pool_id:016x}-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&ours)) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_none_or(|p| p != std::process::id() && alive(p)) {
            continue;
        }
        let dir = entry.path();
        match remove_left(&dir) {
            Ok(()) => log::warn!(
                "{}: removed the hooks' directory a previous daemon of this pool left",
                dir.display()
            ),
            Err(e) => log::warn!("{}: not removed: {e}", dir.display()),
        }
    }
}

/// Remove `dir/clone` and then `dir`, if `dir` is a directory (not a symlink)
/// of this daemon's user. The scratch directory may be writable by others
/// (/tmp): a name proves nothing, and a symlink by that name would have had
/// root remove a `clone` directory wherever it pointed. `clone` is removed
/// through the directory opened without following symlinks, so nothing can be
/// swapped in between the check and the removal.
fn remove_left(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => io::Error::new(
                e.kind(),
                "not a directory (a symlink?), so not one the daemon made",
            ),
            _ => e,
        })?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    let owner = opened.metadata()?.uid();
    if owner != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("owned by uid {owner}, not by the daemon's user ({me})"),
        ));
    }
    let clone = std::ffi::CString::new(MOUNT_POINT).map_err(io::Error::other)?;
    // SAFETY: unlinkat on a directory descriptor we hold, with a NUL-terminated
    // name; AT_REMOVEDIR removes only an empty directory, never a symlink's target.
    let r = unsafe { libc::unlinkat(opened.as_raw_fd(), clone.as_ptr(), libc::AT_REMOVEDIR) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::NotFound {
            return Err(io::Error::new(e.kind(), format!("{MOUNT_POINT}/: {e}")));
        }
    }
    // rmdir does not follow a symlink in its last component.
    std::fs::remove_dir(dir)
}

/// Is process `pid` there (a zombie included)? Not a pid (0, or beyond
/// pid_t): taken as there, so that nothing is removed for it.
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid == 0 {
        return true;
    }
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Create `dir` with mode 0700 (it must not exist: a directory someone else
/// prepared could be theirs).
pub fn create(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    // The mode is exact whatever the daemon's umask.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Let the users `uids` (other than the daemon's own) pass through `dir`, and
/// nobody else.
pub fn allow_search(dir: &Path, uids: &[u32]) -> io::Result<()> {
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    let mut users: Vec<u32> = uids.iter().copied().filter(|u| *u != me).collect();
    users.sort_unstable();
    users.dedup();
    if users.is_empty() {
        return Ok(());
    }
    let mut acl = ACL_VERSION.to_le_bytes().to_vec();
    let mut entry = |tag: u16, perm: u16, id: u32| {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    };
    entry(ACL_USER_OBJ, 0o7, ACL_UNDEFINED_ID);
    for u in &users {
        entry(ACL_USER, 0o1, *u);
    }
    entry(ACL_GROUP_OBJ, 0, ACL_UNDEFINED_ID);
    entry(ACL_MASK, 0o1, ACL_UNDEFINED_ID);
    entry(ACL_OTHER, 0, ACL_UNDEFINED_ID);
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` and `acl` are valid for the duration of the call; the name is a
    // NUL-terminated literal.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("granting users {users:?} search permission (POSIX ACL; the scratch_dir's filesystem must support ACLs): {e}"),
        ));
    }
    Ok(())
}

/// Owners of `clone`'s root and of every component of `paths` (relative to it)
/// that exists: the users a hook may run its server as.
pub fn owners(clone: &Path, paths: &[&str]) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut add = |p: &PathBuf| {
        if let Ok(m) = std::fs::symlink_metadata(p) {
            out.push(m.uid());
        }
    };
    add(&clone.to_path_buf());
    for p in paths {
        let mut at = clone.to_path_buf();
        for c in p
            .split('/')
            .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        {
            at.push(c);
            add(&at);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_and_searchable_by_named_users_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("p");
        create(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(create(&d).is_err(), "an existing directory is not reused");
        allow_search(&d, &[]).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // The group class shows the ACL's mask (skipped where ACLs are unsupported).
        match allow_search(&d, &[4242]) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => return,
            r => r.unwrap(),
        }
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o710
        );
    }

    /// At start, a daemon removes what a killed daemon of its pool left, and
    /// nothing another pool's daemon, a live process or a hook still uses.
    #[test]
    fn only_this_pools_empty_directories_of_gone_processes_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let scratch = tmp.path();
        let (pool, other) = (0x2149_d1ab_01f9_ba95_u64, 7_u64);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let live = std::os::unix::process::parent_id();
        let dir = |pool: u64, pid: u32, n: u32| {
            let d = scratch.join(format!("{PREFIX}{pool:016x}-{pid}-{n}"));
            std::fs::create_dir_all(d.join(MOUNT_POINT)).unwrap();
            d
        };
        let stale = dir(pool, gone, 0);
        let own_pid = dir(pool, std::process::id(), 3);
        let live_pid = dir(pool, live, 0);
        let other_pool = dir(other, gone, 0);
        let in_use = dir(pool, gone, 1);
        std::fs::write(in_use.join(MOUNT_POINT).join("f"), b"").unwrap();
        let unrelated = scratch.join(".cowfs-sanitize-x");
        std::fs::create_dir(&unrelated).unwrap();
        remove_stale(scratch, pool);
        assert!(!stale.exists() && !own_pid.exists());
        for kept in [&live_pid, &other_pool, &in_use, &unrelated] {
            assert!(kept.exists(), "{kept:?} was removed");
        }
        assert!(in_use.join(MOUNT_POINT).join("f").exists());
    }

    /// The scratch directory may be writable by others (the README's example is
    /// /tmp), and a directory's name is no proof of whose it is: a symlink by
    /// that name made the daemon (root) remove an empty `clone` directory
    /// wherever it pointed, and another user's directory went too. Only real
    /// directories of the daemon's own user are removed.
    #[test]
    fn symlinks_and_other_users_directories_are_left_alone() {
        use std::os::unix::fs::{chown, symlink};
        let tmp = tempfile::tempdir().unwrap();
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let pool = 0x2149_d1ab_01f9_ba95_u64;
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let name = |n: u32| scratch.join(format!("{PREFIX}{pool:016x}-{gone}-{n}"));

        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(elsewhere.join(MOUNT_POINT)).unwrap();
        symlink(&elsewhere, name(0)).unwrap();
        let theirs = name(1);
        std::fs::create_dir_all(theirs.join(MOUNT_POINT)).unwrap();
        // SAFETY: geteuid cannot fail and touches no memory.
        let me = unsafe { libc::geteuid() };
        let other = if me == 4242 { 4243 } else { 4242 };
        // Only root may give a directory away; elsewhere the case cannot arise
        // from this test's hands.
        let chowned = chown(&theirs, Some(other), None)
            .and_then(|()| chown(theirs.join(MOUNT_POINT), Some(other), None));
        let ours = name(2);
        std::fs::create_dir_all(ours.join(MOUNT_POINT)).unwrap();

        remove_stale(&scratch, pool);
        assert!(
            elsewhere.join(MOUNT_POINT).exists(),
            "removed a directory through a symlink"
        );
        assert!(std::fs::symlink_metadata(name(0)).is_ok());
        if chowned.is_ok() {
            assert!(
                theirs.join(MOUNT_POINT).exists(),
                "removed another user's directory"
            );
        }
        assert!(!ours.exists(), "the daemon's own stale directory stayed");
    }
}
