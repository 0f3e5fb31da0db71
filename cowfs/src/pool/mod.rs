//! A pool: the catalog of branches and snapshots over one block device, the running
//! transaction and its commit, open-file bookkeeping for orphans, and fsck.
//!
//! Every filesystem call names a branch by id and runs on that branch's tree under
//! the pool lock; a commit makes everything before it durable and atomic.

pub mod admin;
mod branches;
pub mod catalog;
mod cut_steps;
pub mod diff;
mod diff_aspects;
mod diff_steps;
mod drops;
mod free_steps;
pub mod fsck;
mod fsck_xattr;
mod fsync_log;
mod opsize;
pub mod quota;
pub mod scrub;
pub mod usage;
#[cfg(test)]
mod xattr_tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::btree::{tree, NodeStore};
use crate::fs::dir::DirListEntry;
use crate::fs::file::{SeekWhence, WriteTimes, MAX_FILE_SIZE};
use crate::fs::items::{xattr_chunks, XATTR_MAX_CHUNKS};
use crate::fs::readplan::{FileBytes, Resolved};
use crate::fs::{Attr, FsError, FsResult, FsTree, Owner, SetAttr, ROOT_INO};
use crate::store::device::{BlockDevice, FileDevice};
use crate::store::flush_gate::FlushGate;
use crate::store::spacemap::{depth_for, SpaceMap};
use crate::store::superblock::{SlotError, Superblock, FORMAT_VERSION, SLOT_COUNT};
use crate::store::{BlockAddr, StoreError, BLOCK_SIZE};
use branches::Branches;
use catalog::{BranchRecord, DropRecord, FLAG_SNAPSHOT, KIND_BRANCH, KIND_DROP};
pub use catalog::{TokenId, NO_OWNER};
use opsize::OpSize;

pub use fsck::{FsckOptions, FsckReport};

/// A create: the inode, two directory items, the parent's inode.
const MKNOD: OpSize = OpSize::changes(4);
/// The longest range one fallocate operation maps: a longer one is done in steps
/// of this size, each an operation of its own, so that the pool lock is let go in
/// between and the automatic commit writes the tree nodes of the steps before
/// (one 160 GiB fallocate held the lock for 10 s and 430 MiB of new nodes until
/// its commit). A step that fails (ENOSPC) keeps the steps before it, as ext4
/// and XFS keep what a failed fallocate allocated.
pub const FALLOCATE_STEP: u64 = 1 << 30;

/// Removing a name: two directory items, the parent, the inode, the orphan item.
const UNLINK: OpSize = OpSize::changes(5);
/// symlink (the link, then its target's block), punch_hole and zero_range (the
/// head's partial block rewritten before the tail's) and clone_range (1 MiB at a
/// time) write data blocks after changing the tree, and a data write can fail on
/// the device (EIO, a full host under a pool file) whatever room the pool has:
/// always journaled, so such a failure leaves no half-made link or copy.
/// (`write_file` keeps its own repair.)
const DATA_AFTER_TREE: Option<OpSize> = None;

/// Id of a branch or snapshot inside its pool.
pub type BranchId = u64;

/// Capacity of a pool file when none is given: the file is sparse and grows as
/// blocks are written, so this is a ceiling, not a reservation.
pub const DEFAULT_FILE_CAPACITY: u64 = 1 << 40;

/// The pool lock. A std (futex) mutex rather than parking_lot's: on a 2-core host
/// with four FUSE workers queueing for it, parking_lot spins with sched_yield before
/// sleeping, and perf put those yields at 12% of the daemon's CPU in a random-write
/// load. A panic while holding the lock does not poison it, as before: nothing in
/// the engine relies on poisoning.
struct EngineLock(std::sync::Mutex<Engine>);

/// What a flush started now makes durable: the blocks of two-flush commit `g`
/// (its superblock not yet written), or all of commit `g`.
#[derive(Clone, Copy)]
struct FlushStep {
    g: u64,
    blocks_only: bool,
}

impl EngineLock {
    fn lock(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Bytes of decoded metadata kept in the node cache.
    pub cache_bytes: usize,
    /// Commit automatically once this many bytes of metadata are dirty.
    pub dirty_limit_bytes: usize,
    /// Pool capacity for `create` (default: the device size, or 1 TiB for a file).
    pub capacity_bytes: Option<u64>,
    /// Owner of the root directory of `main` at `create`.
    pub root_uid: u32,
    pub root_gid: u32,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            cache_bytes: 64 << 20,
            dirty_limit_bytes: 32 << 20,
            capacity_bytes: None,
            // SAFETY: geteuid/getegid cannot fail.
            root_uid: unsafe { libc::geteuid() },
            root_gid: unsafe { libc::getegid() },
        }
    }
}

/// The smallest pool `create` makes, in blocks.
const MIN_POOL_BLOCKS: u64 = 64;

/// Errors of pool-level operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: file exists and is not empty; refusing to overwrite it with a new pool")]
    NotEmpty(PathBuf),
    #[error(
        "{0}: the device holds {1}; refusing to overwrite it with a new pool (if it is \
         the right device, zero its first MiB first: `dd if=/dev/zero of={0} bs=1M count=1`)"
    )]
    DeviceNotBlank(PathBuf, &'static str),
    #[error("pool too small: {0} blocks (at least 64 blocks of 4 KiB are needed)")]
    TooSmall(u64),
    #[error("no branch or snapshot named '{0}' (see `cowfs-ctl list`)")]
    BranchNotFound(String),
    #[error("a branch or snapshot named '{0}' already exists")]
    BranchExists(String),
    #[error("invalid branch name '{0}': {1}")]
    InvalidName(String, String),
    #[error("branch '{0}' has open files; close them (unmount) first")]
    Busy(String),
}

impl PoolError {
    pub fn errno(&self) -> i32 {
        match self {
            PoolError::Store(s) => s.errno(),
            PoolError::Fs(f) => f.errno(),
            PoolError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            PoolError::NotEmpty(_) | PoolError::DeviceNotBlank(..) | PoolError::BranchExists(_) => {
                libc::EEXIST
            }
            PoolError::TooSmall(_) => libc::ENOSPC,
            PoolError::BranchNotFound(_) => libc::ENOENT,
            PoolError::InvalidName(..) => libc::EINVAL,
            PoolError::Busy(_) => libc::EBUSY,
        }
    }
}

pub type PoolResult<T> = Result<T, PoolError>;

/// A branch or snapshot as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchInfo {
    pub id: BranchId,
    pub name: String,
    pub snapshot: bool,
    /// Name of the branch or snapshot it was taken from; if that was deleted, of
    /// the nearest ancestor still there (`branch_delete`); none for `main` and
    /// for a branch whose parent a build before that deleted.
    pub parent: Option<String>,
    pub created_unix: u64,
    /// The token that created it (`NO_OWNER`: none did).
    pub owner: TokenId,
    /// Only admin tokens may delete, reset, rename or mount it read-write.
    pub protected: bool,
}

/// statfs figures, in 4 KiB blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

pub(crate) struct Engine {
    pub(crate) st: NodeStore,
    pub(crate) catalog_root: BlockAddr,
    pub(crate) branches: Branches,
    dirty_branches: BTreeSet<BranchId>,
    deleted_branches: BTreeSet<BranchId>,
    next_branch_id: u64,
    /// `next_branch_id` in the last superblock written: a commit is due while
    /// they differ, so that a taken id is never handed out again after a crash.
    written_next_branch_id: u64,
    created_unix: u64,
    open: HashMap<(BranchId, u64), u32>,
    poisoned: bool,
    /// Opened by `Pool::open_read_only`: every change is refused before it
    /// touches anything (`refuse_changes`), nothing is freed in steps, nothing
    /// is committed, the intent log is not replayed.
    read_only: bool,
    dirty_limit_nodes: usize,
    /// Generation of the running transaction, readable without the pool lock.
    running_gen: Arc<AtomicU64>,
    /// File reads in progress outside the lock, counted in two slots; new reads
    /// join `read_slot`. See `release_quarantine`.
    reads: Arc<ReadCounts>,
    read_slot: usize,
    /// A commit whose blocks are written and whose flushes run outside the lock
    /// (`Pool::sync`, `Pool::commit`); no other commit may write until it is
    /// durable. The next transaction runs meanwhile: this one's blocks are no
    /// longer fresh (copied, never rewritten) and the blocks it freed wait for it.
    flushing: Option<u64>,
    /// Generation of the last durable commit: the one opened, then each whose
    /// flushes all returned 0. Not `st.generation() - 1` once not flushing: a
    /// commit whose flush failed is neither flushing nor durable.
    durable: u64,
    /// The superblock of the `flushing` commit while it waits for the flush of
    /// the commit's blocks (a commit too large for a manifest: two flushes). A
    /// crash before it is written opens the previous commit.
    unwritten_sb: Option<Superblock>,
    /// Branch quotas and reservations (see quota.rs).
    quotas: quota::Quotas,
    /// The last durable superblock has no manifest. A one-flush commit is sealed by
    /// the next commit, or by a commit with nothing new (the daemon's timer, close),
    /// so that only a crash right after a small commit relies on manifest checks.
    sealed: bool,
    /// A superblock slot holds an older format version. An older build opens
    /// such a pool from that slot (it rejects only the newer one) and its next
    /// commit overwrites the newer slot, losing that commit: once this build's
    /// first commit has landed, the other slot is written too (`finish_upgrade`).
    older_slot: bool,
    /// Fast fsync: the intent log (fsync_log.rs).
    pub(crate) log: fsync_log::IntentLog,
    /// Orphans no handle holds whose freeing found no room (ENOSPC on a full
    /// pool: a snapshot or another branch shares them, so freeing frees nothing
    /// and its node copies stay). Only a mount's cleanup looked at them again,
    /// so after the snapshot was deleted their blocks stayed in use until the
    /// next mount; `free_stuck_orphans` tries them again once blocks were freed.
    stuck_orphans: BTreeSet<(BranchId, u64)>,
    /// Big orphans being freed in steps, in order (free_steps.rs).
    stepping: VecDeque<(BranchId, u64)>,
    /// Wakes the freeing thread when `stepping` gets an orphan.
    freer: Arc<free_steps::Freer>,
    /// Trees being dropped in steps (drops.rs): the catalog's DROP records as
    /// the next commit writes them, by id.
    drops: BTreeMap<u64, DropRecord>,
    /// Drop records the next commit writes (or removes, if gone from `drops`).
    dirty_drops: BTreeSet<u64>,
    /// Drops the freeing thread works through, in order.
    dropping: VecDeque<u64>,
    /// Blocks in use after the last attempt on `stuck_orphans` failed: the next
    /// one waits until fewer are (room may have come back).
    stuck_used: u64,
    /// No branch hands out an inode number below this: the highest `next_ino`
    /// of every branch record seen, raised by every inode allocated. Numbers are
    /// kept per branch (on-disk §6.2), but two branches taken from one snapshot
    /// start from the same one, and `diff`, which pairs files by number, took a
    /// file each of them created afterwards for one file. Taken from above every
    /// branch's, a new number is never one a file of another branch has.
    ino_floor: u64,
}

