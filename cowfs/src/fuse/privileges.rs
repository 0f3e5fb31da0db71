//! Dropping what a file grants when it changes: set-user-ID, set-group-ID and file
//! capabilities. cowfs negotiates FUSE_HANDLE_KILLPRIV_V2 (kernel.rs), which makes
//! this the filesystem's job; in exchange the kernel stops asking for
//! `security.capability` before every write(2), a round trip per write call.
//!
//! The rules are Linux's (`setattr_should_drop_suidgid`, `file_remove_privs`):
//! - a write by a caller without CAP_FSETID drops set-user-ID, and set-group-ID
//!   when the file is group-executable or the caller is not in the file's group
//!   (without group execute the bit marks mandatory locking, which a member of the
//!   group may keep: `setattr_should_drop_sgid`, Linux 6.2 and later, as ext4
//!   does). The kernel flags such writes (FUSE_WRITE_KILL_SUIDGID).
//! - a truncate likewise. The kernel's flag for it (FATTR_KILL_SUIDGID) is not
//!   passed on by fuser 0.18, so the caller's CAP_FSETID is read from its /proc
//!   status (uid 0 is not enough: root may have dropped the capability).
//! - chown of anything but a directory drops them, whoever asks.
//! - any write, truncate or chown drops file capabilities. The kernel still does
//!   this itself on write (it checks `security.capability` once per inode, then
//!   remembers the inode has none), so ordinary writes cost nothing here; we drop
//!   them too on the rarer paths that also drop set-id bits.
//! - fallocate and copy_file_range change content like a write, but their requests
//!   carry no kill flag: the caller's CAP_FSETID is read from its /proc status.
//!
//! Also what the kernel leaves to FUSE about privileged names: listxattr shows
//! trusted.* names only to callers with CAP_SYS_ADMIN (Linux's
//! `xattr_trusted_list`), as the kernel already hides their values from others.

use super::filesystem::CowFs;
use crate::fs::{FsResult, SetAttr};

const CAPABILITY: &[u8] = b"security.capability";

/// The capability bit (linux/capability.h) that lets a caller keep set-id bits.
const CAP_FSETID: u32 = 4;
/// The capability bit (linux/capability.h) that lets a caller see trusted.* names.
const CAP_SYS_ADMIN: u32 = 21;

/// Does a caller keep a file's set-group-ID bit when it sets the file's access ACL,
/// or (without group execute) when it writes, truncates or chowns the file? Linux
/// (`posix_acl_update_mode`, `setattr_should_drop_sgid`) keeps it for a member of
/// the file's group and for a holder of CAP_FSETID. The kernel's own verdict for
/// ACLs (FUSE_SETXATTR_ACL_KILL_SGID) comes only with FUSE_SETXATTR_EXT, whose
/// request layout fuser 0.18 does not parse, and its write flag says only that the
/// caller lacks CAP_FSETID, so it is worked out here from the caller's /proc
/// status; a caller that is gone already counts as uid 0 or not.
pub(crate) fn keeps_setgid(pid: u32, uid: u32, gid: u32, file_gid: u32) -> bool {
    if gid == file_gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return uid == 0;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let in_group = field("Groups:").is_some_and(|g| {
        g.split_whitespace()
            .any(|x| x.parse::<u32>() == Ok(file_gid))
    });
    in_group || effective_caps(&status) & (1 << CAP_FSETID) != 0
}

/// The effective capability set in a /proc status text (none if it has no field).
fn effective_caps(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|c| u64::from_str_radix(c.trim(), 16).ok())
        .unwrap_or(0)
}

