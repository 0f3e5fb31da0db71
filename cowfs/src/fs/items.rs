//! Item kinds of a branch's filesystem tree and their value layouts (little-endian).
//! Keys are (inode number, kind, offset); see format-spec/on-disk.md.

use crate::btree::Key;
use crate::store::le::*;
use crate::store::{BlockAddr, BLOCK_SIZE};

pub const KIND_INODE: u8 = 1;
/// offset = name hash (probed on collision); value = DirEntry
pub const KIND_DIRENT: u8 = 2;
/// offset = per-directory sequence number (readdir cookie); value = DirEntry
pub const KIND_DIRINDEX: u8 = 3;
/// offset = name hash (probed); value = name length u16, name, then the value or,
/// for a value too large for one item, where its chunks are (`XattrValue`)
pub const KIND_XATTR: u8 = 4;
/// offset 0; value = the file's bytes (small files)
pub const KIND_INLINE: u8 = 5;
/// offset = file byte offset (block aligned); value = Extent
pub const KIND_EXTENT: u8 = 6;
/// id 0, offset = inode number with nlink 0 still open somewhere
pub const KIND_ORPHAN: u8 = 7;
/// offset = chunk id << 6 | chunk index; value = one piece of a large xattr value
pub const KIND_XATTR_CHUNK: u8 = 8;

/// Largest file kept inline in the tree.
pub const INLINE_MAX: usize = 1024;
/// Blocks per extent item (their CRC32s travel in the item).
pub const MAX_EXTENT_BLOCKS: u64 = 64;
pub const MAX_NAME_LEN: usize = 255;
/// Probing window for hashed names; more collisions than this on one hash is ENOSPC.
pub const HASH_PROBE: u64 = 64;

pub const EXTENT_UNWRITTEN: u32 = 1;

/// Largest xattr value, the kernel's XATTR_SIZE_MAX (it refuses larger ones itself).
pub const XATTR_SIZE_MAX: usize = 65536;
/// Largest names list (each name and a NUL), the kernel's XATTR_LIST_MAX: a longer
/// one could not be listed at all.
pub const XATTR_LIST_MAX: usize = 65536;
/// Bytes per chunk of a large value: every chunk but the last is full.
pub const XATTR_CHUNK_LEN: usize = crate::btree::MAX_VALUE_LEN;
/// Chunks of the largest value.
pub const XATTR_MAX_CHUNKS: u64 = XATTR_SIZE_MAX.div_ceil(XATTR_CHUNK_LEN) as u64;
/// Low bits of a chunk key's offset that hold the chunk index.
const CHUNK_INDEX_BITS: u32 = 6;
// Every chunk index of the largest value fits the index bits.
const _: () = assert!(XATTR_MAX_CHUNKS <= 1 << CHUNK_INDEX_BITS);
/// Chunk ids are below this, so that `id << 6` keeps every bit.
pub const XATTR_CHUNK_IDS: u64 = 1 << (64 - CHUNK_INDEX_BITS);
/// Bit of an XATTR item's name length that marks a chunked value (names are at most
/// 255 bytes, so a version-3 item never has it).
const XATTR_CHUNKED: u16 = 0x8000;

pub fn inode_key(ino: u64) -> Key {
    Key::new(ino, KIND_INODE, 0)
}

/// 63-bit FNV-1a of a name; the top bit is left clear so probing never wraps.
pub fn name_hash(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in name {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h >> 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    pub fn now() -> Timespec {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timespec {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(_) => Timespec::default(),
        }
    }

    /// The clock the kernel stamps file times with (`current_time()`: the coarse
    /// realtime clock, one tick of resolution), for the times of a new inode: a
    /// write right after the create then finds mtime and ctime already "now" and
    /// does not dirty them, where with the writeback cache the kernel would send
    /// them in a SETATTR at close, one more round trip per small file
    /// (tests/fuse_requests.rs). Only while no other filesystem hands out
    /// fine-grained timestamps: since Linux 6.13 `current_time()` never reads
    /// earlier than the last of those, and userspace cannot read that floor. So
    /// only new inodes get it: a change of an existing inode is stamped with the
    /// fine clock, which is never earlier than a time the kernel stamped before.
    pub fn now_coarse() -> Timespec {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
            return Timespec::now();
        }
        Timespec {
            sec: ts.tv_sec,
            nsec: ts.tv_nsec as u32,
        }
    }
}

/// The inode item.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Inode {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub rdev: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub flags: u32,
    /// Directories: the parent directory (for rename loop checks and "..").
    pub parent: u64,
    /// Directories: next readdir sequence number.
    pub next_seq: u64,
    /// 4 KiB blocks mapped by extents.
    pub blocks: u64,
    /// The id the next large xattr value's chunks get (ids are never reused, so a
    /// value's chunks cannot mix with those of the value it replaced).
    pub next_chunk_id: u64,
}

pub const INODE_SIZE: usize = 116;

