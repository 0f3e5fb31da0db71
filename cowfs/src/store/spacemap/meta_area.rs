//! Metadata leaves: tree nodes and space-map pages are allocated apart from file
//! data, in the blocks of whole space-map leaves set aside for them (a leaf counts
//! 1012 blocks, about 4 MiB of pool).
//!
//! Why: copying a node that a branch shares adds a reference to each of its
//! children, and a commit rewrites every space-map leaf page in which a count
//! changed. With nodes allocated among the data they describe, the children of a
//! big tree's nodes lie in as many leaf pages as there are children: a branch
//! created from a busy 8 GiB parent made the parent's next commit rewrite about
//! 130 leaf pages (measured; 4 with each branch deleted at once). Kept together,
//! they share a few pages, and so do the old copies a commit frees.
//!
//! Which leaves are set aside lives only in memory: after a restart new ones are
//! chosen, and data may fill the holes of old ones. Nothing on disk depends on it;
//! a pool without a free leaf near the cursor allocates metadata among the data,
//! as before.

use std::collections::BTreeSet;

use super::{SpaceMap, COUNTS_PER_LEAF, FIRST_USABLE};
use crate::store::device::{BlockDevice, BACK_HOST_MIN};
use crate::store::{BlockAddr, StoreResult, BLOCK_SIZE};

/// How many leaves past the data cursor a search for a free one looks at (256
/// MiB of pool); beyond that metadata goes among the data.
const SEARCH_LEAVES: u64 = 64;

#[derive(Default)]
pub(super) struct MetaArea {
    /// Leaf numbers set aside.
    leaves: BTreeSet<u64>,
    /// Where the next metadata allocation looks first (next fit, like data).
    cursor: BlockAddr,
    /// Since the last allocation, the cursor went past the last leaf once and
    /// started over: the next time it gets there, a leaf is added instead.
    wrapped: bool,
}

impl MetaArea {
    pub fn any(&self) -> bool {
        !self.leaves.is_empty()
    }

    pub fn holds(&self, leaf_no: u64) -> bool {
        self.leaves.contains(&leaf_no)
    }
}

impl SpaceMap {
    /// The first block of the first metadata leaf that starts at or after `b`:
    /// where zeros written ahead of the data cursor must stop.
    pub fn next_meta_leaf(&self, b: BlockAddr) -> Option<BlockAddr> {
        let leaf = b.div_ceil(COUNTS_PER_LEAF);
        self.meta
            .leaves
            .range(leaf..)
            .next()
            .map(|l| l * COUNTS_PER_LEAF)
    }

    /// One block, count 1, for a tree node or a space-map page: next fit through
    /// the metadata leaves; after a whole pass without a free block, a new leaf.
    pub fn alloc_meta(&mut self, dev: &dyn BlockDevice) -> StoreResult<BlockAddr> {
        loop {
            let at = self.meta.cursor;
            let from_leaf = at / COUNTS_PER_LEAF;
            let next = self.meta.leaves.range(from_leaf..).next().copied();
            if let Some(leaf) = next {
                if !self.full_leaves.contains(&leaf) {
                    let from = at.max(leaf * COUNTS_PER_LEAF);
                    let (found, any_zero) = self.first_allocatable(dev, leaf, from)?;
                    if let Some(b) = found {
                        self.take(dev, b, 1)?;
                        self.meta.cursor = b + 1;
                        self.meta.wrapped = false;
                        return Ok(b);
                    }
                    if !any_zero && from == leaf * COUNTS_PER_LEAF {
                        self.full_leaves.insert(leaf);
                    }
                }
                self.meta.cursor = (leaf + 1) * COUNTS_PER_LEAF;
                continue;
            }
            let first = self.meta.leaves.first().copied();
            match first {
                Some(first) if !self.meta.wrapped => {
                    self.meta.wrapped = true;
                    self.meta.cursor = first * COUNTS_PER_LEAF;
                }
                _ => match self.free_leaf(dev)? {
                    Some(leaf) => {
                        self.meta.leaves.insert(leaf);
                        self.meta.wrapped = false;
                        self.meta.cursor = leaf * COUNTS_PER_LEAF;
                        self.back_leaf(dev, leaf);
                    }
                    None => return Ok(self.alloc(dev, 1)?.0),
                },
            }
        }
    }

