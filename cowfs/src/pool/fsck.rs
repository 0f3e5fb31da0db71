//! fsck: walk every live root, rebuild the reference count every block should have,
//! compare with the space map; check tree invariants (checksums, key order, levels)
//! and filesystem invariants (dirent <-> index <-> inode, link counts, extents).
//! Blocks counted higher than their references are leaks; anything referenced more
//! than counted, or unreadable, is corruption.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::catalog::{item_refs, BranchRecord, DropRecord};
use super::fsck_xattr::{Finding, XattrChunks};
use super::Engine;
use crate::btree::{Key, Node};
use crate::fs::items::*;
use crate::fs::ROOT_INO;
use crate::store::BlockAddr;

#[derive(Clone, Debug)]
pub struct FsckOptions {
    /// Also read every data block and check its CRC32.
    pub verify_data: bool,
}

impl Default for FsckOptions {
    fn default() -> Self {
        FsckOptions { verify_data: true }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    /// Corruption: anything that can lose or garble data.
    pub errors: Vec<String>,
    /// Space or inodes held with nothing referencing them.
    pub leaks: Vec<String>,
    pub leaked_blocks: u64,
    pub nodes: u64,
    pub data_blocks: u64,
    pub branches: usize,
    pub inodes: u64,
    /// Intent log records (fsyncs after the last commit) a read-only open left
    /// for the next read-write open to apply: the check is of the last commit,
    /// which is consistent without them. Neither a leak nor corruption.
    pub log_records: usize,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.leaks.is_empty()
    }
    pub fn has_corruption(&self) -> bool {
        !self.errors.is_empty()
    }
    fn error(&mut self, s: String) {
        if self.errors.len() < 1000 {
            self.errors.push(s);
        }
    }
    fn leak(&mut self, s: String) {
        if self.leaks.len() < 1000 {
            self.leaks.push(s);
        }
    }
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(
            f,
            "{} branches, {} tree nodes, {} data blocks, {} inodes",
            self.branches, self.nodes, self.data_blocks, self.inodes
        )?;
        if self.log_records > 0 {
            writeln!(
                f,
                "{} intent log records (fsyncs after the last commit) wait to be \
                 applied by the next read-write open; checked: the last commit",
                self.log_records
            )?;
        }
        for e in &self.errors {
            writeln!(f, "CORRUPT: {e}")?;
        }
        for l in &self.leaks {
            writeln!(f, "LEAK: {l}")?;
        }
        if self.is_clean() {
            writeln!(f, "clean")?;
        } else {
            writeln!(
                f,
                "{} corruption problems, {} leaks ({} blocks)",
                self.errors.len(),
                self.leaks.len(),
                self.leaked_blocks
            )?;
        }
        Ok(())
    }
}

struct Walk<'a> {
    e: &'a mut Engine,
    expected: HashMap<BlockAddr, u32>,
    visited: HashSet<BlockAddr>,
    report: FsckReport,
}