/// The names of a listxattr list (each followed by a NUL) that caller `pid`, `uid`
/// may see: trusted.* ones only with CAP_SYS_ADMIN, which the kernel leaves to the
/// filesystem for FUSE. The caller's /proc status is read only when the list holds
/// such a name (`ls -l` lists every file's names).
pub(crate) fn names_visible_to(pid: u32, uid: u32, list: Vec<u8>) -> Vec<u8> {
    let trusted = list.split(|b| *b == 0).any(|n| n.starts_with(b"trusted."));
    if trusted && !has_capability(pid, uid, CAP_SYS_ADMIN) {
        without_trusted_names(&list)
    } else {
        list
    }
}

/// Does the caller hold capability `cap` in the daemon's user namespace (as
/// `capable()` asks: a container's root holds it only in its own)? A caller that
/// is gone already counts as uid 0 or not.
fn has_capability(pid: u32, uid: u32, cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return uid == 0;
    };
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
    let same_namespace = ns(&pid.to_string()).is_some_and(|n| Some(n) == ns("self"));
    same_namespace && effective_caps(&status) & (1 << cap) != 0
}

/// A listxattr list (names, each followed by a NUL) without its trusted.* names.
fn without_trusted_names(list: &[u8]) -> Vec<u8> {
    list.split_inclusive(|b| *b == 0)
        .filter(|name| !name.starts_with(b"trusted."))
        .flatten()
        .copied()
        .collect()
}

/// Who asks for a change: what `keeps_setgid` needs to know about the caller.
#[derive(Clone, Copy)]
pub(crate) struct Caller {
    pid: u32,
    uid: u32,
    gid: u32,
}

impl Caller {
    pub(crate) fn of(req: &fuser::Request) -> Caller {
        Caller {
            pid: req.pid(),
            uid: req.uid(),
            gid: req.gid(),
        }
    }

    fn keeps_setgid(self, file_gid: u32) -> bool {
        keeps_setgid(self.pid, self.uid, self.gid, file_gid)
    }
}

/// `mode` without the set-id bits a change drops: set-user-ID always, set-group-ID
/// when the file is group-executable or, without group execute, unless the caller
/// keeps it (`keeps_setgid`, asked only then).
pub(crate) fn without_setid(mode: u32, keeps_setgid: impl FnOnce() -> bool) -> u32 {
    let mut m = mode & !libc::S_ISUID;
    if m & libc::S_ISGID != 0 && (m & libc::S_IXGRP != 0 || !keeps_setgid()) {
        m &= !libc::S_ISGID;
    }
    m
}

/// Why `setattr` drops set-id bits: chown, or a truncate by a caller without
/// CAP_FSETID (`has_fsetid` is asked only for a truncate).
pub(crate) fn setattr_drops_setid(s: &SetAttr, has_fsetid: impl FnOnce() -> bool) -> bool {
    s.uid.is_some() || s.gid.is_some() || (s.size.is_some() && !has_fsetid())
}

impl CowFs {
    /// Before a write the kernel flagged (the writer lacks CAP_FSETID): drop set-id
    /// bits and file capabilities, and invalidate the kernel's cached mode so that
    /// exec sees the change at once. Other writes need nothing (see above).
    pub(crate) fn drop_privileges_for_write(&self, ino: u64, caller: Caller) -> FsResult<()> {
        let mut changed = false;
        let a = self.pool.getattr(self.branch, ino)?;
        let m = without_setid(a.mode, || caller.keeps_setgid(a.gid));
        if m != a.mode && !a.is_dir() {
            let s = SetAttr {
                mode: Some(m & 0o7777),
                ..SetAttr::default()
            };
            self.pool.setattr(self.branch, ino, &s)?;
            changed = true;
        }
        changed |= self.drop_capabilities(ino)?;
        if changed {
            self.invalidate_attributes(ino);
        }
        Ok(())
    }