    /// A leaf past the data cursor every block of which can be allocated now. One
    /// that would grow a pool file is taken only while its host has room to spare
    /// (as for backing ahead): near a full host, nodes go where the data allocator
    /// puts them, inside the file first (`NodeStore::available`), so that the
    /// host's last blocks are kept for the commit's metadata.
    fn free_leaf(&mut self, dev: &dyn BlockDevice) -> StoreResult<Option<u64>> {
        let len = dev.len_blocks();
        let host_room = |end: u64| {
            let grow = end.saturating_sub(len) * BLOCK_SIZE as u64;
            grow == 0
                || dev
                    .host_free_bytes()
                    .is_none_or(|f| f >= grow + BACK_HOST_MIN)
        };
        let leaves = self.capacity.div_ceil(COUNTS_PER_LEAF);
        let mut leaf = self.cursor / COUNTS_PER_LEAF;
        for _ in 0..SEARCH_LEAVES {
            leaf += 1;
            // Whole leaves only: the last one may be cut short by the capacity.
            if (leaf + 1) * COUNTS_PER_LEAF > self.capacity {
                leaf = FIRST_USABLE.div_ceil(COUNTS_PER_LEAF);
            }
            let from = leaf * COUNTS_PER_LEAF;
            if leaf >= leaves
                || self.full_leaves.contains(&leaf)
                || self.meta.holds(leaf)
                || !host_room(from + COUNTS_PER_LEAF)
            {
                continue;
            }
            if self.load_leaf(dev, leaf)?.counts.iter().all(|c| *c == 0)
                && self.all_allocatable(dev, from, from + COUNTS_PER_LEAF)?
            {
                return Ok(Some(leaf));
            }
        }
        Ok(None)
    }

    /// A new metadata leaf past the end of a sparse pool file gets its storage
    /// now, with the free blocks between the end and it (format-spec §8.2): nodes
    /// written there one by one would otherwise make every commit's flush also
    /// write the host's allocation metadata. Best effort, like all backing.
    fn back_leaf(&mut self, dev: &dyn BlockDevice, leaf: u64) {
        let len = dev.len_blocks();
        let (start, end) = (leaf * COUNTS_PER_LEAF, (leaf + 1) * COUNTS_PER_LEAF);
        if !dev.is_sparse() || end <= len {
            return;
        }
        let gap_free = len < start && self.all_allocatable(dev, len, start).unwrap_or(false);
        let from = if gap_free { len } else { start.max(len) };
        dev.back(from, end - from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::MemDevice;
    use crate::store::StoreError;

    fn map(blocks: u64) -> SpaceMap {
        SpaceMap::create(blocks, 1)
    }

    #[test]
    fn metadata_gathers_in_its_own_leaves_and_data_keeps_out() {
        let dev = MemDevice::new();
        let mut m = map(64 * COUNTS_PER_LEAF);
        let mut data = Vec::new();
        let mut meta = Vec::new();
        // Interleaved as a filling pool does: a data extent, then a node.
        for _ in 0..3000 {
            let (a, n) = m.alloc(&dev, 8).unwrap();
            data.extend(a..a + n);
            meta.push(m.alloc_meta(&dev).unwrap());
        }
        let leaves = |v: &[BlockAddr]| {
            v.iter()
                .map(|b| b / COUNTS_PER_LEAF)
                .collect::<BTreeSet<_>>()
        };
        let (dl, ml) = (leaves(&data), leaves(&meta));
        // 3,000 nodes fill 3 leaves, not the ~24 the data spans.
        assert_eq!(ml.len(), 3, "{ml:?}");
        assert!(dl.len() >= 23, "{dl:?}");
        assert!(dl.is_disjoint(&ml), "data went into a metadata leaf");
    }

    #[test]
    fn freed_metadata_blocks_are_reused_before_a_new_leaf() {
        let dev = MemDevice::new();
        let mut m = map(16 * COUNTS_PER_LEAF);
        let first: Vec<BlockAddr> = (0..COUNTS_PER_LEAF)
            .map(|_| m.alloc_meta(&dev).unwrap())
            .collect();
        m.commit_written();
        m.commit_durable();
        for b in &first[..500] {
            m.dec(&dev, *b).unwrap();
        }
        // Freed blocks wait for the commit that frees them to be durable.
        m.commit_written();
        m.commit_durable();
        m.release_quarantine();
        let leaf = first[0] / COUNTS_PER_LEAF;
        for _ in 0..500 {
            assert_eq!(m.alloc_meta(&dev).unwrap() / COUNTS_PER_LEAF, leaf);
        }
        assert_eq!(m.meta.leaves.len(), 1);
        // Now full: the next one opens a second leaf.
        assert_ne!(m.alloc_meta(&dev).unwrap() / COUNTS_PER_LEAF, leaf);
        assert_eq!(m.meta.leaves.len(), 2);
    }

    #[test]
    fn a_full_pool_still_gives_every_block_to_either_kind() {
        let dev = MemDevice::new();
        let cap = 4 * COUNTS_PER_LEAF;
        let mut m = map(cap);
        let node = m.alloc_meta(&dev).unwrap();
        // Data takes everything, the metadata leaf's free blocks last.
        let mut n = 1;
        while let Ok((_, got)) = m.alloc(&dev, 100) {
            n += got;
        }
        assert_eq!(
            n,
            cap - FIRST_USABLE,
            "every block but the slots was handed out"
        );
        assert!(matches!(
            m.alloc_meta(&dev),
            Err(StoreError::NoSpace { .. })
        ));
        assert_eq!(node / COUNTS_PER_LEAF, 1);
        // A node when no leaf is free: among the data, as before.
        let mut m = map(cap);
        while m.alloc(&dev, 100).is_ok() {}
        m.dec(&dev, 5).unwrap();
        m.commit_written();
        m.commit_durable();
        m.release_quarantine();
        assert_eq!(m.alloc_meta(&dev).unwrap(), 5);
    }
}
