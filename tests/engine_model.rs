//! Model test (issue 2, check 1): thousands of random filesystem and branch
//! operations against a simple in-memory model, one model per branch (a branch or
//! snapshot clones its parent's model). Every operation's result (value or errno)
//! must match the model's; the touched branch is compared with its model after every
//! step, every branch periodically and after drop + reopen, and fsck must be clean.
//! A separate test runs the same operations on a tiny pool so ENOSPC paths fire.
//! Failures print the seed and the operation index.

#[path = "support/dump.rs"]
mod dump;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use cowfs::fs::file::SeekWhence;
use cowfs::fs::items::{XATTR_LIST_MAX, XATTR_SIZE_MAX};
use cowfs::fs::{Owner, SetAttr, ROOT_INO};
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::MemDevice;
use dump::{dump_branch, first_difference, Content, Entry, Tree};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;
const BS: u64 = 4096;

#[derive(Clone, Debug)]
enum Kind {
    Reg(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, u64>),
    Symlink(Vec<u8>),
    Special(u32, u64),
}

#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    perm: u32,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Directories: the directory that names it.
    parent: u64,
}

/// One branch's filesystem as the model sees it.
#[derive(Clone, Debug)]
struct Model {
    nodes: BTreeMap<u64, Node>,
    next_ino: u64,
    /// The pool's inode floor, shared by every branch's model: a new inode takes
    /// the greater of its branch's counter and this, and raises both past it.
    floor: Rc<Cell<u64>>,
}

type R = Result<u64, i32>;

impl Model {
    fn new(root_perm: u32) -> Model {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                kind: Kind::Dir(BTreeMap::new()),
                perm: root_perm,
                xattrs: BTreeMap::new(),
                parent: ROOT_INO,
            },
        );
        Model {
            nodes,
            next_ino: ROOT_INO + 1,
            floor: Rc::new(Cell::new(ROOT_INO + 1)),
        }
    }

    fn dir(&self, ino: u64) -> Result<&BTreeMap<Vec<u8>, u64>, i32> {
        match self.nodes.get(&ino).map(|n| &n.kind) {
            None => Err(libc::ENOENT),
            Some(Kind::Dir(d)) => Ok(d),
            Some(_) => Err(libc::ENOTDIR),
        }
    }
    fn dir_mut(&mut self, ino: u64) -> &mut BTreeMap<Vec<u8>, u64> {
        match &mut self.nodes.get_mut(&ino).expect("dir").kind {
            Kind::Dir(d) => d,
            _ => panic!("model: {ino} is not a directory"),
        }
    }
    /// Every inode, the directories, the regular files: what random operations
    /// pick from.
    fn inodes_dirs_files(&self) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
        let all: Vec<u64> = self.nodes.keys().copied().collect();
        let dirs = all.iter().copied().filter(|i| self.is_dir(*i)).collect();
        let files = all
            .iter()
            .copied()
            .filter(|i| matches!(self.nodes[i].kind, Kind::Reg(_)))
            .collect();
        (all, dirs, files)
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(self.nodes.get(&ino).map(|n| &n.kind), Some(Kind::Dir(_)))
    }
    fn ftype(&self, ino: u64) -> u32 {
        match &self.nodes[&ino].kind {
            Kind::Reg(_) => libc::S_IFREG,
            Kind::Dir(_) => libc::S_IFDIR,
            Kind::Symlink(_) => libc::S_IFLNK,
            Kind::Special(t, _) => *t,
        }
    }
    /// Regular file data (the checks of file_inode: EISDIR, EINVAL).
    fn file(&mut self, ino: u64) -> Result<&mut Vec<u8>, i32> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            None => Err(libc::ENOENT),
            Some(Kind::Reg(d)) => Ok(d),
            Some(Kind::Dir(_)) => Err(libc::EISDIR),
            Some(_) => Err(libc::EINVAL),
        }
    }
    fn is_ancestor(&self, anc: u64, mut d: u64) -> bool {
        loop {
            if d == anc {
                return true;
            }
            if d == ROOT_INO {
                return false;
            }
            d = self.nodes[&d].parent;
        }
    }
    fn names_of(&self, ino: u64) -> u32 {
        self.nodes
            .values()
            .filter_map(|n| match &n.kind {
                Kind::Dir(d) => Some(d.values().filter(|c| **c == ino).count() as u32),
                _ => None,
            })
            .sum()
    }
    fn nlink(&self, ino: u64) -> u32 {
        match &self.nodes[&ino].kind {
            Kind::Dir(d) => 2 + d.values().filter(|c| self.is_dir(**c)).count() as u32,
            _ => self.names_of(ino),
        }
    }
    /// Drop a name of a non-directory; the inode goes when its last name does.
    fn drop_name(&mut self, ino: u64) {
        if self.names_of(ino) == 0 {
            self.nodes.remove(&ino);
        }
    }

    fn tree(&self) -> Tree {
        let mut out = Tree::new();
        let mut stack = vec![(Vec::new(), ROOT_INO)];
        while let Some((path, ino)) = stack.pop() {
            let n = &self.nodes[&ino];
            let (content, size) = match &n.kind {
                Kind::Reg(d) => (Content::File(d.clone()), d.len() as u64),
                Kind::Dir(d) => {
                    for (name, c) in d {
                        let mut p = path.clone();
                        if !p.is_empty() {
                            p.push(b'/');
                        }
                        p.extend_from_slice(name);
                        stack.push((p, *c));
                    }
                    (Content::Dir, 0)
                }
                Kind::Symlink(t) => (Content::Symlink(t.clone()), t.len() as u64),
                Kind::Special(_, rdev) => (Content::Special(*rdev), 0),
            };
            out.insert(
                path,
                Entry {
                    ino,
                    ftype: self.ftype(ino),
                    perm: n.perm,
                    nlink: self.nlink(ino),
                    size,
                    content,
                    xattrs: n.xattrs.clone(),
                },
            );
        }
        out
    }
}

