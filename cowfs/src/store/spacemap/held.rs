//! Pins: while a long reader (a `diff`, which drops the pool lock between its
//! steps) walks trees of a commit, nothing those trees reach may be overwritten.
//! Blocks are overwritten only once allocatable again, so while any pin exists,
//! blocks whose quarantine ends (`SpaceMap::release_quarantine`) are held here
//! instead, and become allocatable when the last pin goes. The set lives in
//! memory only: after a crash the durable map counts them free, and nothing
//! durable refers to them (they were freed by durable commits).

use super::block_set::BlockSet;
use crate::store::BlockAddr;

#[derive(Default)]
pub(super) struct Held {
    pins: usize,
    blocks: BlockSet,
}

impl Held {
    pub(super) fn pin(&mut self) {
        self.pins += 1;
    }

    /// Drop one pin; whether it was the last (the held blocks are released).
    pub(super) fn unpin(&mut self) -> bool {
        self.pins = self.pins.saturating_sub(1);
        if self.pins == 0 {
            self.blocks.clear();
        }
        self.pins == 0
    }

    pub(super) fn pinned(&self) -> bool {
        self.pins > 0
    }

    /// Keep the blocks leaving quarantine if a pin exists, else let them go.
    pub(super) fn release(&mut self, quarantine: &mut BlockSet) {
        if self.pinned() {
            self.blocks.take_all(quarantine);
        } else {
            quarantine.clear();
        }
    }

    pub(super) fn contains(&self, b: BlockAddr) -> bool {
        self.blocks.contains(b)
    }

    pub(super) fn len(&self) -> u64 {
        self.blocks.len()
    }
}
