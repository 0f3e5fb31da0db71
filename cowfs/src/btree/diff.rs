//! The items that differ between two trees, found by walking both at once and
//! skipping every subtree they share: a node reachable from both roots at the same
//! position in key order is never read. The cost follows the size of the difference
//! (plus the paths down to it), not the size of the trees.

use std::sync::Arc;

use super::key::Key;
use super::node::Node;
use super::nodestore::NodeStore;
use crate::store::{BlockAddr, StoreResult};

/// One side of the walk: what remains, in key order, as a stack (next on top).
enum Pending {
    Node(BlockAddr, u8),
    /// Item `index` of a decoded leaf.
    Item(Arc<Node>, usize),
}

struct Cursor {
    stack: Vec<Pending>,
}

impl Cursor {
    fn new(root: BlockAddr, st: &mut NodeStore, visited: &mut u64) -> StoreResult<Cursor> {
        *visited += 1;
        let level = st.read(root, None)?.level();
        Ok(Cursor {
            stack: vec![Pending::Node(root, level)],
        })
    }

    /// Replace the node on top with its children (or items).
    fn expand(&mut self, st: &mut NodeStore, visited: &mut u64) -> StoreResult<()> {
        let Some(Pending::Node(addr, level)) = self.stack.pop() else {
            return Ok(());
        };
        let node = st.read(addr, Some(level))?;
        *visited += 1;
        match &*node {
            Node::Leaf(items) => {
                for i in (0..items.len()).rev() {
                    self.stack.push(Pending::Item(node.clone(), i));
                }
            }
            Node::Internal(l, kids) => {
                for (_, c) in kids.iter().rev() {
                    self.stack.push(Pending::Node(*c, l - 1));
                }
            }
        }
        Ok(())
    }
}

fn item(p: &Pending) -> Option<(&Key, &[u8])> {
    match p {
        Pending::Item(n, i) => match &**n {
            Node::Leaf(items) => items.get(*i).map(|(k, v)| (k, &v[..])),
            Node::Internal(..) => None,
        },
        Pending::Node(..) => None,
    }
}

/// Receives each differing item: (key, value in a, value in b).
pub type DiffSink<'a> = dyn FnMut(&Key, Option<&[u8]>, Option<&[u8]>) + 'a;

/// A walk over every key whose item differs between the trees at `a` and `b`
/// (absent on one side, or with a different value), in key order, taken one
/// bounded step at a time: each `step` reads at most two nodes. What it holds
/// between steps is addresses and decoded nodes, so the caller may let others
/// use the node store in between, as long as no block the two trees reach is
/// overwritten meanwhile (the pool pins them: `SpaceMap::pin`).
pub struct Walk {
    ca: Cursor,
    cb: Cursor,
    visited: u64,
}

impl Walk {
    pub fn new(st: &mut NodeStore, a: BlockAddr, b: BlockAddr) -> StoreResult<Walk> {
        let mut visited = 0;
        let (ca, cb) = if a == b {
            let empty = || Cursor { stack: Vec::new() };
            (empty(), empty())
        } else {
            (
                Cursor::new(a, st, &mut visited)?,
                Cursor::new(b, st, &mut visited)?,
            )
        };
        Ok(Walk { ca, cb, visited })
    }

    /// Tree nodes visited so far.
    pub fn visited(&self) -> u64 {
        self.visited
    }

