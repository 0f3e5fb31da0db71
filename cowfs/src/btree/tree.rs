//! Tree operations on a root address: point lookup, ordered range scans, upsert and
//! delete. Changing operations return the new root (the old one may have been
//! shadowed); the caller stores it wherever the root reference lives.

use super::key::Key;
use super::node::{Node, LEAF_CAPACITY, MAX_CHILDREN};
use super::nodestore::NodeStore;
use crate::store::{BlockAddr, StoreResult};

/// Look up one key.
pub fn get(st: &mut NodeStore, root: BlockAddr, key: &Key) -> StoreResult<Option<Vec<u8>>> {
    let mut addr = root;
    let mut expect = None;
    loop {
        let node = st.read(addr, expect)?;
        match &*node {
            Node::Leaf(items) => {
                return Ok(items
                    .binary_search_by(|(k, _)| k.cmp(key))
                    .ok()
                    .map(|i| items[i].1.to_vec()));
            }
            Node::Internal(level, kids) => {
                addr = kids[Node::child_index(kids, key)].1;
                expect = Some(level - 1);
            }
        }
    }
}

/// The greatest key `<= key` in the tree, if any (where a scan for the item that
/// covers `key` should start: an extent that begins before an offset).
pub fn floor(st: &mut NodeStore, root: BlockAddr, key: &Key) -> StoreResult<Option<Key>> {
    floor_rec(st, root, None, key)
}

fn floor_rec(
    st: &mut NodeStore,
    addr: BlockAddr,
    expect: Option<u8>,
    key: &Key,
) -> StoreResult<Option<Key>> {
    let node = st.read(addr, expect)?;
    match &*node {
        Node::Leaf(items) => {
            let i = items.partition_point(|(k, _)| k <= key);
            Ok(i.checked_sub(1).map(|i| items[i].0))
        }
        Node::Internal(level, kids) => {
            // The child that covers `key`, else the ones before it (a separator
            // can be below its subtree's first key after deletes).
            for i in (0..=Node::child_index(kids, key)).rev() {
                if let Some(k) = floor_rec(st, kids[i].1, Some(level - 1), key)? {
                    return Ok(Some(k));
                }
            }
            Ok(None)
        }
    }
}

/// Visit items with `from <= key <= to` in order until `f` returns false.
pub fn range(
    st: &mut NodeStore,
    root: BlockAddr,
    from: &Key,
    to: &Key,
    f: &mut dyn FnMut(&Key, &[u8]) -> bool,
) -> StoreResult<()> {
    range_rec(st, root, None, from, to, f).map(|_| ())
}

