//! Catalog operations of the control plane: protection flags, reset of a branch to a
//! snapshot, and atomic groups of new branches.

use std::collections::BTreeSet;

use super::catalog::{BranchRecord, TokenId, FLAG_PROTECTED, FLAG_SNAPSHOT};
use super::{check_branch_name, unix_now, BranchId, Pool, PoolError, PoolResult};

/// One new branch (or snapshot) of an atomic group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    pub name: String,
    pub from: String,
    pub snapshot: bool,
}

impl Pool {
    /// Is the branch or snapshot protected?
    pub fn is_protected(&self, name: &str) -> PoolResult<bool> {
        let e = self.e.lock();
        let id = e.id_of(name)?;
        Ok(e.branches[&id].is_protected())
    }

    /// Set or clear the protected flag, committed.
    pub fn set_protected(&self, name: &str, protected: bool) -> PoolResult<()> {
        let mut e = self.e.lock();
        e.writable()?;
        let id = e.id_of(name)?;
        if let Some(r) = e.branches.get_mut(id) {
            if r.is_protected() == protected {
                return Ok(());
            }
        }
        e.ensure_commit_room(1)?;
        if let Some(r) = e.branches.get_mut(id) {
            r.flags ^= FLAG_PROTECTED;
        }
        e.dirty_branches.insert(id);
        e.commit()?;
        Ok(())
    }

    /// Make branch `name` identical to `to` (a snapshot or branch): its root
    /// reference is dropped and it points at `to`'s root with one more reference,
    /// committed. Every other branch and snapshot is untouched. Refused with `Busy`
    /// while files are open on the branch (the caller unmounts it first). With
    /// quotas set, it waits for the old tree's drop and recounts every branch
    /// that has limits (`quota_recount_all`).
    pub fn reset_to(&self, name: &str, to: &str) -> PoolResult<()> {
        let mut e = self.e.lock();
        e.writable()?;
        let id = e.id_of(name)?;
        let src = e.id_of(to)?;
        let target = e.branches[&id].clone();
        if target.is_snapshot() {
            return Err(PoolError::Fs(crate::fs::FsError::Posix(libc::EROFS)));
        }
        if e.open.keys().any(|(b, _)| *b == id) {
            return Err(PoolError::Busy(name.into()));
        }
        if id == src {
            return Ok(());
        }
        let from = e.branches[&src].clone();
        // The record, and a drop record if the old tree is freed in steps.
        e.ensure_commit_room(2)?;
        // One operation: a drop that fails takes the new reference back too.
        e.journaled(|e| {
            e.st.inc_node(from.root)?;
            e.drop_tree(target.root)
        })?;
        e.quotas.root_shared(src);
        if let Some(r) = e.branches.get_mut(id) {
            r.root = from.root;
            // Never hand out an inode number again that the branch used before.
            r.next_ino = target.next_ino.max(from.next_ino);
        }
        e.dirty_branches.insert(id);
        e.commit()?;
        drop(e);
        self.quota_recount(id)?;
        // The old tree is gone as a deleted branch's is: what another branch
        // with a quota shared with it becomes that branch's alone, and only a
        // recount sees it (the control plane recounts after a delete only).
        // The reset is committed: a recount that fails does not undo it.
        if let Err(err) = self.quota_recount_all() {
            log::warn!("recounting quotas after resetting '{name}': {err}");
        }
        Ok(())
    }

