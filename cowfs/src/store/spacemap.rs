//! The space map: one u32 reference count per block, kept in 4 KiB leaf pages under a
//! radix of index pages. The map is itself copy-on-write: a page changed in a
//! transaction is written to a fresh block at commit, so the committed map is never
//! overwritten. A block is free when its count is zero; a block freed in the running
//! transaction stays unusable until the commit that freed it is durable.

use std::collections::BTreeSet;
use std::ops::Range;

use rustc_hash::{FxHashMap, FxHashSet};

use block_set::BlockSet;

use super::block::{seal, verify, BlockKind, HEADER_SIZE, PAYLOAD_SIZE};
use super::device::BlockDevice;
use super::le::*;
use super::runs::RunWriter;
use super::{BlockAddr, StoreError, StoreResult, BLOCK_SIZE};

mod block_set;
mod converted;
mod held;
mod meta_area;
#[cfg(test)]
mod range_ops_tests;
mod undo;
use meta_area::MetaArea;
use undo::{Change, Journal};

/// Reference counts per leaf page.
pub const COUNTS_PER_LEAF: u64 = (PAYLOAD_SIZE / 4) as u64;
/// Child pointers per index page.
pub const PTRS_PER_INDEX: u64 = (PAYLOAD_SIZE / 8) as u64;
/// Blocks 0 and 1 are the superblock slots; they carry a permanent count of 1.
pub const FIRST_USABLE: u64 = 2;

/// How far (in blocks, 256 MiB) the allocation cursor may run past twice the blocks
/// in use before it wraps to the start (see `SpaceMap::commit_written`).
const WRAP_SLACK: u64 = 65536;

/// A dirty space-map page to write at commit.
enum Page {
    Leaf(u64),
    Index((u8, u64)),
}

struct Leaf {
    addr: BlockAddr,
    counts: Box<[u32]>,
    dirty: bool,
}

impl Leaf {
    /// No block it counts is in use.
    fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }
}

struct Index {
    addr: BlockAddr,
    ptrs: Box<[u64]>,
    dirty: bool,
}

/// Index levels needed so that the root index page can reach every leaf.
pub fn depth_for(capacity_blocks: u64) -> u8 {
    let leaves = capacity_blocks.div_ceil(COUNTS_PER_LEAF).max(1);
    let mut depth = 1u8;
    let mut reach = PTRS_PER_INDEX;
    while reach < leaves {
        reach = reach.saturating_mul(PTRS_PER_INDEX);
        depth += 1;
    }
    depth
}

pub struct SpaceMap {
    capacity: u64,
    depth: u8,
    root: BlockAddr,
    pool_id: u64,
    leaves: FxHashMap<u64, Leaf>,
    index: FxHashMap<(u8, u64), Index>,
    /// Blocks allocated in the running transaction (safe to overwrite in place).
    fresh: BlockSet,
    /// Blocks freed in the running transaction that are live in the last commit.
    pending_free: BlockSet,
    /// Freed by a commit that is written but not yet flushed: the durable state
    /// may still refer to them.
    in_flight: BlockSet,
    /// Freed by the last durable commit: nothing durable refers to them, but a
    /// file read that started before that commit may still be reading them outside
    /// the pool lock. Allocatable once the pool has seen those reads finish
    /// (`release_quarantine`).
    quarantine: BlockSet,
    /// Out of quarantine while a pin exists (held.rs): not allocatable until the
    /// last pin goes.
    held: held::Held,
    /// Written blocks made unwritten in place, not to be filled in place yet.
    converted: converted::Converted,
    used: u64,
    cursor: u64,
    /// Leaf pages known to have no free entry, skipped by the allocator.
    full_leaves: BTreeSet<u64>,
    /// Leaf pages with `dirty` set: a commit visits these, not every resident page
    /// (their number follows the pool size, and a commit must not).
    dirty_leaves: BTreeSet<u64>,
    /// The running filesystem operation's changes, to undo it as a whole.
    journal: Journal,
    /// Leaves set aside for tree nodes and space-map pages (meta_area.rs).
    meta: MetaArea,
    /// How many leaf pages a commit wrote (their index pointer is not 0) or are
    /// dirty now: every leaf that may hold a non-zero count, so the most a commit
    /// can move besides the leaves allocations reach first (`commit_pages_max`).
    /// It grows by one when a leaf with pointer 0 is first changed (`set`). A
    /// commit writes a leaf whose counts are all zero as pointer 0
    /// (`write_dirty`), but it stays counted until the next open
    /// (`dropped_leaves`). None until counted at open (`count_touched_leaves`):
    /// the bound is then every page of the map.
    touched_leaves: Option<u64>,
    /// Leaves a commit of this session wrote as pointer 0, all counts zero,
    /// which `touched_leaves` still counts: blocks freed in them may wait for a
    /// flush, for reads or for a pin (`in_flight`, `quarantine`, `held`), so
    /// the allocators would not fill such a leaf in order, which the bound for
    /// leaves not touched relies on. At open nothing waits, and they count no
    /// more.
    dropped_leaves: FxHashSet<u64>,
}

impl SpaceMap {
    /// A brand-new map for an empty pool: only the superblock slots are in use.
    pub fn create(capacity: u64, pool_id: u64) -> SpaceMap {
        // An empty committed map (root 0: every page reads as zeros), plus leaf page 0
        // with the superblock slots counted, to be written by the first commit.
        let mut m = SpaceMap::open(capacity, depth_for(capacity), 0, FIRST_USABLE, pool_id);
        let mut counts = vec![0u32; COUNTS_PER_LEAF as usize].into_boxed_slice();
        counts[..FIRST_USABLE as usize].fill(1);
        m.leaves.insert(
            0,
            Leaf {
                addr: 0,
                counts,
                dirty: true,
            },
        );
        m.dirty_leaves.insert(0);
        m.touched_leaves = Some(1);
        m
    }

