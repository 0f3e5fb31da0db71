//! Dropping big trees in steps. Deleting a branch, or resetting one, drops the
//! reference its record held on a tree root; when that was the last reference,
//! `drop_ref` freed everything only that tree held in one piece, under the pool
//! lock (about 9 ms per GiB: 0.35 s for 40 GiB, during which every mount of the
//! pool waited). Now the delete does one step (`NodeStore::drop_step`) and, if
//! the tree is not gone with it, the rest becomes a DROP record in the catalog,
//! written by the commit that removes or changes the branch record; the pool's
//! freeing thread (free_steps.rs) releases it in steps, each an operation of its
//! own, letting the lock go in between.
//!
//! The record (root, progress) is the crash-safe state: each step's commit
//! writes the new progress with the space map it matches, so a pool closed or
//! crashed mid-way opens with the record and goes on from there. A root still
//! shared (a snapshot of it exists) or a single leaf is dropped at once, as
//! before: that is one decrement, or one node.

use std::collections::HashSet;

use super::catalog::DropRecord;
use super::Engine;
use crate::btree::Key;
use crate::store::{BlockAddr, StoreError};

/// Nodes and extents one step releases at most (a leaf whole, so a little
/// more): about 15-20 ms, as a step of an orphan (2 GiB of full-size extents).
const STEP_BUDGET: u64 = 8192;

impl Engine {
    /// Drop the reference a branch record held on tree `root`, in the operation
    /// whose commit removes or changes that record: at once if that is cheap or
    /// one step does it, else one step now and the rest as a DROP record the
    /// freeing thread works through.
    pub(super) fn drop_tree(&mut self, root: BlockAddr) -> Result<(), StoreError> {
        if !self.st.drops_in_steps(root)? {
            return self.st.drop_ref(root);
        }
        // The first step here: a small tree is gone with it, as before (a
        // failed clone's delete leaves exactly what was there before it).
        let Some(progress) = self.st.drop_step(root, Key::MIN, STEP_BUDGET)? else {
            return Ok(());
        };
        // Drop ids come from the branch id counter: never reused, in order.
        let id = self.take_branch_id();
        let rec = DropRecord { root, progress };
        self.drops.insert(id, rec);
        self.dirty_drops.insert(id);
        self.dropping.push_back(id);
        self.freer.wake();
        Ok(())
    }

    /// Run `f`, the reference changes of a delete or reset (`drop_tree` last),
    /// as one journaled operation: if it fails part way (a node of the old tree
    /// that cannot be read), every count it changed is put back, so the branch
    /// record the caller has not touched yet still matches the space map.
    /// Without it, a delete that met a damaged leaf had freed most of a tree
    /// whose record stayed on disk.
    pub(super) fn journaled(
        &mut self,
        f: impl FnOnce(&mut Engine) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.st.begin_op();
        match f(self) {
            Ok(()) => {
                self.st.end_op();
                Ok(())
            }
            Err(e) => {
                if let Err(u) = self.st.undo_op() {
                    self.poison(&u);
                }
                Err(e)
            }
        }
    }

    /// Queue every drop record loaded at open, but one whose root another
    /// record (a branch's, or another drop's) also holds: no build writes one,
    /// and its steps would free that live tree block by block (its count is 1,
    /// so the step's own check passes). It stays as it is, for fsck to report.
    pub(super) fn resume_drops(&mut self) {
        let mut held: HashSet<BlockAddr> = self.branches.values().map(|r| r.root).collect();
        let mut twice: HashSet<BlockAddr> = HashSet::new();
        for r in self.drops.values() {
            if !held.insert(r.root) {
                twice.insert(r.root);
            }
        }
        self.dropping.clear();
        for (id, r) in &self.drops {
            if twice.contains(&r.root) {
                log::error!(
                    "drop record {id}: its root {} is held by another record too; not freeing it",
                    r.root
                );
            } else {
                self.dropping.push_back(*id);
            }
        }
        if !self.dropping.is_empty() {
            self.freer.wake();
        }
    }