fn check_name(name: &[u8]) -> Result<(), i32> {
    if name.len() > 255 {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(())
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// File data or an xattr value; printed as its length and first bytes.
#[derive(Clone)]
struct Bytes(Vec<u8>);

impl std::ops::Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "<{} bytes: {:?}..>",
            self.0.len(),
            &self.0[..self.0.len().min(4)]
        )
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        dir: u64,
        name: Vec<u8>,
        ftype: u32,
        perm: u32,
        rdev: u64,
    },
    Mkdir {
        dir: u64,
        name: Vec<u8>,
        perm: u32,
    },
    Symlink {
        dir: u64,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    Write {
        ino: u64,
        off: u64,
        data: Bytes,
    },
    Truncate {
        ino: u64,
        size: u64,
    },
    Chmod {
        ino: u64,
        perm: u32,
    },
    Punch {
        ino: u64,
        off: u64,
        len: u64,
    },
    Fallocate {
        ino: u64,
        off: u64,
        len: u64,
        keep_size: bool,
    },
    ZeroRange {
        ino: u64,
        off: u64,
        len: u64,
        keep_size: bool,
    },
    Clone {
        src: u64,
        soff: u64,
        dst: u64,
        doff: u64,
        len: u64,
    },
    Link {
        ino: u64,
        dir: u64,
        name: Vec<u8>,
    },
    Unlink {
        dir: u64,
        name: Vec<u8>,
    },
    Rmdir {
        dir: u64,
        name: Vec<u8>,
    },
    Rename {
        p1: u64,
        n1: Vec<u8>,
        p2: u64,
        n2: Vec<u8>,
        flags: u32,
    },
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Bytes,
        flags: u32,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
    },
    /// Read a range and compare with the model's bytes (and SEEK_DATA/HOLE bounds).
    Read {
        ino: u64,
        off: u64,
        len: usize,
    },
}

impl Op {
    fn mutates(&self) -> bool {
        !matches!(self, Op::Read { .. })
    }
}

/// The model's answer to `op`; on success the model is changed accordingly.
fn model_apply(m: &mut Model, op: &Op) -> R {
    match op {
        Op::Create {
            dir,
            name,
            ftype,
            perm,
            rdev,
        } => create(m, *dir, name, *ftype, *perm, *rdev, None),
        Op::Mkdir { dir, name, perm } => create(m, *dir, name, libc::S_IFDIR, *perm, 0, None),
        Op::Symlink { dir, name, target } => {
            create(m, *dir, name, libc::S_IFLNK, 0o777, 0, Some(target))
        }
        Op::Write { ino, off, data } => {
            let f = m.file(*ino)?;
            let end = (*off as usize) + data.len();
            if f.len() < end {
                f.resize(end, 0);
            }
            f[*off as usize..end].copy_from_slice(data);
            Ok(data.len() as u64)
        }
        Op::Truncate { ino, size } => {
            if m.is_dir(*ino) {
                return Err(libc::EISDIR);
            }
            m.file(*ino)?.resize(*size as usize, 0);
            Ok(0)
        }
        Op::Chmod { ino, perm } => {
            m.nodes.get_mut(ino).ok_or(libc::ENOENT)?.perm = *perm;
            Ok(0)
        }
        Op::Punch { ino, off, len } => {
            let f = m.file(*ino)?;
            let end = (off + len).min(f.len() as u64);
            if *off < end {
                f[*off as usize..end as usize].fill(0);
            }
            Ok(0)
        }
        Op::Fallocate {
            ino,
            off,
            len,
            keep_size,
        } => {
            let f = m.file(*ino)?;
            if *len == 0 {
                return Err(libc::EINVAL);
            }
            if !keep_size && off + len > f.len() as u64 {
                f.resize((off + len) as usize, 0);
            }
            Ok(0)
        }
        Op::ZeroRange {
            ino,
            off,
            len,
            keep_size,
        } => {
            let f = m.file(*ino)?;
            if *len == 0 {
                return Err(libc::EINVAL);
            }
            if !keep_size && off + len > f.len() as u64 {
                f.resize((off + len) as usize, 0);
            }
            let end = (off + len).min(f.len() as u64);
            if *off < end {
                f[*off as usize..end as usize].fill(0);
            }
            Ok(0)
        }
        Op::Clone {
            src,
            soff,
            dst,
            doff,
            len,
        } => {
            let s = m.file(*src)?.clone();
            m.file(*dst)?;
            if *soff >= s.len() as u64 || *len == 0 {
                return Ok(0);
            }
            let len = (*len).min(s.len() as u64 - soff);
            if src == dst && *soff < doff + len && *doff < soff + len {
                return Err(libc::EINVAL);
            }
            let d = m.file(*dst)?;
            let end = (doff + len) as usize;
            if d.len() < end {
                d.resize(end, 0);
            }
            d[*doff as usize..end].copy_from_slice(&s[*soff as usize..(soff + len) as usize]);
            Ok(len)
        }
        Op::Link { ino, dir, name } => {
            if m.is_dir(*ino) {
                return Err(libc::EPERM);
            }
            let d = m.dir(*dir)?;
            if is_dot(name) {
                return Err(libc::EEXIST);
            }
            check_name(name)?;
            if d.contains_key(name) {
                return Err(libc::EEXIST);
            }
            m.dir_mut(*dir).insert(name.clone(), *ino);
            Ok(0)
        }
        Op::Unlink { dir, name } => {
            let d = m.dir(*dir)?;
            if is_dot(name) {
                return Err(libc::EISDIR);
            }
            check_name(name)?;
            let c = *d.get(name).ok_or(libc::ENOENT)?;
            if m.is_dir(c) {
                return Err(libc::EISDIR);
            }
            m.dir_mut(*dir).remove(name);
            m.drop_name(c);
            Ok(0)
        }
        Op::Rmdir { dir, name } => {
            let d = m.dir(*dir)?;
            if name == b"." {
                return Err(libc::EINVAL);
            }
            if name == b".." {
                return Err(libc::ENOTEMPTY);
            }
            check_name(name)?;
            let c = *d.get(name).ok_or(libc::ENOENT)?;
            match &m.nodes[&c].kind {
                Kind::Dir(cd) if !cd.is_empty() => return Err(libc::ENOTEMPTY),
                Kind::Dir(_) => {}
                _ => return Err(libc::ENOTDIR),
            }
            m.dir_mut(*dir).remove(name);
            m.nodes.remove(&c);
            Ok(0)
        }
        Op::Rename {
            p1,
            n1,
            p2,
            n2,
            flags,
        } => rename(m, *p1, n1, *p2, n2, *flags),
        Op::SetXattr {
            ino,
            name,
            value,
            flags,
        } => {
            if name.is_empty() || name.len() > 255 {
                return Err(libc::ERANGE);
            }
            let n = m.nodes.get_mut(ino).ok_or(libc::ENOENT)?;
            if value.len() > XATTR_SIZE_MAX {
                return Err(libc::E2BIG);
            }
            let exists = n.xattrs.contains_key(name);
            if exists && flags & XATTR_CREATE != 0 {
                return Err(libc::EEXIST);
            }
            if !exists && flags & XATTR_REPLACE != 0 {
                return Err(libc::ENODATA);
            }
            let list: usize = n.xattrs.keys().map(|k| k.len() + 1).sum();
            if !exists && list + name.len() + 1 > XATTR_LIST_MAX {
                return Err(libc::ENOSPC);
            }
            n.xattrs.insert(name.clone(), value.0.clone());
            Ok(0)
        }
        Op::RemoveXattr { ino, name } => {
            if name.is_empty() || name.len() > 255 {
                return Err(libc::ERANGE);
            }
            let n = m.nodes.get_mut(ino).ok_or(libc::ENOENT)?;
            n.xattrs.remove(name).map(|_| 0).ok_or(libc::ENODATA)
        }
        Op::Read { ino, off, len } => {
            let f = m.file(*ino)?;
            let end = (*off as usize + len).min(f.len());
            Ok(end.saturating_sub(*off as usize) as u64)
        }
    }
}

