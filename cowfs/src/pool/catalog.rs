//! The catalog: one item per branch or snapshot in the catalog tree, keyed
//! (branch id, KIND_BRANCH, 0). The item's root pointer holds one reference on the
//! branch's tree root. The record also names the control-plane token that created
//! the branch (its owner), so that ownership commits with the branch itself.
//!
//! A DROP item (id, KIND_DROP, 0) is a tree being freed in steps (a deleted
//! branch's, or the old tree of a reset branch): it holds the reference the
//! branch record held on its root until the freeing thread has released
//! everything below it (pool/drops.rs, format-spec/on-disk.md §6.1).

use crate::btree::Key;
use crate::store::le::*;
use crate::store::BlockAddr;

pub const KIND_BRANCH: u8 = 100;
pub const KIND_DROP: u8 = 101;
pub const FLAG_SNAPSHOT: u32 = 1;
/// Protected: only an admin token may delete, reset, rename or mount it read-write.
pub const FLAG_PROTECTED: u32 = 2;

/// A control-plane token's id (random, never reused; see control/tokens.rs).
pub type TokenId = u64;
/// The owner of a branch no token created (the library, `main`, older pools).
pub const NO_OWNER: TokenId = 0;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchRecord {
    pub root: BlockAddr,
    pub next_ino: u64,
    pub flags: u32,
    pub created_unix: u64,
    /// Id of the branch or snapshot it was taken from (0 for none).
    pub parent: u64,
    pub name: String,
    /// The token that created it, or `NO_OWNER`.
    pub owner: TokenId,
}

const FIXED: usize = 38;
/// The owner follows the name (format version 3); older records end at the name.
const OWNER_LEN: usize = 8;

impl BranchRecord {
    pub fn key(id: u64) -> Key {
        Key::new(id, KIND_BRANCH, 0)
    }

    pub fn is_snapshot(&self) -> bool {
        self.flags & FLAG_SNAPSHOT != 0
    }

    pub fn is_protected(&self) -> bool {
        self.flags & FLAG_PROTECTED != 0
    }

    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let mut b = vec![0u8; FIXED + name.len() + OWNER_LEN];
        put_u64(&mut b, 0, self.root);
        put_u64(&mut b, 8, self.next_ino);
        put_u32(&mut b, 16, self.flags);
        put_u64(&mut b, 20, self.created_unix);
        put_u64(&mut b, 28, self.parent);
        put_u16(&mut b, 36, name.len() as u16);
        b[FIXED..FIXED + name.len()].copy_from_slice(name);
        put_u64(&mut b, FIXED + name.len(), self.owner);
        b
    }

    pub fn decode(b: &[u8]) -> Option<BranchRecord> {
        if b.len() < FIXED {
            return None;
        }
        let n = u16_at(b, 36) as usize;
        let owner = if b.len() == FIXED + n {
            NO_OWNER
        } else if b.len() == FIXED + n + OWNER_LEN {
            u64_at(b, FIXED + n)
        } else {
            return None;
        };
        Some(BranchRecord {
            root: u64_at(b, 0),
            next_ino: u64_at(b, 8),
            flags: u32_at(b, 16),
            created_unix: u64_at(b, 20),
            parent: u64_at(b, 28),
            name: String::from_utf8(b[FIXED..FIXED + n].to_vec()).ok()?,
            owner,
        })
    }
}

/// A tree being freed in steps: its root, and the first key of it not yet
/// processed (every node and extent wholly below `progress` is released).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropRecord {
    pub root: BlockAddr,
    pub progress: Key,
}

const DROP_LEN: usize = 8 + crate::btree::key::KEY_SIZE;

impl DropRecord {
    pub fn key(id: u64) -> Key {
        Key::new(id, KIND_DROP, 0)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; DROP_LEN];
        put_u64(&mut b, 0, self.root);
        self.progress.encode(&mut b, 8);
        b
    }

    /// None unless `b` is exactly one record.
    pub fn decode(b: &[u8]) -> Option<DropRecord> {
        if b.len() != DROP_LEN {
            return None;
        }
        Some(DropRecord {
            root: u64_at(b, 0),
            progress: Key::decode(b, 8),
        })
    }
}

/// What the trees' reference counting must know about any item: data extents of
/// filesystem trees, and the roots branch records and drop records hold.
pub fn item_refs(key: &Key, val: &[u8]) -> Option<(BlockAddr, u64)> {
    if key.kind == KIND_BRANCH {
        return BranchRecord::decode(val).map(|r| (r.root, 1));
    }
    if key.kind == KIND_DROP {
        return DropRecord::decode(val).map(|r| (r.root, 1));
    }
    crate::fs::items::item_refs(key, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let r = BranchRecord {
            root: 9,
            next_ino: 100,
            flags: FLAG_SNAPSHOT,
            created_unix: 5,
            parent: 1,
            name: "prod-2026".into(),
            owner: 0x1234_5678_9abc_def0,
        };
        let b = r.encode();
        assert_eq!(BranchRecord::decode(&b), Some(r.clone()));
        assert_eq!(BranchRecord::decode(&[1, 2, 3]), None);
        // A version-2 record (no owner) still decodes, as owned by no token.
        let old = &b[..b.len() - OWNER_LEN];
        let unowned = BranchRecord {
            owner: NO_OWNER,
            ..r
        };
        assert_eq!(BranchRecord::decode(old), Some(unowned));
        // Any other length is not a record.
        assert_eq!(BranchRecord::decode(&b[..b.len() - 1]), None);
        assert_eq!(BranchRecord::decode(&[b.as_slice(), &[0]].concat()), None);
    }

    #[test]
    fn drop_record_round_trip() {
        let r = DropRecord {
            root: 77,
            progress: Key::new(5, 3, 1 << 40),
        };
        let b = r.encode();
        assert_eq!(DropRecord::decode(&b), Some(r));
        assert_eq!(item_refs(&DropRecord::key(9), &b), Some((77, 1)));
        // Any other length is not a record.
        assert_eq!(DropRecord::decode(&b[..b.len() - 1]), None);
        assert_eq!(DropRecord::decode(&[b.as_slice(), &[0]].concat()), None);
        assert_eq!(item_refs(&DropRecord::key(9), &[1, 2]), None);
    }
}
