//! Directories: entries by name hash (lookup) and by sequence number (readdir with
//! stable cookies), creation of every file type, link, unlink, rmdir and rename.

use super::items::*;
use super::{err, Attr, FsResult, FsTree, Owner, ROOT_INO};
use crate::btree::{tree, Key};

/// One readdir result; `offset` is the cookie that resumes after this entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirListEntry {
    pub ino: u64,
    pub offset: u64,
    /// S_IFMT bits.
    pub ftype: u32,
    pub name: Vec<u8>,
}

pub fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > MAX_NAME_LEN {
        return err(libc::ENAMETOOLONG);
    }
    if name.is_empty() {
        return err(libc::ENOENT);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return err(libc::EINVAL);
    }
    Ok(())
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

impl FsTree<'_> {
    pub(crate) fn dir_inode(&mut self, ino: u64) -> FsResult<Inode> {
        let i = self.inode(ino)?;
        if !i.is_dir() {
            return err(libc::ENOTDIR);
        }
        Ok(i)
    }

    /// The entry `name` in directory `parent`, with its hash slot.
    pub(crate) fn find_entry(
        &mut self,
        parent: u64,
        name: &[u8],
    ) -> FsResult<Option<(u64, DirEntry)>> {
        let h = name_hash(name);
        let mut found = None;
        tree::range(
            self.st,
            *self.root,
            &Key::new(parent, KIND_DIRENT, h),
            &Key::new(parent, KIND_DIRENT, h + HASH_PROBE - 1),
            &mut |k, v| {
                if let Some(e) = DirEntry::decode(v) {
                    if e.name == name {
                        found = Some((k.off, e));
                        return false;
                    }
                }
                true
            },
        )?;
        Ok(found)
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let p = self.dir_inode(parent)?;
        if name == b"." {
            return Ok(Attr::from_inode(parent, &p));
        }
        if name == b".." {
            return self.getattr(if parent == ROOT_INO {
                ROOT_INO
            } else {
                p.parent
            });
        }
        check_name(name)?;
        match self.find_entry(parent, name)? {
            None => err(libc::ENOENT),
            Some((_, e)) => self.getattr(e.ino),
        }
    }

    /// Add `name -> child` to a directory whose inode the caller holds and stores.
    fn add_entry(
        &mut self,
        parent: u64,
        p: &mut Inode,
        name: &[u8],
        child: u64,
        ftype: u32,
    ) -> FsResult<()> {
        let h = name_hash(name);
        let used: Vec<u64> = self
            .scan(
                Key::new(parent, KIND_DIRENT, h),
                Key::new(parent, KIND_DIRENT, h + HASH_PROBE - 1),
            )?
            .into_iter()
            .map(|(k, _)| k.off)
            .collect();
        let slot = match (h..h + HASH_PROBE).find(|s| !used.contains(s)) {
            Some(s) => s,
            None => return err(libc::ENOSPC),
        };
        let seq = p.next_seq.max(3);
        p.next_seq = seq + 1;
        let by_name = DirEntry {
            ino: child,
            ftype,
            link: seq,
            name: name.to_vec(),
        };
        let by_seq = DirEntry {
            link: slot,
            ..by_name.clone()
        };
        self.put(Key::new(parent, KIND_DIRENT, slot), by_name.encode())?;
        self.put(Key::new(parent, KIND_DIRINDEX, seq), by_seq.encode())?;
        let now = Timespec::now();
        p.mtime = now;
        p.ctime = now;
        if ftype == libc::S_IFDIR {
            p.nlink += 1;
        }
        Ok(())
    }

    fn remove_entry(
        &mut self,
        parent: u64,
        p: &mut Inode,
        slot: u64,
        e: &DirEntry,
    ) -> FsResult<()> {
        self.del(&Key::new(parent, KIND_DIRENT, slot))?;
        self.del(&Key::new(parent, KIND_DIRINDEX, e.link))?;
        let now = Timespec::now();
        p.mtime = now;
        p.ctime = now;
        if e.ftype == libc::S_IFDIR {
            p.nlink = p.nlink.saturating_sub(1);
        }
        Ok(())
    }

    /// Create a regular file, directory, fifo, socket or device node.
    pub fn mknod(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        owner: Owner,
    ) -> FsResult<Attr> {
        let ftype = mode & libc::S_IFMT;
        let ftype = if ftype == 0 { libc::S_IFREG } else { ftype };
        if ![
            libc::S_IFREG,
            libc::S_IFDIR,
            libc::S_IFIFO,
            libc::S_IFSOCK,
            libc::S_IFCHR,
            libc::S_IFBLK,
            libc::S_IFLNK,
        ]
        .contains(&ftype)
        {
            return err(libc::EINVAL);
        }
        let mut p = self.dir_inode(parent)?;
        if is_dot(name) {
            return err(libc::EEXIST);
        }
        check_name(name)?;
        if p.nlink == 0 {
            return err(libc::ENOENT);
        }
        if self.find_entry(parent, name)?.is_some() {
            return err(libc::EEXIST);
        }
        let (ino, i) =
            self.new_inode(ftype | (mode & 0o7777), owner.uid, owner.gid, rdev, parent)?;
        self.add_entry(parent, &mut p, name, ino, ftype)?;
        self.put_inode(parent, &p)?;
        Ok(Attr::from_inode(ino, &i))
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32, owner: Owner) -> FsResult<Attr> {
        self.mknod(parent, name, libc::S_IFDIR | (mode & 0o7777), 0, owner)
    }

    pub fn symlink(
        &mut self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        owner: Owner,
    ) -> FsResult<Attr> {
        if target.is_empty() {
            return err(libc::ENOENT);
        }
        if target.len() >= 4096 {
            return err(libc::ENAMETOOLONG);
        }
        let a = self.mknod(parent, name, libc::S_IFLNK | 0o777, 0, owner)?;
        self.write_data(a.ino, 0, target)?;
        self.getattr(a.ino)
    }

    pub fn readlink(&mut self, ino: u64) -> FsResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.file_type() != libc::S_IFLNK {
            return err(libc::EINVAL);
        }
        // symlink() stores at most 4095 bytes; a larger size is damage, and must not
        // become an allocation of that size.
        if i.size >= 4096 {
            return Err(self.corrupt(ino, "symlink target longer than 4095 bytes"));
        }
        self.read_data(ino, &i, 0, i.size as usize)
    }

    pub fn link(&mut self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        let mut i = self.inode(ino)?;
        if i.is_dir() {
            return err(libc::EPERM);
        }
        let mut p = self.dir_inode(newparent)?;
        if is_dot(newname) {
            return err(libc::EEXIST);
        }
        check_name(newname)?;
        if self.find_entry(newparent, newname)?.is_some() {
            return err(libc::EEXIST);
        }
        if i.nlink >= 65000 {
            return err(libc::EMLINK);
        }
        self.add_entry(newparent, &mut p, newname, ino, i.file_type())?;
        self.put_inode(newparent, &p)?;
        i.nlink += 1;
        i.ctime = Timespec::now();
        if i.nlink == 1 {
            // Re-linked from the orphan list (linkat of an O_TMPFILE-like inode).
            self.del(&Key::new(0, KIND_ORPHAN, ino))?;
        }
        self.put_inode(ino, &i)?;
        Ok(Attr::from_inode(ino, &i))
    }

    /// Remove a non-directory name. Returns the inode number if its last link is gone
    /// (it is then on the orphan list; the caller frees it once no one has it open).
    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> FsResult<Option<u64>> {
        let mut p = self.dir_inode(parent)?;
        if is_dot(name) {
            return err(libc::EISDIR);
        }
        check_name(name)?;
        let (slot, e) = match self.find_entry(parent, name)? {
            None => return err(libc::ENOENT),
            Some(x) => x,
        };
        if e.ftype == libc::S_IFDIR {
            return err(libc::EISDIR);
        }
        self.remove_entry(parent, &mut p, slot, &e)?;
        self.put_inode(parent, &p)?;
        self.drop_link(e.ino)
    }

    fn drop_link(&mut self, ino: u64) -> FsResult<Option<u64>> {
        let mut i = self.inode(ino)?;
        i.nlink = i.nlink.saturating_sub(1);
        i.ctime = Timespec::now();
        self.put_inode(ino, &i)?;
        if i.nlink == 0 {
            self.mark_orphan(ino)?;
            return Ok(Some(ino));
        }
        Ok(None)
    }

    pub(crate) fn dir_is_empty(&mut self, ino: u64) -> FsResult<bool> {
        let mut empty = true;
        tree::range(
            self.st,
            *self.root,
            &Key::new(ino, KIND_DIRINDEX, 0),
            &Key::new(ino, KIND_DIRINDEX, u64::MAX),
            &mut |_, _| {
                empty = false;
                false
            },
        )?;
        Ok(empty)
    }

    /// Remove an empty directory. Returns its inode number: like an unlinked file it
    /// stays on the orphan list, with no links, until no one has it open (fstat of an
    /// open descriptor still works); the caller frees it then.
    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> FsResult<Option<u64>> {
        let mut p = self.dir_inode(parent)?;
        if name == b"." {
            return err(libc::EINVAL);
        }
        if name == b".." {
            return err(libc::ENOTEMPTY);
        }
        check_name(name)?;
        let (slot, e) = match self.find_entry(parent, name)? {
            None => return err(libc::ENOENT),
            Some(x) => x,
        };
        if e.ftype != libc::S_IFDIR {
            return err(libc::ENOTDIR);
        }
        if !self.dir_is_empty(e.ino)? {
            return err(libc::ENOTEMPTY);
        }
        self.remove_entry(parent, &mut p, slot, &e)?;
        self.put_inode(parent, &p)?;
        self.orphan_dir(e.ino)?;
        Ok(Some(e.ino))
    }

    /// A removed directory loses its links and joins the orphan list.
    fn orphan_dir(&mut self, ino: u64) -> FsResult<()> {
        let mut i = self.inode(ino)?;
        i.nlink = 0;
        i.ctime = Timespec::now();
        self.put_inode(ino, &i)?;
        self.mark_orphan(ino)
    }

    /// Is `anc` the directory `d` or one of its ancestors?
    fn is_ancestor(&mut self, anc: u64, mut d: u64) -> FsResult<bool> {
        for _ in 0..100_000 {
            if d == anc {
                return Ok(true);
            }
            if d == ROOT_INO {
                return Ok(false);
            }
            d = self.inode(d)?.parent;
        }
        Err(self.corrupt(d, "directory parent chain does not reach the root"))
    }

    /// rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE. Returns an inode whose last
    /// link went away when an existing target was replaced.
    pub fn rename(
        &mut self,
        p1: u64,
        n1: &[u8],
        p2: u64,
        n2: &[u8],
        flags: u32,
    ) -> FsResult<Option<u64>> {
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if (noreplace && exchange) || flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0
        {
            return err(libc::EINVAL);
        }
        self.dir_inode(p1)?;
        self.dir_inode(p2)?;
        if is_dot(n1) || is_dot(n2) {
            return err(libc::EBUSY);
        }
        check_name(n1)?;
        check_name(n2)?;
        let (s_slot, src) = match self.find_entry(p1, n1)? {
            None => return err(libc::ENOENT),
            Some(x) => x,
        };
        let dst = self.find_entry(p2, n2)?;
        if p1 == p2 && n1 == n2 {
            return Ok(None);
        }
        let src_dir = src.ftype == libc::S_IFDIR;
        if exchange {
            let (d_slot, dst) = match dst {
                None => return err(libc::ENOENT),
                Some(x) => x,
            };
            let dst_dir = dst.ftype == libc::S_IFDIR;
            if (src_dir && self.is_ancestor(src.ino, p2)?)
                || (dst_dir && self.is_ancestor(dst.ino, p1)?)
            {
                return err(libc::EINVAL);
            }
            // Point each name at the other inode; sequence numbers stay put.
            let now = Timespec::now();
            for (parent, slot, entry, other) in [(p1, s_slot, &src, &dst), (p2, d_slot, &dst, &src)]
            {
                let e = DirEntry {
                    ino: other.ino,
                    ftype: other.ftype,
                    link: entry.link,
                    name: entry.name.clone(),
                };
                self.put(
                    Key::new(parent, KIND_DIRINDEX, entry.link),
                    DirEntry {
                        link: slot,
                        ..e.clone()
                    }
                    .encode(),
                )?;
                self.put(Key::new(parent, KIND_DIRENT, slot), e.encode())?;
            }
            if p1 != p2 && src_dir != dst_dir {
                let (gain, lose) = if src_dir { (p2, p1) } else { (p1, p2) };
                let mut g = self.inode(gain)?;
                g.nlink += 1;
                self.put_inode(gain, &g)?;
                let mut l = self.inode(lose)?;
                l.nlink = l.nlink.saturating_sub(1);
                self.put_inode(lose, &l)?;
            }
            for (ino, newp) in [(src.ino, p2), (dst.ino, p1)] {
                let mut i = self.inode(ino)?;
                if i.is_dir() {
                    i.parent = newp;
                }
                i.ctime = now;
                self.put_inode(ino, &i)?;
            }
            for p in [p1, p2] {
                let mut pi = self.inode(p)?;
                pi.mtime = now;
                pi.ctime = now;
                self.put_inode(p, &pi)?;
            }
            return Ok(None);
        }
        if src_dir && self.is_ancestor(src.ino, p2)? {
            return err(libc::EINVAL);
        }
        let mut freed = None;
        if let Some((d_slot, dst)) = dst {
            if noreplace {
                return err(libc::EEXIST);
            }
            if dst.ino == src.ino {
                return Ok(None);
            }
            let dst_dir = dst.ftype == libc::S_IFDIR;
            if src_dir && !dst_dir {
                return err(libc::ENOTDIR);
            }
            if !src_dir && dst_dir {
                return err(libc::EISDIR);
            }
            if dst_dir && !self.dir_is_empty(dst.ino)? {
                return err(libc::ENOTEMPTY);
            }
            let mut pi = self.inode(p2)?;
            self.remove_entry(p2, &mut pi, d_slot, &dst)?;
            self.put_inode(p2, &pi)?;
            if dst_dir {
                self.orphan_dir(dst.ino)?;
                freed = Some(dst.ino);
            } else {
                freed = self.drop_link(dst.ino)?;
            }
        }
        let mut pi1 = self.inode(p1)?;
        self.remove_entry(p1, &mut pi1, s_slot, &src)?;
        self.put_inode(p1, &pi1)?;
        let mut pi2 = self.inode(p2)?;
        self.add_entry(p2, &mut pi2, n2, src.ino, src.ftype)?;
        self.put_inode(p2, &pi2)?;
        let mut i = self.inode(src.ino)?;
        if i.is_dir() {
            i.parent = p2;
        }
        i.ctime = Timespec::now();
        self.put_inode(src.ino, &i)?;
        Ok(freed)
    }

    /// Entries after cookie `offset` ("." is 1, ".." is 2), at most `max` of them.
    pub fn readdir(&mut self, ino: u64, offset: u64, max: usize) -> FsResult<Vec<DirListEntry>> {
        let d = self.dir_inode(ino)?;
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirListEntry {
                ino,
                offset: 1,
                ftype: libc::S_IFDIR,
                name: b".".to_vec(),
            });
        }
        if offset < 2 {
            out.push(DirListEntry {
                ino: if ino == ROOT_INO { ROOT_INO } else { d.parent },
                offset: 2,
                ftype: libc::S_IFDIR,
                name: b"..".to_vec(),
            });
        }
        let from = offset.max(2) + 1;
        tree::range(
            self.st,
            *self.root,
            &Key::new(ino, KIND_DIRINDEX, from),
            &Key::new(ino, KIND_DIRINDEX, u64::MAX),
            &mut |k, v| {
                if out.len() >= max {
                    return false;
                }
                if let Some(e) = DirEntry::decode(v) {
                    out.push(DirListEntry {
                        ino: e.ino,
                        offset: k.off,
                        ftype: e.ftype,
                        name: e.name,
                    });
                }
                true
            },
        )?;
        out.truncate(max);
        Ok(out)
    }
}
