//! Branch quotas and reservations.
//!
//! A branch with a quota may hold at most `max_bytes` that it alone references,
//! data and tree nodes alike (inline files, names and xattrs take only nodes); an
//! operation that would pass it fails with EDQUOT and is undone (deleting still
//! works: see `NodeStore::removing`). A branch with a reservation keeps
//! `reserve_bytes` of free space for itself: other branches' operations fail with
//! ENOSPC rather than take it, so an agent filling its clone cannot make
//! production run out of space. Data blocks are held to the budget as they are
//! allocated (`alloc_data`), everything an operation adds when it ends
//! (`NodeStore::check_op_budget`). Free space is `NodeStore::available`: for a pool
//! file, no more than its host filesystem can still store.
//!
//! What a branch "alone references" is computed exactly when its quota is set (the
//! blocks deleting it would free) and then follows the pool's block count across
//! each of its writes. A branch or snapshot made of it (or a reset of another
//! branch to it) shares all of it: the figure drops to 0 (`Quotas::root_shared`).
//! Space that becomes exclusive to it because another branch
//! or snapshot was deleted (or reset: its old tree goes) is counted by
//! `quota_recount_all` (the control plane calls it after every delete,
//! `reset_to` after the reset, and it waits for the dropped tree's drop),
//! which only raises the figure.
//! Only an operation that removes (unlink, rmdir, removexattr, freeing an inode,
//! a truncate or punch that unmaps blocks) may pass a limit, by the nodes it
//! copies before it frees anything; a truncate or punch also by the partial
//! blocks it rewrites, if it frees more than it takes (`NodeStore::shrinking`).
//! The limits live in memory; the control plane stores them (`POOL.quotas`) and
//! sets them again when the daemon starts.

use std::collections::{BTreeMap, HashMap};

use super::catalog::BranchRecord;
use super::usage::exclusive_blocks;
use super::{BranchId, Pool, PoolResult};
use crate::btree::nodestore::DataBudget;
use crate::store::{StoreError, BLOCK_SIZE};

const BS: u64 = BLOCK_SIZE as u64;

/// Blocks kept free beyond the reservations of other branches, for the nodes
/// that deletes copy (they are not held to the budget) and the commit's catalog.
const METADATA_MARGIN: u64 = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    pub max_bytes: Option<u64>,
    pub reserve_bytes: u64,
}

impl QuotaLimits {
    pub fn is_none(&self) -> bool {
        self.max_bytes.is_none() && self.reserve_bytes == 0
    }
}

/// A branch's limits and what it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaStatus {
    pub id: BranchId,
    pub name: String,
    pub limits: QuotaLimits,
    /// Bytes it alone references, as counted for the quota.
    pub used_bytes: u64,
}

struct Entry {
    limits: QuotaLimits,
    /// Blocks it alone references (see the module comment).
    charged: u64,
}

#[derive(Default)]
pub(crate) struct Quotas {
    entries: HashMap<BranchId, Entry>,
}

impl Quotas {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The budget of one write operation on branch `b` (blocks it may add).
    pub(crate) fn budget(
        &self,
        b: BranchId,
        branches: &BTreeMap<BranchId, BranchRecord>,
        available: u64,
    ) -> Option<DataBudget> {
        if self.entries.is_empty() {
            return None;
        }
        let reserved_others = self.reserved_for_others(b, branches);
        let mut out = (reserved_others > 0).then(|| DataBudget {
            blocks: available.saturating_sub(reserved_others + METADATA_MARGIN),
            quota: false,
        });
        if let Some(e) = self.entries.get(&b) {
            if let Some(max) = e.limits.max_bytes {
                let left = (max / BS).saturating_sub(e.charged);
                if out.is_none_or(|o| left <= o.blocks) {
                    out = Some(DataBudget {
                        blocks: left,
                        quota: true,
                    });
                }
            }
        }
        out
    }

    /// Branch `b`'s quota and what it alone references, in blocks, if it has a
    /// quota.
    pub(crate) fn limit_blocks(&self, b: BranchId) -> Option<(u64, u64)> {
        let e = self.entries.get(&b)?;
        Some((e.limits.max_bytes? / BS, e.charged))
    }

    /// Branch `b`'s root gained a reference (a branch or snapshot was made of it,
    /// or another branch was reset to it): every block it referenced is shared
    /// now, so it alone references nothing (what a recount finds, at no cost).
    /// Without this the figure kept what it held before, a reservation counted
    /// as used although every overwrite needs new blocks, and other branches
    /// could take the room it was meant to keep.
    pub(crate) fn root_shared(&mut self, b: BranchId) {
        if let Some(e) = self.entries.get_mut(&b) {
            e.charged = 0;
        }
    }