impl Inode {
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; INODE_SIZE];
        put_u32(&mut b, 0, self.mode);
        put_u32(&mut b, 4, self.uid);
        put_u32(&mut b, 8, self.gid);
        put_u32(&mut b, 12, self.nlink);
        put_u64(&mut b, 16, self.size);
        put_u64(&mut b, 24, self.rdev);
        for (i, t) in [self.atime, self.mtime, self.ctime, self.crtime]
            .iter()
            .enumerate()
        {
            put_i64(&mut b, 32 + i * 12, t.sec);
            put_u32(&mut b, 40 + i * 12, t.nsec);
        }
        put_u32(&mut b, 80, self.flags);
        put_u64(&mut b, 84, self.parent);
        put_u64(&mut b, 92, self.next_seq);
        put_u64(&mut b, 100, self.blocks);
        put_u64(&mut b, 108, self.next_chunk_id);
        b
    }

    pub fn decode(b: &[u8]) -> Option<Inode> {
        if b.len() < INODE_SIZE {
            return None;
        }
        let t = |i: usize| Timespec {
            sec: i64_at(b, 32 + i * 12),
            nsec: u32_at(b, 40 + i * 12).min(999_999_999),
        };
        Some(Inode {
            mode: u32_at(b, 0),
            uid: u32_at(b, 4),
            gid: u32_at(b, 8),
            nlink: u32_at(b, 12),
            size: u64_at(b, 16),
            rdev: u64_at(b, 24),
            atime: t(0),
            mtime: t(1),
            ctime: t(2),
            crtime: t(3),
            flags: u32_at(b, 80),
            parent: u64_at(b, 84),
            next_seq: u64_at(b, 92),
            blocks: u64_at(b, 100),
            next_chunk_id: u64_at(b, 108),
        })
    }
}

/// A directory entry (both the by-name and the by-sequence item carry one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    /// S_IFMT bits of the child.
    pub ftype: u32,
    /// DIRENT items: the sequence number of the matching DIRINDEX item.
    /// DIRINDEX items: the hash slot of the matching DIRENT item.
    pub link: u64,
    pub name: Vec<u8>,
}

impl DirEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 20 + self.name.len()];
        put_u64(&mut b, 0, self.ino);
        put_u32(&mut b, 8, self.ftype);
        put_u64(&mut b, 12, self.link);
        b[20..].copy_from_slice(&self.name);
        b
    }
    pub fn decode(b: &[u8]) -> Option<DirEntry> {
        if b.len() < 20 || b.len() > 20 + MAX_NAME_LEN {
            return None;
        }
        Some(DirEntry {
            ino: u64_at(b, 0),
            ftype: u32_at(b, 8),
            link: u64_at(b, 12),
            name: b[20..].to_vec(),
        })
    }
}

/// A run of data blocks mapped at a file offset, with one CRC32 per block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub phys: BlockAddr,
    pub flags: u32,
    pub crcs: Vec<u32>,
}

impl Extent {
    pub fn len(&self) -> u64 {
        self.crcs.len() as u64
    }
    pub fn is_empty(&self) -> bool {
        self.crcs.is_empty()
    }
    pub fn unwritten(&self) -> bool {
        self.flags & EXTENT_UNWRITTEN != 0
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 16 + 4 * self.crcs.len()];
        put_u64(&mut b, 0, self.phys);
        put_u32(&mut b, 8, self.crcs.len() as u32);
        put_u32(&mut b, 12, self.flags);
        for (i, c) in self.crcs.iter().enumerate() {
            put_u32(&mut b, 16 + i * 4, *c);
        }
        b
    }
    pub fn decode(b: &[u8]) -> Option<Extent> {
        if b.len() < 16 {
            return None;
        }
        let n = u32_at(b, 8) as usize;
        if n == 0 || n as u64 > MAX_EXTENT_BLOCKS || b.len() != 16 + 4 * n {
            return None;
        }
        // Blocks [phys, phys + n) must be addressable: every user adds to phys
        // (ranges, reads, reference counts), which overflowed on a crafted item.
        u64_at(b, 0).checked_add(n as u64)?;
        Some(Extent {
            phys: u64_at(b, 0),
            flags: u32_at(b, 12),
            crcs: (0..n).map(|i| u32_at(b, 16 + i * 4)).collect(),
        })
    }
    /// The sub-extent covering blocks [from, to) relative to the extent start.
    pub fn slice(&self, from: u64, to: u64) -> Extent {
        Extent {
            phys: self.phys + from,
            flags: self.flags,
            crcs: self.crcs[from as usize..to as usize].to_vec(),
        }
    }
}

/// An XATTR item's value: the bytes themselves, or for a value too large for one
/// item, the id of its chunks (KIND_XATTR_CHUNK) and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrValue<'a> {
    Inline(&'a [u8]),
    Chunked { id: u64, len: u32 },
}

