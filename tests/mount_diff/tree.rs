//! A whole tree as POSIX fixes it, for comparing the two sides: every path's
//! stat view, contents (file data, symlink target, sorted directory names),
//! user and trusted xattrs and POSIX ACLs, and which paths are hard links of
//! one another.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::sys::*;

#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub stat: StatView,
    /// File data (by length and digest in messages), symlink target or names.
    pub content: Vec<u8>,
    pub xattrs: Xattrs,
    /// Is the mtime still the one a probe set? Times differ between the sides,
    /// but whether a probed path has been modified since must not.
    pub probe_mtime: bool,
}

pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
    /// Groups of paths that share an inode (inode numbers themselves differ).
    pub links: BTreeSet<Vec<String>>,
    /// Inode number -> the paths that lead to it.
    pub inos: BTreeMap<u64, Vec<String>>,
}

pub fn snapshot(root: &Path) -> Tree {
    let mut nodes = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let st = lstat(&p).unwrap_or_else(|e| panic!("lstat {}: errno {e}", p.display()));
        let ftype = st.st_mode & libc::S_IFMT;
        let content = match ftype {
            libc::S_IFREG => {
                std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
            }
            libc::S_IFLNK => {
                readlink(&p).unwrap_or_else(|e| panic!("readlink {}: errno {e}", p.display()))
            }
            libc::S_IFDIR => {
                let names =
                    list_dir(&p).unwrap_or_else(|e| panic!("readdir {}: errno {e}", p.display()));
                for n in &names {
                    let n = String::from_utf8(n.clone()).expect("the test makes UTF-8 names");
                    stack.push(if rel.is_empty() {
                        n
                    } else {
                        format!("{rel}/{n}")
                    });
                }
                names.join(&b'/')
            }
            _ => Vec::new(),
        };
        by_ino.entry(st.st_ino).or_default().push(rel.clone());
        let xattrs =
            compared_xattrs(&p).unwrap_or_else(|e| panic!("xattrs {}: errno {e}", p.display()));
        // A FIFO's times on a FUSE mount do not follow the data passing through
        // it (pipe I/O never reaches the daemon; README Limits): not compared.
        let probe_mtime =
            ftype != libc::S_IFIFO && (st.st_mtime, st.st_mtime_nsec) == (PROBE_TIME, 0);
        nodes.insert(
            rel,
            Node {
                stat: view(&st),
                content,
                xattrs,
                probe_mtime,
            },
        );
    }
    for v in by_ino.values_mut() {
        v.sort();
    }
    let links = by_ino.values().filter(|v| v.len() > 1).cloned().collect();
    Tree {
        nodes,
        links,
        inos: by_ino,
    }
}

/// For each descriptor, the paths that lead to its file now (none once it is
/// unlinked): the same on both sides unless the mount mixes up inodes, e.g. one
/// reused after the kernel forgot it.
pub fn fd_paths(tree: &Tree, fds: impl Iterator<Item = Option<i32>>) -> Vec<Option<Vec<String>>> {
    fds.map(|fd| {
        let st = fstat(fd?).expect("fstat of an open descriptor");
        Some(tree.inos.get(&st.st_ino).cloned().unwrap_or_default())
    })
    .collect()
}

/// Every difference between the native tree `want` and the cowfs tree `got`,
/// one per line; empty if they agree.
pub fn differences(want: &Tree, got: &Tree) -> String {
    let mut out = String::new();
    let keys: BTreeSet<&String> = want.nodes.keys().chain(got.nodes.keys()).collect();
    for k in keys {
        match (want.nodes.get(k), got.nodes.get(k)) {
            (Some(w), Some(g)) if w != g => {
                out += &format!(
                    "{:?}: native {} / cowfs {}\n",
                    short(k),
                    describe(w),
                    describe(g)
                );
                if w.content != g.content {
                    let at = w.content.iter().zip(&g.content).position(|(a, b)| a != b);
                    out += &format!("  contents differ; first differing byte {at:?}\n");
                }
            }
            (Some(_), None) => out += &format!("{:?}: missing on cowfs\n", short(k)),
            (None, Some(_)) => out += &format!("{:?}: only on cowfs\n", short(k)),
            _ => {}
        }
    }
    if want.links != got.links {
        out += &format!(
            "hard links: native {:?} / cowfs {:?}\n",
            want.links, got.links
        );
    }
    out
}

fn short(p: &str) -> String {
    if p.len() > 40 {
        format!("{}...({} bytes)", &p[..20], p.len())
    } else {
        p.to_string()
    }
}

fn describe(n: &Node) -> String {
    let xattrs: Vec<(String, usize)> = n
        .xattrs
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.len()))
        .collect();
    format!(
        "{:?} content {} bytes xattrs {xattrs:?} probe mtime {}",
        n.stat,
        n.content.len(),
        n.probe_mtime
    )
}