pub struct Pool {
    /// Shared with the freeing thread (free_steps.rs).
    e: Arc<EngineLock>,
    name: PathBuf,
    running_gen: Arc<AtomicU64>,
    reads: Arc<ReadCounts>,
    freer: Arc<free_steps::Freer>,
    /// The freeing thread; stopped and joined on drop.
    freeing: Option<std::thread::JoinHandle<()>>,
    /// Called between two steps of a truncate or punch hole (cut_steps.rs).
    cut_pause: std::sync::Mutex<Option<Box<dyn FnMut() + Send>>>,
}

/// Reads in flight outside the pool lock, by slot. Every commit flips the slot new
/// reads join, so the reads that may still use the blocks a commit freed are
/// exactly those of the slot it flipped away from.
#[derive(Default)]
struct ReadCounts {
    slots: [AtomicUsize; 2],
}

/// Counts a read in flight outside the lock for as long as it lives.
struct InFlight(Arc<ReadCounts>, usize);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.slots[self.1].fetch_sub(1, Ordering::Release);
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Names a new branch or snapshot may get: the control protocol's rule
/// (`cowfs_ctl::proto::check_name`: ASCII letters, digits, '-', '_' and '.'), kept
/// in one place so that the engine and the daemon never disagree on it.
pub fn check_branch_name(name: &str) -> PoolResult<()> {
    cowfs_ctl::proto::check_name(name)
        .map_err(|why| PoolError::InvalidName(name.escape_debug().to_string(), why))
}

/// A pool file must be empty, a device blank (`store::blank`): anything else is
/// someone's data, or a pool.
fn refuse_overwrite(dev: &FileDevice, path: &Path) -> PoolResult<()> {
    if dev.fixed_capacity().is_none() && !dev.is_empty() {
        return Err(PoolError::NotEmpty(path.to_path_buf()));
    }
    if dev.fixed_capacity().is_none() {
        return Ok(());
    }
    let io = |source| PoolError::Io {
        path: path.to_path_buf(),
        source,
    };
    match crate::store::blank::what_is_on(dev).map_err(io)? {
        None => Ok(()),
        Some(what) => Err(PoolError::DeviceNotBlank(path.to_path_buf(), what)),
    }
}

