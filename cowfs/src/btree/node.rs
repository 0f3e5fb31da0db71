//! Node layout inside a 4 KiB block (after the 48-byte block header):
//! leaf: `count` item slots of (key 17 B, value offset u16, value length u16), values
//! packed from the end of the block backwards; internal: `count` entries of
//! (key 17 B, child address u64). Keys are strictly increasing.

use std::sync::Arc;

use super::key::{Key, KEY_SIZE};
use crate::store::block::{HEADER_SIZE, PAYLOAD_SIZE};
use crate::store::le::*;
use crate::store::{BlockAddr, BLOCK_SIZE};

pub const LEAF_SLOT: usize = KEY_SIZE + 4;
pub const INTERNAL_SLOT: usize = KEY_SIZE + 8;
/// Bytes of a leaf available to items.
pub const LEAF_CAPACITY: usize = PAYLOAD_SIZE;
/// Any single item fits in half a leaf, so an overflowing leaf always splits in two.
pub const MAX_VALUE_LEN: usize = 2000;
pub const MAX_CHILDREN: usize = PAYLOAD_SIZE / INTERNAL_SLOT;
/// Deepest tree accepted from disk (a 12-level tree addresses far more than 2^64 keys).
pub const MAX_LEVEL: u8 = 12;

/// An item's value. Shared, not owned: copy-on-write clones a leaf on the first
/// change after every commit, and cloning shared values costs a reference count
/// each where owned ones cost an allocation and a copy each (perf: cloning leaves
/// was 8.5% of the daemon's CPU under random writes with fsync).
pub type Value = Arc<[u8]>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Leaf(Vec<(Key, Value)>),
    /// level >= 1; entry 0's key is the lower bound of the whole node.
    Internal(u8, Vec<(Key, BlockAddr)>),
}

