//! The hooks' private directory: `SCRATCH/.cowfs-sanitize-PID-N/`, mode 0700 and
//! owned by the daemon, holding the mount point `clone/` of the clone being
//! sanitized. The clone is mounted `allow_other` and still holds personal data,
//! so nobody else may reach it: not other local users (no path through the
//! directory), and not tokens (the daemon refuses mounts inside it, see
//! `control::mount_points`). A hook that runs a server as the owner of its data
//! (`runuser -u postgres`) needs that user to pass through: such users get
//! search permission alone, by a POSIX ACL entry.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// ACL tags and permissions of the kernel's `system.posix_acl_access` format
/// (linux/posix_acl_xattr.h).
const ACL_VERSION: u32 = 2;
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

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
}