impl Walk<'_> {
    fn expect(&mut self, start: BlockAddr, len: u64) {
        // Checked: a corrupt internal node may point at block u64::MAX.
        for b in (0..len).map_while(|i| start.checked_add(i)) {
            *self.expected.entry(b).or_insert(0) += 1;
        }
    }

    /// Visit a node once (shared subtrees are walked once); count what it references.
    fn walk(&mut self, addr: BlockAddr, level: Option<u8>, lo: Key, hi: Option<Key>, what: &str) {
        if !self.visited.insert(addr) {
            return;
        }
        let node = match self.e.st.read(addr, level) {
            Ok(n) => n,
            Err(err) => {
                self.report.error(format!("{what}: node {addr}: {err}"));
                return;
            }
        };
        self.report.nodes += 1;
        let keys: Vec<Key> = match &*node {
            Node::Leaf(items) => items.iter().map(|(k, _)| *k).collect(),
            Node::Internal(_, kids) => kids.iter().map(|(k, _)| *k).collect(),
        };
        if let (Some(first), Some(last)) = (keys.first(), keys.last()) {
            if *first < lo || hi.is_some_and(|h| *last >= h) {
                self.report.error(format!(
                    "{what}: node {addr}: keys outside the range its parent gives"
                ));
            }
        }
        if node.overflows() {
            self.report.error(format!("{what}: node {addr}: overfull"));
        }
        match &*node {
            Node::Internal(lvl, kids) => {
                if kids.is_empty() {
                    self.report.error(format!(
                        "{what}: node {addr}: internal node without children"
                    ));
                }
                for (i, (k, child)) in kids.iter().enumerate() {
                    self.expect(*child, 1);
                    let child_hi = kids.get(i + 1).map(|x| x.0).or(hi);
                    self.walk(*child, Some(lvl - 1), *k, child_hi, what);
                }
            }
            Node::Leaf(items) => {
                for (k, v) in items {
                    if let Some((start, len)) = item_refs(k, v) {
                        if k.kind == KIND_EXTENT {
                            self.report.data_blocks += len;
                        }
                        self.expect(start, len);
                    }
                }
            }
        }
    }

    /// Visit a tree being dropped in steps (pool/drops.rs) from key `at` on, as
    /// `NodeStore::drop_step` will: a child wholly below `at` is released (its
    /// block may hold anything now) and not read; one from `at` on is whole; the
    /// nodes in between, on the path to `at`, hold only their children not done.
    fn walk_dropping(
        &mut self,
        addr: BlockAddr,
        level: Option<u8>,
        lo: Key,
        hi: Option<Key>,
        at: Key,
        what: &str,
    ) {
        if lo >= at {
            return self.walk(addr, level, lo, hi, what);
        }
        let node = match self.e.st.read(addr, level) {
            Ok(n) => n,
            Err(err) => {
                self.report.error(format!("{what}: node {addr}: {err}"));
                return;
            }
        };
        let Node::Internal(lvl, kids) = &*node else {
            // Leaves are released whole: one below `at` is not on the path.
            self.report
                .error(format!("{what}: leaf {addr} partly dropped"));
            return;
        };
        if !self.visited.insert(addr) {
            return;
        }
        self.report.nodes += 1;
        for (i, (k, child)) in kids.iter().enumerate() {
            let child_hi = kids.get(i + 1).map(|x| x.0).or(hi);
            if child_hi.is_some_and(|h| h <= at) {
                continue;
            }
            self.expect(*child, 1);
            self.walk_dropping(*child, Some(lvl - 1), *k, child_hi, at, what);
        }
    }
}

#[derive(Default)]
struct BranchFacts {
    inodes: HashMap<u64, Inode>,
    names: HashMap<u64, u32>,
    subdirs: HashMap<u64, u32>,
    /// child dir -> the directory whose entry names it
    dir_parent: HashMap<u64, u64>,
    dirents: HashMap<(u64, u64), DirEntry>,
    dirindex: HashMap<(u64, u64), DirEntry>,
    orphans: HashSet<u64>,
    inline_len: HashMap<u64, u64>,
    extent_end: HashMap<u64, u64>,
    xattr_chunks: XattrChunks,
    max_ino: u64,
}

pub(crate) fn run(e: &mut Engine, opts: &FsckOptions) -> FsckReport {
    let dev = e.st.dev.clone();
    let catalog_root = e.catalog_root;
    let branches: Vec<(u64, BranchRecord)> =
        e.branches.iter().map(|(k, v)| (*k, v.clone())).collect();
    let drops: Vec<(u64, DropRecord)> = e.drops.iter().map(|(k, v)| (*k, *v)).collect();
    let mut w = Walk {
        e,
        expected: HashMap::new(),
        visited: HashSet::new(),
        report: FsckReport::default(),
    };
    w.report.branches = branches.len();
    w.report.log_records = w.e.log.unreplayed;
    w.expect(0, 2);
    match w.e.st.space.page_addrs(&*dev) {
        Ok(pages) => {
            for p in pages {
                w.expect(p, 1);
            }
        }
        Err(err) => w.report.error(format!("space map: {err}")),
    }
    if let Some((start, blocks)) = w.e.log.region {
        for b in start..start + u64::from(blocks) {
            w.expect(b, 1);
        }
    }
    w.expect(catalog_root, 1);
    w.walk(catalog_root, None, Key::MIN, None, "catalog");
    for (id, rec) in &branches {
        let what = format!("branch '{}'", rec.name);
        w.walk(rec.root, None, Key::MIN, None, &what);
        check_branch(&mut w, *id, rec, opts);
    }
    for (id, rec) in &drops {
        let what = format!("dropped tree {id}");
        w.walk_dropping(rec.root, None, Key::MIN, None, rec.progress, &what);
    }
    // Compare with the space map.
    let mut counted = HashMap::new();
    if let Err(err) = w.e.st.space.for_each_count(&*dev, |b, c| {
        if c > 0 {
            counted.insert(b, c);
        }
    }) {
        w.report.error(format!("space map: {err}"));
    }
    let mut leaked = 0u64;
    let mut leak_examples = Vec::new();
    for (b, c) in &counted {
        let want = w.expected.get(b).copied().unwrap_or(0);
        if *c > want {
            leaked += 1;
            if leak_examples.len() < 20 {
                leak_examples.push(format!("block {b}: count {c}, referenced {want} times"));
            }
        } else if *c < want {
            w.report
                .error(format!("block {b}: count {c} but referenced {want} times"));
        }
    }
    for (b, want) in &w.expected {
        if !counted.contains_key(b) {
            w.report.error(format!(
                "block {b}: referenced {want} times but marked free"
            ));
        }
    }
    if leaked > 0 {
        w.report.leaked_blocks = leaked;
        for l in leak_examples {
            w.report.leak(l);
        }
        w.report
            .leak(format!("{leaked} blocks counted but unreferenced"));
    }
    let used = w.e.st.space.used();
    if used != counted.len() as u64 {
        w.report.error(format!(
            "space map says {used} blocks used, counts say {}",
            counted.len()
        ));
    }
    w.report
}