pub fn xattr_encode(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 2 + name.len() + value.len()];
    put_u16(&mut b, 0, name.len() as u16);
    b[2..2 + name.len()].copy_from_slice(name);
    b[2 + name.len()..].copy_from_slice(value);
    b
}

/// A chunked value's item: name length with `XATTR_CHUNKED` set, name, chunk id
/// `u64`, value length `u32`.
pub fn xattr_encode_chunked(name: &[u8], id: u64, len: u32) -> Vec<u8> {
    let mut b = vec![0u8; 2 + name.len() + 12];
    put_u16(&mut b, 0, name.len() as u16 | XATTR_CHUNKED);
    b[2..2 + name.len()].copy_from_slice(name);
    put_u64(&mut b, 2 + name.len(), id);
    put_u32(&mut b, 10 + name.len(), len);
    b
}

pub fn xattr_decode(b: &[u8]) -> Option<(&[u8], XattrValue<'_>)> {
    if b.len() < 2 {
        return None;
    }
    let raw = u16_at(b, 0);
    let n = (raw & !XATTR_CHUNKED) as usize;
    if 2 + n > b.len() {
        return None;
    }
    let name = &b[2..2 + n];
    if raw & XATTR_CHUNKED == 0 {
        return Some((name, XattrValue::Inline(&b[2 + n..])));
    }
    if b.len() != 2 + n + 12 {
        return None;
    }
    let (id, len) = (u64_at(b, 2 + n), u32_at(b, 10 + n));
    // Readers multiply out the id and allocate the length: bound both.
    if id >= XATTR_CHUNK_IDS || len == 0 || len as usize > XATTR_SIZE_MAX {
        return None;
    }
    Some((name, XattrValue::Chunked { id, len }))
}

/// Chunks of a value of `len` bytes.
pub fn xattr_chunks(len: usize) -> u64 {
    len.div_ceil(XATTR_CHUNK_LEN) as u64
}

/// The key of chunk `index` of the chunks with id `id` (below `XATTR_CHUNK_IDS`).
pub fn xattr_chunk_key(ino: u64, id: u64, index: u64) -> Key {
    Key::new(ino, KIND_XATTR_CHUNK, id << CHUNK_INDEX_BITS | index)
}

/// (chunk id, chunk index) of a chunk key's offset.
pub fn xattr_chunk_pos(off: u64) -> (u64, u64) {
    (off >> CHUNK_INDEX_BITS, off & ((1 << CHUNK_INDEX_BITS) - 1))
}

/// Blocks an item references, for the tree's reference counting: data extents.
pub fn item_refs(key: &Key, val: &[u8]) -> Option<(BlockAddr, u64)> {
    if key.kind == KIND_EXTENT {
        return Extent::decode(val).map(|e| (e.phys, e.len()));
    }
    None
}

pub const BS: u64 = BLOCK_SIZE as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        let i = Inode {
            mode: libc::S_IFREG | 0o644,
            uid: 5,
            size: 99,
            mtime: Timespec { sec: -3, nsec: 7 },
            blocks: 3,
            next_chunk_id: 9,
            ..Default::default()
        };
        assert_eq!(Inode::decode(&i.encode()), Some(i));
        let d = DirEntry {
            ino: 9,
            ftype: libc::S_IFDIR,
            link: 4,
            name: b"abc".to_vec(),
        };
        assert_eq!(DirEntry::decode(&d.encode()), Some(d));
        let e = Extent {
            phys: 77,
            flags: 0,
            crcs: vec![1, 2, 3],
        };
        assert_eq!(Extent::decode(&e.encode()), Some(e.clone()));
        assert_eq!(e.slice(1, 3).phys, 78);
        assert_eq!(Extent::decode(&[0u8; 16]), None);
        assert_eq!(
            xattr_decode(&xattr_encode(b"user.a", b"v")),
            Some((&b"user.a"[..], XattrValue::Inline(b"v")))
        );
        let chunked = XattrValue::Chunked { id: 5, len: 65536 };
        assert_eq!(
            xattr_decode(&xattr_encode_chunked(b"user.a", 5, 65536)),
            Some((&b"user.a"[..], chunked))
        );
        // Lengths and ids readers could not use are refused.
        assert_eq!(
            xattr_decode(&xattr_encode_chunked(b"user.a", 5, 65537)),
            None
        );
        assert_eq!(xattr_decode(&xattr_encode_chunked(b"user.a", 5, 0)), None);
        let id = XATTR_CHUNK_IDS;
        assert_eq!(xattr_decode(&xattr_encode_chunked(b"user.a", id, 9)), None);
        let key = xattr_chunk_key(3, XATTR_CHUNK_IDS - 1, XATTR_MAX_CHUNKS - 1);
        assert_eq!(
            xattr_chunk_pos(key.off),
            (XATTR_CHUNK_IDS - 1, XATTR_MAX_CHUNKS - 1)
        );
    }
}