impl Node {
    pub fn level(&self) -> u8 {
        match self {
            Node::Leaf(_) => 0,
            Node::Internal(l, _) => *l,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Node::Leaf(v) => v.len(),
            Node::Internal(_, v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn first_key(&self) -> Option<Key> {
        match self {
            Node::Leaf(v) => v.first().map(|x| x.0),
            Node::Internal(_, v) => v.first().map(|x| x.0),
        }
    }

    /// Bytes the node's payload takes.
    pub fn used_bytes(&self) -> usize {
        match self {
            Node::Leaf(v) => v.iter().map(|(_, val)| LEAF_SLOT + val.len()).sum(),
            Node::Internal(_, v) => v.len() * INTERNAL_SLOT,
        }
    }

    pub fn overflows(&self) -> bool {
        match self {
            Node::Leaf(_) => self.used_bytes() > LEAF_CAPACITY,
            Node::Internal(_, v) => v.len() > MAX_CHILDREN,
        }
    }

    /// Serialize into a block buffer (header is sealed by the caller).
    pub fn encode(&self, buf: &mut [u8]) {
        buf.fill(0);
        match self {
            Node::Leaf(items) => {
                let mut end = BLOCK_SIZE;
                for (i, (k, v)) in items.iter().enumerate() {
                    let slot = HEADER_SIZE + i * LEAF_SLOT;
                    end -= v.len();
                    buf[end..end + v.len()].copy_from_slice(v);
                    k.encode(buf, slot);
                    put_u16(buf, slot + KEY_SIZE, end as u16);
                    put_u16(buf, slot + KEY_SIZE + 2, v.len() as u16);
                }
            }
            Node::Internal(_, kids) => {
                for (i, (k, c)) in kids.iter().enumerate() {
                    let slot = HEADER_SIZE + i * INTERNAL_SLOT;
                    k.encode(buf, slot);
                    put_u64(buf, slot + KEY_SIZE, *c);
                }
            }
        }
    }

    /// Parse a verified block. Rejects anything out of bounds or unsorted.
    pub fn decode(buf: &[u8], level: u8, count: u16) -> Result<Node, String> {
        let n = count as usize;
        if buf.len() != BLOCK_SIZE {
            return Err("short node".into());
        }
        if level > MAX_LEVEL {
            return Err(format!("node level {level} exceeds {MAX_LEVEL}"));
        }
        let mut prev: Option<Key> = None;
        let mut check_order = |k: Key| -> Result<(), String> {
            if let Some(p) = prev {
                if k <= p {
                    return Err(format!("keys out of order: {p:?} then {k:?}"));
                }
            }
            prev = Some(k);
            Ok(())
        };
        if level == 0 {
            let table_end = HEADER_SIZE + n * LEAF_SLOT;
            if table_end > BLOCK_SIZE {
                return Err(format!("leaf item count {n} too large"));
            }
            let mut items = Vec::with_capacity(n);
            for i in 0..n {
                let slot = HEADER_SIZE + i * LEAF_SLOT;
                let k = Key::decode(buf, slot);
                check_order(k)?;
                let off = u16_at(buf, slot + KEY_SIZE) as usize;
                let len = u16_at(buf, slot + KEY_SIZE + 2) as usize;
                if off < table_end || off + len > BLOCK_SIZE || len > MAX_VALUE_LEN {
                    return Err(format!(
                        "item {i} value out of bounds (offset {off}, length {len})"
                    ));
                }
                items.push((k, Value::from(&buf[off..off + len])));
            }
            let node = Node::Leaf(items);
            // Values may not overlap: a leaf whose items could not be written back
            // into one block (encode would overflow it) is corrupt.
            if node.overflows() {
                return Err(format!(
                    "leaf items take {} bytes, more than a block holds",
                    node.used_bytes()
                ));
            }
            Ok(node)
        } else {
            if n == 0 || n > MAX_CHILDREN {
                return Err(format!("internal node with {n} children"));
            }
            let mut kids = Vec::with_capacity(n);
            for i in 0..n {
                let slot = HEADER_SIZE + i * INTERNAL_SLOT;
                let k = Key::decode(buf, slot);
                check_order(k)?;
                kids.push((k, u64_at(buf, slot + KEY_SIZE)));
            }
            Ok(Node::Internal(level, kids))
        }
    }

    /// Split an overflowing node; `self` keeps the left part, the right part is returned.
    pub fn split(&mut self) -> Node {
        match self {
            Node::Leaf(items) => {
                let sizes: Vec<usize> = items.iter().map(|(_, v)| LEAF_SLOT + v.len()).collect();
                let total: usize = sizes.iter().sum();
                // Pick the most balanced cut with both halves within capacity.
                let mut best = items.len() / 2;
                let mut best_max = usize::MAX;
                let mut prefix = 0;
                for k in 1..items.len() {
                    prefix += sizes[k - 1];
                    let suffix = total - prefix;
                    let m = prefix.max(suffix);
                    if prefix <= LEAF_CAPACITY && suffix <= LEAF_CAPACITY && m < best_max {
                        best_max = m;
                        best = k;
                    }
                }
                Node::Leaf(items.split_off(best))
            }
            Node::Internal(level, kids) => {
                let half = kids.len() / 2;
                Node::Internal(*level, kids.split_off(half))
            }
        }
    }

    /// Index of the child that covers `key` (internal nodes).
    pub fn child_index(kids: &[(Key, BlockAddr)], key: &Key) -> usize {
        // Last entry whose key <= key; entry 0 covers everything below entry 1.
        match kids.binary_search_by(|(k, _)| k.cmp(key)) {
            Ok(i) => i,
            Err(0) => 0,
            Err(i) => i - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_round_trip_and_split_fits() {
        // A full-ish leaf plus one maximal item: the worst case an insert can cause.
        let mut items: Vec<(Key, Value)> = (0..7)
            .map(|i| {
                (
                    Key::new(i, 1, 0),
                    vec![i as u8; if i == 3 { MAX_VALUE_LEN } else { 300 }].into(),
                )
            })
            .collect();
        let n = Node::Leaf(items.clone());
        assert!(!n.overflows());
        items.insert(5, (Key::new(4, 2, 0), vec![1; MAX_VALUE_LEN].into()));
        let mut n = Node::Leaf(items);
        assert!(n.overflows());
        let r = n.split();
        assert!(!n.overflows() && !r.overflows());
        let mut buf = vec![0u8; BLOCK_SIZE];
        n.encode(&mut buf);
        assert_eq!(Node::decode(&buf, 0, n.len() as u16).unwrap(), n);
    }

    #[test]
    fn decode_rejects_garbage() {
        let mut buf = vec![0xffu8; BLOCK_SIZE];
        assert!(Node::decode(&buf, 0, 500).is_err());
        assert!(Node::decode(&buf, 1, 0).is_err());
        buf.fill(0);
        assert!(
            Node::decode(&buf, 0, 2).is_err(),
            "duplicate zero keys must be rejected"
        );
    }
}
