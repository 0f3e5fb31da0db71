//! How much one filesystem operation can change at most, so that the pool can tell
//! whether it could run out of room (or quota) halfway. Such an operation is
//! journaled and undone as a whole if it fails (format-spec §8.3); the journal costs
//! a copy of every dirty node an operation changes, so an operation that cannot run
//! out of room skips it.

use super::BranchId;
use super::Engine;
use crate::store::BLOCK_SIZE;

const BS: u64 = BLOCK_SIZE as u64;

/// A bound on the tree changes (item inserts and removes) and data blocks of one
/// operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpSize {
    changes: u64,
    data: u64,
}

impl OpSize {
    /// An operation of at most `changes` item changes and no data.
    pub(crate) const fn changes(changes: u64) -> OpSize {
        OpSize { changes, data: 0 }
    }

    /// An operation on `len` bytes of one file (write, fallocate, punch, clone):
    /// per block of the range at most one data block, one extent item added and
    /// one removed, and the extents cut at both ends; plus `changes` more (inode,
    /// inline bytes, partial blocks).
    pub(crate) fn bytes(len: u64, changes: u64) -> OpSize {
        let blocks = len.div_ceil(BS).saturating_add(2);
        OpSize {
            changes: blocks.saturating_mul(3).saturating_add(changes),
            data: blocks,
        }
    }
}

impl Engine {
    /// Whether an operation of `size` on branch `b` (None: no bound known) must be
    /// journaled: it could stop for room or quota after changing something.
    pub(crate) fn needs_journal(&mut self, b: BranchId, size: Option<OpSize>) -> bool {
        let Some(size) = size else {
            return true;
        };
        if self.st.data_budget.is_some() {
            return true;
        }
        let Some(root) = self.branches.get(&b).map(|r| r.root) else {
            return true;
        };
        let Ok(node) = self.st.read(root, None) else {
            return true;
        };
        let levels = u64::from(node.level()) + 1;
        !self.st.room_for_op(size.changes, size.data, levels)
    }
}
