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
    /// A search for a free leaf found none in this transaction: until the next
    /// commit, metadata that finds no room in its leaves goes among the data
    /// without searching again.
    dry: bool,
    /// The host of the pool file is nearly full (`SpaceMap::set_host_low`).
    host_low: bool,
}

impl MetaArea {
    pub fn any(&self) -> bool {
        !self.leaves.is_empty()
    }

    pub fn holds(&self, leaf_no: u64) -> bool {
        self.leaves.contains(&leaf_no)
    }

    /// Whether data keeps out of these leaves (not near a full host).
    pub fn kept_from_data(&self) -> bool {
        !self.host_low
    }
}

impl SpaceMap {
    /// A commit was written: blocks it freed become allocatable soon, so a leaf
    /// may be free again.
    pub(super) fn meta_commit_written(&mut self) {
        self.meta.dry = false;
    }

    /// Where zeros written ahead of the data cursor from `b` must stop: the start
    /// of the first metadata leaf after `b`, or `b` itself if it lies in one.
    pub fn next_meta_leaf(&self, b: BlockAddr) -> Option<BlockAddr> {
        self.meta
            .leaves
            .range(b / COUNTS_PER_LEAF..)
            .next()
            .map(|l| (l * COUNTS_PER_LEAF).max(b))
    }

    /// Near a full host the data allocator may fill holes in metadata leaves
    /// before it grows the pool file (`NodeStore::available`, which counts them
    /// as room inside the file).
    pub fn set_host_low(&mut self, low: bool) {
        self.meta.host_low = low;
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
            if let Some(first) = first.filter(|_| !self.meta.wrapped) {
                self.meta.wrapped = true;
                self.meta.cursor = first * COUNTS_PER_LEAF;
                continue;
            }
            // A whole pass found nothing: a new leaf, unless a search in this
            // transaction already found none.
            if !self.meta.dry {
                match self.free_leaf(dev)? {
                    Some(leaf) if self.back_leaf(dev, leaf) => {
                        self.meta.leaves.insert(leaf);
                        self.meta.wrapped = false;
                        self.meta.cursor = leaf * COUNTS_PER_LEAF;
                        continue;
                    }
                    _ => self.meta.dry = true,
                }
            }
            // Among the data, as before metadata leaves; the next call makes one
            // pass over the leaves again (blocks freed in them become allocatable
            // as commits complete).
            if let Some(first) = first {
                self.meta.cursor = first * COUNTS_PER_LEAF;
            }
            return Ok(self.alloc(dev, 1)?.0);
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
            if self.load_leaf(dev, leaf)?.is_empty()
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
    /// write the host's allocation metadata. False if the host refused: the leaf is
    /// not taken then, since its nodes would need host space nobody checked.
    fn back_leaf(&mut self, dev: &dyn BlockDevice, leaf: u64) -> bool {
        let len = dev.len_blocks();
        let (start, end) = (leaf * COUNTS_PER_LEAF, (leaf + 1) * COUNTS_PER_LEAF);
        if !dev.is_sparse() || end <= len {
            return true;
        }
        let gap_free = len < start && self.all_allocatable(dev, len, start).unwrap_or(false);
        let from = if gap_free { len } else { start.max(len) };
        dev.back(from, end - from)
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

    /// Let blocks freed since the last commit be allocated (two commits later
    /// in the engine; here at once).
    fn settle_commits(m: &mut SpaceMap) {
        m.commit_written();
        m.commit_durable();
        m.release_quarantine();
    }

    /// A whole leaf's worth of nodes: one metadata leaf, full.
    fn a_leaf_of_nodes(m: &mut SpaceMap, dev: &MemDevice) -> Vec<BlockAddr> {
        (0..COUNTS_PER_LEAF)
            .map(|_| m.alloc_meta(dev).unwrap())
            .collect()
    }

    /// Every block data can still get, in order.
    fn all_the_rest_as_data(m: &mut SpaceMap, dev: &MemDevice) -> Vec<BlockAddr> {
        let mut data = Vec::new();
        while let Ok((a, n)) = m.alloc(dev, 64) {
            data.extend(a..a + n);
        }
        data
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
        let first = a_leaf_of_nodes(&mut m, &dev);
        settle_commits(&mut m);
        for b in &first[..500] {
            m.dec(&dev, *b).unwrap();
        }
        // Freed blocks wait for the commit that frees them to be durable.
        settle_commits(&mut m);
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
        settle_commits(&mut m);
        assert_eq!(m.alloc_meta(&dev).unwrap(), 5);
        assert!(
            m.meta.dry,
            "the failed search is remembered until the commit"
        );
        m.commit_written();
        assert!(!m.meta.dry);
    }

    #[test]
    fn after_going_among_the_data_metadata_comes_back_to_its_leaves() {
        let dev = MemDevice::new();
        let mut m = map(8 * COUNTS_PER_LEAF);
        let metas = a_leaf_of_nodes(&mut m, &dev);
        let leaf = metas[0] / COUNTS_PER_LEAF;
        let data = all_the_rest_as_data(&mut m, &dev);
        settle_commits(&mut m);
        // Its leaf full, no free leaf: a node goes into a hole among the data.
        for b in &data[..5] {
            m.dec(&dev, *b).unwrap();
        }
        settle_commits(&mut m);
        let among = m.alloc_meta(&dev).unwrap();
        assert_ne!(among / COUNTS_PER_LEAF, leaf);
        // Once nodes in the leaf are freed, the next ones go there again.
        for b in &metas[..5] {
            m.dec(&dev, *b).unwrap();
        }
        settle_commits(&mut m);
        for _ in 0..5 {
            assert_eq!(m.alloc_meta(&dev).unwrap() / COUNTS_PER_LEAF, leaf);
        }
    }

    #[test]
    fn near_a_full_host_data_fills_holes_in_metadata_leaves() {
        let dev = MemDevice::new();
        let mut m = map(8 * COUNTS_PER_LEAF);
        // A leaf of nodes, everything else data; then ten of each freed.
        let metas = a_leaf_of_nodes(&mut m, &dev);
        let data = all_the_rest_as_data(&mut m, &dev);
        let late = &data[data.len() - 10..];
        for b in metas[..10].iter().chain(late) {
            m.dec(&dev, *b).unwrap();
        }
        settle_commits(&mut m);
        m.rewind();
        assert!(
            late.contains(&m.alloc(&dev, 1).unwrap().0),
            "data keeps out"
        );
        m.set_host_low(true);
        m.rewind();
        assert_eq!(
            m.alloc(&dev, 1).unwrap().0,
            metas[0],
            "the first hole, in the leaf"
        );
    }
}