fn create(
    m: &mut Model,
    dir: u64,
    name: &[u8],
    ftype: u32,
    perm: u32,
    rdev: u64,
    target: Option<&Vec<u8>>,
) -> R {
    let d = m.dir(dir)?;
    if is_dot(name) {
        return Err(libc::EEXIST);
    }
    check_name(name)?;
    if d.contains_key(name) {
        return Err(libc::EEXIST);
    }
    let ino = m.next_ino.max(m.floor.get());
    m.next_ino = ino + 1;
    m.floor.set(m.floor.get().max(m.next_ino));
    let kind = match ftype {
        libc::S_IFREG => Kind::Reg(Vec::new()),
        libc::S_IFDIR => Kind::Dir(BTreeMap::new()),
        libc::S_IFLNK => Kind::Symlink(target.cloned().unwrap_or_default()),
        t => Kind::Special(t, rdev),
    };
    m.nodes.insert(
        ino,
        Node {
            kind,
            perm,
            xattrs: BTreeMap::new(),
            parent: dir,
        },
    );
    m.dir_mut(dir).insert(name.to_vec(), ino);
    Ok(ino)
}

fn rename(m: &mut Model, p1: u64, n1: &[u8], p2: u64, n2: &[u8], flags: u32) -> R {
    let noreplace = flags & libc::RENAME_NOREPLACE != 0;
    let exchange = flags & libc::RENAME_EXCHANGE != 0;
    if noreplace && exchange {
        return Err(libc::EINVAL);
    }
    m.dir(p1)?;
    m.dir(p2)?;
    if is_dot(n1) || is_dot(n2) {
        return Err(libc::EBUSY);
    }
    check_name(n1)?;
    check_name(n2)?;
    let src = *m.dir(p1)?.get(n1).ok_or(libc::ENOENT)?;
    let dst = m.dir(p2)?.get(n2).copied();
    if p1 == p2 && n1 == n2 {
        return Ok(0);
    }
    let src_dir = m.is_dir(src);
    if exchange {
        let dst = dst.ok_or(libc::ENOENT)?;
        let dst_dir = m.is_dir(dst);
        if (src_dir && m.is_ancestor(src, p2)) || (dst_dir && m.is_ancestor(dst, p1)) {
            return Err(libc::EINVAL);
        }
        m.dir_mut(p1).insert(n1.to_vec(), dst);
        m.dir_mut(p2).insert(n2.to_vec(), src);
        if src_dir {
            m.nodes.get_mut(&src).expect("src").parent = p2;
        }
        if dst_dir {
            m.nodes.get_mut(&dst).expect("dst").parent = p1;
        }
        return Ok(0);
    }
    if src_dir && m.is_ancestor(src, p2) {
        return Err(libc::EINVAL);
    }
    if let Some(dst) = dst {
        if noreplace {
            return Err(libc::EEXIST);
        }
        if dst == src {
            return Ok(0);
        }
        let dst_dir = m.is_dir(dst);
        if src_dir && !dst_dir {
            return Err(libc::ENOTDIR);
        }
        if !src_dir && dst_dir {
            return Err(libc::EISDIR);
        }
        if dst_dir && !m.dir(dst)?.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        m.dir_mut(p2).remove(n2);
        if dst_dir {
            m.nodes.remove(&dst);
        } else {
            m.drop_name(dst);
        }
    }
    m.dir_mut(p1).remove(n1);
    m.dir_mut(p2).insert(n2.to_vec(), src);
    if src_dir {
        m.nodes.get_mut(&src).expect("src").parent = p2;
    }
    Ok(0)
}