    /// Create several branches or snapshots, each from its own parent, in one
    /// commit: all exist afterwards or none does. Parents must exist before the
    /// call (a member cannot be taken from another member). Token `owner`
    /// (`NO_OWNER` for none) is recorded as their creator in the same commit.
    pub fn group_create(
        &self,
        members: &[GroupMember],
        owner: TokenId,
    ) -> PoolResult<Vec<BranchId>> {
        let mut e = self.e.lock();
        e.writable()?;
        let mut names = BTreeSet::new();
        let mut parents = Vec::with_capacity(members.len());
        for m in members {
            check_branch_name(&m.name)?;
            if e.id_of(&m.name).is_ok() || !names.insert(m.name.as_str()) {
                return Err(PoolError::BranchExists(m.name.clone()));
            }
            parents.push(e.id_of(&m.from)?);
        }
        e.ensure_commit_room(members.len() as u64)?;
        let mut ids = Vec::with_capacity(members.len());
        for (m, parent) in members.iter().zip(parents) {
            let p = e.branches[&parent].clone();
            e.st.inc_node(p.root)?;
            e.quotas.root_shared(parent);
            let id = e.next_branch_id;
            e.next_branch_id += 1;
            let rec = BranchRecord {
                root: p.root,
                next_ino: p.next_ino,
                flags: if m.snapshot { FLAG_SNAPSHOT } else { 0 },
                created_unix: unix_now(),
                parent,
                name: m.name.clone(),
                owner,
            };
            e.branches
                .insert(id, rec)
                .map_err(|_| PoolError::BranchExists(m.name.clone()))?;
            e.dirty_branches.insert(id);
            ids.push(id);
        }
        e.commit()?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Owner;
    use crate::pool::{FsckOptions, PoolOptions, NO_OWNER};
    use crate::store::device::MemDevice;
    use std::sync::Arc;

    fn opts() -> PoolOptions {
        PoolOptions {
            capacity_bytes: Some(64 << 20),
            ..Default::default()
        }
    }

    fn pool() -> Pool {
        Pool::create_on(Arc::new(MemDevice::new()), &opts()).unwrap()
    }

    /// `record` gets the id the branch will have; if it fails nothing is created
    /// and no later branch gets that id, so a record never names another branch.
    #[test]
    fn branch_create_recorded_ids_are_never_reused() {
        let p = pool();
        let mut seen = None;
        let id = p
            .branch_create_recorded("c", "main", |id| {
                seen = Some(id);
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, Some(id));
        assert_eq!(p.info("c").unwrap().owner, NO_OWNER);
        let refused = p.branch_create_recorded("d", "main", |_| {
            Err(PoolError::Fs(crate::fs::FsError::Posix(libc::EIO)))
        });
        assert!(refused.is_err());
        assert!(p.info("d").is_err(), "nothing created");
        p.branch_delete("c").unwrap();
        let again = p.branch_create("c", "main").unwrap();
        assert!(
            again > id + 1,
            "ids {id} and the refused one are not reused"
        );
    }

    #[test]
    fn reset_group_protect() {
        let p = pool();
        let main = p.branch_id("main").unwrap();
        let f = p
            .mknod(main, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
            .unwrap();
        p.write_file(main, f.ino, 0, b"one").unwrap();
        p.snapshot_create("s1", "main").unwrap();
        p.write_file(main, f.ino, 0, b"two").unwrap();
        p.reset_to("main", "s1").unwrap();
        assert_eq!(p.read_file(main, f.ino, 0, 10).unwrap(), b"one");
        assert!(matches!(
            p.reset_to("s1", "main"),
            Err(PoolError::Fs(crate::fs::FsError::Posix(libc::EROFS)))
        ));
        let ids = p
            .group_create(
                &[
                    GroupMember {
                        name: "a".into(),
                        from: "main".into(),
                        snapshot: false,
                    },
                    GroupMember {
                        name: "b".into(),
                        from: "s1".into(),
                        snapshot: true,
                    },
                ],
                77,
            )
            .unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(p.owned_by(77), ids, "the group's token owns every member");
        let gen = p.generation();
        let bad = p.group_create(
            &[
                GroupMember {
                    name: "c".into(),
                    from: "main".into(),
                    snapshot: false,
                },
                GroupMember {
                    name: "c".into(),
                    from: "main".into(),
                    snapshot: false,
                },
            ],
            NO_OWNER,
        );
        assert!(matches!(bad, Err(PoolError::BranchExists(_))));
        assert!(p.branch_id("c").is_err());
        assert_eq!(p.generation(), gen, "a refused group commits nothing");
        assert!(!p.is_protected("main").unwrap());
        p.set_protected("main", true).unwrap();
        assert!(p.is_protected("main").unwrap());
        p.set_protected("main", false).unwrap();
        assert!(!p.is_protected("main").unwrap());
        let r = p.fsck(&FsckOptions::default()).unwrap();
        assert!(r.is_clean(), "{r}");
    }

    #[test]
    fn owners_survive_reopen_rename_and_reset() {
        let mem = MemDevice::new();
        let p = Pool::create_on(Arc::new(mem.clone()), &opts()).unwrap();
        let a = p.branch_create_owned("a", "main", 5).unwrap();
        let s = p.snapshot_create_owned("s", "a", 5).unwrap();
        let c = p.branch_create("c", "main").unwrap();
        p.branch_rename("a", "b").unwrap();
        p.reset_to("b", "s").unwrap();
        assert_eq!(p.owned_by(5), [a, s]);
        assert!(p.owned_by(NO_OWNER).is_empty(), "no owner is nobody's");
        drop(p);
        let p = Pool::open_on(Arc::new(mem.clone()), &opts()).unwrap();
        assert_eq!(p.owned_by(5), [a, s]);
        assert_eq!(p.info("b").unwrap().owner, 5);
        assert_eq!(p.info("c").unwrap().owner, NO_OWNER);
        // Setting owners commits once; ids that are gone are skipped; setting the
        // same owners again commits nothing.
        let gen = p.generation();
        p.set_owners(&[(c, 6), (a, 6), (999, 6)]).unwrap();
        assert_eq!(p.generation(), gen + 1);
        p.set_owners(&[(c, 6), (a, 6)]).unwrap();
        assert_eq!(p.generation(), gen + 1);
        assert_eq!((p.owned_by(5), p.owned_by(6)), (vec![s], vec![a, c]));
        let r = p.fsck(&FsckOptions::default()).unwrap();
        assert!(r.is_clean(), "{r}");
    }
}