    /// Before a change of content whose request carries no kill flag (fallocate,
    /// copy_file_range): Linux drops the set-id bits a write by the same caller
    /// would (`file_modified`), and with FUSE_HANDLE_KILLPRIV_V2 the kernel leaves
    /// that to us (file capabilities it still drops itself). Whether the caller
    /// holds CAP_FSETID is read from its /proc status, only when there is a bit to
    /// drop.
    pub(crate) fn drop_privileges_for_change(&self, caller: Caller, ino: u64) -> FsResult<()> {
        let a = self.pool.getattr(self.branch, ino)?;
        let setid = a.mode & (libc::S_ISUID | libc::S_ISGID) != 0;
        if !setid || has_capability(caller.pid, caller.uid, CAP_FSETID) {
            return Ok(());
        }
        self.drop_privileges_for_write(ino, caller)
    }

    /// Before a setattr: a chown, or a truncate by a caller without
    /// CAP_FSETID, also drops set-id bits (unless the request sets the mode
    /// itself); either drops file capabilities.
    pub(crate) fn drop_privileges_for_setattr(
        &self,
        ino: u64,
        s: &mut SetAttr,
        caller: Caller,
    ) -> FsResult<()> {
        let changes_content_or_owner = s.size.is_some() || s.uid.is_some() || s.gid.is_some();
        if !changes_content_or_owner {
            return Ok(());
        }
        let a = self.pool.getattr(self.branch, ino)?;
        if a.is_dir() {
            return Ok(());
        }
        let m = without_setid(a.mode, || caller.keeps_setgid(a.gid));
        let has_fsetid = || has_capability(caller.pid, caller.uid, CAP_FSETID);
        if s.mode.is_none() && m != a.mode && setattr_drops_setid(s, has_fsetid) {
            s.mode = Some(m & 0o7777);
        }
        self.drop_capabilities(ino)?;
        Ok(())
    }

    /// Remove `security.capability` from `ino`; true if it was there.
    pub(crate) fn drop_capabilities(&self, ino: u64) -> FsResult<bool> {
        match self.pool.removexattr(self.branch, ino, CAPABILITY) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == libc::ENODATA => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setid_rules() {
        let reg = libc::S_IFREG;
        let keeps = || true;
        let loses = || false;
        assert_eq!(without_setid(reg | 0o6755, keeps), reg | 0o755);
        // Set-group-ID without group execute (a mandatory locking mark) stays for
        // a caller who keeps it, and only for one.
        assert_eq!(without_setid(reg | 0o6745, keeps), reg | 0o2745);
        assert_eq!(without_setid(reg | 0o6745, loses), reg | 0o745);
        assert_eq!(without_setid(reg | 0o644, loses), reg | 0o644);
        let chown = SetAttr {
            uid: Some(1),
            ..SetAttr::default()
        };
        assert!(setattr_drops_setid(&chown, || true));
        let truncate = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        assert!(setattr_drops_setid(&truncate, || false));
        assert!(!setattr_drops_setid(&truncate, || true));
        assert!(!setattr_drops_setid(&SetAttr::default(), || false));
    }

    #[test]
    fn trusted_names_filtered_out() {
        let list = b"user.a\0trusted.b\0security.c\0trusted.\0user.trusted.d\0";
        assert_eq!(
            without_trusted_names(list),
            b"user.a\0security.c\0user.trusted.d\0"
        );
        assert!(without_trusted_names(b"").is_empty());
        // A caller that is gone counts as uid 0 or not.
        let gone = u32::MAX;
        let both = b"user.a\0trusted.b\0".to_vec();
        assert_eq!(names_visible_to(gone, 1000, both.clone()), b"user.a\0");
        assert_eq!(names_visible_to(gone, 0, both.clone()), both);
    }

    #[test]
    fn capabilities_from_status() {
        let status = "Name:\tx\nCapEff:\t0000000000200010\nCapBnd:\tffffffffff\n";
        let caps = effective_caps(status);
        assert_ne!(caps & (1 << CAP_SYS_ADMIN), 0);
        assert_ne!(caps & (1 << CAP_FSETID), 0);
        assert_eq!(effective_caps("Name:\tx\n"), 0);
    }
}
