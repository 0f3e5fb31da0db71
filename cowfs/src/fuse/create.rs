//! New inodes: their owner (the caller, or the group of a set-group-ID
//! directory), and their mode narrowed by the parent's default ACL or the umask.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use fuser::Request;

use super::acl;
use super::filesystem::CowFs;
use crate::fs::{Attr, FsResult, Owner};

impl CowFs {
    /// Owner of a new inode in `parent`, and the mode adjusted for a set-group-ID
    /// parent directory (BSD group semantics, inherited by subdirectories).
    pub(super) fn new_owner(
        &self,
        req: &Request,
        parent: u64,
        mode: u32,
    ) -> FsResult<(Owner, u32)> {
        let p = self.pool.getattr(self.branch, parent)?;
        if p.mode & libc::S_ISGID != 0 {
            let mode = if mode & libc::S_IFMT == libc::S_IFDIR {
                mode | libc::S_ISGID
            } else {
                mode
            };
            let owner = Owner {
                uid: req.uid(),
                gid: p.gid,
            };
            return Ok((owner, mode));
        }
        let owner = Owner {
            uid: req.uid(),
            gid: req.gid(),
        };
        Ok((owner, mode))
    }

    pub(super) fn create_node(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u64,
    ) -> FsResult<Attr> {
        let (owner, mode) = self.new_owner(req, parent, mode)?;
        let (mode, inherited) = acl::inherit(&self.pool, self.branch, parent, mode, umask)?;
        let name = name.as_bytes();
        let a = if mode & libc::S_IFMT == libc::S_IFDIR {
            self.pool.mkdir(self.branch, parent, name, mode, owner)?
        } else {
            self.pool
                .mknod(self.branch, parent, name, mode, rdev, owner)?
        };
        acl::store_inherited(&self.pool, self.branch, a.ino, inherited)?;
        Ok(a)
    }
}