fn check_branch(w: &mut Walk, _id: u64, rec: &BranchRecord, opts: &FsckOptions) {
    let name = rec.name.clone();
    let mut f = BranchFacts::default();
    let mut items_bad = Vec::new();
    let mut data_to_check = Vec::new();
    let r = crate::btree::tree::range(&mut w.e.st, rec.root, &Key::MIN, &Key::MAX, &mut |k, v| {
        let ino = k.id;
        if k.kind == KIND_ORPHAN && ino == 0 {
            f.orphans.insert(k.off);
            return true;
        }
        if k.kind != KIND_INODE && !f.inodes.contains_key(&ino) {
            items_bad.push(format!("item {k:?} belongs to no inode"));
            return true;
        }
        match k.kind {
            KIND_INODE => match Inode::decode(v) {
                Some(i) => {
                    f.max_ino = f.max_ino.max(ino);
                    f.inodes.insert(ino, i);
                }
                None => items_bad.push(format!("inode {ino}: undecodable")),
            },
            KIND_DIRENT | KIND_DIRINDEX => match DirEntry::decode(v) {
                Some(d) => {
                    if k.kind == KIND_DIRENT {
                        if name_hash(&d.name) > k.off || k.off - name_hash(&d.name) >= HASH_PROBE {
                            items_bad.push(format!(
                                "dir {ino}: entry {:?} in the wrong hash slot",
                                String::from_utf8_lossy(&d.name)
                            ));
                        }
                        *f.names.entry(d.ino).or_insert(0) += 1;
                        if d.ftype == libc::S_IFDIR {
                            *f.subdirs.entry(ino).or_insert(0) += 1;
                            f.dir_parent.insert(d.ino, ino);
                        }
                        f.dirents.insert((ino, k.off), d);
                    } else {
                        f.dirindex.insert((ino, k.off), d);
                    }
                }
                None => items_bad.push(format!("dir {ino}: undecodable entry")),
            },
            KIND_INLINE => {
                f.inline_len.insert(ino, v.len() as u64);
            }
            KIND_EXTENT => match Extent::decode(v) {
                Some(e) => {
                    if k.off % BS != 0 {
                        items_bad
                            .push(format!("inode {ino}: extent at unaligned offset {}", k.off));
                    }
                    let prev = f.extent_end.get(&ino).copied().unwrap_or(0);
                    if k.off < prev {
                        items_bad.push(format!(
                            "inode {ino}: overlapping extents at offset {}",
                            k.off
                        ));
                    }
                    f.extent_end.insert(ino, k.off + e.len() * BS);
                    if opts.verify_data && !e.unwritten() {
                        data_to_check.push((ino, k.off, e));
                    }
                }
                None => items_bad.push(format!("inode {ino}: undecodable extent at {}", k.off)),
            },
            KIND_XATTR => match xattr_decode(v) {
                Some((_, XattrValue::Chunked { id, len })) => f.xattr_chunks.value(ino, id, len),
                Some(_) => {}
                None => items_bad.push(format!("inode {ino}: undecodable xattr")),
            },
            KIND_XATTR_CHUNK => f.xattr_chunks.chunk(ino, k.off, v.len()),
            _ => items_bad.push(format!("unknown item kind {}", k.kind)),
        }
        true
    });
    if let Err(err) = r {
        w.report.error(format!("branch '{name}': {err}"));
        return;
    }
    for b in items_bad {
        w.report.error(format!("branch '{name}': {b}"));
    }
    for (ino, off, e) in data_to_check {
        let mut buf = vec![0u8; (e.len() * BS) as usize];
        if let Err(err) = w.e.st.read_data(e.phys, &mut buf, &e.crcs) {
            w.report.error(format!(
                "branch '{name}': inode {ino} data at offset {off}: {err}"
            ));
        }
    }
    w.report.inodes += f.inodes.len() as u64;
    if !f.inodes.contains_key(&ROOT_INO) {
        w.report
            .error(format!("branch '{name}': no root directory"));
    }
    if rec.next_ino <= f.max_ino {
        w.report.error(format!(
            "branch '{name}': next inode number {} not above {}",
            rec.next_ino, f.max_ino
        ));
    }
    for ((dir, slot), d) in &f.dirents {
        match f.dirindex.get(&(*dir, d.link)) {
            Some(x) if x.ino == d.ino && x.name == d.name && x.link == *slot => {}
            _ => w.report.error(format!(
                "branch '{name}': dir {dir}: entry {:?} has no matching index item",
                String::from_utf8_lossy(&d.name)
            )),
        }
        match f.inodes.get(&d.ino) {
            None => w.report.error(format!(
                "branch '{name}': dir {dir}: entry {:?} points at missing inode {}",
                String::from_utf8_lossy(&d.name),
                d.ino
            )),
            Some(i) if i.file_type() != d.ftype => w.report.error(format!(
                "branch '{name}': dir {dir}: entry type differs from inode {}",
                d.ino
            )),
            _ => {}
        }
    }
    if f.dirindex.len() != f.dirents.len() {
        w.report.error(format!(
            "branch '{name}': {} name entries but {} index entries",
            f.dirents.len(),
            f.dirindex.len()
        ));
    }
    for (ino, i) in &f.inodes {
        let names = f.names.get(ino).copied().unwrap_or(0);
        let link = i.file_type() == libc::S_IFLNK;
        if i.size > crate::fs::file::MAX_FILE_SIZE || (link && i.size >= 4096) {
            w.report.error(format!(
                "branch '{name}': inode {ino}: size {} is impossible for its type",
                i.size
            ));
        }
        if i.is_dir() && f.orphans.contains(ino) {
            // Removed while open: no links, no name, no entries (rmdir needs it empty).
            if i.nlink != 0 || names != 0 || f.subdirs.contains_key(ino) {
                w.report.error(format!(
                    "branch '{name}': orphan dir {ino}: nlink {}, named {names} times",
                    i.nlink
                ));
            }
        } else if i.is_dir() {
            let want = 2 + f.subdirs.get(ino).copied().unwrap_or(0);
            if i.nlink != want {
                w.report.error(format!(
                    "branch '{name}': dir {ino}: nlink {} but {want} expected",
                    i.nlink
                ));
            }
            let parent = if *ino == ROOT_INO {
                Some(ROOT_INO)
            } else {
                f.dir_parent.get(ino).copied()
            };
            if parent != Some(i.parent) {
                w.report.error(format!(
                    "branch '{name}': dir {ino}: parent field {} but named in {parent:?}",
                    i.parent
                ));
            }
            if *ino != ROOT_INO && names != 1 {
                w.report
                    .error(format!("branch '{name}': dir {ino}: named {names} times"));
            }
        } else {
            if i.nlink != names {
                w.report.error(format!(
                    "branch '{name}': inode {ino}: nlink {} but {names} names",
                    i.nlink
                ));
            }
            if names == 0 && !f.orphans.contains(ino) {
                w.report.leak(format!(
                    "branch '{name}': inode {ino} has no name and is not an orphan"
                ));
            }
            if let Some(len) = f.inline_len.get(ino) {
                if *len != i.size {
                    w.report.error(format!(
                        "branch '{name}': inode {ino}: inline data {len} bytes, size {}",
                        i.size
                    ));
                }
                if f.extent_end.contains_key(ino) {
                    w.report.error(format!(
                        "branch '{name}': inode {ino}: both inline data and extents"
                    ));
                }
            }
        }
    }
    for finding in f.xattr_chunks.check(&f.inodes) {
        match finding {
            Finding::Error(s) => w.report.error(format!("branch '{name}': {s}")),
            Finding::Leak(s) => w.report.leak(format!("branch '{name}': {s}")),
        }
    }
    for o in &f.orphans {
        match f.inodes.get(o) {
            Some(i) if i.nlink == 0 => {}
            _ => w.report.error(format!(
                "branch '{name}': orphan mark on inode {o} which is linked or missing"
            )),
        }
    }
}