impl Pool {
    /// Create a new pool in a regular file (created if missing, must be empty) or on
    /// a block device.
    pub fn create(path: &Path, opts: &PoolOptions) -> PoolResult<Pool> {
        // Checked before the pool file is created, so a refused size leaves no file.
        if let Some(blocks) = opts.capacity_bytes.map(|b| b / BLOCK_SIZE as u64) {
            if blocks < MIN_POOL_BLOCKS {
                return Err(PoolError::TooSmall(blocks));
            }
        }
        let dev = FileDevice::open(path, true).map_err(|e| PoolError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        refuse_overwrite(&dev, path)?;
        Pool::create_on(Arc::new(dev), opts)
    }

    /// What `create` would refuse at `path` (a file that is not empty, a device
    /// that is not blank), found without creating or writing anything; nothing
    /// there is fine. For a caller that has more to check before `create`: what
    /// is at the path itself comes first (`cowfs init` on a live pool must say so,
    /// not that its side files are in the way).
    pub fn refuse_to_create(path: &Path) -> PoolResult<()> {
        if !path.exists() {
            return Ok(());
        }
        let dev = FileDevice::open(path, false).map_err(|e| PoolError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        refuse_overwrite(&dev, path)
    }

    /// Open an existing pool file or block device.
    pub fn open(path: &Path, opts: &PoolOptions) -> PoolResult<Pool> {
        let dev = FileDevice::open(path, false).map_err(|e| PoolError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Pool::open_on(Arc::new(dev), opts)
    }

    /// Open an existing pool file or block device read-only (O_RDONLY), as it is
    /// on disk, for fsck and scrub: see `open_on_read_only`.
    pub fn open_read_only(path: &Path, opts: &PoolOptions) -> PoolResult<Pool> {
        let dev = FileDevice::open_read_only(path).map_err(|e| PoolError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Pool::open_on_read_only(Arc::new(dev), opts)
    }

    /// Create a pool on any block device (tests use in-memory devices).
    pub fn create_on(dev: Arc<dyn BlockDevice>, opts: &PoolOptions) -> PoolResult<Pool> {
        let dev = FlushGate::wrap(dev);
        let capacity = match (opts.capacity_bytes, dev.fixed_capacity()) {
            (Some(b), Some(fixed)) => (b / BLOCK_SIZE as u64).min(fixed),
            (Some(b), None) => b / BLOCK_SIZE as u64,
            (None, Some(fixed)) => fixed,
            (None, None) => DEFAULT_FILE_CAPACITY / BLOCK_SIZE as u64,
        };
        if capacity < MIN_POOL_BLOCKS {
            return Err(PoolError::TooSmall(capacity));
        }
        let pool_id = random_u64();
        let name = dev.name();
        let space = SpaceMap::create(capacity, pool_id);
        let mut st = NodeStore::new(dev, space, pool_id, 1, opts.cache_bytes, catalog::item_refs);
        let catalog_root = tree::create_empty(&mut st)?;
        let mut root = tree::create_empty(&mut st)?;
        let mut next_ino = ROOT_INO + 1;
        FsTree {
            st: &mut st,
            root: &mut root,
            next_ino: &mut next_ino,
        }
        .init_root(0o755, opts.root_uid, opts.root_gid)?;
        let created = unix_now();
        let mut branches = Branches::default();
        let main = BranchRecord {
            root,
            next_ino,
            flags: 0,
            created_unix: created,
            parent: 0,
            name: "main".into(),
            owner: NO_OWNER,
        };
        branches
            .insert(1, main)
            .map_err(|_| PoolError::BranchExists("main".into()))?;
        let mut e = Engine::new(st, catalog_root, branches, 2, created, opts);
        e.dirty_branches.insert(1);
        e.commit()?;
        log::info!(
            "{}: created pool ({} blocks of 4 KiB)",
            name.display(),
            capacity
        );
        Pool::wrap(e, name)
    }

    /// Open a pool on any block device: the valid superblock slot with the highest
    /// generation wins; if its catalog cannot be read, the other slot is tried.
    pub fn open_on(dev: Arc<dyn BlockDevice>, opts: &PoolOptions) -> PoolResult<Pool> {
        Pool::open_dev(dev, opts, false)
    }

    /// Open a pool on any block device to look at it, writing nothing, ever: the
    /// last complete commit as `open_on` picks it, without the intent log records
    /// written after it (they are counted, `FsckReport::log_records`, and left for
    /// the next read-write open), without the freeing thread (pending drops and
    /// orphans stay as they are), and without a commit at close. Every change
    /// fails with `StoreError::ReadOnly` (EROFS) before it touches anything.
    ///
    /// A constructor of its own rather than a `PoolOptions` field: `create` could
    /// not honour the field, and a read-only pool file must also be opened
    /// O_RDONLY (`open_read_only`), before any option is read.
    pub fn open_on_read_only(dev: Arc<dyn BlockDevice>, opts: &PoolOptions) -> PoolResult<Pool> {
        Pool::open_dev(dev, opts, true)
    }

    fn open_dev(
        dev: Arc<dyn BlockDevice>,
        opts: &PoolOptions,
        read_only: bool,
    ) -> PoolResult<Pool> {
        let dev = FlushGate::wrap(dev);
        let name = dev.name();
        if dev.len_blocks() < SLOT_COUNT {
            return Err(StoreError::Foreign {
                pool: name,
                why: "too short to hold the superblock slots".into(),
            }
            .into());
        }
        let mut slots = Vec::new();
        let mut problems = Vec::new();
        let mut older_slot = false;
        for slot in 0..SLOT_COUNT {
            let mut buf = vec![0u8; BLOCK_SIZE];
            dev.read_at(slot, &mut buf).map_err(|e| StoreError::Io {
                pool: name.clone(),
                block: slot,
                source: e,
            })?;
            match Superblock::decode(&buf) {
                Ok(sb) => {
                    older_slot |= Superblock::version_of(&buf) < FORMAT_VERSION;
                    slots.push(sb)
                }
                // Written by a newer build (the checksum held): falling back to the
                // other slot would open the commit before it, and this build's next
                // commit would overwrite the newer one, losing it.
                Err(SlotError::Version(v)) if v > FORMAT_VERSION => {
                    log::error!(
                        "{}: superblock slot {slot} was written by a newer cowfs (format version {v})",
                        name.display()
                    );
                    return Err(StoreError::Version {
                        pool: name,
                        found: v,
                        supported: FORMAT_VERSION,
                    }
                    .into());
                }
                Err(e) => {
                    if e != SlotError::Empty {
                        log::warn!("{}: superblock slot {slot} rejected: {e:?}", name.display());
                    }
                    problems.push((slot, e));
                }
            }
        }
        slots.sort_by_key(|s| std::cmp::Reverse(s.generation));
        let mut torn = None;
        for sb in slots {
            if let Some(why) = Engine::torn(&*dev, &sb)? {
                log::warn!("{}: {why}; opening the commit before it", name.display());
                torn = Some(why);
                continue;
            }
            // A complete commit: any error from here on is reported, never answered
            // with the older slot. The next commit would reuse this one's generation
            // and overwrite its slot, losing it (and its logged fsyncs) for good.
            return match Engine::load(dev.clone(), &sb, opts, older_slot, read_only) {
                Ok(e) => {
                    log::info!(
                        "{}: opened pool at generation {} ({} branches)",
                        name.display(),
                        sb.generation,
                        e.branches.len()
                    );
                    Pool::wrap(e, name)
                }
                Err(err) => {
                    log::error!(
                        "{}: cannot open generation {}, the last complete commit: {err}",
                        name.display(),
                        sb.generation
                    );
                    Err(err)
                }
            };
        }
        if let Some(e) = torn {
            return Err(e.into());
        }
        // No valid slot: say why as precisely as the slots allow.
        for (slot, p) in &problems {
            match p {
                SlotError::Version(v) => {
                    return Err(StoreError::Version {
                        pool: name,
                        found: *v,
                        supported: FORMAT_VERSION,
                    }
                    .into())
                }
                SlotError::Checksum | SlotError::Invalid(_) => {
                    return Err(StoreError::Corrupt {
                        pool: name,
                        block: *slot,
                        why: format!("superblock slot {slot}: {p:?}, and no other valid slot"),
                    }
                    .into())
                }
                _ => {}
            }
        }
        Err(StoreError::Foreign {
            pool: name,
            why: "no cowfs superblock in either slot".into(),
        }
        .into())
    }

    /// The pool around `e`, with its freeing thread unless it is read-only
    /// (nothing to free: every step would change the pool).
    fn wrap(e: Engine, name: PathBuf) -> PoolResult<Pool> {
        let freer = e.freer.clone();
        let running_gen = e.running_gen.clone();
        let reads = e.reads.clone();
        let read_only = e.read_only;
        let e = Arc::new(EngineLock(std::sync::Mutex::new(e)));
        let freeing = if read_only {
            None
        } else {
            let spawned = free_steps::spawn(e.clone(), freer.clone());
            Some(spawned.map_err(|source| PoolError::Io {
                path: name.clone(),
                source,
            })?)
        };
        Ok(Pool {
            running_gen,
            reads,
            e,
            name,
            freer,
            freeing,
            cut_pause: Default::default(),
        })
    }

    /// Make every change completed before this call durable (fsync, syncfs). Calls
    /// that arrive while a commit is running share the next one (group commit), and a
    /// call whose changes a finished commit already covers returns at once.
    ///
    /// The flush, the slow part, runs without the pool lock, so other requests
    /// (reads, writes, the next transaction) go on meanwhile; a sync that finds a
    /// commit being flushed flushes too (that covers it) and finishes it.
    pub fn sync(&self) -> PoolResult<()> {
        let want = self.running_gen.load(Ordering::Acquire);
        let mut e = self.e.lock();
        loop {
            // After a failed flush no sync may succeed (fsync-gate): the commit
            // whose flush failed is not durable, yet it is no longer flushing and
            // its generation has passed, so the checks below would say "covered".
            e.writable()?;
            let g = match e.flushing {
                Some(g) => g,
                None if e.st.generation() > want || !e.has_changes() => return Ok(()),
                None => e.commit_write_checked()?,
            };
            e = self.flush_out(e, g)?;
        }
    }

    /// Finish commit `g`'s flushes (both, for a two-flush commit) without the
    /// pool lock, retaking it after each. Other syncs may share them; the lock is
    /// held again on return.
    fn flush_out<'a>(
        &'a self,
        mut e: std::sync::MutexGuard<'a, Engine>,
        g: u64,
    ) -> PoolResult<std::sync::MutexGuard<'a, Engine>> {
        while let Some(step) = e.flush_step().filter(|s| s.g == g) {
            let dev = e.st.dev.clone();
            drop(e);
            let flushed = dev.flush();
            e = self.e.lock();
            e.flush_done(step, flushed)?;
        }
        Ok(e)
    }

    /// Make file `ino` durable (fsync): with one intent log record and a flush when
    /// its changes since the last commit are data writes a record can name
    /// (fsync_log.rs), else by a commit (`sync`).
    pub fn sync_file(&self, b: BranchId, ino: u64) -> PoolResult<()> {
        let mut e = self.e.lock();
        let upto = match e.log_fsync(b, ino)? {
            fsync_log::LogStep::Clean => return Ok(()),
            fsync_log::LogStep::Commit => {
                drop(e);
                return self.sync();
            }
            fsync_log::LogStep::Flush(n) => n,
        };
        let dev = e.st.dev.clone();
        drop(e);
        let r = dev.flush();
        self.e.lock().log_flushed(upto, r)
    }

    /// The pool's path (or device name).
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// The pool's identity: a random number chosen when it was created, the same
    /// whatever path it is opened by.
    pub fn id(&self) -> u64 {
        self.e.lock().st.pool_id()
    }

    /// Make everything done so far durable and atomic.
    pub fn commit(&self) -> PoolResult<()> {
        let mut e = self.e.lock();
        // The daemon's timer commits every few seconds: orphans left for want of
        // room are freed within one period of the delete that made room.
        e.free_stuck_orphans();
        // As `Engine::commit`, but the flushes run without the lock. A commit in
        // flight is finished first (another may start while the lock is free).
        while let Some(g) = e.flushing {
            e = self.flush_out(e, g)?;
        }
        if !e.commit_due()? {
            return Ok(());
        }
        let g = e.commit_write_checked()?;
        drop(self.flush_out(e, g)?);
        Ok(())
    }

    /// Generation of the last durable commit.
    pub fn generation(&self) -> u64 {
        self.e.lock().durable
    }

    pub fn list(&self) -> Vec<BranchInfo> {
        let e = self.e.lock();
        e.branches.iter().map(|(id, r)| e.info(*id, r)).collect()
    }

    pub fn info(&self, name: &str) -> PoolResult<BranchInfo> {
        let e = self.e.lock();
        let id = e.id_of(name)?;
        Ok(e.info(id, &e.branches[&id]))
    }

    /// Every branch and snapshot taken from `id`, directly or through others
    /// (deleted ones in between included: see `branch_delete`).
    pub fn descendants(&self, id: BranchId) -> Vec<BranchId> {
        self.e.lock().branches.descendants(id)
    }

    /// The branches and snapshots whose parent is `id`.
    pub fn children(&self, id: BranchId) -> Vec<BranchId> {
        self.e.lock().branches.children(id)
    }

    /// The parent of `id`, its parent, and so on, nearest first.
    pub fn ancestors(&self, id: BranchId) -> Vec<BranchId> {
        self.e.lock().branches.ancestors(id)
    }

    pub fn branch_id(&self, name: &str) -> PoolResult<BranchId> {
        self.e.lock().id_of(name)
    }

    /// A writable branch of a branch or snapshot: O(1), and committed.
    pub fn branch_create(&self, name: &str, from: &str) -> PoolResult<BranchId> {
        self.branch_create_owned(name, from, NO_OWNER)
    }

    /// A read-only snapshot of a branch or snapshot: O(1), and committed.
    pub fn snapshot_create(&self, name: &str, from: &str) -> PoolResult<BranchId> {
        self.snapshot_create_owned(name, from, NO_OWNER)
    }

    /// `branch_create`, recording in the same commit that token `owner` created it.
    pub fn branch_create_owned(
        &self,
        name: &str,
        from: &str,
        owner: TokenId,
    ) -> PoolResult<BranchId> {
        self.e.lock().create_child(name, from, false, owner)
    }

    /// `branch_create` (no owner) that calls `record` with the branch's id before
    /// the commit that creates it, so that a caller can remember the branch
    /// durably before it can exist (sanitized clones, control/sanitizing.rs). If
    /// `record` fails nothing is created. The id is taken in a commit of its own
    /// before `record` runs, so it is never handed out again, even if `record`
    /// or the creation fails or the process dies before the next commit: what
    /// was recorded names no other branch.
    pub fn branch_create_recorded(
        &self,
        name: &str,
        from: &str,
        record: impl FnOnce(BranchId) -> PoolResult<()>,
    ) -> PoolResult<BranchId> {
        let mut e = self.e.lock();
        let parent = e.check_child(name, from)?;
        let id = e.take_branch_id();
        e.commit()?;
        // That commit may have used the room `check_child` made sure of.
        e.ensure_commit_room(1)?;
        record(id)?;
        e.insert_child(id, parent, name, false, NO_OWNER)
    }

    /// `snapshot_create`, recording in the same commit that token `owner` created it.
    pub fn snapshot_create_owned(
        &self,
        name: &str,
        from: &str,
        owner: TokenId,
    ) -> PoolResult<BranchId> {
        self.e.lock().create_child(name, from, true, owner)
    }

    /// The branches and snapshots token `owner` created.
    pub fn owned_by(&self, owner: TokenId) -> Vec<BranchId> {
        if owner == NO_OWNER {
            return Vec::new();
        }
        let e = self.e.lock();
        e.branches
            .iter()
            .filter(|(_, r)| r.owner == owner)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Record owners of existing branches, in one commit; ids that no longer
    /// exist are skipped. For token stores written before owners moved into the
    /// catalog (control/tokens.rs).
    pub fn set_owners(&self, owners: &[(BranchId, TokenId)]) -> PoolResult<()> {
        let mut e = self.e.lock();
        e.writable()?;
        let changed: Vec<(BranchId, TokenId)> = owners
            .iter()
            .copied()
            .filter(|(id, o)| e.branches.get(id).is_some_and(|r| r.owner != *o))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        e.ensure_commit_room(changed.len() as u64)?;
        for (id, owner) in changed {
            if let Some(r) = e.branches.get_mut(id) {
                r.owner = owner;
            }
            e.dirty_branches.insert(id);
        }
        e.commit()?;
        Ok(())
    }

    pub fn branch_rename(&self, old: &str, new: &str) -> PoolResult<()> {
        let mut e = self.e.lock();
        check_branch_name(new)?;
        let id = e.id_of(old)?;
        if e.id_of(new).is_ok() {
            return Err(PoolError::BranchExists(new.into()));
        }
        e.ensure_commit_room(1)?;
        e.branches.rename(id, new);
        e.dirty_branches.insert(id);
        e.commit()?;
        Ok(())
    }

    /// Delete a branch or snapshot, freeing exactly the blocks only it referenced.
    pub fn branch_delete(&self, name: &str) -> PoolResult<()> {
        let mut e = self.e.lock();
        let id = e.id_of(name)?;
        if e.open.keys().any(|(b, _)| *b == id) {
            return Err(PoolError::Busy(name.into()));
        }
        e.writable()?;
        // Deleting makes room: it may use the whole delete slop, not the commit
        // reserve. It keeps none of it: only its commit allocates. On the loan the
        // check asks for the commit reserve at its hard bound (every space-map
        // page moved): the record is removed in memory before the commit, and a
        // snapshot spread over a big full pool touches every page, so a commit
        // that then found no room failed, and so did every commit after it.
        // Its children's records change too: they take its parent, in this
        // commit, so that lineage stays connected (branches.rs).
        // Plus a drop record, if its tree is freed in steps (drops.rs).
        let children = e.branches.children(id).len() as u64;
        e.on_loan(|e| e.ensure_commit_room(2 + children))?;
        let root = e
            .branches
            .get(&id)
            .ok_or_else(|| PoolError::BranchNotFound(name.into()))?
            .root;
        // Before the record goes: a drop that fails changed nothing (drops.rs).
        e.journaled(|e| e.drop_tree(root))?;
        let (_, reparented) = e
            .branches
            .remove(id)
            .ok_or_else(|| PoolError::BranchNotFound(name.into()))?;
        e.dirty_branches.remove(&id);
        e.dirty_branches.extend(reparented);
        e.deleted_branches.insert(id);
        e.commit()?;
        Ok(())
    }

    pub fn statfs(&self) -> StatFs {
        Self::statfs_locked(&mut self.e.lock())
    }

    /// `statfs` as branch `b` sees it: its quota is its size (used: what it alone
    /// references), and other branches' reservations are not room it has. A
    /// service that checks `df` before a large write then sees the room its
    /// writes will get, not the pool's.
    pub fn statfs_of(&self, b: BranchId) -> StatFs {
        let mut e = self.e.lock();
        let mut s = Self::statfs_locked(&mut e);
        let Some(budget) = e.quotas.budget(b, &e.branches, s.bfree) else {
            return s;
        };
        if let Some((max, charged)) = e.quotas.limit_blocks(b) {
            s.blocks = max.max(charged);
            s.bfree = s.bfree.min(max.saturating_sub(charged));
        }
        s.bfree = s.bfree.min(budget.blocks);
        s.bavail = s.bavail.min(budget.blocks);
        s
    }

    fn statfs_locked(e: &mut Engine) -> StatFs {
        let in_pool = e.st.space.available();
        // Blocks freed since the last commit are allocatable after the next one,
        // which any change that needs them forces (`Engine::retry_after_commit`,
        // `commit_for_room`): free for `df` at once, as ext4 shows them, rather
        // than two commits after the `rm`. They are in the pool file already, so
        // the host's room does not limit them. Not while a diff pins its trees:
        // its pin holds them past their commit (`SpaceMap::pin`), so they are
        // no room until it ends.
        let freed = if e.st.space.pinned() {
            0
        } else {
            e.st.space.pending_free_count() as u64
        };
        // Limited by the host filesystem of a pool file, as the allocator is.
        let avail = e.st.available() + freed;
        // Blocks held back for commits and for deletes are free but not usable by
        // a writer: `df` and applications see the room they really have.
        let held = e.st.commit_reserve() + e.st.delete_slop();
        let space = &e.st.space;
        // A sparse pool file larger than what its host can still store: sized as
        // what it holds plus that room, or `df` counts the capacity the host
        // cannot store as used (a new 1 TiB pool on a 100 GiB disk, "95% used").
        let blocks = if avail < in_pool + freed {
            space.used() + avail
        } else {
            space.capacity()
        };
        StatFs {
            blocks,
            bfree: avail,
            bavail: avail.saturating_sub(held),
            files: u32::MAX as u64,
            ffree: (u32::MAX as u64).saturating_sub(space.used()),
            bsize: BLOCK_SIZE as u32,
            namelen: 255,
        }
    }

    /// Blocks in use (non-zero reference count), including metadata.
    pub fn used_blocks(&self) -> u64 {
        self.e.lock().st.space.used()
    }

    /// I/O counters since open.
    pub fn io_stats(&self) -> crate::btree::nodestore::IoStats {
        self.e.lock().st.stats
    }

    /// Check the whole pool (commits first so that what is checked is on disk).
    pub fn fsck(&self, opts: &FsckOptions) -> PoolResult<FsckReport> {
        let mut e = self.e.lock();
        e.commit_before_check()?;
        Ok(fsck::run(&mut e, opts))
    }

    // ---- filesystem operations on one branch ----

    fn read<T>(&self, b: BranchId, f: impl FnOnce(&mut FsTree) -> FsResult<T>) -> FsResult<T> {
        self.e.lock().with_fs(b, false, f)
    }

    /// A change of at most `size` (None: no bound known). Run once more after a
    /// commit if it found no room while blocks freed since the last commit wait
    /// (`Engine::retry_after_commit`): a create or chmod right after `rm` on a full
    /// pool succeeds, as it would on ext4.
    fn write<T>(
        &self,
        b: BranchId,
        size: Option<OpSize>,
        f: impl Fn(&mut FsTree) -> FsResult<T>,
    ) -> FsResult<T> {
        let mut e = self.e.lock();
        let r = e.retry_after_commit(|e| e.with_fs_sized(b, size, &f));
        e.maybe_commit();
        r
    }

    /// A change that frees space (removing xattrs): it may use the delete slop
    /// (`Engine::on_slop`), so that a pool filled by creates can still be
    /// emptied.
    fn write_freeing<T>(
        &self,
        b: BranchId,
        size: OpSize,
        f: impl Fn(&mut FsTree) -> FsResult<T>,
    ) -> FsResult<T> {
        let mut e = self.e.lock();
        let r = e.retry_after_commit(|e| e.on_slop(true, |e| e.with_fs_sized(b, Some(size), &f)));
        e.maybe_commit();
        r
    }

    /// A truncate or punch hole (`f`, always journaled). One that unmaps blocks
    /// (`unmaps` says) frees space as a delete does and runs as unlink does: on the
    /// delete slop, not held to the quota for the nodes it copies, once more after
    /// a commit if the slop ran out. So `truncate -s 0 big.log` makes room on a
    /// full pool, as `rm` does. The partial blocks it rewrites may take the slop
    /// too, if it frees more than it takes (`NodeStore::shrinking`). One that
    /// unmaps nothing (a grow, a cut inside the last block or inside a hole) frees
    /// nothing and is an ordinary change.
    fn write_shrinking<T>(
        &self,
        b: BranchId,
        unmaps: impl FnOnce(&mut FsTree) -> FsResult<bool>,
        f: impl Fn(&mut FsTree) -> FsResult<T>,
    ) -> FsResult<T> {
        let mut e = self.e.lock();
        // An error here (a missing inode): `f` meets it too and reports it.
        let unmapping = e.with_fs(b, false, unmaps).unwrap_or(false);
        let r = e.retry_after_commit(|e| {
            if unmapping {
                e.shrinking(|e| e.with_fs_sized(b, None, &f))
            } else {
                e.with_fs_sized(b, None, &f)
            }
        });
        e.maybe_commit();
        r
    }

    /// Remove the name `name` in `parent` (`f`, unlink or rmdir) on the delete
    /// slop, and free the inode whose last link went away
    /// (`Engine::free_unlinked`). Where the part of the slop a change may keep
    /// is used up (`NodeStore::loan_slop`), only as a loan, with the inode freed
    /// in the same operation (`Engine::remove_on_loan`): an unlink in a tree a
    /// snapshot shares, which frees nothing, then gets ENOSPC, and one that
    /// frees what it copies still works.
    fn write_unlinking(
        &self,
        b: BranchId,
        parent: u64,
        name: &[u8],
        f: impl Fn(&mut FsTree) -> FsResult<Option<u64>>,
    ) -> FsResult<()> {
        let mut e = self.e.lock();
        let r = e.retry_after_commit(|e| {
            match e.freeing(true, |e| e.with_fs_sized(b, Some(UNLINK), &f)) {
                Err(err) if err.errno() == libc::ENOSPC => e.remove_on_loan(b, parent, name, &f),
                r => r,
            }
        });
        let r = r.map(|gone| e.free_unlinked(b, gone));
        e.maybe_commit();
        r
    }

    pub fn is_read_only(&self, b: BranchId) -> FsResult<bool> {
        let e = self.e.lock();
        match e.branches.get(&b) {
            Some(r) => Ok(r.is_snapshot() || e.poisoned || e.read_only),
            None => Err(FsError::Posix(libc::ESTALE)),
        }
    }

    pub fn lookup(&self, b: BranchId, parent: u64, name: &[u8]) -> FsResult<Attr> {
        self.read(b, |fs| fs.lookup(parent, name))
    }
    pub fn getattr(&self, b: BranchId, ino: u64) -> FsResult<Attr> {
        self.read(b, |fs| fs.getattr(ino))
    }
    pub fn setattr(&self, b: BranchId, ino: u64, s: &SetAttr) -> FsResult<Attr> {
        if let Some(size) = s.size {
            // In steps if it cuts much (cut_steps.rs).
            return self.setattr_sized(b, ino, s, size);
        }
        let times_only = s.mode.is_none() && s.uid.is_none() && s.gid.is_none();
        if !times_only {
            return self.write(b, None, |fs| fs.setattr(ino, s));
        }
        // The kernel sends the times it kept while writing back before an fsync;
        // a log record carries them. (On a full pool, after a commit if need be:
        // refused, the fsync that follows would fail.)
        let mut e = self.e.lock();
        let r = e.retry_after_commit(|e| {
            e.logged_change(b, ino, None, OpSize::changes(1), |fs| {
                fs.setattr(ino, s).map(|a| (a, true))
            })
        });
        e.maybe_commit();
        r
    }
    pub fn mknod(
        &self,
        b: BranchId,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        owner: Owner,
    ) -> FsResult<Attr> {
        self.write(b, Some(MKNOD), |fs| {
            fs.mknod(parent, name, mode, rdev, owner)
        })
    }
    pub fn mkdir(
        &self,
        b: BranchId,
        parent: u64,
        name: &[u8],
        mode: u32,
        owner: Owner,
    ) -> FsResult<Attr> {
        self.write(b, Some(MKNOD), |fs| fs.mkdir(parent, name, mode, owner))
    }
    pub fn symlink(
        &self,
        b: BranchId,
        parent: u64,
        name: &[u8],
        target: &[u8],
        owner: Owner,
    ) -> FsResult<Attr> {
        // Always journaled, as every operation that writes data blocks after it
        // changed the tree (`DATA_AFTER_TREE`).
        self.write(b, DATA_AFTER_TREE, |fs| {
            fs.symlink(parent, name, target, owner)
        })
    }
    pub fn readlink(&self, b: BranchId, ino: u64) -> FsResult<Vec<u8>> {
        self.read(b, |fs| fs.readlink(ino))
    }
    pub fn link(&self, b: BranchId, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        // Two directory items, the parent, the inode, the orphan item.
        let size = OpSize::changes(5);
        self.write(b, Some(size), |fs| fs.link(ino, newparent, newname))
    }
    pub fn unlink(&self, b: BranchId, parent: u64, name: &[u8]) -> FsResult<()> {
        self.write_unlinking(b, parent, name, |fs| fs.unlink(parent, name))
    }
    pub fn rmdir(&self, b: BranchId, parent: u64, name: &[u8]) -> FsResult<()> {
        self.write_unlinking(b, parent, name, |fs| fs.rmdir(parent, name))
    }
    /// A rename is an ordinary change: a longer name can need a new block for
    /// good, so it may not keep any of the delete slop. Only when it finds no
    /// room outside the slop does it run on it, as a loan (`Engine::remove_on_loan`):
    /// it must end with no more blocks in use than it began, counting the inode
    /// of a file it replaces, freed in the same operation. Otherwise ENOSPC, as
    /// ext4 gives when a directory must grow, and nothing changed.
    pub fn rename(
        &self,
        b: BranchId,
        p1: u64,
        n1: &[u8],
        p2: u64,
        n2: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        // Target removed (5), source removed (3), added (3), the inode.
        let size = OpSize::changes(13);
        let rename = |fs: &mut FsTree| fs.rename(p1, n1, p2, n2, flags);
        let mut e = self.e.lock();
        // A second try after a commit takes nothing of the slop for good either.
        let r = e.retry_after_commit(|e| match e.with_fs_sized(b, Some(size), rename) {
            Err(err) if err.errno() == libc::ENOSPC => e.remove_on_loan(b, p2, n2, rename),
            r => r,
        });
        let r = r.map(|gone| e.free_unlinked(b, gone));
        e.maybe_commit();
        r
    }
    /// Read file data. The blocks are located under the pool lock and, when they are
    /// committed, read and verified outside it (several readers in parallel); any
    /// doubt (checksum, I/O) repeats the read under the lock, which reports errors.
    pub fn read_file(&self, b: BranchId, ino: u64, off: u64, len: usize) -> FsResult<Vec<u8>> {
        self.read_file_bytes(b, ino, off, len)
            .map(FileBytes::into_vec)
    }

    /// `read_file` without the final copy into a `Vec` of its own (the FUSE reply
    /// takes a slice).
    pub fn read_file_bytes(
        &self,
        b: BranchId,
        ino: u64,
        off: u64,
        len: usize,
    ) -> FsResult<FileBytes> {
        let (plan, dev, guard) = {
            let mut e = self.e.lock();
            match e.with_fs(b, false, |fs| fs.plan_read(ino, off, len))? {
                Resolved::Done(v) => return Ok(v.into()),
                Resolved::Plan(p) => {
                    let slot = e.read_slot;
                    self.reads.slots[slot].fetch_add(1, Ordering::AcqRel);
                    (p, e.st.dev.clone(), InFlight(self.reads.clone(), slot))
                }
            }
        };
        let data = plan.execute(&*dev);
        // Stop counting before taking the lock again: a commit holding the lock may
        // wait for this slot's count to reach zero.
        drop(guard);
        match data {
            Some(v) => Ok(v),
            None => self
                .read(b, |fs| fs.read(ino, off, len))
                .map(FileBytes::from),
        }
    }
    pub fn write_file(&self, b: BranchId, ino: u64, off: u64, data: &[u8]) -> FsResult<usize> {
        self.write_file_with(b, ino, off, data, WriteTimes::Stamp)
    }
    /// `write_file`, with what it does to the file's times.
    pub fn write_file_with(
        &self,
        b: BranchId,
        ino: u64,
        off: u64,
        data: &[u8],
        times: WriteTimes,
    ) -> FsResult<usize> {
        let mut e = self.e.lock();
        e.commit_for_room(b, data.len());
        let blocks = Engine::write_blocks_of(off, data.len());
        // Inline bytes moved to an extent, removed; the inode.
        let size = OpSize::bytes(data.len() as u64, 4);
        let write = |e: &mut Engine| {
            e.logged_change(b, ino, blocks, size, |fs| {
                fs.write_data_for_log(ino, off, data, times)
            })
        };
        // A write that fails leaves the file as it was: once more if room came
        // (`make_room`: orphans freed in steps may hold what it needs).
        let r = match write(&mut e) {
            Err(err) if e.make_room(err.errno()) => write(&mut e),
            r => r,
        };
        e.maybe_commit();
        r
    }
    pub fn readdir(
        &self,
        b: BranchId,
        ino: u64,
        offset: u64,
        max: usize,
    ) -> FsResult<Vec<DirListEntry>> {
        self.read(b, |fs| fs.readdir(ino, offset, max))
    }
    pub fn setxattr(
        &self,
        b: BranchId,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        // The new item and its chunks, the old one and its chunks removed, the inode.
        let chunks = xattr_chunks(value.len()).min(XATTR_MAX_CHUNKS);
        let size = OpSize::changes(3 + chunks + XATTR_MAX_CHUNKS);
        self.write(b, Some(size), |fs| fs.setxattr(ino, name, value, flags))
    }
    pub fn getxattr(&self, b: BranchId, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        self.read(b, |fs| fs.getxattr(ino, name))
    }
    pub fn listxattr(&self, b: BranchId, ino: u64) -> FsResult<Vec<u8>> {
        self.read(b, |fs| fs.listxattr(ino))
    }
    pub fn removexattr(&self, b: BranchId, ino: u64, name: &[u8]) -> FsResult<()> {
        // The item, its chunks, the inode.
        let size = OpSize::changes(2 + XATTR_MAX_CHUNKS);
        self.write_freeing(b, size, |fs| fs.removexattr(ino, name))
    }
    pub fn punch_hole(&self, b: BranchId, ino: u64, off: u64, len: u64) -> FsResult<()> {
        self.punch_hole_with(b, ino, off, len, WriteTimes::Stamp)
    }
    /// `punch_hole`, with what it does to the file's times.
    pub fn punch_hole_with(
        &self,
        b: BranchId,
        ino: u64,
        off: u64,
        len: u64,
        times: WriteTimes,
    ) -> FsResult<()> {
        // Always journaled (DATA_AFTER_TREE), as write_shrinking's operations
        // are; in steps if it unmaps much (cut_steps.rs).
        self.punch_in_steps(b, ino, off, len, times)
    }
    pub fn fallocate(
        &self,
        b: BranchId,
        ino: u64,
        off: u64,
        len: u64,
        keep_size: bool,
    ) -> FsResult<()> {
        self.fallocate_with(b, ino, off, len, keep_size, WriteTimes::Stamp)
    }
    /// `fallocate`, with what it does to the file's times.
    pub fn fallocate_with(
        &self,
        b: BranchId,
        ino: u64,
        off: u64,
        len: u64,
        keep_size: bool,
        times: WriteTimes,
    ) -> FsResult<()> {
        // A range the filesystem refuses (overflow, beyond the largest file) is
        // refused whole, by one call: in steps, those before the one crossing
        // the largest size were kept (the file grown, GiBs taken, then EFBIG).
        let end = match off.checked_add(len) {
            Some(end) if len > FALLOCATE_STEP && end <= MAX_FILE_SIZE => end,
            _ => return self.fallocate_step(b, ino, off, len, keep_size, times),
        };
        let mut at = off;
        while at < end {
            let step = (end - at).min(FALLOCATE_STEP);
            self.fallocate_step(b, ino, at, step, keep_size, times)?;
            at += step;
        }
        Ok(())
    }

    /// One operation of `fallocate_with`.
    fn fallocate_step(
        &self,
        b: BranchId,
        ino: u64,
        off: u64,
        len: u64,
        keep_size: bool,
        times: WriteTimes,
    ) -> FsResult<()> {
        // Inline bytes moved to an extent; the inode.
        let size = OpSize::bytes(len, 4);
        self.write(b, Some(size), |fs| {
            fs.fallocate(ino, off, len, keep_size, times)
        })
    }

    /// Zero [off, off+len) of a file and reserve its blocks (FALLOC_FL_ZERO_RANGE).
    pub fn zero_range(
        &self,
        b: BranchId,
        ino: u64,
        off: u64,
        len: u64,
        keep_size: bool,
    ) -> FsResult<()> {
        self.zero_range_with(b, ino, off, len, keep_size, WriteTimes::Stamp)
    }

    /// `zero_range`, with what it does to the file's times.
    pub fn zero_range_with(
        &self,
        b: BranchId,
        ino: u64,
        off: u64,
        len: u64,
        keep_size: bool,
        times: WriteTimes,
    ) -> FsResult<()> {
        // Always journaled (DATA_AFTER_TREE): the tail's partial block is written
        // after the head's was mapped.
        self.write(b, DATA_AFTER_TREE, |fs| {
            fs.zero_range(ino, off, len, keep_size, times)
        })
    }
    pub fn seek(&self, b: BranchId, ino: u64, off: u64, whence: SeekWhence) -> FsResult<u64> {
        self.read(b, |fs| fs.seek(ino, off, whence))
    }
    /// Share `len` bytes of `src` at `soff` into `dst` at `doff` (same branch).
    pub fn clone_range(
        &self,
        b: BranchId,
        src: u64,
        soff: u64,
        dst: u64,
        doff: u64,
        len: u64,
    ) -> FsResult<u64> {
        let range = (src, soff, dst, doff, len);
        self.clone_range_with(b, range, WriteTimes::Stamp)
    }
    /// `clone_range` of (src, soff, dst, doff, len), with what it does to the
    /// destination's times.
    pub fn clone_range_with(
        &self,
        b: BranchId,
        (src, soff, dst, doff, len): (u64, u64, u64, u64, u64),
        times: WriteTimes,
    ) -> FsResult<u64> {
        self.write(b, DATA_AFTER_TREE, |fs| {
            fs.clone_range(src, soff, dst, doff, len, times)
        })
    }
    /// A file handle was opened on `ino`: keep it alive past its last unlink.
    pub fn open_inode(&self, b: BranchId, ino: u64) {
        *self.e.lock().open.entry((b, ino)).or_insert(0) += 1;
    }

    /// A file handle was closed; an unlinked inode with no handles left is freed.
    /// One that finds no room (a full pool, and freeing it would free nothing: a
    /// snapshot shares it) stays an orphan, whole, and is freed by a later
    /// commit once room comes back (`free_stuck_orphans`) or by the next mount's
    /// cleanup: that is not an error of the close, which could do nothing about
    /// it. I/O errors and corruption are.
    pub fn release_inode(&self, b: BranchId, ino: u64) -> FsResult<()> {
        let mut e = self.e.lock();
        let last = match e.open.get_mut(&(b, ino)) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                e.open.remove(&(b, ino));
                true
            }
            None => false,
        };
        if last && !e.branches.get(&b).is_none_or(|r| r.is_snapshot()) {
            let r = e.free_orphan(b, ino);
            e.maybe_commit();
            return match r {
                Err(err) if err.errno() == libc::ENOSPC => Ok(()),
                r => r,
            };
        }
        Ok(())
    }

    /// Free every orphan of a branch that no handle has open (at mount, after a
    /// restart or on a branch taken while files were open). Returns how many.
    /// One that finds no room (a full pool, and freeing it would free nothing:
    /// a snapshot shares it) stays on the orphan list, whole, for a later
    /// cleanup, rather than failing the mount.
    pub fn cleanup_orphans(&self, b: BranchId) -> FsResult<usize> {
        let mut e = self.e.lock();
        if e.branches.get(&b).is_some_and(|r| r.is_snapshot()) {
            return Ok(0);
        }
        let orphans = e.with_fs(b, false, |fs| fs.orphans())?;
        let mut n = 0;
        for ino in orphans {
            if !e.open.contains_key(&(b, ino)) {
                // Freeing space: as release_inode, even at the branch's quota.
                match e.free_orphan(b, ino) {
                    Ok(()) => n += 1,
                    Err(err) if err.errno() == libc::ENOSPC => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(n)
    }
}

impl Drop for Pool {
    /// Final commit, then a seal if that commit was a one-flush one: a pool closed
    /// cleanly never depends on manifest verification.
    fn drop(&mut self) {
        free_steps::stop(&self.freer, self.freeing.take());
        let mut e = self.e.lock();
        // Read-only: nothing changed (every change was refused), nothing to seal.
        if e.read_only {
            return;
        }
        if let Err(err) = e.commit().and_then(|_| e.commit()) {
            log::error!("{}: final commit failed: {err}", self.name.display());
        }
    }
}

impl Engine {
    fn new(
        st: NodeStore,
        catalog_root: BlockAddr,
        branches: Branches,
        next_branch_id: u64,
        created_unix: u64,
        opts: &PoolOptions,
    ) -> Engine {
        let st_gen = st.generation();
        let ino_floor = branches.values().map(|r| r.next_ino).max().unwrap_or(0);
        Engine {
            st,
            catalog_root,
            branches,
            dirty_branches: BTreeSet::new(),
            deleted_branches: BTreeSet::new(),
            next_branch_id,
            written_next_branch_id: next_branch_id,
            created_unix,
            open: HashMap::new(),
            poisoned: false,
            read_only: false,
            dirty_limit_nodes: (opts.dirty_limit_bytes / BLOCK_SIZE).max(16),
            running_gen: Arc::new(AtomicU64::new(st_gen)),
            reads: Arc::default(),
            read_slot: 0,
            flushing: None,
            durable: st_gen - 1,
            unwritten_sb: None,
            sealed: true,
            older_slot: false,
            quotas: quota::Quotas::default(),
            log: fsync_log::IntentLog::default(),
            stuck_orphans: BTreeSet::new(),
            stepping: VecDeque::new(),
            freer: Arc::default(),
            drops: BTreeMap::new(),
            dirty_drops: BTreeSet::new(),
            dropping: VecDeque::new(),
            stuck_used: 0,
            ino_floor,
        }
    }

    /// A one-flush commit counts only if every block it listed reads back intact.
    /// Why the commit of `sb` is torn (a block its manifest lists is past the end
    /// of the device or does not hold what was written), or None if it is complete.
    /// A block that cannot be read proves nothing either way: that is an error.
    fn torn(dev: &dyn BlockDevice, sb: &Superblock) -> Result<Option<StoreError>, StoreError> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        for (addr, crc) in &sb.manifest {
            // Past the end: a truncated pool (or a file whose growth did not land).
            if *addr >= dev.len_blocks() {
                return Ok(Some(StoreError::Truncated {
                    pool: dev.name(),
                    block: *addr,
                    len: dev.len_blocks(),
                }));
            }
            dev.read_at(*addr, &mut buf)
                .map_err(|source| StoreError::Io {
                    pool: dev.name(),
                    block: *addr,
                    source,
                })?;
            if crc32fast::hash(&buf) != *crc {
                return Ok(Some(StoreError::Corrupt {
                    pool: dev.name(),
                    block: *addr,
                    why: format!(
                        "commit {} is incomplete (torn by a crash before its flush)",
                        sb.generation
                    ),
                }));
            }
        }
        Ok(None)
    }

    /// Open the complete commit `sb` (see `torn`) and replay its intent log.
    fn load(
        dev: Arc<dyn BlockDevice>,
        sb: &Superblock,
        opts: &PoolOptions,
        older_slot: bool,
        read_only: bool,
    ) -> PoolResult<Engine> {
        if let Some(fixed) = dev.fixed_capacity() {
            if sb.capacity_blocks > fixed {
                return Err(StoreError::Truncated {
                    pool: dev.name(),
                    block: sb.capacity_blocks - 1,
                    len: fixed,
                }
                .into());
            }
        }
        if sb.space_depth != depth_for(sb.capacity_blocks) {
            return Err(StoreError::Corrupt {
                pool: dev.name(),
                block: Superblock::slot_for(sb.generation),
                why: "space map depth does not match capacity".into(),
            }
            .into());
        }
        let space = SpaceMap::open(
            sb.capacity_blocks,
            sb.space_depth,
            sb.space_root,
            sb.used_blocks,
            sb.pool_id,
        );
        let mut st = NodeStore::new(
            dev,
            space,
            sb.pool_id,
            sb.generation + 1,
            opts.cache_bytes,
            catalog::item_refs,
        );
        // The delete slop follows the map leaves in use (format-spec §8.2).
        let dev = st.dev.clone();
        st.space.count_touched_leaves(&*dev);
        let mut branches = Branches::default();
        let mut drops = BTreeMap::new();
        let corrupt = |st: &NodeStore, why: String| StoreError::Corrupt {
            pool: st.dev.name(),
            block: sb.catalog_root,
            why,
        };
        for (k, v) in tree::collect(
            &mut st,
            sb.catalog_root,
            &crate::btree::Key::MIN,
            &crate::btree::Key::MAX,
        )? {
            if k.kind == KIND_DROP {
                let rec = DropRecord::decode(&v)
                    .ok_or_else(|| corrupt(&st, format!("undecodable drop record {}", k.id)))?;
                drops.insert(k.id, rec);
                continue;
            }
            if k.kind != KIND_BRANCH {
                return Err(
                    corrupt(&st, format!("catalog item of unknown kind {}", k.kind)).into(),
                );
            }
            let rec = BranchRecord::decode(&v).ok_or_else(|| {
                corrupt(
                    &st,
                    format!("undecodable catalog record for branch id {}", k.id),
                )
            })?;
            let name = rec.name.clone();
            branches
                .insert(k.id, rec)
                .map_err(|other| StoreError::Corrupt {
                    pool: st.dev.name(),
                    block: sb.catalog_root,
                    why: format!("branches {other} and {} are both named '{name}'", k.id),
                })?;
        }
        // The superblock's root pointers must lead to readable nodes.
        for r in branches.values() {
            st.read(r.root, None)?;
        }
        for r in drops.values() {
            st.read(r.root, None)?;
        }
        let mut e = Engine::new(
            st,
            sb.catalog_root,
            branches,
            sb.next_branch_id,
            sb.created_unix,
            opts,
        );
        e.drops = drops;
        e.sealed = sb.manifest.is_empty();
        e.log.region = sb.log;
        if read_only {
            // The pool as its last commit left it: the drops stay where they
            // are (fsck walks them from their progress), and the log records
            // are only counted. Applying them in memory would allocate (tree
            // copies, space-map leaves: a sparse file's new leaf is backed at
            // once, a write) and fsck would then check a transaction no commit
            // holds; they are applied, and committed, by the next read-write open.
            e.read_only = true;
            e.log.unreplayed = e.scan_log(sb.generation)?.len();
            return Ok(e);
        }
        e.resume_drops();
        // Before the replay's commit: that one may be this build's first.
        e.older_slot = older_slot;
        // Records for this commit that replay did not apply (after a torn one) may
        // still verify: no new record may join them, so the first fsync commits.
        e.log.taint();
        let replayed = e.replay_log(sb.generation)?;
        if replayed > 0 {
            log::info!(
                "{}: applied {replayed} intent log records (fsyncs after commit {})",
                e.st.dev.name().display(),
                sb.generation
            );
            e.commit()?;
        }
        Ok(e)
    }

    fn info(&self, id: BranchId, r: &BranchRecord) -> BranchInfo {
        BranchInfo {
            id,
            name: r.name.clone(),
            snapshot: r.is_snapshot(),
            parent: self.branches.get(&r.parent).map(|p| p.name.clone()),
            created_unix: r.created_unix,
            owner: r.owner,
            protected: r.is_protected(),
        }
    }

    fn id_of(&self, name: &str) -> PoolResult<BranchId> {
        self.branches
            .id_of(name)
            .ok_or_else(|| PoolError::BranchNotFound(name.into()))
    }

    fn writable(&self) -> PoolResult<()> {
        Ok(self.refuse_changes()?)
    }

    /// The one check every path that changes the pool goes through (a tree
    /// change, a catalog change, a commit, an fsync's log record, a freeing
    /// step): none may on a poisoned or read-only pool.
    fn refuse_changes(&self) -> Result<(), StoreError> {
        let pool = || self.st.dev.name();
        if self.poisoned {
            return Err(StoreError::Poisoned { pool: pool() });
        }
        if self.read_only {
            return Err(StoreError::ReadOnly { pool: pool() });
        }
        Ok(())
    }

    /// The commit fsck and scrub make first, so that what they check is on
    /// disk; none on a read-only pool, which holds nothing but what is on disk.
    fn commit_before_check(&mut self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        self.commit()
    }

    /// Run `f` as an operation that frees space: it may use the delete slop
    /// above `NodeStore::loan_slop` (`NodeStore::freeing`), and with `removing`
    /// it only removes tree items (`NodeStore::removing`).
    fn freeing<T>(&mut self, removing: bool, f: impl FnOnce(&mut Engine) -> T) -> T {
        self.st.freeing = true;
        self.st.removing = removing;
        let r = f(self);
        self.st.freeing = false;
        self.st.removing = false;
        r
    }

    /// Run `f` on the whole delete slop as a loan (`NodeStore::slop_on_loan`):
    /// a change it makes runs journaled and is undone with ENOSPC if it ends
    /// with more blocks in use than it began.
    fn on_loan<T>(&mut self, f: impl FnOnce(&mut Engine) -> T) -> T {
        self.st.slop_on_loan = true;
        let r = f(self);
        self.st.slop_on_loan = false;
        r
    }

    /// Run `op`, a change that frees space (`freeing`), on the delete slop: first
    /// on the part of it a change may keep for good, and if that has no room,
    /// once more on the whole slop as a loan (`on_loan`). A change in a tree a
    /// snapshot or another branch shares copies the nodes it changes and frees
    /// nothing, and the copies stay: one commit after each, such changes used
    /// the slop up, until even an unlink that frees space failed with ENOSPC.
    /// Now they can keep at most the slop above `NodeStore::loan_slop`, and a
    /// change that gives back what it copies always finds the rest.
    fn on_slop<T>(
        &mut self,
        removing: bool,
        mut op: impl FnMut(&mut Engine) -> FsResult<T>,
    ) -> FsResult<T> {
        match self.freeing(removing, &mut op) {
            Err(e) if e.errno() == libc::ENOSPC => self.on_loan(|e| e.freeing(removing, op)),
            r => r,
        }
    }

    /// Run `op` (a tree change that is all or nothing) and, if it ran out of
    /// room while blocks freed earlier in this transaction wait for a commit,
    /// commit and run it once more. What a delete, a shrink or an overwrite frees
    /// is allocatable only after the next commit: on a full pool a series of
    /// renames in one transaction used the delete slop up and the next unlink
    /// failed, and a create or chmod right after `rm` failed, with ENOSPC until
    /// the commit timer came. As a write does (`commit_for_room`), and as ext4
    /// forces a journal commit, commit rather than report ENOSPC.
    /// Orphans being freed in steps (free_steps.rs) are freed to the end first,
    /// also for EDQUOT: their blocks still count to their branch's quota.
    /// Dropped trees (drops.rs) too, for ENOSPC only.
    fn retry_after_commit<T>(
        &mut self,
        mut op: impl FnMut(&mut Engine) -> FsResult<T>,
    ) -> FsResult<T> {
        match op(self) {
            Err(e) if self.make_room(e.errno()) => op(self),
            r => r,
        }
    }

    /// After an operation failed with `errno`: for ENOSPC, free the orphans and
    /// dropped trees queued to be freed in steps and commit, so that blocks freed
    /// since the last commit are allocatable; for EDQUOT, free the queued
    /// orphans only: a dropped tree belongs to no branch any more (deleted, or
    /// the old tree of a reset), so freeing it gives no quota back and would
    /// only hold the lock for the whole drop. Whether the operation may find
    /// room now.
    fn make_room(&mut self, errno: i32) -> bool {
        match errno {
            libc::ENOSPC => {
                let stepped = self.finish_stepped_frees();
                self.release_frees() || stepped
            }
            libc::EDQUOT => self.finish_stepped_orphans(),
            _ => false,
        }
    }

    /// A change (`op`) that removes the name `name` in `parent` (unlink, rmdir,
    /// or a rename over it) and found no room on the part of the delete slop it
    /// may use, once more on the whole slop as a loan (`on_loan`): undone with
    /// ENOSPC if it ends with more blocks in use than it began. The inode whose
    /// last link it removes is freed in the same operation, so that what freeing
    /// it gives back counts (and a failure undoes the change too), unless a
    /// handle still holds it: returned then, as `op` returns it.
    fn remove_on_loan(
        &mut self,
        b: BranchId,
        parent: u64,
        name: &[u8],
        op: impl FnOnce(&mut FsTree) -> FsResult<Option<u64>>,
    ) -> FsResult<Option<u64>> {
        // An error here (no such name): `op` meets it or replaces nothing.
        let held = self
            .with_fs(b, false, |fs| fs.lookup(parent, name))
            .ok()
            .map(|a| a.ino)
            .filter(|ino| self.open.contains_key(&(b, *ino)));
        self.on_loan(|e| {
            e.freeing(false, |e| {
                e.with_fs(b, true, |fs| match op(fs)? {
                    Some(ino) if Some(ino) != held => fs.free_inode(ino).map(|_| None),
                    gone => Ok(gone),
                })
            })
        })
    }

    /// Free inode `gone`, whose last link a change just removed, unless a file
    /// handle still has it. The name is gone, so this cannot fail the change: if
    /// freeing fails (ENOSPC on a full pool), that operation is undone on its own
    /// and the inode stays on the orphan list, whole, for the next cleanup. Runs
    /// as a removal on the delete slop (`on_slop`): it frees space, even at a
    /// quota.
    fn free_unlinked(&mut self, b: BranchId, gone: Option<u64>) {
        let Some(ino) = gone.filter(|ino| !self.open.contains_key(&(b, *ino))) else {
            return;
        };
        if let Err(err) = self.free_orphan(b, ino) {
            // ENOSPC was logged, and the orphan noted, by free_orphan.
            if err.errno() != libc::ENOSPC {
                log::warn!("inode {ino} stays an orphan, freeing it failed: {err}");
            }
        }
    }

    /// Free orphan `ino` of branch `b` (no name left, no handle) as a removal on
    /// the delete slop (`on_slop`); nothing if it is not an orphan (any more). A
    /// big one (`FsTree::frees_in_steps`) is queued to be freed in steps by the
    /// freeing thread (free_steps.rs) instead: it stays an orphan until then. One
    /// that finds no room stays on the orphan list, whole, and is noted in
    /// `stuck_orphans` to be tried again once room comes back.
    fn free_orphan(&mut self, b: BranchId, ino: u64) -> FsResult<()> {
        // Before it is queued for the freeing thread: a read-only pool has none.
        self.refuse_changes()?;
        if self.with_fs(b, false, |fs| fs.frees_in_steps(ino))? {
            self.queue_free(b, ino);
            return Ok(());
        }
        self.free_orphan_part(b, ino, true).map(|_| ())
    }

    /// Try the orphans that found no room to be freed (`stuck_orphans`) again,
    /// once fewer blocks are in use than when the last try failed: a snapshot
    /// delete or an `rm` may have made room, or made their blocks this tree's
    /// alone. Commits first if freed blocks wait (`retry_after_commit`). One a
    /// handle holds again (reopened through /proc/PID/fd) is left to that
    /// handle's release, and one whose branch is gone went with the tree.
    fn free_stuck_orphans(&mut self) {
        if self.stuck_orphans.is_empty() || self.st.space.used() >= self.stuck_used {
            return;
        }
        for (b, ino) in std::mem::take(&mut self.stuck_orphans) {
            let writable = self.branches.get(&b).is_some_and(|r| !r.is_snapshot());
            if !writable || self.open.contains_key(&(b, ino)) {
                continue;
            }
            if let Err(err) = self.retry_after_commit(|e| e.free_orphan(b, ino)) {
                if err.errno() != libc::ENOSPC {
                    log::warn!("inode {ino} stays an orphan, freeing it failed: {err}");
                }
            }
        }
        self.stuck_used = self.st.space.used();
    }

    /// Run `op` as a truncate or punch hole that unmaps blocks: on the delete
    /// slop with `removing`, as unlink (`on_slop`), and `NodeStore::shrinking`.
    fn shrinking<T>(&mut self, op: impl FnMut(&mut Engine) -> FsResult<T>) -> FsResult<T> {
        self.st.shrinking = true;
        let r = self.on_slop(true, op);
        self.st.shrinking = false;
        r
    }

    /// Set the catalog part of the commit reserve (`NodeStore::commit_reserve`)
    /// for the records changed so far and `more` records about to change: per
    /// record one insert or remove, at most a copy and a split per level and a new
    /// root, counted with one level more than the catalog has now (inserts may
    /// raise it).
    fn reserve_catalog(&mut self, more: u64) -> Result<(), StoreError> {
        let levels = u64::from(self.st.read(self.catalog_root, None)?.level()) + 2;
        let records = (self.dirty_branches.len()
            + self.deleted_branches.len()
            + self.dirty_drops.len()) as u64
            + more;
        self.st.catalog_reserve = records * (2 * levels + 1);
        Ok(())
    }

    /// Fail with ENOSPC, before changing anything, unless the commit of a catalog
    /// operation that changes `records` records is sure to find room: such an
    /// operation changes the catalog in memory and then commits, and must not be
    /// left half applied by a commit that fails (a branch created in memory but
    /// not committed shares blocks born in the running transaction).
    fn ensure_commit_room(&mut self, records: u64) -> PoolResult<()> {
        // Every catalog change checks this before it changes anything in memory.
        self.refuse_changes()?;
        self.reserve_catalog(records)?;
        self.st.ensure_node_room(0)?;
        Ok(())
    }

    fn create_child(
        &mut self,
        name: &str,
        from: &str,
        snapshot: bool,
        owner: TokenId,
    ) -> PoolResult<BranchId> {
        let parent = self.check_child(name, from)?;
        let id = self.take_branch_id();
        self.insert_child(id, parent, name, snapshot, owner)
    }

    /// Can a child `name` of `from` be created, with room for its commit? Its
    /// parent's id.
    fn check_child(&mut self, name: &str, from: &str) -> PoolResult<BranchId> {
        check_branch_name(name)?;
        self.writable()?;
        if self.id_of(name).is_ok() {
            return Err(PoolError::BranchExists(name.into()));
        }
        let parent = self.id_of(from)?;
        self.ensure_commit_room(1)?;
        Ok(parent)
    }

    /// The next branch id, never handed out again (the next commit makes that
    /// durable, see `has_changes`).
    fn take_branch_id(&mut self) -> BranchId {
        let id = self.next_branch_id;
        self.next_branch_id += 1;
        id
    }

    /// Create child `id` of `parent` (`check_child`) and commit it.
    fn insert_child(
        &mut self,
        id: BranchId,
        parent: BranchId,
        name: &str,
        snapshot: bool,
        owner: TokenId,
    ) -> PoolResult<BranchId> {
        let p = self.branches[&parent].clone();
        self.st.inc_node(p.root)?;
        self.quotas.root_shared(parent);
        let rec = BranchRecord {
            root: p.root,
            next_ino: p.next_ino,
            flags: if snapshot { FLAG_SNAPSHOT } else { 0 },
            created_unix: unix_now(),
            parent,
            name: name.into(),
            owner,
        };
        self.branches
            .insert(id, rec)
            .map_err(|_| PoolError::BranchExists(name.into()))?;
        self.dirty_branches.insert(id);
        self.commit()?;
        Ok(id)
    }

    /// Run `f` on branch `b`'s tree; a change (`write`) is all or nothing.
    pub(crate) fn with_fs<T>(
        &mut self,
        b: BranchId,
        write: bool,
        f: impl FnOnce(&mut FsTree) -> FsResult<T>,
    ) -> FsResult<T> {
        self.run_fs(b, write, None, f)
    }

    /// A change of at most `size` (None: no bound known), all or nothing.
    pub(crate) fn with_fs_sized<T>(
        &mut self,
        b: BranchId,
        size: Option<OpSize>,
        f: impl FnOnce(&mut FsTree) -> FsResult<T>,
    ) -> FsResult<T> {
        self.run_fs(b, true, size, f)
    }

    fn run_fs<T>(
        &mut self,
        b: BranchId,
        write: bool,
        size: Option<OpSize>,
        f: impl FnOnce(&mut FsTree) -> FsResult<T>,
    ) -> FsResult<T> {
        if write && self.poisoned {
            return Err(FsError::Posix(libc::EROFS));
        }
        if write {
            self.refuse_changes()?;
            // Callers whose change a log record describes undo this (logged_change).
            self.log.taint();
            // This change may add the branch's record to the next commit (once
            // it is there, the reserve counts it already).
            if !self.dirty_branches.contains(&b) {
                self.reserve_catalog(1)?;
            }
        }
        let Engine {
            st,
            branches,
            quotas,
            ..
        } = self;
        let rec = branches.get(&b).ok_or(FsError::Posix(libc::ESTALE))?;
        if write && rec.is_snapshot() {
            return Err(FsError::Posix(libc::EROFS));
        }
        // (`available` asks the host of a pool file: only when a quota needs it.)
        st.data_budget = if write && !quotas.is_empty() {
            quotas.budget(b, branches, st.available())
        } else {
            None
        };
        let used0 = st.space.used();
        // A loan of the slop is undone if it ends with more blocks in use.
        let journal = write && (st.slop_on_loan || self.needs_journal(b, size));
        let Engine {
            st,
            branches,
            dirty_branches,
            quotas,
            poisoned,
            ino_floor,
            ..
        } = self;
        let rec = branches.get_mut(b).ok_or(FsError::Posix(libc::ESTALE))?;
        let (root0, ino0) = (rec.root, rec.next_ino);
        let first_ino = ino0.max(*ino_floor);
        let mut next_ino = first_ino;
        if journal {
            st.begin_op();
        }
        // What `shrinking` borrowed belongs to the operation that borrowed it,
        // also when it failed before `check_op_budget`.
        st.borrowed = None;
        let budget = st.data_budget;
        let r = f(&mut FsTree {
            st,
            root: &mut rec.root,
            next_ino: &mut next_ino,
        })
        .and_then(|v| Ok(st.check_op_budget(budget, used0).map(|_| v)?));
        // Only an operation that allocated changes the record (and dirties it).
        if next_ino != first_ino {
            rec.next_ino = next_ino;
        }
        st.data_budget = None;
        if journal {
            // All or nothing: an operation makes several tree changes, and ENOSPC
            // (or EDQUOT, or an I/O error) may stop it after some of them.
            if r.is_ok() {
                st.end_op();
            } else if let Err(e) = st.undo_op() {
                log::error!(
                    "{}: undoing a failed operation failed, pool is now read-only: {e}",
                    st.dev.name().display()
                );
                *poisoned = true;
            } else {
                rec.root = root0;
                rec.next_ino = ino0;
            }
        }
        if write {
            quotas.charge(b, used0, st.space.used());
        }
        // What the operation kept (an undone one gave its numbers back).
        *ino_floor = (*ino_floor).max(rec.next_ino);
        if rec.root != root0 || rec.next_ino != ino0 {
            dirty_branches.insert(b);
        }
        r
    }

    /// Data blocks a write on branch `b` could allocate now: free space (limited by
    /// the host of a pool file) less the commit's metadata reserve and the space
    /// reserved for other branches.
    fn data_room(&mut self, b: BranchId) -> u64 {
        let avail = self.st.available();
        let room = avail.saturating_sub(self.st.metadata_reserve());
        match self.quotas.budget(b, &self.branches, avail) {
            Some(budget) if !budget.quota => room.min(budget.blocks),
            _ => room,
        }
    }

    /// Blocks freed since the last commit become allocatable only after the next
    /// one. If a write of `bytes` on `b` may not find room without them (a full
    /// pool or host, files just deleted or overwritten), commit first, as ext4
    /// forces a journal commit before it reports ENOSPC: deleting files on a full
    /// pool then makes room for the very next write. (Without it, the kernel's
    /// write-back of the next file arrives before any fsync and fails.)
    fn commit_for_room(&mut self, b: BranchId, bytes: usize) {
        if !self.frees_wait() {
            return;
        }
        let need = (bytes as u64).div_ceil(BLOCK_SIZE as u64) + 1;
        if self.data_room(b) >= need {
            return;
        }
        self.release_frees();
    }

    /// Whether blocks freed since the last commit wait to become allocatable.
    fn frees_wait(&self) -> bool {
        !self.poisoned && self.st.space.pending_free_count() > 0
    }

    /// Commit so that the blocks freed since the last one are allocatable now.
    /// False if none wait or the commit failed.
    fn release_frees(&mut self) -> bool {
        if !self.frees_wait() {
            return false;
        }
        if let Err(e) = self.commit() {
            log::warn!("commit to release freed blocks failed: {e}");
            return false;
        }
        // What this commit freed is in quarantine: wait for every read in flight
        // so that it is allocatable now (a full pool is rare; this is its path).
        self.wait_for_reads(0);
        self.wait_for_reads(1);
        self.st.space.release_quarantine();
        true
    }

    /// Wait (holding the pool lock, so no read can start) until the reads of
    /// `slot` are over.
    fn wait_for_reads(&self, slot: usize) {
        while self.reads.slots[slot].load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
    }

    fn maybe_commit(&mut self) {
        if self.st.dirty_nodes() > self.dirty_limit_nodes {
            if let Err(e) = self.commit() {
                log::error!("automatic commit failed: {e}");
            }
        }
    }

    fn has_changes(&self) -> bool {
        !self.dirty_branches.is_empty()
            || !self.deleted_branches.is_empty()
            || !self.dirty_drops.is_empty()
            || self.next_branch_id != self.written_next_branch_id
            || self.st.dirty_nodes() > 0
            || self.st.space.has_changes()
    }

    /// Dirty nodes to fresh blocks, space map pages to fresh blocks, flush, next
    /// superblock slot, flush. On an I/O error the pool is poisoned (read-only).
    pub(crate) fn commit(&mut self) -> Result<(), StoreError> {
        self.finish_flush()?;
        if !self.commit_due()? {
            return Ok(());
        }
        self.commit_write_checked()?;
        self.finish_flush()
    }

    /// Whether a commit has anything to write: changes, or a one-flush commit
    /// still to seal (see `sealed`), once. An error if the pool takes no changes.
    fn commit_due(&self) -> Result<bool, StoreError> {
        self.refuse_changes()?;
        Ok(self.has_changes() || !self.sealed)
    }

    /// Write the running transaction as a commit, all but the final flush (see
    /// `flushing`); its generation. On an I/O error the pool is poisoned.
    fn commit_write_checked(&mut self) -> Result<u64, StoreError> {
        self.refuse_changes()?;
        let seal = !self.has_changes();
        let r = self.commit_write(seal);
        if let Err(e) = &r {
            if !matches!(e, StoreError::NoSpace { .. }) {
                self.poison(e);
            }
        }
        r
    }

    fn poison(&mut self, e: &StoreError) {
        log::error!(
            "{}: commit failed, pool is now read-only: {e}",
            self.st.dev.name().display()
        );
        self.poisoned = true;
    }

    /// Flush, under the lock, a commit whose flushes are still outstanding.
    fn finish_flush(&mut self) -> Result<(), StoreError> {
        while let Some(step) = self.flush_step() {
            let r = self.st.dev.flush();
            self.flush_done(step, r)?;
        }
        Ok(())
    }

    /// The commit being flushed and which of its flushes one started now covers.
    fn flush_step(&self) -> Option<FlushStep> {
        self.flushing.map(|g| FlushStep {
            g,
            blocks_only: self.unwritten_sb.is_some(),
        })
    }

    /// A flush for `step` returned `r` (it ran after the writes `step` names, so
    /// it covers them). With the blocks of a two-flush commit covered, its
    /// superblock is written and the commit waits for one more flush; with the
    /// superblock covered, the commit is durable. Nothing to do if that step was
    /// done meanwhile.
    fn flush_done(&mut self, step: FlushStep, r: std::io::Result<()>) -> Result<(), StoreError> {
        let g = step.g;
        // A failed flush counts even if another sync's flush finished g first:
        // Linux reports a write-back error to one fdatasync caller only, so the
        // other's success does not prove the blocks landed (fsync-gate).
        if let Err(source) = r {
            if self.flushing == Some(g) {
                self.flushing = None;
                self.unwritten_sb = None;
            }
            let e = StoreError::Io {
                pool: self.st.dev.name(),
                block: Superblock::slot_for(g),
                source,
            };
            self.poison(&e);
            return Err(e);
        }
        if self.flushing != Some(g) {
            return if self.poisoned {
                Err(StoreError::Poisoned {
                    pool: self.st.dev.name(),
                })
            } else {
                Ok(())
            };
        }
        if step.blocks_only {
            return self.write_unwritten_sb();
        }
        self.flushing = None;
        self.durable = g;
        // Blocks freed by the previous commit become allocatable once the reads that
        // started before it are over (the other slot; almost always already done),
        // and those this commit freed go to quarantine, where reads started before
        // now may still be using them: new reads go to the drained slot. So a
        // commit never waits for reads that started after the previous one.
        let older = self.read_slot ^ 1;
        self.wait_for_reads(older);
        self.st.space.release_quarantine();
        self.st.space.commit_durable();
        self.read_slot = older;
        self.finish_upgrade();
        Ok(())
    }

    /// The blocks of the `flushing` commit are durable: write its superblock (if
    /// another flush did not already), which the next flush makes durable.
    fn write_unwritten_sb(&mut self) -> Result<(), StoreError> {
        let Some(sb) = self.unwritten_sb.take() else {
            return Ok(());
        };
        // Poisoned meanwhile (say a log flush failed: it may have been the one
        // told of these blocks' lost write-back, fsync-gate): the blocks are not
        // proven durable, so no superblock may name them.
        if self.poisoned {
            self.flushing = None;
            return Err(StoreError::Poisoned {
                pool: self.st.dev.name(),
            });
        }
        let slot = Superblock::slot_for(sb.generation);
        if let Err(source) = self.st.dev.write_at(slot, &sb.encode()) {
            self.flushing = None;
            let e = StoreError::Io {
                pool: self.st.dev.name(),
                block: slot,
                source,
            };
            self.poison(&e);
            return Err(e);
        }
        Ok(())
    }

    /// After the first commit of this build has landed, write the other slot in
    /// this format too (see `older_slot`), so that no older build opens the pool
    /// and rolls it back. Once per open of an older-format pool; failing here
    /// leaves the commit just made durable, so it is retried at the next one.
    fn finish_upgrade(&mut self) {
        if !std::mem::take(&mut self.older_slot) {
            return;
        }
        let r = self
            .commit_write_checked()
            .and_then(|_| self.finish_flush());
        if let Err(e) = r {
            log::warn!(
                "{}: writing the second superblock slot in format version {FORMAT_VERSION}: {e}",
                self.st.dev.name().display()
            );
            self.older_slot = true;
        }
    }

    /// `seal`: write the superblock without a manifest, making the previous one-flush
    /// commit final (open no longer verifies its blocks, so damage found later is
    /// reported as damage instead of silently rolling that commit back).
    ///
    /// A commit that fails with ENOSPC (not poisoned) leaves the transaction whole
    /// for the next attempt: the changed and deleted catalog records are forgotten
    /// only once the superblock naming them is made (written, or for a two-flush
    /// commit set aside until its blocks are flushed: no ENOSPC after that).
    fn commit_write(&mut self, seal: bool) -> Result<u64, StoreError> {
        debug_assert!(self.flushing.is_none(), "a commit is still being flushed");
        // Until this commit is written, fsync must not log (a failed commit leaves
        // changes no record describes).
        self.log.taint();
        self.ensure_log_region()?;
        self.st.committing = true;
        let r = self.write_commit(seal);
        self.st.committing = false;
        r
    }

    fn write_commit(&mut self, seal: bool) -> Result<u64, StoreError> {
        let generation = self.st.generation();
        for id in self.deleted_branches.clone() {
            self.catalog_root =
                tree::remove(&mut self.st, self.catalog_root, &BranchRecord::key(id))?.0;
        }
        for id in self.dirty_branches.clone() {
            if let Some(r) = self.branches.get(&id) {
                let v = r.encode();
                self.catalog_root =
                    tree::insert(&mut self.st, self.catalog_root, BranchRecord::key(id), v)?;
            }
        }
        for id in self.dirty_drops.clone() {
            let key = DropRecord::key(id);
            self.catalog_root = match self.drops.get(&id) {
                Some(r) => tree::insert(&mut self.st, self.catalog_root, key, r.encode())?,
                None => tree::remove(&mut self.st, self.catalog_root, &key)?.0,
            };
        }
        self.st.write_dirty_nodes()?;
        let dev = self.st.dev.clone();
        let (space_root, space_pages) = self.st.space.write_dirty(&*dev, generation)?;
        let io = |e: std::io::Error, block| StoreError::Io {
            pool: dev.name(),
            block,
            source: e,
        };
        // A small commit lists every block it wrote in the superblock and needs one
        // flush: open verifies the list and falls back to the previous slot if any
        // block did not land. A large one flushes its blocks before the superblock.
        let manifest = if seal {
            None
        } else {
            self.st.manifest(&space_pages)?
        };
        self.sealed = manifest.is_none();
        let two_flush = manifest.is_none();
        let sb = Superblock {
            generation,
            pool_id: self.st.pool_id(),
            capacity_blocks: self.st.space.capacity(),
            catalog_root: self.catalog_root,
            space_root,
            space_depth: self.st.space.depth(),
            next_branch_id: self.next_branch_id,
            created_unix: self.created_unix,
            used_blocks: self.st.space.used(),
            manifest: manifest.unwrap_or_default(),
            log: self.log.region,
        };
        self.written_next_branch_id = sb.next_branch_id;
        if two_flush {
            // Two flushes: the superblock waits for the first (`flush_done`),
            // which the caller runs outside the pool lock when it can.
            self.unwritten_sb = Some(sb);
        } else {
            let slot = Superblock::slot_for(generation);
            dev.write_at(slot, &sb.encode()).map_err(|e| io(e, slot))?;
        }
        self.deleted_branches.clear();
        self.dirty_branches.clear();
        self.dirty_drops.clear();
        // The next transaction starts now; this one is durable after its flushes.
        self.st.commit_written();
        self.log.committed();
        self.flushing = Some(generation);
        self.running_gen
            .store(self.st.generation(), Ordering::Release);
        Ok(generation)
    }
}