/// The pool's answer to `op` on branch `b`.
fn pool_apply(pool: &Pool, b: u64, op: &Op, model: &Model) -> R {
    let owner = Owner { uid: 7, gid: 8 };
    let e = |e: cowfs::fs::FsError| e.errno();
    match op {
        Op::Create {
            dir,
            name,
            ftype,
            perm,
            rdev,
        } => pool
            .mknod(b, *dir, name, ftype | perm, *rdev, owner)
            .map(|a| a.ino)
            .map_err(e),
        Op::Mkdir { dir, name, perm } => pool
            .mkdir(b, *dir, name, *perm, owner)
            .map(|a| a.ino)
            .map_err(e),
        Op::Symlink { dir, name, target } => pool
            .symlink(b, *dir, name, target, owner)
            .map(|a| a.ino)
            .map_err(e),
        Op::Write { ino, off, data } => pool
            .write_file(b, *ino, *off, data)
            .map(|n| n as u64)
            .map_err(e),
        Op::Truncate { ino, size } => {
            let s = SetAttr {
                size: Some(*size),
                ..Default::default()
            };
            pool.setattr(b, *ino, &s).map(|_| 0).map_err(e)
        }
        Op::Chmod { ino, perm } => {
            let s = SetAttr {
                mode: Some(*perm),
                ..Default::default()
            };
            pool.setattr(b, *ino, &s).map(|_| 0).map_err(e)
        }
        Op::Punch { ino, off, len } => pool.punch_hole(b, *ino, *off, *len).map(|_| 0).map_err(e),
        Op::Fallocate {
            ino,
            off,
            len,
            keep_size,
        } => pool
            .fallocate(b, *ino, *off, *len, *keep_size)
            .map(|_| 0)
            .map_err(e),
        Op::ZeroRange {
            ino,
            off,
            len,
            keep_size,
        } => pool
            .zero_range(b, *ino, *off, *len, *keep_size)
            .map(|_| 0)
            .map_err(e),
        Op::Clone {
            src,
            soff,
            dst,
            doff,
            len,
        } => pool
            .clone_range(b, *src, *soff, *dst, *doff, *len)
            .map_err(e),
        Op::Link { ino, dir, name } => pool.link(b, *ino, *dir, name).map(|_| 0).map_err(e),
        Op::Unlink { dir, name } => pool.unlink(b, *dir, name).map(|_| 0).map_err(e),
        Op::Rmdir { dir, name } => pool.rmdir(b, *dir, name).map(|_| 0).map_err(e),
        Op::Rename {
            p1,
            n1,
            p2,
            n2,
            flags,
        } => pool
            .rename(b, *p1, n1, *p2, n2, *flags)
            .map(|_| 0)
            .map_err(e),
        Op::SetXattr {
            ino,
            name,
            value,
            flags,
        } => pool
            .setxattr(b, *ino, name, value, *flags)
            .map(|_| 0)
            .map_err(e),
        Op::RemoveXattr { ino, name } => pool.removexattr(b, *ino, name).map(|_| 0).map_err(e),
        Op::Read { ino, off, len } => {
            let got = pool.read_file(b, *ino, *off, *len).map_err(e)?;
            let Some(Kind::Reg(data)) = model.nodes.get(ino).map(|n| &n.kind) else {
                return Ok(got.len() as u64);
            };
            let s = (*off as usize).min(data.len());
            let t = (*off as usize + len).min(data.len());
            assert!(got == data[s..t], "read of {len} bytes at {off} differs");
            // SEEK_DATA / SEEK_HOLE must never skip data.
            if (*off as usize) < data.len() {
                if let Ok(d) = pool.seek(b, *ino, *off, SeekWhence::Data) {
                    assert!(
                        data[*off as usize..d as usize].iter().all(|x| *x == 0),
                        "SEEK_DATA from {off} to {d} skips data"
                    );
                } else {
                    assert!(
                        data[*off as usize..].iter().all(|x| *x == 0),
                        "ENXIO with data ahead"
                    );
                }
                let h = pool.seek(b, *ino, *off, SeekWhence::Hole).map_err(e)?;
                assert!(
                    h as usize <= data.len() && h >= *off,
                    "SEEK_HOLE {h} out of range"
                );
            }
            Ok(got.len() as u64)
        }
    }
}

/// A branch or snapshot as the test tracks it.
#[derive(Clone)]
struct Br {
    id: u64,
    snapshot: bool,
    model: Model,
}

struct Gen<'a> {
    rng: &'a mut SmallRng,
}

