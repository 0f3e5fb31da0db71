//! The catalog in memory: branch records by id, with an index by name, so that
//! finding a branch by name (every control request, every creation) does not scan
//! all of them; a pool may hold thousands.
//!
//! Reading goes through `Deref` to the map by id. Changing goes through the
//! methods here, which keep the index true; a record's name changes only by
//! `rename`.

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

    pub fn remove(&mut self, id: BranchId) -> Option<BranchRecord> {
        let rec = self.by_id.remove(&id)?;
        self.by_name.remove(&rec.name);
        Some(rec)
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
        assert_eq!(b.remove(2).map(|r| r.name).as_deref(), Some("dev-2"));
        assert_eq!(b.id_of("dev-2"), None);
        // Replacing a record under its id drops its old name.
        b.insert(3, rec("qa")).unwrap();
        assert_eq!((b.id_of("dev"), b.id_of("qa")), (None, Some(3)));
        assert_eq!(b.len(), 2);
        assert_eq!(b.remove(9), None);
    }
}
