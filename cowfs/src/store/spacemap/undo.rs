//! Undo of one filesystem operation's reference-count changes. An operation makes
//! many tree changes, and each may stop with ENOSPC (or EDQUOT) after the ones before
//! it were applied; the pool then puts everything back as it was before the
//! operation (format-spec §8.3). Changes are journaled by range, not by block, so a
//! journal follows the number of calls (one per extent freed), not the blocks.

use rustc_hash::FxHashSet;

use super::{SpaceMap, COUNTS_PER_LEAF};
use crate::store::device::BlockDevice;
use crate::store::{BlockAddr, StoreResult};

/// One change of the running operation, enough to reverse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Blocks allocated: count 0 -> 1, fresh.
    Alloc(BlockAddr, u64),
    /// One reference added to each block (`inc`, `claim`).
    Inc(BlockAddr, u64),
    /// One reference dropped from each block.
    Dec(BlockAddr, u64),
}

impl Change {
    /// `next` merged into `self` when it continues the same kind of range.
    fn merge(&mut self, next: Change) -> bool {
        match (self, next) {
            (Change::Alloc(s, n), Change::Alloc(t, m))
            | (Change::Inc(s, n), Change::Inc(t, m))
            | (Change::Dec(s, n), Change::Dec(t, m))
                if *s + *n == t =>
            {
                *n += m;
                true
            }
            _ => false,
        }
    }
}

/// The running operation's journal.
#[derive(Default)]
pub(super) struct Journal {
    on: bool,
    changes: Vec<Change>,
    cursor: u64,
    /// Blocks of this transaction the operation freed: not allocatable until it
    /// ends. An undo maps them again, so their content must still be theirs (a data
    /// block reused and overwritten within the operation came back with someone
    /// else's bytes under its old checksum).
    held: FxHashSet<BlockAddr>,
}

impl SpaceMap {
    /// Start journaling the changes of one operation (see `undo_op`).
    pub fn begin_op(&mut self) {
        self.journal.on = true;
        self.journal.changes.clear();
        self.journal.cursor = self.cursor;
    }

    /// A fresh block the running operation freed (see `Journal::held`).
    pub(super) fn hold_for_undo(&mut self, b: BlockAddr) {
        if self.journal.on {
            self.journal.held.insert(b);
        }
    }

    pub(super) fn held_for_undo(&self, b: BlockAddr) -> bool {
        self.journal.on && self.journal.held.contains(&b)
    }

    /// The operation completed: forget its journal.
    pub fn end_op(&mut self) {
        self.journal.on = false;
        self.journal.held.clear();
        if self.journal.changes.capacity() > 1 << 12 {
            self.journal.changes = Vec::new();
        } else {
            self.journal.changes.clear();
        }
    }

    pub(super) fn note(&mut self, c: Change) {
        if !self.journal.on {
            return;
        }
        let merged = self.journal.changes.last_mut().is_some_and(|l| l.merge(c));
        if !merged {
            self.journal.changes.push(c);
        }
    }

    /// Reverse every change since `begin_op`, newest first: counts, the blocks
    /// allocated in this transaction (`fresh`) and those waiting for the commit
    /// (`pending_free`), the allocation cursor.
    ///
    /// A dropped reference that reached zero put the block in `pending_free` if the
    /// last commit references it, else took it out of `fresh`; so on the way back
    /// membership of `pending_free` tells which. (A fresh block freed and allocated
    /// again in the operation has its allocation undone first.)
    pub fn undo_op(&mut self, dev: &dyn BlockDevice) -> StoreResult<()> {
        self.journal.on = false;
        let changes = std::mem::take(&mut self.journal.changes);
        for c in changes.iter().rev() {
            match *c {
                Change::Alloc(start, n) => {
                    for b in start..start + n {
                        self.set(dev, b, 0)?;
                        self.fresh.remove(b);
                    }
                }
                Change::Inc(start, n) => {
                    for b in start..start + n {
                        let v = self.get(dev, b)?;
                        self.set(dev, b, v.saturating_sub(1))?;
                    }
                }
                Change::Dec(start, n) => {
                    for b in start..start + n {
                        let v = self.get(dev, b)?;
                        self.set(dev, b, v + 1)?;
                        if v == 0 && !self.pending_free.remove(b) {
                            self.fresh.insert(b);
                        }
                    }
                }
            }
        }
        // A leaf the operation filled may have been marked full.
        for c in &changes {
            let (Change::Alloc(s, n) | Change::Inc(s, n) | Change::Dec(s, n)) = *c;
            for leaf in s / COUNTS_PER_LEAF..=(s + n.max(1) - 1) / COUNTS_PER_LEAF {
                self.full_leaves.remove(&leaf);
            }
        }
        self.cursor = self.journal.cursor;
        self.journal.changes = changes;
        self.end_op();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::MemDevice;

    /// Allocations, references added and dropped (to zero, of a fresh and of a
    /// committed block) are all reversed: counts, availability and what is fresh are
    /// as before; a fresh block freed is not handed out again within the operation,
    /// and is once it has ended.
    #[test]
    fn undo_restores_counts_fresh_and_pending() {
        let dev = MemDevice::new();
        let mut m = SpaceMap::create(4096, 1);
        let (old, _) = m.alloc(&dev, 4).unwrap();
        m.commit_written();
        let (young, _) = m.alloc(&dev, 2).unwrap();
        m.inc(&dev, old, 1).unwrap();
        let before: Vec<u32> = (0..64).map(|b| m.get(&dev, b).unwrap()).collect();
        let (avail, used) = (m.available(), m.used());
        m.begin_op();
        m.dec(&dev, old).unwrap();
        m.dec_range(&dev, old + 1, 2).unwrap();
        m.dec(&dev, young).unwrap();
        m.inc(&dev, young + 1, 1).unwrap();
        m.rewind();
        let (again, _) = m.alloc(&dev, 1).unwrap();
        assert_ne!(
            again, young,
            "a fresh block the operation freed waits for its end"
        );
        m.undo_op(&dev).unwrap();
        let after: Vec<u32> = (0..64).map(|b| m.get(&dev, b).unwrap()).collect();
        assert_eq!(after, before);
        assert_eq!((m.available(), m.used()), (avail, used));
        assert!(m.is_fresh(young) && m.is_fresh(young + 1));
        assert!(!m.is_fresh(old + 1));
        assert_eq!(m.pending_free_count(), 0);
        assert_eq!(m.cursor(), young + 2);
        // Outside an operation's journal (or after it), a freed fresh block is
        // reused at once.
        m.begin_op();
        m.dec(&dev, young).unwrap();
        m.end_op();
        m.rewind();
        let (again, _) = m.alloc(&dev, 1).unwrap();
        assert_eq!(again, young);
    }
}
