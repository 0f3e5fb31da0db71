//! The transaction's view of metadata and data blocks: decoded nodes (dirty ones
//! pinned until commit, clean ones in a bounded cache), the space map, and the
//! copy-on-write and reference-count rules every tree change goes through.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use super::key::Key;
use super::node::Node;
use crate::store::block::{seal, verify, BlockKind};
use crate::store::cache::NodeCache;
use crate::store::device::BlockDevice;
use crate::store::runs::RunWriter;
use crate::store::spacemap::{SpaceMap, COUNTS_PER_LEAF};
use crate::store::superblock::MANIFEST_MAX;
use crate::store::{BlockAddr, StoreError, StoreResult, BLOCK_SIZE};

mod drop_steps;
mod undo;

/// Which blocks an item's value references (a data extent, a branch root): the tree
/// adds a reference to them when it copies a shared leaf and drops one when it frees
/// a leaf. Returns (first block, block count).
pub type RefsFn = fn(&Key, &[u8]) -> Option<(BlockAddr, u64)>;

/// Counters the regression guards and benchmarks read.
#[derive(Clone, Copy, Debug, Default)]
pub struct IoStats {
    pub nodes_read: u64,
    pub nodes_written: u64,
    pub data_blocks_read: u64,
    pub data_blocks_written: u64,
}

pub struct NodeStore {
    pub dev: Arc<dyn BlockDevice>,
    pub space: SpaceMap,
    cache: NodeCache<Node>,
    dirty: FxHashMap<BlockAddr, Arc<Node>>,
    pool_id: u64,
    generation: u64,
    refs_of: RefsFn,
    pub stats: IoStats,
    /// Blocks written in this transaction with the CRC32 of their content, while
    /// they still fit in a superblock manifest (then None).
    written: Option<FxHashMap<BlockAddr, u32>>,
    /// Limit on the data blocks the running operation may allocate (branch quotas
    /// and space reserved for other branches); set by the pool around one call.
    pub data_budget: Option<DataBudget>,
    /// Blocks the catalog changes of the next commit may need (set by the pool;
    /// part of `commit_reserve`).
    pub catalog_reserve: u64,
    /// A commit is allocating: it may use `commit_reserve`.
    pub committing: bool,
    /// The running operation frees space (unlink, rmdir, removexattr, freeing an
    /// inode, a truncate or punch that unmaps blocks): it may use `delete_slop`
    /// down to `loan_slop`.
    pub freeing: bool,
    /// The running operation only removes (unlink, rmdir, removexattr, freeing an
    /// inode; not rename, which may lengthen a name): the nodes it copies before it
    /// frees anything are not held against `data_budget`, so that a branch at its
    /// quota can still delete (`check_op_budget`).
    pub removing: bool,
    /// The running operation is a truncate or punch hole that unmaps blocks (with
    /// `freeing` and `removing`, as unlink): the partial blocks it rewrites at the
    /// ends of the range may also come from the delete slop and past `data_budget`
    /// when nothing else is left, but then it must end with fewer blocks in use
    /// than it began (`check_op_budget`). Without that condition, truncating a file
    /// a snapshot shares, a block at a time, would drain the slop for nothing.
    pub shrinking: bool,
    /// Why a data block that `shrinking` granted was refused first (ENOSPC or
    /// EDQUOT): the operation fails with it unless it freed more than it took.
    pub borrowed: Option<StoreError>,
    /// The running operation may use the whole delete slop, `loan_slop`
    /// included, as a loan: it must end with no more blocks in use than it
    /// began (`check_op_budget`), so that the copies it took of the slop are
    /// free again after the commit. A rename on the slop, and a change that
    /// frees space which found no room above `loan_slop`. Without the rule the
    /// slop went for good: a longer name can split a directory's leaf, and an
    /// unlink, removexattr or truncate in a tree a snapshot shares copies the
    /// leaves it changes and frees nothing; one commit each, they kept the slop
    /// until unlink failed with ENOSPC even for files no other tree shares.
    pub slop_on_loan: bool,
    /// The running filesystem operation's journal (undo.rs), and the buffers of
    /// the last one, reused.
    op: Option<undo::OpJournal>,
    op_spare: Option<undo::OpJournal>,
    /// After `back_ahead` was refused (or found an allocated block in the way), it
    /// waits until the file has grown to this length before it looks again.
    back_retry_at: u64,
}

/// Below this many free blocks (64 MiB) on the host filesystem of a pool file, the
/// allocator reuses free blocks inside the file before it grows the file (see
/// `NodeStore::available`).
const HOST_LOW_BLOCKS: u64 = 16384;

/// How far ahead of the allocator a pool file's blocks are backed (2 MiB), and how
/// close the allocator may come to the end of what is backed (1 MiB) before the next
/// piece is (`NodeStore::back_ahead`).
const BACK_AHEAD_BLOCKS: u64 = 512;
const BACK_AHEAD_MARGIN: u64 = 256;