    /// The committed map rooted at `root`.
    pub fn open(capacity: u64, depth: u8, root: BlockAddr, used: u64, pool_id: u64) -> SpaceMap {
        SpaceMap {
            capacity,
            depth,
            root,
            pool_id,
            leaves: FxHashMap::default(),
            index: FxHashMap::default(),
            fresh: BlockSet::default(),
            converted: Default::default(),
            pending_free: BlockSet::default(),
            in_flight: BlockSet::default(),
            quarantine: BlockSet::default(),
            held: Default::default(),
            used,
            cursor: FIRST_USABLE,
            full_leaves: BTreeSet::new(),
            dirty_leaves: BTreeSet::new(),
            journal: Journal::default(),
            meta: MetaArea::default(),
            touched_leaves: None,
            dropped_leaves: FxHashSet::default(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }
    pub fn depth(&self) -> u8 {
        self.depth
    }
    pub fn root(&self) -> BlockAddr {
        self.root
    }
    /// Blocks with a non-zero count.
    pub fn used(&self) -> u64 {
        self.used
    }
    /// Blocks that can be allocated now.
    pub fn available(&self) -> u64 {
        self.capacity
            .saturating_sub(self.used)
            .saturating_sub(self.unusable_free_count())
    }
    /// Blocks the relocation step of the next commit (`write_dirty`) may allocate:
    /// every page moves at most once per transaction, so never more than the map's
    /// page count. That hard bound is about 0.1% of the capacity, far too much to
    /// hold back in a sparse 1 TiB pool file, so it is capped by what a commit moves
    /// in practice: the dirty leaves and every index page above them, and for each
    /// move the leaf where its new block lands and the leaf of its old block, plus
    /// the same for `extra_allocs` other blocks the commit allocates (the catalog).
    /// If the cap is ever short, the commit fails with ENOSPC and can be retried
    /// (it drops nothing), it does not corrupt the pool.
    pub fn commit_pages_bound(&self, extra_allocs: u64) -> u64 {
        let levels = u64::from(self.depth) + 1;
        let dirty = self.dirty_leaves.len() as u64 + extra_allocs;
        self.page_count().min(3 * dirty * levels + 2 * levels)
    }

    /// Pages of the whole map (leaves and index pages): the most a commit can move.
    pub fn page_count(&self) -> u64 {
        self.leaf_count() + self.index_page_count()
    }

    fn leaf_count(&self) -> u64 {
        self.capacity.div_ceil(COUNTS_PER_LEAF).max(1)
    }

    fn index_page_count(&self) -> u64 {
        let mut all = 0;
        let mut pages = self.leaf_count();
        for _ in 0..self.depth {
            pages = pages.div_ceil(PTRS_PER_INDEX);
            all += pages;
        }
        all
    }

    /// The most pages the next commit can move (its hard bound, never more than
    /// `page_count`), if allocations before it reach up to `new_leaves` leaves not
    /// touched yet and the commit itself allocates `extra_allocs` blocks besides
    /// the pages (the catalog). On a big pool that holds little, far below
    /// `page_count`: it follows the leaves in use, not the capacity.
    ///
    /// Why it holds (format-spec §8.2): a commit moves each page at most once,
    /// only pages whose counts or pointers changed. A count changes only in a leaf
    /// that holds a non-zero count (a reference dropped or added) or where a block
    /// is allocated, so the leaves moved are the touched ones (`touched_leaves`),
    /// those allocations before the commit reach (`new_leaves`), and those the
    /// commit's own allocations reach; an index page moves only above a moved leaf,
    /// so at most `depth` per leaf. A leaf never touched has every block free and
    /// allocatable, and both allocators fill it in order once they enter it (the
    /// data allocator's next fit enters a leaf at its start and goes on from where
    /// it stopped; the metadata allocator takes a new leaf only when its leaves are
    /// full, at its start): its k allocations reach at most 4 + k / 1012 such
    /// leaves (a first leaf entered part way, the short last leaf, one per cursor),
    /// counted here as 4 + k / 506. With k <= extra_allocs + (depth + 1) * L for L
    /// leaves moved, L = before + 4 + k / 506 solves to the figure below.
    pub fn commit_pages_max(&self, extra_allocs: u64, new_leaves: u64) -> u64 {
        let all = self.page_count();
        let Some(touched) = self.touched_leaves else {
            return all;
        };
        let levels = u64::from(self.depth) + 1;
        // Never for a map of a valid depth (at most 7): the figure needs it.
        let Some(per) = (COUNTS_PER_LEAF / 2).checked_sub(levels).filter(|p| *p > 0) else {
            return all;
        };
        let before = touched.saturating_add(new_leaves).saturating_add(5);
        // Leaves the commit's own allocations reach: with L = before + y and
        // y = ceil((extra + levels * before) / (506 - levels)), the k <= extra +
        // levels * L allocations give k / 506 <= y, so L covers touched +
        // new_leaves + 4 + k / 506.
        let own = extra_allocs
            .saturating_add(levels.saturating_mul(before))
            .div_ceil(per);
        let leaves = before.saturating_add(own);
        let index = self
            .index_page_count()
            .min(leaves.saturating_mul(u64::from(self.depth)));
        all.min(leaves.saturating_add(index))
    }

    /// Count the leaves a commit wrote (`touched_leaves`), when a pool is opened:
    /// one walk of the index pages that exist, not of the leaves. Until this ran
    /// the bound is every page, which is safe, so a walk that fails (a damaged
    /// index page, which fsck reports) leaves it at that.
    pub fn count_touched_leaves(&mut self, dev: &dyn BlockDevice) {
        let mut written = 0u64;
        match self.walk_existing(dev, &mut |_| written += 1) {
            Ok(_) => {
                let fresh = self.leaves.values().filter(|l| l.addr == 0 && l.dirty);
                self.touched_leaves = Some(written + fresh.count() as u64);
            }
            Err(e) => log::warn!("space map: leaves in use not counted: {e}"),
        }
    }

    pub fn is_fresh(&self, b: BlockAddr) -> bool {
        self.fresh.contains(b)
    }

    /// Blocks `start..start + len`, written data in the last commit, are now an
    /// unwritten extent where they are (ZERO_RANGE): not to be filled in place
    /// before that stops mattering (`converted.rs`).
    pub fn mark_converted(&mut self, start: BlockAddr, len: u64) {
        self.converted.mark(start, len);
    }

    /// Whether an unwritten block may be filled in place as far as conversions
    /// go: not one made unwritten in place by a commit not yet durable or still
    /// read from outside the lock.
    pub fn fillable_in_place(&self, b: BlockAddr) -> bool {
        !self.converted.contains(b)
    }
    /// Leaf pages the next commit writes.
    pub fn dirty_leaf_count(&self) -> usize {
        self.dirty_leaves.len()
    }

    pub fn has_changes(&self) -> bool {
        !self.dirty_leaves.is_empty() || self.index.values().any(|i| i.dirty)
    }

    fn corrupt(dev: &dyn BlockDevice, block: BlockAddr, why: String) -> StoreError {
        StoreError::Corrupt {
            pool: dev.name(),
            block,
            why,
        }
    }

    fn read_page(
        &self,
        dev: &dyn BlockDevice,
        addr: BlockAddr,
        kind: BlockKind,
        level: u8,
    ) -> StoreResult<Vec<u8>> {
        if addr < FIRST_USABLE || addr >= self.capacity {
            return Err(Self::corrupt(
                dev,
                addr,
                format!("space map pointer {addr} out of range"),
            ));
        }
        if addr >= dev.len_blocks() {
            return Err(StoreError::Truncated {
                pool: dev.name(),
                block: addr,
                len: dev.len_blocks(),
            });
        }
        let mut buf = vec![0u8; BLOCK_SIZE];
        dev.read_at(addr, &mut buf).map_err(|e| StoreError::Io {
            pool: dev.name(),
            block: addr,
            source: e,
        })?;
        let h = verify(&buf, addr, self.pool_id, kind).map_err(|w| Self::corrupt(dev, addr, w))?;
        if h.level != level {
            return Err(Self::corrupt(
                dev,
                addr,
                format!(
                    "space map page at level {} where {} expected",
                    h.level, level
                ),
            ));
        }
        Ok(buf)
    }

    /// Make index page (level, idx) resident; returns false if it does not exist yet.
    fn load_index(&mut self, dev: &dyn BlockDevice, level: u8, idx: u64) -> StoreResult<()> {
        if self.index.contains_key(&(level, idx)) {
            return Ok(());
        }
        let addr = if level == self.depth {
            self.root
        } else {
            self.load_index(dev, level + 1, idx / PTRS_PER_INDEX)?;
            self.index[&(level + 1, idx / PTRS_PER_INDEX)].ptrs[(idx % PTRS_PER_INDEX) as usize]
        };
        let mut ptrs = vec![0u64; PTRS_PER_INDEX as usize].into_boxed_slice();
        if addr != 0 {
            let buf = self.read_page(dev, addr, BlockKind::SpaceIndex, level)?;
            for (i, p) in ptrs.iter_mut().enumerate() {
                *p = u64_at(&buf, HEADER_SIZE + i * 8);
            }
        }
        self.index.insert(
            (level, idx),
            Index {
                addr,
                ptrs,
                dirty: false,
            },
        );
        Ok(())
    }

    fn load_leaf(&mut self, dev: &dyn BlockDevice, leaf_no: u64) -> StoreResult<&mut Leaf> {
        if !self.leaves.contains_key(&leaf_no) {
            self.load_index(dev, 1, leaf_no / PTRS_PER_INDEX)?;
            let addr = self.index[&(1, leaf_no / PTRS_PER_INDEX)].ptrs
                [(leaf_no % PTRS_PER_INDEX) as usize];
            let mut counts = vec![0u32; COUNTS_PER_LEAF as usize].into_boxed_slice();
            if addr != 0 {
                let buf = self.read_page(dev, addr, BlockKind::SpaceLeaf, 0)?;
                for (i, c) in counts.iter_mut().enumerate() {
                    *c = u32_at(&buf, HEADER_SIZE + i * 4);
                }
            }
            self.leaves.insert(
                leaf_no,
                Leaf {
                    addr,
                    counts,
                    dirty: false,
                },
            );
        }
        match self.leaves.get_mut(&leaf_no) {
            Some(l) => Ok(l),
            None => Err(Self::corrupt(dev, 0, "space map leaf vanished".into())),
        }
    }

    /// The end of `start..start + len`, all of it inside the pool: `start` and
    /// `len` may come from a corrupt item or node (a child pointer of u64::MAX
    /// made `start + len` overflow).
    fn range_end(&self, dev: &dyn BlockDevice, start: BlockAddr, len: u64) -> StoreResult<u64> {
        start
            .checked_add(len)
            .filter(|&end| end <= self.capacity)
            .ok_or_else(|| {
                Self::corrupt(
                    dev,
                    start,
                    format!(
                        "reference to {len} blocks at {start}, beyond pool capacity {}",
                        self.capacity
                    ),
                )
            })
    }

    fn check_range(&self, dev: &dyn BlockDevice, b: BlockAddr) -> StoreResult<()> {
        if b >= self.capacity {
            return Err(Self::corrupt(
                dev,
                b,
                format!(
                    "reference to block {b} beyond pool capacity {}",
                    self.capacity
                ),
            ));
        }
        Ok(())
    }

    /// The reference count of block `b`.
    pub fn get(&mut self, dev: &dyn BlockDevice, b: BlockAddr) -> StoreResult<u32> {
        self.check_range(dev, b)?;
        let leaf = self.load_leaf(dev, b / COUNTS_PER_LEAF)?;
        Ok(leaf.counts[(b % COUNTS_PER_LEAF) as usize])
    }

    fn set(&mut self, dev: &dyn BlockDevice, b: BlockAddr, v: u32) -> StoreResult<u32> {
        let leaf_no = b / COUNTS_PER_LEAF;
        let leaf = self.load_leaf(dev, leaf_no)?;
        let slot = &mut leaf.counts[(b % COUNTS_PER_LEAF) as usize];
        let old = *slot;
        *slot = v;
        self.mark_dirty(leaf_no);
        // Saturating: `used` starts from the superblock, which may be wrong (fsck
        // reports it); below zero it wrapped and every allocation failed.
        if old == 0 && v > 0 {
            self.used = self.used.saturating_add(1);
        } else if old > 0 && v == 0 {
            self.used = self.used.saturating_sub(1);
            self.full_leaves.remove(&leaf_no);
        }
        Ok(old)
    }

    /// How many blocks of `start..start + len` have exactly one reference, read a
    /// leaf at a time (usage figures count a large file's blocks this way; one
    /// lookup per block took 0.38 s for 80 GiB under the pool lock).
    pub fn count_single(
        &mut self,
        dev: &dyn BlockDevice,
        start: BlockAddr,
        len: u64,
    ) -> StoreResult<u64> {
        let end = self.range_end(dev, start, len)?;
        let mut n = 0;
        let mut b = start;
        while b < end {
            let leaf_no = b / COUNTS_PER_LEAF;
            let stop = end.min((leaf_no + 1) * COUNTS_PER_LEAF);
            let leaf = self.load_leaf(dev, leaf_no)?;
            let (lo, hi) = (b % COUNTS_PER_LEAF, stop - leaf_no * COUNTS_PER_LEAF);
            n += leaf.counts[lo as usize..hi as usize]
                .iter()
                .filter(|c| **c == 1)
                .count() as u64;
            b = stop;
        }
        Ok(n)
    }

    /// A loaded leaf's counts changed: the next commit writes it.
    fn mark_dirty(&mut self, leaf_no: u64) {
        let dropped = self.dropped_leaves.contains(&leaf_no);
        let Some(leaf) = self.leaves.get_mut(&leaf_no) else {
            return;
        };
        // Pointer 0 and not dirty yet: a leaf the next commit moves that
        // `touched_leaves` did not count (unless this session dropped it).
        let first_touch = leaf.addr == 0 && !leaf.dirty && !dropped;
        leaf.dirty = true;
        if first_touch {
            if let Some(n) = self.touched_leaves.as_mut() {
                *n = n.saturating_add(1);
            }
        }
        self.dirty_leaves.insert(leaf_no);
    }

    /// Apply `step` to the count of each block of `start..end`, a space-map leaf
    /// at a time (one leaf lookup, dirty mark and journal entry per leaf, not per
    /// block: deleting a branch holding 40 GiB of its own data dropped 10 million
    /// references one by one, 4.3 s under the pool lock). `step` refuses a count
    /// with an error message; the blocks before it keep their change (journaled,
    /// as `dec` and `inc` one block at a time left them). Blocks whose count
    /// reaches zero are released (`release_zeroed`).
    fn step_range(
        &mut self,
        dev: &dyn BlockDevice,
        start: BlockAddr,
        len: u64,
        step: fn(u32) -> Result<u32, &'static str>,
        change: fn(BlockAddr, u64) -> Change,
    ) -> StoreResult<()> {
        let end = self.range_end(dev, start, len)?;
        let mut zeroed: Vec<Range<BlockAddr>> = Vec::new();
        let mut b = start;
        while b < end {
            let leaf_no = b / COUNTS_PER_LEAF;
            let stop = end.min((leaf_no + 1) * COUNTS_PER_LEAF);
            // A leaf that cannot be read ends the range there, as `refused`
            // does: the blocks before it keep their change.
            let leaf = match self.load_leaf(dev, leaf_no) {
                Ok(leaf) => leaf,
                Err(e) => {
                    self.release_zeroed(zeroed);
                    return Err(e);
                }
            };
            let (mut done, mut refused, mut freed) = (b, None, 0u64);
            for x in b..stop {
                let slot = &mut leaf.counts[(x % COUNTS_PER_LEAF) as usize];
                let v = match step(*slot) {
                    Ok(v) => v,
                    Err(why) => {
                        refused = Some((x, why));
                        break;
                    }
                };
                let was = std::mem::replace(slot, v);
                if was > 0 && v == 0 {
                    freed += 1;
                    match zeroed.last_mut() {
                        Some(r) if r.end == x => r.end += 1,
                        _ => zeroed.push(x..x + 1),
                    }
                }
                done = x + 1;
            }
            if done > b {
                self.mark_dirty(leaf_no);
                self.note(change(b, done - b));
            }
            if freed > 0 {
                self.used = self.used.saturating_sub(freed);
                self.full_leaves.remove(&leaf_no);
            }
            if let Some((x, why)) = refused {
                self.release_zeroed(zeroed);
                return Err(Self::corrupt(dev, x, why.into()));
            }
            b = stop;
        }
        self.release_zeroed(zeroed);
        Ok(())
    }

    /// Add one reference to each block of `start..start+len`.
    pub fn inc(&mut self, dev: &dyn BlockDevice, start: BlockAddr, len: u64) -> StoreResult<()> {
        let step = |c: u32| match c {
            0 => Err("reference added to a free block"),
            c => Ok(c.saturating_add(1)),
        };
        self.step_range(dev, start, len, step, Change::Inc)
    }

    /// Drop one reference from `b`; returns the new count. A block reaching zero is
    /// reusable at once if it was born in this transaction, else after the commit.
    pub fn dec(&mut self, dev: &dyn BlockDevice, b: BlockAddr) -> StoreResult<u32> {
        self.dec_range(dev, b, 1)?;
        self.get(dev, b)
    }

    /// `dec` of each block of `start..start + len`.
    pub fn dec_range(
        &mut self,
        dev: &dyn BlockDevice,
        start: BlockAddr,
        len: u64,
    ) -> StoreResult<()> {
        let step = |c: u32| match c {
            0 => Err("reference dropped from a free block"),
            c => Ok(c - 1),
        };
        self.step_range(dev, start, len, step, Change::Dec)
    }

    /// Blocks whose last reference was dropped. Born in this transaction: nothing
    /// durable refers to them, reuse at once (after the running operation, which
    /// an undo may still map them back into). Else after the commit.
    fn release_zeroed(&mut self, zeroed: Vec<Range<BlockAddr>>) {
        for r in zeroed {
            let mut from = r.start;
            for young in self.fresh.remove_range(r.clone()) {
                self.pending_free.insert_range(from..young.start);
                for b in young.clone() {
                    self.hold_for_undo(b);
                }
                from = young.end;
            }
            self.pending_free.insert_range(from..r.end);
        }
    }

    /// Blocks an intent log record now names (format-spec §8.1): they must not be
    /// overwritten in place any more, and once freed they wait for a commit like
    /// blocks of a durable commit, because replay may still map them.
    pub fn settle(&mut self, start: BlockAddr, len: u64) {
        for b in start..start + len {
            self.fresh.remove(b);
        }
    }

    /// Replay takes one reference to each block of a logged extent: a free block
    /// (written after the durable commit) gets count 1, a referenced one (an
    /// unwritten extent filled in place) one more.
    pub fn claim(&mut self, dev: &dyn BlockDevice, start: BlockAddr, len: u64) -> StoreResult<()> {
        for b in start..self.range_end(dev, start, len)? {
            self.check_range(dev, b)?;
            if b < FIRST_USABLE {
                return Err(Self::corrupt(dev, b, "log names a superblock slot".into()));
            }
            let c = self.get(dev, b)?;
            self.set(dev, b, c.saturating_add(1))?;
            self.note(Change::Inc(b, 1));
        }
        Ok(())
    }

    fn allocatable(&mut self, dev: &dyn BlockDevice, b: BlockAddr) -> StoreResult<bool> {
        Ok(b >= FIRST_USABLE
            && b < self.capacity
            && !self.pending_free.contains(b)
            && !self.in_flight.contains(b)
            && !self.quarantine.contains(b)
            && !self.held.contains(b)
            && !self.held_for_undo(b)
            && self.get(dev, b)? == 0)
    }

    /// Could every block of `from..to` be allocated now (free, and not held for a
    /// commit's flush or an undo)?
    pub fn all_allocatable(
        &mut self,
        dev: &dyn BlockDevice,
        from: BlockAddr,
        to: BlockAddr,
    ) -> StoreResult<bool> {
        for b in from..to {
            if !self.allocatable(dev, b)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Allocate up to `want` contiguous blocks (at least one), each with count 1,
    /// for file data (or the intent log): next fit from the cursor, past the
    /// leaves set aside for metadata unless only they have room or the host of
    /// the pool file is nearly full.
    pub fn alloc(&mut self, dev: &dyn BlockDevice, want: u64) -> StoreResult<(BlockAddr, u64)> {
        let skip_meta = self.meta.kept_from_data();
        match self.alloc_blocks(dev, want, skip_meta) {
            Err(StoreError::NoSpace { .. }) if skip_meta && self.meta.any() => {
                self.alloc_blocks(dev, want, false)
            }
            r => r,
        }
    }

    fn alloc_blocks(
        &mut self,
        dev: &dyn BlockDevice,
        want: u64,
        skip_meta: bool,
    ) -> StoreResult<(BlockAddr, u64)> {
        if self.available() == 0 {
            return Err(StoreError::NoSpace { pool: dev.name() });
        }
        let mut b = self.cursor.max(FIRST_USABLE);
        let mut scanned = 0u64;
        let start = loop {
            if b >= self.capacity {
                b = FIRST_USABLE;
            }
            let leaf_no = b / COUNTS_PER_LEAF;
            let leaf_end = ((leaf_no + 1) * COUNTS_PER_LEAF).min(self.capacity);
            if self.full_leaves.contains(&leaf_no) || (skip_meta && self.meta.holds(leaf_no)) {
                scanned += leaf_end - b;
                b = leaf_end;
            } else {
                let (found, any_zero) = self.first_allocatable(dev, leaf_no, b)?;
                if let Some(f) = found {
                    break f;
                }
                if !any_zero && b == leaf_no * COUNTS_PER_LEAF {
                    self.full_leaves.insert(leaf_no);
                }
                scanned += leaf_end - b;
                b = leaf_end;
            }
            if scanned > self.capacity + COUNTS_PER_LEAF {
                return Err(StoreError::NoSpace { pool: dev.name() });
            }
        };
        let mut len = 1;
        while len < want
            && !(skip_meta && self.meta.holds((start + len) / COUNTS_PER_LEAF))
            && self.allocatable(dev, start + len)?
        {
            len += 1;
        }
        self.take(dev, start, len)?;
        self.cursor = start + len;
        Ok((start, len))
    }

    /// The first allocatable block of leaf `leaf_no` at or after `from`, and
    /// whether the scan saw any zero count (a leaf without one is full).
    fn first_allocatable(
        &mut self,
        dev: &dyn BlockDevice,
        leaf_no: u64,
        from: BlockAddr,
    ) -> StoreResult<(Option<BlockAddr>, bool)> {
        let base = leaf_no * COUNTS_PER_LEAF;
        let leaf_end = (base + COUNTS_PER_LEAF).min(self.capacity);
        let mut any_zero = false;
        // Walk the page's counts directly: after the cursor wraps, free blocks are
        // sparse among live ones and a lookup per block would dominate.
        let mut x = from.max(base);
        while x < leaf_end {
            let counts = &self.load_leaf(dev, leaf_no)?.counts;
            let lo = (x - base) as usize;
            let hi = (leaf_end - base) as usize;
            match counts[lo..hi].iter().position(|c| *c == 0) {
                Some(i) => x = base + (lo + i) as u64,
                None => break,
            }
            any_zero = true;
            if self.allocatable(dev, x)? {
                return Ok((Some(x), true));
            }
            x += 1;
        }
        Ok((None, any_zero))
    }

    /// Give blocks `start..start+len` (all allocatable) count 1 in the running
    /// transaction.
    fn take(&mut self, dev: &dyn BlockDevice, start: BlockAddr, len: u64) -> StoreResult<()> {
        for x in start..start + len {
            self.set(dev, x, 1)?;
        }
        self.fresh.insert_range(start..start + len);
        self.note(Change::Alloc(start, len));
        Ok(())
    }

    fn set_ptr(
        &mut self,
        dev: &dyn BlockDevice,
        level: u8,
        child_idx: u64,
        addr: BlockAddr,
    ) -> StoreResult<()> {
        let idx = child_idx / PTRS_PER_INDEX;
        self.load_index(dev, level, idx)?;
        if let Some(page) = self.index.get_mut(&(level, idx)) {
            page.ptrs[(child_idx % PTRS_PER_INDEX) as usize] = addr;
            page.dirty = true;
        }
        Ok(())
    }

    /// Write every page changed in this transaction to a fresh block. Relocating a page
    /// changes counts (new block taken, old one released), which may dirty more pages,
    /// so this runs until nothing moves; a page moves at most once per transaction.
    /// Returns the new root and every page written with its CRC32 (for the commit
    /// manifest). The caller flushes and writes the superblock.
    pub fn write_dirty(
        &mut self,
        dev: &dyn BlockDevice,
        generation: u64,
    ) -> StoreResult<(BlockAddr, Vec<(BlockAddr, u32)>)> {
        loop {
            let mut moved = false;
            // Not yet moved, and not dropped (pointer 0 with no count).
            let dirty_leaves: Vec<u64> = self
                .dirty_leaves
                .iter()
                .filter(|n| {
                    let l = &self.leaves[n];
                    let dropped = l.addr == 0 && l.is_empty();
                    !(dropped || self.fresh.contains(l.addr))
                })
                .copied()
                .collect();
            for leaf_no in dirty_leaves {
                let old = self.leaves[&leaf_no].addr;
                if self.leaves[&leaf_no].is_empty() {
                    // No count left: pointer 0 reads as the same zeros, so the
                    // page is freed rather than moved, and the next open does not
                    // count the leaf as touched (`count_touched_leaves`): a pool
                    // once full and emptied gets its small slop back.
                    self.dec(dev, old)?;
                    if let Some(l) = self.leaves.get_mut(&leaf_no) {
                        l.addr = 0;
                    }
                    self.set_ptr(dev, 1, leaf_no, 0)?;
                    moved = true;
                    continue;
                }
                let new = self.alloc_meta(dev)?;
                if old != 0 {
                    self.dec(dev, old)?;
                }
                if let Some(l) = self.leaves.get_mut(&leaf_no) {
                    l.addr = new;
                }
                self.set_ptr(dev, 1, leaf_no, new)?;
                moved = true;
            }
            for level in 1..=self.depth {
                let dirty_index: Vec<u64> = self
                    .index
                    .iter()
                    .filter(|((lv, _), p)| *lv == level && p.dirty && !self.fresh.contains(p.addr))
                    .map(|((_, i), _)| *i)
                    .collect();
                for idx in dirty_index {
                    let old = self.index[&(level, idx)].addr;
                    let new = self.alloc_meta(dev)?;
                    if old != 0 {
                        self.dec(dev, old)?;
                    }
                    if let Some(p) = self.index.get_mut(&(level, idx)) {
                        p.addr = new;
                    }
                    if level == self.depth {
                        self.root = new;
                    } else {
                        self.set_ptr(dev, level + 1, idx, new)?;
                    }
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        // Leaves left with no count and pointer 0 (dropped above, or never
        // written) get no page; they stay counted until the next open.
        for n in &self.dirty_leaves {
            if let Some(l) = self.leaves.get_mut(n).filter(|l| l.addr == 0) {
                l.dirty = false;
                self.dropped_leaves.insert(*n);
            }
        }
        // Pages in address order, so consecutive ones go out in one write.
        let mut pages: Vec<(BlockAddr, Page)> = self
            .dirty_leaves
            .iter()
            .filter_map(|n| self.leaves.get(n).map(|l| (l.addr, Page::Leaf(*n))))
            .filter(|(addr, _)| *addr != 0)
            .chain(
                self.index
                    .iter()
                    .filter(|(_, p)| p.dirty)
                    .map(|(k, p)| (p.addr, Page::Index(*k))),
            )
            .collect();
        pages.sort_unstable_by_key(|(a, _)| *a);
        let mut out = RunWriter::new(dev);
        let mut written = Vec::with_capacity(pages.len());
        for (addr, page) in pages {
            let buf = out.block(addr)?;
            match page {
                Page::Leaf(n) => {
                    let l = self.leaves.get_mut(&n).expect("listed above");
                    for (i, c) in l.counts.iter().enumerate() {
                        put_u32(buf, HEADER_SIZE + i * 4, *c);
                    }
                    seal(
                        buf,
                        BlockKind::SpaceLeaf,
                        addr,
                        generation,
                        self.pool_id,
                        0,
                        0,
                    );
                    l.dirty = false;
                }
                Page::Index((level, i)) => {
                    let p = self.index.get_mut(&(level, i)).expect("listed above");
                    for (j, a) in p.ptrs.iter().enumerate() {
                        put_u64(buf, HEADER_SIZE + j * 8, *a);
                    }
                    seal(
                        buf,
                        BlockKind::SpaceIndex,
                        addr,
                        generation,
                        self.pool_id,
                        level,
                        0,
                    );
                    p.dirty = false;
                }
            }
            written.push((addr, crc32fast::hash(buf)));
        }
        self.dirty_leaves.clear();
        out.finish()?;
        Ok((self.root, written))
    }

    /// The commit is written (its flush may still be running): nothing is fresh
    /// any more, so the next transaction copies what this one wrote, and the
    /// blocks it freed wait for its flush.
    pub fn commit_written(&mut self) {
        self.meta_commit_written();
        self.fresh.clear();
        self.converted.commit_written();
        debug_assert!(self.in_flight.is_empty(), "previous commit not durable");
        self.in_flight.take_all(&mut self.pending_free);
        // Next fit makes copy-on-write writes sequential on the medium (measured:
        // 4 KiB random writes with fsync ran at about twice the rate of first fit,
        // whose reuse of scattered holes makes the host's writes random). But a pool
        // file would grow until the cursor wraps at the nominal capacity, so wrap
        // once the cursor is well past what is in use: the file stays within about
        // twice the live data plus `WRAP_SLACK`.
        if self.cursor > 2 * self.used() + WRAP_SLACK {
            self.cursor = FIRST_USABLE;
        }
        if self.leaves.len() > 4096 {
            self.leaves.retain(|_, l| l.dirty);
        }
    }

    /// Where the next allocation starts looking (next fit).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Make the next allocation look from the start of the pool (see
    /// `NodeStore::available`).
    pub fn rewind(&mut self) {
        self.cursor = FIRST_USABLE;
    }

    /// The written commit is durable: the blocks it freed go to quarantine (see
    /// `quarantine`); call `release_quarantine` first.
    pub fn commit_durable(&mut self) {
        debug_assert!(self.quarantine.is_empty(), "quarantine not released");
        self.quarantine.take_all(&mut self.in_flight);
        self.converted.commit_durable();
    }

    /// Reads that could use the quarantined blocks are over: they are allocatable,
    /// or held while a pin exists (`pin`).
    pub fn release_quarantine(&mut self) {
        self.held.release(&mut self.quarantine);
        self.converted.release_quarantine(self.held.pinned());
    }

    /// Keep every block a committed tree reaches now as it is until `unpin`: no
    /// block freed from here on becomes allocatable (nor is a converted one
    /// filled in place) before then. Only committed trees: blocks of the running
    /// transaction may be rewritten in place whatever the pins.
    pub fn pin(&mut self) {
        self.held.pin();
    }

    /// Whether a pin exists: blocks freed now are held past their quarantine.
    pub fn pinned(&self) -> bool {
        self.held.pinned()
    }

    /// Drop a pin; the last one makes the held blocks allocatable.
    pub fn unpin(&mut self) {
        if self.held.unpin() {
            self.converted.release_held();
        }
    }

    /// Blocks free in the map that cannot be allocated now: waiting for a
    /// commit or for reads (`pending_free_count`), or held by a pin.
    pub fn unusable_free_count(&self) -> u64 {
        self.pending_free_count() as u64 + self.held.len()
    }

    /// Blocks freed but not allocatable yet: in the running transaction, in a
    /// commit being flushed, or in quarantine.
    pub fn pending_free_count(&self) -> usize {
        (self.pending_free.len() + self.in_flight.len() + self.quarantine.len()) as usize
    }

    /// Address of leaf page `leaf_no` as its index page records it (0: never written,
    /// all counts zero), without loading the leaf.
    fn leaf_ptr(&mut self, dev: &dyn BlockDevice, leaf_no: u64) -> StoreResult<BlockAddr> {
        if let Some(l) = self.leaves.get(&leaf_no) {
            return Ok(l.addr);
        }
        let idx = leaf_no / PTRS_PER_INDEX;
        self.load_index(dev, 1, idx)?;
        Ok(self.index[&(1, idx)].ptrs[(leaf_no % PTRS_PER_INDEX) as usize])
    }

    /// The pages that exist, found from the root down. A page exists if a commit wrote it (its pointer
    /// is not 0) or it is resident; a subtree with neither was
    /// never written and holds only zero counts, so it is skipped unread. The cost
    /// follows the pages in use, not the capacity: walking every index number
    /// loaded each absent level-1 page (4 KiB each), and fsck of an empty 1 PiB
    /// pool took 2.19 GB and 6.8 s. The pages found stay resident, as `get` keeps
    /// them; leaves are only listed.
    fn existing_pages(&mut self, dev: &dyn BlockDevice) -> StoreResult<Existing> {
        let mut leaf_nos = Vec::new();
        let index = self.walk_existing(dev, &mut |leaf| leaf_nos.push(leaf))?;
        // Resident leaves, also those a new map holds before any index page
        // exists (`create`).
        leaf_nos.extend(self.leaves.keys().copied());
        leaf_nos.sort_unstable();
        leaf_nos.dedup();
        Ok(Existing {
            index,
            leaves: leaf_nos,
        })
    }

    /// The walk of `existing_pages`: returns the index pages that exist and calls
    /// `written` with each leaf an index page points to.
    fn walk_existing(
        &mut self,
        dev: &dyn BlockDevice,
        written: &mut dyn FnMut(u64),
    ) -> StoreResult<Vec<(u8, u64)>> {
        let leaves = self.capacity.div_ceil(COUNTS_PER_LEAF);
        let mut index = Vec::new();
        let top = (self.depth, 0);
        let mut stack = Vec::new();
        if self.root != 0 || self.index.contains_key(&top) {
            stack.push(top);
        }
        while let Some((level, idx)) = stack.pop() {
            self.load_index(dev, level, idx)?;
            index.push((level, idx));
            let first = idx * PTRS_PER_INDEX;
            let page = &self.index[&(level, idx)];
            // Leaves one child of this page covers.
            let span = PTRS_PER_INDEX.pow(u32::from(level) - 1);
            for (i, &p) in page.ptrs.iter().enumerate() {
                let child = first + i as u64;
                if child.saturating_mul(span) >= leaves {
                    // No such page in a map of this capacity. Followed, a crafted
                    // page pointing there at each level made the walk visit (and
                    // keep) PTRS_PER_INDEX^depth pages.
                    if p != 0 {
                        return Err(Self::corrupt(
                            dev,
                            page.addr,
                            format!("index entry {i} points past the pool's capacity"),
                        ));
                    }
                    continue;
                }
                if level == 1 {
                    if p != 0 {
                        written(child);
                    }
                } else if p != 0 || self.index.contains_key(&(level - 1, child)) {
                    stack.push((level - 1, child));
                }
            }
        }
        Ok(index)
    }

    /// Visit every non-zero count of the committed + running state (fsck). Calls
    /// `f(block, count)` for each block in use. Leaf pages are read one at a time
    /// and not kept, and never-written pages are skipped (`existing_pages`), so
    /// memory and time do not follow the capacity (a 1 TiB pool file is mostly
    /// unwritten pages).
    pub fn for_each_count(
        &mut self,
        dev: &dyn BlockDevice,
        mut f: impl FnMut(BlockAddr, u32),
    ) -> StoreResult<()> {
        let cap = self.capacity;
        for leaf_no in self.existing_pages(dev)?.leaves {
            let base = leaf_no * COUNTS_PER_LEAF;
            let mut visit = |i: usize, c: u32| {
                let b = base + i as u64;
                if c > 0 && b < cap {
                    f(b, c);
                }
            };
            if let Some(l) = self.leaves.get(&leaf_no) {
                for (i, c) in l.counts.iter().enumerate() {
                    visit(i, *c);
                }
                continue;
            }
            let addr = self.leaf_ptr(dev, leaf_no)?;
            let buf = self.read_page(dev, addr, BlockKind::SpaceLeaf, 0)?;
            for i in 0..COUNTS_PER_LEAF as usize {
                visit(i, u32_at(&buf, HEADER_SIZE + i * 4));
            }
        }
        Ok(())
    }

    /// Addresses of every space-map page reachable from the root (fsck counts them as
    /// referenced once each).
    pub fn page_addrs(&mut self, dev: &dyn BlockDevice) -> StoreResult<Vec<BlockAddr>> {
        let pages = self.existing_pages(dev)?;
        let mut out: Vec<BlockAddr> = pages.index.iter().map(|k| self.index[k].addr).collect();
        for leaf_no in pages.leaves {
            out.push(self.leaf_ptr(dev, leaf_no)?);
        }
        out.retain(|&a| a != 0);
        Ok(out)
    }
}

/// Pages of the map that exist (`SpaceMap::existing_pages`).
struct Existing {
    /// Index pages as (level, number).
    index: Vec<(u8, u64)>,
    /// Leaf numbers, ascending.
    leaves: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::MemDevice;

    /// A block made unwritten in place may be filled in place only once the
    /// commit recording that is durable and reads started before it are over:
    /// until then the durable tree (or a reader) still sees its old data.
    #[test]
    fn converted_blocks_wait_for_the_durable_commit_and_its_reads() {
        let mut m = SpaceMap::create(1 << 14, 1);
        m.mark_converted(100, 3);
        assert!(m.fillable_in_place(99) && m.fillable_in_place(103));
        let waiting = |m: &SpaceMap| (100..103).all(|b| !m.fillable_in_place(b));
        assert!(waiting(&m), "running transaction");
        m.commit_written();
        assert!(waiting(&m), "commit written, not durable");
        m.commit_durable();
        assert!(waiting(&m), "durable, reads from before it may run");
        m.release_quarantine();
        assert!((100..103).all(|b| m.fillable_in_place(b)));
    }

    /// While a pin exists, blocks a commit frees and blocks ZERO_RANGE converts
    /// stay as they are (not allocatable, not fillable in place) past their
    /// quarantine: a pinned tree may still reach them. The last unpin lets them go.
    #[test]
    fn pinned_frees_and_conversions_wait_for_the_last_unpin() {
        let dev = MemDevice::new();
        let mut m = SpaceMap::create(1 << 14, 1);
        let (a, n) = m.alloc(&dev, 4).unwrap();
        assert_eq!(n, 4);
        m.commit_written();
        m.commit_durable();
        m.pin();
        m.pin();
        let avail = m.available();
        m.dec_range(&dev, a, 2).unwrap();
        m.mark_converted(a + 2, 2);
        m.commit_written();
        m.commit_durable();
        m.release_quarantine();
        let held = |m: &mut SpaceMap| {
            (a..a + 2).all(|b| !m.allocatable(&dev, b).unwrap())
                && (a + 2..a + 4).all(|b| !m.fillable_in_place(b))
        };
        assert!(held(&mut m));
        // Held blocks count as used: no room appears while a pin holds them.
        assert_eq!(m.available(), avail);
        m.unpin();
        assert!(held(&mut m), "one pin left");
        m.unpin();
        assert!((a..a + 2).all(|b| m.allocatable(&dev, b).unwrap()));
        assert!((a + 2..a + 4).all(|b| m.fillable_in_place(b)));
        assert_eq!(m.available(), avail + 2);
    }

    /// One commit that frees many blocks keeps them as a few runs while they wait,
    /// and leaves no set behind: a set of single blocks grew by one entry per
    /// block (a 40 GiB delete took the daemon to 337 MiB), and emptying a hash set
    /// cost its capacity at every later commit.
    #[test]
    fn a_big_free_is_held_as_runs_and_leaves_no_set_behind() {
        let dev = MemDevice::new();
        let mut m = SpaceMap::create(1 << 20, 1);
        let n = 1 << 16;
        let mut blocks = Vec::new();
        while (blocks.len() as u64) < n {
            let (a, got) = m.alloc(&dev, n - blocks.len() as u64).unwrap();
            blocks.extend(a..a + got);
        }
        m.write_dirty(&dev, 1).unwrap();
        m.commit_written();
        m.release_quarantine();
        m.commit_durable();
        for &b in &blocks {
            m.dec(&dev, b).unwrap();
        }
        m.write_dirty(&dev, 2).unwrap();
        m.commit_written();
        m.release_quarantine();
        m.commit_durable();
        // Freed by a durable commit (with the map's own old pages): in quarantine,
        // not allocatable yet.
        assert!(m.pending_free_count() as u64 >= n);
        assert!(m.quarantine.runs() <= 8, "{} runs", m.quarantine.runs());
        assert!(!m.allocatable(&dev, blocks[0]).unwrap());
        m.write_dirty(&dev, 3).unwrap();
        m.commit_written();
        m.release_quarantine();
        m.commit_durable();
        assert_eq!(m.pending_free_count(), 0);
        assert!(m.allocatable(&dev, blocks[0]).unwrap());
        for (name, s) in [
            ("fresh", &m.fresh),
            ("pending_free", &m.pending_free),
            ("in_flight", &m.in_flight),
            ("quarantine", &m.quarantine),
        ] {
            assert_eq!(s.runs(), 0, "{name} kept runs");
        }
    }

    /// fsck's view of a huge, nearly empty map reads and keeps only the pages that
    /// were written: every absent level-1 index page used to be made resident
    /// (4 KiB each; 2.19 GB for a 1 PiB pool).
    #[test]
    fn page_walks_of_a_huge_empty_map_load_no_absent_pages() {
        for cap in [1u64 << 32, 1 << 42] {
            let dev = MemDevice::new();
            let mut m = SpaceMap::create(cap, 1);
            let a = m.alloc(&dev, 3).unwrap().0;
            let (root, written) = m.write_dirty(&dev, 1).unwrap();
            m.commit_written();
            let mut r = SpaceMap::open(cap, m.depth(), root, m.used(), 1);
            let mut pages = r.page_addrs(&dev).unwrap();
            pages.sort_unstable();
            let mut want: Vec<BlockAddr> = written.iter().map(|(a, _)| *a).collect();
            want.sort_unstable();
            assert_eq!(pages, want, "capacity {cap}");
            let mut counted = Vec::new();
            r.for_each_count(&dev, |b, _| counted.push(b)).unwrap();
            assert!(counted.contains(&a) && counted.len() as u64 == r.used());
            // The index pages on the path to leaf 0, nothing else.
            assert_eq!(r.index.len(), r.depth() as usize, "capacity {cap}");
        }
        // Before its first commit a map has leaf 0 and no index page.
        let mut m = SpaceMap::create(1 << 42, 1);
        assert!(m.page_addrs(&MemDevice::new()).unwrap().is_empty());
        let mut n = 0;
        m.for_each_count(&MemDevice::new(), |_, _| n += 1).unwrap();
        assert_eq!(n, FIRST_USABLE);
    }

    /// The hard bound of a commit follows the leaves that hold counts, not the
    /// capacity: small on a huge map that holds little, counted again at open,
    /// growing by one leaf at most per leaf an allocation first reaches, and every
    /// page once every leaf holds a count.
    #[test]
    fn commit_bound_follows_the_leaves_in_use() {
        let dev = MemDevice::new();
        let cap = 1u64 << 28; // 1 TiB
        let mut m = SpaceMap::create(cap, 1);
        assert!(m.page_count() > 265_000);
        let small = m.commit_pages_max(0, 0);
        assert!(small < 64, "{small}");
        // 3 leaves more, one a block in it and two a run across their border.
        m.alloc(&dev, 3).unwrap();
        let far = 40 * COUNTS_PER_LEAF;
        m.cursor = far - 1;
        m.alloc(&dev, 2).unwrap();
        m.cursor = 90 * COUNTS_PER_LEAF;
        m.alloc(&dev, 1).unwrap();
        assert_eq!(m.touched_leaves, Some(4));
        let (root, _) = m.write_dirty(&dev, 1).unwrap();
        m.commit_written();
        let written = m.touched_leaves.unwrap();
        // Plus the leaves the relocated pages landed in.
        assert!((4..=6).contains(&written), "{written}");
        let mut r = SpaceMap::open(cap, m.depth(), root, m.used(), 1);
        assert_eq!(r.commit_pages_max(0, 0), r.page_count(), "not counted yet");
        r.count_touched_leaves(&dev);
        assert_eq!(r.touched_leaves, Some(written));
        assert_eq!(r.commit_pages_max(0, 0), m.commit_pages_max(0, 0));
        assert!(r.commit_pages_max(0, 10) > r.commit_pages_max(0, 0));
        // Every leaf holding a count: every page, as before.
        let mut full = SpaceMap::create(8 * COUNTS_PER_LEAF, 1);
        while full.alloc(&dev, 4096).is_ok() {}
        assert_eq!(full.commit_pages_max(0, 0), full.page_count());
    }

    /// A leaf whose counts are all zero is written as pointer 0, so a pool once
    /// full and emptied counts, at its next open, only the leaves that hold
    /// counts: `touched_leaves` no longer only grows. Within the session the
    /// dropped leaves stay counted (their freed blocks wait for the flush and
    /// reads), also when a count comes back to one of them.
    #[test]
    fn emptied_leaves_count_no_more_at_the_next_open() {
        let dev = MemDevice::new();
        let cap = 1u64 << 28; // 1 TiB
        let mut m = SpaceMap::create(cap, 1);
        let mut data = Vec::new();
        while data.len() < 20 * COUNTS_PER_LEAF as usize {
            let (a, n) = m.alloc(&dev, 4096).unwrap();
            data.extend(a..a + n);
        }
        // A commit, and the blocks it freed allocatable again.
        let settle = |m: &mut SpaceMap| {
            m.commit_written();
            m.commit_durable();
            m.release_quarantine();
        };
        m.write_dirty(&dev, 1).unwrap();
        settle(&mut m);
        let full = m.touched_leaves.unwrap();
        assert!(full >= 21, "{full}");
        for b in &data {
            m.dec(&dev, *b).unwrap();
        }
        let (root, _) = m.write_dirty(&dev, 2).unwrap();
        settle(&mut m);
        assert_eq!(m.touched_leaves, Some(full), "counted until the next open");
        // Fill one dropped leaf again: it is not counted twice.
        m.cursor = data[COUNTS_PER_LEAF as usize * 5];
        m.alloc(&dev, 8).unwrap();
        assert_eq!(m.touched_leaves, Some(full));

        let mut r = SpaceMap::open(cap, m.depth(), root, m.used() - 8, 1);
        r.count_touched_leaves(&dev);
        let after = r.touched_leaves.unwrap();
        // Leaf 0 (the superblock slots) and the leaves holding map pages.
        assert!(after <= 3, "{after} of {full} leaves still counted");
        assert!(r.commit_pages_max(0, 0) < m.commit_pages_max(0, 0));
        for b in data.iter().step_by(97) {
            assert_eq!(r.get(&dev, *b).unwrap(), 0);
        }
        let mut counted = 0;
        r.for_each_count(&dev, |_, _| counted += 1).unwrap();
        assert_eq!(counted, r.used());
    }

    #[test]
    fn depth_grows_with_capacity() {
        assert_eq!(depth_for(1), 1);
        assert_eq!(depth_for(COUNTS_PER_LEAF * PTRS_PER_INDEX), 1);
        assert_eq!(depth_for(COUNTS_PER_LEAF * PTRS_PER_INDEX + 1), 2);
    }

    /// Copy-on-write churn over a constant amount of live data: the cursor wraps, so
    /// the highest block ever allocated stays near twice the live data plus the slack,
    /// far below the capacity (a pool file would otherwise grow to its nominal size).
    #[test]
    fn cursor_wraps_so_churn_stays_near_live_data() {
        let dev = MemDevice::new();
        let cap = 10 * WRAP_SLACK;
        let mut m = SpaceMap::create(cap, 1);
        let mut live: Vec<BlockAddr> = (0..1000).map(|_| m.alloc(&dev, 1).unwrap().0).collect();
        m.write_dirty(&dev, 1).unwrap();
        m.commit_written();
        m.release_quarantine();
        m.commit_durable();
        let mut highest = 0;
        for round in 0..400u64 {
            // Rewrite 500 of the 1000 live blocks elsewhere, then commit.
            for slot in live.iter_mut().skip((round % 2) as usize).step_by(2) {
                m.dec(&dev, *slot).unwrap();
                *slot = m.alloc(&dev, 1).unwrap().0;
                highest = highest.max(*slot);
            }
            m.write_dirty(&dev, round + 2).unwrap();
            m.commit_written();
            m.release_quarantine();
            m.commit_durable();
        }
        // 200,000 allocations: without wrapping they would have reached block 200,000.
        assert!(
            highest < 2 * m.used() + WRAP_SLACK + 1000,
            "highest block {highest}, {} in use",
            m.used()
        );
        assert!(highest > WRAP_SLACK, "the churn never reached the slack");
    }

    #[test]
    fn alloc_free_commit_reopen() {
        let dev = MemDevice::new();
        let cap = 5000;
        let mut m = SpaceMap::create(cap, 1);
        let (a, n) = m.alloc(&dev, 10).unwrap();
        assert_eq!((a, n), (2, 10));
        m.inc(&dev, a, 2).unwrap();
        assert_eq!(m.get(&dev, a).unwrap(), 2);
        // Freed while fresh: reusable at once.
        m.dec(&dev, a + 9).unwrap();
        assert!(m.allocatable(&dev, a + 9).unwrap());
        let (root, _) = m.write_dirty(&dev, 1).unwrap();
        m.commit_written();
        m.release_quarantine();
        m.commit_durable();
        let used = m.used();
        let mut r = SpaceMap::open(cap, m.depth(), root, used, 1);
        assert_eq!(r.get(&dev, a).unwrap(), 2);
        assert_eq!(r.get(&dev, a + 3).unwrap(), 1);
        assert_eq!(r.get(&dev, a + 9).unwrap(), 0);
        // Freed after commit: not reusable until the next commit.
        r.dec(&dev, a + 3).unwrap();
        assert!(!r.allocatable(&dev, a + 3).unwrap());
        let mut counted = 0;
        r.for_each_count(&dev, |_, c| counted += (c > 0) as u64)
            .unwrap();
        assert_eq!(counted, r.used());
    }

    #[test]
    fn runs_out_of_space_cleanly() {
        let dev = MemDevice::new();
        let mut m = SpaceMap::create(100, 1);
        let mut got = 0;
        while let Ok((_, n)) = m.alloc(&dev, 7) {
            got += n;
        }
        assert_eq!(got, 98);
        assert!(matches!(m.alloc(&dev, 1), Err(StoreError::NoSpace { .. })));
    }
}
