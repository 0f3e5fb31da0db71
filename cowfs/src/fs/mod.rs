//! POSIX semantics on one tree root: inodes, directories, file data, xattrs. An
//! `FsTree` borrows a branch's root pointer and inode counter for one operation;
//! it knows nothing of branches, commits or the kernel.

mod cut_steps;
pub mod dir;
pub mod file;
pub mod free_steps;
pub mod inode;
pub mod items;
mod logged;
pub mod readplan;
pub mod xattr;
mod xattr_value;

use crate::btree::{tree, Key, NodeStore};
use crate::store::{BlockAddr, StoreError};
pub use items::{Inode, Timespec};

/// The root directory's inode number (as FUSE expects).
pub const ROOT_INO: u64 = 1;

/// Errors of filesystem operations: a POSIX code, or a storage failure below.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Posix(i32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Posix(e) => *e,
            FsError::Store(s) => s.errno(),
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

pub(crate) fn err<T>(e: i32) -> FsResult<T> {
    Err(FsError::Posix(e))
}

/// What getattr returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    /// 512-byte units, as stat(2) counts them.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    /// Full st_mode: file type and permission bits.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
}

impl Attr {
    pub fn from_inode(ino: u64, i: &Inode) -> Attr {
        let blocks = if i.blocks > 0 {
            i.blocks * 8
        } else if i.is_reg() || i.file_type() == libc::S_IFLNK {
            i.size.div_ceil(512)
        } else {
            0
        };
        Attr {
            ino,
            size: i.size,
            blocks,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.crtime,
            mode: i.mode,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev,
        }
    }
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// Owner of a new inode (the caller's fsuid/fsgid, or as the setgid bit dictates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Changes requested by setattr; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timespec>,
    pub mtime: Option<Timespec>,
    pub ctime: Option<Timespec>,
}

/// One branch's filesystem, borrowed for one operation.
pub struct FsTree<'a> {
    pub st: &'a mut NodeStore,
    pub root: &'a mut BlockAddr,
    pub next_ino: &'a mut u64,
}

impl FsTree<'_> {
    pub(crate) fn get(&mut self, key: &Key) -> FsResult<Option<Vec<u8>>> {
        Ok(tree::get(self.st, *self.root, key)?)
    }
    pub(crate) fn put(&mut self, key: Key, val: Vec<u8>) -> FsResult<()> {
        *self.root = tree::insert(self.st, *self.root, key, val)?;
        Ok(())
    }
    pub(crate) fn del(&mut self, key: &Key) -> FsResult<Option<Vec<u8>>> {
        let (r, old) = tree::remove(self.st, *self.root, key)?;
        *self.root = r;
        Ok(old)
    }
    pub(crate) fn scan(&mut self, from: Key, to: Key) -> FsResult<Vec<(Key, Vec<u8>)>> {
        Ok(tree::collect(self.st, *self.root, &from, &to)?)
    }
    pub(crate) fn corrupt(&self, ino: u64, what: &str) -> FsError {
        log::error!("{}: inode {ino}: {what}", self.st.dev.name().display());
        FsError::Store(StoreError::Corrupt {
            pool: self.st.dev.name(),
            block: *self.root,
            why: format!("inode {ino}: {what}"),
        })
    }
}
