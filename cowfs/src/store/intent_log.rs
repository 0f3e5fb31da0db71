//! Intent log records (format-spec §8.1): what one `fsync` of a file appends to the
//! pool's log region instead of committing the whole transaction. A record names one
//! file, the blocks its writes went to since the last record or commit (with their
//! CRC32s, so replay can tell whether the data landed), its size and its times.
//!
//! A record is a metadata block (§3 header, kind 4) whose generation is the durable
//! commit it applies to and whose address is its place in the log region, so a stale
//! record (an older commit's, or bytes left in the block) never matches.

use super::block::{seal, verify, BlockKind, PAYLOAD_SIZE};
use super::le::*;
use super::BlockAddr;
use crate::store::block::HEADER_SIZE;

/// Bytes of the fixed part of a record's payload (branch, inode, size, times).
const FIXED: usize = 64;
/// Bytes of an extent entry before its CRCs.
const EXTENT_FIXED: usize = 20;

/// Mapped blocks a record can carry: the payload less the fixed part and one entry.
pub const MAX_RECORD_BLOCKS: usize = (PAYLOAD_SIZE - FIXED - EXTENT_FIXED) / 4;

/// File blocks `[file_block, file_block + crcs.len())` now live at `phys..`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogExtent {
    pub file_block: u64,
    pub phys: BlockAddr,
    pub crcs: Vec<u32>,
}

/// Seconds and nanoseconds, as the inode item stores them.
pub type Time = (i64, u32);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub branch: u64,
    pub ino: u64,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub extents: Vec<LogExtent>,
}

impl LogRecord {
    fn payload_len(&self) -> usize {
        FIXED
            + self
                .extents
                .iter()
                .map(|e| EXTENT_FIXED + 4 * e.crcs.len())
                .sum::<usize>()
    }

    /// Whether the record fits in one block.
    pub fn fits(&self) -> bool {
        self.payload_len() <= PAYLOAD_SIZE && self.extents.len() <= u16::MAX as usize
    }

    /// The block for log position `addr`, applying to durable commit `base`. The
    /// caller has checked `fits`.
    pub fn encode(&self, addr: BlockAddr, base: u64, pool_id: u64) -> Vec<u8> {
        debug_assert!(self.fits());
        let mut b = vec![0u8; super::BLOCK_SIZE];
        let p = HEADER_SIZE;
        put_u64(&mut b, p, self.branch);
        put_u64(&mut b, p + 8, self.ino);
        put_u64(&mut b, p + 16, self.size);
        for (i, t) in [self.atime, self.mtime, self.ctime].iter().enumerate() {
            put_i64(&mut b, p + 24 + 8 * i, t.0);
            put_u32(&mut b, p + 48 + 4 * i, t.1);
        }
        let mut at = p + FIXED;
        for e in &self.extents {
            put_u64(&mut b, at, e.file_block);
            put_u64(&mut b, at + 8, e.phys);
            put_u32(&mut b, at + 16, e.crcs.len() as u32);
            at += EXTENT_FIXED;
            for c in &e.crcs {
                put_u32(&mut b, at, *c);
                at += 4;
            }
        }
        seal(
            &mut b,
            BlockKind::LogRecord,
            addr,
            base,
            pool_id,
            0,
            self.extents.len() as u16,
        );
        b
    }

    /// The record at log position `addr` if the block holds one for durable commit
    /// `base` of this pool; None for anything else (end of the log, a torn write, a
    /// stale record, garbage).
    pub fn decode(b: &[u8], addr: BlockAddr, base: u64, pool_id: u64) -> Option<LogRecord> {
        let h = verify(b, addr, pool_id, BlockKind::LogRecord).ok()?;
        if h.generation != base || h.level != 0 {
            return None;
        }
        let p = HEADER_SIZE;
        let time = |i: usize| (i64_at(b, p + 24 + 8 * i), u32_at(b, p + 48 + 4 * i));
        let mut r = LogRecord {
            branch: u64_at(b, p),
            ino: u64_at(b, p + 8),
            size: u64_at(b, p + 16),
            atime: time(0),
            mtime: time(1),
            ctime: time(2),
            extents: Vec::with_capacity(h.count as usize),
        };
        if [r.atime, r.mtime, r.ctime]
            .iter()
            .any(|t| t.1 >= 1_000_000_000)
        {
            return None;
        }
        let end = super::BLOCK_SIZE;
        let mut at = p + FIXED;
        for _ in 0..h.count {
            if at + EXTENT_FIXED > end {
                return None;
            }
            let n = u32_at(b, at + 16) as usize;
            let crcs_end = (at + EXTENT_FIXED).checked_add(n.checked_mul(4)?)?;
            if n == 0 || crcs_end > end {
                return None;
            }
            r.extents.push(LogExtent {
                file_block: u64_at(b, at),
                phys: u64_at(b, at + 8),
                crcs: (0..n)
                    .map(|i| u32_at(b, at + EXTENT_FIXED + 4 * i))
                    .collect(),
            });
            at = crcs_end;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LogRecord {
        LogRecord {
            branch: 3,
            ino: 77,
            size: 12_345,
            atime: (1, 2),
            mtime: (-5, 999_999_999),
            ctime: (1 << 40, 0),
            extents: vec![
                LogExtent {
                    file_block: 0,
                    phys: 100,
                    crcs: vec![1, 2, 3],
                },
                LogExtent {
                    file_block: 9,
                    phys: 500,
                    crcs: vec![0xdead_beef],
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_everything_else_is_no_record() {
        let r = sample();
        let b = r.encode(40, 7, 0xabc);
        assert_eq!(LogRecord::decode(&b, 40, 7, 0xabc), Some(r));
        // Another place, commit or pool: not this log's record.
        assert_eq!(LogRecord::decode(&b, 41, 7, 0xabc), None);
        assert_eq!(LogRecord::decode(&b, 40, 8, 0xabc), None);
        assert_eq!(LogRecord::decode(&b, 40, 7, 0xabd), None);
        assert_eq!(LogRecord::decode(&[0u8; 4096], 40, 7, 0xabc), None);
        // A torn write: any flipped byte.
        for off in [0usize, 20, 60, 130, 4095] {
            let mut c = b.clone();
            c[off] ^= 0x10;
            assert_eq!(LogRecord::decode(&c, 40, 7, 0xabc), None, "flip at {off}");
        }
    }

    #[test]
    fn the_largest_record_fits_and_one_more_block_does_not() {
        let mut r = sample();
        r.extents = vec![LogExtent {
            file_block: 0,
            phys: 10,
            crcs: vec![7; MAX_RECORD_BLOCKS],
        }];
        assert!(r.fits());
        let b = r.encode(2, 1, 1);
        assert_eq!(LogRecord::decode(&b, 2, 1, 1), Some(r.clone()));
        r.extents[0].crcs.push(8);
        assert!(!r.fits());
    }
}