impl Gen<'_> {
    fn name(&mut self) -> Vec<u8> {
        let r = self.rng.gen_range(0..100);
        if r == 0 {
            vec![b'L'; 256]
        } else if r == 1 {
            vec![b'l'; 255]
        } else if r == 2 {
            b"..".to_vec()
        } else {
            vec![b"abcdefg"[self.rng.gen_range(0..7)]]
        }
    }
    fn data(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // Runs of one byte, so holes, zeros and patterns all occur.
        let mut i = 0;
        while i < len {
            let run = self.rng.gen_range(1..2000).min(len - i);
            let byte = if self.rng.gen_bool(0.2) {
                0
            } else {
                self.rng.gen()
            };
            v[i..i + run].fill(byte);
            i += run;
        }
        v
    }
    fn offset(&mut self, size: u64) -> u64 {
        match self.rng.gen_range(0..10) {
            0 => 0,
            1..=3 => self.rng.gen_range(0..=size),
            4 => (self.rng.gen_range(0..=size) / BS) * BS,
            5 => self.rng.gen_range(0..700_000),
            6 => (self.rng.gen_range(0..150) as u64) * BS,
            _ => self.rng.gen_range(0..=size + 5000),
        }
    }
    fn len(&mut self) -> u64 {
        match self.rng.gen_range(0..10) {
            0 => 0,
            1..=4 => self.rng.gen_range(1..3000),
            5..=6 => self.rng.gen_range(1..64) * BS,
            7 => self.rng.gen_range(1..200_000),
            _ => self.rng.gen_range(1..30_000),
        }
    }

    /// A random operation on `m`, mostly on things that exist.
    fn op(&mut self, m: &Model, big: bool) -> Op {
        let (all, dirs, files) = m.inodes_dirs_files();
        let rng = &mut *self.rng;
        let any = all[rng.gen_range(0..all.len())];
        let dir = dirs[rng.gen_range(0..dirs.len())];
        let dir2 = dirs[rng.gen_range(0..dirs.len())];
        // Data operations on a symlink are unreachable through the kernel (it never
        // opens one), so only directories and special files stand in for files.
        let not_link: Vec<u64> = all
            .iter()
            .copied()
            .filter(|i| !matches!(m.nodes[i].kind, Kind::Symlink(_)))
            .collect();
        let odd = not_link[rng.gen_range(0..not_link.len())];
        let file = if files.is_empty() || rng.gen_bool(0.03) {
            odd
        } else {
            files[rng.gen_range(0..files.len())]
        };
        let file2 = if files.is_empty() {
            odd
        } else {
            files[rng.gen_range(0..files.len())]
        };
        let size = match &m.nodes[&file].kind {
            Kind::Reg(d) => d.len() as u64,
            _ => 0,
        };
        let size2 = match &m.nodes[&file2].kind {
            Kind::Reg(d) => d.len() as u64,
            _ => 0,
        };
        // An existing name in `dir` if it has one.
        let existing = |rng: &mut SmallRng, d: u64| -> Option<Vec<u8>> {
            let names: Vec<&Vec<u8>> = m.dir(d).ok()?.keys().collect();
            (!names.is_empty()).then(|| names[rng.gen_range(0..names.len())].clone())
        };
        let xname = |rng: &mut SmallRng| -> Vec<u8> {
            match rng.gen_range(0..40) {
                0 => Vec::new(),
                1 => vec![b'x'; 256],
                _ => format!("user.{}", rng.gen_range(0..5)).into_bytes(),
            }
        };
        match rng.gen_range(0..100) {
            0..=9 => {
                let (ftype, rdev) = match rng.gen_range(0..10) {
                    0 => (libc::S_IFIFO, 0),
                    1 => (libc::S_IFSOCK, 0),
                    2 => (libc::S_IFCHR, rng.gen_range(1..1000)),
                    3 => (libc::S_IFBLK, rng.gen_range(1..1000)),
                    _ => (libc::S_IFREG, 0),
                };
                Op::Create {
                    dir,
                    name: self.name(),
                    ftype,
                    perm: self.rng.gen_range(0..0o7777),
                    rdev,
                }
            }
            10..=15 => Op::Mkdir {
                dir,
                name: self.name(),
                perm: self.rng.gen_range(0..0o7777),
            },
            16..=18 => {
                let n = self.rng.gen_range(1..300);
                Op::Symlink {
                    dir,
                    name: self.name(),
                    target: vec![b't'; n],
                }
            }
            19..=38 => {
                let off = self.offset(size);
                let len = if big && self.rng.gen_bool(0.3) {
                    self.rng.gen_range(100_000..600_000)
                } else {
                    self.len().max(1) as usize
                };
                Op::Write {
                    ino: file,
                    off,
                    data: Bytes(self.data(len)),
                }
            }
            39..=43 => {
                let size = self.offset(size);
                Op::Truncate { ino: file, size }
            }
            44..=45 => Op::Chmod {
                ino: any,
                perm: rng.gen_range(0..0o7777),
            },
            46..=49 => {
                let off = self.offset(size);
                let len = self.len();
                Op::Punch {
                    ino: file,
                    off,
                    len,
                }
            }
            50..=52 => {
                let off = self.offset(size);
                let len = self.len();
                let keep_size = self.rng.gen();
                if self.rng.gen() {
                    Op::ZeroRange {
                        ino: file,
                        off,
                        len,
                        keep_size,
                    }
                } else {
                    Op::Fallocate {
                        ino: file,
                        off,
                        len,
                        keep_size,
                    }
                }
            }
            53..=58 => {
                let aligned = self.rng.gen_bool(0.6);
                let (soff, doff, len) = if aligned {
                    (
                        (self.offset(size2) / BS) * BS,
                        (self.offset(size) / BS) * BS,
                        if self.rng.gen_bool(0.3) {
                            size2 + 10
                        } else {
                            self.rng.gen_range(1..40) * BS
                        },
                    )
                } else {
                    (self.offset(size2), self.offset(size), self.len())
                };
                Op::Clone {
                    src: file2,
                    soff,
                    dst: file,
                    doff,
                    len,
                }
            }
            59..=62 => Op::Link {
                ino: file,
                dir,
                name: self.name(),
            },
            63..=68 => {
                let name = existing(self.rng, dir).unwrap_or_else(|| self.name());
                Op::Unlink { dir, name }
            }
            69..=71 => {
                let name = existing(self.rng, dir).unwrap_or_else(|| self.name());
                Op::Rmdir { dir, name }
            }
            72..=81 => {
                let n1 = existing(self.rng, dir).unwrap_or_else(|| self.name());
                let n2 = if self.rng.gen_bool(0.4) {
                    existing(self.rng, dir2).unwrap_or_else(|| self.name())
                } else {
                    self.name()
                };
                let flags = match self.rng.gen_range(0..6) {
                    0 => libc::RENAME_NOREPLACE,
                    1 => libc::RENAME_EXCHANGE,
                    _ => 0,
                };
                Op::Rename {
                    p1: dir,
                    n1,
                    p2: dir2,
                    n2,
                    flags,
                }
            }
            82..=87 => {
                // Some values too large for one tree item (chunked), and some
                // too large for the kernel.
                let vlen = if self.rng.gen_bool(0.05) {
                    [2100, 9000, XATTR_SIZE_MAX, XATTR_SIZE_MAX + 1][self.rng.gen_range(0..4)]
                } else {
                    self.rng.gen_range(0..300)
                };
                Op::SetXattr {
                    ino: any,
                    name: xname(self.rng),
                    value: Bytes(self.data(vlen)),
                    flags: self.rng.gen_range(0..3),
                }
            }
            88..=90 => Op::RemoveXattr {
                ino: any,
                name: xname(self.rng),
            },
            _ => {
                let off = self.offset(size);
                let len = self.len() as usize;
                Op::Read {
                    ino: file,
                    off,
                    len,
                }
            }
        }
    }
}

fn opts(capacity: u64) -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(capacity),
        // Small limits so automatic commits and cache eviction happen mid-run.
        cache_bytes: 512 << 10,
        dirty_limit_bytes: 256 << 10,
        root_uid: 0,
        root_gid: 0,
    }
}