    /// Report differing items to `f` until a node was read (one per side at
    /// most) or the walk is over; true once it is.
    pub fn step(&mut self, st: &mut NodeStore, f: &mut DiffSink) -> StoreResult<bool> {
        let (ca, cb, visited) = (&mut self.ca, &mut self.cb, &mut self.visited);
        loop {
            match (ca.stack.last(), cb.stack.last()) {
                (None, None) => return Ok(true),
                (Some(_), None) => match ca.stack.last().and_then(item) {
                    Some((k, v)) => {
                        f(k, Some(v), None);
                        ca.stack.pop();
                    }
                    None => return ca.expand(st, visited).map(|_| false),
                },
                (None, Some(_)) => match cb.stack.last().and_then(item) {
                    Some((k, v)) => {
                        f(k, None, Some(v));
                        cb.stack.pop();
                    }
                    None => return cb.expand(st, visited).map(|_| false),
                },
                (Some(Pending::Node(x, lx)), Some(Pending::Node(y, ly))) => {
                    if x == y {
                        // The same subtree is next on both sides: identical items.
                        ca.stack.pop();
                        cb.stack.pop();
                        continue;
                    }
                    // The higher node first; at the same level, both.
                    let (a_first, b_first) = (lx >= ly, ly >= lx);
                    if a_first {
                        ca.expand(st, visited)?;
                    }
                    if b_first {
                        cb.expand(st, visited)?;
                    }
                    return Ok(false);
                }
                (Some(Pending::Node(..)), Some(_)) => return ca.expand(st, visited).map(|_| false),
                (Some(_), Some(Pending::Node(..))) => return cb.expand(st, visited).map(|_| false),
                (Some(pa), Some(pb)) => {
                    let (Some((ka, va)), Some((kb, vb))) = (item(pa), item(pb)) else {
                        return Ok(true);
                    };
                    match ka.cmp(kb) {
                        std::cmp::Ordering::Less => {
                            f(ka, Some(va), None);
                            ca.stack.pop();
                        }
                        std::cmp::Ordering::Greater => {
                            f(kb, None, Some(vb));
                            cb.stack.pop();
                        }
                        std::cmp::Ordering::Equal => {
                            if va != vb {
                                f(ka, Some(va), Some(vb));
                            }
                            ca.stack.pop();
                            cb.stack.pop();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::tree;
    use crate::store::device::MemDevice;
    use crate::store::spacemap::SpaceMap;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    fn no_refs(_: &Key, _: &[u8]) -> Option<(BlockAddr, u64)> {
        None
    }

    /// The whole walk; nodes visited.
    fn diff(st: &mut NodeStore, a: BlockAddr, b: BlockAddr, f: &mut DiffSink) -> StoreResult<u64> {
        let mut w = Walk::new(st, a, b)?;
        while !w.step(st, f)? {}
        Ok(w.visited())
    }

    #[test]
    fn matches_a_model_and_skips_shared_subtrees() {
        let dev = Arc::new(MemDevice::new());
        let mut st = NodeStore::new(dev, SpaceMap::create(1 << 20, 7), 7, 1, 1 << 24, no_refs);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let mut a = tree::create_empty(&mut st).unwrap();
        let mut ma = BTreeMap::new();
        for i in 0..20_000u64 {
            let k = Key::new(i, 1, 0);
            let v = vec![(i % 251) as u8; 100];
            a = tree::insert(&mut st, a, k, v.clone()).unwrap();
            ma.insert(k, v);
        }
        // b: a branch of a with a few changes (insert, replace, remove).
        st.inc_node(a).unwrap();
        let mut b = a;
        let mut mb = ma.clone();
        for _ in 0..5 {
            let k = Key::new(rng.gen_range(0..25_000), 1, 0);
            b = tree::insert(&mut st, b, k, vec![7; 50]).unwrap();
            mb.insert(k, vec![7; 50]);
            let k = Key::new(rng.gen_range(0..20_000), 1, 0);
            b = tree::remove(&mut st, b, &k).unwrap().0;
            mb.remove(&k);
        }
        let mut got = Vec::new();
        let visited = diff(&mut st, a, b, &mut |k, x, y| {
            got.push((*k, x.map(<[u8]>::to_vec), y.map(<[u8]>::to_vec)))
        })
        .unwrap();
        let mut want = Vec::new();
        let keys: std::collections::BTreeSet<Key> = ma.keys().chain(mb.keys()).copied().collect();
        for k in keys {
            let (x, y) = (ma.get(&k), mb.get(&k));
            if x != y {
                want.push((k, x.cloned(), y.cloned()));
            }
        }
        assert_eq!(got, want);
        // 20,000 items fill ~600 leaves; 10 changes touch at most ~10 paths of
        // depth 3 on each side (plus neighbours where a split moved keys).
        assert!(visited < 120, "visited {visited} nodes for 10 changes");
        assert_eq!(diff(&mut st, a, a, &mut |_, _, _| panic!()).unwrap(), 0);
        // Against an unrelated tree, everything differs.
        let c = tree::create_empty(&mut st).unwrap();
        let mut n = 0;
        diff(&mut st, a, c, &mut |_, x, y| {
            assert!(x.is_some() && y.is_none());
            n += 1;
        })
        .unwrap();
        assert_eq!(n, ma.len());
    }
}
