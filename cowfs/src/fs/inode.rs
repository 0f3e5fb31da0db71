//! Inode items: lookup by number, attribute changes, creation and final release.

use super::items::*;
use super::{err, Attr, FsResult, FsTree, SetAttr, ROOT_INO};
use crate::btree::Key;

impl FsTree<'_> {
    pub fn inode(&mut self, ino: u64) -> FsResult<Inode> {
        match self.get(&inode_key(ino))? {
            None => err(libc::ENOENT),
            Some(v) => match Inode::decode(&v) {
                // Every size the filesystem can produce is at most MAX_FILE_SIZE; a
                // larger one is damage and would overflow offset arithmetic.
                Some(i) if i.size <= super::file::MAX_FILE_SIZE => Ok(i),
                Some(_) => Err(self.corrupt(ino, "size beyond the largest possible file")),
                None => Err(self.corrupt(ino, "undecodable inode item")),
            },
        }
    }

    pub(crate) fn put_inode(&mut self, ino: u64, i: &Inode) -> FsResult<()> {
        self.put(inode_key(ino), i.encode())
    }

    pub fn getattr(&mut self, ino: u64) -> FsResult<Attr> {
        let i = self.inode(ino)?;
        Ok(Attr::from_inode(ino, &i))
    }

    /// Write the root directory of a new, empty tree.
    pub fn init_root(&mut self, mode: u32, uid: u32, gid: u32) -> FsResult<()> {
        let now = Timespec::now();
        let root = Inode {
            mode: libc::S_IFDIR | (mode & 0o7777),
            uid,
            gid,
            nlink: 2,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent: ROOT_INO,
            next_seq: 3,
            ..Default::default()
        };
        self.put_inode(ROOT_INO, &root)?;
        if *self.next_ino <= ROOT_INO {
            *self.next_ino = ROOT_INO + 1;
        }
        Ok(())
    }

    /// Allocate an inode number and store a fresh inode.
    pub(crate) fn new_inode(
        &mut self,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        parent: u64,
    ) -> FsResult<(u64, Inode)> {
        let ino = *self.next_ino;
        *self.next_ino += 1;
        let now = Timespec::now_coarse();
        let dir = mode & libc::S_IFMT == libc::S_IFDIR;
        let i = Inode {
            mode,
            uid,
            gid,
            nlink: if dir { 2 } else { 1 },
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent: if dir { parent } else { 0 },
            next_seq: if dir { 3 } else { 0 },
            ..Default::default()
        };
        self.put_inode(ino, &i)?;
        Ok((ino, i))
    }

    pub fn setattr(&mut self, ino: u64, s: &SetAttr) -> FsResult<Attr> {
        // Only a size that changes is a change (see `truncate`).
        let mut changed = false;
        if let Some(size) = s.size {
            changed = self.inode(ino)?.size != size;
            self.truncate(ino, size)?;
        }
        let mut i = self.inode(ino)?;
        let now = Timespec::now();
        if let Some(m) = s.mode {
            i.mode = (i.mode & libc::S_IFMT) | (m & 0o7777);
            changed = true;
        }
        if let Some(u) = s.uid {
            i.uid = u;
            changed = true;
        }
        if let Some(g) = s.gid {
            i.gid = g;
            changed = true;
        }
        if let Some(t) = s.atime {
            i.atime = t;
            changed = true;
        }
        if let Some(t) = s.mtime {
            i.mtime = t;
            changed = true;
        }
        if changed {
            i.ctime = s.ctime.unwrap_or(now);
        } else if let Some(t) = s.ctime {
            i.ctime = t;
        }
        self.put_inode(ino, &i)?;
        Ok(Attr::from_inode(ino, &i))
    }

    /// Remove an inode and everything it owns (data, xattrs, orphan mark). The caller
    /// has checked that no directory entry and no open file refers to it.
    pub fn free_inode(&mut self, ino: u64) -> FsResult<()> {
        let keys = self.scan(Key::new(ino, 0, 0), Key::new(ino, u8::MAX, u64::MAX))?;
        for (k, _) in keys {
            // Remove the item first: that makes this tree's leaf its own (a shared leaf
            // is copied and the copy takes its own references), and only then is the
            // reference this tree held on the extent's blocks dropped.
            let removed = self.del(&k)?;
            if k.kind == KIND_EXTENT {
                if let Some(e) = removed.as_deref().and_then(Extent::decode) {
                    self.st.space.dec_range(&*self.st.dev, e.phys, e.len())?;
                }
            }
        }
        self.del(&Key::new(0, KIND_ORPHAN, ino))?;
        Ok(())
    }

    /// Inodes whose last name is gone but which were still open.
    pub fn orphans(&mut self) -> FsResult<Vec<u64>> {
        Ok(self
            .scan(
                Key::new(0, KIND_ORPHAN, 0),
                Key::new(0, KIND_ORPHAN, u64::MAX),
            )?
            .into_iter()
            .map(|(k, _)| k.off)
            .collect())
    }

    pub(crate) fn mark_orphan(&mut self, ino: u64) -> FsResult<()> {
        self.put(Key::new(0, KIND_ORPHAN, ino), Vec::new())
    }
}
