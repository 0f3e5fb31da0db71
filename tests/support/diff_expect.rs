//! The diff two full dumps of a tree imply, and the check of a `Pool::diff` result
//! against it. The expected rules are the documented ones (format-spec/
//! control-protocol.md, `diff`): a name only on one side is added or removed; a
//! name that points at another file (or type) is modified as a replacement; a file
//! present on both sides under a name it has on both is modified, at each such
//! name, when its data, size, permissions, owner, mtime, xattrs or symlink target
//! differ (a directory: permissions, owner or xattrs), with those aspects.
//! Contents of a renamed directory keep their names (entries are per directory),
//! so only what changed below it is listed.

use std::collections::{BTreeMap, BTreeSet};

use super::dump::{dump_branch, Content, Entry, Tree};
use cowfs::fs::{Attr, ROOT_INO};
use cowfs::pool::diff::{Aspect, DiffResult, PathChangeKind};
use cowfs::pool::{BranchId, Pool};

const BS: u64 = 4096;

/// One side of a diff: its dump, the attributes of each inode, and its names.
pub struct Side {
    pub tree: Tree,
    attrs: BTreeMap<u64, Attr>,
    /// (directory inode, name) -> (inode, file type).
    names: BTreeMap<(u64, Vec<u8>), (u64, u32)>,
    /// Directory inode -> its path ("/" for the root).
    dirs: BTreeMap<u64, Vec<u8>>,
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Side {
    pub fn of(pool: &Pool, b: BranchId) -> Side {
        let tree = dump_branch(pool, b).expect("dump");
        let mut attrs = BTreeMap::new();
        let mut names = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for (path, e) in &tree {
            attrs.insert(e.ino, pool.getattr(b, e.ino).expect("getattr"));
            if e.content == Content::Dir {
                dirs.insert(e.ino, join(b"/", path));
            }
            if let Some(i) = path.iter().rposition(|c| *c == b'/') {
                let parent = tree[&path[..i]].ino;
                names.insert((parent, path[i + 1..].to_vec()), (e.ino, e.ftype));
            } else if !path.is_empty() {
                names.insert((ROOT_INO, path.clone()), (e.ino, e.ftype));
            }
        }
        Side {
            tree,
            attrs,
            names,
            dirs,
        }
    }

    fn path(&self, dir: u64, name: &[u8]) -> Vec<u8> {
        join(&self.dirs[&dir], name)
    }

    fn entry(&self, ino: u64) -> &Entry {
        self.tree
            .values()
            .find(|e| e.ino == ino)
            .expect("inode in the dump")
    }
}

/// What a path's entry must be.
#[derive(Debug)]
struct Want {
    ftype: u32,
    /// Modified regular files: the blocks that hold other bytes (a byte past one
    /// side's end differs from any byte).
    blocks: Option<BTreeSet<u64>>,
    aspects: Vec<Aspect>,
}

fn blocks(a: &[u8], b: &[u8]) -> BTreeSet<u64> {
    let end = a.len().max(b.len()) as u64;
    let part = |d: &[u8], blk: u64| {
        let r = (blk * BS) as usize..((blk + 1) * BS) as usize;
        d.get(r.start.min(d.len())..r.end.min(d.len()))
            .unwrap_or(&[])
            .to_vec()
    };
    (0..end.div_ceil(BS))
        .filter(|&blk| part(a, blk) != part(b, blk))
        .collect()
}

/// What changed in a file present on both sides (empty: nothing the diff reports).
fn aspects(a: &Side, b: &Side, ino: u64) -> Vec<Aspect> {
    let (ea, eb) = (a.entry(ino), b.entry(ino));
    let (xa, xb) = (&a.attrs[&ino], &b.attrs[&ino]);
    let dir = ea.ftype == libc::S_IFDIR;
    let mut out = Vec::new();
    if let (Content::File(x), Content::File(y)) = (&ea.content, &eb.content) {
        let common = x.len().min(y.len());
        if x[..common] != y[..common] {
            out.push(Aspect::Content);
        }
        if x.len() != y.len() {
            out.push(Aspect::Size);
        }
    }
    let checks = [
        (ea.perm != eb.perm, Aspect::Mode),
        ((xa.uid, xa.gid) != (xb.uid, xb.gid), Aspect::Owner),
        (!dir && xa.mtime != xb.mtime, Aspect::Times),
        (ea.xattrs != eb.xattrs, Aspect::Xattrs),
    ];
    out.extend(checks.iter().filter(|c| c.0).map(|c| c.1));
    if let (Content::Symlink(x), Content::Symlink(y)) = (&ea.content, &eb.content) {
        if x != y {
            out.push(Aspect::Target);
        }
    }
    out
}

fn expected(a: &Side, b: &Side) -> BTreeMap<(Vec<u8>, PathChangeKind), Want> {
    let mut want = BTreeMap::new();
    for (key, &(ia, fa)) in &a.names {
        match b.names.get(key) {
            None => {
                let w = Want {
                    ftype: fa,
                    blocks: None,
                    aspects: Vec::new(),
                };
                want.insert((a.path(key.0, &key.1), PathChangeKind::Removed), w);
            }
            Some(&(ib, fb)) if (ib, fb) != (ia, fa) => {
                let mut aspects = vec![Aspect::Replaced];
                let target = |s: &Side, ino| match &s.entry(ino).content {
                    Content::Symlink(t) => Some(t.clone()),
                    _ => None,
                };
                if let (Some(x), Some(y)) = (target(a, ia), target(b, ib)) {
                    if x != y {
                        aspects.insert(0, Aspect::Target);
                    }
                }
                let w = Want {
                    ftype: fb,
                    blocks: None,
                    aspects,
                };
                want.insert((b.path(key.0, &key.1), PathChangeKind::Modified), w);
            }
            Some(_) => {}
        }
    }
    for (key, &(_, fb)) in &b.names {
        if !a.names.contains_key(key) {
            let w = Want {
                ftype: fb,
                blocks: None,
                aspects: Vec::new(),
            };
            want.insert((b.path(key.0, &key.1), PathChangeKind::Added), w);
        }
    }
    for &ino in a.attrs.keys().filter(|i| b.attrs.contains_key(i)) {
        let aspects = aspects(a, b, ino);
        if aspects.is_empty() {
            continue;
        }
        let (ea, eb) = (a.entry(ino), b.entry(ino));
        let blocks = match (&ea.content, &eb.content) {
            (Content::File(x), Content::File(y)) => Some(blocks(x, y)),
            _ => None,
        };
        // Every name it has on both sides (the root has none).
        let mut paths: Vec<Vec<u8>> = b
            .names
            .iter()
            .filter(|(k, v)| v.0 == ino && a.names.get(*k) == Some(*v))
            .map(|(k, _)| b.path(k.0, &k.1))
            .collect();
        if ino == ROOT_INO {
            paths.push(b"/".to_vec());
        }
        for path in paths {
            let w = Want {
                ftype: eb.ftype,
                blocks: blocks.clone(),
                aspects: aspects.clone(),
            };
            want.insert((path, PathChangeKind::Modified), w);
        }
    }
    want
}

/// Check `got` (the diff of `a` to `b`) against the dumps; returns how many
/// entries were checked. `ctx` says how the sides came about.
pub fn check_diff(a: &Side, b: &Side, got: &DiffResult, ctx: &str) -> usize {
    let want = expected(a, b);
    let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    let mut seen = BTreeSet::new();
    for c in &got.entries {
        let key = (c.path.clone(), c.change);
        assert!(
            seen.insert(key.clone()),
            "{} {:?} listed twice\n{ctx}",
            show(&c.path),
            c.change
        );
        let Some(w) = want.get(&key) else {
            panic!(
                "{} reported {:?} but the dumps show no such change\n{ctx}",
                show(&c.path),
                c.change
            );
        };
        assert_eq!(c.file_type, w.ftype, "{}: file type\n{ctx}", show(&c.path));
        let got_blocks: BTreeSet<u64> = c
            .ranges
            .iter()
            .flat_map(|&(off, len)| off / BS..(off + len).div_ceil(BS))
            .collect();
        match &w.blocks {
            Some(differ) => assert_eq!(
                &got_blocks,
                differ,
                "{}: blocks of ranges {:?} vs changed blocks\n{ctx}",
                show(&c.path),
                c.ranges
            ),
            None => assert!(
                c.ranges.is_empty(),
                "{}: ranges {:?}\n{ctx}",
                show(&c.path),
                c.ranges
            ),
        }
        assert_eq!(c.aspects, w.aspects, "{}: aspects\n{ctx}", show(&c.path));
    }
    for (path, kind) in want.keys() {
        assert!(
            seen.contains(&(path.clone(), *kind)),
            "{} {kind:?} not reported\n{ctx}",
            show(path)
        );
    }
    want.len()
}