/// Only writes of fewer blocks than this (128 KiB) back ahead: they are the small
/// writes whose fsyncs the host's allocation slows. A large write's blocks go to the
/// device directly and a fallocate's are not written at all, so backing ahead of
/// them (or of the tree nodes they split, allocated one at a time) would write
/// blocks for nothing.
const BACK_AHEAD_MAX_WRITE: u64 = 32;

/// Space-map leaves a run of `blocks` contiguous blocks can lie in.
fn run_leaves(blocks: u64) -> u64 {
    match blocks {
        0 => 0,
        n => (n - 1).div_ceil(COUNTS_PER_LEAF) + 1,
    }
}

/// See `NodeStore::data_budget`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataBudget {
    pub blocks: u64,
    /// The binding limit is the branch's own quota (EDQUOT), not space reserved
    /// for other branches (ENOSPC).
    pub quota: bool,
}

impl NodeStore {
    pub fn new(
        dev: Arc<dyn BlockDevice>,
        space: SpaceMap,
        pool_id: u64,
        generation: u64,
        cache_bytes: usize,
        refs_of: RefsFn,
    ) -> NodeStore {
        NodeStore {
            dev,
            space,
            cache: NodeCache::new(cache_bytes),
            dirty: FxHashMap::default(),
            pool_id,
            generation,
            refs_of,
            stats: IoStats::default(),
            data_budget: None,
            catalog_reserve: 0,
            committing: false,
            freeing: false,
            removing: false,
            shrinking: false,
            borrowed: None,
            slop_on_loan: false,
            op: None,
            op_spare: None,
            back_retry_at: 0,
            written: Some(FxHashMap::default()),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
    pub fn pool_id(&self) -> u64 {
        self.pool_id
    }
    pub fn dirty_nodes(&self) -> usize {
        self.dirty.len()
    }
    pub fn cache_stats(&self) -> (u64, u64) {
        self.cache.stats()
    }

    pub(crate) fn corrupt(&self, block: BlockAddr, why: String) -> StoreError {
        log::error!("{}: block {block}: {why}", self.dev.name().display());
        StoreError::Corrupt {
            pool: self.dev.name(),
            block,
            why,
        }
    }

    fn check_addr(&self, addr: BlockAddr) -> StoreResult<()> {
        if addr < crate::store::spacemap::FIRST_USABLE || addr >= self.space.capacity() {
            return Err(self.corrupt(addr, format!("pointer to block {addr} outside the pool")));
        }
        let len = self.dev.len_blocks();
        if addr >= len {
            return Err(StoreError::Truncated {
                pool: self.dev.name(),
                block: addr,
                len,
            });
        }
        Ok(())
    }

    /// A node, from the transaction, the cache or the device (verified).
    pub fn read(&mut self, addr: BlockAddr, expect_level: Option<u8>) -> StoreResult<Arc<Node>> {
        let node = if let Some(n) = self.dirty.get(&addr) {
            n.clone()
        } else if let Some(n) = self.cache.get(addr) {
            n
        } else {
            self.check_addr(addr)?;
            let mut buf = vec![0u8; BLOCK_SIZE];
            self.dev
                .read_at(addr, &mut buf)
                .map_err(|e| StoreError::Io {
                    pool: self.dev.name(),
                    block: addr,
                    source: e,
                })?;
            self.stats.nodes_read += 1;
            let h = verify(&buf, addr, self.pool_id, BlockKind::TreeNode)
                .map_err(|w| self.corrupt(addr, w))?;
            let n =
                Arc::new(Node::decode(&buf, h.level, h.count).map_err(|w| self.corrupt(addr, w))?);
            self.cache.insert(addr, n.clone());
            n
        };
        if let Some(l) = expect_level {
            if node.level() != l {
                return Err(self.corrupt(
                    addr,
                    format!("node at level {} where level {l} expected", node.level()),
                ));
            }
        }
        Ok(node)
    }

    /// Called after a data write of `blocks` new blocks. Next fit hands out a young
    /// pool file's blocks in order, at its end: when a small write leaves the
    /// allocator within `BACK_AHEAD_MARGIN` of the end of the file, the blocks up to
    /// `BACK_AHEAD_BLOCKS` past the allocator are given host storage in one piece
    /// (`BlockDevice::back`), so that small writes and their fsyncs do not each make
    /// the host allocate. Only blocks past the end of the file (never written, so
    /// reading as zeros already) that the space map could allocate now: nothing a
    /// commit, a log record or a reader refers to. Best effort: it never fails the
    /// write (a space-map page it cannot read just means no backing).
    pub fn back_ahead(&mut self, blocks: u64) {
        if blocks >= BACK_AHEAD_MAX_WRITE || !self.dev.is_sparse() {
            return;
        }
        let len = self.dev.len_blocks();
        let cursor = self.space.cursor();
        if cursor + BACK_AHEAD_MARGIN < len || len < self.back_retry_at {
            return;
        }
        let from = len.max(cursor);
        let mut to = (cursor + BACK_AHEAD_BLOCKS).min(self.space.capacity());
        // Metadata leaves are backed when they are set aside (spacemap/meta_area.rs).
        if let Some(meta) = self.space.next_meta_leaf(from) {
            to = to.min(meta);
        }
        let backed = from < to
            && self
                .space
                .all_allocatable(&*self.dev, from, to)
                .unwrap_or(false)
            && self.dev.back(from, to - from);
        if !backed {
            self.back_retry_at = len + BACK_AHEAD_MARGIN;
        }
    }

    /// Store a new node at a fresh address.
    pub fn alloc_node(&mut self, node: Node) -> StoreResult<BlockAddr> {
        self.ensure_node_room(1)?;
        let addr = self.space.alloc_meta(&*self.dev)?;
        self.cache.remove(addr);
        self.dirty.insert(addr, Arc::new(node));
        self.journal_alloc(addr);
        Ok(addr)
    }

    /// Blocks every change but a commit leaves free, so that the commit which
    /// makes the change durable always finds room: a commit allocates only for
    /// the catalog records it writes (`catalog_reserve`) and for the space-map
    /// pages it relocates (`SpaceMap::commit_pages_bound`); the tree nodes it
    /// writes already have their blocks. Without it a full pool failed the commit
    /// itself, after file creates and xattrs had taken the last blocks.
    pub fn commit_reserve(&self) -> u64 {
        if self.committing {
            return 0;
        }
        self.catalog_reserve + self.space.commit_pages_bound(self.catalog_reserve)
    }

    /// The commit reserve at its hard bound, if allocations before the commit
    /// reach `new_leaves` space-map leaves not touched yet: every map page the
    /// commit can move (`SpaceMap::commit_pages_max`: the leaves that may hold a
    /// count and those allocations reach, not every page of a big, nearly empty
    /// pool). `commit_reserve` caps it by what a commit moves in practice; a
    /// change that leaves only the commit reserve free (a loan of the slop, a
    /// branch delete) must leave this instead, or a commit whose frees touch
    /// pages all over a big pool finds no room, fails and keeps failing.
    fn commit_reserve_bound(&self, new_leaves: u64) -> u64 {
        if self.committing {
            return 0;
        }
        let pages = self
            .space
            .commit_pages_max(self.catalog_reserve, new_leaves);
        self.catalog_reserve + pages
    }

    /// Blocks above the commit reserve that only operations freeing space may use:
    /// removing a name copies the tree nodes it changes before anything is freed,
    /// so on a pool filled by creates, deletes need room of their own (about a
    /// dozen blocks each; the freed blocks are allocatable two commits later).
    ///
    /// A delete's commit also rewrites every space-map page whose counts it
    /// changed, and a big rm or a snapshot delete touches pages all over the
    /// pool: each half of the slop covers the commit's hard bound (every map
    /// page it can move, `commit_reserve_bound`) plus a quarter of the old figure
    /// for the delete's own node copies. On a full pool that is every map page,
    /// about 0.2% of the capacity (a map page counts 1012 blocks; ext4 reserves
    /// 5%, ZFS's slop is 1/32); a big pool that holds little holds back far less
    /// (about two blocks per map leaf a commit ever wrote, 1012 blocks each), not
    /// 2 GiB of a sparse 1 TiB pool file. The old figure, capacity / 1024
    /// clamped to 32..=1024 blocks, is kept where it is larger (pools under about
    /// 28 MiB, so 2,048-block pools keep 32): capped at 1,024 it was smaller than
    /// the ~1,300 pages of a full 5 GiB pool, and such a delete's commit failed.
    pub fn delete_slop(&self) -> u64 {
        self.delete_slop_after(0)
    }

    /// The delete slop once allocations reach `new_leaves` leaves not touched
    /// yet: what a change must leave after it allocated (see `change_reserve`).
    fn delete_slop_after(&self, new_leaves: u64) -> u64 {
        let old = (self.space.capacity() / 1024).clamp(32, 1024);
        let pages = self
            .space
            .commit_pages_max(self.catalog_reserve, new_leaves);
        old.max(2 * pages + old / 2)
    }

    /// What an allocation of one run of `blocks` outside any tree change (the
    /// intent log's region) must leave free: the commit reserve and the delete
    /// slop, as they are once the leaves the run can span count.
    pub fn reserve_after_run(&self, blocks: u64) -> u64 {
        self.commit_reserve() + self.delete_slop_after(run_leaves(blocks))
    }

    /// The part of the delete slop that only a loan (`slop_on_loan`) may use:
    /// half of it, as ZFS lets a delete use half its slop space. A change that
    /// frees space may keep blocks of the other half for good (an unlink in a
    /// tree a snapshot shares copies leaves and frees nothing), so this half is
    /// what is sure to be there for deletes that do free space.
    pub fn loan_slop(&self) -> u64 {
        self.delete_slop() / 2
    }

    /// What a tree change must leave free once it allocated `blocks` nodes: the
    /// commit reserve, and the delete slop, but only half of it (`loan_slop`) for
    /// a change that frees space, and for a loan the commit reserve at its hard
    /// bound (what the slop's halves are sized to cover): loans end with no more
    /// blocks in use, but the blocks they free wait for the commit while their
    /// copies are taken now. The slop and the hard bound grow with the map leaves
    /// in use, and each node may land in a leaf not touched yet: they are taken
    /// as after the allocation, so that what is left covers them then too.
    fn change_reserve(&self, blocks: u64) -> u64 {
        if self.slop_on_loan {
            return self.commit_reserve().max(self.commit_reserve_bound(blocks));
        }
        let slop = if self.committing {
            0
        } else if self.freeing {
            self.delete_slop_after(blocks) / 2
        } else {
            self.delete_slop_after(blocks)
        };
        self.commit_reserve() + slop
    }

    /// Whether an operation of at most `changes` tree changes on a tree of `levels`
    /// levels and `data` data blocks is sure to find room for all of them: every
    /// change within its own bound (a copy and a split per level, one level more,
    /// a new root), each new dirty node raising the data reserve by 4, the commit
    /// reserve at its hard bound (every space-map page it can move), and data
    /// within the data reserve (plus the 64 blocks `ensure_data_room` asks of a
    /// punched hole); the reserves as after the operation, every block of it in a
    /// map leaf not touched yet.
    pub fn room_for_op(&mut self, changes: u64, data: u64, levels: u64) -> bool {
        let nodes = changes.saturating_mul(2 * (levels + 1) + 1);
        let blocks = nodes.saturating_add(data).saturating_add(64);
        let pages_growth = self
            .commit_reserve_bound(blocks)
            .saturating_sub(self.commit_reserve());
        let need = nodes
            .saturating_mul(4)
            .saturating_add(blocks)
            .saturating_add(pages_growth)
            .saturating_add(self.metadata_reserve_after(blocks));
        self.available() >= need
    }

    /// Fail with ENOSPC unless `blocks` nodes can be allocated now and leave the
    /// reserve: a tree change checks first, so that running out of blocks leaves
    /// the tree as it was.
    pub fn ensure_node_room(&mut self, blocks: u64) -> StoreResult<()> {
        let reserve = self.change_reserve(blocks);
        if self.available() < blocks + reserve {
            return Err(StoreError::NoSpace {
                pool: self.dev.name(),
            });
        }
        Ok(())
    }

    /// A node that may be changed in place: the node itself if this transaction made
    /// it and nothing else references it, otherwise a fresh copy (shadowing).
    pub fn cow(&mut self, addr: BlockAddr) -> StoreResult<BlockAddr> {
        let rc = self.space.get(&*self.dev, addr)?;
        if rc == 0 {
            return Err(self.corrupt(addr, "tree points at a free block".into()));
        }
        if rc == 1 && self.dirty.contains_key(&addr) {
            return Ok(addr);
        }
        let node = self.read(addr, None)?;
        let copy = (*node).clone();
        if rc > 1 {
            // Shared: the copy holds its own references to everything below it.
            self.add_refs_below(&copy)?;
        }
        let new = self.alloc_node(copy)?;
        if self.space.dec(&*self.dev, addr)? == 0 {
            self.forget(addr);
        }
        Ok(new)
    }

    /// Mutable access to a node made writable by `cow` or `alloc_node`.
    pub fn node_mut(&mut self, addr: BlockAddr) -> StoreResult<&mut Node> {
        self.journal_change(addr);
        match self.dirty.get_mut(&addr) {
            Some(n) => Ok(Arc::make_mut(n)),
            None => Err(StoreError::Corrupt {
                pool: self.dev.name(),
                block: addr,
                why: "internal error: node changed without being made writable".into(),
            }),
        }
    }

    fn add_refs_below(&mut self, node: &Node) -> StoreResult<()> {
        match node {
            Node::Internal(_, kids) => {
                for (_, c) in kids {
                    self.space.inc(&*self.dev, *c, 1)?;
                }
            }
            Node::Leaf(items) => {
                for (k, v) in items {
                    if let Some((start, len)) = (self.refs_of)(k, v) {
                        self.space.inc(&*self.dev, start, len)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One more reference to a node (a new branch pointing at a root).
    pub fn inc_node(&mut self, addr: BlockAddr) -> StoreResult<()> {
        self.space.inc(&*self.dev, addr, 1)
    }

    /// Drop one reference to a node; when none remain, free it and everything below
    /// it that it alone referenced. Cost follows what is freed, not the tree size.
    pub fn drop_ref(&mut self, addr: BlockAddr) -> StoreResult<()> {
        self.drop_ref_at(addr, None)
    }

    /// `drop_ref` of a node at level `expect` (known below the root): children are
    /// read with the level their parent implies, as every tree walk does, so a
    /// corrupt pointer cycle is an error instead of unbounded recursion.
    fn drop_ref_at(&mut self, addr: BlockAddr, expect: Option<u8>) -> StoreResult<()> {
        let rc = self.space.get(&*self.dev, addr)?;
        if rc == 0 {
            return Err(self.corrupt(addr, "reference dropped from a free node".into()));
        }
        if rc > 1 {
            self.space.dec(&*self.dev, addr)?;
            return Ok(());
        }
        let node = self.read(addr, expect)?;
        match &*node {
            Node::Internal(level, kids) => {
                for (_, c) in kids {
                    self.drop_ref_at(*c, Some(level - 1))?;
                }
            }
            Node::Leaf(items) => {
                for (k, v) in items {
                    if let Some((start, len)) = (self.refs_of)(k, v) {
                        self.space.dec_range(&*self.dev, start, len)?;
                    }
                }
            }
        }
        self.release(addr)
    }

    fn forget(&mut self, addr: BlockAddr) {
        if let Some(n) = self.dirty.remove(&addr) {
            self.journal_drop(addr, n);
        }
        self.cache.remove(addr);
    }

    /// Write every dirty node to its (fresh) address and move it to the cache.
    pub fn write_dirty_nodes(&mut self) -> StoreResult<()> {
        let mut addrs: Vec<BlockAddr> = self.dirty.keys().copied().collect();
        addrs.sort_unstable();
        let dev = self.dev.clone();
        let mut out = RunWriter::new(&*dev);
        for addr in addrs {
            let node = match self.dirty.remove(&addr) {
                Some(n) => n,
                None => continue,
            };
            let buf = out.block(addr)?;
            node.encode(buf);
            seal(
                buf,
                BlockKind::TreeNode,
                addr,
                self.generation,
                self.pool_id,
                node.level(),
                node.len() as u16,
            );
            let crc = crc32fast::hash(buf);
            self.stats.nodes_written += 1;
            self.note_written_crc(addr, crc);
            self.cache.insert(addr, node);
        }
        out.finish()
    }

    fn note_written(&mut self, addr: BlockAddr, block: &[u8]) {
        self.note_written_crc(addr, crc32fast::hash(block));
    }

    fn note_written_crc(&mut self, addr: BlockAddr, crc: u32) {
        self.journal_written(addr);
        if let Some(w) = self.written.as_mut() {
            w.insert(addr, crc);
            if w.len() > MANIFEST_MAX {
                self.written = None;
            }
        }
    }

    /// The blocks written in this transaction that the commit still references,
    /// plus `extra` (the space-map pages, written last), if they fit in a
    /// superblock manifest; one entry per address.
    ///
    /// A block written and freed again in the same transaction (a temporary file's
    /// data) is free in this commit, so the next transaction may overwrite it before
    /// its own commit; listed, it would make open reject this commit after a crash
    /// in that window (and drop the intent log on top of it). A block freed and
    /// reused in the transaction (data, then a space-map page) has only its last
    /// content in the commit: `extra` wins over what `written` noted for it.
    pub fn manifest(
        &mut self,
        extra: &[(BlockAddr, u32)],
    ) -> StoreResult<Option<Vec<(BlockAddr, u32)>>> {
        let Some(w) = self.written.take() else {
            return Ok(None);
        };
        let mut m: FxHashMap<BlockAddr, u32> = FxHashMap::default();
        for (&a, &c) in &w {
            if self.space.get(&*self.dev, a)? > 0 {
                m.insert(a, c);
            }
        }
        self.written = Some(w);
        m.extend(extra.iter().copied());
        if m.len() > MANIFEST_MAX {
            return Ok(None);
        }
        let mut m: Vec<(BlockAddr, u32)> = m.into_iter().collect();
        m.sort_unstable();
        Ok(Some(m))
    }

    /// Called once every block of the commit of `generation`, superblock included,
    /// is written (the flush may still be running): the next transaction starts.
    pub fn commit_written(&mut self) {
        self.written = Some(FxHashMap::default());
        self.space.commit_written();
        self.generation += 1;
    }

    // ---- data blocks ----

    /// Blocks that can be allocated *and stored* now. That is the space map's free
    /// blocks, but for a pool file no more than its host filesystem can still
    /// store: the host's free space plus the free blocks inside the file (written
    /// before, so already stored). A sparse pool file's nominal capacity is usually
    /// far larger than its host; without this limit the host fills first, data
    /// writes fail one by one and the commit's metadata finds no room on the host,
    /// which poisons the pool.
    ///
    /// When the host is nearly full (`HOST_LOW_BLOCKS`) and the allocator is about
    /// to grow the file, it is sent back to the start of the pool, so that blocks
    /// freed inside the file are taken before the file grows: the next-fit cursor
    /// would otherwise reach them only after wrapping at the nominal capacity, and
    /// deleting files on a full host would not make room.
    pub fn available(&mut self) -> u64 {
        let avail = self.space.available();
        let Some(host) = self.dev.host_free_bytes() else {
            return avail;
        };
        let host = host / BLOCK_SIZE as u64;
        let len = self.dev.len_blocks();
        self.space.set_host_low(host < HOST_LOW_BLOCKS);
        if host < HOST_LOW_BLOCKS && self.space.cursor() >= len {
            self.space.rewind();
        }
        // Blocks in use beyond the end of the file (allocated, not yet written)
        // make this an underestimate, which is the safe side.
        let in_file = len.saturating_sub(self.space.used() + self.space.unusable_free_count());
        avail.min(host + in_file)
    }

    /// Blocks data allocation leaves free: for the tree changes that map the data
    /// and for the commit reserve.
    pub fn metadata_reserve(&self) -> u64 {
        self.metadata_reserve_after(0)
    }

    /// `metadata_reserve` once allocations reach `new_leaves` map leaves not
    /// touched yet (the delete slop grows with them).
    fn metadata_reserve_after(&self, new_leaves: u64) -> u64 {
        let slop = self.delete_slop_after(new_leaves);
        self.commit_reserve() + slop + 256 + 4 * self.dirty.len() as u64
    }

    /// Allocate up to `want` contiguous data blocks (count 1 each).
    /// Data allocation stops short of a reserve so that the metadata of a commit
    /// (shadowed nodes, space map pages) always finds room: a full pool gives ENOSPC
    /// to writers, never a failed commit.
    /// Fail now, as `alloc_data` would, unless `blocks` data blocks can be
    /// allocated: an operation that needs several calls checks before it changes
    /// anything, so ENOSPC leaves it undone rather than half done.
    pub fn ensure_data_room(&mut self, blocks: u64) -> StoreResult<()> {
        match self.data_room_for(blocks) {
            Err(_) if self.may_borrow(blocks) => Ok(()),
            r => r,
        }
    }

    /// `ensure_data_room` within the metadata reserve and `data_budget`.
    fn data_room_for(&mut self, blocks: u64) -> StoreResult<()> {
        // Each block written also dirties the tree path to its extent, and every
        // dirty node raises the reserve by 4: allow for a path of 8 nodes per block.
        // Data and nodes may each land in a map leaf not touched yet.
        let new_leaves = blocks.saturating_mul(9);
        let reserve = self.metadata_reserve_after(new_leaves) + blocks * 4 * 8;
        let avail = self.available();
        let pool = || self.dev.name();
        if avail < reserve + blocks {
            return Err(StoreError::NoSpace { pool: pool() });
        }
        match self.data_budget {
            Some(b) if b.blocks < blocks && b.quota => Err(StoreError::Quota { pool: pool() }),
            Some(b) if b.blocks < blocks => Err(StoreError::NoSpace { pool: pool() }),
            _ => Ok(()),
        }
    }

    /// After an operation that ran under `budget` (its `data_budget` at the start,
    /// when `used` was `used0`): fail as `alloc_data` would if it made the pool use
    /// more blocks than the budget allowed. `alloc_data` holds only data blocks to
    /// the budget; this adds the tree nodes (inline files, names, xattrs), counted
    /// net as the quota is charged (`Quotas::charge`): copying a node the branch
    /// alone references frees the original, and a node split or a copy of a node
    /// shared with a snapshot adds one. The operation is journaled (a budget always
    /// is), so the caller undoes it whole.
    ///
    /// Data blocks `shrinking` borrowed are held to a stricter rule: the operation
    /// must have freed more blocks than it allocated, nodes included, so that the
    /// slop it took is back once its frees are allocatable (after the commit).
    /// A loan of the slop (`slop_on_loan`) must not have added any (it runs
    /// journaled, `Engine::run_fs`).
    pub fn check_op_budget(&mut self, budget: Option<DataBudget>, used0: u64) -> StoreResult<()> {
        if let Some(refused) = self.borrowed.take() {
            if self.space.used() >= used0 {
                return Err(refused);
            }
        }
        if self.slop_on_loan && self.space.used() > used0 {
            return Err(StoreError::NoSpace {
                pool: self.dev.name(),
            });
        }
        let Some(b) = budget else {
            return Ok(());
        };
        if self.removing || self.space.used() <= used0.saturating_add(b.blocks) {
            return Ok(());
        }
        let pool = self.dev.name();
        Err(if b.quota {
            StoreError::Quota { pool }
        } else {
            StoreError::NoSpace { pool }
        })
    }

    pub fn alloc_data(&mut self, want: u64) -> StoreResult<(BlockAddr, u64)> {
        let want = match self.data_grant(want) {
            Ok(n) => n,
            // One block at a time: a shrink rewrites at most two partial blocks.
            Err(e) if self.may_borrow(1) => {
                self.borrowed.get_or_insert(e);
                1
            }
            Err(e) => return Err(e),
        };
        let r = self.space.alloc(&*self.dev, want)?;
        if let Some(b) = &mut self.data_budget {
            b.blocks -= r.1.min(b.blocks);
        }
        for a in r.0..r.0 + r.1 {
            self.cache.remove(a);
        }
        // Fallocate hands these out unwritten; a write notes them again.
        self.forget_written(r.0, r.1);
        Ok(r)
    }

    /// Whether a `shrinking` operation may take `blocks` data blocks past the
    /// metadata reserve and `data_budget`: it leaves what its own tree changes
    /// must (the commit reserve, `change_reserve`), so its commit still has room.
    fn may_borrow(&mut self, blocks: u64) -> bool {
        self.shrinking && self.available() >= self.change_reserve(blocks) + blocks
    }

    /// How many of `want` data blocks (at least one) may be allocated now, within
    /// the metadata reserve and `data_budget`.
    ///
    /// The reserve is taken as after the allocation (its run may reach map leaves
    /// not touched yet, which grows the delete slop): a grant of `n` leaves the
    /// reserve for `n`, or for one block if only one fits.
    fn data_grant(&mut self, want: u64) -> StoreResult<u64> {
        let reserve = |st: &Self, n: u64| st.metadata_reserve_after(run_leaves(n));
        let avail = self.available();
        let one = reserve(self, 1);
        if avail <= one {
            return Err(StoreError::NoSpace {
                pool: self.dev.name(),
            });
        }
        let most = want.min(avail - one);
        let mut want = most.min(avail.saturating_sub(reserve(self, most))).max(1);
        if let Some(b) = self.data_budget {
            if b.blocks == 0 {
                let pool = self.dev.name();
                return Err(if b.quota {
                    StoreError::Quota { pool }
                } else {
                    StoreError::NoSpace { pool }
                });
            }
            want = want.min(b.blocks);
        }
        Ok(want)
    }

    /// Blocks allocated anew: if they were written and freed earlier in this
    /// transaction, the manifest note of that write describes bytes they no longer
    /// stand for, and a commit listing it would be rejected as torn after a crash.
    pub fn forget_written(&mut self, start: BlockAddr, n: u64) {
        if let Some(w) = self.written.as_mut() {
            for a in start..start + n {
                w.remove(&a);
            }
        }
    }

    pub fn write_data(&mut self, start: BlockAddr, buf: &[u8]) -> StoreResult<()> {
        self.stats.data_blocks_written += (buf.len() / BLOCK_SIZE) as u64;
        for (i, block) in buf.chunks(BLOCK_SIZE).enumerate() {
            self.note_written(start + i as u64, block);
        }
        self.dev.write_data_at(start, buf).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                StoreError::NoSpace {
                    pool: self.dev.name(),
                }
            } else {
                StoreError::Io {
                    pool: self.dev.name(),
                    block: start,
                    source: e,
                }
            }
        })
    }

    /// Read data blocks and check each against its CRC32 from the extent item.
    pub fn read_data(&mut self, start: BlockAddr, buf: &mut [u8], crcs: &[u32]) -> StoreResult<()> {
        let n = buf.len() / BLOCK_SIZE;
        self.check_addr(start)?;
        if n > 0 {
            self.check_addr(start + n as u64 - 1)?;
        }
        self.dev.read_at(start, buf).map_err(|e| StoreError::Io {
            pool: self.dev.name(),
            block: start,
            source: e,
        })?;
        self.stats.data_blocks_read += n as u64;
        for (i, chunk) in buf.chunks(BLOCK_SIZE).enumerate() {
            let c = crc32fast::hash(chunk);
            if Some(&c) != crcs.get(i) {
                let b = start + i as u64;
                return Err(self.corrupt(
                    b,
                    format!(
                        "data block checksum mismatch (stored {:#010x}, computed {c:#010x})",
                        crcs.get(i).copied().unwrap_or(0)
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::MemDevice;

    fn store() -> NodeStore {
        let dev = Arc::new(MemDevice::new());
        let no_refs: RefsFn = |_, _| None;
        NodeStore::new(dev, SpaceMap::create(1 << 16, 7), 7, 1, 1 << 20, no_refs)
    }

    /// The manifest is what open verifies to accept a one-flush commit, so it may
    /// name only blocks that commit references, each once with its final content:
    /// a block freed in the transaction may be overwritten before the next commit,
    /// and one reused as a space-map page must not appear with its old CRC too.
    #[test]
    fn manifest_lists_live_blocks_once_with_their_last_content() {
        let mut st = store();
        let (a, n) = st.alloc_data(3).unwrap();
        assert_eq!(n, 3);
        st.write_data(a, &[1u8; 3 * BLOCK_SIZE]).unwrap();
        // Freed in the same transaction: free in this commit.
        st.space.dec(&*st.dev.clone(), a).unwrap();
        // Freed and reused as a space-map page with new content.
        let page = [2u8; BLOCK_SIZE];
        let extra = [(a + 1, crc32fast::hash(&page))];
        let m = st.manifest(&extra).unwrap().unwrap();
        let one = crc32fast::hash(&[1u8; BLOCK_SIZE]);
        assert_eq!(m, vec![(a + 1, extra[0].1), (a + 2, one)]);
    }

    /// A block written, freed and handed out again unwritten (fallocate) in one
    /// transaction is not in its manifest: the note was for bytes the commit does
    /// not reference, and a later in-place fill would make open reject the commit.
    #[test]
    fn manifest_forgets_a_block_reallocated_unwritten() {
        let mut st = store();
        let (a, _) = st.alloc_data(1).unwrap();
        st.write_data(a, &[1u8; BLOCK_SIZE]).unwrap();
        st.space.dec(&*st.dev.clone(), a).unwrap();
        st.space.rewind();
        let (again, _) = st.alloc_data(1).unwrap();
        assert_eq!(again, a);
        let m = st.manifest(&[]).unwrap().unwrap();
        assert!(m.iter().all(|(b, _)| *b != a), "{m:?}");
    }

    fn file_store(path: &std::path::Path) -> (NodeStore, Arc<crate::store::device::FileDevice>) {
        let dev = Arc::new(crate::store::device::FileDevice::open(path, true).unwrap());
        let no_refs: RefsFn = |_, _| None;
        let st = NodeStore::new(
            dev.clone(),
            SpaceMap::create(1 << 16, 7),
            7,
            1,
            1 << 20,
            no_refs,
        );
        (st, dev)
    }

    /// In a pool file, a small write near the end of the file gives the blocks up to
    /// `BACK_AHEAD_BLOCKS` past the allocator host storage (written zeros), starting
    /// at the end of the file or the allocator, whichever is further; a large write
    /// backs nothing, and a write inside the backed range backs no more. (The host
    /// must have 1 GiB free beyond, as for any backing.)
    #[test]
    fn small_writes_back_the_pool_file_ahead() {
        use std::os::unix::io::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let (mut st, dev) = file_store(&path);
        let (big, n) = st.alloc_data(64).unwrap();
        st.back_ahead(n);
        assert_eq!(dev.len_blocks(), 0, "a large write backed blocks");
        let (small, n) = st.alloc_data(2).unwrap();
        st.back_ahead(n);
        let cursor = small + n;
        assert_eq!(
            dev.len_blocks(),
            cursor + BACK_AHEAD_BLOCKS,
            "not backed ahead"
        );
        // The allocated blocks, not yet written, are still holes: the zeros start at
        // the cursor.
        let f = std::fs::File::open(&path).unwrap();
        let bs = BLOCK_SIZE as i64;
        // SAFETY: lseek takes plain integers; f stays open for the call.
        let data = unsafe { libc::lseek(f.as_raw_fd(), big as i64 * bs, libc::SEEK_DATA) };
        assert_eq!(data, cursor as i64 * bs);
        st.write_data(small, &[5u8; 2 * BLOCK_SIZE]).unwrap();
        // Inside the backed range: nothing more.
        let (next, _) = st.alloc_data(1).unwrap();
        st.back_ahead(1);
        assert_eq!(
            (next, dev.len_blocks()),
            (cursor, cursor + BACK_AHEAD_BLOCKS)
        );
        // A large write brings the allocator near the end; the next small one backs
        // from the end of the file to `BACK_AHEAD_BLOCKS` past the allocator.
        let (_, n) = st.alloc_data(300).unwrap();
        st.back_ahead(n);
        let (last, n) = st.alloc_data(1).unwrap();
        st.back_ahead(n);
        assert_eq!(dev.len_blocks(), last + 1 + BACK_AHEAD_BLOCKS);
        let mut back = vec![0u8; 2 * BLOCK_SIZE];
        dev.read_at(small, &mut back).unwrap();
        assert_eq!(back, [5u8; 2 * BLOCK_SIZE]);
    }

    /// Backing ahead never writes over a block the space map has allocated: with
    /// allocated (unwritten) blocks past the allocator, nothing is backed, and the
    /// next attempt waits until the file has grown by `BACK_AHEAD_MARGIN`.
    #[test]
    fn backing_ahead_skips_allocated_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut st, dev) = file_store(&dir.path().join("pool"));
        let (a, n) = st.alloc_data(64).unwrap();
        assert_eq!(n, 64);
        // Free the first two in this transaction and take them again: the allocator
        // is then at a + 2, below 62 allocated blocks.
        st.space.dec_range(&*st.dev.clone(), a, 2).unwrap();
        st.space.rewind();
        let (again, n) = st.alloc_data(2).unwrap();
        assert_eq!((again, n), (a, 2));
        st.back_ahead(n);
        assert_eq!(dev.len_blocks(), 0, "backed over allocated blocks");
        assert_eq!(st.back_retry_at, BACK_AHEAD_MARGIN);
    }

    /// A corrupt internal node that points at itself: dropping it must fail with a
    /// level mismatch. It recursed without bound (stack overflow) when children
    /// were read without the level their parent implies.
    #[test]
    fn drop_ref_of_a_pointer_cycle_is_an_error() {
        let mut st = store();
        let a = st.alloc_node(Node::Leaf(vec![])).unwrap();
        *st.node_mut(a).unwrap() = Node::Internal(1, vec![(super::Key::MIN, a)]);
        st.write_dirty_nodes().unwrap();
        let e = st.drop_ref(a).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    }
}
