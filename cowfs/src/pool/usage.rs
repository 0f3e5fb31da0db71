//! Space accounting per branch: bytes its tree references, bytes only it references
//! (what deleting it frees: exactly the blocks `drop_ref` would release), and the
//! difference, shared with other branches and snapshots.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Engine, Pool, PoolResult};
use crate::btree::Node;
use crate::store::{BlockAddr, StoreResult, BLOCK_SIZE};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchUsage {
    /// Read with the name, under one lock: a caller checking permissions must
    /// check this branch, not whatever a rename put under the name since.
    pub id: super::BranchId,
    pub name: String,
    pub referenced_bytes: u64,
    pub exclusive_bytes: u64,
}

#[derive(Default)]
struct Tally {
    referenced: u64,
    exclusive: u64,
    /// Tree nodes read (a shared subtree counted once per `usage`).
    visited: u64,
}

/// Referenced blocks of subtrees already walked under a shared node, by the
/// subtree's root: a subtree reached through a node with several references
/// frees nothing when any one tree is deleted, so its figure depends on its root
/// alone, and the trees of branches taken from one parent share most of theirs.
/// Without it `usage` walked the whole tree once per branch (1,000 branches of
/// one parent: every node of the parent 1,000 times, under the pool lock).
type Shared = HashMap<BlockAddr, u64>;

impl Pool {
    /// Usage of every branch and snapshot. Walks every distinct tree node once
    /// (metadata only; data blocks are counted from extent items, never read), so
    /// it costs time in proportion to the pool's metadata, not to the number of
    /// branches sharing it.
    pub fn usage(&self) -> PoolResult<Vec<BranchUsage>> {
        Ok(self.usage_walk()?.0)
    }

    /// `usage`, and the tree nodes it visited.
    fn usage_walk(&self) -> PoolResult<(Vec<BranchUsage>, u64)> {
        let mut e = self.e.lock();
        let roots: Vec<(super::BranchId, String, BlockAddr)> = e
            .branches
            .iter()
            .map(|(id, r)| (*id, r.name.clone(), r.root))
            .collect();
        let mut out = Vec::with_capacity(roots.len());
        let mut shared = Shared::new();
        let mut visited = 0;
        for (id, name, root) in roots {
            let mut t = Tally::default();
            walk(&mut e, root, true, &mut t, &mut shared)?;
            visited += t.visited;
            out.push(BranchUsage {
                id,
                name,
                referenced_bytes: t.referenced * BLOCK_SIZE as u64,
                exclusive_bytes: t.exclusive * BLOCK_SIZE as u64,
            });
        }
        Ok((out, visited))
    }
}

/// Blocks only the tree at `root` references (what deleting it would free).
pub(super) fn exclusive_blocks(e: &mut Engine, root: BlockAddr) -> StoreResult<u64> {
    // A root with several references (a branch or snapshot of it) frees nothing
    // when deleted: no need to walk the tree to find that.
    if e.st.space.get(&*e.st.dev.clone(), root)? > 1 {
        return Ok(0);
    }
    let mut t = Tally::default();
    walk(e, root, true, &mut t, &mut Shared::new())?;
    Ok(t.exclusive)
}

