//! Block storage: devices, checksummed block headers, superblock slots, the node
//! cache and the space map (allocator + per-block reference counts).

pub mod blank;
pub mod block;
pub mod cache;
pub mod device;
pub mod flush_gate;
mod flush_handles;
pub mod intent_log;
pub mod runs;
pub mod spacemap;
pub mod superblock;

use std::path::PathBuf;

/// Every block in a pool is this many bytes.
pub const BLOCK_SIZE: usize = 4096;

/// A block address (index of a 4 KiB block in the pool).
pub type BlockAddr = u64;

/// Errors of the storage layer. Each names the pool and, where there is one, the block.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{pool}: I/O error at block {block}: {source}")]
    Io {
        pool: PathBuf,
        block: BlockAddr,
        source: std::io::Error,
    },
    #[error(
        "{pool}: block {block} is corrupt: {why} (restore from a snapshot or run `cowfs fsck`)"
    )]
    Corrupt {
        pool: PathBuf,
        block: BlockAddr,
        why: String,
    },
    #[error("{pool}: block {block} lies beyond the end of the pool ({len} blocks): the pool file is truncated")]
    Truncated {
        pool: PathBuf,
        block: BlockAddr,
        len: u64,
    },
    #[error("{pool}: not a cowfs pool ({why})")]
    Foreign { pool: PathBuf, why: String },
    #[error("{pool}: pool format version {found} is not supported (this build reads versions 1 to {supported})")]
    Version {
        pool: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{pool}: no space left in the pool")]
    NoSpace { pool: PathBuf },
    #[error("{pool}: the branch's quota is used up; delete data in it or raise its quota (`cowfs-ctl quota set`)")]
    Quota { pool: PathBuf },
    #[error("{pool}: pool is read-only after a failed flush; restart the daemon to recover from the last commit")]
    Poisoned { pool: PathBuf },
    /// Opened read-only (`Pool::open_read_only`, for fsck and scrub): every change
    /// is refused before it touches anything, so the pool stays as it is on disk.
    #[error("{pool}: the pool is open read-only (for a check): nothing may change it")]
    ReadOnly { pool: PathBuf },
}

impl StoreError {
    /// The POSIX error code a filesystem caller should see for this error.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NoSpace { .. } => libc::ENOSPC,
            StoreError::Quota { .. } => libc::EDQUOT,
            StoreError::Poisoned { .. } | StoreError::ReadOnly { .. } => libc::EROFS,
            _ => libc::EIO,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Little-endian field access on byte slices. Callers check bounds before calling
/// (all offsets are fixed layout constants inside a 4 KiB block).
pub mod le {
    pub fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }
    pub fn u32_at(b: &[u8], off: usize) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[off..off + 4]);
        u32::from_le_bytes(a)
    }
    pub fn u64_at(b: &[u8], off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[off..off + 8]);
        u64::from_le_bytes(a)
    }
    pub fn i64_at(b: &[u8], off: usize) -> i64 {
        u64_at(b, off) as i64
    }
    pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_i64(b: &mut [u8], off: usize, v: i64) {
        put_u64(b, off, v as u64)
    }
}
