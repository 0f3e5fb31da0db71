//! Shared by the engine scenario tests: a complete, comparable picture of a branch
//! taken through the public filesystem calls only (readdir in small resumed chunks,
//! lookup, getattr, read, readlink, xattrs), and of every branch of a pool.

use std::collections::BTreeMap;

use cowfs::fs::{FsResult, ROOT_INO};
use cowfs::pool::{BranchId, Pool};

/// What a name leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    /// fifo, socket, char or block device, with its rdev.
    Special(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    /// S_IFMT bits.
    pub ftype: u32,
    /// Permission bits (mode & 0o7777).
    pub perm: u32,
    pub nlink: u32,
    pub size: u64,
    pub content: Content,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Path (from the branch root, '/'-joined, root is "") -> entry.
pub type Tree = BTreeMap<Vec<u8>, Entry>;

/// Walk branch `b` from its root.
pub fn dump_branch(pool: &Pool, b: BranchId) -> FsResult<Tree> {
    let mut out = Tree::new();
    let mut stack = vec![(Vec::new(), ROOT_INO, ROOT_INO)];
    while let Some((path, ino, parent)) = stack.pop() {
        let a = pool.getattr(b, ino)?;
        let ftype = a.mode & libc::S_IFMT;
        let content = match ftype {
            libc::S_IFDIR => {
                let mut cookie = 0;
                let mut seen = BTreeMap::new();
                loop {
                    // Small, varying chunks exercise resumption from every cookie.
                    let chunk = pool.readdir(b, ino, cookie, 1 + (cookie % 5) as usize)?;
                    let Some(last) = chunk.last() else { break };
                    cookie = last.offset;
                    for e in chunk {
                        if e.name == b"." || e.name == b".." {
                            let want = if e.name == b"." { ino } else { parent };
                            if e.ino != want || e.ftype != libc::S_IFDIR {
                                panic!("inconsistent view: dir {ino}: bad {e:?}");
                            }
                            continue;
                        }
                        if seen.insert(e.name.clone(), (e.ino, e.ftype)).is_some() {
                            panic!("inconsistent view: dir {ino}: name listed twice: {e:?}");
                        }
                    }
                }
                for (name, (cino, cft)) in seen {
                    let l = pool.lookup(b, ino, &name)?;
                    if l.ino != cino || l.mode & libc::S_IFMT != cft {
                        panic!(
                            "inconsistent view: dir {ino}: readdir says {name:?} is {cino}/{cft:o}, lookup says {}/{:o}",
                            l.ino, l.mode
                        );
                    }
                    let mut p = path.clone();
                    if !p.is_empty() {
                        p.push(b'/');
                    }
                    p.extend_from_slice(&name);
                    stack.push((p, cino, ino));
                }
                Content::Dir
            }
            libc::S_IFREG => {
                let data = pool.read_file(b, ino, 0, a.size as usize + 1)?;
                if data.len() as u64 != a.size {
                    panic!(
                        "inconsistent view: inode {ino}: size {} but read {} bytes",
                        a.size,
                        data.len()
                    );
                }
                Content::File(data)
            }
            libc::S_IFLNK => Content::Symlink(pool.readlink(b, ino)?),
            _ => Content::Special(a.rdev),
        };
        let mut xattrs = BTreeMap::new();
        for name in pool.listxattr(b, ino)?.split(|c| *c == 0) {
            if !name.is_empty() {
                xattrs.insert(name.to_vec(), pool.getxattr(b, ino, name)?);
            }
        }
        out.insert(
            path,
            Entry {
                ino,
                ftype,
                perm: a.mode & 0o7777,
                nlink: a.nlink,
                size: a.size,
                content,
                xattrs,
            },
        );
    }
    Ok(out)
}

/// The first difference between two trees, for failure messages.
pub fn first_difference(want: &Tree, got: &Tree) -> String {
    for (p, w) in want {
        match got.get(p) {
            None => return format!("{:?} missing", String::from_utf8_lossy(p)),
            Some(g) if g != w => {
                let short = |e: &Entry| {
                    let content = match &e.content {
                        Content::File(d) => format!("{} bytes of data", d.len()),
                        c => format!("{c:?}"),
                    };
                    format!(
                        "ino {} type {:o} perm {:o} nlink {} size {} {content} xattrs {:?}",
                        e.ino, e.ftype, e.perm, e.nlink, e.size, e.xattrs
                    )
                };
                let detail = match (&w.content, &g.content) {
                    (Content::File(a), Content::File(b)) => {
                        let at = a.iter().zip(b.iter()).position(|(x, y)| x != y);
                        format!(
                            " (data lengths {} vs {}, first differing byte {at:?})",
                            a.len(),
                            b.len()
                        )
                    }
                    _ => String::new(),
                };
                return format!(
                    "{:?} differs{detail}:\n want {}\n  got {}",
                    String::from_utf8_lossy(p),
                    short(w),
                    short(g)
                );
            }
            _ => {}
        }
    }
    for p in got.keys() {
        if !want.contains_key(p) {
            return format!("{:?} unexpected", String::from_utf8_lossy(p));
        }
    }
    "no difference".into()
}
