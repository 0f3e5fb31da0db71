//! Blocks a ZERO_RANGE turned from written into unwritten where they are
//! (`SpaceMap::mark_converted`). Filling an unwritten block in place is safe
//! only when no durable tree calls it written (on-disk.md, "Unwritten blocks
//! are filled in place"); until the commit that records the conversion is
//! durable, the previous one still maps the block as written data, and a read
//! that started before it may still be reading that data outside the pool lock.
//! So a converted block follows the way of a freed one (running transaction,
//! commit in flight, quarantine, held while a pin exists: a pinned tree may
//! still call it written) and may be filled in place only once through.

use super::block_set::BlockSet;
use crate::store::BlockAddr;

#[derive(Default)]
pub(super) struct Converted {
    running: BlockSet,
    in_flight: BlockSet,
    quarantine: BlockSet,
    held: BlockSet,
}

impl Converted {
    pub(super) fn mark(&mut self, start: BlockAddr, len: u64) {
        self.running.insert_range(start..start + len);
    }

    pub(super) fn contains(&self, b: BlockAddr) -> bool {
        self.running.contains(b)
            || self.in_flight.contains(b)
            || self.quarantine.contains(b)
            || self.held.contains(b)
    }

    pub(super) fn commit_written(&mut self) {
        self.in_flight.take_all(&mut self.running);
    }

    pub(super) fn commit_durable(&mut self) {
        self.quarantine.take_all(&mut self.in_flight);
    }

    pub(super) fn release_quarantine(&mut self, pinned: bool) {
        if pinned {
            self.held.take_all(&mut self.quarantine);
        } else {
            self.quarantine.clear();
        }
    }

    pub(super) fn release_held(&mut self) {
        self.held.clear();
    }
}
