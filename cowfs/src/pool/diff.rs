//! `diff A B`: the paths added, removed and modified between two branches or
//! snapshots, with the byte ranges that changed in files. The tree-level difference
//! comes from `btree::diff`, which skips shared subtrees; names are then resolved
//! only for what changed (directory parents by their parent pointer, files by a
//! breadth-first search of the directories that stops once all are found). Each
//! modified entry says what changed in it (`diff_aspects`). The whole diff
//! takes the pool lock in bounded steps on pinned trees (`diff_steps`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

pub use super::diff_aspects::Aspect;
use super::diff_aspects::{block_differs, inode_aspects, targets_differ, Roots};
use super::diff_steps::Steps;
use super::{BranchId, Pool, PoolError, PoolResult};
use crate::btree::{diff::Walk, tree, Key};
use crate::fs::items::{
    DirEntry, Extent, Inode, EXTENT_UNWRITTEN, KIND_DIRENT, KIND_EXTENT, KIND_INLINE, KIND_INODE,
    KIND_XATTR, KIND_XATTR_CHUNK,
};
use crate::fs::ROOT_INO;
use crate::store::{BlockAddr, StoreResult, BLOCK_SIZE};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathChangeKind {
    Added,
    Removed,
    Modified,
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathChange {
    pub path: Vec<u8>,
    pub change: PathChangeKind,
    /// S_IFMT bits.
    pub file_type: u32,
    /// Modified regular files: sorted, merged (offset, length) ranges that differ.
    pub ranges: Vec<(u64, u64)>,
    /// Modified entries: what changed, sorted, never empty. Added and removed
    /// entries: empty.
    pub aspects: Vec<Aspect>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffResult {
    pub entries: Vec<PathChange>,
    /// Tree nodes the shared-subtree-skipping walk visited.
    pub nodes_visited: u64,
}

#[derive(Default)]
struct InodeDelta {
    a: Option<Inode>,
    b: Option<Inode>,
    /// The inline data item changed: whether each side has one, and the longer.
    inline: Option<([bool; 2], u64)>,
    /// Changed extent items on each side: (file offset, extent).
    extents: [Vec<(u64, Extent)>; 2],
    xattrs: bool,
}

impl InodeDelta {
    /// Byte ranges of the blocks whose mapping differs between the changed extent
    /// items of the two sides; apart, the blocks whose mapping differs while
    /// their checksums say they may hold the same bytes (only reading them can
    /// tell): rewritten with the same checksum, or zeros (unwritten, or written
    /// zeros) on one side and a hole or zeros on the other. Extents of one file
    /// never overlap, so a block an unchanged item maps cannot be covered by a
    /// changed item on either side.
    fn extent_ranges(&self) -> (Vec<(u64, u64)>, Vec<u64>) {
        let bs = BLOCK_SIZE as u64;
        let map = |side: &[(u64, Extent)]| {
            let mut m = BTreeMap::new();
            for (off, x) in side {
                for (i, crc) in x.crcs.iter().enumerate() {
                    m.insert(off / bs + i as u64, (x.phys + i as u64, *crc, x.flags));
                }
            }
            m
        };
        let zero_crc = crc32fast::hash(&[0u8; BLOCK_SIZE]);
        let zeros = |m: Option<&(BlockAddr, u32, u32)>| {
            m.is_none_or(|&(_, crc, flags)| flags & EXTENT_UNWRITTEN != 0 || crc == zero_crc)
        };
        let (ma, mb) = (map(&self.extents[0]), map(&self.extents[1]));
        let (mut out, mut maybe_same) = (Vec::new(), Vec::new());
        let only_b = mb.keys().filter(|k| !ma.contains_key(k));
        for blk in ma.keys().chain(only_b) {
            let (x, y) = (ma.get(blk), mb.get(blk));
            let same_crc = matches!((x, y), (Some(x), Some(y)) if (x.1, x.2) == (y.1, y.2));
            if x == y {
                continue;
            } else if same_crc || (zeros(x) && zeros(y)) {
                maybe_same.push(*blk);
            } else {
                out.push((blk * bs, bs));
            }
        }
        (out, maybe_same)
    }
}

impl Pool {
    /// The difference between branches or snapshots `a` and `b` (what turns `a`
    /// into `b`), sorted by path.
    pub fn diff(&self, a: &str, b: &str) -> PoolResult<DiffResult> {
        self.diff_expecting(a, None, b, None, &mut || {})
    }

    /// `diff`, calling `pause` each time it releases the pool lock between two
    /// of its steps (tests act on the pool there, mid-diff).
    pub fn diff_pausing(
        &self,
        a: &str,
        b: &str,
        pause: &mut dyn FnMut(),
    ) -> PoolResult<DiffResult> {
        self.diff_expecting(a, None, b, None, pause)
    }

    /// `diff`, only if `a` and `b` still name the branches `ia` and `ib`
    /// (`BranchNotFound` naming the one that does not). For callers that checked
    /// permissions on those branches by name: a rename or delete in between must
    /// not make the walk read another branch than the one checked.
    pub fn diff_ids(&self, a: &str, ia: BranchId, b: &str, ib: BranchId) -> PoolResult<DiffResult> {
        self.diff_expecting(a, Some(ia), b, Some(ib), &mut || {})
    }

    fn diff_expecting(
        &self,
        a: &str,
        want_a: Option<BranchId>,
        b: &str,
        want_b: Option<BranchId>,
        pause: &mut dyn FnMut(),
    ) -> PoolResult<DiffResult> {
        let s = &mut Steps::new(self, pause);
        let (ra, rb) = s.pin_roots(|e| {
            let id = |name: &str, want: Option<BranchId>| {
                let id = e.id_of(name)?;
                if want.is_some_and(|w| w != id) {
                    return Err(PoolError::BranchNotFound(name.into()));
                }
                Ok(id)
            };
            let ia = id(a, want_a)?;
            let ib = id(b, want_b)?;
            Ok((e.branches[&ia].root, e.branches[&ib].root))
        })?;
        let mut inodes: BTreeMap<u64, InodeDelta> = BTreeMap::new();
        let mut dirents: Vec<(u64, Option<DirEntry>, Option<DirEntry>)> = Vec::new();
        let mut walk = Walk::new(&mut s.engine().st, ra, rb)?;
        while !walk.step(&mut s.engine().st, &mut |k, va, vb| {
            collect(k, va, vb, &mut inodes, &mut dirents)
        })? {}
        let nodes_visited = walk.visited();
        let roots = Roots { a: ra, b: rb };
        let mut out = Vec::new();
        let mut paths_a = Paths::new(ra);
        let mut paths_b = Paths::new(rb);
        // Paths in `b` whose entry changed (added, or leading to another file):
        // listed once, for that; a change of the file they lead to is not listed
        // again under them.
        let mut entry_changed: HashSet<Vec<u8>> = HashSet::new();
        for (dir, ea, eb) in dirents {
            match (ea, eb) {
                (Some(x), Some(y)) if x.name == y.name => {
                    if x.ino != y.ino || x.ftype != y.ftype {
                        let path = paths_b.child(s, dir, &y.name)?;
                        let mut aspects = vec![Aspect::Replaced];
                        let links = x.ftype == libc::S_IFLNK && y.ftype == libc::S_IFLNK;
                        if links && targets_differ(s.engine(), roots, x.ino, y.ino)? {
                            aspects.insert(0, Aspect::Target);
                        }
                        entry_changed.insert(path.clone());
                        out.push(PathChange {
                            path,
                            change: PathChangeKind::Modified,
                            file_type: y.ftype,
                            ranges: Vec::new(),
                            aspects,
                        });
                    }
                }
                (ea, eb) => {
                    if let Some(x) = ea {
                        out.push(PathChange {
                            path: paths_a.child(s, dir, &x.name)?,
                            change: PathChangeKind::Removed,
                            file_type: x.ftype,
                            ranges: Vec::new(),
                            aspects: Vec::new(),
                        });
                    }
                    if let Some(y) = eb {
                        let path = paths_b.child(s, dir, &y.name)?;
                        entry_changed.insert(path.clone());
                        out.push(PathChange {
                            path,
                            change: PathChangeKind::Added,
                            file_type: y.ftype,
                            ranges: Vec::new(),
                            aspects: Vec::new(),
                        });
                    }
                }
            }
        }
        // Inodes present on both sides whose content or attributes changed.
        let mut modified = Vec::new();
        for (ino, mut d) in inodes {
            if d.a.is_none() && d.b.is_none() {
                // Data or xattrs changed under an inode item that did not: a
                // write in the same clock tick as the item's last change leaves
                // its times (and a rewrite its size) as they were. The item is
                // then the same on both sides, or missing on both.
                let key = Key::new(ino, KIND_INODE, 0);
                d.a = tree::get(&mut s.engine().st, ra, &key)?.and_then(|v| Inode::decode(&v));
                d.b = d.a.clone();
            }
            let (Some(ia), Some(ib)) = (&d.a, &d.b) else {
                continue;
            };
            let bs = BLOCK_SIZE as u64;
            let (mut data, mut maybe_same) = d.extent_ranges();
            match d.inline {
                Some(([true, true], len)) => data.push((0, len)),
                Some(_) => {
                    // A small file moved out of its inline item into block 0 (or
                    // back): the block's mapping says nothing, its bytes do.
                    data.retain(|r| r.0 != 0);
                    maybe_same.retain(|blk| *blk != 0);
                    maybe_same.push(0);
                }
                None => {}
            }
            for blk in maybe_same {
                if block_differs(s.engine(), roots, ino, (ia, ib), blk)? {
                    data.push((blk * bs, bs));
                }
            }
            let aspects = inode_aspects(s.engine(), roots, ino, (ia, ib), &data, d.xattrs)?;
            if aspects.is_empty() {
                continue;
            }
            let ranges = if ib.is_reg() {
                if ia.size != ib.size {
                    let (lo, hi) = (ia.size.min(ib.size), ia.size.max(ib.size));
                    data.push((lo, hi - lo));
                }
                merge(data)
            } else {
                Vec::new()
            };
            modified.push((ino, ib.file_type(), ranges, aspects));
        }
        let want: Vec<u64> = modified.iter().map(|m| m.0).collect();
        let found = paths_b.find_all(s, &want)?;
        for (ino, file_type, ranges, aspects) in modified {
            // At every name of a hard-linked file (each leads to the changed file),
            // but not under a name listed already as added or replaced.
            for path in found.get(&ino).into_iter().flatten() {
                if entry_changed.contains(path) {
                    continue;
                }
                out.push(PathChange {
                    path: path.clone(),
                    change: PathChangeKind::Modified,
                    file_type,
                    ranges: ranges.clone(),
                    aspects: aspects.clone(),
                });
            }
        }
        out.sort_by(|x, y| (&x.path, x.change as u8).cmp(&(&y.path, y.change as u8)));
        Ok(DiffResult {
            entries: out,
            nodes_visited,
        })
    }
}

fn collect(
    k: &Key,
    va: Option<&[u8]>,
    vb: Option<&[u8]>,
    inodes: &mut BTreeMap<u64, InodeDelta>,
    dirents: &mut Vec<(u64, Option<DirEntry>, Option<DirEntry>)>,
) {
    match k.kind {
        KIND_INODE => {
            let d = inodes.entry(k.id).or_default();
            d.a = va.and_then(Inode::decode);
            d.b = vb.and_then(Inode::decode);
        }
        KIND_DIRENT => dirents.push((
            k.id,
            va.and_then(DirEntry::decode),
            vb.and_then(DirEntry::decode),
        )),
        KIND_EXTENT => {
            let d = inodes.entry(k.id).or_default();
            for (side, v) in [va, vb].into_iter().enumerate() {
                if let Some(x) = v.and_then(Extent::decode) {
                    d.extents[side].push((k.off, x));
                }
            }
        }
        KIND_INLINE => {
            let len = va.map_or(0, <[u8]>::len).max(vb.map_or(0, <[u8]>::len)) as u64;
            inodes.entry(k.id).or_default().inline = Some(([va.is_some(), vb.is_some()], len));
        }
        // A large value's chunks are part of its xattr.
        KIND_XATTR | KIND_XATTR_CHUNK => inodes.entry(k.id).or_default().xattrs = true,
        _ => {}
    }
}

/// Sort and merge overlapping or touching ranges.
fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.retain(|x| x.1 > 0);
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (off, len) in r {
        match out.last_mut() {
            Some(last) if off <= last.0 + last.1 => {
                let end = (last.0 + last.1).max(off + len);
                last.1 = end - last.0;
            }
            _ => out.push((off, len)),
        }
    }
    out
}

/// Path names in one tree, resolved on demand and cached.
struct Paths {
    root: BlockAddr,
    dirs: HashMap<u64, Vec<u8>>,
}

impl Paths {
    fn new(root: BlockAddr) -> Paths {
        let mut dirs = HashMap::new();
        dirs.insert(ROOT_INO, b"/".to_vec());
        Paths { root, dirs }
    }

    /// The entries of directory `dir` (one unit of work).
    fn entries(&self, s: &mut Steps, dir: u64) -> StoreResult<Vec<DirEntry>> {
        let mut out = Vec::new();
        tree::range(
            &mut s.engine().st,
            self.root,
            &Key::new(dir, KIND_DIRENT, 0),
            &Key::new(dir, KIND_DIRENT, u64::MAX),
            &mut |_, v| {
                out.extend(DirEntry::decode(v));
                true
            },
        )?;
        Ok(out)
    }

    /// Path of directory `ino`, following parent pointers up to the root.
    fn dir(&mut self, s: &mut Steps, ino: u64) -> StoreResult<Vec<u8>> {
        if let Some(p) = self.dirs.get(&ino) {
            return Ok(p.clone());
        }
        let parent = tree::get(&mut s.engine().st, self.root, &Key::new(ino, KIND_INODE, 0))?
            .and_then(|v| Inode::decode(&v))
            .map(|i| i.parent)
            .filter(|p| *p != 0 && *p != ino);
        let path = match parent {
            Some(p) => {
                // Parent chains are acyclic (rename refuses loops); depth is bounded
                // by the tree's inode count.
                let ppath = self.dir(s, p)?;
                let name = self
                    .entries(s, p)?
                    .into_iter()
                    .find(|d| d.ino == ino)
                    .map(|d| d.name)
                    .unwrap_or_else(|| format!("#{ino}").into_bytes());
                join(&ppath, &name)
            }
            None => format!("/#{ino}").into_bytes(),
        };
        self.dirs.insert(ino, path.clone());
        Ok(path)
    }

    fn child(&mut self, s: &mut Steps, dir: u64, name: &[u8]) -> StoreResult<Vec<u8>> {
        Ok(join(&self.dir(s, dir)?, name))
    }

    /// Paths of the wanted inodes: a directory's by its parent pointers; the
    /// names of others by walking directories breadth first until every one has
    /// as many names as its link count (all names of a hard-linked file).
    fn find_all(&mut self, s: &mut Steps, want: &[u64]) -> StoreResult<HashMap<u64, Vec<Vec<u8>>>> {
        let mut found: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        // Inode -> names still to find.
        let mut left: HashMap<u64, u32> = HashMap::new();
        for &ino in want {
            let inode = tree::get(&mut s.engine().st, self.root, &Key::new(ino, KIND_INODE, 0))?
                .and_then(|v| Inode::decode(&v));
            match inode {
                Some(i) if i.is_dir() => {
                    found.insert(ino, vec![self.dir(s, ino)?]);
                }
                // An unlinked file still open has no name to find.
                Some(i) if i.nlink > 0 => {
                    left.insert(ino, i.nlink);
                }
                _ => {}
            }
        }
        let mut queue = VecDeque::from([ROOT_INO]);
        let mut seen = HashSet::from([ROOT_INO]);
        while !left.is_empty() {
            let Some(dir) = queue.pop_front() else {
                break;
            };
            let dpath = self.dir(s, dir)?;
            for d in self.entries(s, dir)? {
                if let Some(n) = left.get_mut(&d.ino) {
                    found.entry(d.ino).or_default().push(join(&dpath, &d.name));
                    *n -= 1;
                    if *n == 0 {
                        left.remove(&d.ino);
                    }
                }
                if d.ftype == libc::S_IFDIR && seen.insert(d.ino) {
                    self.dirs.insert(d.ino, join(&dpath, &d.name));
                    queue.push_back(d.ino);
                }
            }
        }
        Ok(found)
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Owner;
    use crate::pool::PoolOptions;
    use crate::store::device::MemDevice;
    use std::sync::Arc;

    #[test]
    fn paths_and_ranges() {
        let opts = PoolOptions {
            capacity_bytes: Some(256 << 20),
            ..Default::default()
        };
        let p = Pool::create_on(Arc::new(MemDevice::new()), &opts).unwrap();
        let m = p.branch_id("main").unwrap();
        let o = Owner::default();
        let d = p.mkdir(m, 1, b"d", 0o755, o).unwrap();
        let f = p
            .mknod(m, d.ino, b"f", libc::S_IFREG | 0o644, 0, o)
            .unwrap();
        let g = p.mknod(m, 1, b"g", libc::S_IFREG | 0o644, 0, o).unwrap();
        p.write_file(m, f.ino, 0, &vec![1u8; 1 << 20]).unwrap();
        p.write_file(m, g.ino, 0, b"small").unwrap();
        p.snapshot_create("s", "main").unwrap();
        p.write_file(m, f.ino, 8192, &[2u8; 100]).unwrap();
        p.unlink(m, 1, b"g").unwrap();
        p.mknod(m, d.ino, b"new", libc::S_IFREG | 0o644, 0, o)
            .unwrap();
        let r = p.diff("s", "main").unwrap();
        type Row = (String, PathChangeKind, Vec<(u64, u64)>);
        let got: Vec<Row> = r
            .entries
            .iter()
            .map(|c| {
                (
                    String::from_utf8_lossy(&c.path).into_owned(),
                    c.change,
                    c.ranges.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("/d/f".into(), PathChangeKind::Modified, vec![(8192, 4096)]),
                ("/d/new".into(), PathChangeKind::Added, vec![]),
                ("/g".into(), PathChangeKind::Removed, vec![]),
            ]
        );
        assert!(p.diff("s", "s").unwrap().entries.is_empty());
        // Data rewritten under an inode item left as it was (a write in the tick
        // of the file's last change keeps its times; here they are put back):
        // the extent changed, the inode item did not, the file is modified.
        let before = p.getattr(m, f.ino).unwrap();
        p.snapshot_create("s2", "main").unwrap();
        p.write_file(m, f.ino, 0, &[3u8; 10]).unwrap();
        let times = crate::fs::SetAttr {
            mtime: Some(before.mtime),
            ctime: Some(before.ctime),
            ..Default::default()
        };
        p.setattr(m, f.ino, &times).unwrap();
        let r = p.diff("s2", "main").unwrap();
        assert_eq!(r.entries.len(), 1, "{:?}", r.entries);
        assert_eq!(r.entries[0].path, b"/d/f");
        assert_eq!(r.entries[0].change, PathChangeKind::Modified);
        assert_eq!(r.entries[0].ranges, vec![(0, 4096)]);
        // Only a chunk of a large xattr value differs (its XATTR item, pointing at
        // the same chunk id, and the inode item are as they were): the file is
        // modified.
        let big = crate::fs::items::XATTR_SIZE_MAX;
        p.setxattr(m, f.ino, b"user.big", &vec![5u8; big], 0)
            .unwrap();
        p.snapshot_create("s3", "main").unwrap();
        let chunk = crate::fs::items::xattr_chunk_key(f.ino, 0, 3);
        let new_chunk = vec![6u8; crate::fs::items::XATTR_CHUNK_LEN];
        p.e.lock()
            .with_fs(m, true, |fs| fs.put(chunk, new_chunk))
            .unwrap();
        assert_eq!(p.getxattr(m, f.ino, b"user.big").unwrap()[6000], 6);
        let r = p.diff("s3", "main").unwrap();
        let got: Vec<_> = r.entries.iter().map(|c| (&c.path[..], c.change)).collect();
        assert_eq!(got, vec![(&b"/d/f"[..], PathChangeKind::Modified)]);
        assert_eq!(
            merge(vec![(10, 5), (0, 10), (20, 1)]),
            vec![(0, 15), (20, 1)]
        );
    }
}
