//! fsck of large xattr values (format-spec/on-disk.md §6.2, §9): every chunked
//! XATTR item has all its chunks, full but for the last, adding up to its length,
//! under an id below its inode's chunk counter that no other value uses; every
//! chunk belongs to such a value.

use std::collections::{BTreeMap, HashMap};

use crate::fs::items::{xattr_chunk_pos, xattr_chunks, Inode, XATTR_CHUNK_LEN};

/// What one branch's walk found, by (inode, chunk id).
#[derive(Default)]
pub(super) struct XattrChunks {
    /// Chunked values: their length.
    values: HashMap<(u64, u64), u32>,
    /// Chunks: index -> length.
    chunks: HashMap<(u64, u64), BTreeMap<u64, usize>>,
    /// Chunk ids two values of one inode claim.
    shared: Vec<(u64, u64)>,
}

/// A finding: corruption, or (a chunk nothing refers to) a leak.
pub(super) enum Finding {
    Error(String),
    Leak(String),
}

impl XattrChunks {
    pub(super) fn value(&mut self, ino: u64, id: u64, len: u32) {
        if self.values.insert((ino, id), len).is_some() {
            self.shared.push((ino, id));
        }
    }

    pub(super) fn chunk(&mut self, ino: u64, off: u64, len: usize) {
        let (id, index) = xattr_chunk_pos(off);
        self.chunks.entry((ino, id)).or_default().insert(index, len);
    }

    pub(super) fn check(&self, inodes: &HashMap<u64, Inode>) -> Vec<Finding> {
        let mut out = Vec::new();
        for (ino, id) in &self.shared {
            out.push(Finding::Error(format!(
                "inode {ino}: two xattr values use chunk id {id}"
            )));
        }
        for (&(ino, id), &len) in &self.values {
            if inodes.get(&ino).is_some_and(|i| id >= i.next_chunk_id) {
                // The next large value set on this inode would write over it.
                out.push(Finding::Error(format!(
                    "inode {ino}: xattr chunk id {id} not below the inode's counter"
                )));
            }
            let len = len as usize;
            let want: BTreeMap<u64, usize> = (0..xattr_chunks(len))
                .map(|i| {
                    let start = i as usize * XATTR_CHUNK_LEN;
                    (i, XATTR_CHUNK_LEN.min(len - start))
                })
                .collect();
            if self.chunks.get(&(ino, id)) != Some(&want) {
                out.push(Finding::Error(format!(
                    "inode {ino}: xattr chunks {id} missing or not adding up to {len} bytes"
                )));
            }
        }
        for (ino, id) in self.chunks.keys() {
            if !self.values.contains_key(&(*ino, *id)) {
                out.push(Finding::Leak(format!(
                    "inode {ino}: xattr chunks {id} belong to no xattr"
                )));
            }
        }
        out
    }
}
