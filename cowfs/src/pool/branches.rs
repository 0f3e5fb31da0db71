//! The catalog in memory: branch records by id, with an index by name, so that
//! finding a branch by name (every control request, every creation) does not scan
//! all of them; a pool may hold thousands.
//!
//! Reading goes through `Deref` to the map by id. Changing goes through the
//! methods here, which keep the index true; a record's name changes only by
//! `rename`.
//!
//! Lineage stays connected: removing a record gives its children its parent
//! (`remove`), so that walking `parent` from any branch passes every living
//! ancestor, and `descendants` finds every branch taken, directly or through
//! others, from a branch. Sanitize requirements rely on that (control/
//! sanitizing.rs): a chain X -> a -> b whose middle is deleted must still lead
//! from X to b.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;

use super::catalog::BranchRecord;
use super::BranchId;

#[derive(Default)]
pub(crate) struct Branches {
    by_id: BTreeMap<BranchId, BranchRecord>,
    by_name: HashMap<String, BranchId>,
}

impl Branches {
    /// Add a record. A name another record has is refused (`Err` gives the id
    /// holding it): the caller checked it, or the catalog it loads is corrupt.
    pub fn insert(&mut self, id: BranchId, rec: BranchRecord) -> Result<(), BranchId> {
        if let Some(&holder) = self.by_name.get(&rec.name) {
            if holder != id {
                return Err(holder);
            }
        }
        if let Some(old) = self.by_id.get(&id) {
            self.by_name.remove(&old.name);
        }
        self.by_name.insert(rec.name.clone(), id);
        self.by_id.insert(id, rec);
        Ok(())
    }

    /// Remove a record; its children get its parent. Returns the record and the
    /// ids of the children whose records changed (to be written back in the
    /// same commit as the removal).
    pub fn remove(&mut self, id: BranchId) -> Option<(BranchRecord, Vec<BranchId>)> {
        let rec = self.by_id.remove(&id)?;
        self.by_name.remove(&rec.name);
        let children = self.children(id);
        for c in &children {
            if let Some(r) = self.by_id.get_mut(c) {
                r.parent = rec.parent;
            }
        }
        Some((rec, children))
    }

    /// The ids whose parent is `id`.
    pub fn children(&self, id: BranchId) -> Vec<BranchId> {
        self.by_id
            .iter()
            .filter(|(_, r)| r.parent == id)
            .map(|(c, _)| *c)
            .collect()
    }

    /// The parent of `id`, its parent, and so on, nearest first, as far as
    /// records exist (a loop in a corrupt catalog ends the walk).
    pub fn ancestors(&self, id: BranchId) -> Vec<BranchId> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::from([id]);
        let mut at = id;
        while let Some(r) = self.by_id.get(&at) {
            if !self.by_id.contains_key(&r.parent) || !seen.insert(r.parent) {
                break;
            }
            out.push(r.parent);
            at = r.parent;
        }
        out
    }

    /// Every branch and snapshot taken from `id`, directly or through others
    /// (not `id` itself), parents before their children.
    pub fn descendants(&self, id: BranchId) -> Vec<BranchId> {
        let mut kids: HashMap<BranchId, Vec<BranchId>> = HashMap::new();
        for (c, r) in &self.by_id {
            // A record naming itself (a corrupt catalog) is no lineage.
            if r.parent != *c {
                kids.entry(r.parent).or_default().push(*c);
            }
        }
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::from([id]);
        let mut next = vec![id];
        while let Some(p) = next.pop() {
            for &c in kids.get(&p).into_iter().flatten() {
                if seen.insert(c) {
                    out.push(c);
                    next.push(c);
                }
            }
        }
        out
    }

    /// Give `id` the name `new` (not held by another record: checked by the caller).
    pub fn rename(&mut self, id: BranchId, new: &str) {
        if let Some(r) = self.by_id.get_mut(&id) {
            self.by_name.remove(&r.name);
            r.name = new.into();
            self.by_name.insert(r.name.clone(), id);
        }
    }

    pub fn id_of(&self, name: &str) -> Option<BranchId> {
        self.by_name.get(name).copied()
    }

    /// A record to change in place. Its name must not change here (`rename`).
    pub fn get_mut(&mut self, id: BranchId) -> Option<&mut BranchRecord> {
        self.by_id.get_mut(&id)
    }
}