fn check_branch(pool: &Pool, name: &str, br: &Br, ctx: &str) {
    let got = dump_branch(pool, br.id).unwrap_or_else(|e| panic!("{ctx}: walk of '{name}': {e}"));
    let want = br.model.tree();
    assert!(
        got == want,
        "{ctx}: branch '{name}' differs from its model: {}",
        first_difference(&want, &got)
    );
}

fn check_all(pool: &Pool, brs: &BTreeMap<String, Br>, ctx: &str) {
    let mut listed: Vec<String> = pool.list().into_iter().map(|i| i.name).collect();
    listed.sort();
    let want: Vec<String> = brs.keys().cloned().collect();
    assert_eq!(listed, want, "{ctx}: branch list");
    for (name, br) in brs {
        assert_eq!(
            pool.branch_id(name).ok(),
            Some(br.id),
            "{ctx}: id of '{name}'"
        );
        assert_eq!(
            pool.is_read_only(br.id).ok(),
            Some(br.snapshot),
            "{ctx}: read-only flag of '{name}'"
        );
        check_branch(pool, name, br, ctx);
    }
}

fn fsck_clean(pool: &Pool, ctx: &str) {
    let r = pool
        .fsck(&FsckOptions::default())
        .unwrap_or_else(|e| panic!("{ctx}: fsck failed: {e}"));
    assert!(r.is_clean(), "{ctx}: fsck:\n{r}");
}

struct Run {
    seed: u64,
    steps: usize,
    capacity: u64,
    /// Larger writes (the ENOSPC run).
    big: bool,
}

/// Outcome counts, to show the run exercised what it claims.
#[derive(Default, Debug)]
struct Stats {
    ok: usize,
    errors: BTreeMap<i32, usize>,
    enospc: usize,
    branch_ops: usize,
    reopens: usize,
}

fn run(cfg: &Run) -> Stats {
    let seed = cfg.seed;
    let mut rng = SmallRng::seed_from_u64(seed);
    let dev = MemDevice::new();
    let o = opts(cfg.capacity);
    let mut pool = Some(Pool::create_on(Arc::new(dev.clone()), &o).expect("create"));
    let mut brs: BTreeMap<String, Br> = BTreeMap::new();
    let main_id = pool
        .as_ref()
        .expect("pool")
        .branch_id("main")
        .expect("main");
    let root_perm = pool
        .as_ref()
        .expect("pool")
        .getattr(main_id, ROOT_INO)
        .expect("root")
        .mode
        & 0o7777;
    brs.insert(
        "main".into(),
        Br {
            id: main_id,
            snapshot: false,
            model: Model::new(root_perm),
        },
    );
    let mut stats = Stats::default();
    let mut name_seq = 0;
    for step in 0..cfg.steps {
        let ctx = format!("seed {seed} op {step}");
        let pl = pool.as_ref().expect("pool");
        let r = rng.gen_range(0..1000);
        if r < 40 {
            // Branch-level operation.
            stats.branch_ops += 1;
            let names: Vec<String> = brs.keys().cloned().collect();
            let pick = names[rng.gen_range(0..names.len())].clone();
            match rng.gen_range(0..6) {
                0 | 1 => {
                    name_seq += 1;
                    let new = format!("b{name_seq}");
                    let snap = rng.gen_bool(0.4);
                    let id = if snap {
                        pl.snapshot_create(&new, &pick)
                    } else {
                        pl.branch_create(&new, &pick)
                    }
                    .unwrap_or_else(|e| panic!("{ctx}: create '{new}' from '{pick}': {e}"));
                    let model = brs[&pick].model.clone();
                    brs.insert(
                        new,
                        Br {
                            id,
                            snapshot: snap,
                            model,
                        },
                    );
                }
                2 => {
                    // Deleting is fine as long as one writable branch remains.
                    let writable = brs.values().filter(|b| !b.snapshot).count();
                    if brs.len() > 1 && (brs[&pick].snapshot || writable > 1) {
                        pl.branch_delete(&pick)
                            .unwrap_or_else(|e| panic!("{ctx}: delete '{pick}': {e}"));
                        brs.remove(&pick);
                    }
                }
                3 => {
                    name_seq += 1;
                    let new = format!("r{name_seq}");
                    pl.branch_rename(&pick, &new)
                        .unwrap_or_else(|e| panic!("{ctx}: rename '{pick}': {e}"));
                    let br = brs.remove(&pick).expect("branch");
                    brs.insert(new.clone(), br);
                    // Renaming onto an existing name must fail and change nothing.
                    let others: Vec<String> = brs.keys().filter(|n| **n != new).cloned().collect();
                    if let Some(other) = others.first() {
                        let e = pl.branch_rename(&new, other).err().map(|e| e.errno());
                        assert_eq!(e, Some(libc::EEXIST), "{ctx}: rename onto '{other}'");
                    }
                }
                4 => {
                    pl.commit().unwrap_or_else(|e| panic!("{ctx}: commit: {e}"));
                }
                _ => {
                    // Drop and reopen: everything survives.
                    stats.reopens += 1;
                    drop(pool.take());
                    pool = Some(
                        Pool::open_on(Arc::new(dev.clone()), &o)
                            .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}")),
                    );
                    // A pool opened again takes its floor from the branches it
                    // has: those deleted are forgotten.
                    let floor = brs.values().map(|b| b.model.next_ino).max();
                    if let (Some(f), Some(b)) = (floor, brs.values().next()) {
                        b.model.floor.set(f);
                    }
                    check_all(
                        pool.as_ref().expect("pool"),
                        &brs,
                        &format!("{ctx} (after reopen)"),
                    );
                }
            }
            continue;
        }
        // Mostly writable branches; snapshots must refuse every change (EROFS).
        let names: Vec<String> = brs
            .iter()
            .filter(|(_, b)| !b.snapshot || rng.gen_bool(0.1))
            .map(|(n, _)| n.clone())
            .collect();
        let bname = names[rng.gen_range(0..names.len())].clone();
        let op = {
            let mut g = Gen { rng: &mut rng };
            g.op(&brs[&bname].model, cfg.big)
        };
        let br = brs.get_mut(&bname).expect("branch");
        // The floor is shared, not cloned: keep its value too.
        let before = cfg.big.then(|| (br.model.clone(), br.model.floor.get()));
        let want = if br.snapshot && op.mutates() {
            Err(libc::EROFS)
        } else {
            model_apply(&mut br.model, &op)
        };
        let got = pool_apply(pl, br.id, &op, &br.model);
        let short = format!("{op:?}");
        let short = &short;
        if let (Err(libc::ENOSPC), Some((before, floor))) = (got, before) {
            // A full pool refuses the operation and must leave the branch as it was.
            stats.enospc += 1;
            br.model = before;
            br.model.floor.set(floor);
            check_branch(pl, &bname, br, &format!("{ctx}: after ENOSPC from {short}"));
            // Free space again: delete the largest file of some writable branch.
            free_some(pl, &mut brs, &mut rng, &ctx);
            continue;
        }
        assert_eq!(got, want, "{ctx}: on '{bname}': {short}");
        match got {
            Ok(_) => stats.ok += 1,
            Err(e) => *stats.errors.entry(e).or_insert(0) += 1,
        }
        // The touched branch every few steps (and after every op on a large file or
        // a failure), every branch now and then.
        let br = &brs[&bname];
        if step % 3 == 0 || got.is_err() {
            check_branch(pl, &bname, br, &format!("{ctx}: after {short}"));
        }
        if step % 97 == 0 {
            check_all(pl, &brs, &ctx);
        }
        if step % 1000 == 999 {
            fsck_clean(pl, &ctx);
        }
    }
    let ctx = format!("seed {seed} end");
    let pl = pool.as_ref().expect("pool");
    check_all(pl, &brs, &ctx);
    fsck_clean(pl, &ctx);
    drop(pool.take());
    let pool = Pool::open_on(Arc::new(dev.clone()), &o).expect("final reopen");
    check_all(&pool, &brs, &format!("{ctx} (after reopen)"));
    fsck_clean(&pool, &ctx);
    // Deleting every branch returns the pool to its metadata skeleton: fsck clean.
    for name in brs.keys() {
        pool.branch_delete(name)
            .unwrap_or_else(|e| panic!("{ctx}: delete {name}: {e}"));
    }
    fsck_clean(&pool, &format!("{ctx}, all branches deleted"));
    stats
}