/// `alone`: every node above this one has a single reference, so a block with a
/// single reference here is freed when the branch is deleted.
fn walk(
    e: &mut Engine,
    addr: BlockAddr,
    alone: bool,
    t: &mut Tally,
    shared: &mut Shared,
) -> StoreResult<()> {
    let dev = e.st.dev.clone();
    let alone = alone && e.st.space.get(&*dev, addr)? == 1;
    if !alone {
        if let Some(n) = shared.get(&addr) {
            t.referenced += n;
            return Ok(());
        }
    }
    let before = t.referenced;
    t.visited += 1;
    t.referenced += 1;
    t.exclusive += alone as u64;
    let node: Arc<Node> = e.st.read(addr, None)?;
    match &*node {
        Node::Internal(_, kids) => {
            for (_, c) in kids {
                walk(e, *c, alone, t, shared)?;
            }
        }
        Node::Leaf(items) => {
            for (k, v) in items {
                if let Some((start, len)) = super::catalog::item_refs(k, v) {
                    t.referenced += len;
                    if alone {
                        t.exclusive += e.st.space.count_single(&*dev, start, len)?;
                    }
                }
            }
        }
    }
    if !alone {
        shared.insert(addr, t.referenced - before);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Owner;
    use crate::pool::PoolOptions;
    use crate::store::device::MemDevice;

    #[test]
    fn exclusive_is_what_delete_frees() {
        let opts = PoolOptions {
            capacity_bytes: Some(256 << 20),
            ..Default::default()
        };
        let p = Pool::create_on(Arc::new(MemDevice::new()), &opts).unwrap();
        let m = p.branch_id("main").unwrap();
        let f = p
            .mknod(m, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap();
        p.write_file(m, f.ino, 0, &vec![1u8; 4 << 20]).unwrap();
        let dev_id = p.branch_create("dev", "main").unwrap();
        p.write_file(dev_id, f.ino, 0, &vec![2u8; 1 << 20]).unwrap();
        p.commit().unwrap();
        let u = p.usage().unwrap();
        let dev = u.iter().find(|x| x.name == "dev").unwrap();
        let main = u.iter().find(|x| x.name == "main").unwrap();
        assert!(dev.referenced_bytes >= 4 << 20);
        assert!(dev.exclusive_bytes >= 1 << 20 && dev.exclusive_bytes < 2 << 20);
        assert!(main.exclusive_bytes >= 1 << 20 && main.exclusive_bytes < 2 << 20);
        let before = p.used_blocks();
        p.branch_delete("dev").unwrap();
        // Its tree may be dropped in steps by the freeing thread (drops.rs).
        p.finish_frees();
        assert_eq!(
            (before - p.used_blocks()) * BLOCK_SIZE as u64,
            dev.exclusive_bytes
        );
    }

    /// Branches taken from one parent share its tree: `usage` reads each shared
    /// node once, and its figures are those of a walk of each tree alone.
    #[test]
    fn shared_subtrees_are_walked_once() {
        let opts = PoolOptions {
            capacity_bytes: Some(256 << 20),
            ..Default::default()
        };
        let p = Pool::create_on(Arc::new(MemDevice::new()), &opts).unwrap();
        let m = p.branch_id("main").unwrap();
        for i in 0..300 {
            let f = p
                .mknod(
                    m,
                    1,
                    format!("f{i}").as_bytes(),
                    libc::S_IFREG | 0o644,
                    0,
                    Owner::default(),
                )
                .unwrap();
            p.write_file(m, f.ino, 0, &vec![1u8; 64 << 10]).unwrap();
        }
        let (_, alone) = p.usage_walk().unwrap();
        for i in 0..20 {
            let b = p.branch_create(&format!("b{i}"), "main").unwrap();
            p.mknod(b, 1, b"own", libc::S_IFREG | 0o644, 0, Owner::default())
                .unwrap();
        }
        p.commit().unwrap();
        let (u, visited) = p.usage_walk().unwrap();
        assert!(alone > 10, "{alone} nodes in main's tree");
        assert!(
            visited < 3 * alone,
            "21 trees sharing main's {alone} nodes: {visited} visited"
        );
        let mut e = p.e.lock();
        for x in &u {
            let root = e.branches[&x.id].root;
            let mut t = Tally::default();
            walk(&mut e, root, true, &mut t, &mut Shared::new()).unwrap();
            assert_eq!(
                (x.referenced_bytes, x.exclusive_bytes),
                (
                    t.referenced * BLOCK_SIZE as u64,
                    t.exclusive * BLOCK_SIZE as u64
                ),
                "{}",
                x.name
            );
        }
    }
}