    /// Free blocks the reservations of branches other than `b` keep.
    fn reserved_for_others(&self, b: BranchId, branches: &BTreeMap<BranchId, BranchRecord>) -> u64 {
        self.entries
            .iter()
            .filter(|(id, _)| **id != b && branches.contains_key(id))
            .map(|(_, e)| (e.limits.reserve_bytes / BS).saturating_sub(e.charged))
            .fold(0, u64::saturating_add)
    }

    /// Account one write operation on `b`: the pool's used block count went from
    /// `before` to `after`.
    pub(crate) fn charge(&mut self, b: BranchId, before: u64, after: u64) {
        if let Some(e) = self.entries.get_mut(&b) {
            e.charged = (e.charged + after).saturating_sub(before);
        }
    }
}

impl Pool {
    /// Set (or, with empty limits, clear) the quota and reservation of a branch.
    /// Refused with ENOSPC if the reservation does not fit in the free space left
    /// by the other reservations.
    pub fn quota_set(&self, name: &str, limits: QuotaLimits) -> PoolResult<QuotaStatus> {
        let mut e = self.e.lock();
        let id = e.id_of(name)?;
        // Limits only matter to writes, which a read-only pool refuses.
        e.writable()?;
        if limits.is_none() {
            e.quotas.entries.remove(&id);
            return Ok(QuotaStatus {
                id,
                name: name.into(),
                limits,
                used_bytes: 0,
            });
        }
        let root = e.branches[&id].root;
        let charged = exclusive_blocks(&mut e, root)?;
        let want = (limits.reserve_bytes / BS).saturating_sub(charged);
        if want > 0 {
            // Free space as a write would see it: for a pool file, no more than
            // its host filesystem can still store.
            // What the other reservations leave of it (not the branch's write
            // budget: when its own old quota was the tighter limit, that budget
            // said nothing of the others, and reservations summed past the free
            // space).
            let avail = e.st.available();
            let room = avail.saturating_sub(e.quotas.reserved_for_others(id, &e.branches));
            if want > room.saturating_sub(METADATA_MARGIN) {
                return Err(StoreError::NoSpace {
                    pool: e.st.dev.name(),
                }
                .into());
            }
        }
        e.quotas.entries.insert(id, Entry { limits, charged });
        Ok(QuotaStatus {
            id,
            name: name.into(),
            limits,
            used_bytes: charged * BS,
        })
    }

    /// Every branch with a quota or reservation.
    pub fn quota_list(&self) -> Vec<QuotaStatus> {
        let e = self.e.lock();
        let mut out: Vec<QuotaStatus> = e
            .quotas
            .entries
            .iter()
            .filter_map(|(id, q)| {
                e.branches.get(id).map(|r| QuotaStatus {
                    id: *id,
                    name: r.name.clone(),
                    limits: q.limits,
                    used_bytes: q.charged * BS,
                })
            })
            .collect();
        out.sort_by_key(|q| q.id);
        out
    }

    /// Count again what every branch with limits alone references: after a
    /// branch or snapshot was deleted, blocks it shared may now belong to one of
    /// them alone. A delete only ever adds to what the others alone reference, so
    /// a figure is only raised here, never lowered: the recount sees blocks shared
    /// between two files of the branch (`clone_range`) as not its alone, while
    /// the figure followed their allocation. Lowering it to the recount let a
    /// branch clone its files, have any branch deleted, unlink the clones (which
    /// makes their blocks its alone again, at no charge) and write its quota once
    /// more, as often as it liked.
    ///
    /// A deleted tree's blocks stop being shared only as its drop reaches them
    /// (drops.rs): with limits set, the pending drops are finished first (in
    /// steps, other requests running between them), or the recount, which
    /// only raises, would miss them for good.
    pub fn quota_recount_all(&self) -> PoolResult<()> {
        if self.e.lock().quotas.is_empty() {
            return Ok(());
        }
        self.finish_frees();
        let ids: Vec<BranchId> = self.e.lock().quotas.entries.keys().copied().collect();
        for id in ids {
            self.recount(id, true)?;
        }
        Ok(())
    }

    /// Count again what a branch alone references (after a reset replaced its tree).
    pub(crate) fn quota_recount(&self, id: BranchId) -> PoolResult<()> {
        self.recount(id, false)
    }