/// Unlink the largest regular file of a writable branch (its blocks may still be held
/// by snapshots; then delete a snapshot too).
fn free_some(pool: &Pool, brs: &mut BTreeMap<String, Br>, rng: &mut SmallRng, ctx: &str) {
    let snaps: Vec<String> = brs
        .iter()
        .filter(|(_, b)| b.snapshot)
        .map(|(n, _)| n.clone())
        .collect();
    if !snaps.is_empty() && rng.gen_bool(0.5) {
        let s = &snaps[rng.gen_range(0..snaps.len())];
        pool.branch_delete(s)
            .unwrap_or_else(|e| panic!("{ctx}: delete '{s}' to free space: {e}"));
        brs.remove(s);
        return;
    }
    for (name, br) in brs.iter_mut().filter(|(_, b)| !b.snapshot) {
        let mut best: Option<(usize, u64, Vec<u8>)> = None;
        for (dino, n) in &br.model.nodes {
            if let Kind::Dir(d) = &n.kind {
                for (cname, c) in d {
                    if let Kind::Reg(data) = &br.model.nodes[c].kind {
                        if best.as_ref().is_none_or(|b| data.len() > b.0) {
                            best = Some((data.len(), *dino, cname.clone()));
                        }
                    }
                }
            }
        }
        if let Some((_, dir, fname)) = best {
            let op = Op::Unlink { dir, name: fname };
            let want = model_apply(&mut br.model, &op);
            let got = pool_apply(pool, br.id, &op, &br.model);
            assert_eq!(got, want, "{ctx}: freeing space in '{name}': {op:?}");
            check_branch(pool, name, br, &format!("{ctx}: after freeing space"));
            return;
        }
    }
}

fn report(name: &str, seed: u64, s: &Stats) {
    println!(
        "{name} seed {seed}: {} ok, errors by errno {:?}, {} ENOSPC, {} branch ops, {} reopens",
        s.ok, s.errors, s.enospc, s.branch_ops, s.reopens
    );
}

#[test]
fn random_ops_match_model() {
    for seed in [1u64, 2, 3, 4] {
        let s = run(&Run {
            seed,
            steps: 2500,
            capacity: 1 << 30,
            big: false,
        });
        report("model", seed, &s);
        assert!(s.ok > 1000 && s.branch_ops > 50 && s.reopens > 3, "{s:?}");
        assert_eq!(s.enospc, 0);
    }
}

#[test]
fn random_ops_on_a_full_pool() {
    for seed in [11u64, 12] {
        let s = run(&Run {
            seed,
            steps: 1500,
            // 1200 blocks: a few large writes fill it.
            capacity: 1200 * BS,
            big: true,
        });
        report("enospc", seed, &s);
        assert!(s.enospc > 0, "the small pool never filled up: {s:?}");
    }
}