impl Deref for Branches {
    type Target = BTreeMap<BranchId, BranchRecord>;

    fn deref(&self) -> &Self::Target {
        &self.by_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::catalog::NO_OWNER;

    fn rec(name: &str) -> BranchRecord {
        BranchRecord {
            root: 2,
            next_ino: 2,
            flags: 0,
            created_unix: 0,
            parent: 0,
            name: name.into(),
            owner: NO_OWNER,
        }
    }

    #[test]
    fn the_name_index_follows_every_change() {
        let mut b = Branches::default();
        b.insert(1, rec("main")).unwrap();
        b.insert(2, rec("dev")).unwrap();
        assert_eq!(b.insert(3, rec("dev")), Err(2), "a name is held once");
        assert_eq!((b.id_of("main"), b.id_of("dev")), (Some(1), Some(2)));
        b.rename(2, "dev-2");
        assert_eq!((b.id_of("dev"), b.id_of("dev-2")), (None, Some(2)));
        assert_eq!(b[&2].name, "dev-2");
        // The freed name can be taken again; the old record is gone from the index.
        b.insert(3, rec("dev")).unwrap();
        assert_eq!(b.remove(2).map(|r| r.0.name).as_deref(), Some("dev-2"));
        assert_eq!(b.id_of("dev-2"), None);
        // Replacing a record under its id drops its old name.
        b.insert(3, rec("qa")).unwrap();
        assert_eq!((b.id_of("dev"), b.id_of("qa")), (None, Some(3)));
        assert_eq!(b.len(), 2);
        assert_eq!(b.remove(9), None);
    }

    fn child(name: &str, parent: BranchId) -> BranchRecord {
        BranchRecord {
            parent,
            ..rec(name)
        }
    }

    /// main(1) -> prod(2) -> {a(3) -> b(4) -> c(5), s(6)}; other(7) from main.
    fn tree() -> Branches {
        let mut b = Branches::default();
        for (id, name, parent) in [
            (1, "main", 0),
            (2, "prod", 1),
            (3, "a", 2),
            (4, "b", 3),
            (5, "c", 4),
            (6, "s", 2),
            (7, "other", 1),
        ] {
            b.insert(id, child(name, parent)).unwrap();
        }
        b
    }

    fn sorted(mut v: Vec<BranchId>) -> Vec<BranchId> {
        v.sort();
        v
    }

    #[test]
    fn descendants_are_found_through_every_level() {
        let b = tree();
        assert_eq!(sorted(b.descendants(2)), vec![3, 4, 5, 6]);
        assert_eq!(sorted(b.descendants(4)), vec![5]);
        assert!(b.descendants(5).is_empty());
        assert_eq!(sorted(b.descendants(1)), vec![2, 3, 4, 5, 6, 7]);
    }

    /// Deleting a middle branch keeps its descendants reachable from its
    /// ancestors: its children take its parent.
    #[test]
    fn removing_a_middle_branch_gives_its_children_its_parent() {
        let mut b = tree();
        let (rec, changed) = b.remove(3).unwrap();
        assert_eq!((rec.name.as_str(), changed), ("a", vec![4]));
        assert_eq!(b[&4].parent, 2);
        assert_eq!(sorted(b.descendants(2)), vec![4, 5, 6]);
        let (_, changed) = b.remove(2).unwrap();
        assert_eq!(sorted(changed), vec![4, 6]);
        assert_eq!(sorted(b.descendants(1)), vec![4, 5, 6, 7]);
    }

    #[test]
    fn ancestors_end_at_a_missing_record_and_at_a_loop() {
        let mut b = tree();
        assert_eq!(b.ancestors(5), vec![4, 3, 2, 1]);
        assert!(b.ancestors(1).is_empty() && b.ancestors(9).is_empty());
        // a(3) -> b(4) -> a(3): a corrupt catalog, no endless walk.
        b.insert(3, child("a", 4)).unwrap();
        assert_eq!(b.ancestors(5), vec![4, 3]);
    }
}
