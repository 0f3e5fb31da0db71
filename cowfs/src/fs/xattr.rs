//! Extended attributes, one item each, keyed by name hash with probing (a large
//! value's bytes live beside it: `xattr_value`).

use super::items::*;
use super::xattr_value::Stored;
use super::{err, FsResult, FsTree};
use crate::btree::Key;

pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

/// The only system.* names kept: POSIX ACLs (the kernel checks ownership before
/// it sends them). The VFS hands every other system.* name to the filesystem
/// without any permission check, so storing those would let any user change any
/// file's attributes; like ext4 and tmpfs, they are refused.
const SYSTEM_NAMES: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];

/// An existing attribute (slot, value) and, if absent, a free slot for it.
type XattrLookup = (Option<(u64, Stored)>, Option<u64>);

impl FsTree<'_> {
    fn find_xattr(&mut self, ino: u64, name: &[u8]) -> FsResult<XattrLookup> {
        let h = name_hash(name);
        let items = self.scan(
            Key::new(ino, KIND_XATTR, h),
            Key::new(ino, KIND_XATTR, h + HASH_PROBE - 1),
        )?;
        let free = (h..h + HASH_PROBE).find(|s| !items.iter().any(|(k, _)| k.off == *s));
        for (k, v) in items {
            if let Some((n, val)) = xattr_decode(&v) {
                if n == name {
                    return Ok((Some((k.off, Stored::of(val))), None));
                }
            }
        }
        Ok((None, free))
    }

    /// Bytes of the inode's names list (each name and a NUL).
    fn names_len(&mut self, ino: u64) -> FsResult<usize> {
        Ok(self.listxattr(ino)?.len())
    }

    fn check_xattr_name(name: &[u8]) -> FsResult<()> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return err(libc::ERANGE);
        }
        // The kernel hands FUSE every name (its handler's prefix is empty); Linux
        // filesystems know only these namespaces and refuse the rest.
        const NAMESPACES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];
        if !NAMESPACES.iter().any(|ns| name.starts_with(ns)) && !SYSTEM_NAMES.contains(&name) {
            return err(libc::EOPNOTSUPP);
        }
        Ok(())
    }

    pub fn setxattr(&mut self, ino: u64, name: &[u8], value: &[u8], flags: u32) -> FsResult<()> {
        Self::check_xattr_name(name)?;
        let mut i = self.inode(ino)?;
        if value.len() > XATTR_SIZE_MAX {
            // What the kernel answers before it asks any filesystem.
            return err(libc::E2BIG);
        }
        let (existing, free) = self.find_xattr(ino, name)?;
        let slot = match (
            existing,
            flags & XATTR_CREATE != 0,
            flags & XATTR_REPLACE != 0,
        ) {
            (Some(_), true, _) => return err(libc::EEXIST),
            (None, _, true) => return err(libc::ENODATA),
            (Some((slot, old)), _, _) => {
                self.drop_xattr_value(ino, &old)?;
                slot
            }
            (None, _, _) => {
                // A names list longer than listxattr(2) can return would make every
                // attribute of the file unlistable; ext4 says ENOSPC when a
                // file's xattr space is full.
                if self.names_len(ino)? + name.len() + 1 > XATTR_LIST_MAX {
                    return err(libc::ENOSPC);
                }
                match free {
                    Some(s) => s,
                    None => return err(libc::ENOSPC),
                }
            }
        };
        let item = self.store_xattr_value(ino, &mut i, name, value)?;
        self.put(Key::new(ino, KIND_XATTR, slot), item)?;
        i.ctime = Timespec::now();
        self.put_inode(ino, &i)
    }

    pub fn getxattr(&mut self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        Self::check_xattr_name(name)?;
        self.inode(ino)?;
        match self.find_xattr(ino, name)?.0 {
            Some((_, v)) => self.load_xattr_value(ino, v),
            None => err(libc::ENODATA),
        }
    }

    /// Names, each followed by a NUL, as listxattr(2) returns them.
    pub fn listxattr(&mut self, ino: u64) -> FsResult<Vec<u8>> {
        self.inode(ino)?;
        let mut out = Vec::new();
        for (_, v) in self.scan(
            Key::new(ino, KIND_XATTR, 0),
            Key::new(ino, KIND_XATTR, u64::MAX),
        )? {
            if let Some((n, _)) = xattr_decode(&v) {
                out.extend_from_slice(n);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Every attribute of the inode, names with their values, sorted by name (for
    /// `diff`, which compares values: a large value set again is stored under new
    /// chunk ids with the same bytes).
    pub(crate) fn xattr_values(&mut self, ino: u64) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for (_, v) in self.scan(
            Key::new(ino, KIND_XATTR, 0),
            Key::new(ino, KIND_XATTR, u64::MAX),
        )? {
            if let Some((n, val)) = xattr_decode(&v) {
                let name = n.to_vec();
                out.push((name, self.load_xattr_value(ino, Stored::of(val))?));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    pub fn removexattr(&mut self, ino: u64, name: &[u8]) -> FsResult<()> {
        Self::check_xattr_name(name)?;
        let mut i = self.inode(ino)?;
        match self.find_xattr(ino, name)?.0 {
            Some((slot, old)) => {
                self.drop_xattr_value(ino, &old)?;
                self.del(&Key::new(ino, KIND_XATTR, slot))?;
                i.ctime = Timespec::now();
                self.put_inode(ino, &i)
            }
            None => err(libc::ENODATA),
        }
    }
}