/// Operations that fill a pool's metadata: creates with long names, large xattrs,
/// long symlink targets, links and renames across directories.
fn metadata_op(rng: &mut SmallRng, m: &Model, seq: &mut u64) -> Op {
    let (all, dirs, files) = m.inodes_dirs_files();
    let dir = dirs[rng.gen_range(0..dirs.len())];
    let dir2 = dirs[rng.gen_range(0..dirs.len())];
    *seq += 1;
    let name = format!("{}-{}", "n".repeat(rng.gen_range(1..200)), seq).into_bytes();
    let existing = |rng: &mut SmallRng, d: u64| -> Option<Vec<u8>> {
        let names: Vec<&Vec<u8>> = m.dir(d).ok()?.keys().collect();
        (!names.is_empty()).then(|| names[rng.gen_range(0..names.len())].clone())
    };
    match rng.gen_range(0..7) {
        0 => Op::Create {
            dir,
            name,
            ftype: libc::S_IFREG,
            perm: 0o644,
            rdev: 0,
        },
        1 => Op::Mkdir {
            dir,
            name,
            perm: 0o755,
        },
        2 => Op::Symlink {
            dir,
            name,
            target: vec![b't'; rng.gen_range(1..4000)],
        },
        3 if !files.is_empty() => Op::Link {
            ino: files[rng.gen_range(0..files.len())],
            dir,
            name,
        },
        4 => Op::Rename {
            p1: dir,
            n1: existing(rng, dir).unwrap_or_else(|| name.clone()),
            p2: dir2,
            n2: if rng.gen_bool(0.3) {
                existing(rng, dir2).unwrap_or(name)
            } else {
                name
            },
            flags: if rng.gen_bool(0.2) {
                libc::RENAME_EXCHANGE
            } else {
                0
            },
        },
        _ => Op::SetXattr {
            ino: all[rng.gen_range(0..all.len())],
            name: format!("user.{}", rng.gen_range(0..6)).into_bytes(),
            value: Bytes(vec![rng.gen(); rng.gen_range(500..1950)]),
            flags: 0,
        },
    }
}

/// The name of an operation's kind (`Create`, `SetXattr`...).
fn kind_of(op: &Op) -> String {
    let s = format!("{op:?}");
    s.split([' ', '{']).next().unwrap_or_default().to_string()
}

/// An operation for a message: its first 200 characters (names and symlink
/// targets can be thousands of bytes).
fn brief(op: &Op) -> String {
    format!("{op:?}").chars().take(200).collect()
}

/// Every filesystem operation either applies completely or leaves no trace when the
/// pool runs out of room. A small pool is filled with a mix of metadata and data
/// operations (a snapshot shares the tree now and then, so changes copy shared
/// nodes); whenever one returns ENOSPC the branch must equal its model from before
/// the operation (a later create must get the same inode number too), and fsck must
/// be clean. Before operations were undone as a whole, a create could leave its
/// inode item without a directory entry, or an entry without its inode.
#[test]
fn every_operation_is_all_or_nothing_on_a_full_pool() {
    // ENOSPC by operation kind over both seeds: every kind must have met it.
    let mut all_seeds: BTreeMap<String, usize> = BTreeMap::new();
    for seed in [21u64, 22] {
        let mut rng = SmallRng::seed_from_u64(seed);
        let o = opts(700 * BS);
        let pool = Pool::create_on(Arc::new(MemDevice::new()), &o).expect("create");
        let b = pool.branch_id("main").expect("main");
        let root_perm = pool.getattr(b, ROOT_INO).expect("root").mode & 0o7777;
        let mut brs = BTreeMap::new();
        brs.insert(
            "main".to_string(),
            Br {
                id: b,
                snapshot: false,
                model: Model::new(root_perm),
            },
        );
        let mut full: BTreeMap<String, usize> = BTreeMap::new();
        let mut seq = 0;
        let mut enospc = 0;
        for step in 0..4000 {
            let ctx = format!("seed {seed} op {step}");
            if step % 300 == 299 {
                // A snapshot makes the next changes copy shared nodes; the one
                // before it goes, so that deleting files frees blocks again.
                brs.retain(|n, _| n == "main" || pool.branch_delete(n).is_err());
                if pool.snapshot_create("snap", "main").is_ok() {
                    let model = brs["main"].model.clone();
                    let id = pool.branch_id("snap").expect("snap");
                    brs.insert(
                        "snap".into(),
                        Br {
                            id,
                            snapshot: true,
                            model,
                        },
                    );
                }
            }
            let br = brs.get_mut("main").expect("main");
            // Phases of mostly metadata (data allocation stops well before tree
            // changes do, so data operations would hit ENOSPC first) and of a mix.
            let meta = if (step / 250) % 2 == 0 { 0.95 } else { 0.5 };
            let op = if rng.gen_bool(meta) {
                metadata_op(&mut rng, &br.model, &mut seq)
            } else {
                Gen { rng: &mut rng }.op(&br.model, false)
            };
            let (before, floor) = (br.model.clone(), br.model.floor.get());
            let want = model_apply(&mut br.model, &op);
            let got = pool_apply(&pool, b, &op, &br.model);
            if got == Err(libc::ENOSPC) && want != Err(libc::ENOSPC) {
                enospc += 1;
                *full.entry(kind_of(&op)).or_default() += 1;
                br.model = before;
                br.model.floor.set(floor);
                let ctx = format!("{ctx}: after ENOSPC from {}", brief(&op));
                check_branch(&pool, "main", br, &ctx);
                if enospc % 40 == 0 {
                    fsck_clean(&pool, &ctx);
                }
                if enospc % 8 == 0 {
                    free_some(&pool, &mut brs, &mut rng, &ctx);
                    pool.commit().expect("commit");
                }
                continue;
            }
            assert_eq!(got, want, "{ctx}: {}", brief(&op));
            if step % 50 == 0 {
                check_all(&pool, &brs, &ctx);
            }
        }
        println!("seed {seed}: {enospc} ENOSPC by kind {full:?}");
        for (kind, n) in full {
            *all_seeds.entry(kind).or_default() += n;
        }
        check_all(&pool, &brs, &format!("seed {seed} end"));
        fsck_clean(&pool, &format!("seed {seed} end"));
    }
    // (Renames may use the delete slop, so they seldom run out of room; a change
    // that finds no room while freed blocks wait commits and runs again, so only
    // a pool full after a commit refuses it.)
    let kinds = [
        "Create",
        "Mkdir",
        "Symlink",
        "Link",
        "SetXattr",
        "Write",
        "ZeroRange",
    ];
    for kind in kinds {
        assert!(
            all_seeds.get(kind).copied().unwrap_or(0) > 0,
            "{kind} never hit ENOSPC: {all_seeds:?}"
        );
    }
}
