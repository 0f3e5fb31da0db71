//! Releasing a tree in steps of bounded work (a deleted branch's, or the old
//! tree of a reset branch). Releasing a 40 GiB tree in one `drop_ref` held the
//! pool lock for 0.35 s; here each step releases about `budget` nodes and
//! extents and reports how far it got, so the caller can let the lock go.
//!
//! The walk is left to right. The state between two steps is the root and a
//! progress key: everything wholly below it is released (those blocks may be in
//! use by others already, so they are never read again), everything from it on
//! is untouched, except the nodes on the path to it. Those are unique (count 1:
//! only this tree reached them, and nothing can reach it any more), so they stay
//! allocated and readable until their last child is done. A shared child loses
//! one reference and is skipped whole, as `drop_ref` does.

use super::NodeStore;
use crate::btree::{Key, Node};
use crate::store::{BlockAddr, StoreResult};

impl NodeStore {
    /// Whether dropping the reference to `root` should go in steps: it is the
    /// last reference (else the drop is one decrement) and the root is not a
    /// leaf (a leaf is one node: freed at once).
    pub fn drops_in_steps(&mut self, root: BlockAddr) -> StoreResult<bool> {
        if self.space.get(&*self.dev, root)? != 1 {
            return Ok(false);
        }
        Ok(matches!(&*self.read(root, None)?, Node::Internal(..)))
    }

    /// One step of releasing the tree at `root` (count 1) from key `progress`
    /// on: about `budget` nodes and extents (a leaf is released whole). The new
    /// progress, or None once the whole tree, root included, is released.
    pub fn drop_step(
        &mut self,
        root: BlockAddr,
        progress: Key,
        budget: u64,
    ) -> StoreResult<Option<Key>> {
        if self.space.get(&*self.dev, root)? != 1 {
            return Err(self.corrupt(root, "root of a tree being dropped is shared".into()));
        }
        let mut at = progress;
        let mut left = budget;
        if self.drop_from(root, None, None, &mut at, &mut left)? {
            self.release(root)?;
            return Ok(None);
        }
        Ok(Some(at))
    }

    /// Work through unique node `addr` (at level `expect`; its keys are below
    /// `hi`, None: unbounded) from `*at` on while `*left` lasts, moving `*at` to
    /// the upper bound of each child done. Whether every child is done: the
    /// caller then releases the node itself.
    fn drop_from(
        &mut self,
        addr: BlockAddr,
        expect: Option<u8>,
        hi: Option<Key>,
        at: &mut Key,
        left: &mut u64,
    ) -> StoreResult<bool> {
        let node = self.read(addr, expect)?;
        match &*node {
            Node::Leaf(items) => {
                for (k, v) in items {
                    if let Some((start, len)) = (self.refs_of)(k, v) {
                        self.space.dec_range(&*self.dev, start, len)?;
                    }
                }
                *left = left.saturating_sub(items.len() as u64);
                Ok(true)
            }
            Node::Internal(level, kids) => {
                for (i, (_, child)) in kids.iter().enumerate() {
                    let child_hi = kids.get(i + 1).map(|x| x.0).or(hi);
                    // Released in an earlier step: its block may be reused.
                    if child_hi.is_some_and(|h| h <= *at) {
                        continue;
                    }
                    if *left == 0 {
                        return Ok(false);
                    }
                    *left -= 1;
                    let rc = self.space.get(&*self.dev, *child)?;
                    if rc == 0 {
                        return Err(
                            self.corrupt(*child, "tree being dropped points at a free node".into())
                        );
                    }
                    if rc > 1 {
                        // Shared: untouched so far (a node this walk entered is
                        // unique), it loses this tree's reference only.
                        self.space.dec(&*self.dev, *child)?;
                    } else if self.drop_from(*child, Some(level - 1), child_hi, at, left)? {
                        self.release(*child)?;
                    } else {
                        return Ok(false);
                    }
                    if let Some(h) = child_hi {
                        *at = h;
                    }
                }
                Ok(true)
            }
        }
    }

    /// Drop the last reference to node `addr`, whose children and extents are
    /// released already, and forget it.
    pub(super) fn release(&mut self, addr: BlockAddr) -> StoreResult<()> {
        self.space.dec(&*self.dev, addr)?;
        self.forget(addr);
        Ok(())
    }
}
