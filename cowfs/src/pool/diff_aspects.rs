//! What changed in a modified `diff` entry: content, size, mode, owner, times,
//! xattrs, symlink target, or the name now leading to another file. Computed from
//! the two inode items and the changed data items the tree walk found; values are
//! read only where items can differ while what they hold does not (xattrs, the
//! block that holds a file's old end, blocks rewritten with the same checksum).

use super::Engine;
use crate::fs::items::Inode;
use crate::fs::{FsResult, FsTree};
use crate::store::{BlockAddr, BLOCK_SIZE};

/// One aspect of a modified entry. The order is the order they are listed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Aspect {
    /// Regular files: bytes below the smaller of the two sizes differ (`ranges`
    /// says where, block granular).
    Content,
    /// Regular files: the size differs.
    Size,
    /// Permission bits (mode & 0o7777).
    Mode,
    /// Owner or group.
    Owner,
    /// Modification time, for everything but directories. Not the change time
    /// (it moves with every change, a new hard link elsewhere included, so it adds
    /// nothing) nor the access time (reads move it). A directory's times follow
    /// its entries, which are listed themselves.
    Times,
    /// The extended attributes (names or values) differ.
    Xattrs,
    /// Symlinks: the target differs.
    Target,
    /// The name leads to another file (or a file of another type) than before; the
    /// two files' contents are not compared (only symlink targets are).
    Replaced,
}

impl Aspect {
    /// The protocol's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Aspect::Content => "content",
            Aspect::Size => "size",
            Aspect::Mode => "mode",
            Aspect::Owner => "owner",
            Aspect::Times => "times",
            Aspect::Xattrs => "xattrs",
            Aspect::Target => "target",
            Aspect::Replaced => "replaced",
        }
    }
}

/// The two sides' tree roots, for reading values.
#[derive(Clone, Copy)]
pub(super) struct Roots {
    pub a: BlockAddr,
    pub b: BlockAddr,
}

/// Run a read-only filesystem call on the tree at `root` (a diff side).
fn read<T>(
    e: &mut Engine,
    root: BlockAddr,
    f: impl FnOnce(&mut FsTree) -> FsResult<T>,
) -> FsResult<T> {
    let mut root = root;
    // Reads never allocate inode numbers.
    let mut next_ino = 0;
    f(&mut FsTree {
        st: &mut e.st,
        root: &mut root,
        next_ino: &mut next_ino,
    })
}

/// The aspects of a file present on both sides (`a`, `b`: its inode items).
/// `data`: byte ranges of its data items that differ; `xattr_items`: whether any
/// of its xattr items differ.
pub(super) fn inode_aspects(
    e: &mut Engine,
    roots: Roots,
    ino: u64,
    (a, b): (&Inode, &Inode),
    data: &[(u64, u64)],
    xattr_items: bool,
) -> FsResult<Vec<Aspect>> {
    let mut out = Vec::new();
    if b.is_reg() && content_differs(e, roots, ino, (a, b), data)? {
        out.push(Aspect::Content);
    }
    if b.is_reg() && a.size != b.size {
        out.push(Aspect::Size);
    }
    if a.mode & 0o7777 != b.mode & 0o7777 {
        out.push(Aspect::Mode);
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        out.push(Aspect::Owner);
    }
    if !b.is_dir() && a.mtime != b.mtime {
        out.push(Aspect::Times);
    }
    if xattr_items && xattrs_differ(e, roots, ino)? {
        out.push(Aspect::Xattrs);
    }
    if b.file_type() == libc::S_IFLNK && !data.is_empty() {
        out.push(Aspect::Target);
    }
    Ok(out)
}

/// Whether bytes below the smaller size differ. A changed data item below it
/// says so, except when the only one is the block holding the smaller size's end
/// and the size changed: an append into that block, a truncate cutting it, or a
/// small file moving out of its inline item rewrites it with its first bytes
/// unchanged. Those bytes (less than a block per side) are compared.
fn content_differs(
    e: &mut Engine,
    roots: Roots,
    ino: u64,
    (a, b): (&Inode, &Inode),
    data: &[(u64, u64)],
) -> FsResult<bool> {
    let common = a.size.min(b.size);
    let Some(lowest) = data.iter().map(|r| r.0).filter(|off| *off < common).min() else {
        return Ok(false);
    };
    let bs = BLOCK_SIZE as u64;
    let last_start = (common - 1) / bs * bs;
    if a.size == b.size || lowest < last_start {
        return Ok(true);
    }
    let len = (common - last_start) as usize;
    let old = read(e, roots.a, |fs| fs.read_data(ino, a, last_start, len))?;
    let new = read(e, roots.b, |fs| fs.read_data(ino, b, last_start, len))?;
    Ok(old != new)
}

/// Whether block `blk` of file `ino` (inode items `a`, `b`) holds other bytes on
/// the two sides (within each side's size).
pub(super) fn block_differs(
    e: &mut Engine,
    roots: Roots,
    ino: u64,
    (a, b): (&Inode, &Inode),
    blk: u64,
) -> FsResult<bool> {
    let (off, len) = (blk * BLOCK_SIZE as u64, BLOCK_SIZE);
    let old = read(e, roots.a, |fs| fs.read_data(ino, a, off, len))?;
    let new = read(e, roots.b, |fs| fs.read_data(ino, b, off, len))?;
    Ok(old != new)
}

/// Whether the file's xattrs differ by name or value (items differ also when a
/// large value is set again with the same bytes: its chunks get a new id).
fn xattrs_differ(e: &mut Engine, roots: Roots, ino: u64) -> FsResult<bool> {
    let old = read(e, roots.a, |fs| fs.xattr_values(ino))?;
    let new = read(e, roots.b, |fs| fs.xattr_values(ino))?;
    Ok(old != new)
}

/// For a name that leads to symlink `ino_a` in `a` and symlink `ino_b` in `b`:
/// whether their targets differ.
pub(super) fn targets_differ(
    e: &mut Engine,
    roots: Roots,
    ino_a: u64,
    ino_b: u64,
) -> FsResult<bool> {
    let old = read(e, roots.a, |fs| fs.readlink(ino_a))?;
    let new = read(e, roots.b, |fs| fs.readlink(ino_b))?;
    Ok(old != new)
}
