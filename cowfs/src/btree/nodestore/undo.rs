//! Undo of one filesystem operation's node changes: a create (inode, two directory
//! items, the parent's inode), a rename, a write (data, extent items, inode) makes
//! several tree changes, and each may stop with ENOSPC or EDQUOT after others were
//! applied. The pool journals every operation and, when it fails, puts back the
//! nodes, the space map (`SpaceMap::undo_op`), the data blocks rewritten in place
//! and the manifest notes as they were before it (format-spec §8.3).
//!
//! The cost on success is a journal entry per node the operation makes or drops and,
//! for a node already dirty before the operation, one copy at its first change (the
//! journal keeps the original).

use rustc_hash::FxHashSet;
use std::sync::Arc;

use super::NodeStore;
use crate::btree::node::Node;
use crate::store::{BlockAddr, StoreError, StoreResult, BLOCK_SIZE};

pub(super) enum Undo {
    /// A node the operation allocated: drop it.
    Alloc(BlockAddr),
    /// A dirty node as it was before the operation changed or dropped it.
    Restore(BlockAddr, Arc<Node>),
    /// Data blocks the operation rewrote in place, with their old content.
    Data(BlockAddr, Vec<u8>),
    /// A block's manifest note before the operation wrote it.
    Written(BlockAddr, Option<u32>),
}

/// The running operation's journal.
#[derive(Default)]
pub(super) struct OpJournal {
    pub(super) undo: Vec<Undo>,
    /// Nodes already journaled (or made) by this operation.
    pub(super) touched: FxHashSet<BlockAddr>,
}

impl NodeStore {
    /// Start journaling one filesystem operation.
    pub fn begin_op(&mut self) {
        let mut j = self.op_spare.take().unwrap_or_default();
        j.undo.clear();
        j.touched.clear();
        self.op = Some(j);
        self.space.begin_op();
    }

    /// The operation completed: keep its changes.
    pub fn end_op(&mut self) {
        self.space.end_op();
        if let Some(mut j) = self.op.take() {
            // Keep the buffers of ordinary operations for the next one.
            if j.undo.capacity() <= 1 << 12 && j.touched.capacity() <= 1 << 12 {
                j.undo.clear();
                j.touched.clear();
                self.op_spare = Some(j);
            }
        }
    }

    /// The operation failed: put back everything it changed, newest first. An
    /// error here (a data block that cannot be written back) leaves the pool in
    /// an unknown state: the caller makes it read-only.
    pub fn undo_op(&mut self) -> StoreResult<()> {
        let Some(mut j) = self.op.take() else {
            return Ok(());
        };
        for u in j.undo.drain(..).rev() {
            match u {
                Undo::Alloc(a) => {
                    self.dirty.remove(&a);
                }
                Undo::Restore(a, n) => {
                    self.dirty.insert(a, n);
                }
                Undo::Data(a, old) => {
                    self.dev
                        .write_data_at(a, &old)
                        .map_err(|source| StoreError::Io {
                            pool: self.dev.name(),
                            block: a,
                            source,
                        })?;
                }
                Undo::Written(a, old) => {
                    if let Some(w) = self.written.as_mut() {
                        match old {
                            Some(c) => w.insert(a, c),
                            None => w.remove(&a),
                        };
                    }
                }
            }
        }
        self.space.undo_op(&*self.dev)
    }

    pub(super) fn journal_alloc(&mut self, addr: BlockAddr) {
        if let Some(j) = self.op.as_mut() {
            j.undo.push(Undo::Alloc(addr));
            j.touched.insert(addr);
        }
    }

    /// Before a dirty node's first change in the operation: keep the original.
    pub(super) fn journal_change(&mut self, addr: BlockAddr) {
        if let Some(j) = self.op.as_mut() {
            if j.touched.insert(addr) {
                if let Some(n) = self.dirty.get(&addr) {
                    j.undo.push(Undo::Restore(addr, n.clone()));
                }
            }
        }
    }

    /// A dirty node the operation drops.
    pub(super) fn journal_drop(&mut self, addr: BlockAddr, node: Arc<Node>) {
        if let Some(j) = self.op.as_mut() {
            j.undo.push(Undo::Restore(addr, node));
        }
    }

    pub(super) fn journal_written(&mut self, addr: BlockAddr) {
        if let (Some(j), Some(w)) = (self.op.as_mut(), self.written.as_ref()) {
            j.undo.push(Undo::Written(addr, w.get(&addr).copied()));
        }
    }

    /// Keep the content of `blocks` data blocks at `start` that the operation is
    /// about to overwrite in place (blocks of this transaction that the tree before
    /// the operation maps, with their checksums).
    pub fn keep_for_undo(&mut self, start: BlockAddr, blocks: u64) -> StoreResult<()> {
        if self.op.is_none() {
            return Ok(());
        }
        let mut old = vec![0u8; blocks as usize * BLOCK_SIZE];
        self.dev
            .read_data_at(start, &mut old)
            .map_err(|source| StoreError::Io {
                pool: self.dev.name(),
                block: start,
                source,
            })?;
        if let Some(j) = self.op.as_mut() {
            j.undo.push(Undo::Data(start, old));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::{tree, Key};
    use crate::store::device::MemDevice;
    use crate::store::spacemap::SpaceMap;

    /// Tree changes undone as a whole: inserts that split leaves and grow the
    /// root, on a tree with dirty nodes before the operation, and on one that
    /// shares committed nodes. Afterwards every key reads as before, and the
    /// blocks in use are the same.
    #[test]
    fn undo_puts_a_tree_back() {
        let dev = Arc::new(MemDevice::new());
        let mut st = NodeStore::new(dev, SpaceMap::create(4096, 7), 7, 1, 1 << 20, |_, _| None);
        let mut root = tree::create_empty(&mut st).unwrap();
        for i in 0..40u64 {
            root = tree::insert(&mut st, root, Key::new(i, 0, 0), vec![1; 200]).unwrap();
        }
        st.write_dirty_nodes().unwrap();
        st.commit_written();
        // Some dirty nodes before the operation.
        for i in 0..5u64 {
            root = tree::insert(&mut st, root, Key::new(i, 1, 0), vec![2; 200]).unwrap();
        }
        let before = tree::collect(&mut st, root, &Key::MIN, &Key::MAX).unwrap();
        let used = st.space.used();
        st.begin_op();
        let mut r = root;
        for i in 0..200u64 {
            r = tree::insert(&mut st, r, Key::new(i, 2, 0), vec![3; 300]).unwrap();
        }
        r = tree::remove(&mut st, r, &Key::new(3, 0, 0)).unwrap().0;
        assert_eq!(
            tree::collect(&mut st, r, &Key::MIN, &Key::MAX)
                .unwrap()
                .len(),
            244
        );
        assert!(st.space.used() > used + 10, "the inserts split leaves");
        st.undo_op().unwrap();
        assert_eq!(
            tree::collect(&mut st, root, &Key::MIN, &Key::MAX).unwrap(),
            before
        );
        assert_eq!(st.space.used(), used);
    }
}