fn range_rec(
    st: &mut NodeStore,
    addr: BlockAddr,
    expect: Option<u8>,
    from: &Key,
    to: &Key,
    f: &mut dyn FnMut(&Key, &[u8]) -> bool,
) -> StoreResult<bool> {
    let node = st.read(addr, expect)?;
    match &*node {
        Node::Leaf(items) => {
            let start = items.partition_point(|(k, _)| k < from);
            for (k, v) in &items[start..] {
                if k > to {
                    return Ok(false);
                }
                if !f(k, v) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Node::Internal(level, kids) => {
            let first = Node::child_index(kids, from);
            for (i, (k, child)) in kids.iter().enumerate().skip(first) {
                if i > first && k > to {
                    return Ok(false);
                }
                if !range_rec(st, *child, Some(level - 1), from, to, f)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

/// Collect items in a key range (convenience for small ranges).
pub fn collect(
    st: &mut NodeStore,
    root: BlockAddr,
    from: &Key,
    to: &Key,
) -> StoreResult<Vec<(Key, Vec<u8>)>> {
    let mut out = Vec::new();
    range(st, root, from, to, &mut |k, v| {
        out.push((*k, v.to_vec()));
        true
    })?;
    Ok(out)
}

/// Insert or replace one item. Returns the new root.
pub fn insert(
    st: &mut NodeStore,
    root: BlockAddr,
    key: Key,
    val: Vec<u8>,
) -> StoreResult<BlockAddr> {
    // Fail before changing anything: an insert that ran out of blocks halfway
    // would leave a shadowed root the caller never learns of, or an overflowing
    // node with nowhere to put its right half. At most one copy and one split per
    // level, and a new root.
    let levels = u64::from(st.read(root, None)?.level()) + 1;
    st.ensure_node_room(2 * levels + 1)?;
    let root = st.cow(root)?;
    if let Some((sep, right)) = insert_rec(st, root, key, val)? {
        let level = st.read(root, None)?.level() + 1;
        let low = st.read(root, None)?.first_key().unwrap_or(Key::MIN);
        return st.alloc_node(Node::Internal(level, vec![(low, root), (sep, right)]));
    }
    Ok(root)
}

/// `addr` is writable. Returns a new right sibling if the node split.
fn insert_rec(
    st: &mut NodeStore,
    addr: BlockAddr,
    key: Key,
    val: Vec<u8>,
) -> StoreResult<Option<(Key, BlockAddr)>> {
    let (child_pos, child) = {
        let node = st.node_mut(addr)?;
        match node {
            Node::Leaf(items) => {
                match items.binary_search_by(|(k, _)| k.cmp(&key)) {
                    Ok(i) => items[i].1 = val.into(),
                    Err(i) => items.insert(i, (key, val.into())),
                }
                return split_if_needed(st, addr);
            }
            Node::Internal(_, kids) => {
                let i = Node::child_index(kids, &key);
                (i, kids[i].1)
            }
        }
    };
    let new_child = st.cow(child)?;
    {
        let node = st.node_mut(addr)?;
        if let Node::Internal(_, kids) = node {
            kids[child_pos].1 = new_child;
            if child_pos == 0 && key < kids[0].0 {
                kids[0].0 = key;
            }
        }
    }
    if let Some((sep, right)) = insert_rec(st, new_child, key, val)? {
        if let Node::Internal(_, kids) = st.node_mut(addr)? {
            kids.insert(child_pos + 1, (sep, right));
        }
        return split_if_needed(st, addr);
    }
    Ok(None)
}

fn split_if_needed(st: &mut NodeStore, addr: BlockAddr) -> StoreResult<Option<(Key, BlockAddr)>> {
    if !st.node_mut(addr)?.overflows() {
        return Ok(None);
    }
    // The right half's block first: the node is cut only once it has one.
    let r = st.alloc_node(Node::Leaf(Vec::new()))?;
    let right = st.node_mut(addr)?.split();
    let sep = right.first_key().unwrap_or(Key::MAX);
    *st.node_mut(r)? = right;
    Ok(Some((sep, r)))
}

/// Remove one item if present. Returns the new root and the removed value.
pub fn remove(
    st: &mut NodeStore,
    root: BlockAddr,
    key: &Key,
) -> StoreResult<(BlockAddr, Option<Vec<u8>>)> {
    // Look first so that a miss shadows nothing.
    let old = match get(st, root, key)? {
        None => return Ok((root, None)),
        Some(v) => v,
    };
    // As in `insert`: one copy per level, and a new empty leaf; merging a node
    // that the removal left under-full copies one sibling per level more. Where
    // the pool has no room for those, the removal goes ahead without merging, as
    // it did before merges existed: deletes on a full pool must still work.
    let levels = u64::from(st.read(root, None)?.level()) + 1;
    let merge = st.ensure_node_room(2 * levels + 1).is_ok();
    if !merge {
        st.ensure_node_room(levels + 1)?;
    }
    let mut root = st.cow(root)?;
    remove_rec(st, root, key, merge)?;
    // Collapse internal roots with a single child, so the tree shrinks as it empties.
    loop {
        let node = st.read(root, None)?;
        match &*node {
            Node::Internal(_, kids) if kids.len() == 1 => {
                let child = kids[0].1;
                st.inc_node(child)?;
                st.drop_ref(root)?;
                root = child;
            }
            Node::Internal(_, kids) if kids.is_empty() => {
                st.drop_ref(root)?;
                root = st.alloc_node(Node::Leaf(Vec::new()))?;
            }
            _ => break,
        }
    }
    Ok((root, Some(old)))
}

/// `addr` is writable. Returns true if the node is now empty (the parent drops it).
/// With `merge`, a child the removal left under-full is merged with a sibling.
fn remove_rec(st: &mut NodeStore, addr: BlockAddr, key: &Key, merge: bool) -> StoreResult<bool> {
    let (pos, child) = {
        let node = st.node_mut(addr)?;
        match node {
            Node::Leaf(items) => {
                if let Ok(i) = items.binary_search_by(|(k, _)| k.cmp(key)) {
                    items.remove(i);
                }
                return Ok(items.is_empty());
            }
            Node::Internal(_, kids) => {
                let i = Node::child_index(kids, key);
                (i, kids[i].1)
            }
        }
    };
    let new_child = st.cow(child)?;
    if let Node::Internal(_, kids) = st.node_mut(addr)? {
        kids[pos].1 = new_child;
    }
    if remove_rec(st, new_child, key, merge)? {
        st.drop_ref(new_child)?;
        if let Node::Internal(_, kids) = st.node_mut(addr)? {
            kids.remove(pos);
            return Ok(kids.is_empty());
        }
    } else if merge {
        merge_if_underfull(st, addr, pos)?;
    }
    Ok(false)
}

/// A node below a quarter of its capacity is merged with a neighbour when the two
/// fit in three quarters of one: without merges, a tree that lost most of its
/// items kept every node that still held one (a leaf per surviving item, at
/// worst), and lookups, the node cache and commits paid for all of them. The gap
/// between the two thresholds keeps a node from being merged and split again by
/// alternating removes and inserts at one place.
fn underfull(node: &Node) -> bool {
    match node {
        Node::Leaf(_) => node.used_bytes() < LEAF_CAPACITY / 4,
        Node::Internal(_, kids) => kids.len() < MAX_CHILDREN / 4,
    }
}

fn fit_merged(a: &Node, b: &Node) -> bool {
    match a {
        Node::Leaf(_) => a.used_bytes() + b.used_bytes() <= LEAF_CAPACITY * 3 / 4,
        Node::Internal(..) => a.len() + b.len() <= MAX_CHILDREN * 3 / 4,
    }
}

/// `parent` and its child at `pos` are writable. If that child is under-full,
/// move its entries into its left neighbour, or its right neighbour's into it,
/// whichever fits first, and drop the emptied node. Keys stay in order: every
/// key of the left node is below the separator of the right one, and the merged
/// node keeps the left one's place (and lower bound) in the parent.
fn merge_if_underfull(st: &mut NodeStore, parent: BlockAddr, pos: usize) -> StoreResult<()> {
    let node = st.read(parent, None)?;
    let Node::Internal(level, kids) = &*node else {
        return Ok(());
    };
    let level = level - 1;
    // Most removes leave the child well filled: check it before copying anything.
    if !underfull(&*st.read(kids[pos].1, Some(level))?) {
        return Ok(());
    }
    let kids = kids.clone();
    let pairs = [pos.checked_sub(1).map(|l| (l, pos)), Some((pos, pos + 1))];
    for (l, r) in pairs.into_iter().flatten() {
        if r >= kids.len() {
            continue;
        }
        // Read at the level the parent implies: both are leaves or both internal.
        let (a, b) = (
            st.read(kids[l].1, Some(level))?,
            st.read(kids[r].1, Some(level))?,
        );
        if !fit_merged(&a, &b) {
            continue;
        }
        // Both made writable: a shared neighbour is copied (its copy holds its own
        // references below), one already writable is used as it is.
        let left = st.cow(kids[l].1)?;
        let right = st.cow(kids[r].1)?;
        let moved = std::mem::replace(st.node_mut(right)?, Node::Leaf(Vec::new()));
        match (st.node_mut(left)?, moved) {
            (Node::Leaf(items), Node::Leaf(more)) => items.extend(more),
            (Node::Internal(_, entries), Node::Internal(_, more)) => entries.extend(more),
            _ => return Err(st.corrupt(left, "sibling nodes of different kinds".into())),
        }
        // Empty now, so dropping it frees its block and nothing below it.
        st.drop_ref(right)?;
        if let Node::Internal(_, kids) = st.node_mut(parent)? {
            kids[l].1 = left;
            kids.remove(r);
        }
        return Ok(());
    }
    Ok(())
}

/// A new, empty tree (a single empty leaf).
pub fn create_empty(st: &mut NodeStore) -> StoreResult<BlockAddr> {
    st.alloc_node(Node::Leaf(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::MemDevice;
    use crate::store::spacemap::SpaceMap;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn no_refs(_: &Key, _: &[u8]) -> Option<(BlockAddr, u64)> {
        None
    }

    fn store() -> NodeStore {
        let dev = Arc::new(MemDevice::new());
        NodeStore::new(dev, SpaceMap::create(1 << 20, 7), 7, 1, 1 << 20, no_refs)
    }

    /// An insert that finds no block for a split fails with ENOSPC and leaves the
    /// tree as it was. The split used to cut the node before allocating the block
    /// for its right half, so the error dropped that half: items of other keys
    /// (other files) vanished.
    #[test]
    fn insert_out_of_space_loses_nothing() {
        let dev = Arc::new(MemDevice::new());
        let mut st = NodeStore::new(dev, SpaceMap::create(40, 7), 7, 1, 1 << 20, no_refs);
        let mut root = create_empty(&mut st).unwrap();
        let mut model = BTreeMap::new();
        let err = loop {
            let k = Key::new(model.len() as u64 * 7 % 1000, 0, 0);
            match insert(&mut st, root, k, vec![1; 300]) {
                Ok(r) => {
                    root = r;
                    model.insert(k, vec![1; 300]);
                }
                Err(e) => break e,
            }
        };
        assert!(matches!(err, crate::store::StoreError::NoSpace { .. }));
        let all = collect(&mut st, root, &Key::MIN, &Key::MAX).unwrap();
        let keys: Vec<u64> = all.iter().map(|(k, _)| k.id).collect();
        assert_eq!(keys, model.keys().map(|k| k.id).collect::<Vec<_>>());
        assert!(all.iter().all(|(_, v)| *v == [1; 300]));
    }

    #[test]
    fn random_ops_match_btreemap_and_sharing_is_isolated() {
        let mut st = store();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut a = create_empty(&mut st).unwrap();
        let mut model = BTreeMap::new();
        for i in 0..20000u64 {
            let k = Key::new(
                rng.gen_range(0..3000),
                rng.gen_range(0..3),
                rng.gen_range(0..4),
            );
            if rng.gen_bool(0.7) {
                let v = vec![(i % 251) as u8; rng.gen_range(0..300)];
                a = insert(&mut st, a, k, v.clone()).unwrap();
                model.insert(k, v);
            } else {
                let (r, old) = remove(&mut st, a, &k).unwrap();
                a = r;
                assert_eq!(old, model.remove(&k));
            }
        }
        let all = collect(&mut st, a, &Key::MIN, &Key::MAX).unwrap();
        assert_eq!(
            all,
            model
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<Vec<_>>()
        );
        // floor: the greatest key <= a probe, across leaves and after deletes
        // (multi-level: thousands of items).
        for _ in 0..3000 {
            let probe = Key::new(
                rng.gen_range(0..3100),
                rng.gen_range(0..4),
                rng.gen_range(0..5),
            );
            let want = model.range(..=probe).next_back().map(|(k, _)| *k);
            assert_eq!(
                floor(&mut st, a, &probe).unwrap(),
                want,
                "floor of {probe:?}"
            );
        }
        assert_eq!(
            floor(&mut st, a, &Key::MIN).unwrap(),
            model.keys().next().filter(|k| **k == Key::MIN).copied()
        );
        // Share the root (a branch), change one side, the other is untouched.
        st.inc_node(a).unwrap();
        let b = insert(&mut st, a, Key::new(1, 1, 1), vec![9]).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            collect(&mut st, a, &Key::MIN, &Key::MAX).unwrap().len(),
            model.len()
        );
        // Drop both: everything returns to the space map.
        let used_before = st.space.used();
        st.drop_ref(a).unwrap();
        st.drop_ref(b).unwrap();
        assert!(st.space.used() < used_before);
        assert_eq!(
            st.space.used(),
            2,
            "only the superblock slots remain in use"
        );
    }

    /// Nodes reachable from `root`, checking on the way that every node's keys lie
    /// in the range its parent gives it.
    fn count_nodes(st: &mut NodeStore, root: BlockAddr, lo: Key, hi: Option<Key>) -> usize {
        let node = st.read(root, None).unwrap();
        if let (Some(first), Some(last)) = (node.first_key(), keys_last(&node)) {
            assert!(
                first >= lo && hi.is_none_or(|h| last < h),
                "keys outside the parent's range"
            );
        }
        match &*node {
            Node::Leaf(_) => 1,
            Node::Internal(_, kids) => {
                let mut n = 1;
                for (i, (k, c)) in kids.iter().enumerate() {
                    let child_hi = kids.get(i + 1).map(|x| x.0).or(hi);
                    n += count_nodes(st, *c, *k, child_hi);
                }
                n
            }
        }
    }

    fn keys_last(node: &Node) -> Option<Key> {
        match node {
            Node::Leaf(v) => v.last().map(|x| x.0),
            Node::Internal(_, v) => v.last().map(|x| x.0),
        }
    }

    /// Removing most items merges the nodes they leave under-full, in a tree a
    /// branch shares too, and the shared side keeps every item. Without merges the
    /// 200 survivors of 20,000 items kept 208 nodes (7 with them).
    #[test]
    fn removes_merge_underfull_nodes() {
        let mut st = store();
        let mut a = create_empty(&mut st).unwrap();
        let n = 20_000u64;
        for i in 0..n {
            a = insert(&mut st, a, Key::new(i, 0, 0), vec![7; 40]).unwrap();
        }
        let full = count_nodes(&mut st, a, Key::MIN, None);
        st.inc_node(a).unwrap();
        let mut b = a;
        // Every 100th item stays, removed in an order that is not the key order.
        let mut gone: Vec<u64> = (0..n).filter(|i| i % 100 != 0).collect();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        for i in (1..gone.len()).rev() {
            gone.swap(i, rng.gen_range(0..=i));
        }
        for i in gone {
            let (r, old) = remove(&mut st, b, &Key::new(i, 0, 0)).unwrap();
            assert!(old.is_some());
            b = r;
        }
        let left = count_nodes(&mut st, b, Key::MIN, None);
        // 200 items of 61 bytes fill 3 leaves; merged nodes are at least a quarter
        // full or have no neighbour they fit with.
        assert!(
            left <= 12,
            "{left} nodes hold 200 items (the full tree had {full})"
        );
        let keys: Vec<u64> = collect(&mut st, b, &Key::MIN, &Key::MAX)
            .unwrap()
            .iter()
            .map(|(k, _)| k.id)
            .collect();
        assert_eq!(keys, (0..n).step_by(100).collect::<Vec<_>>());
        assert_eq!(count_nodes(&mut st, a, Key::MIN, None), full);
        assert_eq!(
            collect(&mut st, a, &Key::MIN, &Key::MAX).unwrap().len(),
            n as usize
        );
        // Reference counts stayed exact: dropping both frees every node.
        st.drop_ref(a).unwrap();
        st.drop_ref(b).unwrap();
        assert_eq!(
            st.space.used(),
            2,
            "only the superblock slots remain in use"
        );
    }

    /// Each tree holds what its model holds, within its parents' key ranges.
    fn check_trees(st: &mut NodeStore, trees: &[(BlockAddr, BTreeMap<Key, Vec<u8>>)], ctx: &str) {
        for (root, model) in trees {
            count_nodes(st, *root, Key::MIN, None);
            let all = collect(st, *root, &Key::MIN, &Key::MAX).unwrap();
            let want: Vec<_> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
            assert_eq!(all, want, "{ctx}");
        }
    }

    /// Random inserts and removes on several trees that share nodes (branches
    /// taken at random points), with phases that remove most items so that merges
    /// meet shared neighbours at every level: every tree must match its model, keep
    /// its keys within its parents' ranges, and dropping every tree must free every
    /// node (the references merges move and copy stay exact).
    #[test]
    fn merges_in_shared_trees_match_models() {
        for seed in 0..4u64 {
            let mut st = store();
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let mut trees = vec![(create_empty(&mut st).unwrap(), BTreeMap::new())];
            for step in 0..66_000u64 {
                let t = rng.gen_range(0..trees.len());
                // Grow for a while, then mostly remove, in waves.
                let removing = (step / 12_000) % 2 == 1;
                let mut k = Key::new(rng.gen_range(0..3_000), 0, rng.gen_range(0..2));
                if removing && !trees[t].1.is_empty() {
                    // A key the tree holds, so that the waves empty it far enough.
                    let nth = rng.gen_range(0..trees[t].1.len());
                    k = *trees[t].1.keys().nth(nth).unwrap();
                }
                if rng.gen_bool(if removing { 0.1 } else { 0.8 }) {
                    let v = vec![(step % 251) as u8; rng.gen_range(1..900)];
                    trees[t].0 = insert(&mut st, trees[t].0, k, v.clone()).unwrap();
                    trees[t].1.insert(k, v);
                } else {
                    let (r, old) = remove(&mut st, trees[t].0, &k).unwrap();
                    trees[t].0 = r;
                    assert_eq!(old, trees[t].1.remove(&k), "seed {seed} step {step}");
                }
                if step % 6_000 == 5_999 {
                    check_trees(&mut st, &trees, &format!("seed {seed} step {step}"));
                }
                if step % 5_000 == 1_000 && trees.len() < 4 {
                    st.inc_node(trees[t].0).unwrap();
                    let copy = trees[t].clone();
                    trees.push(copy);
                }
            }
            check_trees(&mut st, &trees, &format!("seed {seed} end"));
            for (root, _) in trees {
                st.drop_ref(root).unwrap();
            }
            assert_eq!(st.space.used(), 2, "seed {seed}: nodes left in use");
        }
    }
}
