//! Where an xattr's value lives: in its XATTR item when name and value fit one tree
//! value (as every value did before format version 4), else in chunks of its own
//! (KIND_XATTR_CHUNK) that the item names by id (format-spec/on-disk.md §6.2).

use super::items::*;
use super::{err, FsResult, FsTree};
use crate::btree::MAX_VALUE_LEN;

/// A value as its XATTR item records it.
#[derive(Debug)]
pub(super) enum Stored {
    Inline(Vec<u8>),
    Chunked { id: u64, len: u32 },
}

impl Stored {
    pub(super) fn of(v: XattrValue) -> Stored {
        match v {
            XattrValue::Inline(b) => Stored::Inline(b.to_vec()),
            XattrValue::Chunked { id, len } => Stored::Chunked { id, len },
        }
    }
}

impl FsTree<'_> {
    /// The XATTR item that stores `value` under `name`. A value too large for the
    /// item is written as chunks first, under a chunk id taken from `i` (the
    /// caller stores `i`).
    pub(super) fn store_xattr_value(
        &mut self,
        ino: u64,
        i: &mut Inode,
        name: &[u8],
        value: &[u8],
    ) -> FsResult<Vec<u8>> {
        if 2 + name.len() + value.len() <= MAX_VALUE_LEN {
            return Ok(xattr_encode(name, value));
        }
        let id = i.next_chunk_id;
        if id >= XATTR_CHUNK_IDS {
            return err(libc::ENOSPC);
        }
        i.next_chunk_id += 1;
        for (index, piece) in value.chunks(XATTR_CHUNK_LEN).enumerate() {
            self.put(xattr_chunk_key(ino, id, index as u64), piece.to_vec())?;
        }
        // The caller refused anything above XATTR_SIZE_MAX.
        Ok(xattr_encode_chunked(name, id, value.len() as u32))
    }

    /// The whole value; a chunk missing or of the wrong length is damage (EIO).
    pub(super) fn load_xattr_value(&mut self, ino: u64, stored: Stored) -> FsResult<Vec<u8>> {
        let (id, len) = match stored {
            Stored::Inline(v) => return Ok(v),
            Stored::Chunked { id, len } => (id, len as usize),
        };
        let n = xattr_chunks(len);
        let chunks = self.scan(xattr_chunk_key(ino, id, 0), xattr_chunk_key(ino, id, n - 1))?;
        let mut out = Vec::with_capacity(len);
        for (index, (k, piece)) in chunks.iter().enumerate() {
            let want = XATTR_CHUNK_LEN.min(len - out.len());
            if xattr_chunk_pos(k.off).1 != index as u64 || piece.len() != want {
                return Err(self.corrupt(ino, &format!("xattr chunk {id}/{index} damaged")));
            }
            out.extend_from_slice(piece);
        }
        if out.len() != len {
            return Err(self.corrupt(ino, &format!("xattr chunks {id} missing")));
        }
        Ok(out)
    }

    /// Remove a value's chunks, if it has any (its item is the caller's).
    pub(super) fn drop_xattr_value(&mut self, ino: u64, stored: &Stored) -> FsResult<()> {
        if let Stored::Chunked { id, len } = *stored {
            for index in 0..xattr_chunks(len as usize) {
                self.del(&xattr_chunk_key(ino, id, index))?;
            }
        }
        Ok(())
    }
}
