//! A bounded cache of decoded, clean metadata blocks keyed by address. Committed
//! blocks never change in place, so an entry can never be stale; dirty blocks live
//! in the transaction, not here.

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

use super::{BlockAddr, BLOCK_SIZE};

pub struct NodeCache<V> {
    lru: LruCache<BlockAddr, Arc<V>>,
    hits: u64,
    misses: u64,
}

impl<V> NodeCache<V> {
    /// A cache holding about `limit_bytes` of decoded blocks (decoded nodes take
    /// roughly twice their on-disk size).
    pub fn new(limit_bytes: usize) -> NodeCache<V> {
        let entries = (limit_bytes / (2 * BLOCK_SIZE)).max(64);
        NodeCache {
            lru: LruCache::new(NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN)),
            hits: 0,
            misses: 0,
        }
    }

    pub fn get(&mut self, addr: BlockAddr) -> Option<Arc<V>> {
        let r = self.lru.get(&addr).cloned();
        if r.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        r
    }

    pub fn insert(&mut self, addr: BlockAddr, v: Arc<V>) {
        self.lru.put(addr, v);
    }

    /// Forget a block (it was freed; its address may be reused).
    pub fn remove(&mut self, addr: BlockAddr) {
        self.lru.pop(&addr);
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.lru.cap().get()
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}
