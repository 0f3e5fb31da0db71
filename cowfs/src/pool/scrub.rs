//! Scrub: read every live data block of every branch and check it against its
//! CRC32, reporting damaged files by path. Metadata is verified on the way (every node
//! read is checked). Shared extents are verified once.

use std::collections::HashSet;

use super::{Pool, PoolResult};
use crate::btree::{tree, Key};
use crate::fs::items::*;
use crate::fs::ROOT_INO;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub branch: String,
    /// Path inside the branch ("/" for the root).
    pub path: String,
    pub detail: String,
}

#[derive(Clone, Debug, Default)]
pub struct ScrubReport {
    pub files: u64,
    pub data_blocks: u64,
    pub damaged: Vec<Damage>,
}

impl ScrubReport {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }
}

impl Pool {
    pub fn scrub(&self) -> PoolResult<ScrubReport> {
        let mut e = self.e.lock();
        e.commit_before_check()?;
        let mut report = ScrubReport::default();
        let mut verified: HashSet<u64> = HashSet::new();
        let branches: Vec<(String, u64)> = e
            .branches
            .values()
            .map(|r| (r.name.clone(), r.root))
            .collect();
        for (branch, root) in branches {
            let st = &mut e.st;
            let mut damage = |path: &str, detail: String| {
                report.damaged.push(Damage {
                    branch: branch.clone(),
                    path: path.to_string(),
                    detail,
                })
            };
            let mut stack = vec![(ROOT_INO, "/".to_string())];
            // A directory has one name, so one reached twice (a corrupt entry naming
            // an ancestor) is damage, and is not walked again: without this a
            // cycle kept scrub going forever.
            let mut dirs_seen = HashSet::new();
            while let Some((dir, path)) = stack.pop() {
                if !dirs_seen.insert(dir) {
                    damage(
                        &path,
                        format!("directory inode {dir} reached a second time (cycle)"),
                    );
                    continue;
                }
                let entries = match tree::collect(
                    st,
                    root,
                    &Key::new(dir, KIND_DIRINDEX, 0),
                    &Key::new(dir, KIND_DIRINDEX, u64::MAX),
                ) {
                    Ok(v) => v,
                    Err(err) => {
                        damage(&path, format!("directory unreadable: {err}"));
                        continue;
                    }
                };
                for (_, v) in entries {
                    let Some(d) = DirEntry::decode(&v) else {
                        damage(&path, "undecodable directory entry".into());
                        continue;
                    };
                    let child = format!(
                        "{}{}{}",
                        path,
                        if path.ends_with('/') { "" } else { "/" },
                        String::from_utf8_lossy(&d.name)
                    );
                    if d.ftype == libc::S_IFDIR {
                        stack.push((d.ino, child));
                        continue;
                    }
                    if d.ftype != libc::S_IFREG {
                        continue;
                    }
                    report.files += 1;
                    let extents = match tree::collect(
                        st,
                        root,
                        &Key::new(d.ino, KIND_EXTENT, 0),
                        &Key::new(d.ino, KIND_EXTENT, u64::MAX),
                    ) {
                        Ok(v) => v,
                        Err(err) => {
                            damage(&child, format!("file metadata unreadable: {err}"));
                            continue;
                        }
                    };
                    for (k, v) in extents {
                        let Some(x) = Extent::decode(&v) else {
                            damage(&child, format!("undecodable extent at offset {}", k.off));
                            continue;
                        };
                        if x.unwritten() || !verified.insert(x.phys) {
                            continue;
                        }
                        report.data_blocks += x.len();
                        let mut buf = vec![0u8; (x.len() * BS) as usize];
                        if let Err(err) = st.read_data(x.phys, &mut buf, &x.crcs) {
                            damage(&child, format!("data at offset {}: {err}", k.off));
                        }
                    }
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use crate::btree::{tree, Key};
    use crate::fs::items::{DirEntry, KIND_DIRINDEX};
    use crate::fs::Owner;
    use crate::pool::{Pool, PoolOptions};
    use crate::store::device::MemDevice;
    use std::sync::Arc;

    /// A directory entry that names the root directory (a corrupt pool): scrub
    /// reports it and finishes. It walked the cycle forever.
    #[test]
    fn scrub_reports_a_directory_cycle_and_finishes() {
        let opts = PoolOptions {
            capacity_bytes: Some(64 << 20),
            ..Default::default()
        };
        let pool = Pool::create_on(Arc::new(MemDevice::new()), &opts).unwrap();
        let b = pool.branch_id("main").unwrap();
        pool.mkdir(b, 1, b"d", 0o755, Owner::default()).unwrap();
        pool.commit().unwrap();
        {
            let mut e = pool.e.lock();
            let root = e.branches[&b].root;
            let from = Key::new(1, KIND_DIRINDEX, 0);
            let to = Key::new(1, KIND_DIRINDEX, u64::MAX);
            let (k, v) = tree::collect(&mut e.st, root, &from, &to).unwrap()[0].clone();
            let mut d = DirEntry::decode(&v).unwrap();
            d.ino = 1;
            let root = tree::insert(&mut e.st, root, k, d.encode()).unwrap();
            e.branches.get_mut(b).unwrap().root = root;
            e.dirty_branches.insert(b);
        }
        let r = pool.scrub().unwrap();
        assert_eq!(r.damaged.len(), 1, "{:?}", r.damaged);
        assert_eq!(r.damaged[0].path, "/d");
    }
}