    /// One step of the first queued drop, journaled: a step that fails (a node
    /// that cannot be read) is undone whole and its record stays as it was,
    /// for the next open (and fsck), out of the queue.
    pub(super) fn drop_step(&mut self) {
        let Some(&id) = self.dropping.front() else {
            return;
        };
        let Some(rec) = self.drops.get(&id).copied() else {
            self.dropping.pop_front();
            return;
        };
        if self.refuse_changes().is_err() {
            self.dropping.clear();
            return;
        }
        // The step rewrites or removes the record at the next commit.
        if !self.dirty_drops.contains(&id) {
            if let Err(e) = self.reserve_catalog(1) {
                log::warn!("dropping tree {}: {e}", rec.root);
                self.dropping.pop_front();
                return;
            }
        }
        self.st.begin_op();
        match self.st.drop_step(rec.root, rec.progress, STEP_BUDGET) {
            Ok(progress) => {
                self.st.end_op();
                match progress {
                    Some(p) => {
                        self.drops.insert(id, DropRecord { progress: p, ..rec });
                    }
                    None => {
                        self.drops.remove(&id);
                        self.dropping.pop_front();
                    }
                }
                self.dirty_drops.insert(id);
            }
            Err(e) => {
                log::error!("dropping tree {} stopped, its record stays: {e}", rec.root);
                self.dropping.pop_front();
                if let Err(u) = self.st.undo_op() {
                    self.poison(&u);
                }
            }
        }
        // A step dirties space-map leaves, not tree nodes: commit when as many
        // leaves wait as `maybe_commit` lets nodes wait.
        if self.st.space.dirty_leaf_count() > self.dirty_limit_nodes {
            if let Err(e) = self.commit() {
                log::error!("automatic commit failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Owner;
    use crate::pool::{FsckOptions, Pool, PoolOptions};
    use crate::store::device::MemDevice;
    use std::sync::Arc;

    /// A drop record naming the root of a live branch (no build writes one; a
    /// bug or a stray write that kept the checksums could) is not resumed at
    /// open: stepping it would free the live tree, whose count is 1, block by
    /// block under the branch. The branch reads as before, and fsck reports
    /// the root held twice instead of blocks in use marked free.
    #[test]
    fn a_drop_record_naming_a_live_root_is_not_resumed() {
        let opts = PoolOptions {
            capacity_bytes: Some(256 << 20),
            ..Default::default()
        };
        let mem = MemDevice::new();
        let p = Pool::create_on(Arc::new(mem.clone()), &opts).unwrap();
        let m = p.branch_id("main").unwrap();
        let f = p
            .mknod(m, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap()
            .ino;
        // Every other block: an extent item each, a tree of several levels.
        for i in 0..2000u64 {
            p.write_file(m, f, i * 8192, &[(i % 251) as u8 + 1; 4096])
                .unwrap();
        }
        p.commit().unwrap();
        {
            let mut e = p.e.lock();
            let root = e.branches[&m].root;
            assert!(e.st.drops_in_steps(root).unwrap(), "an internal root");
            e.drops.insert(
                99,
                DropRecord {
                    root,
                    progress: Key::MIN,
                },
            );
            e.dirty_drops.insert(99);
            e.commit().unwrap();
        }
        drop(p);
        let p = Pool::open_on(Arc::new(mem.clone()), &opts).unwrap();
        p.finish_frees();
        for i in (0..2000u64).step_by(97) {
            let want = vec![(i % 251) as u8 + 1; 4096];
            assert_eq!(
                p.read_file(m, f, i * 8192, 4096).unwrap(),
                want,
                "block {i}"
            );
        }
        let r = p.fsck(&FsckOptions::default()).unwrap();
        assert!(!r.is_clean(), "the root is held twice:\n{r}");
        assert!(!r.to_string().contains("marked free"), "{r}");
    }
}