    /// `raise_only`: keep the figure if the recount finds less.
    fn recount(&self, id: BranchId, raise_only: bool) -> PoolResult<()> {
        let mut e = self.e.lock();
        if !e.quotas.entries.contains_key(&id) {
            return Ok(());
        }
        let Some(root) = e.branches.get(&id).map(|r| r.root) else {
            return Ok(());
        };
        let n = exclusive_blocks(&mut e, root)?;
        if let Some(q) = e.quotas.entries.get_mut(&id) {
            q.charged = if raise_only { q.charged.max(n) } else { n };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FsError, Owner};
    use crate::pool::{FsckOptions, PoolOptions};
    use crate::store::device::MemDevice;
    use std::sync::Arc;

    #[test]
    fn quota_gives_edquot_and_reservation_protects_others() {
        let opts = PoolOptions {
            capacity_bytes: Some(64 << 20),
            ..Default::default()
        };
        let p = Pool::create_on(Arc::new(MemDevice::new()), &opts).unwrap();
        let main = p.branch_id("main").unwrap();
        let agent = p.branch_create("agent", "main").unwrap();
        p.quota_set(
            "agent",
            QuotaLimits {
                max_bytes: Some(4 << 20),
                reserve_bytes: 0,
            },
        )
        .unwrap();
        let f = p
            .mknod(
                agent,
                1,
                b"fill",
                libc::S_IFREG | 0o644,
                0,
                Owner::default(),
            )
            .unwrap();
        let chunk = vec![7u8; 256 << 10];
        let mut written = 0u64;
        let err = loop {
            match p.write_file(agent, f.ino, written, &chunk) {
                Ok(n) => written += n as u64,
                Err(e) => break e,
            }
            assert!(written < 16 << 20, "quota never enforced");
        };
        assert_eq!(err.errno(), libc::EDQUOT);
        assert!((3 << 20..=5 << 20).contains(&written), "{written}");
        // Overwriting owned blocks and deleting still work.
        p.write_file(agent, f.ino, 0, &chunk).unwrap();
        p.unlink(agent, 1, b"fill").unwrap();
        let g = p
            .mknod(
                agent,
                1,
                b"again",
                libc::S_IFREG | 0o644,
                0,
                Owner::default(),
            )
            .unwrap();
        p.write_file(agent, g.ino, 0, &chunk).unwrap();

        // A reservation for main: another branch fills the rest, main still writes.
        p.quota_set(
            "agent",
            QuotaLimits {
                max_bytes: None,
                reserve_bytes: 0,
            },
        )
        .unwrap();
        p.quota_set(
            "main",
            QuotaLimits {
                max_bytes: None,
                reserve_bytes: 8 << 20,
            },
        )
        .unwrap();
        let mut off = 0u64;
        let err = loop {
            match p.write_file(agent, g.ino, off, &chunk) {
                Ok(n) => off += n as u64,
                Err(e) => break e,
            }
            assert!(off < 128 << 20);
        };
        assert_eq!(err.errno(), libc::ENOSPC);
        let m = p
            .mknod(main, 1, b"prod", libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap();
        for i in 0..24u64 {
            p.write_file(main, m.ino, i * (256 << 10), &chunk)
                .unwrap_or_else(|e: FsError| panic!("main write {i}: {e}"));
        }
        let st = p.quota_list();
        assert_eq!(st.len(), 1);
        assert!(st[0].used_bytes >= 6 << 20);
        p.commit().unwrap();
        let r = p.fsck(&FsckOptions::default()).unwrap();
        assert!(r.is_clean(), "{r}");
    }

    #[test]
    fn deleting_a_sharer_is_recounted() {
        let opts = PoolOptions {
            capacity_bytes: Some(64 << 20),
            ..Default::default()
        };
        let p = Pool::create_on(Arc::new(MemDevice::new()), &opts).unwrap();
        let a = p.branch_create("a", "main").unwrap();
        let f = p
            .mknod(a, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap();
        p.write_file(a, f.ino, 0, &vec![1u8; 2 << 20]).unwrap();
        p.snapshot_create("s", "a").unwrap();
        let limits = QuotaLimits {
            max_bytes: Some(16 << 20),
            reserve_bytes: 0,
        };
        let st = p.quota_set("a", limits).unwrap();
        assert!(
            st.used_bytes < 64 << 10,
            "all shared with s: {}",
            st.used_bytes
        );
        p.branch_delete("s").unwrap();
        p.quota_recount_all().unwrap();
        let used = p.quota_list()[0].used_bytes;
        assert!(used >= 2 << 20, "a alone holds the file now: {used}");
    }
}
